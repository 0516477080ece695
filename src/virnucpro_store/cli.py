"""``virnucpro-store``: the command line a pipeline operator lives in.

Exit codes (docs/cli.md): 0 all good; 1 the storage itself failed or refused (network,
credentials, permission, disk; ``commit`` of a run already committed: the create-only publish
refused); 2 a usage error (bad option, bad URL, a file where a folder is needed, an option
that cannot do what was asked); 3 a checkpoint problem (VirNucPro's code for it): a bad file, a
run not intact or not committed, a file, folder or prefix that does not exist, a pattern that
matched nothing; 130 interrupted (Ctrl-C), after a line saying what was done.
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NoReturn

import click

from . import cli_render as render
from . import errors
from .validation.report import LEVELS

if TYPE_CHECKING:
    from .store import CheckpointStore
    from .targets import StorageOptions

EXIT_OK = 0
EXIT_STORAGE = 1
EXIT_USAGE = 2
EXIT_CHECKPOINT = 3
EXIT_INTERRUPTED = 130

DEFAULT_URL_ENV = "VIRNUCPRO_STORE_URL"
#: levels at which no sequence id is read (ids come from the keys level)
NO_ID_LEVELS = ("size", "zip", "load")

log = logging.getLogger("virnucpro_store")


# -- terminal plumbing ------------------------------------------------------------------------

def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '1h', '2d' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 15m, 1h or 2d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def parse_option(text: str) -> tuple[str, Any]:
    """``-o KEY=VALUE`` -> (key, value): 'true'/'false' become booleans, everything else
    stays text; ``KEY:=JSON`` gives a typed value (``max_attempts:=5``).

    >>> parse_option("requester_pays=true"), parse_option("project=lab-1")
    (('requester_pays', True), ('project', 'lab-1'))
    >>> parse_option("retries:=5")
    ('retries', 5)
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip(":").strip():
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="-o")
    if key.endswith(":"):
        try:
            return key[:-1].strip(), json.loads(value)
        except ValueError as exc:
            raise click.BadParameter(f"{text!r}: the value after := is not JSON ({exc})",
                                     param_hint="-o") from None
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return key.strip(), lowered == "true"
    return key.strip(), value


# -- shared options and error handling --------------------------------------------------------

def storage_options(func: Callable) -> Callable:
    """--endpoint-url / --profile / -o / --follow-symlinks on every command that opens a
    store."""

    @click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL", default=None,
                  help="Endpoint of the object store: an S3-compatible server such as "
                       "http://127.0.0.1:8333 (env: AWS_ENDPOINT_URL, which speaks for s3:// "
                       "only), or, given as a flag, a gs:// or az:// emulator. Local and "
                       "memory stores ignore it.")
    @click.option("--profile", envvar="AWS_PROFILE", default=None,
                  help="AWS profile from ~/.aws/config, for s3:// (env: AWS_PROFILE).")
    @click.option("-o", "--option", "extra", multiple=True, metavar="KEY=VALUE",
                  help="A storage option for the s3://, gs:// or az:// backend, repeatable: "
                       "e.g. -o requester_pays=true, -o project=my-project, "
                       "-o account_name=lab, -o key=... -o secret=..., -o token=...; "
                       "KEY:=JSON for a typed value.")
    @click.option("--follow-symlinks/--no-follow-symlinks", "follow_symlinks", default=None,
                  help="Read through symbolic links inside local folders (pipelines stage "
                       "inputs as links). A single file named on the command line is "
                       "followed unless --no-follow-symlinks; writes never follow links.")
    @functools.wraps(func)
    def wrapper(*args: Any, endpoint_url: str | None, profile: str | None,
                extra: tuple[str, ...], follow_symlinks: bool | None, **kwargs: Any):
        from .targets import StorageOptions

        # AWS_* variables speak for S3 only; an explicit --endpoint-url for any remote store
        source = click.get_current_context().get_parameter_source("endpoint_url")
        from_env = source is click.core.ParameterSource.ENVIRONMENT
        options = StorageOptions(endpoint_url=endpoint_url, endpoint_url_from_env=from_env,
                                 profile=profile,
                                 extra=tuple(parse_option(text) for text in extra),
                                 follow_symlinks=follow_symlinks)
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


def json_option(help_text: str) -> Callable[[Callable], Callable]:
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def handle_errors(func: Callable) -> Callable:
    """One line a user can act on instead of a traceback (unless --debug); with --json, the
    same as a JSON object on stdout; Ctrl-C: exit 130 with what was done."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any):
        ctx = click.get_current_context()
        ctx.obj["json"] = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except click.UsageError as exc:
            # click prints the usage text and exits 2; under --json, stdout gets the object
            if ctx.obj.get("json"):
                click.echo(json.dumps({"ok": False, "error": "usage",
                                       "message": exc.format_message(),
                                       "exit_code": EXIT_USAGE}))
            raise
        except KeyboardInterrupt:
            done = ctx.obj.get("done")
            _fail("interrupted" + (f"; {done()}" if done is not None else ""),
                  EXIT_INTERRUPTED, "interrupted")
        except (errors.UnknownSchemeError, errors.InvalidKey) as exc:
            if ctx.obj.get("debug"):
                raise
            _fail(str(exc), EXIT_USAGE, "usage")
        except errors.CheckpointError as exc:
            if ctx.obj.get("debug"):
                raise
            notes = " ".join(getattr(exc, "__notes__", ()))
            _fail(f"{exc.category}: {exc}" + (f"\n{notes}" if notes else ""),
                  EXIT_CHECKPOINT, exc.category)
        except errors.StoreError as exc:
            if ctx.obj.get("debug"):
                raise
            hint = (" (on the command line, a storage option such as key=, secret=, token= "
                    "or account_key= is given as -o KEY=VALUE; --profile names an AWS "
                    "profile)") if "credentials" in str(exc) else ""
            _fail(str(exc) + hint, EXIT_STORAGE, "storage")

    return wrapper


def _fail(message: str, code: int, kind: str = "error", **fields: Any) -> NoReturn:
    """Print ``error: message`` on stderr (and, under --json, ``{"ok": false, "error": kind,
    "message": ..., "exit_code": code}`` on stdout) and exit with ``code``."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.obj and ctx.obj.get("json"):
        click.echo(json.dumps({"ok": False, "error": kind, "message": message,
                               "exit_code": code} | fields, default=str))
    render.console(stderr=True).print(f"[bold red]error:[/] {render.esc(message)}",
                                      markup=True)
    sys.exit(code)


