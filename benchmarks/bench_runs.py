"""Pipeline-run benchmarks (issue 11): the background writer and the resume scan.

    python benchmarks/bench_runs.py                 # full: 10,000 x 3328 shards, ~15-20 min
    python benchmarks/bench_runs.py --quick         # smoke run (~30 s on a quiet machine)
    python benchmarks/bench_runs.py --json          # JSON lines instead of markdown tables

Three measurements, every method side by side in one run, rounds interleaved (the order
rotating), medians reported:

1. *Producer stall*: how long ``AsyncWriter.submit`` blocks per batch, against a synchronous
   ``store.save`` of the same shard batch, on local disk and on S3. The producer simulates the
   GPU's compute between submits by sleeping ``--compute`` times the median synchronous save,
   so the writer keeps up; the stall is then the snapshot copy (also timed alone).
2. *Throughput*: batches/s through ``store.writer(workers=...)`` against a loop of sequential
   ``save()``, the producer never waiting; and, each in its own process, the peak resident
   memory growth against ``max_pending`` (1, 2, 4), in batches.
3. *Scan*: files/s of ``store.scan(level="keys")`` over ``--scan-files`` small shard files
   (``--scan-rows`` rows) and ``--scan-big`` full-size ones (``--rows`` rows) against a loop of
   ``torch.load(weights_only=True)`` over the same files (on S3: list + GET + load).

Batches are the ``shard`` schema's layout (``samples.sample("shard", ...)``): ``embeddings``
(N x 3328 float32), ``sequence_ids`` (N str), ``metadata``. S3 is a SeaweedFS server started on
loopback (tests/s3server.py).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the SeaweedFS launcher lives with the tests

MB = 1 << 20
BUCKET = "vnps-bench-runs"


# -- helpers ------------------------------------------------------------------------------------

def shard(rows: int, seed: int = 0) -> dict[str, Any]:
    """A shard batch in the ``shard`` schema's real layout."""
    from virnucpro_store.testing.samples import sample

    return sample("shard", rows, seed=seed)


def renamed(batch: dict[str, Any], tag: str) -> dict[str, Any]:
    """``batch`` with fresh ids (the tensor shared): the next batch of a run."""
    n = len(batch["sequence_ids"])
    return dict(batch, sequence_ids=[f"{tag}_{i:06d}" for i in range(n)],
                metadata=dict(batch["metadata"], shard=tag))


def rotated(names: list[str], round_: int) -> list[str]:
    k = round_ % len(names)
    return names[k:] + names[:k]


def open_stores(work: Path, s3: dict | None) -> dict[str, Any]:
    import virnucpro_store as vs

    stores = {"local": vs.open_store(work / "local")}
    if s3 is not None:
        stores["S3"] = vs.open_store(f"s3://{BUCKET}/runs", **s3)
    return stores


def clear(store: Any, prefix: str) -> None:
    for key in list(store.list(prefix)):
        store.delete(key)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# -- 1. producer stall --------------------------------------------------------------------------

def bench_stall(stores: dict[str, Any], batch: dict[str, Any], *, batches: int, rounds: int,
                compute: float, emit: Callable[[dict], None]) -> None:
    """Per store: sync save vs writer.submit (and the snapshot copy alone), interleaved."""
    for where, store in stores.items():
        _stall_one(where, store, batch, batches=batches, rounds=rounds, compute=compute,
                   emit=emit)


