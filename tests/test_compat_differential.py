"""VirNucPro's own behaviour, side by side: every scenario below runs on VirNucPro's four
checkpoint modules (imported from /work/shared/reference/virnucpro-checkpoint, as
compat_reference does) and on ``virnucpro_store.compat`` in two fresh folders, and the
observable results (return values, exception types and message prefixes, the files left in
the folder) must be the same. Scenarios touch none of the reference's listed defects (those
are tests/test_compat_defects.py)."""

# ruff: noqa: B023 -- every lambda here is called at once, inside its loop
from __future__ import annotations

import json
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from compat_reference import reference

import virnucpro_store.compat as compat

REF = reference()
pytestmark = pytest.mark.skipif(REF is None, reason="VirNucPro's reference modules not here")


def _namespace(modules: dict) -> types.SimpleNamespace:
    merged: dict = {}
    for module in modules.values():
        merged.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    return types.SimpleNamespace(**merged)


def _norm(value, tmp: Path):
    """A result with the scenario's own folder replaced by ``<tmp>`` (paths compare equal)."""
    if isinstance(value, (str, Path)):
        return str(value).replace(str(tmp), "<tmp>")
    if isinstance(value, dict):
        return {k: _norm(v, tmp) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_norm(v, tmp) for v in value) if type(value) in (list, tuple) \
            else [_norm(v, tmp) for v in value]
    if isinstance(value, np.ndarray):
        return ("ndarray", str(value.dtype), value.shape, value.tolist())
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), tuple(value.shape), value.tolist())
    return value


def _files(tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))


def _outcome(fn, tmp: Path):
    try:
        return ("ok", _norm(fn(), tmp))
    except Exception as e:  # noqa: BLE001 -- the type and message are the result
        return ("raised", type(e).__name__, _norm(str(e), tmp))


def _differences(results) -> str:
    (ref, ref_files), (ours, our_files) = results["reference"], results["compat"]
    lines = [] if ref_files == our_files else [f"files: ref {ref_files} compat {our_files}"]
    if ref[0] == ours[0] == "ok" and isinstance(ref[1], (list, dict)) and \
            type(ref[1]) is type(ours[1]) and len(ref[1]) == len(ours[1]):
        keys = ref[1].keys() if isinstance(ref[1], dict) else range(len(ref[1]))
        lines += [f"[{k}] ref {ref[1][k]!r}\n    compat {ours[1][k]!r}" for k in keys
                  if ref[1][k] != ours[1][k]]
    else:
        lines.append(f"ref {ref!r}\n    compat {ours!r}")
    return "\n".join(lines)


def same_on_both(scenario, deliberate=()):
    """Run ``scenario(impl, tmp)`` on the reference and on compat; results and files match
    (but for the files in ``deliberate``: a documented difference, docs/compat.md)."""
    def run(tmp_path, monkeypatch):
        results = {}
        for name, impl in (("reference", _namespace(REF)), ("compat", compat)):
            tmp = tmp_path / name
            tmp.mkdir()
            monkeypatch.chdir(tmp)
            out = _outcome(lambda: scenario(impl, tmp), tmp)
            results[name] = (out, [f for f in _files(tmp) if f not in deliberate])
        assert results["reference"][0][0] == "ok", results["reference"]  # never vacuous
        assert results["compat"] == results["reference"], _differences(results)
    run.__name__ = scenario.__name__
    return run


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


# -- checkpoint_validation ---------------------------------------------------------------------

