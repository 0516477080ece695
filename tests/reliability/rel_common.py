"""Shared pieces of the reliability suite: the scale, the self-checking payload, the tally of
what each test injected and saw, and the tmpfs mounts.

The scale is chosen by ``VNPS_RELIABILITY``: unset or ``ci`` runs the fast subset (the same
code, smaller numbers); ``full`` runs the figures published in the README.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MERGED_DIM = 3328
#: a version's value is writer * VERSION_BASE + seq; float32 holds it exactly below 2**24
VERSION_BASE = 100_000


@dataclass(frozen=True)
class Scale:
    name: str
    crash_kills: int  # SIGKILLs per backend
    crash_max_delay: float  # seconds a child saves before it may be killed
    race_writers: int
    race_saves: int  # saves per writer, all to one key
    race_readers: int
    create_only_racers: int
    create_only_rounds: int
    many_key_workers: int
    many_keys_each: int
    net_rates: tuple[float, ...]
    net_ops: int  # operations per fault rate
    disk_rounds: int
    node_ops: int  # saves (each with a load) before, and as many after, a node is lost


CI = Scale(name="ci", crash_kills=8, crash_max_delay=1.2, race_writers=8, race_saves=4,
           race_readers=2, create_only_racers=8, create_only_rounds=3, many_key_workers=8,
           many_keys_each=3, net_rates=(0.05, 0.20), net_ops=16, disk_rounds=6, node_ops=6)
FULL = Scale(name="full", crash_kills=120, crash_max_delay=1.5, race_writers=8, race_saves=25,
             race_readers=3, create_only_racers=8, create_only_rounds=25, many_key_workers=8,
             many_keys_each=25, net_rates=(0.01, 0.05, 0.10, 0.20), net_ops=150,
             disk_rounds=40, node_ops=12)


def current_scale() -> Scale:
    name = os.environ.get("VNPS_RELIABILITY", "ci").strip().lower() or "ci"
    if name not in ("ci", "full"):
        raise ValueError(f"VNPS_RELIABILITY must be 'ci' or 'full', not {name!r}")
    return FULL if name == "full" else CI


SCALE = current_scale()
#: pytest-timeout per test: generous in CI (a loaded 2-core runner), hours for the full run
TIMEOUT = 600 if SCALE.name == "ci" else 3 * 3600


# -- the payload: every saved object checks itself ---------------------------------------------

def make_version(writer: int, seq: int, rows: int) -> dict[str, Any]:
    """A merged-schema object whose every value says which save wrote it."""
    import torch

    value = writer * VERSION_BASE + seq
    assert value < 2**24, "float32 would round the version"
    return {"ids": [f"w{writer}-s{seq}-{i}" for i in range(rows)],
            "data": torch.full((rows, MERGED_DIM), float(value), dtype=torch.float32),
            "writer": writer, "seq": seq, "version": "1.0"}


class Inconsistent(AssertionError):
    """An object that is not one whole version as :func:`make_version` wrote it."""


def check_version(obj: Any) -> tuple[int, int]:
    """(writer, seq) of a whole version; raises :class:`Inconsistent` for anything else."""
    import torch

    if not isinstance(obj, dict) or not {"ids", "data", "writer", "seq"} <= set(obj):
        raise Inconsistent(f"not a version dict: {type(obj).__name__}")
    writer, seq, data, ids = obj["writer"], obj["seq"], obj["data"], obj["ids"]
    rows = len(ids)
    if not isinstance(data, torch.Tensor) or tuple(data.shape) != (rows, MERGED_DIM):
        raise Inconsistent(f"data shape {getattr(data, 'shape', None)} for {rows} ids")
    value = float(writer * VERSION_BASE + seq)
    if rows and not bool(torch.all(data == value)):
        raise Inconsistent(f"data of w{writer} s{seq} holds other values")
    if ids != [f"w{writer}-s{seq}-{i}" for i in range(rows)]:
        raise Inconsistent(f"ids of w{writer} s{seq} belong to another version")
    return writer, seq


# -- the tally ---------------------------------------------------------------------------------

RUN_ID = os.environ.get("VNPS_RELIABILITY_RUN") or datetime.now(timezone.utc).strftime(
    "%Y%m%dT%H%M%SZ")


@dataclass
class Tally:
    """What one test injected and saw. ``corrupt`` and ``lost`` must end at zero."""

    test: str
    title: str = ""
    faults: int = 0  # faults injected: kills, network faults, full disks, refusals, ...
    operations: int = 0  # store operations run under faults
    clean_errors: int = 0  # operations that raised a StoreError subclass
    corrupt: int = 0  # a partial, mixed or unreadable object seen where a whole one belongs
    lost: int = 0  # a published (acknowledged) version that is gone
    details: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def count(self, name: str, n: int = 1) -> None:
        self.details[name] = self.details.get(name, 0) + n

    def assert_nothing_lost(self) -> None:
        assert self.corrupt == 0, f"{self.corrupt} corrupt objects seen: {self.details}"
        assert self.lost == 0, f"{self.lost} lost objects: {self.details}"

    def record(self, outcome: str) -> dict[str, Any]:
        row = asdict(self)
        row.pop("started")
        row.update(run=RUN_ID, scale=SCALE.name, outcome=outcome,
                   seconds=round(time.monotonic() - self.started, 1),
                   date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return row


def append_result(row: dict[str, Any]) -> None:
    """Append one JSON line to ``$VNPS_RELIABILITY_RESULTS`` (nothing when unset)."""
    path = os.environ.get("VNPS_RELIABILITY_RESULTS")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(row, sort_keys=True, default=str) + "\n")


# -- mounts --------------------------------------------------------------------------------------

class MountRefused(RuntimeError):
    pass


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path``, unmounted on the way out whatever happens."""
    path.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    if done.returncode != 0:
        raise MountRefused(f"mount -t tmpfs refused: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        if _run("umount", str(path)).returncode != 0:
            _run("umount", "-l", str(path))


def remount(path: Path, mode: str) -> None:
    done = _run("mount", "-o", f"remount,{mode}", str(path))
    if done.returncode != 0:
        raise MountRefused(f"mount -o remount,{mode} refused: {done.stderr.strip()}")
