"""The validation ladder: each level, each category, what a check costs in reads."""

from __future__ import annotations

import io
import json
import pickle
import struct
import warnings
import zipfile

import corpus
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro_store.source import BytesSource, CountingSource, FileSource
from virnucpro_store.validation import (
    LEVELS,
    ArrayMeta,
    TensorMeta,
    inspect_source,
    validate_source,
    zipindex,
)
from virnucpro_store.validation.pickling import unpickler


def check(data: bytes, **kwargs):
    return validate_source(BytesSource(data), **kwargs)


# --------------------------------------------------------------------------- valid files


@pytest.mark.parametrize("schema", ["dnabert", "esm", "merged", "shard"])
@pytest.mark.parametrize("deep", [False, True])
def test_valid_feature_files_pass_every_level(schema, deep):
    data = corpus.feature_file(schema, 3)
    report = check(data, schema=schema, deep=deep)
    assert report.ok, report.message
    assert (report.level, report.category, report.schema) == ("keys", None, schema)
    assert report.size == len(data) and report.requested_level == "keys"
    assert report.details["top"] == "archive"
    assert report.details["version"] == "1.0" and report.details["status"] == "complete"
    assert report.details["crc"] == ("ok" if deep else "not checked")
    json.loads(report.to_json())  # details are JSON-serialisable


def test_shards_with_numpy_and_with_tensor_embeddings():
    for numpy_embeddings, dtype_kind in ((True, ArrayMeta), (False, TensorMeta)):
        data = corpus.feature_file("shard", 4, numpy_embeddings=numpy_embeddings)
        report = check(data, schema="shard", deep=True)
        assert report.ok, report.message
        assert report.details["tensors"]["entries"]["embeddings"] == {
            "dtype": "float32", "shape": [4, 16]}
        assert report.details["torch_load"] == "ok"
        pkl = zipfile.ZipFile(io.BytesIO(data)).read("archive/data.pkl")
        assert isinstance(unpickler.load_structure(pkl)["embeddings"], dtype_kind)


def test_details_name_tensors_by_path_and_bound_the_list():
    data = corpus.save_bytes({"data": [torch.zeros(2) for _ in range(60)],
                              "nested": {"w": torch.ones(3, dtype=torch.float16)}})
    tensors = check(data).details["tensors"]
    assert tensors["count"] == 61 and tensors["truncated"]
    assert len(tensors["entries"]) == 50
    assert tensors["entries"]["data[0]"] == {"dtype": "float32", "shape": [2]}


def test_each_requested_level_stops_there():
    data = corpus.feature_file("merged")
    for level in LEVELS:
        report = check(data, level=level)
        assert report.ok and report.level == level == report.requested_level


def test_bad_level_and_unknown_schema_are_programmer_errors():
    data = corpus.feature_file("merged")
    with pytest.raises(ValueError, match="level"):
        check(data, level="everything")
    with pytest.raises(ValueError, match="dnabert, esm, merged, shard"):
        check(data, schema="nope")


def test_views_and_shared_storages_are_accepted():
    base = torch.arange(20.0).reshape(4, 5)
    data = corpus.save_bytes({"whole": base, "column": base[:, 2], "t": base.t(),
                              "tail": base.view(-1)[7:], "empty": base[:0],
                              "param": torch.nn.Parameter(torch.ones(2)),
                              "bf16": torch.zeros(3, dtype=torch.bfloat16),
                              "u16": torch.zeros(3, dtype=torch.uint16)})
    report = check(data, deep=True)
    assert report.ok, report.message
    assert report.details["records"] == 4 + 6  # 4 storages, data.pkl and 5 more


def test_file_source_and_stem_named_top_folder(tmp_path):
    path = tmp_path / "my_features.pt"
    torch.save(corpus.feature_dict("merged"), path)
    with FileSource(path) as src:
        report = validate_source(src, schema="auto", url=str(path))
    assert report.ok and report.schema == "merged" and report.url == str(path)
    assert report.details["top"] == "my_features"


# --------------------------------------------------------------------------- size & zip


