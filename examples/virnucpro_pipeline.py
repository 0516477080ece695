"""A VirNucPro-shaped pipeline on virnucpro_store: write, crash, resume, commit, verify.

Sequences go in; W worker *processes* (stand-ins for GPUs) embed them with deterministic fake
DNABERT-S (768) and ESM-2 (2560) models computed on the CPU from each sequence id, and write
shard batches ``shard_{rank}/batch_{NNNNN}.pt`` = {"embeddings": float32 (N, 3328) numpy array,
"sequence_ids": [...], "metadata": {...}} through ``store.writer()``, so the "GPU" never waits
on the disk. Every save is published atomically: a killed run leaves whole files or nothing.

    python examples/virnucpro_pipeline.py /tmp/run7 --kill-after 1   # dies mid-run (SIGKILL)
    python examples/virnucpro_pipeline.py /tmp/run7 --resume         # finishes, commits, verifies

``--resume`` scans the run, requeues exactly the ids no valid file holds, writes them, commits
the run (``vnps-run-manifest.json``) and verifies it, then checks that every id is stored exactly
once and that rows match ids (recomputing a few embeddings). The URL can be any store: a local
folder or ``s3://bucket/prefix`` (endpoint from $AWS_ENDPOINT_URL, credentials as for boto3).
``memory://`` is per process, so it cannot hold a multi-process run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from multiprocessing.connection import Connection

import numpy as np

import virnucpro_store as vs
from virnucpro_store.runs import MANIFEST_NAME

DNABERT_DIM, ESM_DIM = 768, 2560
#: the run's input: the sequence ids, one per line (a real run reads a FASTA file)
SEQUENCES = "sequences.txt"
BATCH_KEY = re.compile(r"shard_(\d+)/batch_(\d+)\.pt")


def sequence_ids(n: int) -> list[str]:
    """The synthetic input: ``n`` deterministic sequence ids."""
    return [f"seq{i:07d}" for i in range(n)]


def fake_embedding(seq_id: str) -> np.ndarray:
    """The (3328,) float32 feature of one sequence: fake DNABERT-S (768) then ESM-2 (2560)
    vectors, each seeded from a hash of the model name and the id (same id, same rows)."""
    parts = []
    for model, dim in (("dnabert-s", DNABERT_DIM), ("esm2-3b", ESM_DIM)):
        seed = int.from_bytes(hashlib.sha256(f"{model}:{seq_id}".encode()).digest()[:8], "big")
        parts.append(np.random.default_rng(seed).standard_normal(dim, dtype=np.float32))
    return np.concatenate(parts)


def open_run(url: str) -> vs.CheckpointStore:
    options = {}
    if url.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    return vs.open_store(url, **options)


def worker(rank: int, url: str, batches: list[tuple[int, list[str]]], gpu_seconds: float,
           ready: Connection) -> None:
    """One "GPU": embed each batch and hand it to the background writer."""
    store = open_run(url)
    import torch  # noqa: F401 -- the slow start; a real worker loads its models here
    ready.send(rank)
    with store.writer(max_pending=2) as writer:  # flushes (and raises any failure) on exit
        for number, ids in batches:
            time.sleep(gpu_seconds)  # the GPU's time for one batch
            embeddings = np.stack([fake_embedding(i) for i in ids])
            batch = {"embeddings": embeddings, "sequence_ids": ids,
                     "metadata": {"rank": rank, "batch": number, "models": ["DNABERT-S",
                                                                            "ESM-2 3B"]}}
            # overwrite=False: a batch already written is never replaced
            writer.submit(batch, f"shard_{rank}/batch_{number:05d}.pt", schema="shard",
                          overwrite=False)


def plan(todo: list[str], workers: int, batch: int,
         next_batch: dict[int, int]) -> list[list[tuple[int, list[str]]]]:
    """Split ``todo`` (in input order) into batches dealt round-robin to the workers; a
    worker's batch numbers continue after those its shard already holds."""
    per_rank: list[list[tuple[int, list[str]]]] = [[] for _ in range(workers)]
    for j, start in enumerate(range(0, len(todo), batch)):
        rank = j % workers
        number = next_batch.get(rank, 0) + len(per_rank[rank])
        per_rank[rank].append((number, todo[start:start + batch]))
    return per_rank


