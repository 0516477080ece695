"""How the command line shows things: consoles, progress bars, verdict lines, tables.

The commands in :mod:`virnucpro_store.cli` decide what to do; everything they print is built
here. rich is imported only when something is shown.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any

#: the width of a console that is neither a terminal nor told one by $COLUMNS: lines are
#: never cut or wrapped when piped into a file or another program
UNLIMITED = 1 << 16


def esc(value: object) -> str:
    """``value`` as text that rich prints literally: a key such as ``run/a[/x]b.pt`` or
    ``batch[bold]7.pt`` is shown as it is, never read as markup.

    >>> from rich.console import Console
    >>> Console(width=40).print(esc("run/a[/x]b.pt batch[bold]7.pt"))
    run/a[/x]b.pt batch[bold]7.pt
    """
    from rich.markup import escape

    return escape(str(value))


def line_width(details: bool = False) -> int | None:
    """How wide a one-line-per-file row may be: the terminal's width on a terminal, else
    ``$COLUMNS`` when set; None (no limit) when piped or with ``--details``."""
    if details:
        return None
    if sys.stdout.isatty():
        return os.get_terminal_size(sys.stdout.fileno()).columns
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else None


def middle(text: str, width: int) -> str:
    """``text`` cut in the middle to at most ``width`` characters (a key's start and its file
    name both stay visible).

    >>> middle("runs/run7/shard_0001/batch_000123.pt", 24)
    'runs/run7/s…ch_000123.pt'
    """
    if len(text) <= width:
        return text
    if width < 3:
        return text[:width]
    head = (width - 1) // 2
    tail = width - 1 - head
    return text[:head] + "…" + text[len(text) - tail:]


def console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    columns = os.environ.get("COLUMNS", "")
    width = None if stream.isatty() or columns.isdigit() else UNLIMITED
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


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


def report_line(report, url: str, width: int | None = None) -> str:
    """One verdict line (markup, every name escaped); with ``width``, the URL is cut in the
    middle and the message at its end so that the line fits."""
    if report.ok:
        head, style = f"OK    {report.level:<5} {human_size(report.size):>9}  ", "green"
        url = middle(url, width - len(head)) if width else url
        return f"[{style}]OK[/]{esc(head[2:])}{esc(url)}"
    word, style = ("SKIP", "yellow") if report.category is None else ("FAIL", "red")
    head = f"{word}  {report.category or '':<12} "
    return f"[{style}]{word}[/]{esc(head[4:])}{_url_message(url, report.message, width, len(head))}"


def print_verdict(out, report, url: str, width: int | None = None) -> None:
    """One verdict line (:func:`report_line`) on ``out``."""
    out.print(report_line(report, url, width), markup=True)


#: the fewest columns a cut URL keeps on a verdict line (its start and its file name)
URL_MIN = 24


def _url_message(url: str, message: str | None, width: int | None, used: int) -> str:
    """``url: message`` escaped, fitted into ``width - used`` columns when width is given.
    The message says why, so it is never cut: the URL is cut in the middle (down to
    :data:`URL_MIN` columns) to make room, and a message that still does not fit goes on the
    lines below, indented under the URL. An error's text that names the same URL again names
    it once."""
    message = str(message or "").replace(f"{url}: ", "", 1)
    if width:
        room = max(width - used, 12)
        if len(url) + 2 + len(message) > room:
            url = middle(url, max(room - 2 - len(message), min(len(url), URL_MIN)))
            if len(url) + 2 + len(message) > room:
                import textwrap

                below = textwrap.fill(message, width=max(width, used + 12),
                                      initial_indent=" " * used, subsequent_indent=" " * used,
                                      break_on_hyphens=False)
                return f"{esc(url)}:\n{esc(below)}"
    return f"{esc(url)}: {esc(message)}"


def json_line(report) -> dict[str, Any]:
    row = report.to_dict()
    return {k: row[k] for k in ("url", "ok", "level", "category", "code", "message", "size",
                                "schema", "details")}


def print_summary(results, *, to_stderr: bool, width: int | None = None) -> None:
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
        line = "slowest: " + ", ".join(f"{t.key} {r.seconds * 1000:.0f} ms"
                                       for t, r in slowest)
        if width and len(line) > width:
            line = line[:width - 1] + "…"
        out.print(esc(line))


def print_apart(out, apart: dict[str, str], *, details: bool) -> None:
    """The files of a folder that are not checkpoints (sidecars, the run manifest, foreign
    files), listed apart: counted by reason, or one per line with ``details``."""
    if details:
        for key, reason in sorted(apart.items()):
            out.print(f"[dim]APART[/] {esc(key)}: {esc(reason)}", markup=True)
        return
    for reason, count in sorted(Counter(apart.values()).items()):
        out.print(f"not checked, not a checkpoint: {count} file(s): {esc(reason)}")


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
    verdict = "[green]valid[/]" if d.get("ok") else f"[red]{esc(d.get('category'))}[/]"
    out.print(f"[bold]{esc(d.get('url'))}[/]  {human_size(d.get('size'))}  {verdict}: "
                  f"{esc(d.get('message'))}", markup=True)
    facts = [f"schema: {d.get('schema') or '-'}", f"version: {d.get('version', '-')}",
             f"status: {d.get('status', '-')}", f"records: {d.get('records', '-')}",
             f"CRC: {d.get('crc', '-')}"]
    out.print(esc("  ".join(facts)))
    entries = d.get("entries") or {}
    if entries:
        table = Table(show_edge=False)
        table.add_column("key")
        table.add_column("holds")
        for key, entry in entries.items():
            table.add_row(esc(key), esc(describe_entry(entry) if isinstance(entry, dict)
                                        else entry))
        out.print(table)
    tensors = d.get("tensors") or {}
    if tensors.get("count"):
        out.print(f"{tensors['count']} tensor(s) in all")


def print_invalid(out, store, report, width: int | None = None) -> None:
    for key, bad in sorted(report.invalid.items()):
        out.print(report_line(bad, store.url_for(key), width), markup=True)


def print_skipped(out, report) -> None:
    for reason, count in sorted(Counter(report.skipped.values()).items()):
        out.print(f"skipped {count} file(s): {esc(reason)}")


def ls_lines(rows: list[tuple[str, str, str, str | None, str]], *, check: bool,
             width: int | None) -> list[str]:
    """The ``ls`` listing, one line per key (markup): rows are (key, size, modified,
    verdict style or None, verdict text). With ``width``, keys are cut in the middle and
    verdicts at their end so that every line fits."""
    size_w, mod_w = 9, 19
    fixed = size_w + mod_w + 4 + (2 if check else 0)
    key_w = max([len(r[0]) for r in rows] + [3])
    if width:
        key_w = min(key_w, max(width - fixed - (24 if check else 0), 12))
    lines = [esc(f"{'key':<{key_w}}  {'size':>{size_w}}  {'modified':<{mod_w}}"
                 + ("  verdict" if check else ""))]
    for key, size, modified, style, verdict in rows:
        line = esc(f"{middle(key, key_w):<{key_w}}  {size:>{size_w}}  {modified:<{mod_w}}")
        if check:
            room = width - key_w - fixed if width else None
            if room is not None and len(verdict) > room:
                verdict = verdict[:max(room - 1, 0)] + "…"
            line += f"  [{style}]{esc(verdict)}[/]" if style else f"  {esc(verdict)}"
        lines.append(line)
    return lines


def ls_row(info, report=None, *, check: bool, apart: str | None = None
           ) -> tuple[str, str, str, str | None, str]:
    """One row of :func:`ls_lines` for an ObjectInfo (and its report with --check;
    ``apart``: why the key is not a checkpoint, when it is not one)."""
    modified = info.modified.strftime("%Y-%m-%d %H:%M:%S") if info.modified else "-"
    if not check:
        return info.key, human_size(info.size), modified, None, ""
    if apart is not None:
        return info.key, human_size(info.size), modified, "dim", f"not a checkpoint: {apart}"
    if report.ok:
        return info.key, human_size(info.size), modified, "green", "ok"
    return (info.key, human_size(info.size), modified, "red",
            f"{report.category or 'skipped'}: {report.message}")


def gc_line(name: str, leftover, *, dry_run: bool) -> str:
    """One line of ``gc`` for a removed (or, with --dry-run, removable) name; ``leftover`` is
    its Leftover when the store's leftovers listed it, None for a VirNucPro ``*.tmp`` key."""
    verb = "would remove" if dry_run else "removed"
    if leftover is None:
        return esc(f"{verb} {'tmp' if name.endswith('.tmp') else 'staging':<8} {name}")
    return esc(f"{verb} {leftover.kind:<8} {name}  "
               f"({leftover.age_seconds / 60:.0f} min old)")


