"""A scan of a cohort across machines: partitions as tasks, on Dask or in this process.

:func:`scan` plans the partitions (:meth:`~virnucpro_store.CheckpointStore.plan_scan`), runs
one task per partition — each task receives the store's URL and the partition as JSON, never a
store object, and opens the store itself with the worker's own credentials — and merges the
partial reports into the report one :meth:`~virnucpro_store.CheckpointStore.scan` of the whole
prefix gives.

- ``engine="local"``: the tasks run here, one after the other (each scans with ``jobs``
  threads). ``engine="dask"``: on the current Dask client (``distributed.get_client()``), or a
  2-worker ``LocalCluster`` started for the scan; or pass a ``distributed.Client`` (e.g. of a
  ``dask_jobqueue.SLURMCluster``).
- ``results`` (a store URL or path): each partition's report is saved there as it finishes, and
  a rerun with the same ``results`` scans only the partitions not saved yet (resumable).
- A partition that fails after ``retries`` further attempts is reported in
  ``report.unscanned``; its files are neither valid nor invalid and its ids are never done
  (``report.ok`` is False).

>>> import torch, virnucpro_store as vs
>>> from virnucpro_store import distributed
>>> store = vs.open_store("memory://distributed-doc")
>>> for rank in range(2):
...     _ = store.save({"ids": [f"s{rank}"], "data": torch.zeros(1, 3328)},
...                    f"run/shard_{rank}/batch_00000.pt")
>>> report = distributed.scan("memory://distributed-doc", "run", target_files=1)
>>> report.ok, report.valid
(True, ['run/shard_0/batch_00000.pt', 'run/shard_1/batch_00000.pt'])
"""

from __future__ import annotations

import logging
from typing import Any

from .partitions import ScanPartition
from .runs import ScanReport
from .store import CheckpointStore, open_store

__all__ = ["ENGINES", "scan"]

ENGINES = ("local", "dask")
#: keyword arguments of :func:`scan` that shape the plan rather than each partition's scan
_PLAN_KEYS = ("target_files", "by")

log = logging.getLogger(__name__)


def scan_task(url: str, storage_options: dict[str, Any], partition: str,
              scan_kwargs: dict[str, Any], results: str | None,
              results_options: dict[str, Any]) -> str:
    """One partition's scan, as a worker runs it: opens the store from ``url``, scans the
    partition (JSON), saves the report JSON to ``results`` if given, and returns it."""
    store = open_store(url, **storage_options)
    part = ScanPartition.from_json(partition)
    report = store.scan_partition(part, **scan_kwargs)
    text = report.to_json()
    if results is not None:
        open_store(results, **results_options).save_bytes(
            text.encode(), result_key(part), validate=None)
    return text


def result_key(part: ScanPartition) -> str:
    """Where a partition's report is saved under ``results``: one folder per plan."""
    return f"scan-{part.plan_id}/part-{part.index:06d}-of-{part.count:06d}.json"


def _saved_reports(results: CheckpointStore | None, parts: list[ScanPartition]
                   ) -> dict[int, ScanReport]:
    if results is None or not parts:
        return {}
    wanted = {result_key(p): p.index for p in parts}
    found: dict[int, ScanReport] = {}
    for key in results.list(f"scan-{parts[0].plan_id}/"):
        if key in wanted:
            try:
                found[wanted[key]] = ScanReport.from_json(results.read_bytes(key))
            except (ValueError, KeyError) as exc:  # a damaged report is scanned again
                log.warning("%s: unreadable partition report, scanning again: %s",
                            results.url_for(key), exc)
    return found


def _unscanned(part: ScanPartition, error: BaseException, scan_kwargs: dict[str, Any]
               ) -> ScanReport:
    return ScanReport(prefix=part.prefix, level=scan_kwargs.get("level", "keys"),
                      deep=scan_kwargs.get("deep", False),
                      unscanned=[{"partition": part.to_dict(),
                                  "error": f"{type(error).__name__}: {error}"}],
                      partition=part.to_dict())


