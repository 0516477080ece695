"""The pickle scan's run accelerators (pickling/templates.py) against its opcode loop.

The accelerators take runs of repeated records (torch.save's tensors, id strings, DNABERT's
dicts) at C speed; they must leave the scan in exactly the state the opcode loop leaves it in.
The oracle is the opcode loop itself (``prescan.ACCELERATE = False``), on real torch.save files
and on
mutants of them (random bytes, memo PUT/GET indices moved): the verdict, and at STOP the whole
memo and stack, item by item (kind, string position, tuple size/depth/hash, container kind,
counts and identity), must be the same.
"""

from __future__ import annotations

import io
import random
import re
import zipfile

import pytest
import torch

from virnucpro_store.testing.samples import sample, to_bytes
from virnucpro_store.validation.pickling import prescan, stackitems, templates
from virnucpro_store.validation.problem import Problem


def _pickle(obj: object, **kwargs: object) -> bytes:
    with zipfile.ZipFile(io.BytesIO(to_bytes(obj, **kwargs))) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))


def _bases() -> dict[str, bytes]:
    base = torch.zeros(4, 6)
    return {
        "esm": _pickle(sample("esm", 60)),  # 60: memo indices on both sides of 255
        "dnabert": _pickle(sample("dnabert", 12)),
        "shard": _pickle(sample("shard", 60)),
        "mixed": _pickle({"views": [base[:, i] for i in range(6)],
                          "nd": [torch.ones(2, 3, 4) for _ in range(5)],
                          "grad": [torch.ones(3, requires_grad=True) for _ in range(4)],
                          "names": [f"n{i}" * (i % 3 + 1) for i in range(200)],
                          "pairs": [{"label": "a", "mean_representation": [1.5, 2.5]}] * 3}),
        "protocol4": _pickle(sample("esm", 40), pickle_protocol=4),
        # records that differ (ragged_strings, ragged_tensors): ids of varying length, views
        # of one storage (the key a GET), tensors of varying shape, views keyed by id
        "ragged": _pickle({"ids": [f"{'x' * (i % 7)}id{i}" for i in range(300)],
                           "views": list(torch.zeros(300, 3)),
                           "shapes": [torch.zeros(1 + i % 4, 2 + i % 3) for i in range(70)],
                           "split": list(torch.zeros(90, 2).split([1 + i % 3 for i in
                                                                   range(45)])),
                           "by_id": dict(zip((f"p{i}" for i in range(40)),
                                             torch.ones(40, 2)))}),
    }


BASES = _bases()


def _fingerprint(item: object, ids: dict[int, int]) -> object:
    kind = type(item)
    if kind is stackitems.Tup:
        return ("tuple", item.nodes, item.depth, item.hash if type(item.hash) is int
                else repr(item.hash) if item.hash is None else "unknown")
    if kind is stackitems.Str:
        return ("str", item.start, item.size)
    if kind is stackitems.Container:  # which containers are one object matters too
        return ("container", item.kind, item.counts, item.unknown,
                ids.setdefault(id(item), len(ids)))
    if kind is stackitems.Glob:
        return ("global", item.qualname)
    if kind is stackitems.Run:
        return ("run", item.op, item.start, item.base)
    if kind is stackitems.Kind:
        return ("kind", item.name, item is stackitems.K_UNKOBJ)
    if item is stackitems.HOLE or item is stackitems.UNKNOWN:
        return "hole" if item is stackitems.HOLE else "unknown"
    return ("value", item)


def _outcome(data: bytes, accelerate: bool, monkeypatch: pytest.MonkeyPatch) -> object:
    states: list[object] = []

    def at_stop(memo: list, stack: list, stored: int) -> None:
        ids: dict[int, int] = {}
        states.append((stored, [_fingerprint(x, ids) for x in memo],
                       [_fingerprint(x, ids) for x in stack]))

    monkeypatch.setattr(prescan, "ACCELERATE", accelerate)
    monkeypatch.setattr(prescan, "ON_STOP", at_stop)
    try:
        found = prescan.scan(data)
    except Problem as exc:
        return ("problem", exc.category, exc.code, exc.message)
    except Exception as exc:  # noqa: BLE001 - compared, whatever it is
        return ("raised", type(exc).__name__, str(exc))
    return (found.builds, found.unsupported, found.unresolved, found.protocols, found.form,
            found.library, states)


