"""Lightning checkpoint saves (issue 26): TorchCheckpointIO (+ fsync) against StoreCheckpointIO.

    python benchmarks/bench_lightning.py             # ~400 MB checkpoint, 5 rounds
    python benchmarks/bench_lightning.py --quick     # ~48 MB, 3 rounds (smoke run)
    python benchmarks/bench_lightning.py --json      # JSON lines instead of a table

A Lightning-shaped checkpoint (``state_dict`` + AdamW ``exp_avg``/``exp_avg_sq`` + loops,
callbacks, hyper-parameters) is saved to local disk by each method in turn, rounds
interleaved with the order rotating, in one process; medians reported:

- ``torch+fsync``: stock ``TorchCheckpointIO.save_checkpoint`` then ``fsync`` of the file and
  its folder (stock Lightning never fsyncs; without it the figure is the page cache's);
- ``store-load`` / ``store-deep``: ``StoreCheckpointIO(validate="load")``, and with
  ``deep=True`` (every record's CRC-32 checked before publishing);
- ``async stall``: how long ``StoreCheckpointIO(async_save=True).save_checkpoint`` blocks the
  training loop, against ``snapshot`` -- a plain clone of every tensor of the checkpoint, the
  copy any asynchronous save must make.

Extra RSS is the growth of the process's peak resident set during the save (the kernel's
``VmHWM``, reset through ``/proc/self/clear_refs`` before each save), above the checkpoint
already in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

MB = 1 << 20


def lightning_checkpoint(total_mb: int) -> dict[str, Any]:
    """Parameters of total_mb/3 (16 tensors), with AdamW's two moments each as large."""
    import torch

    per = max(1, total_mb * MB // 3 // 16 // 4)  # float32 elements per parameter tensor
    g = torch.Generator().manual_seed(0)
    params = OrderedDict((f"layer{i}.weight", torch.randn(per, generator=g)) for i in range(16))
    state = {i: {"step": torch.tensor(100.0), "exp_avg": torch.randn(per, generator=g),
                 "exp_avg_sq": torch.rand(per, generator=g)} for i in range(16)}
    return {
        "epoch": 3, "global_step": 400, "pytorch-lightning_version": "2.6.6",
        "state_dict": params,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {
            "best_model_score": torch.tensor(0.25), "dirpath": "/ckpts",
            "best_k_models": {"/ckpts/epoch=2.ckpt": torch.tensor(0.25)}}},
        "optimizer_states": [{"state": state, "param_groups": [{
            "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01,
            "amsgrad": False, "params": list(range(16))}]}],
        "lr_schedulers": [], "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 1e-3, "hidden": 1024, "name": "bench"},
    }


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measured(run: Callable[[], Any]) -> tuple[float, float, float]:
    """(seconds, peak RSS growth, peak anonymous-memory growth; both MiB) of ``run()``. RSS
    counts mapped file pages too (page cache a deep check maps, reclaimable); the anonymous
    figure (RssAnon, sampled every 2 ms) is the memory the save itself holds."""
    import threading

    rss, anon = _status_kb("VmRSS"), _status_kb("RssAnon")
    peak_anon = [anon]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], _status_kb("RssAnon"))
            time.sleep(0.002)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        run()
        seconds = time.perf_counter() - started
    finally:
        done.set()
        sampler.join()
    peak_anon[0] = max(peak_anon[0], _status_kb("RssAnon"))
    return seconds, (_status_kb("VmHWM") - rss) / 1024, (peak_anon[0] - anon) / 1024


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~48 MB, 3 rounds")
    parser.add_argument("--mb", type=int, help="checkpoint size in MB (default 400)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--dir", help="where to save (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    total_mb = args.mb or (48 if args.quick else 400)
    rounds = args.rounds or (3 if args.quick else 5)

    import torch
    from lightning.fabric.plugins import TorchCheckpointIO

    from virnucpro_store.lightning import StoreCheckpointIO

    checkpoint = lightning_checkpoint(total_mb)
    size = sum(t.nbytes for t in _tensors(checkpoint)) / MB
    folder = tempfile.mkdtemp(prefix="vnps-bench-lightning-", dir=args.dir)
    torch_io = TorchCheckpointIO()
    store_load = StoreCheckpointIO(validate="load")
    store_deep = StoreCheckpointIO(validate="load", deep=True)
    store_async = StoreCheckpointIO(validate="load", async_save=True)

    def torch_fsync(path: str) -> None:
        torch_io.save_checkpoint(checkpoint, path)
        fsync_path(path)

    def snapshot(_path: str) -> None:
        copy = [t.clone() for t in _tensors(checkpoint)]
        del copy

    methods: dict[str, Callable[[str], None]] = {
        "torch+fsync": torch_fsync,
        "store-load": lambda p: store_load.save_checkpoint(checkpoint, p),
        "store-deep": lambda p: store_deep.save_checkpoint(checkpoint, p),
        "async stall": lambda p: store_async.save_checkpoint(checkpoint, p),
        "snapshot": snapshot,
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in methods}
    try:
        names = list(methods)
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                path = os.path.join(folder, f"{name.replace(' ', '_')}-{r}.ckpt")
                results[name].append(measured(lambda n=name, p=path: methods[n](p)))
                store_async.wait()  # the background save ends before the next method runs
                if os.path.exists(path):
                    os.remove(path)
        store_async.teardown()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    med = {name: (statistics.median(r[0] for r in rs), max(r[1] for r in rs),
                  max(r[2] for r in rs)) for name, rs in results.items()}
    base = med["torch+fsync"][0]
    rows = []
    for name, (seconds, rss, anon) in med.items():
        ratio = seconds / base if name != "snapshot" else None
        if name == "async stall":
            ratio = seconds / med["snapshot"][0]
        rows.append({"method": name, "seconds": round(seconds, 3), "ratio": ratio,
                     "peak_rss_growth_mib": round(rss, 1),
                     "peak_anon_growth_mib": round(anon, 1), "mb": round(size, 1),
                     "rounds": rounds})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"Lightning checkpoint, {size:.0f} MiB of tensors, {rounds} rounds interleaved, "
          f"medians (memory growth: the largest); torch {torch.__version__}")
    print()
    print("| method | seconds | ratio | extra peak RSS (MiB) | extra anon memory (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        ratio = row["ratio"]
        what = ("" if ratio is None else f"{ratio:.2f}x " +
                ("snapshot" if row["method"] == "async stall" else "torch+fsync"))
        print(f"| {row['method']} | {row['seconds']:.3f} | {what} | "
              f"{row['peak_rss_growth_mib']:.0f} | {row['peak_anon_growth_mib']:.0f} |")
    return 0


def _tensors(obj: Any) -> list[Any]:
    import torch

    found: list[Any] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


if __name__ == "__main__":
    sys.exit(main())