def _warn(message: str) -> None:
    """A warning on stderr, shown with -q too."""
    render.console(stderr=True).print(f"[yellow]warning:[/] {render.esc(message)}",
                                      markup=True)


def _urls_or_default(urls: tuple[str, ...]) -> list[str]:
    if urls:
        return list(urls)
    default = os.environ.get(DEFAULT_URL_ENV)
    if not default:
        raise click.UsageError(f"give a URL, or set {DEFAULT_URL_ENV} to a default store")
    return [default]


def _one_url(url: str | None) -> str:
    return _urls_or_default((url,) if url else ())[0]


def _open(url, options: StorageOptions) -> CheckpointStore:
    """The store at ``url`` (a URL, or a :class:`~.registry.ParsedURL`: not parsed again);
    storage options its backend does not take are a usage error."""
    from .registry import ParsedURL
    from .targets import open_url_store

    try:
        return open_url_store(url, options)
    except TypeError as exc:
        shown = url.url if isinstance(url, ParsedURL) else url
        raise click.UsageError(f"{shown}: {exc}") from None


def _located(url: str, options: StorageOptions):
    from .targets import locate

    try:
        return locate(url, options)
    except TypeError as exc:
        raise click.UsageError(f"{url}: {exc}") from None


def _run_root(url: str, options: StorageOptions, *, command: str,
              allow_missing: bool = False) -> CheckpointStore:
    """The store of a run folder/prefix for scan, commit and verify: a file is a usage error
    (exit 2); a folder or prefix with nothing in it, one that does not exist (exit 3) unless
    ``allow_missing`` (on an object store, an empty prefix cannot be told from a missing one).
    """
    from .registry import parse_url

    parsed = parse_url(url)
    if parsed.scheme == "file" and os.path.isfile(parsed.location):
        raise click.UsageError(f"{command} takes a run folder, and {url} is a file; "
                               f"check one file with `virnucpro-store validate`")
    store = _open(parsed, options)
    if parsed.scheme == "file" and os.path.isdir(parsed.location):
        return store
    if next(iter(store.list()), None) is not None:
        return store
    with contextlib.suppress(errors.InvalidKey):
        parent, key = parsed.split_object(url)
        if _open(parent, options).exists(key):
            raise click.UsageError(f"{command} takes a run folder/prefix, and {url} is an "
                                   f"object; check one file with `virnucpro-store validate`")
    if not allow_missing:
        _fail(f"missing: no such folder or prefix: {store.url} (nothing is stored under it)",
              EXIT_CHECKPOINT, "missing")
    return store


@contextlib.contextmanager
def _run_progress(description: str, quiet: bool) -> Iterator[Callable[[int, str | None], None]]:
    """A ``progress(n, key)`` callback for scan/commit_run/verify_run drawing a bar on a
    terminal (nothing when piped or with -q)."""
    with render.progress(0, enabled=not quiet) as bar:
        task = bar.add_task(description, total=None)

        def advance(n: int, key: str | None) -> None:
            if key is None:
                bar.update(task, total=n)
            else:
                bar.advance(task)

        yield advance


# -- the commands ----------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True,
              help="Failures and warnings only: no OK lines, summaries or progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="virnucpro_store")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, debug: bool) -> None:
    """Atomic, validated storage of VirNucPro's PyTorch feature files.

    URLs are paths, file://, memory://NAME, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or
    az://CONTAINER/PREFIX. Commands that take a URL fall back to $VIRNUCPRO_STORE_URL. Exit
    codes: 0 ok, 1 storage failure, 2 usage error, 3 bad checkpoint(s) or nothing there,
    130 interrupted. Every command takes --json (docs/cli.md).

    \b
    Examples:
      virnucpro-store demo                          # watch the validator catch four faults
      virnucpro-store validate /scratch/run7 --schema auto
      virnucpro-store ls s3://lab-bucket/run7 --check
      virnucpro-store info /scratch/run7/esm_000.pt
      virnucpro-store cp /scratch/run7 gs://lab-bucket/run7
      virnucpro-store gc az://lab/run7 --older-than 1h --dry-run
      virnucpro-store scan /scratch/run7 --expected ids.fasta --todo todo.txt
      virnucpro-store commit s3://lab-bucket/run7 && virnucpro-store verify s3://lab-bucket/run7
    """
    levels = (logging.WARNING, logging.INFO, logging.DEBUG)
    level = logging.ERROR if quiet else levels[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"debug": debug, "quiet": quiet, "json": False, "done": None}


def _folder_targets(located, pattern: str | None) -> tuple[list[str], dict[str, str]]:
    """(checkpoint keys, {key: why it is not one}) of a folder, sorted as ``scan`` sorts
    them: sidecars, leftovers, foreign files and the run manifest are listed apart."""
    from .runs import MANIFEST_NAME, classify

    keys = located.keys
    checkpoints, apart = classify(keys, pattern)
    for key in keys:
        if key.rsplit("/", 1)[-1] == MANIFEST_NAME:
            apart[key] = "run manifest (vnps-run-manifest.json)"
    return checkpoints, apart


@cli.command()
@click.argument("urls", nargs=-1)
@validation_options(
    schema_help="dnabert, esm, merged, shard, or auto (pick from the keys); omit to check "
                "each file against the built-in schema its keys match, as scan does.",
    pattern_help="Glob on file names taken for checkpoints in folders (default '*.pt', "
                 "'*.pth'); other files are listed apart, never failed.",
    deep_help="Also check every record's CRC-32 and do a full safe torch.load.")
@click.option("--quarantine", default=None, metavar="DEST",
              help="Move bad files to this folder/prefix (each move published atomically).")
@click.option("--details", is_flag=True,
              help="Full lines (no cutting to the terminal's width); files listed apart one "
                   "per line.")