def _validate_cases(impl, tmp: Path):
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "text.pt").write_text("not a checkpoint")
    (tmp / "folder.pt").mkdir()
    _save(tmp / "good.pt", {"data": torch.ones(2), "ids": ["a"]})
    _save(tmp / "tensor.pt", torch.ones(3))
    _save(tmp / "list.pt", [1, 2])
    _save(tmp / "nodata.pt", {"other": 1})
    whole = (tmp / "good.pt").read_bytes()
    (tmp / "cut.pt").write_bytes(whole[: len(whole) // 2])
    out = []
    for name in ("missing.pt", "empty.pt", "text.pt", "folder.pt", "good.pt", "tensor.pt",
                 "list.pt", "nodata.pt", "cut.pt"):
        for kwargs in ({}, {"skip_load": True}, {"required_keys": []},
                       {"required_keys": ["data", "ids"]}, {"required_keys": ["nope"]}):
            ok, msg = impl.validate_checkpoint(tmp / name, **kwargs)
            # the reason after a torch.load failure is torch's own words or the store's
            if msg.startswith("corrupted: torch.load failed - "):
                msg = "corrupted: torch.load failed - ..."
            out.append((name, sorted(kwargs), ok, msg))
    return out


test_validate_checkpoint_levels = same_on_both(_validate_cases)


def _validate_accepts_str(impl, tmp: Path):
    _save(tmp / "good.pt", {"data": 1})
    return impl.validate_checkpoint(tmp / "good.pt"), impl.validate_checkpoint(
        Path("good.pt"))


test_validate_relative_path = same_on_both(_validate_accepts_str)


def _log_failures(impl, tmp: Path):
    (tmp / "empty.pt").write_bytes(b"")
    impl.validate_checkpoint(tmp / "missing.pt", log_failures=True)
    impl.validate_checkpoint(tmp / "empty.pt", log_failures=True)
    impl.validate_checkpoint(tmp / "empty.pt")  # not logged
    lines = (tmp / "failed_checkpoints.txt").read_text().splitlines()
    return [line.rsplit("|", 1)[0] for line in lines], [
        (p, r) for p, r, _ in impl.load_failed_checkpoints(tmp)]


test_validate_log_failures = same_on_both(_log_failures)


def _failed_log_file(impl, tmp: Path):
    sub = tmp / "sub"
    sub.mkdir()
    impl.log_failed_checkpoint(tmp / "a.pt", "corrupted: x|y", timestamp="T1")
    impl.log_failed_checkpoint(tmp / "b.pt", "incompatible: z", checkpoint_dir=sub,
                               timestamp="T2")
    with open(tmp / "failed_checkpoints.txt", "a") as f:
        f.write("malformed line\n\n  \n")
    return (impl.load_failed_checkpoints(tmp), impl.load_failed_checkpoints(sub),
            impl.load_failed_checkpoints(tmp / "nowhere"),
            (tmp / "failed_checkpoints.txt").read_text())


test_failed_checkpoints_file = same_on_both(_failed_log_file)


def _failed_log_into_missing_dir(impl, tmp: Path):
    # the log cannot be written: a warning, never an exception
    impl.log_failed_checkpoint(tmp / "nowhere" / "a.pt", "corrupted: x", timestamp="T")
    return impl.load_failed_checkpoints(tmp / "nowhere")


test_failed_log_unwritable = same_on_both(_failed_log_into_missing_dir)


def _distinguish(impl, tmp: Path):
    return [impl.distinguish_error_type(m) for m in (
        "corrupted: a", "incompatible: b", "something else", "", "incompatible:x",
        " incompatible: leading space", "INCOMPATIBLE: upper")]


test_distinguish_error_type = same_on_both(_distinguish)


def _batch(impl, tmp: Path):
    _save(tmp / "a.pt", {"data": 1})
    (tmp / "b.pt").write_bytes(b"")
    _save(tmp / "c.pt", {"x": 1})
    paths = [tmp / "a.pt", tmp / "b.pt", tmp / "c.pt", tmp / "d.pt"]
    return (impl.validate_checkpoint_batch(paths), impl.validate_checkpoint_batch([]),
            impl.validate_checkpoint_batch(paths, required_keys=["x"], skip_load=True))


test_validate_checkpoint_batch = same_on_both(_batch)


def _load_with_validation(impl, tmp: Path):
    _save(tmp / "v1.pt", {"data": torch.arange(3), "version": "1.0", "status": "complete"})
    _save(tmp / "v0.pt", {"data": 1})
    _save(tmp / "v2.pt", {"data": 1, "version": "2.1"})
    _save(tmp / "prog.pt", {"data": 1, "status": "in_progress"})
    _save(tmp / "nodata.pt", {"x": 1})
    out = []
    for name, kwargs in (("v1.pt", {}), ("v0.pt", {}), ("v2.pt", {}), ("prog.pt", {}),
                         ("nodata.pt", {}), ("nodata.pt", {"required_keys": ["x"]}),
                         ("nodata.pt", {"skip_validation": True}), ("missing.pt", {}),
                         ("v2.pt", {"skip_validation": True})):
        out.append(_outcome(lambda: impl.load_checkpoint_with_validation(tmp / name, **kwargs),
                            tmp))
    try:
        impl.load_checkpoint_with_validation(tmp / "v2.pt")
    except impl.CheckpointError as e:
        out.append((e.error_type, e.message, _norm(e.checkpoint_path, tmp)))
    return out


test_load_checkpoint_with_validation = same_on_both(_load_with_validation)


def _info(impl, tmp: Path):
    _save(tmp / "v.pt", {"data": 1, "version": "1.0", "status": "complete"})
    _save(tmp / "nov.pt", {"data": 1})
    _save(tmp / "t.pt", torch.ones(2))
    _save(tmp / "odd.pt", {"data": 1, "version": ["1"], "status": b"done"})
    _save(tmp / "long.pt", {"data": 1, "version": 2, "status": "s" * 300})
    (tmp / "text.pt").write_text("hello")
    (tmp / "text.pt.done").touch()
    (tmp / "v.pt.done").touch()
    out = {}
    for name in ("v.pt", "nov.pt", "t.pt", "odd.pt", "long.pt", "text.pt", "missing.pt"):
        info = impl.get_checkpoint_info(tmp / name)
        info["size_bytes"] = info["size_bytes"] > 0
        out[name] = info
    return out


test_get_checkpoint_info = same_on_both(_info)


def _checkpoint_error(impl, tmp: Path):
    e = impl.CheckpointError(Path("x.pt"), "incompatible", "bad version")
    return (str(e), e.error_type, e.message, e.checkpoint_path, isinstance(e, Exception),
            impl.CHECKPOINT_EXIT_CODE)


test_checkpoint_error_shape = same_on_both(_checkpoint_error)


# -- checkpoint --------------------------------------------------------------------------------

def _markers(impl, tmp: Path):
    p = tmp / "emb.pt"
    out = [impl.has_done_marker(p)]
    impl.create_done_marker(p)
    out.append(impl.has_done_marker(p))
    impl.create_done_marker(p)  # twice: fine
    impl.remove_done_marker(p)
    impl.remove_done_marker(p)  # absent: no-op
    out.append(impl.has_done_marker(p))
    impl.create_done_marker(tmp / "noext")
    out.append(impl.has_done_marker(tmp / "noext"))
    return out


test_done_markers = same_on_both(_markers)


def _atomic_save(impl, tmp: Path):
    d = {"data": torch.arange(4)}
    ret = impl.atomic_save(d, tmp / "m.pt")
    loaded = torch.load(tmp / "m.pt", weights_only=True)
    d2 = {"data": 1, "version": "0.9", "status": "whatever"}
    impl.atomic_save(d2, tmp / "n.pt", validate_after_save=False)
    loaded2 = torch.load(tmp / "n.pt", weights_only=True)
    impl.atomic_save([1, 2], tmp / "list.pt", skip_validation=True)
    return (ret, d, loaded, d2, loaded2, torch.load(tmp / "list.pt", weights_only=True),
            impl.has_done_marker(tmp / "list.pt"))


test_atomic_save = same_on_both(_atomic_save)


def _atomic_save_overwrite(impl, tmp: Path):
    impl.atomic_save({"data": 1}, tmp / "m.pt")
    impl.atomic_save({"data": 2}, tmp / "m.pt")
    return torch.load(tmp / "m.pt", weights_only=True)


test_atomic_save_overwrites = same_on_both(_atomic_save_overwrite)


def _atomic_save_rejects(impl, tmp: Path):
    out = []
    for obj, kwargs in (({"x": 1}, {}), ([1], {}), ({"x": 1}, {"skip_validation": True})):
        name = f"r{len(out)}.pt"
        out.append(_outcome(lambda: impl.atomic_save(obj, tmp / name, **kwargs), tmp))
        out.append(impl.has_done_marker(tmp / name))
    return out


test_atomic_save_rejects = same_on_both(_atomic_save_rejects)


def _load_compat(impl, tmp: Path):
    _save(tmp / "v1.pt", {"data": 1, "version": "1.0"})
    _save(tmp / "v0.pt", {"data": 1})
    _save(tmp / "v2.pt", {"data": 1, "version": "2.0"})
    _save(tmp / "v3.pt", {"data": 1, "version": "3.5"})
    _save(tmp / "t.pt", torch.ones(2))
    _save(tmp / "nodata.pt", {"x": 1})
    out = []
    for name, kwargs in (("v1.pt", {}), ("v0.pt", {}), ("v2.pt", {}), ("v3.pt", {}),
                         ("t.pt", {}), ("t.pt", {"skip_validation": True}), ("nodata.pt", {}),
                         ("nodata.pt", {"skip_validation": True}), ("missing.pt", {}),
                         ("v2.pt", {"skip_validation": True})):
        out.append(_outcome(lambda: impl.load_with_compatibility(tmp / name, **kwargs), tmp))
    for name, kwargs in (("v1.pt", {}), ("nodata.pt", {}), ("nodata.pt", {"required_keys": ["x"]}),
                         ("t.pt", {"skip_validation": True}), ("missing.pt", {})):
        out.append(_outcome(lambda: impl.load_checkpoint_safe(tmp / name, **kwargs), tmp))
    return out


test_load_with_compatibility = same_on_both(_load_compat)


def _enums(impl, tmp: Path):
    return ([(s.name, s.value) for s in impl.StageStatus],
            [(s.name, int(s)) for s in impl.PipelineStage], impl.CHECKPOINT_VERSION,
            impl.PipelineStage.CHUNKING < impl.PipelineStage.CONSENSUS)


test_enums = same_on_both(_enums)


# -- checkpoint_writer -------------------------------------------------------------------------

def _trigger(impl, tmp: Path):
    out = []
    for kwargs in ({}, {"seq_threshold": 0}, {"time_threshold_sec": 0},
                   {"time_threshold_sec": 10, "emergency_override_sec": 10},
                   {"seq_threshold": 3, "time_threshold_sec": 1.0,
                    "emergency_override_sec": 2.0}):
        out.append(_outcome(lambda: vars(impl.CheckpointTrigger(**kwargs)).keys(), tmp))
    t = impl.CheckpointTrigger(seq_threshold=3, time_threshold_sec=100.0)
    out.append([t.should_checkpoint(1), t.should_checkpoint(1), t.should_checkpoint(1),
                t.should_checkpoint(0), t.sequences_since_checkpoint])
    t.reset()
    out.append((t.sequences_since_checkpoint, t.should_checkpoint(0)))
    t.last_checkpoint_time -= 150
    out.append(t.should_checkpoint(0))
    t.last_checkpoint_time -= 1000
    out.append(t.should_checkpoint(0))
    return [list(o[1]) if o[0] == "ok" else o for o in out[:5]] + out[5:]


test_checkpoint_trigger = same_on_both(_trigger)


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "false", ""])
def test_checkpoint_trigger_env_switch(value, tmp_path, monkeypatch):
    monkeypatch.setenv("VIRNUCPRO_VIRAL_CHECKPOINT_MODE", value)
    ns = _namespace(REF)
    for kwargs in ({}, {"seq_threshold": 200}, {"time_threshold_sec": 30.0},
                   {"emergency_override_sec": 900.0}, {"seq_threshold": 10000}):
        got = [(t.seq_threshold, t.time_threshold_sec, t.emergency_override_sec)
               for t in (ns.CheckpointTrigger(**kwargs), compat.CheckpointTrigger(**kwargs))]
        assert got[1] == got[0], kwargs


