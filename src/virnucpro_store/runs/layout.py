"""The file names of a run: which keys of a run folder are checkpoints, which are VirNucPro's
own bookkeeping, and where the run manifest lives.

Rules (the same for :func:`~virnucpro_store.runs.scan`, ``commit_run`` and ``verify_run``):

- a run prefix is a folder: ``run7`` means ``run7/`` (:func:`run_folder`);
- checkpoints are ``*.pt`` / ``*.pth`` files (:data:`CHECKPOINT_PATTERNS`), or what a scan's
  ``pattern`` matches (:func:`matches_pattern`);
- never checkpoints, whatever the pattern: VirNucPro's ``manifest.json`` / ``manifest.lock``,
  its ``*.done`` completion sidecars and the ``*.tmp`` files of its unfinished saves;
- the run manifest (:data:`MANIFEST_NAME`, :func:`manifest_key`) and the manifests a
  replacing commit keeps (:func:`history_key`) are neither checkpoints nor skipped files.

>>> classify(["r/a.pt", "r/a.pt.done", "r/" + MANIFEST_NAME])
(['r/a.pt'], {'r/a.pt.done': 'completion sidecar (.done)'})
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ..errors import CheckpointMissing
from ..keys import normalize_prefix

if TYPE_CHECKING:
    from ..store import CheckpointStore

#: The run manifest's file name, under the run's prefix. It differs from VirNucPro's own
#: ``manifest.json`` / ``manifest.lock``, and ``scan`` never takes it for a checkpoint.
MANIFEST_NAME = "vnps-run-manifest.json"
#: file names ``scan`` takes for checkpoints unless ``pattern`` says otherwise
CHECKPOINT_PATTERNS = ("*.pt", "*.pth")


def run_folder(prefix: str) -> str:
    """A run prefix is a folder: ``run7`` means ``run7/`` (never ``run70/...``).

    >>> run_folder("run7"), run_folder("run7/"), run_folder("")
    ('run7/', 'run7/', '')
    """
    clean = normalize_prefix(prefix)
    return clean if not clean or clean.endswith("/") else clean + "/"


def manifest_key(prefix: str) -> str:
    """Where the run manifest of ``prefix`` lives.

    >>> manifest_key("runs/run7")
    'runs/run7/vnps-run-manifest.json'
    """
    return run_folder(prefix) + MANIFEST_NAME


def history_key(prefix: str, created: str) -> str:
    """Where ``commit_run(replace=True)`` keeps the manifest it replaces (committed at
    ``created``): next to it, never taken for a checkpoint.

    >>> history_key("run7", "2026-12-07T00:30:00+00:00")
    'run7/vnps-run-manifest.json.replaced-20261207T003000'
    """
    stamp = re.sub(r"[^0-9T]", "", created.partition("+")[0]) or "unknown"
    return f"{run_folder(prefix)}{MANIFEST_NAME}.replaced-{stamp}"


def _skip_reason(rel: str, pattern: str | None) -> str | None:
    """Why the file at ``rel`` (its key relative to the scanned prefix) is not a checkpoint;
    None if it is one. A ``pattern`` with a ``/`` matches ``rel`` component by component
    (``*`` never crosses a ``/``); one without matches the file name alone."""
    name = rel.rsplit("/", 1)[-1]
    # never checkpoints, whatever the pattern: VirNucPro's own bookkeeping and leftovers
    if name in ("manifest.json", "manifest.lock"):
        return "VirNucPro checkpoint manifest"
    if name.endswith(".done"):
        return "completion sidecar (.done)"
    if name.endswith(".tmp"):
        return "temporary file (.tmp) of an unfinished save"
    if pattern is not None:
        return None if matches_pattern(rel, pattern) else f"does not match {pattern!r}"
    if any(fnmatch.fnmatchcase(name, p) for p in CHECKPOINT_PATTERNS):
        return None
    return f"not a checkpoint name ({', '.join(CHECKPOINT_PATTERNS)})"


def classify(keys: Iterable[str], pattern: str | None = None, folder: str = ""
             ) -> tuple[list[str], dict[str, str]]:
    """Sort the keys of a run folder as :func:`~virnucpro_store.runs.scan` does: (checkpoint
    keys, {other key: why it is not one}); run manifests (:data:`MANIFEST_NAME`) are in
    neither. ``folder``: the scanned prefix, which a ``pattern`` with a ``/`` is relative to.

    >>> classify(["r/a.pt", "r/a.pt.done", "r/sequences.txt", "r/" + MANIFEST_NAME])
    (['r/a.pt'], {'r/a.pt.done': 'completion sidecar (.done)', \
'r/sequences.txt': 'not a checkpoint name (*.pt, *.pth)'})
    """
    checkpoints, skipped = [], {}
    for key in keys:
        name = key.rsplit("/", 1)[-1]
        if name == MANIFEST_NAME:
            continue
        rel = key[len(folder):] if key.startswith(folder) else key
        reason = _skip_reason(rel, pattern)
        if reason is None:
            checkpoints.append(key)
        else:
            skipped[key] = reason
    return checkpoints, skipped


def matches_pattern(rel: str, pattern: str) -> bool:
    """Whether the key ``rel`` (relative to the scanned prefix) matches a scan ``pattern``:
    with a ``/``, the whole relative path, one ``fnmatch`` per component (same number of
    components; ``*`` stays within one); without, the file name alone.

    >>> matches_pattern("shard_1/batch_7.pt", "shard_*/batch_*.pt")
    True
    >>> matches_pattern("shard_1/x/batch_7.pt", "shard_*/batch_*.pt")
    False
    >>> matches_pattern("shard_1/batch_7.pt", "batch_*.pt")
    True
    """
    if "/" not in pattern:
        return fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)
    want = pattern.strip("/").split("/")
    have = rel.split("/")
    return len(want) == len(have) and all(fnmatch.fnmatchcase(h, w)
                                          for h, w in zip(have, want))


def virnucpro_tmp_files(store: CheckpointStore, older_than: float = 3600) -> list[str]:
    """Keys of the ``*.tmp`` files (VirNucPro's unfinished saves) last modified at least
    ``older_than`` seconds ago; ``scan`` lists the same names in ``skipped``."""
    now = datetime.now(timezone.utc)
    found = []
    for key in store.list():
        if not key.endswith(".tmp"):
            continue
        try:
            modified = store.info(key).modified
        except CheckpointMissing:  # removed since the listing
            continue
        if modified is not None and (now - modified).total_seconds() >= older_than:
            found.append(key)
    return found


def remove_virnucpro_tmp(store: CheckpointStore, older_than: float = 3600) -> list[str]:
    """Delete :func:`virnucpro_tmp_files`; return their keys (``store.gc(virnucpro_tmp=True)``)."""
    removed = []
    for key in virnucpro_tmp_files(store, older_than):
        try:
            store.delete(key)
        except CheckpointMissing:  # someone else removed it meanwhile
            continue
        removed.append(key)
    return removed
