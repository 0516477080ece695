"""Small, valid feature files of each VirNucPro format, with the real widths.

The one source of samples for the demo, the tests and the benchmarks (and for a backend
author's own tests).

>>> sample("merged", 4)["data"].shape
torch.Size([4, 3328])
"""

from __future__ import annotations

import io
from typing import Any

from ..schemas import DNABERT_DIM, ESM_DIM, MERGED_DIM

FORMATS = ("dnabert", "esm", "merged", "shard")


def sample(fmt: str, n: int = 8, *, seed: int = 0,
           numpy_embeddings: bool = False) -> dict[str, Any]:
    """A valid ``fmt`` feature dict with ``n`` entries, deterministic for a given ``seed``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = [f"seq{seed}_{i:06d}" for i in range(n)]
    common = {"version": "1.0", "status": "complete"}
    if fmt == "dnabert":
        vectors = torch.randn(n, DNABERT_DIM, generator=gen)
        return {
            "nucleotide": ids,
            "data": [{"label": ids[i], "mean_representation": vectors[i].tolist()}
                     for i in range(n)],
            **common,
        }
    if fmt == "esm":
        return {
            "proteins": [f"{name}_frame{(i % 6) + 1}" for i, name in enumerate(ids)],
            "data": [torch.randn(ESM_DIM, generator=gen) for _ in range(n)],
            **common,
        }
    if fmt == "merged":
        return {"ids": ids, "data": torch.randn(n, MERGED_DIM, generator=gen), **common}
    if fmt == "shard":
        embeddings: Any = torch.randn(n, MERGED_DIM, generator=gen)
        if numpy_embeddings:
            embeddings = embeddings.numpy()
        return {
            "embeddings": embeddings,
            "sequence_ids": ids,
            "metadata": {"model": "esm2_t36_3B_UR50D", "shard": seed, "count": n},
            **common,
        }
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def to_bytes(obj: Any, **torch_save_kwargs: Any) -> bytes:
    """``torch.save(obj)`` into memory: the bytes of a ``.pt`` file."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, **torch_save_kwargs)
    return buf.getvalue()


def sample_file(fmt: str, n: int = 8, **kwargs: Any) -> bytes:
    """The bytes of :func:`sample` saved with ``torch.save``."""
    return to_bytes(sample(fmt, n, **kwargs))