def print_scan(store, report, *, expected: list[str] | None, todo: list[str] | None,
               expected_file: str | None, todo_file: str | None, quiet: bool = False,
               width: int | None = None) -> None:
    """The human-readable ``scan`` report (stdout; warnings on stderr); ``quiet``: failures
    and warnings only."""
    out, err = console(), console(stderr=True)
    print_invalid(out, store, report, width)
    if not quiet:
        print_skipped(out, report)
        n = len(report.valid) + len(report.invalid)
        out.print(f"{n} checkpoint(s) under {esc(store.url)}: {len(report.valid)} valid, "
                  f"{len(report.invalid)} invalid; {id_count(report)} in the valid files"
                  + (" (run committed)" if report.committed else ""))
    if report.duplicate_ids:
        err.print(f"[yellow]warning:[/] {len(report.duplicate_ids)} id(s) are in more "
                  f"than one valid file", markup=True)
    if expected is not None and todo is not None:
        if not quiet:
            out.print(f"{len(expected) - len(todo)} of {len(expected)} expected id(s) "
                      f"done; {len(todo)} to requeue -> {esc(todo_file)}")
        unexpected = report.ids - set(expected)
        if unexpected:
            err.print(f"[yellow]warning:[/] {len(unexpected)} id(s) in valid files are "
                      f"not in {esc(expected_file)}", markup=True)


