"""safe_torch_load: loads what the pipeline writes, maps every failure to our errors."""

from __future__ import annotations

import io

import corpus
import numpy as np
import pytest
import torch

from virnucpro_store.errors import (
    CheckpointCorrupted,
    CheckpointError,
    CheckpointIncompatible,
    CheckpointMissing,
    UnsafeCheckpoint,
)
from virnucpro_store.source import BytesSource
from virnucpro_store.validation import safe_torch_load, validate_source


def test_loads_numpy_bearing_shards_from_path_file_and_source(tmp_path):
    obj = corpus.feature_dict("shard", 4, numpy_embeddings=True)
    obj["metadata"]["ints"] = np.arange(3, dtype=np.int32)
    obj["metadata"]["flag"] = np.bool_(True)
    path = tmp_path / "shard.pt"
    torch.save(obj, path)
    data = path.read_bytes()
    for source in (path, str(path), io.BytesIO(data), BytesSource(data)):
        loaded = safe_torch_load(source)
        assert isinstance(loaded["embeddings"], np.ndarray)
        np.testing.assert_array_equal(loaded["embeddings"], obj["embeddings"])
        assert loaded["metadata"]["scale"] == 0.5
        np.testing.assert_array_equal(loaded["metadata"]["ints"], [0, 1, 2])


@pytest.mark.parametrize("schema", ["dnabert", "esm", "merged", "shard"])
def test_loads_every_feature_format(schema):
    obj = corpus.feature_dict(schema, 2)
    loaded = safe_torch_load(io.BytesIO(corpus.save_bytes(obj)), map_location="cpu")
    assert loaded.keys() == obj.keys()


def test_hostile_file_is_unsafe_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeCheckpoint) as info:
        safe_torch_load(io.BytesIO(corpus.hostile_file(marker)), key="evil.pt")
    assert not marker.exists()
    assert "system" in str(info.value) and str(info.value).startswith("evil.pt: ")
    assert info.value.key == "evil.pt" and info.value.category == "unsafe"


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.99])
def test_truncated_file_is_corrupted(cut):
    data = corpus.feature_file("merged", 2)
    # the loader's verdict is the validator's (the model is the only reading of the file)
    with pytest.raises(CheckpointCorrupted, match=r"^s3://b/k.pt: ") as info:
        safe_torch_load(io.BytesIO(data[: int(len(data) * cut)]), url="s3://b/k.pt")
    assert info.value.url == "s3://b/k.pt"


def test_short_storage_is_corrupted():
    with pytest.raises(CheckpointCorrupted):
        safe_torch_load(io.BytesIO(corpus.short_storage_file()))


def test_garbage_and_empty_files_are_corrupted():
    with pytest.raises(CheckpointCorrupted):
        safe_torch_load(io.BytesIO(b"definitely not a checkpoint"))
    with pytest.raises(CheckpointCorrupted, match="empty file"):
        safe_torch_load(io.BytesIO(b""))


def test_legacy_format_is_incompatible():
    with pytest.raises(CheckpointIncompatible, match="legacy torch serialization format"):
        safe_torch_load(io.BytesIO(corpus.legacy_file()))


def test_missing_path_is_missing(tmp_path):
    with pytest.raises(CheckpointMissing):
        safe_torch_load(tmp_path / "nope.pt")


def test_object_arrays_are_refused_as_unsafe():
    data = corpus.save_bytes({"a": np.array(["x", 1], dtype=object)})
    with pytest.raises(UnsafeCheckpoint, match="object dtype"):
        safe_torch_load(io.BytesIO(data))


def test_truncated_pickle_is_corrupted_not_a_raw_error():
    data = corpus.feature_file("merged", 2)
    import zipfile

    pkl = zipfile.ZipFile(io.BytesIO(data)).read("archive/data.pkl")
    with pytest.raises(CheckpointCorrupted):
        safe_torch_load(io.BytesIO(corpus.rewrite(data, {"/data.pkl": pkl[:-7]})))


@pytest.mark.parametrize("builder", [
    lambda tmp: corpus.feature_file("esm", 2),
    lambda tmp: corpus.feature_file("shard", 2, numpy_embeddings=True),
    lambda tmp: corpus.hostile_file(tmp / "marker"),
    lambda tmp: corpus.short_storage_file(),
    lambda tmp: corpus.legacy_file(),
    lambda tmp: corpus.feature_file("merged", 2)[:-30],
])
def test_validator_and_loader_agree_on_the_category(builder, tmp_path):
    data = builder(tmp_path)
    report = validate_source(BytesSource(data), level="load")
    try:
        safe_torch_load(io.BytesIO(data))
        category = None
    except CheckpointError as exc:
        category = exc.category
    assert report.category == category, report.message
    assert not (tmp_path / "marker").exists()