@json_option("One JSON object per file, one per line, on stdout (docs/cli.md).")
@storage_options
@click.pass_context
@handle_errors
def validate(ctx: click.Context, urls: tuple[str, ...], schema: str | None, level: str,
             deep: bool, pattern: str | None, jobs: int, quarantine: str | None,
             details: bool, as_json: bool, options: StorageOptions) -> None:
    """Validate files, folders or prefixes (walked recursively). In a folder, checkpoints
    (*.pt, *.pth or --pattern) are validated; sidecars (*.done), leftovers (*.tmp), foreign
    files and the run manifest are listed apart and never failed, as scan does.

    Exit 0 when every checkpoint is valid, 3 when any is not, or is missing, or nothing
    matched, 2 on a usage error, 130 when interrupted.

    \b
    Examples:
      virnucpro-store validate run7/esm_000.pt --schema esm
      virnucpro-store validate /scratch/run7 --schema auto -j 16
      virnucpro-store validate s3://lab-bucket/run7 --level load --json > verdicts.jsonl
      virnucpro-store validate /scratch/run7 --quarantine /scratch/run7-bad
    """
    from .targets import Target, prefix_inside

    quiet = ctx.obj["quiet"]
    schema = _schema_option(schema)
    targets: list[Target] = []
    apart: dict[str, str] = {}  # url -> reason
    for url in _urls_or_default(urls):
        located = _located(url, options)
        if located.single:
            targets.append(Target(located.store, located.keys[0]))
            continue
        checkpoints, skipped = _folder_targets(located, pattern)
        targets += [Target(located.store, key) for key in checkpoints]
        apart |= {located.store.url_for(key): reason for key, reason in skipped.items()}
    quarantine_store = _open(quarantine, options) if quarantine else None
    if quarantine_store is not None:
        targets = _outside_quarantine(targets, quarantine_store, prefix_inside)
    console = render.console()
    width = render.line_width(details)
    # with no schema named, each file is checked against the built-in schema its keys
    # match (as scan does): a shard with 3 rows and 2 ids is incompatible either way
    check_schema = schema if schema is not None or level != "keys" else "auto"

    def check(target):
        started = time.perf_counter()
        try:
            report = target.store.validate(target.key, schema=check_schema, level=level,
                                           deep=deep)
        except errors.InvalidKey as exc:  # e.g. a symlink: this file only, the rest goes on
            report = _skipped_report(target, exc, level)
        if schema is None and report.code == "keys.no_schema":
            report = _no_schema_matched(report)
        report.seconds = time.perf_counter() - started
        return target, report

    results: list = []
    moved: list[str] = []
    ctx.obj["done"] = lambda: (f"{len(results)} of {len(targets)} file(s) validated, "
                               f"{sum(not r.ok for _, r in results)} bad"
                               + (f", {len(moved)} quarantined" if moved else ""))
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        with render.progress(len(targets), enabled=not quiet) as progress:
            task = progress.add_task("validating", total=len(targets))
            for target, report in pool.map(check, targets):
                progress.advance(task)
                results.append((target, report))
                if as_json:
                    click.echo(json.dumps(render.json_line(report) | {"skipped": None},
                                          default=str))
                elif not (quiet and report.ok):
                    # stdout; rich's live progress (on stderr) redraws below it
                    console.print(render.report_line(report, target.url, width), markup=True)
                if (quarantine_store is not None and not report.ok
                        and report.category not in ("missing", None)):
                    _move(target, quarantine_store)
                    moved.append(target.url)
                    _warn(f"quarantined {target.url} -> "
                          f"{quarantine_store.url_for(target.key)}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if as_json:
        for url, reason in sorted(apart.items()):
            click.echo(json.dumps({"url": url, "ok": None, "level": None, "category": None,
                                   "code": None, "message": f"not a checkpoint: {reason}",
                                   "size": None, "schema": None, "details": None,
                                   "skipped": reason}))
    elif apart and not quiet:
        render.print_apart(console, apart, details=details)
    if not quiet and (not as_json or len(results) > 1):
        render.print_summary(results, to_stderr=as_json, width=width)
    if not results:
        message = ("nothing matched: no checkpoint to validate"
                   + (f" (--pattern {pattern!r})" if pattern else ""))
        if as_json:  # a JSON reader gets a verdict, not an empty stream
            click.echo(json.dumps({"ok": False, "error": "nothing_matched", "message": message,
                                   "exit_code": EXIT_CHECKPOINT}))
        _warn(message)
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


def _no_schema_matched(report):
    """The verdict without a schema for a file that passed every level but matched no
    built-in schema (``--schema`` not given: such a file is not judged by a schema)."""
    import dataclasses

    return dataclasses.replace(report, ok=True, level="keys", category=None, code=None,
                               schema=None,
                               message="valid up to the keys level (no built-in schema "
                                       "matches its keys; none was checked)")


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
@click.option("--check", is_flag=True,
              help="Add the verdict of a cheap validation of each checkpoint (other files "
                   "are marked 'not a checkpoint', never failed).")
@click.option("--level", type=click.Choice(LEVELS), default="load", show_default=True,
              help="Level for --check.")
@click.option("--pattern", default=None, help="Glob on file names, e.g. '*.pt'.")
@click.option("--details", is_flag=True, help="Full lines, not cut to the terminal's width.")
@json_option("One JSON object per key, one per line (docs/cli.md).")
@storage_options
@click.pass_context
@handle_errors
def ls_command(ctx: click.Context, url: str | None, check: bool, level: str,
               pattern: str | None, details: bool, as_json: bool,
               options: StorageOptions) -> None:
    """List keys with size and modification time (staging objects never appear), one line
    per key.

    Exit 0 when listed (with --check: and every checkpoint valid), 3 when a checkpoint is bad
    or the folder/prefix does not exist, 2 on a usage error.

    \b
    Examples:
      virnucpro-store ls /scratch/run7
      virnucpro-store ls s3://lab-bucket/run7 --check --pattern '*.pt'
    """
    import fnmatch

    quiet = ctx.obj["quiet"]
    located = _located(_one_url(url), options)
    store = located.store
    if not located.exists:
        _fail(f"missing: no such file, folder or prefix: {_one_url(url)}", EXIT_CHECKPOINT,
              "missing")
    keys = located.keys if located.single else [
        k for k in located.keys
        if pattern is None or fnmatch.fnmatchcase(k.rsplit("/", 1)[-1], pattern)]
    if located.keys and not keys:
        _warn(f"--pattern {pattern!r} matched none of the {len(located.keys)} key(s) under "
              f"{store.url}")
    apart = {} if located.single else _folder_targets(located, pattern)[1]
    # sizes from the listing itself (no request per key); a key the listing did not describe
    # (a single file, one removed or replaced since) is asked for on its own
    listed = {} if located.single else {i.key: i for i in store.list_info()}
    rows = []
    bad = False
    with render.progress(len(keys), enabled=check and not quiet) as progress:
        task = progress.add_task("checking", total=len(keys))
        for key in keys:
            progress.advance(task)
            try:
                info = listed.get(key) or store.info(key)
            except errors.InvalidKey as exc:  # e.g. a symlink: report it, list the rest
                bad = True
                if as_json:
                    click.echo(json.dumps({"key": key, "ok": False, "category": None,
                                           "message": f"skipped: {exc}"}))
                else:
                    rows.append((key, "-", "-", "yellow", f"skipped: {exc}"))
                continue
            except errors.CheckpointMissing:
                continue  # removed since the listing
            report = None
            if check and key not in apart:
                report = store.validate(key, level=level)
            bad |= report is not None and not report.ok
            if as_json:
                row = info.to_dict()
                if check:
                    row |= {"checkpoint": report is not None, "apart": apart.get(key)}
                if report is not None:
                    row |= {"ok": report.ok, "category": report.category,
                            "code": report.code, "message": report.message}
                click.echo(json.dumps(row, default=str))
            elif not (quiet and check and (report is None or report.ok)):
                rows.append(render.ls_row(info, report, check=check, apart=apart.get(key)))
    if not as_json and rows:
        console = render.console()
        for line in render.ls_lines(rows, check=check, width=render.line_width(details)):
            console.print(line, markup=True)
    sys.exit(EXIT_CHECKPOINT if bad else EXIT_OK)


@cli.command()
@click.argument("url")
@click.option("--deep", is_flag=True, help="Also check the CRC-32 of every record.")
@json_option("The whole description as one JSON object.")
@storage_options
@handle_errors
def info(url: str, deep: bool, as_json: bool, options: StorageOptions) -> None:
    """What a file holds, without loading its tensor data: keys, list lengths, tensor dtypes
    and shapes, version/status, size, CRC status with --deep. A symbolic link (a staged
    input) is followed.

    Exit 0 for a valid file, 3 for a bad or missing one, 2 on a usage error.

    \b
    Examples:
      virnucpro-store info /scratch/run7/esm_000.pt
      virnucpro-store info s3://lab-bucket/run7/merged.pt --deep --json
    """
    from .registry import parse_url
    from .targets import followed_url

    parsed = parse_url(url)
    if parsed.scheme == "file" and os.path.isdir(parsed.location):
        raise click.UsageError(f"info takes a file, and {url} is a folder; list it with "
                               f"`virnucpro-store ls` or check it with `virnucpro-store "
                               f"validate`")
    parent, key = followed_url(parsed, options).split_object(url)
    store = _open(parent, options)
    description = store.inspect(key, deep=deep)
    if as_json:
        click.echo(json.dumps(description, default=str, indent=2))
    else:
        render.print_description(description)
    sys.exit(EXIT_OK if description.get("ok", True) else EXIT_CHECKPOINT)


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--pattern", default=None,
              help="Glob on file names taken for checkpoints when SRC is a folder; the run "
                   "manifest is always copied, other files only without --pattern.")