def id_count(report) -> str:
    """'N sequence id(s)' -- distinct ids, as scan, commit and verify all count them -- and
    how many of them are in more than one file."""
    text = f"{len(report.ids)} sequence id(s)"
    if report.duplicate_ids:
        text += f" ({len(report.duplicate_ids)} in more than one file)"
    return text


def print_verify(store, report, *, quiet: bool = False, width: int | None = None) -> None:
    """The human-readable ``verify`` report; ``quiet``: failures only."""
    out = console()
    print_invalid(out, store, report, width)
    if quiet and report.ok:
        return
    for key in report.extra:
        out.print(f"[yellow]EXTRA[/] {esc(store.url_for(key))}: not in the run manifest",
                  markup=True)
    listed = len(report.manifest.files) if report.manifest else 0
    verdict = "[green]intact[/]" if report.ok else "[red]NOT intact[/]"
    out.print(f"{esc(store.url)}: {verdict}: {len(report.valid)} of {listed} committed "
              f"file(s) ok, {len(report.invalid)} invalid, {len(report.extra)} extra; "
              f"{id_count(report)}", markup=True)


# -- output of the commands: every --json row and every line they print ----------------------

def emit_json(row: dict[str, Any], *, indent: int | None = None) -> None:
    """One JSON object on stdout, one line (``indent``: pretty, for ``info --json``)."""
    import json

    import click

    click.echo(json.dumps(row, default=str, indent=indent))


def error_row(message: str, code: int, kind: str = "error", **fields: Any) -> dict[str, Any]:
    """The --json object of a command that failed (usage, missing, storage, interrupted)."""
    return {"ok": False, "error": kind, "message": message, "exit_code": code} | fields


def print_error(message: str) -> None:
    """``error: message`` on stderr."""
    console(stderr=True).print(f"[bold red]error:[/] {esc(message)}", markup=True)


def print_warning(message: str) -> None:
    """``warning: message`` on stderr (shown with -q too)."""
    console(stderr=True).print(f"[yellow]warning:[/] {esc(message)}", markup=True)


def validate_row(report) -> dict[str, Any]:
    """``validate --json``: one file's verdict."""
    return json_line(report) | {"skipped": None}


def apart_row(url: str, reason: str) -> dict[str, Any]:
    """``validate --json``: a file of a folder that is not a checkpoint (listed apart)."""
    return {"url": url, "ok": None, "level": None, "category": None, "code": None,
            "message": f"not a checkpoint: {reason}", "size": None, "schema": None,
            "details": None, "skipped": reason}


def ls_json_row(info, report=None, *, check: bool, apart: str | None = None
                ) -> dict[str, Any]:
    """``ls --json``: one key (with its verdict under --check)."""
    row = info.to_dict()
    if check:
        row |= {"checkpoint": report is not None, "apart": apart}
    if report is not None:
        row |= {"ok": report.ok, "category": report.category, "code": report.code,
                "message": report.message}
    return row


def ls_skipped_row(key: str, exc: Exception) -> dict[str, Any]:
    """``ls --json``: a key no operation may touch (a symlink)."""
    return {"key": key, "ok": False, "category": None, "message": f"skipped: {exc}"}