def test_numpy_files_load_on_many_threads_at_once(tmp_path):
    """torch's allow-list is process-wide: a scan loading numpy shards on eight threads must not
    see the numpy entries removed by another thread's finished load."""
    from concurrent.futures import ThreadPoolExecutor

    paths = []
    for i in range(8):
        path = tmp_path / f"shard{i}.pt"
        torch.save({"embeddings": np.full((4, 8), i, np.float32), "sequence_ids": list("abcd"),
                    "metadata": {}}, path)
        paths.append(path)

    def load_all(k: int) -> int:
        for _ in range(15):
            assert safe_torch_load(paths[k])["embeddings"][0, 0] == k
        return k

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(load_all, range(8))) == list(range(8))


def test_numpy_entries_the_user_added_are_left_alone(tmp_path):
    from virnucpro_store.validation.torch_load import numpy_safe_globals

    path = tmp_path / "a.pt"
    torch.save({"x": np.zeros(3, np.float32)}, path)
    mine = numpy_safe_globals()
    torch.serialization.add_safe_globals(mine)
    try:
        safe_torch_load(path)
        present = torch.serialization.get_safe_globals()
        assert all(g in present for g in mine)
    finally:
        torch.serialization.clear_safe_globals()
    safe_torch_load(path)
    assert torch.serialization.get_safe_globals() == []  # nothing of ours left behind


# -- a class named as a storage type: torch reads its .dtype, then the key's cached storage --


def _views_of_one_key(second_type: tuple[str, str], first_type=("torch", "FloatStorage")):
    """{"a": view, "b": view} of the merged base's storage "0", each persistent id naming its
    own storage type."""
    import hostile

    def view(module: str, name: str) -> bytes:
        pid = hostile.p_tuple([hostile.p_str("storage"), hostile.p_global(module, name),
                               hostile.p_str("0"), hostile.p_str("cpu"),
                               hostile.p_int(6656)]) + b"Q"
        args = [pid, hostile.p_int(0), hostile.p_tuple([hostile.p_int(2), hostile.p_int(3328)]),
                hostile.p_tuple([hostile.p_int(3328), hostile.p_int(1)]), b"\x89",
                hostile.p_global("collections", "OrderedDict") + b")R"]
        return hostile.p_global("torch._utils", "_rebuild_tensor_v2") + hostile.p_tuple(args) \
            + b"R"

    return hostile.with_pickle(b"\x80\x02" + hostile.p_dict(
        [("a", view(*first_type)), ("b", view(*second_type))]) + b".")


def test_the_classes_a_storage_type_may_name_are_torchs():
    """The model's classes with a readable ``.dtype`` are exactly the allowed stand-in classes
    whose real object has one (torch reads ``storage_type.dtype`` of any object)."""
    import importlib

    from virnucpro_store.validation.pickling import standins

    have = set()
    for qualname, standin in standins.TORCH_STAND_INS.items():
        if type(standin) is standins.GlobalStandIn:
            module, _, name = qualname.rpartition(".")
            if hasattr(getattr(importlib.import_module(module), name), "dtype"):
                have.add(qualname)
    assert have == set(standins.DTYPE_CLASSES)


@pytest.mark.parametrize("cls", [("numpy", "ndarray"), ("torch", "Tensor")])
def test_a_class_named_as_the_type_of_a_loaded_key_loads_as_torch_loads_it(cls):
    """Campaign seed 1033501: ``numpy.ndarray`` as the storage type of a key already loaded
    was 'corrupted' (torch returns the cached storage); as the first type of a key both
    refuse (torch cannot size a storage of it)."""
    from helpers import structural_diff

    from virnucpro_store.validation.torch_load import numpy_safe_globals

    def torch_load(data: bytes):  # with the numpy globals the library allows
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(io.BytesIO(data), weights_only=True)

    data = _views_of_one_key(cls)
    want = torch_load(data)
    report = validate_source(BytesSource(data), level="keys", deep=True)
    assert report.ok, report.message
    assert structural_diff(safe_torch_load(BytesSource(data)), want) is None
    first = _views_of_one_key(("torch", "FloatStorage"), first_type=cls)
    with pytest.raises(Exception):  # noqa: B017 -- torch's own error, whatever its type
        torch_load(first)
    assert not validate_source(BytesSource(first)).ok
