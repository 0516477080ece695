"""``virnucpro-store``: the command line a pipeline operator lives in.

Exit codes: 0 all good, 3 a checkpoint problem (VirNucPro's code for it), 2 a usage error
(bad option, bad URL), 1 the storage itself failed or refused (network, credentials,
permission, disk; ``commit`` of a run already committed: the create-only publish refused).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NoReturn

import click

from . import cli_render as render
from . import errors
from .validation.report import LEVELS

if TYPE_CHECKING:
    from .targets import StorageOptions

EXIT_OK = 0
EXIT_STORAGE = 1
EXIT_USAGE = 2
EXIT_CHECKPOINT = 3

DEFAULT_URL_ENV = "VIRNUCPRO_STORE_URL"

log = logging.getLogger("virnucpro_store")


# -- terminal plumbing ------------------------------------------------------------------------

def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '1h', '2d' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 15m, 1h or 2d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


# -- shared options and error handling --------------------------------------------------------

def storage_options(func: Callable) -> Callable:
    """--endpoint-url / --profile on every command that opens a store."""

    @click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL", default=None,
                  help="S3-compatible endpoint, e.g. http://127.0.0.1:8333 "
                       "(env: AWS_ENDPOINT_URL).")
    @click.option("--profile", envvar="AWS_PROFILE", default=None,
                  help="AWS profile from ~/.aws/config (env: AWS_PROFILE).")
    @functools.wraps(func)
    def wrapper(*args: Any, endpoint_url: str | None, profile: str | None, **kwargs: Any):
        from .targets import StorageOptions

        # AWS_* variables speak for S3 only; an explicit --endpoint-url for any remote store
        source = click.get_current_context().get_parameter_source("endpoint_url")
        from_env = source is click.core.ParameterSource.ENVIRONMENT
        options = StorageOptions(endpoint_url=endpoint_url, endpoint_url_from_env=from_env,
                                 profile=profile)
        return func(*args, options=options, **kwargs)

    return wrapper


def validation_options(*, schema_help: str, pattern_help: str, deep_help: str,
                       level_help: str = "Highest level to check; each level includes the "
                                         "cheaper ones.") -> Callable[[Callable], Callable]:
    """--schema, --level, --deep, --pattern and --jobs, as validate and scan take them."""

    def decorate(func: Callable) -> Callable:
        for option in reversed([
            click.option("--schema", default=None, help=schema_help),
            click.option("--level", type=click.Choice(LEVELS), default="keys",
                         show_default=True, help=level_help),
            click.option("--deep", is_flag=True, help=deep_help),
            click.option("--pattern", default=None, help=pattern_help),
            click.option("-j", "--jobs", type=click.IntRange(1, 256), default=8,
                         show_default=True, help="Files validated in parallel."),
        ]):
            func = option(func)
        return func

    return decorate


def handle_errors(func: Callable) -> Callable:
    """One line a user can act on instead of a traceback (unless --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any):
        ctx = click.get_current_context()
        try:
            return func(*args, **kwargs)
        except (errors.UnknownSchemeError, errors.InvalidKey) as exc:
            if ctx.obj.get("debug"):
                raise
            _fail(str(exc), EXIT_USAGE)
        except errors.CheckpointError as exc:
            if ctx.obj.get("debug"):
                raise
            _fail(f"{exc.category}: {exc}", EXIT_CHECKPOINT)
        except errors.StoreError as exc:
            if ctx.obj.get("debug"):
                raise
            _fail(str(exc), EXIT_STORAGE)

    return wrapper


def _fail(message: str, code: int) -> NoReturn:
    render.console(stderr=True).print(f"[bold red]error:[/] {message}", markup=True)
    sys.exit(code)


def _urls_or_default(urls: tuple[str, ...]) -> list[str]:
    if urls:
        return list(urls)
    default = os.environ.get(DEFAULT_URL_ENV)
    if not default:
        raise click.UsageError(f"give a URL, or set {DEFAULT_URL_ENV} to a default store")
    return [default]


