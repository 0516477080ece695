"""Partitioned scans against one ``store.scan``: throughput, per-partition overhead, driver memory.

A cohort of ``--files`` small VirNucPro shard files (``run/shard_{rank}/batch_{n}.pt``, 2 ids
each) on local disk and on a SeaweedFS server started on loopback (tests/s3server.py). For
each medium, side by side in one run:

- ``store.scan(jobs=8)`` of the whole run (the baseline);
- ``distributed.scan`` on a Dask ``LocalCluster`` of 2 worker processes x 1 thread (each
  partition scanned with ``jobs=8``; the cluster's start is timed apart);
- the CLI scatter/gather in this process: ``scan-plan``, ``scan --plan --partition I/N --out``
  for each I, ``scan-merge`` (click's CliRunner, one partition after the other);

then the per-partition overhead (``--overhead-files`` files, one file per partition, against
one scan of the same files; engine "local" and on the cluster) and the driver's memory per
file with ``ids="none"`` (tracemalloc in the driver of a cluster scan: peak while scanning and
merging, and what the merged report keeps).

    python benchmarks/bench_scan_partitions.py                 # 10,000 files, local + S3
    python benchmarks/bench_scan_partitions.py --quick         # 1,000 files, smoke test
    python benchmarks/bench_scan_partitions.py --no-s3 --files 2000

Prints one JSON object per measurement, then a Markdown table (docs/cohort.md holds one).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the SeaweedFS launcher lives with the tests

import virnucpro_store as vs  # noqa: E402
from virnucpro_store import distributed  # noqa: E402

BUCKET = "vnps-bench-partitions"
RANKS = 10


def shard_bytes(ids: list[str]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"embeddings": torch.zeros(len(ids), 4), "sequence_ids": ids,
                "metadata": {"batch": 0}}, buffer)
    return buffer.getvalue()


def cohort(n_files: int, prefix: str = "run") -> dict[str, bytes]:
    per_rank = max(n_files // RANKS, 1)
    return {f"{prefix}/shard_{r}/batch_{b:05d}.pt": shard_bytes([f"r{r}b{b}s0", f"r{r}b{b}s1"])
            for r in range(RANKS) for b in range(per_rank)}


def populate(url: str, files: dict[str, bytes], client: Any = None) -> None:
    if client is not None:  # S3: one plain PUT per file (the fixture needs no atomic save)
        bucket, _, root = url[len("s3://"):].partition("/")
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=f"{root}/{kv[0]}",
                                                       Body=kv[1]), files.items()))
        return
    for key, data in files.items():  # plain writes: the fixture needs no durability
        path = os.path.join(url, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)


def timed(func, *args, **kwargs) -> tuple[float, Any]:
    start = time.perf_counter()
    out = func(*args, **kwargs)
    return time.perf_counter() - start, out


def cli_path(url: str, options: dict[str, Any], prefix: str, parts: int, work: Path
             ) -> vs.ScanReport:
    """scan-plan, scan --plan --partition I/N --out for each I, scan-merge: in process."""
    from click.testing import CliRunner

    from virnucpro_store.cli import cli

    flags = []
    if options.get("endpoint_url"):
        flags += ["--endpoint-url", options["endpoint_url"]]
    for name in ("key", "secret"):
        if name in options:
            flags += ["-o", f"{name}={options[name]}"]
    run_url = f"{url.rstrip('/')}/{prefix}"
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        result = runner.invoke(cli, [*args, *flags] if args[0] != "scan-merge" else list(args),
                               catch_exceptions=False)
        if result.exit_code not in (0, 3):
            raise RuntimeError(result.output)
        return result

    plan = str(work / "plan.json")
    invoke("scan-plan", run_url, "--partitions", str(parts), "--out", plan)
    outs = [str(work / f"part-{i}.json") for i in range(parts)]
    for i, out in enumerate(outs):
        invoke("scan", run_url, "--plan", plan, "--partition", f"{i}/{parts}", "--out", out)
    merged = str(work / "merged.json")
    invoke("scan-merge", *outs, "--out", merged, "--json")
    return vs.ScanReport.from_json(Path(merged).read_text())


def bench_medium(name: str, url: str, options: dict[str, Any], client: Any, n_files: int,
                 parts: int, work: Path, emit) -> dict[str, float]:
    store = vs.open_store(url, **options)
    t_scan, whole = timed(store.scan, "run", jobs=8)
    t_dask, on_dask = timed(distributed.scan, url, "run", engine=client, jobs=8,
                            storage_options=options, by="count",
                            target_files=-(-n_files // parts))
    cli_work = work / f"cli-{name}"
    cli_work.mkdir()
    t_cli, on_cli = timed(cli_path, url, options, "run", parts, cli_work)
    on_cli.valid = [f"run/{key}" for key in on_cli.valid]  # the CLI scanned the run's URL
    for label, report in (("dask", on_dask), ("cli", on_cli)):
        assert report.valid == whole.valid and report.ids == whole.ids, label
        assert len(report.invalid) == len(whole.invalid) == 0, label
    row = {"medium": name, "files": len(whole.valid), "partitions": parts,
           "scan_s": t_scan, "scan_files_per_s": len(whole.valid) / t_scan,
           "dask_s": t_dask, "dask_ratio": t_scan / t_dask,
           "cli_s": t_cli, "cli_ratio": t_scan / t_cli}
    emit(row)
    return row


def bench_overhead(url: str, options: dict[str, Any], client: Any, n_files: int,
                   emit) -> dict[str, float]:
    """One file per partition against one scan of the same files: the extra time per
    partition (plan, task, open_store, listing, JSON there and back, merge)."""
    store = vs.open_store(url, **options)
    t_scan, whole = timed(store.scan, "few", jobs=1)
    t_local, local = timed(distributed.scan, url, "few", engine="local", jobs=1,
                           storage_options=options, by="count", target_files=1)
    t_dask, on_dask = timed(distributed.scan, url, "few", engine=client, jobs=1,
                            storage_options=options, by="count", target_files=1)
    assert local.valid == on_dask.valid == whole.valid
    n = len(whole.valid)
    row = {"overhead_files": n, "scan_s": t_scan,
           "local_ms_per_partition": 1000 * (t_local - t_scan) / n,
           "dask_ms_per_partition": 1000 * (t_dask - t_scan) / n,
           "dask_ms_per_partition_2_workers_wall": 1000 * t_dask / n}
    emit(row)
    return row


def bench_driver_memory(url: str, options: dict[str, Any], client: Any, n_files: int,
                        parts: int, emit) -> dict[str, float]:
    """tracemalloc of the driver of a cluster scan with ids="none" (workers are other
    processes: only the driver's plan, futures, reports and merge are counted)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    report = distributed.scan(url, "run", engine=client, jobs=8, storage_options=options,
                              ids="none", by="count", target_files=-(-n_files // parts))
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n = len(report.valid) + len(report.invalid)
    row = {"driver_files": n, "driver_peak_bytes_per_file": (peak - before) / n,
           "driver_kept_bytes_per_file": (current - before) / n}
    emit(row)
    return row


def table(rows: list[dict[str, Any]], overhead: dict[str, Any], memory: dict[str, Any]) -> str:
    lines = ["| medium | files | partitions | store.scan(jobs=8) | files/s | Dask 2 workers "
             "| ratio | CLI scatter+merge | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['medium']} | {r['files']:,} | {r['partitions']} | "
                     f"{r['scan_s']:.1f} s | {r['scan_files_per_s']:.0f} | {r['dask_s']:.1f} s "
                     f"| {r['dask_ratio']:.2f}x | {r['cli_s']:.1f} s | {r['cli_ratio']:.2f}x |")
    lines += ["", f"Per-partition overhead ({overhead['overhead_files']} partitions of 1 file, "
              f"local disk): engine local {overhead['local_ms_per_partition']:.1f} ms, "
              f"Dask {overhead['dask_ms_per_partition']:.1f} ms (2 workers in parallel: "
              f"{overhead['dask_ms_per_partition_2_workers_wall']:.1f} ms of wall time per "
              "partition).",
              f"Driver memory, ids=\"none\", {memory['driver_files']:,} files: peak "
              f"{memory['driver_peak_bytes_per_file']:.0f} B/file, kept (the merged report) "
              f"{memory['driver_kept_bytes_per_file']:.0f} B/file."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=8,
                        help="partitions of the throughput runs (Dask and CLI)")
    parser.add_argument("--overhead-files", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="1,000 files, 50 for overhead")
    parser.add_argument("--no-s3", action="store_true", help="local disk only")
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.overhead_files = 1000, 50
    import distributed as dd

    # a kill (timeout, Ctrl-C) still stops the SeaweedFS server: the finally below runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                          for k, v in row.items()}), flush=True)

    work = Path(tempfile.mkdtemp(prefix="vnps-bench-partitions-"))
    server = None
    try:
        files = cohort(args.files)
        local = str(work / "local")
        populate(local, files)
        populate(local, cohort(args.overhead_files, "few"))
        media = [("local disk", local, {})]
        if not args.no_s3:
            import boto3
            from s3server import SeaweedFS

            server = SeaweedFS().start()
            s3 = boto3.client("s3", **server.client_kwargs())
            s3.create_bucket(Bucket=BUCKET)
            s3_url, s3_options = f"s3://{BUCKET}/cohort", server.storage_options()
            t_up, _ = timed(populate, s3_url, files, s3)
            emit({"s3_upload_s": t_up, "files": len(files)})
            media.append(("S3 (SeaweedFS)", s3_url, s3_options))
        t_start, cluster = timed(dd.LocalCluster, n_workers=2, threads_per_worker=1,
                                 processes=True, dashboard_address=None)
        client = dd.Client(cluster)
        emit({"local_cluster_start_s": t_start})
        with contextlib.ExitStack() as stack:
            stack.callback(cluster.close)
            stack.callback(client.close)
            client.run(lambda: __import__("virnucpro_store.distributed"))  # warm imports
            for name, url, options in media:
                rows.append(bench_medium(name, url, options, client, len(files),
                                         args.partitions, work, emit))
            overhead = bench_overhead(local, {}, client, args.overhead_files, emit)
            memory = bench_driver_memory(local, {}, client, len(files), args.partitions,
                                         emit)
        print()
        print(table(rows, overhead, memory))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