@click.option("--level", type=click.Choice(LEVELS), default="load", show_default=True,
              help="Validation of each checkpoint at the destination before it is published.")
@click.option("--force", is_flag=True, help="Copy even what is already there and valid.")
@json_option("What was copied and skipped, as one JSON object (docs/cli.md).")
@storage_options
@click.pass_context
@handle_errors
def cp(ctx: click.Context, src: str, dst: str, pattern: str | None, level: str, force: bool,
       as_json: bool, options: StorageOptions) -> None:
    """Copy a file or a whole run folder/prefix between stores: local, memory, s3, gs, az.

    Each checkpoint is streamed, validated at the destination and published atomically
    there. A run folder is copied whole: its checkpoints, then its sidecars and other files
    as they are, then its run manifest last (so the copy verifies as the source does);
    leftovers (*.tmp) are not copied. Resumable: files already at the destination with the
    same size (checkpoints: that validate; other files: the same bytes) are skipped.

    Exit 0 when copied, 3 when a source checkpoint is bad or SRC does not exist, 1 on a
    storage failure, 2 on a usage error, 130 when interrupted (saying what was copied).

    \b
    Examples:
      virnucpro-store cp /scratch/run7 s3://lab-bucket/run7
      virnucpro-store cp /scratch/run7 az://lab/run7 && virnucpro-store verify az://lab/run7
      virnucpro-store cp s3://lab-bucket/run7/merged.pt /scratch/restore/
    """
    from .registry import parse_url
    from .runs import MANIFEST_NAME

    quiet = ctx.obj["quiet"]
    located = _located(src, options)
    store = located.store
    if not located.exists:
        _fail(f"missing: no such file, folder or prefix: {src}", EXIT_CHECKPOINT, "missing")
    destination = parse_url(dst)
    raw: list[str] = []  # copied byte for byte, unvalidated (sidecars, then the manifest)
    if located.single:
        key = located.keys[0]
        # cp FILE DST/ keeps the name; cp FILE DST/NAME.pt renames
        if dst.endswith("/") or _is_local_dir(destination):
            dest_store, mapping = _open(destination, options), {key: key.rsplit("/")[-1]}
        else:
            parent, name = destination.split_object(dst)
            dest_store, mapping = _open(parent, options), {key: name}
        checkpoints = [key]
    else:
        checkpoints, apart = _folder_targets(located, pattern)
        manifests = [k for k in apart if k.rsplit("/", 1)[-1] == MANIFEST_NAME]
        others = [] if pattern is not None else [
            k for k in apart if k not in manifests and not k.endswith(".tmp")]
        raw = others + manifests
        dest_store = _open(destination, options)
        from .targets import prefix_inside

        if prefix_inside(store, dest_store):  # a folder inside the source (the same: resume)
            raise click.UsageError(
                f"{dst} lies inside {src}: the copy would become part of the run it copies "
                f"(and be validated, scanned and copied again with it); copy it elsewhere")
        mapping = {k: k for k in checkpoints + raw}
        if not checkpoints and not raw:
            _fail(f"nothing to copy under {store.url}"
                  + (f": --pattern {pattern!r} matched no file" if pattern else ""),
                  EXIT_CHECKPOINT, "missing")
    sizes = {i.key: i.size for i in store.list_info()} if not located.single else {}
    for key in mapping:
        if key not in sizes:
            sizes[key] = store.info(key).size
    copied: list[str] = []
    skipped: list[str] = []
    ctx.obj["done"] = lambda: (
        f"copied {len(copied)} of {len(mapping)} file(s) to {dest_store.url}"
        + (f" ({', '.join(copied[:10])}{', ...' if len(copied) > 10 else ''})"
           if copied else "") + f", {len(skipped)} already there; run the same cp again to "
        "finish")
    total = sum(sizes[k] for k in mapping)
    with render.progress(total, bytes_mode=True, enabled=not quiet) as progress:
        task = progress.add_task("copying", total=total)
        for key, dest_key in mapping.items():
            validate = None if key in raw else level
            if not force and _already_there(store, key, dest_store, dest_key, sizes[key],
                                            validate):
                skipped.append(key)
                progress.advance(task, sizes[key])
                log.info("skip %s (already at destination)", key)
                continue
            with store.open(key) as handle:
                dest_store.save_bytes(_Counting(handle, progress, task), dest_key,
                                      validate=validate)
            copied.append(key)
    if as_json:
        click.echo(json.dumps({"ok": True, "src": store.url, "dst": dest_store.url,
                               "copied": copied, "skipped": skipped,
                               "n_copied": len(copied), "n_skipped": len(skipped),
                               "bytes": total}))
    elif not quiet:
        render.console(stderr=True).print(
            f"copied {len(copied)}, skipped {len(skipped)} (already there and valid)")