def test_empty_file_fails_size():
    report = check(b"")
    assert (report.ok, report.level, report.category) == (False, None, "corrupted")
    assert report.message == "empty file (0 bytes)"


def test_truncation_at_every_record_boundary_is_corrupted():
    data = corpus.feature_file("esm", 2)
    points = corpus.boundaries(data)
    assert len(points) > 20
    for cut in points:
        report = check(data[:cut])
        assert not report.ok, cut
        assert report.category == "corrupted", (cut, report.message)
        if cut:
            assert report.level == "size"
            assert "end of central directory not found" in report.message
            assert "truncated" in report.message


def test_not_a_zip_is_corrupted_and_names_the_search():
    report = check(b"hello world, not a checkpoint")
    assert report.category == "corrupted" and report.level == "size"
    assert report.message == ("end of central directory not found in the last 29 bytes: file "
                              "truncated or not a ZIP")
    big = check(b"\x00" * 100_000)
    assert "in the last 65557 bytes" in big.message


def test_legacy_format_is_incompatible_not_corrupted():
    report = check(corpus.legacy_file())
    assert (report.category, report.level) == ("incompatible", "size")
    assert "legacy torch serialization format" in report.message
    # a bare pickle that is not torch's legacy format is also not a torch ZIP
    other = check(pickle.dumps({"a": 1}, protocol=4))
    assert other.category == "incompatible" and "bare pickle stream" in other.message


def test_every_byte_of_the_end_record_is_checked():
    data = corpus.feature_file("merged", 2)
    eocd = corpus.eocd_offset(data)
    for pos in range(eocd, eocd + 22):
        report = check(corpus.flip(data, pos))
        assert not report.ok, f"flip at EOCD byte {pos - eocd} went unnoticed"
        assert report.category == "corrupted" and report.level == "size", report.message


@pytest.mark.parametrize("field,offset", [("signature", 0), ("method", 10), ("crc", 16),
                                          ("compressed size", 20), ("name length", 28),
                                          ("local header offset", 42), ("name", 46)])
def test_flipped_central_directory_fields_are_corrupted(field, offset):
    data = corpus.feature_file("merged", 2)
    cd = corpus.central_directory_offset(data)
    # the second central-directory entry: archive/.format_version or similar small record
    first_len = 46 + sum(struct.unpack_from("<HHH", data, cd + 28))
    report = check(corpus.flip(data, cd + first_len + offset), level="load")
    if field == "crc":
        # a control record is read at the load level (torch reads it too), so its central
        # CRC is compared there with its data descriptor and its bytes
        assert not report.ok and report.level == "zip", report.message
        assert "archive/.format_version" in report.message
    if field == "method":
        assert report.category == "incompatible" and "compressed" in report.message
        return
    assert not report.ok, field
    assert report.category == "corrupted", (field, report.message)


def test_flipped_data_pkl_name_in_central_directory_is_corrupted():
    data = corpus.feature_file("merged", 2)
    cd = corpus.central_directory_offset(data)
    name = b"archive/data.pkl"
    pos = data.index(name, cd) + len("archive/d")
    report = check(corpus.flip(data, pos, 0x01))
    assert report.category == "corrupted" and "archive/data.pkl" in report.message


def test_overlapping_records_are_corrupted():
    data = corpus.feature_file("merged", 2)
    cd = corpus.central_directory_offset(data)
    # enlarge data.pkl's compressed and uncompressed sizes so it runs into the next record
    out = bytearray(data)
    size = struct.unpack_from("<I", out, cd + 20)[0]
    struct.pack_into("<II", out, cd + 20, size + 200, size + 200)
    report = check(bytes(out))
    assert report.category == "corrupted" and "overlaps" in report.message
    assert "archive/data.pkl" in report.message


def test_duplicate_record_names_are_corrupted():
    data = corpus.feature_file("merged", 2)
    with pytest.warns(UserWarning, match="Duplicate"):
        dup = corpus.rewrite(data, add={"version": b"3\n"})
    report = check(dup)
    assert report.category == "corrupted" and "duplicate record name" in report.message


