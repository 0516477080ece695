"""Pipeline runs: a bounded background writer, a resume scan, and a committed run manifest.

A VirNucPro run is thousands of checkpoints written by several workers for hours. This package
answers the questions asked about the *run* rather than one file, the same way on every backend:

- :class:`AsyncWriter` (``store.writer()``): saves in background threads so the GPU does not
  wait on the disk; it snapshots each object on submit, bounds memory by ``max_pending``, keeps
  per-key submit order, and raises every failure at the next call.
- :func:`scan` (``store.scan()``): validates every checkpoint under a prefix in parallel and
  collects the sequence ids held by the *valid* files; a resume is ``expected - report.ids``.
- :func:`commit_run` (``store.commit_run()``): validates the run and publishes one JSON manifest
  (:data:`MANIFEST_NAME`) last, atomically and create-only.
- :func:`verify_run` (``store.verify_run()``): checks the run against its manifest.

Where each part lives (every name below is also importable from ``virnucpro_store.runs``):

- :mod:`~virnucpro_store.runs.writer`: :class:`AsyncWriter`, :func:`snapshot` and the
  byte-bounded buffer pool the snapshots reuse.
- :mod:`~virnucpro_store.runs.layout`: VirNucPro's file-name rules -- which keys of a run
  folder are checkpoints (:func:`classify`), where the run manifest lives
  (:func:`manifest_key`), VirNucPro's ``*.tmp`` leftovers.
- :mod:`~virnucpro_store.runs.examine`: the one per-file engine that scan, commit and verify
  judge a file with (validation, schema, ids, checksums, the manifest entry it must match).
- :mod:`~virnucpro_store.runs.scanning`: :func:`scan` and its :class:`ScanReport` (which
  partitioned scans merge).
- :mod:`~virnucpro_store.runs.manifest`: :func:`commit_run`, :func:`verify_run`,
  :class:`Manifest`.

The layers point one way: ``writer`` and ``layout`` stand alone; ``examine`` is below
``scanning``, which is below ``manifest``. Runs use only the store's public methods.

Example:
    >>> import torch, virnucpro_store as vs
    >>> store = vs.open_store("memory://runs-doc")
    >>> with store.writer() as writer:
    ...     for i in range(3):
    ...         ids = [f"seq{3 * i + j}" for j in range(3)]
    ...         _ = writer.submit({"ids": ids, "data": torch.zeros(3, 3328)},
    ...                           f"run/merged_{i}.pt", schema="merged")
    >>> report = store.scan("run")
    >>> report.ok, report.valid, len(report.ids)
    (True, ['run/merged_0.pt', 'run/merged_1.pt', 'run/merged_2.pt'], 9)
    >>> manifest = store.commit_run("run")
    >>> manifest.key, len(manifest.files)
    ('run/vnps-run-manifest.json', 3)
    >>> store.verify_run("run").ok
    True
"""

from .examine import FULL, UNREADABLE, VANISHED, ZIPCRC
from .layout import (
    CHECKPOINT_PATTERNS,
    MANIFEST_NAME,
    classify,
    history_key,
    manifest_key,
    matches_pattern,
    remove_virnucpro_tmp,
    virnucpro_tmp_files,
)
from .manifest import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestEntry,
    commit_run,
    read_manifest,
    verify_run,
)
from .scanning import SCAN_REPORT_FORMAT, ScanReport, scan
from .writer import AsyncWriter, default_workers, snapshot

__all__ = [
    "CHECKPOINT_PATTERNS", "FULL", "MANIFEST_FORMAT", "MANIFEST_NAME", "MANIFEST_VERSION",
    "MAX_MANIFEST_BYTES", "SCAN_REPORT_FORMAT", "UNREADABLE", "VANISHED", "ZIPCRC",
    "AsyncWriter", "Manifest", "ManifestEntry", "ScanReport", "classify", "commit_run",
    "default_workers", "history_key", "manifest_key", "matches_pattern", "read_manifest",
    "remove_virnucpro_tmp", "scan", "snapshot", "verify_run", "virnucpro_tmp_files",
]