def kill_everything_after(seconds: float, procs: list[multiprocessing.Process],
                          ready: list[Connection]) -> None:
    """Simulate a crash (node lost, OOM killer): once every worker is ready, wait ``seconds``,
    then SIGKILL the workers and this process."""
    def fire() -> None:
        for conn in ready:
            conn.recv()
        time.sleep(seconds)
        print(f"--kill-after {seconds}: SIGKILL to {len(procs)} worker(s) and the driver",
              flush=True)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):  # that worker already finished
                os.kill(proc.pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=fire, daemon=True).start()


#: the run's own batch files, as a scan pattern (relative to the run's folder)
BATCH_PATTERN = "shard_*/batch_*.pt"


def resume_point(store: vs.CheckpointStore, expected: list[str]) -> tuple[list[str],
                                                                            dict[int, int]]:
    """(ids to redo, in input order; next batch number per rank) after a crash.

    Only what is provably this run's own bad output is deleted: a file of the run's own
    batch layout (``shard_N/batch_NNNNN.pt``) that is no valid checkpoint of any schema, in
    a run not yet committed. A committed run's files are never touched; a valid checkpoint of
    another schema is kept (its ids are not counted); an unreadable file is kept; a file
    deleted meanwhile is only reported."""
    removed = store.gc(older_than=0)  # staging leftovers of killed saves (no writer is running)
    report = store.scan(schema="shard", pattern=BATCH_PATTERN)
    committed = report.committed
    deleted = 0
    for key in report.vanished:
        print(f"{key} was deleted during the scan; its ids are requeued")
    for key, bad in sorted(report.invalid.items()):
        verdict = f"{bad.category}: {bad.message}"
        if committed:
            print(f"keeping {key} ({verdict}): the run is committed, its files are never "
                  f"deleted here; its ids are requeued (see verify below)")
            continue
        if bad.category == "unreadable":
            print(f"keeping {key} ({verdict}): it cannot be read, so it is not known to be "
                  f"bad output; its ids are requeued")
            continue
        other = store.validate(key, schema="auto")  # a valid file of another schema is data
        if other.ok:
            print(f"keeping {key}: a valid {other.schema or 'checkpoint'} file, not a shard "
                  f"batch ({verdict}); its ids are not counted, so they are requeued")
            continue
        try:
            store.delete(key)
        except vs.CheckpointMissing:
            print(f"{key} ({verdict}) was already gone; its ids are requeued")
            continue
        deleted += 1
        print(f"removed {key}, a batch file of this run that is no valid checkpoint "
              f"({verdict}); its ids are requeued")
    todo = [i for i in expected if i not in report.ids]
    print(f"resume: {len(report.valid)} valid batch file(s) hold {len(report.ids)} id(s); "
          f"{len(todo)} id(s) requeued; {deleted} bad batch file(s) and {len(removed)} "
          f"staging leftover(s) removed")
    next_batch: dict[int, int] = {}
    for key in store.list():
        match = BATCH_KEY.fullmatch(key)
        if match:
            rank, number = int(match[1]), int(match[2])
            next_batch[rank] = max(next_batch.get(rank, 0), number + 1)
    return todo, next_batch