def test_compressed_records_are_incompatible():
    data = corpus.rewrite(corpus.feature_file("merged", 2), compression=zipfile.ZIP_DEFLATED)
    report = check(data)
    assert report.category == "incompatible" and "compressed (method 8, deflate)" in report.message


def test_a_zip_that_is_not_a_torch_file_is_incompatible():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hello")
    report = check(buf.getvalue())
    assert report.category == "incompatible" and "not a torch checkpoint" in report.message


def test_missing_torch_record_is_corrupted():
    data = corpus.rewrite(corpus.feature_file("merged", 2), {"/data.pkl": None})
    report = check(data)
    assert report.category == "corrupted" and "'archive/data.pkl' is missing" in report.message


def test_flipped_payload_byte_passes_cheap_levels_and_fails_deep_crc():
    data = corpus.feature_file("esm", 3)
    rec = corpus.record(data, "/data/1")
    bad = corpus.flip(data, rec.data_offset + 100)
    for level in LEVELS:
        assert check(bad, level=level).ok
    # torch does not notice either
    loaded = torch.load(io.BytesIO(bad), weights_only=True)
    assert not torch.equal(loaded["data"][1], torch.load(io.BytesIO(data))["data"][1])
    report = check(bad, deep=True)
    assert (report.ok, report.level, report.category) == (False, "size", "corrupted")
    assert "CRC-32 mismatch in record 'archive/data/1'" in report.message
    assert report.details["crc"] == "bad"


def test_deep_crc_streams_in_bounded_chunks():
    data = corpus.save_bytes({"big": torch.zeros(300_000)})  # 1.2 MB of tensor data
    index = zipindex.read_index(zipindex.CachedReader(BytesSource(data)))
    zipindex.check_torch_layout(index)
    src = CountingSource(BytesSource(data))
    zipindex.verify_crcs(src, index, chunk_size=64 << 10)
    assert src.requests >= len(data) // (64 << 10)
    assert src.bytes_read <= len(data)


def test_flipped_local_header_found_by_deep_only():
    data = corpus.feature_file("merged", 2)
    rec = corpus.record(data, "/data/0")
    bad = corpus.flip(data, rec.header_offset)  # the local header signature
    assert check(bad).ok
    report = check(bad, deep=True)
    assert report.category == "corrupted" and "bad signature" in report.message
    assert "archive/data/0" in report.message


def test_zip64_end_record_is_required_to_agree():
    data = corpus.feature_file("merged", 2)
    z64 = data.rfind(b"PK\x06\x06")
    assert z64 > 0  # torch writes ZIP64 end records even for small files
    for field_offset in (24, 32, 40, 48):  # entries, entries, cd size, cd offset
        report = check(corpus.flip(data, z64 + field_offset, 0x01))
        assert report.category == "corrupted", field_offset


