"""Keys-level validation time per feature format, against torch.load(weights_only=True).

For each file: the median of ``--rounds`` interleaved rounds (validate, then torch.load, on the
same file, page cache warm) of ``validate_source(FileSource(path), level="keys")`` wall time,
its CPU time, the bytes it read, and ``torch.load(path, weights_only=True)`` (``mmap=True`` for
the merged file, as ``validate(deep=True)`` loads it). The shard batch is ``--shards`` files
validated one after another (files per second), against a loop of torch.load over them.

Run: ``python benchmarks/bench_validate.py`` (about 2 minutes; ``--quick``: smaller files and
3 rounds, for a smoke test). To compare with another checkout, run it with that checkout's
``src`` first on ``PYTHONPATH``: the files are cached in ``--dir`` and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any


def _files(directory: str, quick: bool, merged_mb: int, shards: int) -> dict[str, list[str]]:
    import torch

    from virnucpro_store.schemas import MERGED_DIM
    from virnucpro_store.testing.samples import sample

    os.makedirs(directory, exist_ok=True)
    n = 1000 if quick else 10_000
    merged_rows = max(1, (merged_mb << 20) // (MERGED_DIM * 4))
    plan: dict[str, list[tuple[str, Callable[[], Any]]]] = {
        f"esm {n}": [(f"esm_{n}.pt", lambda: sample("esm", n))],
        f"dnabert {n}": [(f"dnabert_{n}.pt", lambda: sample("dnabert", n))],
        f"merged {merged_mb} MB": [(f"merged_{merged_rows}.pt", lambda: {
            "ids": [f"s{i}" for i in range(merged_rows)],
            "data": torch.zeros(merged_rows, MERGED_DIM), "version": "1.0",
            "status": "complete"})],
        f"shard batch ({shards} files of 256)": [
            (f"shard_256_{i}.pt", lambda i=i: sample("shard", 256, seed=i))
            for i in range(shards)],
    }
    out: dict[str, list[str]] = {}
    for label, items in plan.items():
        paths = []
        for name, make in items:
            path = os.path.join(directory, name)
            if not os.path.exists(path):
                torch.save(make(), path + ".tmp")
                os.replace(path + ".tmp", path)
            paths.append(path)
        out[label] = paths
    return out


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", default="/tmp/vs-bench-validate")
    parser.add_argument("--merged-mb", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.merged_mb, args.shards = 3, 64, 20

    import torch

    import virnucpro_store
    from virnucpro_store.source import FileSource
    from virnucpro_store.validation.levels import validate_source

    print(f"virnucpro_store from {os.path.dirname(virnucpro_store.__file__)}; torch "
          f"{torch.__version__}; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.2f}")
    results = {}
    for label, paths in _files(args.dir, args.quick, args.merged_mb, args.shards).items():
        mmap = label.startswith("merged")
        reports = []

        def check(paths: list[str] = paths, reports: list[Any] = reports) -> None:
            reports.clear()
            for path in paths:
                report = validate_source(FileSource(path), level="keys", schema="auto")
                assert report.ok, report.message
                reports.append(report)

        def load(paths: list[str] = paths, mmap: bool = mmap) -> None:
            for path in paths:
                torch.load(path, weights_only=True, mmap=mmap)

        check()  # warm the page cache and imports
        load()
        walls, cpus, torch_walls = [], [], []
        for _ in range(args.rounds):  # interleaved, so that load changes hit both alike
            wall, cpu = _timed(check)
            walls.append(wall)
            cpus.append(cpu)
            torch_walls.append(_timed(load)[0])
        row = {
            "files": len(paths),
            "bytes": sum(os.path.getsize(p) for p in paths),
            "validate_ms": statistics.median(walls) * 1000,
            "validate_cpu_ms": statistics.median(cpus) * 1000,
            "bytes_read": sum(r.bytes_read for r in reports),
            "torch_load_ms": statistics.median(torch_walls) * 1000,
        }
        row["files_per_s"] = row["files"] / (row["validate_ms"] / 1000)
        row["torch_files_per_s"] = row["files"] / (row["torch_load_ms"] / 1000)
        results[label] = row
        print(f"{label:34} validate keys {row['validate_ms']:8.1f} ms (cpu "
              f"{row['validate_cpu_ms']:7.1f}), read {row['bytes_read']:>11,} of "
              f"{row['bytes']:>13,} bytes; torch.load {row['torch_load_ms']:8.1f} ms"
              + (f"; {row['files_per_s']:.0f} vs {row['torch_files_per_s']:.0f} files/s"
                 if len(paths) > 1 else ""), flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