def _stall_one(where: str, store: Any, batch: dict[str, Any], *, batches: int, rounds: int,
               compute: float, emit: Callable[[dict], None]) -> None:
    from virnucpro_store.runs import snapshot

    # warm-up (the first save opens connections), and the save time the simulated
    # compute is scaled from
    warm = []
    for i in range(3):
        started = time.perf_counter()
        store.save(batch, f"stall/warm{i}.pt", schema="shard")
        warm.append(time.perf_counter() - started)
    sleep_s = compute * statistics.median(warm[1:])
    sync: list[float] = []
    snap: list[float] = []
    stalls: list[float] = []
    waited = 0

    def run_sync(r: int) -> None:
        started = time.perf_counter()
        store.save(renamed(batch, f"sync{r}"), f"stall/sync{r}.pt", schema="shard")
        sync.append(time.perf_counter() - started)

    def run_snapshot(r: int) -> None:
        started = time.perf_counter()
        copy = snapshot(batch)
        snap.append(time.perf_counter() - started)
        del copy

    def run_writer(r: int) -> None:
        nonlocal waited
        embeddings = batch["embeddings"]
        with store.writer() as writer:
            for b in range(batches):
                # "GPU compute": a new batch in the producer's own buffer, then the rest of
                # the compute time as sleep (the real GPU does not use these CPUs)
                started = time.perf_counter()
                embeddings[0].fill_(float(b))  # the buffer is reused: snapshot must copy
                obj = renamed(batch, f"w{r}_{b}")
                if b:
                    time.sleep(max(0.0, sleep_s - (time.perf_counter() - started)))
                pending = writer.pending
                started = time.perf_counter()
                writer.submit(obj, f"stall/w{r}_{b}.pt", schema="shard")
                stalls.append(time.perf_counter() - started)
                waited += pending >= writer.max_pending
        # leaving the block flushed: every save is published (and raised if it failed)

    methods = {"sync": run_sync, "writer": run_writer, "snapshot": run_snapshot}
    for r in range(rounds):
        for name in rotated(list(methods), r):
            methods[name](r)
    clear(store, "stall")
    save = statistics.median(sync)
    stall = statistics.median(stalls)
    emit({"bench": "stall", "where": where, "rows": len(batch["sequence_ids"]),
          "batch_mb": round(batch["embeddings"].nbytes / MB),
          "compute_ms": ms(sleep_s), "batches": batches * rounds,
          "save_ms": ms(save), "submit_ms": ms(stall),
          "submit_p90_ms": ms(sorted(stalls)[int(0.9 * (len(stalls) - 1))]),
          "submit_max_ms": ms(max(stalls)), "snapshot_ms": ms(statistics.median(snap)),
          "stall_vs_save": round(stall / save, 3),
          "submits_that_waited": waited, "target_met": stall <= 0.10 * save})


# -- 2a. throughput -----------------------------------------------------------------------------

def bench_throughput(stores: dict[str, Any], batch: dict[str, Any], *, batches: int,
                     rounds: int, emit: Callable[[dict], None]) -> None:
    """Batches/s: a sequential save() loop vs the writer, the producer never waiting."""
    for where, store in stores.items():
        _throughput_one(where, store, batch, batches=batches, rounds=rounds, emit=emit)


def _throughput_one(where: str, store: Any, batch: dict[str, Any], *, batches: int, rounds: int,
                    emit: Callable[[dict], None]) -> None:
    default = store.writer().workers
    configs: dict[str, tuple[int, int] | None] = {"sequential save() loop": None}
    configs[f"writer(max_pending=2) [workers={default}]"] = (2, default)
    if default < 4:
        configs["writer(max_pending=4, workers=4)"] = (4, 4)
    else:
        configs[f"writer(max_pending={default}, workers={default})"] = (default, default)
    times: dict[str, list[float]] = {name: [] for name in configs}

    def run(name: str, r: int) -> None:
        config = configs[name]
        objs = [renamed(batch, f"t{r}_{b}") for b in range(batches)]
        started = time.perf_counter()
        if config is None:
            for b, obj in enumerate(objs):
                store.save(obj, f"tput/{b}.pt", schema="shard")
        else:
            with store.writer(max_pending=config[0], workers=config[1]) as writer:
                for b, obj in enumerate(objs):
                    writer.submit(obj, f"tput/{b}.pt", schema="shard")
        times[name].append(time.perf_counter() - started)

    run("sequential save() loop", -1)  # warm-up
    for r in range(rounds):
        for name in rotated(list(configs), r):
            run(name, r)
    clear(store, "tput")
    base = statistics.median(times["sequential save() loop"])
    for name, ts in times.items():
        emit({"bench": "throughput", "where": where, "method": name, "batches": batches,
              "median_s": round(statistics.median(ts), 3),
              "batches_per_s": round(batches / statistics.median(ts), 3),
              "speedup": round(base / statistics.median(ts), 2)})