def _is_local_dir(parsed) -> bool:
    """Whether a parsed URL names a local folder."""
    return parsed.scheme == "file" and os.path.isdir(parsed.location)


def _already_there(src, key: str, store, dest_key: str, size: int,
                   level: str | None) -> bool:
    """A checkpoint of the same size that validates at ``level``; a file copied as it is
    (``level`` None): the same bytes."""
    try:
        if store.info(dest_key).size != size:
            return False
        if level is None:
            return store.read_bytes(dest_key) == src.read_bytes(key)
    except errors.CheckpointMissing:
        return False
    return store.validate(dest_key, level=level).ok


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
@json_option("What was (or would be) removed, as one JSON object (docs/cli.md).")
@storage_options
@click.pass_context
@handle_errors
def gc(ctx: click.Context, url: str | None, older_than: str, dry_run: bool,
       virnucpro_tmp: bool, as_json: bool, options: StorageOptions) -> None:
    """Remove staging leftovers and incomplete uploads of killed saves.

    Exit 0 when done, 1 on a storage failure, 2 on a usage error (a file), 3 for a local
    folder that does not exist (a mistyped path is not "nothing to remove").

    \b
    Examples:
      virnucpro-store gc /scratch/run7 --dry-run
      virnucpro-store gc s3://lab-bucket/run7 --older-than 6h
      virnucpro-store gc /scratch/v1-run --virnucpro-tmp --older-than 1d
    """
    from .registry import parse_url

    seconds = parse_duration(older_than)
    url = _one_url(url)
    parsed = parse_url(url)
    if parsed.scheme == "file" and os.path.isfile(parsed.location):
        raise click.UsageError(f"gc takes a folder, and {url} is a file")
    if parsed.scheme == "file" and not os.path.isdir(parsed.location):
        _fail(f"missing: no such folder: {url}; nothing was removed", EXIT_CHECKPOINT,
              "missing")
    store = _open(parsed, options)
    found = {leftover.name: leftover for leftover in store.leftovers(seconds)}  # kind and age
    names = store.gc(seconds, virnucpro_tmp=virnucpro_tmp, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps({
            "ok": True, "url": store.url, "dry_run": dry_run, "older_than_seconds": seconds,
            "removed": [{"name": name,
                         "kind": found[name].kind if name in found else
                         ("tmp" if name.endswith(".tmp") else "staging"),
                         "age_seconds": found[name].age_seconds if name in found else None}
                        for name in names]}))
        return
    if ctx.obj["quiet"]:
        return
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


def read_ids(path: str) -> list[str]:
    """The ids of an ``--expected`` file, in order, each once: one id per line (blank lines
    ignored, white space stripped), or a FASTA file (the first word of each ``>`` header).
    A UTF-8 byte-order mark and CRLF line ends are tolerated.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "ids.fa")
    >>> _ = open(path, "wb").write(b"\\xef\\xbb\\xbf>seq1 phage\\r\\nACGT\\r\\n>seq2\\r\\nGG\\r\\n")
    >>> read_ids(path)
    ['seq1', 'seq2']
    """
    try:
        with open(path, encoding="utf-8-sig") as handle:
            lines = [line.strip() for line in handle]
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise click.BadParameter(f"{path}: {why}", param_hint="--expected") from None
    lines = [line for line in lines if line]
    if lines and lines[0].startswith(">"):  # FASTA: ids from the headers
        ids = [line[1:].split(maxsplit=1)[0] for line in lines
               if line.startswith(">") and line[1:].strip()]
    else:
        ids = lines
    return list(dict.fromkeys(ids))


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


def _report_scan(store: Any, report: Any, *, expected: list[str] | None,
                 expected_file: str | None, todo_file: str | None, as_json: bool,
                 quiet: bool, details: bool) -> None:
    """What scan and scan-merge print (and the --todo file they write) for a report."""
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
                          expected_file=expected_file, todo_file=todo_file, quiet=quiet,
                          width=render.line_width(details))


@cli.command()
@click.argument("url", required=False)
@validation_options(
    schema_help="dnabert, esm, merged, shard, or auto; omit to check each file against the "
                "built-in schema its keys match.",
    pattern_help="Glob on file names taken for checkpoints (default '*.pt', '*.pth').",
    level_help="Highest level to check; ids are read at 'keys' only.",
    deep_help="Also check every record's CRC-32 and do a full safe load.")
@click.option("--expected", "expected_file", default=None, metavar="IDS_FILE",
              help="The run's sequence ids: a text file, one per line, or the run's FASTA "
                   "file (ids from the '>' headers). Needs --todo and --level keys.")
@click.option("--todo", "todo_file", default=None, metavar="OUT_FILE",
              help="Write the ids to requeue (expected, not in a valid file), sorted, one per "
                   "line.")