def _write_batch(path: Path, embeddings, ids, metadata=None, done=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"embeddings": embeddings, "sequence_ids": ids, "metadata": metadata or {}},
               path, pickle_protocol=4)
    if done:
        path.with_suffix(path.suffix + ".done").touch()
    return path


def _validate_pt(impl, tmp: Path):
    e = np.ones((2, 3), np.float32)
    cases = {
        "good": _write_batch(tmp / "good.pt", e, ["a", "b"]),
        "tensor": _write_batch(tmp / "tensor.pt", torch.ones(2, 3), ["a", "b"]),
        "nodone": _write_batch(tmp / "nodone.pt", e, ["a", "b"], done=False),
        "oned": _write_batch(tmp / "oned.pt", np.ones(2, np.float32), ["a", "b"]),
        "noids": _write_batch(tmp / "noids.pt", e, []),
        "mismatch": _write_batch(tmp / "mismatch.pt", e, ["a"]),
        "tuple": _write_batch(tmp / "tuple.pt", e, ("a", "b")),
    }
    _save(tmp / "noemb.pt", {"sequence_ids": ["a"]})
    (tmp / "noemb.pt.done").touch()
    _save(tmp / "noid.pt", {"embeddings": e})
    (tmp / "noid.pt.done").touch()
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "empty.pt.done").touch()
    out = {name: impl.validate_checkpoint_pt(path) for name, path in cases.items()}
    for name in ("noemb.pt", "noid.pt", "empty.pt", "missing.pt"):
        out[name] = impl.validate_checkpoint_pt(tmp / name)
    return out