def test_zip64_sentinels_in_the_classic_end_record_are_followed():
    data = bytearray(corpus.feature_file("merged", 2))
    eocd = corpus.eocd_offset(bytes(data))
    struct.pack_into("<HHII", data, eocd + 8, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    assert check(bytes(data), deep=True).ok


def test_central_directory_outside_the_tail_costs_one_more_read():
    data = corpus.save_bytes({f"k{i}": torch.zeros(1) for i in range(1500)})
    cd = corpus.central_directory_offset(data)
    assert len(data) - cd > zipindex.TAIL_BYTES
    src = CountingSource(BytesSource(data))
    report = validate_source(src, level="zip")
    assert report.ok and report.details["records"] == 1500 + 6
    assert report.requests == 2  # the tail, then the central directory


# --------------------------------------------------------------------------- load


def test_hostile_pickle_is_unsafe_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    data = corpus.hostile_file(marker)
    for deep in (False, True):
        report = check(data, deep=deep)
        assert (report.category, report.level) == ("unsafe", "zip"), report.message
        assert "forbidden global" in report.message and "system" in report.message
    assert not marker.exists()
    # the sanity check that the file really is hostile would run the command; don't.


@pytest.mark.parametrize("global_name", ["builtins.eval", "builtins.getattr", "posix.system",
                                         "torch.load", "numpy.load", "subprocess.Popen"])
def test_globals_outside_the_allow_list_are_refused_by_name(global_name):
    module, name = global_name.rsplit(".", 1)
    evil = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x01\x00\x00\x00x\x85R."
    data = corpus.rewrite(corpus.feature_file("merged", 2), {"/data.pkl": evil})
    report = check(data)
    assert report.category == "unsafe"
    assert report.message == f"pickle imports forbidden global {global_name!r}"


def test_torch_globals_torch_allows_but_we_do_not_model_are_incompatible():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated
        q = torch.quantize_per_tensor(torch.zeros(3), 0.1, 0, torch.qint8)
    data = corpus.save_bytes({"q": q})
    report = check(data)
    assert report.category == "incompatible" and "_rebuild_qtensor" in report.message


def test_short_storage_record_is_corrupted():
    report = check(corpus.short_storage_file())
    assert (report.category, report.level) == ("corrupted", "zip")
    assert report.message == ("record 'archive/data/0' is short: 4096 bytes stored, 10240 "
                              "expected for 2560 float32 elements")


def test_missing_storage_record_is_corrupted():
    data = corpus.rewrite(corpus.feature_file("merged", 2), {"/data/0": None})
    report = check(data)
    assert report.category == "corrupted" and "record 'archive/data/0' does not exist" in \
        report.message


def _with_patched_pickle(data: bytes, old: bytes, new: bytes) -> bytes:
    pkl = zipfile.ZipFile(io.BytesIO(data)).read("archive/data.pkl")
    assert pkl.count(old) == 1, pkl
    return corpus.rewrite(data, {"/data.pkl": pkl.replace(old, new)})


def test_tensor_view_past_its_storage_is_corrupted():
    data = corpus.save_bytes({"t": torch.zeros(4)})
    # _rebuild_tensor_v2(storage, offset=0, size=(4,), ...): make the offset 3
    bad = _with_patched_pickle(data, b"Q\x4b\x00\x4b\x04\x85", b"Q\x4b\x03\x4b\x04\x85")
    report = check(bad)
    assert report.category == "corrupted"
    assert "tensor 't'" in report.message and "needs 7 elements" in report.message
    assert "holds 4" in report.message


def test_data_pkl_damage_is_caught_by_its_crc_without_deep():
    data = corpus.feature_file("merged", 2)
    rec = corpus.record(data, "/data.pkl")
    report = check(corpus.flip(data, rec.data_offset + 20))
    assert report.category == "corrupted" and report.level == "zip"
    assert "CRC-32 mismatch in record 'archive/data.pkl'" in report.message


def test_truncated_pickle_stream_is_corrupted():
    data = corpus.feature_file("merged", 2)
    pkl = zipfile.ZipFile(io.BytesIO(data)).read("archive/data.pkl")
    report = check(corpus.rewrite(data, {"/data.pkl": pkl[:-7]}))
    assert report.category == "corrupted" and "not a readable pickle" in report.message


def test_oversized_pickle_is_refused(monkeypatch):
    monkeypatch.setattr(unpickler, "MAX_PICKLE_BYTES", 100)
    report = check(corpus.feature_file("merged", 2))
    assert report.category == "incompatible" and "MAX_PICKLE_BYTES" in report.message


def test_billion_laughs_is_walked_in_linear_time():
    # each level is a list holding the previous level ten times: 10**30 paths, 300 nodes
    layer: list = [torch.zeros(1)]
    for _ in range(30):
        layer = [layer] * 10
    data = corpus.save_bytes({"bomb": layer})
    report = check(data)
    assert report.ok and report.details["tensors"]["count"] == 1


def test_deeply_nested_pickle_does_not_crash():
    # 100,000 nested lists, built by hand: pickle.dumps itself would recurse too deeply
    body = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."
    data = corpus.rewrite(corpus.feature_file("merged", 2), {"/data.pkl": body})
    report = check(data)
    assert report.ok and report.details["object"] == "list"


def test_numpy_object_arrays_are_unsafe_and_strings_incompatible():
    obj = corpus.save_bytes({"a": np.array(["x", 1], dtype=object)})
    assert check(obj).category == "unsafe"
    strings = corpus.save_bytes({"a": np.array(["x", "yy"])})
    report = check(strings)
    assert report.category == "incompatible"
    assert report.message == ("archive/data.pkl: numpy dtype 'U2': only numeric and "
                              "bool numpy dtypes are supported")


def test_numpy_array_with_short_data_is_corrupted():
    data = corpus.save_bytes({"a": np.arange(6, dtype=np.int64)})
    pkl = zipfile.ZipFile(io.BytesIO(data)).read("archive/data.pkl")
    # numpy stores raw bytes as a latin-1 string: shorten it by one element (8 bytes)
    head = b"X\x30\x00\x00\x00"
    assert pkl.count(head) == 1
    start = pkl.index(head) + len(head)
    bad_pkl = pkl[:start - 5] + b"X\x28\x00\x00\x00" + pkl[start:start + 40] + pkl[start + 48:]
    report = check(corpus.rewrite(data, {"/data.pkl": bad_pkl}))
    assert report.category == "corrupted"
    assert "numpy array data is 40 bytes, expected 48 for shape (6,) int64" in report.message


# --------------------------------------------------------------------------- keys


def test_not_a_dict_with_a_schema_is_incompatible():
    report = check(corpus.save_bytes([torch.zeros(3)]), schema="merged")
    assert (report.category, report.level) == ("incompatible", "load")
    assert "holds a list, expected a dict" in report.message
    assert check(corpus.save_bytes([torch.zeros(3)])).ok  # no schema: loading is enough


def test_dropped_key_is_incompatible():
    obj = corpus.feature_dict("esm")
    del obj["proteins"]
    report = check(corpus.save_bytes(obj), schema="esm")
    assert report.category == "incompatible"
    assert "esm: required key 'proteins' is missing" in report.message


def test_wrong_width_is_incompatible():
    obj = corpus.feature_dict("esm", 4)
    obj["data"][2] = torch.zeros(2559)
    report = check(corpus.save_bytes(obj), schema="esm")
    assert report.category == "incompatible"
    assert report.message == "esm: data[2] has shape (2559,), expected (2560,)"


def test_newer_major_version_is_incompatible():
    obj = corpus.feature_dict("merged")
    obj["version"] = "2.0"
    report = check(corpus.save_bytes(obj), schema="merged")
    assert (report.category, report.level) == ("incompatible", "load")
    assert "version '2.0'" in report.message
    assert not check(corpus.save_bytes(obj)).ok  # also without a schema


def test_auto_schema_picks_by_keys_and_refuses_unknown_layouts():
    assert check(corpus.feature_file("dnabert"), schema="auto").schema == "dnabert"
    report = check(corpus.save_bytes({"weights": torch.zeros(2)}), schema="auto")
    assert report.category == "incompatible" and "no built-in schema" in report.message


# --------------------------------------------------------------------------- cost


def test_keys_level_reads_a_small_fraction_in_few_requests():
    data = corpus.save_bytes({"ids": [f"s{i}" for i in range(300)],
                              "data": torch.zeros(300, 3328), "version": "1.0"})
    assert len(data) > 3_900_000
    src = CountingSource(BytesSource(data))
    report = validate_source(src, schema="merged")
    assert report.ok
    assert report.requests <= 4 and report.requests == src.requests
    assert report.bytes_read == src.bytes_read < len(data) * 0.05
    assert report.seconds > 0


def test_inspect_describes_without_loading_tensor_data():
    data = corpus.feature_file("shard", 5, numpy_embeddings=True)
    src = CountingSource(BytesSource(data))
    info = inspect_source(src)
    assert info["ok"] and info["schema"] == "shard" and info["schema_ok"]
    assert info["entries"]["embeddings"] == {"type": "ndarray", "dtype": "float32",
                                             "shape": [5, 16]}
    assert info["entries"]["sequence_ids"]["len"] == 5
    assert info["version"] == "1.0" and info["crc"] == "not checked" and info["size"] == len(data)
    json.dumps(info)
    assert inspect_source(BytesSource(data), deep=True)["crc"] == "ok"
    assert inspect_source(BytesSource(b""))["category"] == "corrupted"


# --------------------------------------------------------------------------- properties

_SMALL = corpus.feature_file("shard", 2, numpy_embeddings=True)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_SMALL) - 1), st.integers(1, 255)),
                min_size=1, max_size=4, unique_by=lambda flip: flip[0]),
       st.booleans())