@click.option("--allow-missing", is_flag=True,
              help="Take a folder/prefix that does not exist for an empty run (a fresh "
                   "start) instead of an error.")
@click.option("--details", is_flag=True, help="Full lines, not cut to the terminal's width.")
@click.option("--partition", "partition", default=None, metavar="I/N",
              help="Scan only partition I (0-based) of N, for a scatter (SLURM array, "
                   "Snakemake, WDL); needs --out. The plan: --plan, or else N key ranges "
                   "of this machine's listing (docs/cohort.md).")
@click.option("--plan", "plan_file", default=None, metavar="PLAN",
              help="With --partition: the plan written by `scan-plan` (a path or store "
                   "URL), so every machine scans a piece of the same listing.")
@click.option("--out", "out_file", default=None, metavar="PART",
              help="With --partition: where the partition's report goes (a path or store "
                   "URL), for `scan-merge`.")
@json_option("The scan report as one JSON object (docs/cli.md).")
@storage_options
@click.pass_context
@handle_errors
def scan(ctx: click.Context, url: str | None, schema: str | None, level: str, deep: bool,
         pattern: str | None, jobs: int, expected_file: str | None, todo_file: str | None,
         allow_missing: bool, details: bool, partition: str | None, plan_file: str | None,
         out_file: str | None, as_json: bool, options: StorageOptions) -> None:
    """Validate every checkpoint of a run folder/prefix and collect the sequence ids held by
    the valid files: what a resume needs. The ids of an invalid file are never counted as
    done. Sidecars (*.done), leftovers (*.tmp), foreign files and VirNucPro's manifest.json
    are listed apart.

    Exit 0 when no checkpoint is invalid (an existing empty folder included: everything is
    to do), 3 when any is, or the folder/prefix does not exist (see --allow-missing), or
    --pattern matched none of its files; 2 on a usage error (a file instead of a folder,
    --expected at a level that reads no ids); 130 when interrupted.

    \b
    Examples:
      virnucpro-store scan /scratch/run7
      virnucpro-store scan s3://lab-bucket/run7 --expected ids.txt --todo todo.txt
      virnucpro-store scan gs://lab-bucket/run7 --expected run7.fasta --todo todo.txt
      virnucpro-store scan /scratch/run7 --schema shard --json > scan.json
      virnucpro-store scan s3://lab-bucket/run7 --partition 3/64 --out parts/part-3.json

    With --partition, exit 0 once the partition's report is written, whatever its files
    are (a workflow engine deletes the outputs of a failed job): `scan-merge` gives the
    verdict.
    """
    quiet = ctx.obj["quiet"]
    schema = _schema_option(schema)
    if partition is not None or plan_file is not None or out_file is not None:
        _scan_partition(ctx, _one_url(url), partition, plan_file, out_file,
                        expected=expected_file is not None or todo_file is not None,
                        scan_kwargs={"schema": schema, "level": level, "deep": deep,
                                     "jobs": jobs, "pattern": pattern},
                        allow_missing=allow_missing, as_json=as_json, options=options)
    if (expected_file is None) != (todo_file is None):
        raise click.UsageError("--expected and --todo go together: the ids to requeue are "
                               "the expected ones no valid file holds")
    if expected_file is not None and level in NO_ID_LEVELS:
        raise click.UsageError(f"--expected needs --level keys: at --level {level} no "
                               f"sequence id is read, so every expected id would be requeued")
    expected = read_ids(expected_file) if expected_file is not None else None
    store = _run_root(_one_url(url), options, command="scan", allow_missing=allow_missing)
    ctx.obj["done"] = lambda: "nothing was written (--todo is written only by a whole scan)"
    with _run_progress("scanning", quiet) as progress:
        report = store.scan("", schema=schema, level=level, deep=deep, jobs=jobs,
                            pattern=pattern, progress=progress)
    empty = not report.valid and not report.invalid
    if empty and pattern is not None and report.skipped:
        _fail(f"--pattern {pattern!r} matched none of the {len(report.skipped)} file(s) "
              f"under {store.url}; nothing was scanned" + (f" and {todo_file} was not written"
                                                          if todo_file else ""),
              EXIT_CHECKPOINT, "nothing_matched")
    _report_scan(store, report, expected=expected, expected_file=expected_file,
                 todo_file=todo_file, as_json=as_json, quiet=quiet, details=details)
    if empty:
        _warn(f"no checkpoints under {store.url}")
    sys.exit(EXIT_OK if report.ok else EXIT_CHECKPOINT)


def _partition_arg(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), 0 <= I < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise click.BadParameter(f"{text!r} is not I/N with 0 <= I < N (e.g. 0/8, 7/8)",
                                 param_hint="--partition")
    return int(match.group(1)), int(match.group(2))


def _read_json_doc(url: str, what: str, reader: Callable[[str], Any]) -> Any:
    """A plan or part file read and parsed; one that is not what it should be is a usage
    error (exit 2), one that is not there a missing file (exit 3)."""
    from .partitions import read_text

    try:
        return reader(read_text(url))
    except (ValueError, KeyError, TypeError) as exc:
        raise click.BadParameter(f"{url}: {exc}", param_hint=what) from None


def _scan_partition(ctx: click.Context, url: str, partition: str | None,
                    plan_file: str | None, out_file: str | None, *, expected: bool,
                    scan_kwargs: dict[str, Any], allow_missing: bool, as_json: bool,
                    options: StorageOptions) -> NoReturn:
    """``scan --partition I/N --out PART [--plan PLAN]``: one partition's report to PART."""
    from .partitions import plan_from_json, write_text

    if partition is None or out_file is None:
        raise click.UsageError("--partition I/N and --out PART go together (and --plan "
                               "with them)")
    if expected:
        raise click.UsageError("--expected/--todo take the whole scan: give them to "
                               "`scan-merge`")
    index, count = _partition_arg(partition)
    # with a plan, the job lists its own range only (not the whole run to see it is there)
    store = (_open(url, options) if plan_file is not None else
             _run_root(url, options, command="scan", allow_missing=allow_missing))
    if plan_file is not None:
        parts = _read_json_doc(plan_file, "--plan", plan_from_json)
        if len(parts) != count:
            raise click.UsageError(f"--partition {partition}: the plan {plan_file} has "
                                   f"{len(parts)} partitions, not {count}")
    else:
        parts = store.plan_scan("", by="count", partitions=count)
    part = parts[index]
    ctx.obj["done"] = lambda: f"nothing was written to {out_file}"
    report = store.scan_partition(part, **scan_kwargs)
    assert report.partition is not None
    report.partition["url"] = store.url  # for scan-merge's messages (not part of the plan)
    write_text(out_file, report.to_json())
    if as_json:
        click.echo(json.dumps(report.to_dict() | {"partition": part.to_dict(),
                                                  "out": out_file}, default=str))
    elif not ctx.obj["quiet"]:
        n = len(report.valid) + len(report.invalid)
        render.console().print(render.esc(
            f"partition {index}/{count} of {store.url}: {n} checkpoint(s), "
            f"{len(report.valid)} valid, {len(report.invalid)} invalid -> {out_file}"))
    sys.exit(EXIT_OK)