def _mutants(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    memo_ops = [m.start() for m in re.finditer(rb"[qrhj]", data)]
    out = []
    for _ in range(count):
        mutant = bytearray(data)
        for _ in range(rng.randint(1, 2)):
            roll = rng.random()
            if roll < 0.25:  # a GET of an entry a later PUT (of this or the next record) stores
                gets = [at for at in memo_ops if mutant[at] in b"hj"]
                puts = [at for at in memo_ops if mutant[at] in b"qr"]
                if gets and puts:
                    at = rng.choice(gets)
                    later = [p for p in puts if at < p < at + 300] or puts
                    put = rng.choice(later)
                    index = int.from_bytes(mutant[put + 1: put + (2 if mutant[put] == 0x71
                                                                   else 5)], "little")
                    width = 1 if mutant[at] == 0x68 else 4
                    if index < 256 or width == 4:
                        mutant[at + 1: at + 1 + width] = index.to_bytes(width, "little")
            elif roll < 0.6:  # move a memo index (PUT out of sequence, GET elsewhere)
                at = rng.choice(memo_ops)
                width = 1 if mutant[at] in b"qh" else 4
                value = int.from_bytes(mutant[at + 1: at + 1 + width], "little")
                value += rng.choice([-7, -1, 1, 2, 7, 300, 70_000])
                value = min(max(value, 0), 255 if width == 1 else 2**32 - 1)
                mutant[at + 1: at + 1 + width] = value.to_bytes(width, "little")
            else:
                mutant[rng.randrange(len(mutant))] = rng.randrange(256)
        out.append(bytes(mutant))
    return out


def test_runs_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not vacuous: the templates do take the bulk of the samples' records."""
    taken: list[int] = []
    real = templates.template_run

    def counting(*args: object) -> int:
        found = real(*args)  # type: ignore[arg-type]
        taken.append(found)
        return found

    monkeypatch.setattr(templates, "template_run", counting)
    for name, floor in (("esm", 55 + 55), ("dnabert", 10), ("shard", 55)):
        taken.clear()
        prescan.scan(BASES[name])
        assert sum(taken) >= floor, (name, sum(taken))


@pytest.mark.parametrize("name", sorted(BASES))
def test_accelerated_scan_is_the_opcode_loop(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = BASES[name]
    for case in [data, *_mutants(data, random.Random(name), 150)]:
        assert _outcome(case, True, monkeypatch) == _outcome(case, False, monkeypatch)


def test_a_get_of_an_entry_the_run_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records that all GET one entry an earlier record of their own run stored (so the first
    of them sees a hole and the others a tuple): the run must not be taken as one template."""
    data = bytearray(BASES["esm"])
    records = list(templates.TENSOR_RECORD.finditer(bytes(data)))
    assert len(records) > 10 and records[5]["p2"][:1] == b"q"
    assert all(m["st"][:1] == b"h" for m in records)  # BINGET 'storage': one-byte indices
    shape_entry = records[5]["p2"][1:]  # the sixth record's size tuple
    for m in records[1:]:
        data[m.start("st") + 1: m.end("st")] = shape_entry
    data = bytes(data)
    assert _outcome(data, True, monkeypatch) == _outcome(data, False, monkeypatch)


@pytest.mark.parametrize("seed", range(6))
def test_nest_sweeps_are_the_opcode_loop(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The MARK/EMPTY_LIST and TUPLE1 sweeps (hand-made nests, cut, framed, mutated) leave
    the scan where the opcode loop leaves it."""
    rng = random.Random(seed)
    cases = []
    for _ in range(40):
        depth = rng.choice([1, 2, 5, 999, 1000, 1001, 1500])
        body = rng.choice([b"]" + b"(]" * depth + b"e" * depth,
                           b"}" + b")" + b"\x85" * depth + b"Ns",
                           b"]" + b"(]" * depth + b"(" + b"\x85" * depth + b"t" + b"e" * depth,
                           b"N" + b"\x85" * depth])
        stream = bytearray(b"\x80\x02" + body + b".")
        for _ in range(rng.randint(0, 2)):
            stream[rng.randrange(2, len(stream))] = rng.choice(b"(])\x85eaNt.0")
        if rng.random() < 0.3:  # framed (protocol 4), the frame ending anywhere
            cut = rng.randrange(2, len(stream))
            stream = (b"\x80\x04\x95" + (cut - 2).to_bytes(8, "little") + stream[2:cut]
                      + b"\x95" + (len(stream) - cut).to_bytes(8, "little") + stream[cut:])
        cases.append(bytes(stream))
    for case in cases:
        assert _outcome(case, True, monkeypatch) == _outcome(case, False, monkeypatch)