def test_damage_never_raises_and_deep_catches_every_flip(flips, deep):
    data = bytearray(_SMALL)
    for pos, mask in flips:
        data[pos] ^= mask
    report = check(bytes(data), deep=deep)
    assert report.category in (None, "corrupted", "incompatible", "unsafe")
    assert report.ok == (report.category is None) and report.message
    if report.ok:
        assert report.level == "keys"
    if deep and report.ok:
        # every byte that deep validation does not cover lies outside the archive's payloads
        # and headers' checked fields; payload bytes themselves are always covered
        for pos, _ in flips:
            assert not any(r.data_offset <= pos < r.data_offset + r.size
                           for r in corpus.records(_SMALL))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400))
def test_random_pickles_never_escape_the_restricted_reader(body):
    data = corpus.rewrite(_SMALL, {"/data.pkl": b"\x80\x02" + body})
    report = check(data)
    assert report.category in (None, "corrupted", "incompatible", "unsafe")


def test_pickle_cannot_rewrite_the_allow_list_markers():
    # BUILD on the shared torch.float32 marker would rename the dtype for every later load
    evil = b"\x80\x02ctorch\nfloat32\n}X\x04\x00\x00\x00nameX\x04\x00\x00\x00evilsb."
    data = corpus.rewrite(corpus.feature_file("merged", 2), {"/data.pkl": evil})
    report = check(data)
    assert report.category == "unsafe" and "torch.float32" in report.message
    fp16 = corpus.save_bytes({"t": torch.zeros(2, dtype=torch.float8_e4m3fn)})
    assert check(fp16).details["tensors"]["entries"]["t"]["dtype"] == "float8_e4m3fn"
    meta = TensorMeta("float32", (2,), (1,), 0, "0")
    assert pickle.loads(pickle.dumps(meta)) == meta


