"""How the command line shows things: consoles, progress bars, verdict lines, tables.

The commands in :mod:`virnucpro_store.cli` decide what to do; everything they print is built
here. rich is imported only when something is shown.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def progress(total: int, *, bytes_mode: bool = False, enabled: bool = True):
    """A progress bar on stderr when it is a terminal; a silent stand-in when piped."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    out = console(stderr=True)
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
    columns += ([DownloadColumn(), TransferSpeedColumn()] if bytes_mode
                else [MofNCompleteColumn()])
    columns.append(TimeRemainingColumn())
    return Progress(*columns, console=out, transient=True,
                    disable=not (enabled and out.is_terminal))


def human_size(size: int | None) -> str:
    """1234 -> '1.2 KB' (decimal units, as storage consoles show them); None -> '-'."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def report_line(report, url: str) -> str:
    if report.ok:
        return f"[green]OK[/]    {report.level:<5} {human_size(report.size):>9}  {url}"
    if report.category is None:
        return f"[yellow]SKIP[/]  {'':<12} {url}: {report.message}"
    return f"[red]FAIL[/]  {report.category:<12} {url}: {report.message}"


def json_line(report) -> dict[str, Any]:
    row = report.to_dict()
    return {k: row[k] for k in ("url", "ok", "level", "category", "code", "message", "size",
                                "schema", "details")}


def print_summary(results, *, to_stderr: bool) -> None:
    from rich.table import Table

    counts = Counter("valid" if r.ok else r.category or "skipped" for _, r in results)
    table = Table(title=f"{len(results)} file(s)", show_edge=False)
    table.add_column("verdict")
    table.add_column("files", justify="right")
    for verdict in ("valid", "missing", "corrupted", "incompatible", "unsafe", "skipped"):
        if counts.get(verdict):
            table.add_row(verdict, str(counts[verdict]))
    out = console(stderr=to_stderr)
    out.print(table)
    slowest = sorted(results, key=lambda pair: pair[1].seconds, reverse=True)[:3]
    if len(results) > 1:
        out.print("slowest: " + ", ".join(f"{t.key} {r.seconds * 1000:.0f} ms"
                                              for t, r in slowest))


def describe_entry(entry: dict[str, Any]) -> str:
    kind = entry.get("type", "?")
    if kind in ("tensor", "ndarray", "array"):
        return f"{kind} {entry.get('dtype')} {tuple(entry.get('shape', ()))}"
    if "len" in entry:
        first = entry.get("first")
        inner = f" of {describe_entry(first)}" if isinstance(first, dict) else ""
        return f"{kind}[{entry['len']}]{inner}"
    if "value" in entry:
        return f"{kind} = {entry['value']!r}"
    return kind


def print_description(d: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    verdict = "[green]valid[/]" if d.get("ok") else f"[red]{d.get('category')}[/]"
    out.print(f"[bold]{d.get('url')}[/]  {human_size(d.get('size'))}  {verdict}: "
                  f"{d.get('message')}", markup=True)
    facts = [f"schema: {d.get('schema') or '-'}", f"version: {d.get('version', '-')}",
             f"status: {d.get('status', '-')}", f"records: {d.get('records', '-')}",
             f"CRC: {d.get('crc', '-')}"]
    out.print("  ".join(facts))
    entries = d.get("entries") or {}
    if entries:
        table = Table(show_edge=False)
        table.add_column("key")
        table.add_column("holds")
        for key, entry in entries.items():
            table.add_row(str(key), describe_entry(entry) if isinstance(entry, dict)
                          else str(entry))
        out.print(table)
    tensors = d.get("tensors") or {}
    if tensors.get("count"):
        out.print(f"{tensors['count']} tensor(s) in all")


def print_invalid(out, store, report) -> None:
    for key, bad in sorted(report.invalid.items()):
        out.print(f"[red]FAIL[/]  {bad.category:<12} {store.url_for(key)}: {bad.message}",
                      markup=True)


def print_skipped(out, report) -> None:
    for reason, count in sorted(Counter(report.skipped.values()).items()):
        out.print(f"skipped {count} file(s): {reason}")


def ls_table(check: bool):
    """The table ``ls`` fills, one :func:`ls_row` per key."""
    from rich.table import Table

    table = Table(show_edge=False)
    for col in ("key", "size", "modified") + (("verdict",) if check else ()):
        table.add_column(col, justify="right" if col == "size" else "left")
    return table


def ls_row(info, report=None, *, check: bool) -> list[str]:
    """One row of :func:`ls_table` for an ObjectInfo (and its report with --check)."""
    modified = info.modified.strftime("%Y-%m-%d %H:%M:%S") if info.modified else "-"
    row = [info.key, human_size(info.size), modified]
    if check:
        row.append("[green]ok[/]" if report.ok
                   else f"[red]{report.category}[/]: {report.message}")
    return row


def gc_line(name: str, leftover, *, dry_run: bool) -> str:
    """One line of ``gc`` for a removed (or, with --dry-run, removable) name; ``leftover`` is
    its Leftover when the store's leftovers listed it, None for a VirNucPro ``*.tmp`` key."""
    verb = "would remove" if dry_run else "removed"
    if leftover is None:
        return f"{verb} {'tmp' if name.endswith('.tmp') else 'staging':<8} {name}"
    return (f"{verb} {leftover.kind:<8} {name}  "
            f"({leftover.age_seconds / 60:.0f} min old)")


def print_scan(store, report, *, expected: list[str] | None, todo: list[str] | None,
               expected_file: str | None, todo_file: str | None) -> None:
    """The human-readable ``scan`` report (stdout; warnings on stderr)."""
    out, err = console(), console(stderr=True)
    print_invalid(out, store, report)
    print_skipped(out, report)
    n = len(report.valid) + len(report.invalid)
    out.print(f"{n} checkpoint(s) under {store.url}: {len(report.valid)} valid, "
              f"{len(report.invalid)} invalid; {len(report.ids)} sequence id(s) in "
              f"the valid files" + (" (run committed)" if report.committed else ""))
    if report.duplicate_ids:
        err.print(f"[yellow]warning:[/] {len(report.duplicate_ids)} id(s) are in more "
                  f"than one valid file", markup=True)
    if expected is not None and todo is not None:
        out.print(f"{len(expected) - len(todo)} of {len(expected)} expected id(s) "
                  f"done; {len(todo)} to requeue -> {todo_file}")
        unexpected = report.ids - set(expected)
        if unexpected:
            err.print(f"[yellow]warning:[/] {len(unexpected)} id(s) in valid files are "
                      f"not in {expected_file}", markup=True)


def print_verify(store, report) -> None:
    """The human-readable ``verify`` report."""
    out = console()
    print_invalid(out, store, report)
    for key in report.extra:
        out.print(f"[yellow]EXTRA[/] {store.url_for(key)}: not in the run manifest",
                  markup=True)
    listed = len(report.manifest.files) if report.manifest else 0
    verdict = "[green]intact[/]" if report.ok else "[red]NOT intact[/]"
    out.print(f"{store.url}: {verdict}: {len(report.valid)} of {listed} committed "
              f"file(s) ok, {len(report.invalid)} invalid, {len(report.extra)} extra; "
              f"{len(report.ids)} sequence id(s)", markup=True)