@cli.command(name="scan-plan")
@click.argument("url", required=False)
@click.option("--partitions", "count", type=click.IntRange(1, 1_000_000), required=True,
              help="How many partitions: N key ranges of one listing, sizes differing by "
                   "at most one.")
@click.option("--out", "out_file", required=True, metavar="PLAN",
              help="Where the plan goes (a path or store URL), for `scan --plan`.")
@click.option("--allow-missing", is_flag=True,
              help="Plan a folder/prefix that does not exist as an empty run.")
@json_option("The plan's summary as one JSON object.")
@storage_options
@click.pass_context
@handle_errors
def scan_plan(ctx: click.Context, url: str | None, count: int, out_file: str,
              allow_missing: bool, as_json: bool, options: StorageOptions) -> None:
    """List a run folder/prefix once and write a plan of N partitions, so that the N jobs
    of a scatter (`scan --plan PLAN --partition I/N`) scan pieces of the same listing.

    Exit 0 when the plan is written; 3 when the folder/prefix does not exist (see
    --allow-missing); 2 on a usage error.

    \b
    Examples:
      virnucpro-store scan-plan s3://lab-bucket/run7 --partitions 64 --out plan.json
    """
    from .partitions import plan_to_json, write_text

    store = _run_root(_one_url(url), options, command="scan-plan",
                      allow_missing=allow_missing)
    parts = store.plan_scan("", by="count", partitions=count)
    write_text(out_file, plan_to_json(parts, store.url))
    if as_json:
        click.echo(json.dumps({"ok": True, "url": store.url, "partitions": len(parts),
                               "plan_id": parts[0].plan_id, "out": out_file}))
    elif not ctx.obj["quiet"]:
        render.console().print(render.esc(f"plan {parts[0].plan_id}: {len(parts)} "
                                          f"partition(s) of {store.url} -> {out_file}"))