def test_zip64_extra_fields_in_the_central_directory():
    data = corpus.with_zip64_extras(corpus.feature_file("esm", 2))
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None  # a valid ZIP64 archive
    report = check(data, schema="esm", deep=True)
    assert report.ok, report.message
    assert report.details["records"] == 2 + 6
    # a ZIP64 extra field cut short is damage, named by record
    cd = corpus.central_directory_offset(corpus.feature_file("esm", 2))
    short = bytearray(data)
    struct.pack_into("<H", short, data.index(b"\x01\x00\x18\x00", cd) + 2, 8)
    report = check(bytes(short))
    assert report.category == "corrupted" and "ZIP64 extra field" in report.message


class _FailingSource(BytesSource):
    """A source whose ``fail_at``-th read fails, as a dropped S3 connection would."""

    def __init__(self, data: bytes, fail_at: int) -> None:
        super().__init__(data)
        self.reads = 0
        self.fail_at = fail_at

    def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        if self.reads == self.fail_at:
            from virnucpro_store.errors import StorageFailure

            raise StorageFailure("connection reset")
        return super().read(offset, length)


@pytest.mark.parametrize("fail_at", range(1, 12))
def test_storage_failure_during_deep_validation_is_raised_not_reported(fail_at):
    # torch.load, reading through the source, masks the read's error with its own ("read of
    # closed file"): a failing storage must still raise, never pass for a corrupted file.
    from virnucpro_store.errors import StorageFailure

    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(2_000_000)}, buffer)
    data = buffer.getvalue()
    source = _FailingSource(data, fail_at)
    try:
        report = validate_source(source, level="load", deep=True)
    except StorageFailure:
        return
    assert report.ok, report
    assert source.reads < fail_at