def finish(store: vs.CheckpointStore, expected: list[str]) -> bool:
    """Commit the run, verify it, and check every id is stored exactly once, rows aligned."""
    if not store.exists(MANIFEST_NAME):  # a crash may have come after the commit
        manifest = store.commit_run("")
        print(f"committed {len(manifest.files)} file(s), {manifest.n_ids} id(s): "
              f"{store.url_for(manifest.key)}")
    report = store.verify_run("")
    counts = Counter(i for ids in report.ids_by_key.values() for i in ids)
    problems = [f"{key}: {bad.category}: {bad.message}" for key, bad in report.invalid.items()]
    missing = set(expected) - set(counts)
    if missing:
        problems.append(f"{len(missing)} id(s) missing, e.g. {sorted(missing)[:3]}")
    twice = [i for i, n in counts.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} id(s) stored more than once, e.g. {sorted(twice)[:3]}")
    unknown = set(counts) - set(expected)
    if unknown:
        problems.append(f"{len(unknown)} id(s) not in the input, e.g. {sorted(unknown)[:3]}")
    for key, ids in sorted(report.ids_by_key.items()):  # rows match ids: recompute a few
        batch = store.load(key, schema="shard")
        for row in sorted({0, len(ids) // 2, len(ids) - 1}):
            if not np.array_equal(batch["embeddings"][row], fake_embedding(ids[row])):
                problems.append(f"{key}: row {row} is not the embedding of {ids[row]}")
    for problem in problems:
        print(f"PROBLEM {problem}")
    print(f"verify: {'ok' if report.ok else 'FAILED'}: {len(report.valid)} file(s), "
          f"{len(counts)} of {len(expected)} id(s), each exactly once: {not problems}")
    return report.ok and not problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="run folder: a local path or s3://bucket/prefix")
    parser.add_argument("--sequences", type=int, default=2000, help="input size (new run)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes ('GPUs')")
    parser.add_argument("--batch", type=int, default=50, help="sequences per shard batch")
    parser.add_argument("--gpu-seconds", type=float, default=0.1,
                        help="simulated GPU time per batch")
    parser.add_argument("--kill-after", type=float, default=None, metavar="SECONDS",
                        help="SIGKILL the whole run this many seconds after its workers are "
                             "ready (have loaded their 'models')")
    parser.add_argument("--resume", action="store_true",
                        help="continue a killed run: redo exactly the missing ids")
    args = parser.parse_args(argv)
    started = time.monotonic()
    store = open_run(args.url)

    if args.resume:
        expected = store.read_bytes(SEQUENCES).decode().split()
        todo, next_batch = resume_point(store, expected)
    else:
        if any(True for _ in store.list()):
            parser.error(f"{store.url} is not empty; continue it with --resume")
        expected = sequence_ids(args.sequences)
        store.save_bytes("".join(f"{i}\n" for i in expected).encode(), SEQUENCES,
                         validate=None, overwrite=False)
        todo, next_batch = expected, {}

    batches = plan(todo, args.workers, args.batch, next_batch)
    print(f"{len(todo)} sequence(s) to embed in {sum(map(len, batches))} batch(es) on "
          f"{args.workers} worker(s) -> {store.url}", flush=True)
    # Workers start from a clean server process that imported torch once for all of them,
    # never as a fork of this process, whose threads may hold locks (CUDA requires the same);
    # each opens its own store connection.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "numpy", "virnucpro_store"])
    else:
        context = multiprocessing.get_context("spawn")
    work = [(rank, mine, context.Pipe(duplex=False)) for rank, mine in enumerate(batches)
            if mine]
    procs = [context.Process(target=worker, name=f"gpu{rank}",
                             args=(rank, args.url, mine, args.gpu_seconds, send))
             for rank, mine, (_, send) in work]
    for proc in procs:
        proc.start()
    if args.kill_after is not None:
        kill_everything_after(args.kill_after, procs, [recv for _, _, (recv, _) in work])
    for proc in procs:
        proc.join()
    failed = [proc.name for proc in procs if proc.exitcode != 0]
    if failed:
        print(f"worker(s) {', '.join(failed)} failed; rerun with --resume")
        return 1
    print(f"all batches written in {time.monotonic() - started:.1f} s", flush=True)
    ok = finish(store, expected)
    print(f"done in {time.monotonic() - started:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