test_validate_checkpoint_pt = same_on_both(_validate_pt)


def _metadata(impl, tmp: Path):
    full = {"batch_idx": 0, "num_sequences": 2, "timestamp": "t", "model_config_hash": "h",
            "packing_enabled": True}
    return [impl.validate_checkpoint_metadata(full),
            impl.validate_checkpoint_metadata(full, "h", True),
            impl.validate_checkpoint_metadata(full, "other", False),
            impl.validate_checkpoint_metadata({}, "h", True),
            impl.validate_checkpoint_metadata({"batch_idx": 1})]


test_validate_checkpoint_metadata = same_on_both(_metadata)


def _read_batch(path: Path):
    """A batch file as VirNucPro's readers see it (keys, types, values), read without code."""
    with zipfile.ZipFile(path) as z:
        pkl = [n for n in z.namelist() if n.endswith("data.pkl")][0]
        protocol = z.read(pkl)[:2]
    import virnucpro_store

    obj = virnucpro_store.open_store(path.parent).load(path.name)  # the store's safe reader
    return protocol, {k: (type(v).__name__, _norm(v, path.parent)) for k, v in obj.items()}


def _writer_files(impl, tmp: Path):
    w = impl.AsyncCheckpointWriter()
    f1 = w.write_checkpoint_async(tmp / "batch_00000.pt", torch.ones(2, 3), ["a", "b"],
                                  {"batch_idx": 0})
    f2 = w.write_checkpoint_async(tmp / "batch_00001.pt", np.zeros((1, 3), np.float16), ["c"],
                                  {"batch_idx": 1, "x": [1]})
    f2.exception(timeout=60)  # finished, but not yet collected by wait_all(): still pending
    pending_after_submit = w.has_pending()
    w.wait_all()
    out = (f1.result(), f2.result(), pending_after_submit, w.has_pending(),
           _read_batch(tmp / "batch_00000.pt"), _read_batch(tmp / "batch_00001.pt"),
           impl.validate_checkpoint_pt(tmp / "batch_00001.pt"))
    w.shutdown()
    return out