# -- 2b. peak memory against max_pending (one process each) --------------------------------------

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def memory_worker(max_pending: int, rows: int, batches: int, work: str) -> dict:
    """Peak RSS growth while ``batches`` batches go through a local writer, the producer never
    waiting: the producer's own buffer plus what the writer holds."""
    import virnucpro_store as vs

    store = vs.open_store(Path(work) / "mem")
    store.save(shard(4), "warm.pt", schema="shard")  # imports and lazy state, before the baseline
    baseline = _rss()
    exact = _reset_peak()
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:  # a fallback where VmHWM cannot be reset
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    batch = shard(rows)  # the producer's buffer: the "+ 1"
    size = batch["embeddings"].nbytes
    with store.writer(max_pending=max_pending) as writer:
        for b in range(batches):
            batch["embeddings"][0].fill_(float(b))
            writer.submit(renamed(batch, f"m{b}"), f"m/{b}.pt", schema="shard")
    stop.set()
    sampler.join()
    top = max(peak[0], _peak()) if exact else peak[0]
    return {"growth": top - baseline, "batch": size, "workers": store.writer().workers,
            "exact": exact}


def bench_memory(rows: int, batches: int, rounds: int, work: Path,
                 emit: Callable[[dict], None]) -> None:
    settings = [1, 2, 4]
    growth: dict[int, list[float]] = {p: [] for p in settings}
    info: dict[str, Any] = {}
    for r in range(rounds):
        for p in rotated(settings, r):
            case = work / f"mem{p}"
            shutil.rmtree(case, ignore_errors=True)
            proc = subprocess.run([sys.executable, __file__, "--memory-worker", str(p), str(rows),
                                   str(batches), str(case)], capture_output=True, text=True)
            shutil.rmtree(case, ignore_errors=True)
            if proc.returncode:
                raise RuntimeError(f"memory worker failed:\n{proc.stderr[-3000:]}")
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            growth[p].append(info["growth"] / info["batch"])
    for p in settings:
        emit({"bench": "memory", "where": "local", "max_pending": p, "workers": info["workers"],
              "batches": batches, "batch_mb": round(info["batch"] / MB),
              "peak_growth_batches": round(statistics.median(growth[p]), 2),
              "peak_growth_mb": round(statistics.median(growth[p]) * info["batch"] / MB),
              "bound_batches": p + 1,
              "bounded": statistics.median(growth[p]) <= p + 1.25})


# -- 3. scan ------------------------------------------------------------------------------------

def write_scan_files(s3: dict | None, folder: str, files: int, rows: int, work: Path) -> None:
    """``files`` distinct shard files under ``folder`` on every store, written directly."""
    import torch

    base = shard(rows)
    blobs = []
    for i in range(files):
        buf = io.BytesIO()
        torch.save(renamed(base, f"f{i:05d}"), buf)
        blobs.append(buf.getvalue())
    local = work / "local" / folder
    local.mkdir(parents=True, exist_ok=True)
    for i, blob in enumerate(blobs):
        (local / f"shard_{i:05d}.pt").write_bytes(blob)
    if s3 is not None:
        client = s3_client(s3)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: client.put_object(
                Bucket=BUCKET, Key=f"runs/{folder}/shard_{i:05d}.pt", Body=blobs[i]), range(files)))


def s3_client(s3: dict) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=s3["endpoint_url"], aws_access_key_id=s3["key"],
                        aws_secret_access_key=s3["secret"], region_name="us-east-1")


def load_loop_local(folder: Path) -> int:
    """The obvious alternative, local: torch.load every file (weights_only=True)."""
    import torch

    ids: set[str] = set()
    for path in sorted(folder.glob("*.pt")):
        ids.update(torch.load(path, weights_only=True)["sequence_ids"])
    return len(ids)


