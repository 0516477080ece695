"""virnucpro_store.dcp the way DCP's own suite tests FileSystemWriter/FileSystemReader
(test/distributed/checkpoint/test_file_system_checkpoint*.py): nested state dicts, model and
optimizer state through get_state_dict/set_state_dict, views and strided tensors, every
common dtype, empty and 0-d tensors, non-tensor values, DCP's planner semantics for missing
keys, ``checkpoint_id=`` instead of the writer's url, async_save, thread_count > 1,
``overwrite=True`` repeatedly then ``gc``; and both directions with torch's own
FileSystemWriter/FileSystemReader. Single process (no process group): DCP's no-dist path."""

from __future__ import annotations

import io

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import virnucpro_store.dcp as vdcp

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(params=["local", "memory"])
def url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "ckpt")
    return f"memory://dcp-review-{abs(hash(str(tmp_path)))}/ckpt"


def _assert_same(got, want):
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype
        assert torch.equal(got, want.detach())
    elif isinstance(want, dict):
        assert set(got) == set(want)
        for k in want:
            _assert_same(got[k], want[k])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(g, w)
    else:
        assert got == want


def _zeros_like(value):
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value.detach())
    if isinstance(value, dict):
        return {k: _zeros_like(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_zeros_like(v) for v in value]
    return type(value)() if value is not None else 0


def test_nested_dtypes_views_scalars_and_strings(url):
    base = torch.arange(24.0).reshape(4, 6)
    state = {
        "nested": {"deep": {"w": torch.randn(3, 5)}, "list": [torch.ones(2), 3, "s"]},
        "bf16": torch.randn(3, 3).bfloat16(), "f16": torch.ones(2, dtype=torch.float16),
        "i32": torch.arange(5, dtype=torch.int32), "i64": torch.tensor([2 ** 40]),
        "u8": torch.arange(4, dtype=torch.uint8), "bool": torch.tensor([True, False]),
        "c64": torch.ones(2, dtype=torch.complex64),
        "empty": torch.empty(0, 3), "scalar_t": torch.tensor(3.5),
        "transposed": base.t(), "strided": base[:, ::2], "tail_view": base.view(-1)[7:],
        "param": torch.nn.Parameter(torch.ones(3)), "grad": torch.ones(2, requires_grad=True),
        "int": 7, "float": 1.5, "str": "hello", "none": None,
        "odd/key ../ü": torch.ones(1),
    }
    dcp.save(state, storage_writer=vdcp.StoreWriter(url))
    target = _zeros_like(state)
    dcp.load(target, storage_reader=vdcp.StoreReader(url))
    _assert_same(target, state)
    report = vdcp.validate_checkpoint(url)
    assert report["ok"], report


def _model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    optim = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    optim.step()
    return model, optim


def test_model_and_optimizer_state_via_get_set_state_dict(url):
    model, optim = _model_and_optimizer(0)
    msd, osd = get_state_dict(model, optim)
    dcp.save({"model": msd, "optim": osd}, storage_writer=vdcp.StoreWriter(url))

    model2, optim2 = _model_and_optimizer(1)
    msd2, osd2 = get_state_dict(model2, optim2)
    state = {"model": msd2, "optim": osd2}
    dcp.load(state, storage_reader=vdcp.StoreReader(url))
    set_state_dict(model2, optim2, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    want, got = optim.state_dict(), optim2.state_dict()
    for k in want["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(got["state"][k][name]),
                               torch.as_tensor(want["state"][k][name]))
    assert got["param_groups"][0]["lr"] == want["param_groups"][0]["lr"]


def test_missing_keys_follow_dcps_planner(url):
    dcp.save({"a": torch.ones(2), "extra": torch.ones(1)}, storage_writer=vdcp.StoreWriter(url))
    # a key the checkpoint lacks: DCP's default planner refuses
    with pytest.raises(CheckpointException, match="Missing key in checkpoint state_dict: b"):
        dcp.load({"a": torch.zeros(2), "b": torch.zeros(2)},
                 storage_reader=vdcp.StoreReader(url))
    # allow_partial_load: the present keys load, the missing one keeps its value
    target = {"a": torch.zeros(2), "b": torch.full((2,), 5.0)}
    dcp.load(target, storage_reader=vdcp.StoreReader(url),
             planner=DefaultLoadPlanner(allow_partial_load=True))
    assert torch.equal(target["a"], torch.ones(2)) and torch.equal(target["b"],
                                                                   torch.full((2,), 5.0))
    # a subset of the checkpoint's keys loads; a shape that differs is refused
    subset = {"a": torch.zeros(2)}
    dcp.load(subset, storage_reader=vdcp.StoreReader(url))
    assert torch.equal(subset["a"], torch.ones(2))
    with pytest.raises(CheckpointException):
        dcp.load({"a": torch.zeros(3)}, storage_reader=vdcp.StoreReader(url))


def test_checkpoint_id_replaces_the_url_and_objects_are_reused(url):
    writer = vdcp.StoreWriter(url + "-unused")
    reader = vdcp.StoreReader(url + "-unused-too")
    for step in (1, 2):
        step_id = f"{url}/step-{step}"
        dcp.save({"a": torch.full((2,), float(step))}, storage_writer=writer,
                 checkpoint_id=step_id)
        target = {"a": torch.zeros(2)}
        dcp.load(target, storage_reader=reader, checkpoint_id=step_id)
        assert torch.equal(target["a"], torch.full((2,), float(step)))
        assert vdcp.validate_checkpoint(step_id)["ok"]
    with pytest.raises(CheckpointException):  # nothing was written at the constructor's url
        dcp.load({"a": torch.zeros(2)}, storage_reader=vdcp.StoreReader(url + "-unused"))


def test_async_save_then_load(url):
    future = dcp.async_save({"a": torch.arange(3.0), "meta": {"step": 5}},
                            storage_writer=vdcp.StoreWriter(url))
    future.result()
    target = {"a": torch.zeros(3), "meta": {"step": 0}}
    dcp.load(target, storage_reader=vdcp.StoreReader(url))
    assert target["meta"]["step"] == 5 and torch.equal(target["a"], torch.arange(3.0))


def test_thread_count_four(url):
    torch.manual_seed(0)
    state = {f"t{i}": torch.randn(8, 8) for i in range(9)} | {"step": 3}
    dcp.save(state, storage_writer=vdcp.StoreWriter(url, thread_count=4))
    target = _zeros_like(state)
    dcp.load(target, storage_reader=vdcp.StoreReader(url))
    _assert_same(target, state)


def test_overwrite_three_times_then_gc(url):
    for value in (1.0, 2.0, 3.0):
        dcp.save({"a": torch.full((3,), value), "v": value},
                 storage_writer=vdcp.StoreWriter(url, overwrite=True))
    removed = vdcp.gc(url, older_than=0)
    assert len(removed) == 6  # two superseded saves x (2 items + manifest)
    assert vdcp.gc(url, older_than=0) == []
    target = {"a": torch.zeros(3), "v": 0.0}
    dcp.load(target, storage_reader=vdcp.StoreReader(url))
    assert target["v"] == 3.0 and torch.equal(target["a"], torch.full((3,), 3.0))
    assert vdcp.validate_checkpoint(url)["ok"]


def test_empty_state_dict(url):
    dcp.save({}, storage_writer=vdcp.StoreWriter(url))
    dcp.load({}, storage_reader=vdcp.StoreReader(url))
    assert vdcp.validate_checkpoint(url)["slices"] == 0


def test_both_directions_with_torchs_file_system_writer_and_reader(tmp_path):
    state = {"a": torch.arange(6.0).reshape(2, 3).t(), "bf": torch.ones(2).bfloat16(),
             "n": {"s": "x", "i": 3}}
    ours, stock = tmp_path / "ours", tmp_path / "stock"
    dcp.save(state, storage_writer=vdcp.StoreWriter(ours))
    dcp.save(state, storage_writer=dcp.FileSystemWriter(stock, thread_count=2))
    for folder, reader in ((ours, dcp.FileSystemReader), (stock, vdcp.StoreReader),
                           (ours, vdcp.StoreReader)):
        target = _zeros_like(state)
        dcp.load(target, storage_reader=reader(folder))
        _assert_same(target, state)
    assert vdcp.validate_checkpoint(stock)["ok"]
    dcp.save({"a": torch.ones(2)}, checkpoint_id=tmp_path / "by-path")  # stock, by path only
    target = {"a": torch.zeros(2)}
    dcp.load(target, storage_reader=vdcp.StoreReader(tmp_path / "by-path"))
    assert torch.equal(target["a"], torch.ones(2))


@pytest.mark.xfail(reason="the store's validator refuses the global _io.BytesIO that DCP's "
                   "planner pickles for a BytesIO value (validation/pickling/allowlist.py, "
                   "standins.py: not this module's to allow); docs/review-2026-12-07.md",
                   raises=CheckpointException, strict=False)
def test_bytesio_values_round_trip(tmp_path):
    """DCP's own tests keep BytesIO values in state dicts (stock writer and reader pass)."""
    state = {"buf": io.BytesIO(b"hello"), "t": torch.ones(2)}
    dcp.save(state, storage_writer=vdcp.StoreWriter(tmp_path / "c"))
    target = {"buf": io.BytesIO(), "t": torch.zeros(2)}
    dcp.load(target, storage_reader=vdcp.StoreReader(tmp_path / "c"))
    assert target["buf"].getvalue() == b"hello"
