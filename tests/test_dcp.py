"""virnucpro_store.dcp against stock torch.distributed.checkpoint: real gloo process groups
(``init_method=file://``), torch's own FileSystemReader, SIGKILLed saves.

VNPS_DCP_RANKS (default 2) sets the process count of the gloo test; VNPS_KILLS (default 3)
the number of SIGKILLed overwrite saves in the mixed-version test (the full run: 50).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import random
import signal
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

import virnucpro_store as vs
import virnucpro_store.dcp as vdcp

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

RANKS = int(os.environ.get("VNPS_DCP_RANKS", "2"))
KILLS = int(os.environ.get("VNPS_KILLS", "3"))


def _unwrapped(exc: BaseException) -> list[BaseException]:
    """The per-rank exceptions inside DCP's CheckpointException (or the exception itself)."""
    if isinstance(exc, CheckpointException):
        return [failure[0] if isinstance(failure, tuple) else failure
                for failure in exc.failures.values()]
    return [exc]


def _raises(kind: type[BaseException], call) -> BaseException:
    with pytest.raises(BaseException) as info:
        call()
    causes = _unwrapped(info.value)
    assert all(isinstance(cause, kind) for cause in causes), causes
    return causes[0]


def _state(seed: int) -> dict:
    torch.manual_seed(seed)
    return {"w": torch.randn(64, 32), "b": torch.randn(32).to(torch.bfloat16),
            "step": seed, "opt": {"lr": 0.5 * seed, "names": [f"n{seed}"]}}


def _empty() -> dict:
    return {"w": torch.zeros(64, 32), "b": torch.zeros(32, dtype=torch.bfloat16), "step": -1,
            "opt": {"lr": 0.0, "names": []}}


def _assert_state_equal(got: dict, want: dict) -> None:
    assert torch.equal(got["w"], want["w"]) and torch.equal(got["b"], want["b"])
    assert got["step"] == want["step"] and got["opt"] == want["opt"]


# -- a real process group ----------------------------------------------------------------------