def load_loop_s3(client: Any, prefix: str) -> int:
    """The obvious alternative on S3: list, GET each object whole, torch.load it."""
    import torch

    ids: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            ids.update(torch.load(io.BytesIO(body), weights_only=True)["sequence_ids"])
    return len(ids)


def scan_ids(store: Any, folder: str, files: int) -> int:
    report = store.scan(folder, level="keys")
    assert report.ok and len(report.valid) == files, report
    return len(report.ids)


def cli_validate(url: str, s3: dict | None, files: int, expected: int) -> int:
    """``virnucpro-store validate URL --level keys --json`` (8 jobs), run in-process through
    the command group itself (the interpreter's start-up is not the validator's cost); the
    ids are not the CLI's business, so this returns ``expected`` once every file passed."""
    import json

    from click.testing import CliRunner

    from virnucpro_store.cli import cli

    env = {"VIRNUCPRO_STORE_URL": None}
    if s3 is not None and url.startswith("s3://"):
        env.update({"AWS_ENDPOINT_URL": s3["endpoint_url"], "AWS_ACCESS_KEY_ID": s3["key"],
                    "AWS_SECRET_ACCESS_KEY": s3["secret"], "AWS_DEFAULT_REGION": "us-east-1"})
    result = CliRunner().invoke(cli, ["-q", "validate", url, "--level", "keys", "--json"],
                                env=env, catch_exceptions=False)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.exit_code == 0 and len(lines) == files and all(r["ok"] for r in lines), \
        result.output[-2000:]
    return expected


def bench_scan(stores: dict[str, Any], s3: dict | None, *, files: int, rows: int, rounds: int,
               work: Path, emit: Callable[[dict], None]) -> None:
    folder = f"scan{rows}"
    write_scan_files(s3, folder, files, rows, work)
    expected = files * rows
    size = (work / "local" / folder / "shard_00000.pt").stat().st_size
    for where, store in stores.items():
        methods: dict[str, Callable[[], int]] = {
            'store.scan(level="keys") [jobs=8]': partial(scan_ids, store, folder, files),
            "virnucpro-store validate --level keys [-j 8, in-process]": partial(
                cli_validate, store.url_for(folder), s3, files, expected)}
        if where == "local":
            methods["loop of torch.load(weights_only=True)"] = partial(
                load_loop_local, work / "local" / folder)
        else:
            assert s3 is not None
            methods["list + GET + torch.load(weights_only=True) loop"] = partial(
                load_loop_s3, s3_client(s3), f"runs/{folder}/")
        times: dict[str, list[float]] = {name: [] for name in methods}
        for name, call in methods.items():  # warm-up, and both see every id
            assert call() == expected, name
        for r in range(rounds):
            for name in rotated(list(methods), r):
                started = time.perf_counter()
                methods[name]()
                times[name].append(time.perf_counter() - started)
        for name, ts in times.items():
            emit({"bench": "scan", "where": where, "method": name, "files": files,
                  "rows": rows, "file_kb": round(size / 1024),
                  "median_s": round(statistics.median(ts), 3),
                  "files_per_s": round(files / statistics.median(ts), 1)})


# -- output -------------------------------------------------------------------------------------