test_async_writer_files = same_on_both(_writer_files)


def _writer_type_error(impl, tmp: Path):
    with impl.AsyncCheckpointWriter() as w:
        return _outcome(lambda: w.write_checkpoint_async(tmp / "b.pt", [[1.0]], ["a"], {}), tmp)


test_async_writer_rejects_lists = same_on_both(_writer_type_error)


def _writer_failure(impl, tmp: Path):
    (tmp / "afile").write_text("x")
    w = impl.AsyncCheckpointWriter()
    fut = w.write_checkpoint_async(tmp / "afile" / "batch_00000.pt", np.zeros((1, 2)), ["a"],
                                   {})
    err = _outcome(fut.result, tmp)
    waited = _outcome(w.wait_all, tmp)
    again = _outcome(w.wait_all, tmp)
    w.shutdown() if impl is compat else None
    return err[:2], err[2].startswith("Checkpoint write failed: "), waited[:2], \
        waited[2].split("\n")[0], "Checkpoint write failed" in waited[2], again


test_async_writer_failure = same_on_both(_writer_failure)


def _writer_manifest(impl, tmp: Path):
    m = impl.CheckpointManifest(tmp / "manifest.json")
    m.initialize(2)
    with impl.AsyncCheckpointWriter(manifest=m, rank=1) as w:
        w.write_checkpoint_async(tmp / "shard_1" / "batch_00000.pt", np.ones((2, 2)),
                                 ["a", "b"], {"batch_idx": 0})
        w.write_checkpoint_async(tmp / "shard_1" / "batch_00001.pt", np.ones((3, 2)),
                                 ["c", "d", "e"], {"batch_idx": 1})
    shard = m.get_shard_status(1)
    return (shard["last_checkpoint_batch"], shard["total_sequences"],
            [(c["batch_idx"], c["num_sequences"], c["file"], c["sequence_range"])
             for c in shard["checkpoints"]])


