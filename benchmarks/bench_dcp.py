"""DCP on the store against torch's own FileSystemWriter, side by side in one run.

Two gloo ranks (``init_method=file://``) save ``--mb`` MB of state in total (items of
``--item-mb`` MB) through ``FileSystemWriter(single_file_per_rank=False)`` and through
``virnucpro_store.dcp.StoreWriter`` (validate="load"), interleaved for ``--rounds`` rounds; the
table gives each rank's median save time and the ratio. Then: ``dcp.async_save``'s blocking
time with the StoreWriter against the staging copy alone, and the cost of ``verify="checksum"``
against ``verify="none"`` at load.

    python benchmarks/bench_dcp.py            # 256 MB, 64 MB items, 5 rounds
    python benchmarks/bench_dcp.py --quick    # 32 MB, 2 rounds (CI-sized smoke run)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
import warnings


def _state(total_mb: int, item_mb: int, rank: int, world: int):
    import torch

    per_rank = total_mb // world
    n_items = max(1, per_rank // item_mb)
    numel = (item_mb << 20) // 4
    return {f"r{rank}_t{i}": torch.full((numel,), float(rank + i)) for i in range(n_items)}


def _rank(rank: int, world: int, init: str, root: str, args, queue) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    import virnucpro_store.dcp as vdcp

    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    state = _state(args.mb, args.item_mb, rank, world)
    times: dict[str, list[float]] = {"FileSystemWriter": [], "StoreWriter": [],
                                     "async blocking": [], "staging copy": [],
                                     "load verify=none": [], "load verify=checksum": [],
                                     "FileSystemReader": []}
    for n in range(args.rounds):
        for name in ("FileSystemWriter", "StoreWriter"):
            path = f"{root}/{name}-{n}"
            writer = (dcp.FileSystemWriter(path, single_file_per_rank=False)
                      if name == "FileSystemWriter" else vdcp.StoreWriter(path))
            dist.barrier()
            started = time.perf_counter()
            dcp.save(state, storage_writer=writer)
            times[name].append(time.perf_counter() - started)
        dist.barrier()
        started = time.perf_counter()
        copy = {k: v.clone() for k, v in state.items()}
        times["staging copy"].append(time.perf_counter() - started)
        del copy
        dist.barrier()
        started = time.perf_counter()
        future = dcp.async_save(state, storage_writer=vdcp.StoreWriter(f"{root}/async-{n}"))
        times["async blocking"].append(time.perf_counter() - started)
        future.result()
        for verify in ("none", "checksum"):
            target = {k: torch.empty_like(v) for k, v in state.items()}
            dist.barrier()
            started = time.perf_counter()
            dcp.load(target, storage_reader=vdcp.StoreReader(f"{root}/StoreWriter-{n}",
                                                             verify=verify))
            times[f"load verify={verify}"].append(time.perf_counter() - started)
        target = {k: torch.empty_like(v) for k, v in state.items()}
        dist.barrier()
        started = time.perf_counter()
        dcp.load(target, storage_reader=dcp.FileSystemReader(f"{root}/FileSystemWriter-{n}"))
        times["FileSystemReader"].append(time.perf_counter() - started)
        dist.barrier()
        if rank == 0:
            for name in os.listdir(root):
                if name.endswith(f"-{n}"):
                    shutil.rmtree(f"{root}/{name}", ignore_errors=True)
    dist.destroy_process_group()
    queue.put((rank, {k: statistics.median(v) for k, v in times.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--item-mb", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.mb, args.item_mb, args.rounds = 32, 8, 2
    import torch

    world = 2
    with tempfile.TemporaryDirectory(dir=os.environ.get("VNPS_BENCH_DIR")) as tmp:
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_rank, args=(r, world, f"{tmp}/init", f"{tmp}/ckpt", args,
                                                  queue)) for r in range(world)]
        os.makedirs(f"{tmp}/ckpt")
        for proc in procs:
            proc.start()
        results = dict(queue.get(timeout=1800) for _ in procs)
        for proc in procs:
            proc.join()
    print(f"torch {torch.__version__}; {args.mb} MB over {world} gloo ranks, items of "
          f"{args.item_mb} MB, medians of {args.rounds} interleaved rounds (seconds per rank)")
    print("| rank | FileSystemWriter | StoreWriter | ratio | async blocking | staging copy "
          "| FileSystemReader | load verify=none | verify=checksum | checksum cost |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rank, t in sorted(results.items()):
        print(f"| {rank} | {t['FileSystemWriter']:.3f} | {t['StoreWriter']:.3f} | "
              f"{t['StoreWriter'] / t['FileSystemWriter']:.2f}x | {t['async blocking']:.3f} | "
              f"{t['staging copy']:.3f} | {t['FileSystemReader']:.3f} | "
              f"{t['load verify=none']:.3f} | "
              f"{t['load verify=checksum']:.3f} | "
              f"{100 * (t['load verify=checksum'] / t['load verify=none'] - 1):+.1f} % |")


if __name__ == "__main__":
    main()