def tables(rows: list[dict]) -> str:
    out: list[str] = []

    def table(bench: str, header: list[tuple[str, str]]) -> None:
        picked = [r for r in rows if r["bench"] == bench]
        if not picked:
            return
        out.append("| " + " | ".join(label for label, _ in header) + " |")
        out.append("|" + "|".join("---" if key in ("where", "method") else "---:"
                                  for _, key in header) + "|")
        for r in picked:
            out.append("| " + " | ".join(str(r[key]) for _, key in header) + " |")
        out.append("")

    out.append("**Producer stall** (per batch; writer() defaults: max_pending=2, workers as the "
               "backend says)\n")
    table("stall", [("where", "where"), ("batch MB", "batch_mb"), ("compute ms", "compute_ms"),
                    ("sync save ms", "save_ms"), ("submit ms (median)", "submit_ms"),
                    ("p90", "submit_p90_ms"), ("max", "submit_max_ms"),
                    ("snapshot alone ms", "snapshot_ms"), ("stall / save", "stall_vs_save"),
                    ("submits that waited", "submits_that_waited"), ("≤ 10 %", "target_met")])
    out.append("**Throughput** (producer never waits; batches per round)\n")
    table("throughput", [("where", "where"), ("method", "method"), ("batches", "batches"),
                         ("median s", "median_s"), ("batches/s", "batches_per_s"),
                         ("vs sequential", "speedup")])
    out.append("**Peak memory** (RSS growth over the process before the producer's buffer, "
               "local writer, producer never waits)\n")
    table("memory", [("max_pending", "max_pending"), ("workers", "workers"),
                     ("batch MB", "batch_mb"), ("peak growth MB", "peak_growth_mb"),
                     ("in batches", "peak_growth_batches"), ("max_pending + 1", "bound_batches"),
                     ("bounded", "bounded")])
    out.append("**Scan** (keys level)\n")
    table("scan", [("where", "where"), ("method", "method"), ("files", "files"),
                   ("rows per file", "rows"), ("file KB", "file_kb"), ("median s", "median_s"),
                   ("files/s", "files_per_s")])
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory-worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1,000-row batches, 50-file scan, 1 round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--rows", type=int, default=10_000, help="rows per shard batch")
    parser.add_argument("--batches", type=int, default=6, help="batches per writer run")
    parser.add_argument("--compute", type=float, default=1.25,
                        help="simulated GPU time between submits, in sync saves (default 1.25)")
    parser.add_argument("--scan-files", type=int, default=1000)
    parser.add_argument("--scan-rows", type=int, default=100, help="rows per scanned file")
    parser.add_argument("--scan-big", type=int, default=20,
                        help="also scan this many files of --rows rows (0: skip)")
    parser.add_argument("--only", nargs="+", choices=["stall", "throughput", "memory", "scan"],
                        default=["stall", "throughput", "memory", "scan"])
    parser.add_argument("--no-s3", action="store_true", help="skip S3 (local disk only)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of markdown")
    args = parser.parse_args()
    if args.memory_worker:
        p, rows, batches, work = args.memory_worker
        print(json.dumps(memory_worker(int(p), int(rows), int(batches), work)))
        return
    if args.quick:
        args.rounds, args.rows, args.batches = 1, 1000, 3
        args.scan_files, args.scan_rows, args.scan_big = 50, 100, 2

    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row) if args.json else f"  {row}", file=sys.stdout if args.json
              else sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="vnps-bench-runs-",
                                 dir=os.environ.get("VNPS_BENCH_DIR")))
    server = None
    s3: dict | None = None
    try:
        if not args.no_s3:
            import boto3
            from s3server import SeaweedFS

            server = SeaweedFS().start()
            boto3.client("s3", **server.client_kwargs()).create_bucket(Bucket=BUCKET)
            s3 = server.storage_options()
        stores = open_stores(work, s3)
        batch = shard(args.rows)
        if "stall" in args.only:
            bench_stall(stores, batch, batches=args.batches, rounds=args.rounds,
                        compute=args.compute, emit=emit)
        if "throughput" in args.only:
            bench_throughput(stores, batch, batches=args.batches, rounds=args.rounds, emit=emit)
        del batch
        if "memory" in args.only:
            bench_memory(args.rows, args.batches, args.rounds, work, emit)
        if "scan" in args.only:
            bench_scan(stores, s3, files=args.scan_files, rows=args.scan_rows,
                       rounds=args.rounds, work=work, emit=emit)
            if args.scan_big:
                bench_scan(stores, s3, files=args.scan_big, rows=args.rows,
                           rounds=args.rounds, work=work, emit=emit)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    if not args.json:
        print(tables(rows))


if __name__ == "__main__":
    main()