# -- the commands ----------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="virnucpro_store")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """Atomic, validated storage of VirNucPro's PyTorch feature files.

    URLs are paths, file://, memory://NAME, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or
    az://CONTAINER/PREFIX. Commands that take a URL fall back to $VIRNUCPRO_STORE_URL. Exit
    codes: 0 ok, 3 a bad checkpoint, 2 usage error, 1 storage failure.

    \b
    Examples:
      virnucpro-store demo                          # watch the validator catch four faults
      virnucpro-store validate /scratch/run7 --pattern '*.pt' --schema auto
      virnucpro-store ls s3://lab-bucket/run7 --check
      virnucpro-store info /scratch/run7/esm_000.pt
      virnucpro-store cp /scratch/run7 s3://lab-bucket/run7
      virnucpro-store gc s3://lab-bucket/run7 --older-than 1h --dry-run
      virnucpro-store scan /scratch/run7 --expected ids.txt --todo todo.txt
      virnucpro-store commit s3://lab-bucket/run7 && virnucpro-store verify s3://lab-bucket/run7
    """
    levels = (logging.WARNING, logging.INFO, logging.DEBUG)
    level = logging.ERROR if quiet else levels[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"debug": debug, "quiet": quiet}


@cli.command()
@click.argument("urls", nargs=-1)
@validation_options(
    schema_help="dnabert, esm, merged, shard, or auto (pick from the keys); omit to check only "
                "that the file loads.",
    pattern_help="Glob on file names in folders, e.g. '*.pt'.",
    deep_help="Also check every record's CRC-32 and do a full safe torch.load.")
@click.option("--quarantine", default=None, metavar="DEST",
              help="Move bad files to this folder/prefix (each move published atomically).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line on stdout.")
@storage_options
@click.pass_context
@handle_errors
def validate(ctx: click.Context, urls: tuple[str, ...], schema: str | None, level: str,
             deep: bool, pattern: str | None, jobs: int, quarantine: str | None,
             as_json: bool, options: StorageOptions) -> None:
    """Validate files, folders or prefixes (walked recursively).

    Exit 0 when every file is valid, 3 when any is not (or nothing matched), 2 on a usage
    error.

    \b
    Examples:
      virnucpro-store validate run7/esm_000.pt --schema esm
      virnucpro-store validate /scratch/run7 --pattern '*.pt' --schema auto -j 16
      virnucpro-store validate s3://lab-bucket/run7 --level load --json > verdicts.jsonl
      virnucpro-store validate /scratch/run7 --quarantine /scratch/run7-bad
    """
    from .targets import expand, open_url_store, prefix_inside

    schema = _schema_option(schema)
    targets = list(expand(_urls_or_default(urls), options, pattern=pattern))
    quarantine_store = open_url_store(quarantine, options) if quarantine else None
    if quarantine_store is not None:
        targets = _outside_quarantine(targets, quarantine_store, prefix_inside)
    console = render.console()

    def check(target):
        started = time.perf_counter()
        try:
            report = target.store.validate(target.key, schema=schema, level=level, deep=deep)
        except errors.InvalidKey as exc:  # e.g. a symlink: this file only, the rest goes on
            report = _skipped_report(target, exc, level)
        report.seconds = time.perf_counter() - started
        return target, report

    results = []
    with render.progress(len(targets), enabled=not ctx.obj["quiet"]) as progress, \
            ThreadPoolExecutor(max_workers=jobs) as pool:
        task = progress.add_task("validating", total=len(targets))
        for target, report in pool.map(check, targets):
            progress.advance(task)
            results.append((target, report))
            if as_json:
                click.echo(json.dumps(render.json_line(report), default=str))
            else:
                # stdout; rich's live progress (on stderr) redraws below it
                console.print(render.report_line(report, target.url), markup=True)
            if (quarantine_store is not None and not report.ok
                    and report.category not in ("missing", None)):
                _move(target, quarantine_store)
                log.warning("quarantined %s -> %s", target.url,
                            quarantine_store.url_for(target.key))
    if not as_json or len(results) > 1:
        render.print_summary(results, to_stderr=as_json)
    if not results:
        render.console(stderr=True).print("[yellow]nothing matched[/]", markup=True)
    sys.exit(EXIT_OK if results and all(r.ok for _, r in results) else EXIT_CHECKPOINT)


def _outside_quarantine(targets: list, quarantine_store, prefix_inside) -> list:
    """The targets that do not lie in the quarantine destination: a destination inside a
    validated folder/prefix is never validated again nor nested into itself. A destination
    that *is* a validated folder would delete what it moves: a usage error."""
    kept = []
    for target in targets:
        inside = prefix_inside(target.store, quarantine_store)
        if inside == "":
            raise click.UsageError(f"--quarantine {quarantine_store.url} is the folder being "
                                   f"validated; choose another destination")
        if inside is not None and target.key.startswith(inside):
            log.info("not validating %s: it is in the quarantine destination", target.url)
            continue
        kept.append(target)
    return kept


def _skipped_report(target, exc: Exception, level: str):
    """A failed report for a file no operation may touch (not a verdict on its bytes)."""
    from .validation import ValidationReport

    return ValidationReport(ok=False, level=None, category=None, message=f"skipped: {exc}",
                            size=None, url=target.url, requested_level=level, deep=False)


def _move(target, dest) -> None:
    with target.store.open(target.key) as handle:
        dest.save_bytes(handle, target.key, validate=None)
    target.store.delete(target.key)


@cli.command(name="ls")
@click.argument("url", required=False)
@click.option("--check", is_flag=True, help="Add the verdict of a cheap validation.")
@click.option("--level", type=click.Choice(LEVELS), default="load", show_default=True,
              help="Level for --check.")
@click.option("--pattern", default=None, help="Glob on file names, e.g. '*.pt'.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@storage_options
@handle_errors
def ls_command(url: str | None, check: bool, level: str, pattern: str | None, as_json: bool,
               options: StorageOptions) -> None:
    """List keys with size and modification time (staging objects never appear).

    \b
    Examples:
      virnucpro-store ls /scratch/run7
      virnucpro-store ls s3://lab-bucket/run7 --check --pattern '*.pt'
    """
    from .targets import resolve

    store, keys, single = resolve(_urls_or_default((url,) if url else ())[0], options,
                                  pattern=pattern)
    # sizes from the listing itself (no request per key); a key the listing did not describe
    # (a single file, one removed or replaced since) is asked for on its own
    listed = {} if single else {i.key: i for i in store.list_info()}
    table = render.ls_table(check)
    bad = False
    for key in keys:
        try:
            info = listed.get(key) or store.info(key)
        except errors.InvalidKey as exc:  # e.g. a symlink: report it, list the rest
            bad = True
            if as_json:
                click.echo(json.dumps({"key": key, "ok": False, "category": None,
                                       "message": f"skipped: {exc}"}))
            else:
                table.add_row(key, "-", "-", *([f"[yellow]skipped[/]: {exc}"] if check else []))
            continue
        except errors.CheckpointMissing:
            continue  # removed since the listing
        report = store.validate(key, level=level) if check else None
        bad |= report is not None and not report.ok
        if as_json:
            row = info.to_dict()
            if report is not None:
                row |= {"ok": report.ok, "category": report.category, "code": report.code,
                        "message": report.message}
            click.echo(json.dumps(row, default=str))
        else:
            table.add_row(*render.ls_row(info, report, check=check))
    if not as_json:
        render.console().print(table)
    sys.exit(EXIT_CHECKPOINT if bad else EXIT_OK)


@cli.command()
@click.argument("url")
@click.option("--deep", is_flag=True, help="Also check the CRC-32 of every record.")
@click.option("--json", "as_json", is_flag=True, help="The whole description as JSON.")
@storage_options
@handle_errors
def info(url: str, deep: bool, as_json: bool, options: StorageOptions) -> None:
    """What a file holds, without loading its tensor data: keys, list lengths, tensor dtypes
    and shapes, version/status, size, CRC status with --deep.

    \b
    Examples:
      virnucpro-store info /scratch/run7/esm_000.pt
      virnucpro-store info s3://lab-bucket/run7/merged.pt --deep --json
    """
    from .registry import split_object_url
    from .targets import open_url_store

    parent, key = split_object_url(url)
    store = open_url_store(parent.url, options)
    description = store.inspect(key, deep=deep)
    if as_json:
        click.echo(json.dumps(description, default=str, indent=2))
    else:
        render.print_description(description)
    sys.exit(EXIT_OK if description.get("ok", True) else EXIT_CHECKPOINT)


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--pattern", default=None, help="Glob on file names when SRC is a folder.")
@click.option("--level", type=click.Choice(LEVELS), default="load", show_default=True,
              help="Validation of each copy at the destination before it is published.")
@click.option("--force", is_flag=True, help="Copy even what is already there and valid.")
@storage_options
@click.pass_context
@handle_errors
def cp(ctx: click.Context, src: str, dst: str, pattern: str | None, level: str, force: bool,
       options: StorageOptions) -> None:
    """Copy a file or a whole folder/prefix between stores (local, S3, memory).

    Each file is streamed, validated at the destination and published atomically there.
    Resumable: files already at the destination with the same size that validate are skipped.

    \b
    Examples:
      virnucpro-store cp /scratch/run7 s3://lab-bucket/run7
      virnucpro-store cp s3://lab-bucket/run7/merged.pt /scratch/restore/
    """
    from .registry import parse_url
    from .targets import open_url_store, resolve

    store, keys, single = resolve(src, options, pattern=pattern)
    if single:
        # cp FILE DST/ keeps the name; cp FILE DST/NAME.pt renames
        if dst.endswith("/") or _is_local_dir(dst):
            dest_store, mapping = open_url_store(dst, options), {keys[0]: keys[0].rsplit("/")[-1]}
        else:
            from .registry import split_object_url

            parent, name = split_object_url(dst)
            dest_store, mapping = open_url_store(parent.url, options), {keys[0]: name}
    else:
        parse_url(dst)
        dest_store, mapping = open_url_store(dst, options), {k: k for k in keys}
    sizes = {k: store.info(k).size for k in mapping}
    copied = skipped = 0
    with render.progress(sum(sizes.values()), bytes_mode=True,
                   enabled=not ctx.obj["quiet"]) as progress:
        task = progress.add_task("copying", total=sum(sizes.values()))
        for key, dest_key in mapping.items():
            if not force and _already_there(dest_store, dest_key, sizes[key], level):
                skipped += 1
                progress.advance(task, sizes[key])
                log.info("skip %s (already at destination and valid)", key)
                continue
            with store.open(key) as handle:
                dest_store.save_bytes(_Counting(handle, progress, task), dest_key,
                                      validate=level)
            copied += 1
    render.console(stderr=True).print(f"copied {copied}, skipped {skipped} "
                                      "(already there and valid)")


def _is_local_dir(url: str) -> bool:
    from .registry import parse_url

    parsed = parse_url(url)
    return parsed.scheme == "file" and os.path.isdir(parsed.location)


def _already_there(store, key: str, size: int, level: str) -> bool:
    try:
        if store.info(key).size != size:
            return False
    except errors.CheckpointMissing:
        return False
    return store.validate(key, level=level).ok


class _Counting:
    """A read-only file wrapper that advances a progress bar."""

    def __init__(self, handle, progress, task) -> None:
        self._handle, self._progress, self._task = handle, progress, task

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._progress.advance(self._task, len(data))
        return data


@cli.command()
@click.argument("url", required=False)
@click.option("--older-than", "older_than", default="1h", show_default=True,
              help="Only leftovers older than this (90s, 15m, 1h, 2d).")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--virnucpro-tmp", is_flag=True,
              help="Also remove the *.tmp files VirNucPro's own killed saves left.")
@storage_options
@handle_errors
def gc(url: str | None, older_than: str, dry_run: bool, virnucpro_tmp: bool,
       options: StorageOptions) -> None:
    """Remove staging leftovers and incomplete uploads of killed saves.

    \b
    Examples:
      virnucpro-store gc /scratch/run7 --dry-run
      virnucpro-store gc s3://lab-bucket/run7 --older-than 6h
      virnucpro-store gc /scratch/v1-run --virnucpro-tmp --older-than 1d
    """
    from .targets import open_url_store

    seconds = parse_duration(older_than)
    store = open_url_store(_urls_or_default((url,) if url else ())[0], options)
    found = {leftover.name: leftover for leftover in store.leftovers(seconds)}  # kind and age
    names = store.gc(seconds, virnucpro_tmp=virnucpro_tmp, dry_run=dry_run)
    console = render.console()
    for name in names:
        console.print(render.gc_line(name, found.get(name), dry_run=dry_run))
    console.print(f"{len(names)} leftover(s) {'found' if dry_run else 'removed'}")


# -- pipeline runs: scan, commit, verify -----------------------------------------------------

def _schema_option(schema: str | None) -> str | None:
    from .schemas import AUTO, get_schema

    if schema is not None and schema != AUTO:
        try:
            get_schema(schema)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--schema") from None
    return schema


def _read_ids(path: str) -> list[str]:
    """One id per line; blank lines ignored, surrounding white space stripped, order kept."""
    try:
        with open(path, encoding="utf-8") as handle:
            ids = [line.strip() for line in handle]
    except OSError as exc:
        raise click.BadParameter(f"{path}: {exc.strerror or exc}",
                                 param_hint="--expected") from None
    return list(dict.fromkeys(i for i in ids if i))


def _write_ids(path: str, ids: list[str]) -> None:
    """Write ``ids`` one per line, replacing ``path`` atomically (a reader never sees half)."""
    tmp = f"{path}.{os.getpid()}.partial"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines(f"{i}\n" for i in ids)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise click.BadParameter(f"{path}: {exc.strerror or exc}", param_hint="--todo") from None


@cli.command()
@click.argument("url", required=False)
@validation_options(
    schema_help="dnabert, esm, merged, shard, or auto; omit to check each file against the "
                "built-in schema its keys match.",
    pattern_help="Glob on file names taken for checkpoints (default '*.pt', '*.pth').",
    level_help="Highest level to check; ids are read at 'keys' only.",
    deep_help="Also check every record's CRC-32 and do a full safe load.")
@click.option("--expected", "expected_file", default=None, metavar="IDS_FILE",
              help="Text file of the run's sequence ids, one per line (needs --todo).")
@click.option("--todo", "todo_file", default=None, metavar="OUT_FILE",
              help="Write the ids to requeue (expected, not in a valid file), sorted, one per "
                   "line.")
@click.option("--json", "as_json", is_flag=True, help="The scan report as one JSON object.")
@storage_options
@handle_errors
def scan(url: str | None, schema: str | None, level: str, deep: bool, pattern: str | None,
         jobs: int, expected_file: str | None, todo_file: str | None, as_json: bool,
         options: StorageOptions) -> None:
    """Validate every checkpoint of a run folder/prefix and collect the sequence ids held by
    the valid files: what a resume needs. The ids of an invalid file are never counted as
    done. Sidecars (*.done), leftovers (*.tmp) and VirNucPro's manifest.json are listed apart.

    Exit 0 when no checkpoint is invalid (an empty run included: everything is to do), 3 when
    any is, 2 on a usage error.

    \b
    Examples:
      virnucpro-store scan /scratch/run7
      virnucpro-store scan s3://lab-bucket/run7 --expected ids.txt --todo todo.txt
      virnucpro-store scan /scratch/run7 --schema shard --json > scan.json
    """
    from .targets import open_url_store

    schema = _schema_option(schema)
    if (expected_file is None) != (todo_file is None):
        raise click.UsageError("--expected and --todo go together: the ids to requeue are "
                               "the expected ones no valid file holds")
    expected = _read_ids(expected_file) if expected_file is not None else None
    store = open_url_store(_urls_or_default((url,) if url else ())[0], options)
    report = store.scan("", schema=schema, level=level, deep=deep, jobs=jobs, pattern=pattern)
    todo = sorted(set(expected) - report.ids) if expected is not None else None
    if todo is not None:
        assert todo_file is not None
        _write_ids(todo_file, todo)
    if as_json:
        row = report.to_dict()
        if expected is not None and todo is not None:
            row |= {"n_expected": len(expected), "n_todo": len(todo),
                    "n_unexpected_ids": len(report.ids - set(expected))}
        click.echo(json.dumps(row, default=str))
    else:
        render.print_scan(store, report, expected=expected, todo=todo,
                          expected_file=expected_file, todo_file=todo_file)
    if not report.valid and not report.invalid:
        render.console(stderr=True).print(f"[yellow]no checkpoints under {store.url}[/]",
                                          markup=True)
    sys.exit(EXIT_OK if report.ok else EXIT_CHECKPOINT)


@cli.command()
@click.argument("url", required=False)
@click.option("--level", type=click.Choice(LEVELS), default="keys", show_default=True,
              help="Validation of each file before it is committed.")
@storage_options
@handle_errors
def commit(url: str | None, level: str, options: StorageOptions) -> None:
    """Validate every checkpoint of a run and publish its manifest (vnps-run-manifest.json:
    each file's key, size, checksum, schema and number of ids) last and create-only.

    Exit 0 when committed; 3 when a file is invalid or there is nothing to commit (nothing is
    published); 1 when the run is already committed (the storage refused the create-only
    publish, as for any other refused write); 2 on a usage error.

    \b
    Examples:
      virnucpro-store commit /scratch/run7
      virnucpro-store commit s3://lab-bucket/run7 && virnucpro-store verify s3://lab-bucket/run7
    """
    from .targets import open_url_store

    store = open_url_store(_urls_or_default((url,) if url else ())[0], options)
    try:
        manifest = store.commit_run("", level=level)
    except errors.AlreadyExists:
        _fail(f"{store.url}: the run is already committed ({store.url_for(_manifest_name())} "
              f"exists); check it with `virnucpro-store verify`", EXIT_STORAGE)
    except errors.CheckpointError as exc:
        if click.get_current_context().obj.get("debug"):
            raise
        notes = " ".join(getattr(exc, "__notes__", ()))
        _fail(f"{exc.category}: {exc}" + (f"\n{notes}" if notes else ""), EXIT_CHECKPOINT)
    sizes = sum(entry.size for entry in manifest.files.values())
    render.console().print(f"committed {len(manifest.files)} file(s), {render.human_size(sizes)}, "
                     f"{manifest.n_ids} sequence id(s): {store.url_for(manifest.key)}")


def _manifest_name() -> str:
    from .runs import MANIFEST_NAME

    return MANIFEST_NAME


@cli.command()
@click.argument("url", required=False)
@click.option("--deep", is_flag=True, help="Also check the CRC-32 of every record's data.")
@click.option("--json", "as_json", is_flag=True, help="The verify report as one JSON object.")
@storage_options
@handle_errors
def verify(url: str | None, deep: bool, as_json: bool, options: StorageOptions) -> None:
    """Check a committed run against its manifest: every listed file is there, valid, and the
    one committed (same size and checksum). Checkpoints not in the manifest are listed as
    extra; they do not fail the run.

    Exit 0 when the run is intact, 3 when a file is missing, changed or invalid, or the run
    was never committed, 2 on a usage error.

    \b
    Examples:
      virnucpro-store verify /scratch/run7
      virnucpro-store verify s3://lab-bucket/run7 --deep --json
    """
    from .targets import open_url_store

    store = open_url_store(_urls_or_default((url,) if url else ())[0], options)
    try:
        report = store.verify_run("", deep=deep)
    except errors.CheckpointMissing as exc:
        if exc.key != _manifest_name():
            raise
        _fail(f"missing: {store.url} is not committed (no {_manifest_name()}); commit it with "
              f"`virnucpro-store commit`", EXIT_CHECKPOINT)
    if as_json:
        click.echo(json.dumps(report.to_dict(), default=str))
    else:
        render.print_verify(store, report)
    sys.exit(EXIT_OK if report.ok else EXIT_CHECKPOINT)


@cli.command()
@click.argument("url", required=False, default="virnucpro-demo")
@click.option("--entries", default=64, show_default=True, help="Entries per feature file.")
@storage_options
@handle_errors
def demo(url: str, entries: int, options: StorageOptions) -> None:
    """Write the four feature formats to URL, damage copies, and watch the validator name
    each fault. URL defaults to the local folder ./virnucpro-demo.

    \b
    Examples:
      virnucpro-store demo
      virnucpro-store demo memory://dry-run
    """
    from .testing.demo import run_demo

    if not run_demo(url, entries=entries, console=render.console(), storage_options=options):
        sys.exit(EXIT_CHECKPOINT)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    cli.main(args=argv, prog_name="virnucpro-store")


if __name__ == "__main__":
    main()