def _mkdir_shard(fn):
    def scenario(impl, tmp):
        (tmp / "shard_1").mkdir()  # the reference writer does not create folders
        return fn(impl, tmp)
    scenario.__name__ = fn.__name__
    return scenario


test_async_writer_updates_manifest = same_on_both(_mkdir_shard(_writer_manifest))


def _resume_layouts(impl, tmp: Path):
    out = [impl.resume_from_checkpoints(tmp, 0), impl.resume_from_checkpoints(tmp, 0, True)]
    (tmp / "shard_0").mkdir()
    out.append(impl.resume_from_checkpoints(tmp, 0))
    (tmp / "shard_0" / "batch_x.pt").write_text("odd")
    (tmp / "shard_0" / "notes.txt").write_text("odd")
    out.append(impl.resume_from_checkpoints(tmp, 0))
    e = np.arange(6, dtype=np.float32).reshape(3, 2)
    _write_batch(tmp / "shard_0" / "batch_00002.pt", e[2:], ["c"])
    _write_batch(tmp / "shard_0" / "batch_00000.pt", e[:1], ["a"])
    _write_batch(tmp / "shard_0" / "batch_1.pt", e[1:2], ["b"])  # numbered 1, no padding
    out.append(impl.resume_from_checkpoints(tmp, 0))
    out.append(impl.resume_from_checkpoints(tmp, 0, force_restart=True))
    out.append(impl.resume_from_checkpoints(tmp, 1))
    return out


test_resume_layouts = same_on_both(_resume_layouts)


def _resume_stops_at_first_bad(impl, tmp: Path):
    e = np.arange(10, dtype=np.float32).reshape(5, 2)
    shard = tmp / "shard_3"
    _write_batch(shard / "batch_00000.pt", e[:2], ["a", "b"])
    _write_batch(shard / "batch_00001.pt", e[2:3], ["c"], done=False)  # no marker: bad
    _write_batch(shard / "batch_00002.pt", e[3:], ["d", "e"])
    ids, emb, nxt, requeue = impl.resume_from_checkpoints(tmp, 3)
    return ids, emb, nxt, list(requeue), type(ids).__name__, type(emb).__name__


# compat also removes the markers of the batches after the first bad one (docs/compat.md)
test_resume_stops_at_first_bad = same_on_both(_resume_stops_at_first_bad,
                                              deliberate=("shard_3/batch_00002.pt.done",))


def _resume_mismatch(impl, tmp: Path):
    e = np.arange(8, dtype=np.float32).reshape(4, 2)
    _write_batch(tmp / "shard_0" / "batch_00000.pt", e[:1], ["a", "b"])  # rows != ids
    _write_batch(tmp / "shard_0" / "batch_00001.pt", e[1:], ["c", "d", "e"])
    ids, emb, nxt, requeue = impl.resume_from_checkpoints(tmp, 0)
    return ids, emb, nxt, list(requeue)


test_resume_mismatched_batch = same_on_both(_resume_mismatch,
                                            deliberate=("shard_0/batch_00001.pt.done",))


