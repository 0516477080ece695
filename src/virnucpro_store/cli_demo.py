"""The newcomer's tour: save the four feature formats, break copies of them, validate everything.

Run by ``virnucpro-store demo`` (the command in :mod:`.cli`); it takes its valid files and its
damage from the test-helpers package (:mod:`.testing.samples`, :mod:`.testing.damage`). torch
and rich are imported only when it runs.
"""

from __future__ import annotations

import io

from .store import CheckpointStore
from .targets import open_url_store
from .testing import damage
from .testing.samples import FORMATS, sample, to_bytes

_FAULTS = [
    # (name, schema, deep, what the damage is)
    ("truncated", "merged", False, "the first half of merged.pt, as a killed copy leaves it"),
    ("flipped-byte", "esm", True, "one bit flipped in a tensor payload of esm.pt"),
    ("dropped-key", "dnabert", False, "dnabert.pt re-saved without its 'nucleotide' key"),
    ("code-running", "merged", False, "a data.pkl that would run a shell command if loaded "
                                      "with weights_only=False"),
]


def _damaged(store: CheckpointStore, name: str) -> bytes:
    merged = store.read_bytes("features/merged.pt")
    if name == "truncated":
        return damage.truncate(merged)
    if name == "code-running":
        return damage.code_running_pickle(merged, "echo 'this should never run'")
    if name == "flipped-byte":
        esm = store.read_bytes("features/esm.pt")
        return damage.flip_payload_byte(esm, "/data/0", position=5)
    if name == "dropped-key":
        obj = store.load("features/dnabert.pt")
        del obj["nucleotide"]
        return to_bytes(obj)
    raise ValueError(name)


def run_demo(url: str, *, entries: int = 64, console=None,
             storage_options: dict | None = None) -> bool:
    """Run the demo against the store at ``url``; return True when every verdict is right."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    store = open_url_store(url, storage_options or {})
    console.print(f"[bold]virnucpro_store demo[/] -> {store.url}\n")

    table = Table(title="1. Atomic, validated saves of the four feature formats")
    for col in ("key", "schema", "size", "what is inside", "verdict"):
        table.add_column(col)
    for fmt in FORMATS:
        obj = sample(fmt, entries, numpy_embeddings=(fmt == "shard"))
        key = f"features/{fmt}.pt"
        info = store.save(obj, key, schema=fmt, validate="keys")
        report = store.validate(key, schema=fmt, deep=True)
        tensors = report.details.get("tensors", {}).get("entries", {})
        shapes = ", ".join(f"{path} {v['dtype']} {tuple(v['shape'])}"
                           for path, v in list(tensors.items())[:2])
        table.add_row(key, fmt, f"{info.size / 1e6:.2f} MB", shapes or "-",
                      "[green]valid (deep)[/]" if report.ok else f"[red]{report.message}[/]")
    console.print(table)

    table = Table(title="2. Damaged copies: the validator names each fault")
    for col in ("damage", "torch.load(weights_only=True)", "validator verdict"):
        table.add_column(col, overflow="fold")
    all_right = True
    for name, schema, deep, what in _FAULTS:
        key = f"damaged/{name}.pt"
        store.save_bytes(_damaged(store, name), key, validate=None)
        report = store.validate(key, schema=schema, deep=deep)
        all_right &= not report.ok
        torch_says = _torch_verdict(store, key)
        verdict = (f"[red]{report.category}[/] at level "
                   f"{_next_level(report.level)}{' (deep)' if deep else ''}: {report.message}")
        table.add_row(f"{name}\n[dim]{what}[/]", torch_says, verdict)
    console.print(table)
    from rich.markup import escape

    if store.url.startswith("memory://"):
        where = (f"The files lived in {escape(store.url)}, a memory store that exists only "
                 "inside this command: they are gone now. To look at them afterwards, run "
                 "`virnucpro-store demo DIR` with a folder, then `virnucpro-store validate "
                 "DIR/damaged/flipped-byte.pt --deep`.")
    else:
        where = (f"Files are in {escape(store.url)}. Try: virnucpro-store validate "
                 f"{escape(store.url_for('damaged/flipped-byte.pt'))} --deep")
    console.print(
        "\nNothing from the code-running pickle was executed: the validator reads pickles with "
        "an allow-list and never imports or calls what they name.\n" + where
    )
    return all_right


def _next_level(passed: str | None) -> str:
    from .validation.report import LEVELS

    return LEVELS[0] if passed is None else LEVELS[min(LEVELS.index(passed) + 1, len(LEVELS) - 1)]


def _torch_verdict(store: CheckpointStore, key: str) -> str:
    """What a plain safe torch.load makes of the file -- to show what the validator adds."""
    import torch

    try:
        torch.load(io.BytesIO(store.read_bytes(key)), weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- reporting whatever torch says is the point
        return f"raises {type(exc).__name__}"
    return "[yellow]loads without complaint[/]"