def ls_skipped_line(key: str, exc: Exception) -> tuple[str, str, str, str | None, str]:
    """The :func:`ls_lines` row of a key no operation may touch (a symlink)."""
    return key, "-", "-", "yellow", f"skipped: {exc}"


def print_ls(rows: list[tuple[str, str, str, str | None, str]], *, check: bool,
             width: int | None) -> None:
    out = console()
    for line in ls_lines(rows, check=check, width=width):
        out.print(line, markup=True)


def cp_row(src_url: str, dst_url: str, copied: list[str], skipped: list[str],
           total: int) -> dict[str, Any]:
    """``cp --json``: what was copied and skipped."""
    return {"ok": True, "src": src_url, "dst": dst_url, "copied": copied, "skipped": skipped,
            "n_copied": len(copied), "n_skipped": len(skipped), "bytes": total}


def print_cp(copied: list[str], skipped: list[str]) -> None:
    console(stderr=True).print(
        f"copied {len(copied)}, skipped {len(skipped)} (already there and valid)")


def gc_row(url: str, names: list[str], found: dict[str, Any], *, dry_run: bool,
           seconds: float) -> dict[str, Any]:
    """``gc --json``: what was (or would be) removed; ``found``: the leftovers by name."""
    return {
        "ok": True, "url": url, "dry_run": dry_run, "older_than_seconds": seconds,
        "removed": [{"name": name,
                     "kind": found[name].kind if name in found else
                     ("tmp" if name.endswith(".tmp") else "staging"),
                     "age_seconds": found[name].age_seconds if name in found else None}
                    for name in names]}


def print_gc(names: list[str], found: dict[str, Any], *, dry_run: bool) -> None:
    out = console()
    for name in names:
        out.print(gc_line(name, found.get(name), dry_run=dry_run))
    out.print(f"{len(names)} leftover(s) {'found' if dry_run else 'removed'}")


def scan_row(report, *, expected: list[str] | None, todo: list[str] | None
             ) -> dict[str, Any]:
    """``scan --json`` / ``scan-merge --json``: the report (and the --expected counts)."""
    row = report.to_dict()
    if expected is not None and todo is not None:
        row |= {"n_expected": len(expected), "n_todo": len(todo),
                "n_unexpected_ids": len(report.ids - set(expected))}
    return row


def partition_row(report, part, out_file: str) -> dict[str, Any]:
    """``scan --partition --json``: the partition's report, the partition, where it went."""
    return report.to_dict() | {"partition": part.to_dict(), "out": out_file}


def print_partition(report, *, index: int, count: int, url: str, out_file: str) -> None:
    n = len(report.valid) + len(report.invalid)
    console().print(esc(
        f"partition {index}/{count} of {url}: {n} checkpoint(s), "
        f"{len(report.valid)} valid, {len(report.invalid)} invalid -> {out_file}"))


def plan_row(url: str, parts: list, out_file: str) -> dict[str, Any]:
    """``scan-plan --json``: the plan's summary."""
    return {"ok": True, "url": url, "partitions": len(parts), "plan_id": parts[0].plan_id,
            "out": out_file}


def print_plan(url: str, parts: list, out_file: str) -> None:
    console().print(esc(f"plan {parts[0].plan_id}: {len(parts)} partition(s) of {url} -> "
                        f"{out_file}"))


def commit_row(store, manifest, *, reason: str | None) -> dict[str, Any]:
    """``commit --json``: the committed manifest's summary."""
    scanned = manifest.report
    previous = (manifest.replaces or {}).get("previous")
    return {
        "ok": True, "url": store.url, "manifest": store.url_for(manifest.key),
        "n_files": len(manifest.files),
        "bytes": sum(entry.size for entry in manifest.files.values()),
        "n_ids": len(scanned.ids), "n_duplicate_ids": len(scanned.duplicate_ids),
        "level": manifest.level, "created": manifest.created,
        "replaced": store.url_for(previous) if previous else None, "reason": reason}


def print_commit(store, manifest) -> None:
    out = console()
    sizes = sum(entry.size for entry in manifest.files.values())
    out.print(f"committed {len(manifest.files)} file(s), {human_size(sizes)}, "
              f"{id_count(manifest.report)}: {esc(store.url_for(manifest.key))}")
    previous = (manifest.replaces or {}).get("previous")
    if previous:
        out.print(f"the previous manifest is kept as {esc(store.url_for(previous))}")
