"""Worker processes for the compat tests: concurrent manifest updates, and a checkpoint writer
to SIGKILL. Run as ``python compat_workers.py write-forever FOLDER`` for the latter."""

from __future__ import annotations

import sys
from typing import Any

ROWS, DIM = 64, 512


def manifest_updates(url: str | None, options: dict[str, Any], manifest: str, rank: int,
                     count: int) -> None:
    """``count`` update_shard_checkpoint calls for shard ``rank``; ``url`` None: ``manifest``
    is a local path (VirNucPro's plain-path call)."""
    import virnucpro_store as vs
    from virnucpro_store.compat import CheckpointManifest, StorePath

    if url is None:
        target: Any = manifest
    else:
        target = StorePath(vs.open_store(url, **options), manifest)
    m = CheckpointManifest(target)
    for i in range(count):
        m.update_shard_checkpoint(rank, i, 1, f"batch_{i:05d}.pt", f"w{rank}-{i}")


def row_values(batch: int) -> list[int]:
    """The number every row of ``batch`` carries (row i of batch b: b * ROWS + i)."""
    return [batch * ROWS + i for i in range(ROWS)]


def write_forever(folder: str) -> None:
    """Write shard_0/batch_N.pt with AsyncCheckpointWriter until killed; print N once
    submitted. Row i of batch b is all (b * ROWS + i), its id f"id{b * ROWS + i}"."""
    from pathlib import Path

    import numpy as np

    from virnucpro_store.compat import AsyncCheckpointWriter

    writer = AsyncCheckpointWriter(max_workers=1)
    batch = 0
    while True:
        values = row_values(batch)
        rows = np.repeat(np.array(values, np.float32)[:, None], DIM, axis=1)
        writer.write_checkpoint_async(Path(folder) / "shard_0" / f"batch_{batch:05d}.pt", rows,
                                      [f"id{v}" for v in values], {"batch_idx": batch})
        print(batch, flush=True)
        batch += 1


if __name__ == "__main__":
    if sys.argv[1] == "write-forever":
        write_forever(sys.argv[2])