def _resume_tensor_embeddings(impl, tmp: Path):
    _write_batch(tmp / "shard_0" / "batch_00000.pt", torch.ones(2, 2), ["a", "b"])
    _write_batch(tmp / "shard_0" / "batch_00001.pt", torch.zeros(1, 2), ["c"])
    ids, emb, nxt, requeue = impl.resume_from_checkpoints(tmp, 0)
    return ids, type(emb).__name__, np.asarray(emb).tolist(), nxt, list(requeue)


test_resume_tensor_embeddings = same_on_both(_resume_tensor_embeddings)


# -- checkpoint_manifest -----------------------------------------------------------------------

_TIMES = ("created_at", "last_checkpoint_time", "timestamp", "completed_at", "failed_at")


def _untimed(value):
    if isinstance(value, dict):
        return {k: ("<time>" if k in _TIMES and v is not None else _untimed(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _manifest_lifecycle(impl, tmp: Path):
    m = impl.CheckpointManifest(tmp / "manifest.json", staleness_threshold_sec=5)
    out = [m.exists(), _untimed(m.initialize(3, "fp", "mh")), m.exists()]
    (tmp / "shard_0").mkdir()
    (tmp / "shard_0" / "batch_00000.pt").write_bytes(b"x")
    (tmp / "shard_0" / "batch_00001.pt").write_bytes(b"x")
    m.update_shard_checkpoint(0, 0, 10, "batch_00000.pt", "s0-s9")
    m.update_shard_checkpoint(0, 1, 5, "batch_00001.pt")
    out.append(_untimed(m.get_shard_status(0)))
    out.append(m.get_shard_status(7))
    m.set_global_metadata("fp2", "mh2")
    out.append(m.validate_run_compatibility("fp2", "mh2"))
    out.append(m.validate_run_compatibility("fp", "mh"))
    m.mark_shard_complete(1)
    m.mark_shard_failed(2, "boom")
    m.mark_shard_failed(2, "boom again")
    out += [m.get_completed_shards(), m.get_incomplete_shard_ranks(), m.get_resumable_shards(),
            m.get_orphaned_shards()]
    m.mark_shard_failed(2, "third")
    out.append(m.get_orphaned_shards())
    out.append(_untimed(m.get_resume_info(0)))
    out.append(m.get_resume_info(9))
    out.append(_untimed(m.get_global_progress()))
    out.append([m.is_shard_stale(r) for r in (0, 1, 2, 9)])
    out.append(m.is_shard_stale(0, threshold_sec=-1))
    m.reassign_shard(2, 0)
    out.append(m.get_latest_global_checkpoint())
    m.record_global_checkpoint("g1", {0: 1, 1: 4})
    m.record_global_checkpoint("g2", {0: 2})
    out.append(_untimed(m.get_latest_global_checkpoint()))
    out.append(_untimed(json.loads((tmp / "manifest.json").read_text())))
    return out


test_manifest_lifecycle = same_on_both(_manifest_lifecycle)


def _manifest_errors(impl, tmp: Path):
    m = impl.CheckpointManifest(tmp / "manifest.json")
    out = []
    for call in (lambda: m.get_shard_status(0), lambda: m.mark_shard_complete(0),
                 lambda: m.get_global_progress()):
        r = _outcome(call, tmp)
        out.append(r[:2])
    m.initialize(1)
    (tmp / "shard_0").mkdir()
    for call in (lambda: m.update_shard_checkpoint(0, 0, 1, "../x.pt"),
                 lambda: m.update_shard_checkpoint(0, 0, 1, "a/b.pt"),
                 lambda: m.update_shard_checkpoint(0, 0, 1, "missing.pt"),
                 lambda: m.update_shard_checkpoint(5, 0, 1, "missing.pt"),
                 lambda: m.mark_shard_complete(5), lambda: m.mark_shard_failed(5, "x"),
                 lambda: m.reassign_shard(5, 0), lambda: m.is_shard_stale(5)):
        r = _outcome(call, tmp)
        out.append((r[0], r[1], r[2].split(":")[0]) if r[0] == "raised" else r)
    return out


test_manifest_errors = same_on_both(_manifest_errors)


def _manifest_recovery(impl, tmp: Path):
    m = impl.CheckpointManifest(tmp / "manifest.json")
    m.initialize(2, "fp")
    good = (tmp / "manifest.json").read_text()
    out = []
    (tmp / "manifest.json").write_text("{broken")
    (tmp / "manifest.tmp").write_text(good)
    out.append(m.get_incomplete_shard_ranks())
    (tmp / "manifest.tmp").write_text("{also broken")
    (tmp / "manifest.backup").write_text(good.replace('"fp"', '"fp-backup"'))
    out.append(m.get_global_progress()["input_fingerprint"])
    (tmp / "manifest.backup").write_text("nope")
    try:
        m.get_completed_shards()
    except impl.ManifestCorruptedError as e:
        out.append(("ManifestCorruptedError", str(e).split(":")[0],
                    _norm(e.manifest_path, tmp)))
    return out


test_manifest_recovery = same_on_both(_manifest_recovery)


def _manifest_v1_migration(impl, tmp: Path):
    v1 = {"version": "1.0", "world_size": 1, "created_at": "2026-01-01T00:00:00+00:00",
          "shards": {"0": {"status": "complete", "original_rank": 0, "assigned_rank": 0,
                           "last_checkpoint_batch": 3, "total_sequences": 40,
                           "last_checkpoint_time": None, "retry_count": 0, "error": None,
                           "checkpoints": []}}}
    (tmp / "manifest.json").write_text(json.dumps(v1))
    m = impl.CheckpointManifest(tmp / "manifest.json")
    out = [m.get_completed_shards(), m.get_global_progress(), m.get_latest_global_checkpoint()]
    m.set_global_metadata("a", "b")
    out.append(_untimed(json.loads((tmp / "manifest.json").read_text())))
    return out


test_manifest_v1_migration = same_on_both(_manifest_v1_migration)


def _manifest_archive_cleanup(impl, tmp: Path):
    m = impl.CheckpointManifest(tmp / "manifest.json")
    m.initialize(2)
    out = []
    for rank in (0, 1):
        (tmp / f"shard_{rank}").mkdir()
        for b in range(3):
            name = f"batch_{b:05d}.pt"
            (tmp / f"shard_{rank}" / name).write_bytes(b"x")
            (tmp / f"shard_{rank}" / (name + ".done")).touch()
            m.update_shard_checkpoint(rank, b, 1, name)
    for folder in (tmp / "archive", tmp.parent / "elsewhere"):
        r = _outcome(lambda: m.archive_manifest(folder), tmp)
        out.append((r[0], r[1], r[2].split(":")[0]) if r[0] == "raised" else r)
    m.mark_shard_complete(0)
    m.mark_shard_complete(1)
    m.archive_manifest(tmp / "archive")
    out.append(json.loads((tmp / "archive" / "manifest_final.json").read_text())
               == json.loads((tmp / "manifest.json").read_text()))
    m.cleanup_checkpoints()
    out.append(_files(tmp))
    m.cleanup_checkpoints(keep_final_only=False)
    out.append(_files(tmp))
    m.cleanup_checkpoints(keep_final_only=False)  # twice: nothing left to remove
    return out


test_manifest_archive_cleanup = same_on_both(_manifest_archive_cleanup)


def test_manifest_files_cross_read(tmp_path):
    """A manifest either side writes is read the same by the other side."""
    ns = _namespace(REF)
    for writer, reader in ((ns, compat), (compat, ns)):
        folder = tmp_path / writer.__class__.__name__ / reader.__class__.__name__
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "shard_0").mkdir()
        (folder / "shard_0" / "batch_00000.pt").write_bytes(b"x")
        w = writer.CheckpointManifest(folder / "manifest.json")
        w.initialize(2, "fp", "mh")
        w.update_shard_checkpoint(0, 0, 7, "batch_00000.pt")
        w.mark_shard_failed(1, "err")
        r = reader.CheckpointManifest(folder / "manifest.json")
        assert r.get_resume_info(0) == w.get_resume_info(0)
        assert r.get_global_progress() == w.get_global_progress()
        r.mark_shard_complete(0)
        assert w.get_completed_shards() == [0]