class _NamedStore:
    """What the scan report printer needs of a store, from a URL alone (scan-merge reads
    reports, not the store)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def url_for(self, key: str) -> str:
        return f"{self.url}/{key}" if self.url else key


@cli.command(name="scan-merge")
@click.argument("parts", nargs=-1, required=True)
@click.option("--expected", "expected_file", default=None, metavar="IDS_FILE",
              help="The run's sequence ids (one per line, or FASTA), as `scan` takes them. "
                   "Needs --todo.")
@click.option("--todo", "todo_file", default=None, metavar="OUT_FILE",
              help="Write the ids to requeue (expected, not in a valid file), sorted, one per "
                   "line.")
@click.option("--out", "out_file", default=None, metavar="REPORT",
              help="Also write the merged report (the partition JSON form) here.")
@click.option("--details", is_flag=True, help="Full lines, not cut to the terminal's width.")
@json_option("The merged scan report as one JSON object, as `scan --json` gives it.")
@click.pass_context
@handle_errors
def scan_merge(ctx: click.Context, parts: tuple[str, ...], expected_file: str | None,
               todo_file: str | None, out_file: str | None, details: bool,
               as_json: bool) -> None:
    """Merge the partition reports of `scan --partition I/N --out PART` (paths or store
    URLs) into the report one `scan` of the whole run gives.

    Exit 0 when no checkpoint is invalid, 3 when any is or a partition of the plan is
    missing from PARTS (its files were never scanned), 2 when the parts come from different
    plans (the listing changed between machines: plan once with `scan-plan`) or a part is
    given twice or is not a partition report; 130 when interrupted.

    \b
    Examples:
      virnucpro-store scan-merge parts/part-*.json --expected run7.fasta --todo todo.txt
    """
    from .partitions import missing_partitions, write_text
    from .runs import ScanReport

    quiet = ctx.obj["quiet"]
    if (expected_file is None) != (todo_file is None):
        raise click.UsageError("--expected and --todo go together: the ids to requeue are "
                               "the expected ones no valid file holds")
    expected = read_ids(expected_file) if expected_file is not None else None
    reports = [_read_json_doc(part, "PARTS", ScanReport.from_json) for part in parts]
    try:
        missing = missing_partitions(reports)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        count = reports[0].partition["count"] if reports[0].partition else "?"
        _fail(f"missing: {len(missing)} of the plan's {count} partition(s) are not among "
              f"the parts given: {shown}; nothing was merged"
              + (f" and {todo_file} was not written" if todo_file else ""),
              EXIT_CHECKPOINT, "missing", missing_partitions=missing)
    if expected is not None and any(r.level in NO_ID_LEVELS for r in reports):
        raise click.UsageError("--expected needs parts scanned at --level keys: no "
                               "sequence id was read")
    try:
        report = ScanReport.merge(reports)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    store = _NamedStore(str((reports[0].partition or {}).get("url", "")))
    if out_file is not None:
        write_text(out_file, report.to_json())
    _report_scan(store, report, expected=expected, expected_file=expected_file,
                 todo_file=todo_file, as_json=as_json, quiet=quiet, details=details)
    sys.exit(EXIT_OK if report.ok else EXIT_CHECKPOINT)


@cli.command()
@click.argument("url", required=False)
@click.option("--level", type=click.Choice(LEVELS), default="keys", show_default=True,
              help="Validation of each file before it is committed.")
@click.option("--replace", is_flag=True,
              help="Commit again over an existing manifest (the repair path after a bad file "
                   "was redone); the previous manifest is kept under a history name.")
@click.option("--reason", default=None, help="Why --replace was needed (kept in the manifest).")
@json_option("The commit as one JSON object (docs/cli.md).")
@storage_options
@click.pass_context
@handle_errors
def commit(ctx: click.Context, url: str | None, level: str, replace: bool,
           reason: str | None, as_json: bool, options: StorageOptions) -> None:
    """Validate every checkpoint of a run and publish its manifest (vnps-run-manifest.json:
    each file's key, size, checksum, schema and number of ids) last and create-only; with
    --replace, over the existing one, which is kept as vnps-run-manifest.json.replaced-STAMP.

    Exit 0 when committed; 3 when a file is invalid, the folder does not exist or there is
    nothing to commit (nothing is published); 1 when the run is already committed (the
    storage refused the create-only publish: see --replace); 2 on a usage error; 130 when
    interrupted (nothing is published).

    \b
    Examples:
      virnucpro-store commit /scratch/run7
      virnucpro-store commit s3://lab-bucket/run7 && virnucpro-store verify s3://lab-bucket/run7
      virnucpro-store commit /scratch/run7 --replace --reason "batch_17 redone"
    """
    from .runs import MANIFEST_NAME

    if reason is not None and not replace:
        raise click.UsageError("--reason goes with --replace")
    quiet = ctx.obj["quiet"]
    store = _run_root(_one_url(url), options, command="commit")
    ctx.obj["done"] = lambda: "nothing was committed"
    try:
        with _run_progress("committing", quiet) as progress:
            manifest = store.commit_run("", level=level, replace=replace, reason=reason,
                                        progress=progress)
    except errors.AlreadyExists:
        _fail(f"{store.url}: the run is already committed ({store.url_for(MANIFEST_NAME)} "
              f"exists); check it with `virnucpro-store verify`, or commit again with "
              f"--replace", EXIT_STORAGE, "already_committed")
    scanned = manifest.report
    assert scanned is not None
    sizes = sum(entry.size for entry in manifest.files.values())
    previous = (manifest.replaces or {}).get("previous")
    if as_json:
        click.echo(json.dumps({
            "ok": True, "url": store.url, "manifest": store.url_for(manifest.key),
            "n_files": len(manifest.files), "bytes": sizes, "n_ids": len(scanned.ids),
            "n_duplicate_ids": len(scanned.duplicate_ids), "level": manifest.level,
            "created": manifest.created,
            "replaced": store.url_for(previous) if previous else None, "reason": reason}))
        return
    if scanned.duplicate_ids:
        _warn(f"{len(scanned.duplicate_ids)} id(s) are in more than one committed file")
    if quiet:
        return
    out = render.console()
    out.print(f"committed {len(manifest.files)} file(s), {render.human_size(sizes)}, "
              f"{render.id_count(scanned)}: {render.esc(store.url_for(manifest.key))}")
    if previous:
        out.print(f"the previous manifest is kept as {render.esc(store.url_for(previous))}")


@cli.command()
@click.argument("url", required=False)
@click.option("--deep", is_flag=True, help="Also check the CRC-32 of every record's data.")
@click.option("--details", is_flag=True, help="Full lines, not cut to the terminal's width.")
@json_option("The verify report as one JSON object, also for a run not committed "
             "(docs/cli.md).")
@storage_options
@click.pass_context
@handle_errors
def verify(ctx: click.Context, url: str | None, deep: bool, details: bool, as_json: bool,
           options: StorageOptions) -> None:
    """Check a committed run against its manifest: every listed file is there, valid, and the
    one committed (same size and checksum). Checkpoints not in the manifest are listed as
    extra; they do not fail the run.

    Exit 0 when the run is intact, 3 when a file is missing, changed, invalid or odd (a
    symbolic link in its place), or the run was never committed, or the folder does not
    exist, 2 on a usage error, 130 when interrupted.

    \b
    Examples:
      virnucpro-store verify /scratch/run7
      virnucpro-store verify s3://lab-bucket/run7 --deep --json
    """
    from .runs import MANIFEST_NAME

    quiet = ctx.obj["quiet"]
    store = _run_root(_one_url(url), options, command="verify")
    ctx.obj["done"] = lambda: "the run was not fully verified"
    try:
        with _run_progress("verifying", quiet) as progress:
            report = store.verify_run("", deep=deep, progress=progress)
    except errors.CheckpointMissing as exc:
        if exc.key != MANIFEST_NAME:
            raise
        _fail(f"missing: {store.url} is not committed (no {MANIFEST_NAME}); commit it with "
              f"`virnucpro-store commit`", EXIT_CHECKPOINT, "not_committed",
              committed=False, url=store.url)
    except errors.InvalidKey as exc:  # a file of the run no operation may read (a symlink)
        _fail(f"odd file in the run: {exc}", EXIT_CHECKPOINT, "odd_file", url=store.url)
    if as_json:
        click.echo(json.dumps(report.to_dict(), default=str))
    else:
        render.print_verify(store, report, quiet=quiet, width=render.line_width(details))
    sys.exit(EXIT_OK if report.ok else EXIT_CHECKPOINT)


@cli.command()
@click.argument("url", required=False, default="virnucpro-demo")
@click.option("--entries", default=64, show_default=True, help="Entries per feature file.")
@storage_options
@handle_errors
def demo(url: str, entries: int, options: StorageOptions) -> None:
    """Write the four feature formats to URL, damage copies, and watch the validator name
    each fault. URL defaults to the local folder ./virnucpro-demo; a memory:// store lives
    only as long as this command.

    Exit 0 when every fault was caught, 3 otherwise.

    \b
    Examples:
      virnucpro-store demo
      virnucpro-store demo memory://dry-run
    """
    from .testing.demo import run_demo

    if not run_demo(url, entries=entries, console=render.console(), storage_options=options):
        sys.exit(EXIT_CHECKPOINT)


def main(argv: list[str] | None = None) -> None:
    # Instance roles must work as in the Python API: the metadata service is asked, but an
    # answer that does not come within a second (no cloud VM) costs one second, not minutes.
    os.environ.setdefault("AWS_METADATA_SERVICE_TIMEOUT", "1")
    os.environ.setdefault("AWS_METADATA_SERVICE_NUM_ATTEMPTS", "1")
    cli.main(args=argv, prog_name="virnucpro-store")


if __name__ == "__main__":
    main()
