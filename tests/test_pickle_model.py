"""The pickle model's seams (validation/pickling/): opcodes named from the stdlib, the
pre-scan's dispatch table, and the per-load LoadContext that owns what one load makes."""

from __future__ import annotations

import gc
import io
import pickle
import zipfile
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from virnucpro_store.validation.pickling import allowlist, opcodes, prescan, standins
from virnucpro_store.validation.pickling.context import LoadContext
from virnucpro_store.validation.pickling.unpickler import read_model


def _data_pkl(obj: Any, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_protocol=protocol)
    archive = zipfile.ZipFile(buf)
    return archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))


def test_opcodes_are_the_stdlib_pickle_opcodes():
    single = {name: code[0] for name in dir(pickle) if name.isupper()
              and isinstance(code := getattr(pickle, name), bytes) and len(code) == 1}
    ours = {name: value for name, value in vars(opcodes).items()
            if name.isupper() and type(value) is int}
    assert ours == single
    # the pre-scan reads every one of them, and nothing else (any other byte: invalid key)
    assert set(prescan._DISPATCH) == set(single.values())


def test_each_load_owns_its_made_objects_and_library_mode():
    data = {"x": torch.arange(6.0).view(2, 3), "y": torch.zeros(2)}
    old, new = read_model(_data_pkl(data)), read_model(_data_pkl(data, protocol=4))
    assert (old.library, new.library) == (None, 4)
    for model in (old, new):
        kinds = sorted(type(m).__name__ for m in model.made)
        assert kinds == ["StorageRef", "StorageRef", "TensorMeta", "TensorMeta"]
        assert model.made[1] is model.structure["x"]  # the very objects the structure holds
    assert LoadContext.active() is None


def test_concurrent_loads_do_not_share_what_they_make():
    """The made objects are the context's, not a thread's or the process's: loads on eight
    threads at once each get exactly what a load alone gets."""
    files = [_data_pkl({f"t{i}": torch.zeros(i + 1) for i in range(n)}) for n in range(1, 9)]
    alone = [[(type(m).__name__, getattr(m, "shape", None)) for m in read_model(f).made]
             for f in files]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            together = list(pool.map(lambda f: [(type(m).__name__, getattr(m, "shape", None))
                                                for m in read_model(f).made], files))
            assert together == alone


def test_the_context_pauses_gc_and_is_active_while_the_unpickler_runs(monkeypatch):
    seen: list[tuple[bool, bool]] = []
    real = allowlist.ALLOWED["collections.OrderedDict"]

    def spy(*args: Any) -> Any:
        seen.append((gc.isenabled(), LoadContext.active() is not None))
        return real(*args)

    monkeypatch.setitem(allowlist.ALLOWED, "collections.OrderedDict",
                        standins.GlobalStandIn("collections.OrderedDict", spy))
    assert gc.isenabled()
    read_model(_data_pkl({"a": OrderedDict(b=1)}))
    assert seen == [(False, True)]
    assert gc.isenabled() and LoadContext.active() is None


def test_a_tensor_stand_in_is_bound_to_its_load():
    """find_class binds the tensor-making stand-ins to the load: the allow-list's own entry
    records into no load; a bound one into its context only."""
    entry = allowlist.ALLOWED["torch._utils._rebuild_tensor_v2"]
    ref = standins.StorageTypeStandIn("float32")
    from virnucpro_store.lazy import make_storage_ref

    storage = make_storage_ref("0", ref.dtype, 6, "cpu")
    ctx = LoadContext()
    made = entry.bind(ctx)(storage, 0, (2, 3), (3, 1), False, OrderedDict())
    assert ctx.made == [made]
    entry(storage, 0, (2, 3), (3, 1), False, OrderedDict())  # unbound: recorded nowhere
    assert ctx.made == [made]
    with pytest.raises(Exception, match=r"_rebuild_tensor_v2\(\) takes"):
        entry.bind(ctx)(storage, 0, (2, 3), (3, 1), False, None, None, None, None)