def _rank_main(rank: int, world: int, init_file: str, root: str, options: dict,
               queue) -> None:
    from torch import nn
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    warnings.simplefilter("ignore")
    out: dict = {"rank": rank}
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world)

        def trained(seed: int):
            torch.manual_seed(seed)
            model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
            optim = torch.optim.AdamW(model.parameters(), lr=0.01)
            model(torch.randn(8, 16)).sum().backward()
            optim.step()
            return model, optim

        model, optim = trained(0)
        msd, osd = get_state_dict(model, optim)
        url = f"{root}/ckpt"
        dcp.save({"model": msd, "optim": osd, "epoch": 3},
                 storage_writer=vdcp.StoreWriter(url, **options))
        try:
            dcp.save({"model": msd, "optim": osd, "epoch": 4},
                     storage_writer=vdcp.StoreWriter(url, **options))
            out["resave"] = "accepted"
        except CheckpointException as exc:
            out["resave"] = sorted(type(e).__name__ for e in _unwrapped(exc))
        model2, optim2 = trained(1)
        msd2, osd2 = get_state_dict(model2, optim2)
        state = {"model": msd2, "optim": osd2, "epoch": 0}
        dcp.load(state, storage_reader=vdcp.StoreReader(url, **options))
        set_state_dict(model2, optim2, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        out["epoch"] = state["epoch"]
        out["params_equal"] = all(torch.equal(a, b) for a, b in
                                  zip(model.parameters(), model2.parameters()))
        s1, s2 = optim.state_dict()["state"], optim2.state_dict()["state"]
        out["optim_equal"] = s1.keys() == s2.keys() and all(
            torch.equal(torch.as_tensor(s1[k][f]), torch.as_tensor(s2[k][f]))
            for k in s1 for f in s1[k])
        if "://" not in root:  # torch's own reader reads the layout
            model3, optim3 = trained(2)
            msd3, osd3 = get_state_dict(model3, optim3)
            stock = {"model": msd3, "optim": osd3, "epoch": 0}
            dcp.load(stock, storage_reader=dcp.FileSystemReader(url))
            set_state_dict(model3, optim3, model_state_dict=stock["model"],
                           optim_state_dict=stock["optim"])
            out["stock_reader_equal"] = stock["epoch"] == 3 and all(
                torch.equal(a, b) for a, b in zip(model.parameters(), model3.parameters()))
        future = dcp.async_save({"model": msd, "epoch": 5},
                                storage_writer=vdcp.StoreWriter(f"{root}/async", **options))
        future.result()
        dist.barrier()
        out["async_committed"] = vs.open_store(f"{root}/async", **options).exists(vdcp.METADATA_KEY)
        dist.destroy_process_group()
    except BaseException as exc:  # reported to the parent, which fails the test
        out["error"] = f"{type(exc).__name__}: {exc}"
    queue.put(out)


def _run_ranks(root: str, tmp_path, options: dict | None = None) -> list[dict]:
    # spawned, not forked: by now the test process runs other tests' threads (s3fs's event
    # loop, servers' clients), and a forked child can inherit one of their locks held
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    init_file = str(tmp_path / "pg-init")
    procs = [ctx.Process(target=_rank_main, args=(r, RANKS, init_file, root, options or {}, queue))
             for r in range(RANKS)]
    for proc in procs:
        proc.start()
    try:
        results = [queue.get(timeout=300) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return sorted(results, key=lambda r: r["rank"])


def _check_ranks(results: list[dict], stock_reader: bool) -> None:
    for out in results:
        assert "error" not in out, out
        assert out["resave"] == ["AlreadyExists"] * RANKS, out
        assert out["epoch"] == 3 and out["params_equal"] and out["optim_equal"], out
        assert out["async_committed"], out
        if stock_reader:
            assert out["stock_reader_equal"], out


def test_gloo_round_trip_resave_refused_stock_reader(tmp_path):
    """RANKS gloo processes: model + optimizer round trip equal; a resave into the same id is
    AlreadyExists on every rank; torch's FileSystemReader reads the result; async_save
    commits."""
    _check_ranks(_run_ranks(str(tmp_path / "root"), tmp_path), stock_reader=True)


def test_gloo_on_seaweedfs(tmp_path, seaweedfs):
    root = seaweedfs.factory()().url
    _check_ranks(_run_ranks(root, tmp_path, seaweedfs.storage_options()), stock_reader=False)


# -- one process (DCP without a process group) -------------------------------------------------


@pytest.fixture(params=["local", "memory"])
def url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "ckpt")
    return f"memory://dcp-{os.urandom(6).hex()}/ckpt"


def _save(state: dict, url, **options) -> None:
    dcp.save(state, storage_writer=vdcp.StoreWriter(url, **options))


def _load(url, **options) -> dict:
    target = _empty()
    dcp.load(target, storage_reader=vdcp.StoreReader(url, **options))
    return target


def _data_files(store: vs.CheckpointStore) -> list[str]:
    return [k for k in store.list("") if k.endswith(".distcp")]


def test_round_trip_and_manifest(url):
    _save(_state(1), url, thread_count=2)
    _assert_state_equal(_load(url), _state(1))
    store = vs.open_store(url)
    files = _data_files(store)
    folder = files[0].rpartition("/")[0]
    manifest = json.loads(store.read_bytes(f"{folder}/{vdcp.MANIFEST_NAME}"))
    assert sorted(manifest["files"]) == sorted(f.rpartition("/")[2] for f in files)
    assert vdcp.validate_checkpoint(url)["ok"]


def _flip(store: vs.CheckpointStore, key: str, at: int) -> None:
    data = bytearray(store.read_bytes(key))
    data[at] ^= 0xFF
    store.save_bytes(bytes(data), key, validate=None)


def _largest(store: vs.CheckpointStore) -> str:
    return max(_data_files(store), key=lambda k: store.info(k).size)


def test_flipped_payload_byte_is_named(url):
    _save(_state(1), url)
    store = vs.open_store(url)
    victim = _largest(store)
    _flip(store, victim, store.info(victim).size // 2)
    error = _raises(vs.CheckpointCorrupted, lambda: _load(url))
    assert error.key == victim and error.code == "dcp.checksum_mismatch"
    report = vdcp.validate_checkpoint(url, deep=True)
    assert not report["ok"] and report["problems"][0]["file"] == victim


def test_truncated_and_missing_files(url):
    _save(_state(1), url)
    store = vs.open_store(url)
    victim = _largest(store)
    store.save_bytes(store.read_bytes(victim)[:-100], victim, validate=None)
    error = _raises(vs.CheckpointCorrupted, lambda: _load(url))
    assert error.key == victim and error.code == "dcp.truncated"
    store.delete(victim)
    assert _raises(vs.CheckpointMissing, lambda: _load(url)).key == victim


def _metadata_refused(kind: type[BaseException], url) -> BaseException:
    """The reader's own verdict on .metadata, and what dcp.load makes of it (DCP replaces
    any metadata read failure by an AssertionError carrying its message)."""
    with pytest.raises(kind) as info:
        vdcp.StoreReader(url).read_metadata()
    with pytest.raises(CheckpointException) as wrapped:
        _load(url)
    assert str(info.value) in str(wrapped.value)
    return info.value


def test_no_metadata_is_missing(url):
    assert _metadata_refused(vs.CheckpointMissing, url).key == vdcp.METADATA_KEY


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_hostile_metadata_runs_nothing(url):
    _save(_state(1), url)
    store = vs.open_store(url)
    events: list[str] = []

    def audit(event: str, args) -> None:
        if event in ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn"):
            events.append(event)

    sys.addaudithook(audit)
    store.save_bytes(pickle.dumps(_Evil()), vdcp.METADATA_KEY, validate=None)
    error = _metadata_refused(vs.UnsafeCheckpoint, url)
    assert error.code == "dcp.metadata_global" and "posix.system" in str(error)
    assert events == []
    # a .metadata naming a file outside the checkpoint
    _save(_state(2), url + "-2")
    other = vs.open_store(url + "-2")
    meta = vdcp.read_metadata(other)
    first = next(iter(meta.storage_data))
    info = meta.storage_data[first]
    meta.storage_data[first] = type(info)("../../outside.distcp", info.offset, info.length)
    other.save_bytes(pickle.dumps(meta), vdcp.METADATA_KEY, validate=None)
    assert _metadata_refused(vs.UnsafeCheckpoint, url + "-2").code == "dcp.path_escape"
    # damage that is not a pickle at all
    other.save_bytes(b"\x80\x04garbage", vdcp.METADATA_KEY, validate=None)
    _metadata_refused(vs.CheckpointCorrupted, url + "-2")


def test_non_tensor_items_are_checked_before_the_planner(url):
    """DCP's planner unpickles BYTE_IO items with weights_only=False: a hostile item is refused
    by the store's loader first, and nothing runs."""
    _save(_state(1), url)
    store = vs.open_store(url)
    meta = vdcp.read_metadata(store)
    (index,) = [i for i in meta.storage_data if i.fqn == "step"]
    key = meta.storage_data[index].relative_path
    buffer = io.BytesIO()
    torch.save(_Evil(), buffer)
    store.save_bytes(buffer.getvalue(), key, validate=None)
    error = _raises(vs.CheckpointError, lambda: _load(url, verify="none"))
    assert isinstance(error, vs.UnsafeCheckpoint), error


def test_stock_single_file_per_rank_checkpoint_validates(tmp_path):
    """A stock FileSystemWriter checkpoint (several archives back to back in one .distcp):
    every slice validates; a damaged slice is named; StoreReader reads the healthy one."""
    url = str(tmp_path / "stock")
    dcp.save(_state(3), storage_writer=dcp.FileSystemWriter(url, single_file_per_rank=True))
    whole = vs.open_store(url)
    (data_file,) = _data_files(whole)
    assert vs.validate(f"{url}/{data_file}", level="zip").ok is False  # many archives, one file
    report = vdcp.validate_checkpoint(url)
    assert report["ok"] and report["slices"] == 5
    _assert_state_equal(_load(url), _state(3))
    meta = vdcp.read_metadata(whole)
    victim = max(meta.storage_data.values(), key=lambda i: i.length)
    _flip(whole, data_file, victim.offset + victim.length // 2)
    bad = vdcp.validate_checkpoint(url, deep=True)
    assert [(p["file"], p["offset"]) for p in bad["problems"]] == [(data_file, victim.offset)]
    _raises(vs.CheckpointCorrupted, lambda: _load(url))


def _save_in_child_killed_after(url: str, state: dict, point: int, **options) -> int:
    """Fork; the child saves and is SIGKILLed after ``point`` store publishes; returns its
    signal (0 if it finished)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            store = vs.open_store(url)
            published = [0]
            original = store.save_bytes

            def counting(*args, **kwargs):
                if published[0] >= point:
                    os.kill(os.getpid(), signal.SIGKILL)
                result = original(*args, **kwargs)
                published[0] += 1
                return result

            store.save_bytes = counting  # type: ignore[method-assign]
            dcp.save(state, storage_writer=vdcp.StoreWriter(store, **options))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0


def test_killed_before_finish_leaves_no_checkpoint_and_gc_cleans(tmp_path):
    url = str(tmp_path / "killed")
    assert _save_in_child_killed_after(url, _state(1), point=3) == signal.SIGKILL
    store = vs.open_store(url)
    assert not store.exists(vdcp.METADATA_KEY) and _data_files(store)
    _metadata_refused(vs.CheckpointMissing, url)
    removed = vdcp.gc(url, older_than=0)
    assert removed and not _data_files(store)


def test_killed_overwrite_never_mixes_versions(tmp_path):
    """A checkpoint is overwritten (overwrite=True) by saves SIGKILLed at random points: what
    loads is always one whole save, never a mix (FileSystemWriter left a mixed checkpoint that
    loaded silently)."""
    url = str(tmp_path / "mixed")
    _save(_state(0), url)
    current = finished = 0
    rng = random.Random(7)
    for n in range(1, KILLS + 1):
        point = rng.randrange(0, 8)  # 5 data files, the manifest, .metadata; 7: it finishes
        signal_no = _save_in_child_killed_after(url, _state(n), point=point, overwrite=True)
        if signal_no == 0:
            current, finished = n, finished + 1
        got = _load(url)
        _assert_state_equal(got, _state(current))
    assert vdcp.validate_checkpoint(url)["ok"]
    if KILLS >= 10:  # both outcomes were exercised
        assert 0 < finished < KILLS