def scan(url: str, prefix: str = "", *, engine: Any = "local", results: str | None = None,
         retries: int = 2, storage_options: dict[str, Any] | None = None,
         results_options: dict[str, Any] | None = None, **scan_kwargs: Any) -> ScanReport:
    """Scan ``prefix`` of the store at ``url`` in partitions on ``engine``; see the module
    docstring. ``scan_kwargs``: ``target_files``/``by`` for the plan, then
    :meth:`~virnucpro_store.CheckpointStore.scan_partition`'s ``schema``, ``level``, ``deep``,
    ``jobs``, ``pattern``, ``ids``. ``storage_options`` reach every worker's ``open_store``;
    credentials are better left to the workers' environment."""
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, not {retries!r}")
    storage_options = dict(storage_options or {})
    results_options = dict(results_options or {})
    plan_kwargs = {k: scan_kwargs.pop(k) for k in _PLAN_KEYS if k in scan_kwargs}
    if scan_kwargs.get("ids") == "store":
        raise ValueError('ids="store" is for scan_partition; distributed.scan returns the ids '
                         'or, with ids="none", drops them')
    store = open_store(url, **storage_options)
    parts = store.plan_scan(prefix, **plan_kwargs)
    results_store = open_store(results, **results_options) if results is not None else None
    done = _saved_reports(results_store, parts)
    todo = [p for p in parts if p.index not in done]
    log.info("scan of %s: %d partitions, %d already done", store.url_for(prefix or "."),
             len(parts), len(done))
    args = (url, storage_options, scan_kwargs, results, results_options)
    if engine == "local":
        for part in todo:
            done[part.index] = _run_locally(part, args, retries)
    else:
        done.update(_run_on_dask(engine, todo, args, retries))
    return ScanReport.merge(done[p.index] for p in parts)


def _run_locally(part: ScanPartition, args: tuple[Any, ...], retries: int) -> ScanReport:
    url, storage_options, scan_kwargs, results, results_options = args
    for attempt in range(retries + 1):
        try:
            return ScanReport.from_json(scan_task(url, storage_options, part.to_json(),
                                                  scan_kwargs, results, results_options))
        except Exception as exc:  # reported as unscanned once the retries are spent
            log.warning("partition %d/%d, attempt %d: %s", part.index, part.count,
                        attempt + 1, exc)
            error = exc
    return _unscanned(part, error, scan_kwargs)


def _run_on_dask(engine: Any, todo: list[ScanPartition], args: tuple[Any, ...],
                 retries: int) -> dict[int, ScanReport]:
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - the [dask] extra
        raise ImportError('engine="dask" needs the [dask] extra: '
                          'pip install "virnucpro_store[dask]"') from exc
    own_cluster = None
    if isinstance(engine, distributed.Client):
        client = engine
    elif engine == "dask":
        try:
            client = distributed.get_client()
        except ValueError:  # no client yet: a small cluster on this machine, for this scan
            own_cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                                   processes=True, dashboard_address=None)
            client = distributed.Client(own_cluster)
    else:
        raise ValueError(f"engine must be one of {ENGINES} or a distributed.Client, "
                         f"not {engine!r}")
    try:
        futures = {part.index: client.submit(scan_task, args[0], args[1], part.to_json(),
                                             *args[2:], retries=retries, pure=False,
                                             key=f"vnps-scan-{part.plan_id}-{part.index}")
                   for part in todo}
        out: dict[int, ScanReport] = {}
        for part in todo:
            try:
                out[part.index] = ScanReport.from_json(futures[part.index].result())
            except Exception as exc:  # after dask's own retries
                out[part.index] = _unscanned(part, exc, args[2])
        return out
    finally:
        if own_cluster is not None:
            client.close()
            own_cluster.close()
