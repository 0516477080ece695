"""A pipeline run on a real SeaweedFS *cluster*: a master, three volume servers
(``-defaultReplication=001``: every needle on two of them), a filer and the S3 gateway, each its
own ``weed`` process. Three writer processes write shard batches through ``store.writer()``;
mid-run a node is lost: one volume server is SIGKILLed, and one writer process with it (so the
resume always has ids to redo). Then the run is resumed as a pipeline would (``gc``, ``scan``,
requeue ``expected - report.ids``, repeated while saves fail), committed and verified.

The oracles are the S3 server's own listing and ``torch.load`` of every object it serves: every
batch a writer saw acknowledged is there, whole (also those with a replica on the lost server);
no visible file is invalid and the scan lists exactly the visible files and their ids; after
the resume every expected id is held exactly once, in a file whose rows are the embeddings of
its ids, and nothing else (no staging object) is left under the run's prefix.

Full run only (``VNPS_CLUSTER=full``): 40-70 s on two busy cores (the cluster's start, three
processes importing torch, S3 saves); a save caught by the loss may also wait out its attempt
timeouts (3 s here, 30 s for a copy, 3 attempts).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import virnucpro_store as vs
from virnucpro_store.runs import MANIFEST_NAME

FULL = os.environ.get("VNPS_CLUSTER") == "full"
pytestmark = [pytest.mark.s3, pytest.mark.timeout(600), pytest.mark.skipif(
    not FULL, reason="full run only (VNPS_CLUSTER=full): starts a 6-process SeaweedFS cluster "
    "and 3 writer processes; 40-70 s on two cores")]

WRITERS, BATCHES, BATCH = 3, 8, 16  # per writer: 8 batches of 16 ids (16 x 3328 float32)
GPU_SECONDS = 0.25  # simulated model time per batch: the writers are still busy at the kill
KILL_WHEN_PUBLISHED = WRITERS * BATCHES // 3  # batches visible on the server, then the kill
BUCKET = "vnps-cluster"
#: short client timeouts: a write caught by the lost node fails in seconds, then is requeued
OPTIONS: dict[str, Any] = {"retries": 2, "retry_base_wait": 0.1, "retry_max_wait": 0.5,
                           "request_timeout": 3}
RESUME_ROUNDS = 4


def _writer_main() -> None:
    """One writer process ("GPU"): imports (the slow part) while the cluster starts, reads its
    spec from stdin, embeds its batches and submits each through the writer. Prints one JSON
    line per save as it ends: key, ok, error, size, when it was submitted and when it ended."""
    import threading

    import numpy as np
    from test_pipeline_example import pipeline

    spec = json.loads(sys.stdin.readline())
    store = vs.open_store(spec["url"], **spec["options"])
    lock = threading.Lock()

    def report(key: str, submitted: float, future: Any) -> None:
        exc = future.exception()
        line = json.dumps({"key": key, "ok": exc is None, "submitted": submitted,
                           "done": time.time(), "size": None if exc else future.result().size,
                           "error": None if exc is None else f"{type(exc).__name__}: {exc}"[:300]})
        with lock:
            print(line, flush=True)

    with store.writer(max_pending=2) as writer:
        for number, ids in spec["batches"]:
            time.sleep(spec["gpu_seconds"])
            batch = {"embeddings": np.stack([pipeline.fake_embedding(i) for i in ids]),
                     "sequence_ids": ids, "metadata": {"rank": spec["rank"], "batch": number}}
            key = f"shard_{spec['rank']}/batch_{number:05d}.pt"
            while True:
                try:
                    future = writer.submit(batch, key, schema="shard", overwrite=False)
                    break
                except vs.StoreError:  # an earlier save failed (its future says which): go on
                    continue
            submitted = time.time()
            future.add_done_callback(lambda f, k=key, t=submitted: report(k, t, f))
        try:
            writer.flush()
        except vs.StoreError:
            pass  # each future holds its own failure; the resume absorbs them


def _requeue(store: vs.CheckpointStore, todo: list[str]) -> None:
    """Write ``todo`` as new batches (the example's plan: batch numbers continue each shard's),
    create-only, through one writer; raises the first failed save."""
    import numpy as np
    from test_pipeline_example import pipeline

    next_batch: dict[int, int] = {}
    for key in store.list():
        match = pipeline.BATCH_KEY.fullmatch(key)
        if match:
            rank, number = int(match[1]), int(match[2])
            next_batch[rank] = max(next_batch.get(rank, 0), number + 1)
    with store.writer(max_pending=2) as writer:
        for rank, batches in enumerate(pipeline.plan(todo, WRITERS, BATCH, next_batch)):
            for number, ids in batches:
                batch = {"embeddings": np.stack([pipeline.fake_embedding(i) for i in ids]),
                         "sequence_ids": ids, "metadata": {"rank": rank, "batch": number}}
                writer.submit(batch, f"shard_{rank}/batch_{number:05d}.pt", schema="shard",
                              overwrite=False)


def _published(client: Any, prefix: str) -> int:
    from virnucpro_store.keys import is_staging_file_name

    answer = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    return sum(1 for item in answer.get("Contents", [])
               if item["Key"].endswith(".pt")
               and not is_staging_file_name(item["Key"].rsplit("/", 1)[-1]))


def test_cluster_run_survives_a_lost_node(tmp_path):
    """A node is lost mid-run: one volume server and the writer process beside it, both
    SIGKILLed; the resume absorbs every failed or unwritten batch."""
    import boto3
    from botocore.config import Config
    from helpers import require_seaweedfs
    from seaweed_cluster import SeaweedCluster
    from test_pipeline_example import pipeline, s3_objects, visible_batches

    require_seaweedfs()
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    started = time.monotonic()
    times: dict[str, float] = {}
    rng = random.Random(1911)
    prefix = f"run-{rng.randrange(16**8):08x}"
    url = f"s3://{BUCKET}/{prefix}"
    expected = pipeline.sequence_ids(WRITERS * BATCHES * BATCH)
    per_rank = pipeline.plan(expected, WRITERS, BATCH, {})
    lost_volume, lost_writer = rng.randrange(3), rng.randrange(WRITERS)

    procs: list[subprocess.Popen[str]] = []
    cluster = SeaweedCluster(volumes=3, replication="001")
    try:
        for rank in range(WRITERS):  # they import torch while the cluster starts
            with (tmp_path / f"writer{rank}.err").open("w") as err:
                procs.append(subprocess.Popen(
                    [sys.executable, __file__, "--writer"], text=True, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=err, cwd=Path(__file__).parent))
        cluster.start()
        times["cluster up"] = time.monotonic() - started
        client = boto3.client("s3", config=Config(retries={"total_max_attempts": 1}),
                              **cluster.client_kwargs())
        client.create_bucket(Bucket=BUCKET)
        options = {**cluster.storage_options(), **OPTIONS}
        for rank, proc in enumerate(procs):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"url": url, "options": options, "rank": rank,
                                         "batches": per_rank[rank],
                                         "gpu_seconds": GPU_SECONDS}) + "\n")
            proc.stdin.flush()  # communicate() below closes it
        # the node is lost while the writers write: a third of the batches are visible
        deadline = time.monotonic() + 120
        while _published(client, prefix) < KILL_WHEN_PUBLISHED:
            assert time.monotonic() < deadline, "the writers published too little in 120 s"
            assert all(p.poll() is None for p in procs), "a writer ended before the kill"
            time.sleep(0.05)
        topology = cluster.topology()
        killed_at = time.time()
        cluster.kill_volume(lost_volume)
        procs[lost_writer].kill()
        times["kill"] = time.monotonic() - started
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        times["writers done"] = time.monotonic() - started
        for rank, p in enumerate(procs):
            if rank != lost_writer:
                assert p.returncode == 0, (tmp_path / f"writer{rank}.err").read_text()[-3000:]
        saves = [json.loads(line) for rank, out in enumerate(outputs)
                 for line in out.splitlines()
                 if rank != lost_writer or line.endswith("}")]  # a killed print may be cut
        survivors = {f"shard_{r}/" for r in range(WRITERS) if r != lost_writer}
        assert len([o for o in saves if o["key"][:8] in survivors]) == len(survivors) * BATCHES
        acked = {o["key"]: o["size"] for o in saves if o["ok"]}
        failed = {o["key"]: o["error"] for o in saves if not o["ok"]}
        # the loss was mid-run: the surviving writers submitted saves after it
        assert any(o["submitted"] > killed_at for o in saves), "all saves queued before the kill"

        # after the loss: no invalid visible file; every acknowledged save is there, whole
        before = visible_batches(s3_objects(client, url))
        for key, size in acked.items():
            assert key in before, f"{key} was acknowledged but is gone"
            head = client.head_object(Bucket=BUCKET, Key=f"{prefix}/{key}")
            assert head["ContentLength"] == size, key
        store = vs.open_store(url, **options)
        requeued: list[str] = []
        for _round in range(RESUME_ROUNDS):  # a resume that itself loses saves is resumed again
            store.gc(older_than=0)  # staging left by the failed saves (no writer runs now)
            report = store.scan(schema="shard")
            assert report.ok, {k: r.message for k, r in report.invalid.items()}
            visible = visible_batches(s3_objects(client, url))
            assert sorted(report.valid) == sorted(visible)  # the scan agrees with the oracle
            assert report.ids == {i for ids, _ in visible.values() for i in ids}
            todo = [i for i in expected if i not in report.ids]
            if not todo:
                break
            requeued += todo
            try:
                _requeue(store, todo)
            except vs.StoreError as exc:
                failed[f"resume round {_round}"] = f"{type(exc).__name__}: {exc}"[:300]
        else:
            pytest.fail(f"ids still missing after {RESUME_ROUNDS} resume rounds: {failed}")
        times["resumed"] = time.monotonic() - started

        manifest = store.commit_run("")
        # deep: every record against its CRC and a full safe load, on verify_run's threads
        verified = store.verify_run("", deep=True)
        times["verified"] = time.monotonic() - started
        assert verified.ok and not verified.extra, (
            {k: f"{r.category}: {r.message}" for k, r in verified.invalid.items()}, verified.extra)
        assert sorted(manifest.files) == sorted(verified.valid)
        assert manifest.n_ids == len(expected)

        # the server's own view: every expected id exactly once, rows aligned with ids
        after = visible_batches(s3_objects(client, url))
        assert MANIFEST_NAME not in after and sorted(after) == sorted(verified.valid)
        counts = Counter(i for ids, _ in after.values() for i in ids)
        assert sorted(counts) == expected and set(counts.values()) == {1}
        for key, (_, digest) in before.items():  # what survived the loss is kept as it was
            assert after[key][1] == digest, key
        assert set(requeued) == set(expected) - {i for ids, _ in before.values() for i in ids}
        leftovers = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=prefix + "/") for item in page.get("Contents", [])
            if item["Key"][len(prefix) + 1:] not in [*after, MANIFEST_NAME]]
        assert not leftovers  # gc removed the staging objects of the killed and failed saves
        for key in verified.valid:  # through the store as well: each file's rows match its ids
            batch = store.load(key, schema="shard")
            assert batch["embeddings"].shape == (len(batch["sequence_ids"]), 3328), key
            assert batch["sequence_ids"] == verified.ids_by_key[key], key
        errors = sorted(set(failed.values()))[:2]
        print(f"\ncluster run: killed volume server {lost_volume} and writer {lost_writer}; "
              f"{len(acked)} save(s) acknowledged, {len(failed)} failed {errors}; "
              f"{len(set(requeued))} id(s) requeued; volumes by server before the kill "
              f"{topology}, after {cluster.topology()}; "
              f"times {json.dumps({k: round(v, 1) for k, v in times.items()})}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        cluster.stop()
    assert not cluster.pids()


if __name__ == "__main__" and sys.argv[1:] == ["--writer"]:
    _writer_main()
