"""The cost of a safe save, side by side with what users do today.

    python benchmarks/bench.py                 # full run: writes benchmarks/RESULTS.md + .png
    python benchmarks/bench.py --quick         # CI smoke: 16 MB only, 2 repeats, no file written

Every method runs in its own subprocess (so its peak memory is its own), builds its object,
does one warm-up, then ``--repeats`` timed runs; the parent reports the median, min-max and the
ratio to the floor measured in the same run.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # the SeaweedFS launcher lives with the tests

MB = 1 << 20

# name -> (description, builder); sizes in MB for merged files
OBJECTS = {
    "merged-16MB": ("merged, 16 MB (1,260 x 3328 float32)", ("merged", 16)),
    "merged-256MB": ("merged, 256 MB (20,164 x 3328 float32)", ("merged", 256)),
    "merged-1GB": ("merged, 1 GB (80,659 x 3328 float32)", ("merged", 1024)),
    "esm-10k": ("ESM, 10,000 tensors of 2560 float32 (98 MB)", ("esm", 10_000)),
    "dnabert-10k": ("DNABERT, 10,000 entries of 768 floats (as lists)", ("dnabert", 10_000)),
}


def build(name: str) -> Any:
    import torch

    kind, n = OBJECTS[name][1]
    if kind == "merged":
        rows = n * MB // (3328 * 4)
        return {"ids": [f"s{i}" for i in range(rows)], "data": torch.rand(rows, 3328),
                "version": "1.0", "status": "complete"}
    from virnucpro_store.samples import sample

    return sample(kind, n)


# -- the methods: each takes (obj, workdir) and saves once ---------------------------------------

def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def local_torch_save(obj, work):
    import torch

    torch.save(obj, work / "plain.pt")


def local_floor(obj, work):
    """torch.save to the final path, then fsync: the least durability costs."""
    import torch

    path = str(work / "floor.pt")
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def local_virnucpro_current(obj, work):
    """VirNucPro's current protocol, as described: fixed .tmp name -> replace -> full
    torch.load(weights_only=False) -> a second save to flip the status field."""
    import torch

    path, tmp = work / "current.pt", work / "current.pt.tmp"
    first = dict(obj, status="in_progress")
    torch.save(first, tmp)
    os.replace(tmp, path)
    loaded = torch.load(path, weights_only=False)  # what the pipeline does today
    loaded["status"] = "complete"
    torch.save(loaded, tmp)
    os.replace(tmp, path)


def local_lightning(obj, work):
    """Lightning-style: serialize to an in-memory buffer, then write it out (fsspec)."""
    import fsspec
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with fsspec.open(str(work / "lightning.pt"), "wb") as f:
        f.write(buf.getvalue())


def _store_method(validate, deep=False):
    def method(obj, work):
        import virnucpro_store as vs

        vs.open_store(work / "store").save(obj, "features/x.pt", validate=validate, deep=deep)

    method.__doc__ = f"this store, validate={validate!r}{', deep=True' if deep else ''}"
    return method


LOCAL_SAVE = {
    "torch.save (no fsync)": local_torch_save,
    "floor: torch.save + fsync": local_floor,
    "VirNucPro current protocol": local_virnucpro_current,
    "Lightning-style buffer + write": local_lightning,
    "store validate=None": _store_method(None),
    'store validate="keys"': _store_method("keys"),
    'store validate="keys", deep': _store_method("keys", deep=True),
}


# -- worker side -----------------------------------------------------------------------------

def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(group: str, method: str, obj_name: str, repeats: int, work: str) -> dict:
    methods = {"local-save": LOCAL_SAVE}[group]
    func = methods[method]
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    obj = build(obj_name)
    baseline = _rss_now()
    func(obj, work_dir)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        func(obj, work_dir)
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    size = sum(p.stat().st_size for p in work_dir.rglob("*.pt")) // max(
        1, sum(1 for _ in work_dir.rglob("*.pt")))
    return {"times": times, "peak_extra": max(0, peak - baseline), "file_size": size}


# -- parent side -----------------------------------------------------------------------------

def run_case(group: str, method: str, obj_name: str, repeats: int, work: Path) -> dict:
    case_dir = work / f"{group}-{abs(hash((method, obj_name))) % 10**8}"
    shutil.rmtree(case_dir, ignore_errors=True)
    proc = subprocess.run([sys.executable, __file__, "--worker", group, method, obj_name,
                           str(repeats), str(case_dir)], capture_output=True, text=True)
    shutil.rmtree(case_dir, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} on {obj_name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict[str, str]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = subprocess.run(["findmnt", "-T", str(HERE), "-no", "FSTYPE,SOURCE"],
                        capture_output=True, text=True).stdout.strip() or "unknown"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": f"{cpu}, {os.cpu_count()} cores", "memory": f"{mem:.0f} GiB",
            "disk": fs, "torch": torch.__version__, "python": platform.python_version()}


def fmt_row(name: str, result: dict, floor_median: float | None) -> str:
    times = result["times"]
    median = statistics.median(times)
    ratio = f"{median / floor_median:.2f}x" if floor_median else "-"
    return (f"| {name} | {median * 1000:.0f} | {min(times) * 1000:.0f}–{max(times) * 1000:.0f} "
            f"| {ratio} | {result['peak_extra'] / MB:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="CI smoke run: small, no files")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--objects", nargs="*", default=None)
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    if args.worker:
        group, method, obj_name, repeats, work = args.worker
        print(json.dumps(worker(group, method, obj_name, int(repeats), work)))
        return
    objects = args.objects or (["merged-16MB"] if args.quick else list(OBJECTS))
    repeats = 2 if args.quick else args.repeats
    work = Path(os.environ.get("VNPS_BENCH_DIR", HERE / "_work"))
    work.mkdir(parents=True, exist_ok=True)
    lines = ["# Benchmark results", "",
             f"Command: `python benchmarks/bench.py{' --quick' if args.quick else ''}` "
             f"({time.strftime('%Y-%m-%d')})", ""]
    lines += [f"- {k}: {v}" for k, v in machine().items()]
    lines += ["", f"Median of {repeats} runs after one warm-up; peak memory is the method's "
              "extra resident memory over the object itself, in its own process.", ""]
    results: dict[str, dict[str, dict]] = {}
    lines += ["## Save, local disk", ""]
    for obj_name in objects:
        lines += [f"### {OBJECTS[obj_name][0]}", "",
                  "| method | median ms | min–max ms | vs floor | peak extra MB |",
                  "|---|---|---|---|---|"]
        results[obj_name] = {}
        for method in LOCAL_SAVE:
            res = run_case("local-save", method, obj_name, repeats, work)
            results[obj_name][method] = res
            print(f"{obj_name:14} {method:34} {statistics.median(res['times']) * 1000:8.0f} ms",
                  flush=True)
        floor = statistics.median(results[obj_name]["floor: torch.save + fsync"]["times"])
        lines += [fmt_row(m, r, floor) for m, r in results[obj_name].items()]
        lines.append("")
    if args.quick:
        print("\n".join(lines))
        return
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
