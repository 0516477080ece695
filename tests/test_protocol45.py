"""Protocol 4/5 checkpoints (issue 11: VirNucPro v2 saves with ``pickle_protocol=4``), judged by
torch itself.

torch's weights-only unpickler implements no protocol 4/5 opcode, so the oracle is torch's
``torch.load(weights_only=True)`` of the same file translated to protocol 2 at the opcode level
(``p45translate``). First the translator is proved against torch (translated protocol 4/5 ==
protocol 2 save, as torch loads them); then:

(a) a broad corpus saved at protocols 4 and 5 into a folder: ``validate(deep=True)`` ok with
    the library's loader, ``load()`` == torch's load of the translated file (one structural
    comparer, ``helpers.structural_diff``), ``scan()`` ids == the ids torch reads;
(b) pickle-layer mutants (``mutator``) of protocol 4/5 files, the verdicts compared by
    ``fuzz_oracle.check`` with torch's verdict on the translated mutant as the oracle
    (mutants the translator cannot express are counted apart). CI runs ``SUBSET`` seeds;
    ``VNPS_FUZZ=full`` runs ``VNPS_FUZZ_MUTANTS`` (default 20,000).
"""

from __future__ import annotations

import io
import os
import pickle
import random
import struct
import warnings
import zipfile
from collections import Counter, OrderedDict
from functools import lru_cache
from typing import Any

import fuzz_oracle
import mutator
import numpy as np
import pytest
import torch
from helpers import structural_diff
from p45translate import (
    FrameRefused,
    Untranslatable,
    archive_pickle,
    oracle_globals,
    replace_pickle,
    to_protocol4,
    translate_archive,
    translate_pickle,
)
from test_differential import OBJECTS

import virnucpro_store as vs
from virnucpro_store.source import BytesSource
from virnucpro_store.testing.samples import FORMATS, sample
from virnucpro_store.validation.levels import validate_source
from virnucpro_store.validation.pickling.prescan import library_protocol
from virnucpro_store.validation.torch_load import numpy_safe_globals

SUBSET = 300
FULL = os.environ.get("VNPS_FUZZ") == "full"
PROTOCOLS = (4, 5)


def save(obj: Any, protocol: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, buf, pickle_protocol=protocol)
    return buf.getvalue()


def torch_loads(data: bytes) -> Any:
    """The oracle: torch.load(weights_only=True) with the numpy globals (+ ``_frombuffer``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.serialization.safe_globals(numpy_safe_globals() + list(oracle_globals())):
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _extras() -> dict[str, Any]:
    base = torch.arange(24.0).reshape(4, 6)
    shared = torch.arange(10, dtype=torch.int16)
    return {
        "np-every-dtype": {np.dtype(d).name: np.arange(6).astype(d).reshape(2, 3) for d in (
            np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
            np.float16, np.float32, np.float64, np.complex64, np.complex128, np.bool_)},
        "np-orders": {"fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
                      "zero-d": np.array(7, dtype=np.int32), "big": np.arange(70000.0),
                      "f-int": np.asfortranarray(np.arange(6, dtype=np.uint8).reshape(2, 3))},
        "np-empty": {"e": np.zeros((0, 3), np.float32)},
        "parameters": {"p": torch.nn.Parameter(torch.randn(3, 2)),
                       "frozen": torch.nn.Parameter(torch.ones(2), requires_grad=False)},
        "requires-grad": {"t": torch.ones(3, requires_grad=True), "n": torch.zeros(2)},
        "shared-and-views": {"a": shared, "b": shared[2:5], "c": shared.view(2, 5),
                             "t": base.t(), "s": base[1:, ::2], "again": shared},
        "kinds": {"bf16": torch.ones(2, 3, dtype=torch.bfloat16),
                  "c128": torch.tensor([1 + 1j, -2j], dtype=torch.complex128),
                  "bool": torch.tensor([True, False, True])},
        "containers": OrderedDict([("set", {1, 2, 3}), ("big-set", set(range(2500))),
                                   ("fs", ()), ("tuples", ((1, (2, (3, ()))), "x")),
                                   ("list", [[], [[]], {}])]),
        "strings": {"big": "x" * 70000, "wide": "\u00e9\u4e2d" * 200, "bytes": b"\x00" * 300,
                    "big-bytes": bytes(range(256)) * 300, "ba": bytearray(b"ab"),
                    "keys": {f"k{i}": i for i in range(300)}},
    }


@lru_cache(maxsize=1)
def corpus() -> dict[str, Any]:
    """test_differential's objects, every schema sample and the extras above."""
    objects = {f"diff-{k}": v for k, v in OBJECTS.items()}
    for fmt in FORMATS:
        objects[f"schema-{fmt}"] = sample(fmt, 3, seed=7)
    objects["schema-shard-numpy"] = sample("shard", 3, seed=8, numpy_embeddings=True)
    objects.update(_extras())
    return objects


def _native_order(obj: Any) -> bool:
    """numpy writes non-native byte orders differently at protocol 5 (``_frombuffer`` keeps
    the order, protocol 2's state does not), so only those files can differ from protocol 2."""
    if isinstance(obj, np.ndarray):
        return obj.dtype.isnative
    if isinstance(obj, dict):
        return all(_native_order(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_native_order(v) for v in obj)
    return True


# --------------------------------------------------------------------------- the translator


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", sorted(corpus()))
def test_translation_loads_in_torch_as_protocol_2_does(name, protocol):
    """torch judges the translator: the translated protocol 4/5 file loads to exactly what
    the protocol-2 save of the same object loads to."""
    obj = corpus()[name]
    got = torch_loads(translate_archive(save(obj, protocol)))
    try:
        want = torch_loads(save(obj, 2))
    except Exception:  # noqa: BLE001
        # protocol 2 writes an empty bytes as builtins.bytes(), which torch refuses; protocol
        # 4 writes SHORT_BINBYTES b'' (translated to _codecs.encode('', 'latin1'))
        assert name == "np-empty", name
        return
    if protocol == 5 and not _native_order(obj):
        obj = {k: v for k, v in obj.items() if _native_order(v)}
        got = {k: v for k, v in got.items() if k in obj}
        want = {k: v for k, v in want.items() if k in obj}
    assert structural_diff(got, want) is None, structural_diff(got, want)


def test_translation_keeps_protocol_2_streams():
    """A protocol-2 pickle translates to itself (nothing to do), byte for byte."""
    for name in ("diff-views", "diff-numpy", "schema-shard", "diff-sets"):
        _, pkl = archive_pickle(save(corpus()[name], 2))
        assert translate_pickle(pkl) == pkl, name


def test_translate_archive_keeps_every_other_record():
    data = save(corpus()["diff-views"], 4)
    out = translate_archive(data)
    with zipfile.ZipFile(io.BytesIO(data)) as a, zipfile.ZipFile(io.BytesIO(out)) as b:
        assert a.namelist() == b.namelist()
        for info in a.infolist():
            if not info.filename.endswith("/data.pkl"):
                assert a.read(info) == b.read(info.filename)
        assert b.read(archive_pickle(out)[0])[:2] == b"\x80\x02"


@pytest.mark.parametrize("pkl, why", [
    (b"\x80\x04N\x93.", "STACK_GLOBAL"),
    (b"\x80\x04\x8c\x0b__builtin__\x8c\x03set\x93).", "Python 2 name"),
    (b"\x80\x05\x97.", "out-of-band"),
    (b"\x80\x06N.", "protocol 6"),
    (b"\x80\x04](K\x01\x90.", "ADDITEMS outside"),
])
def test_untranslatable_forms(pkl, why):
    with pytest.raises(Untranslatable, match=why.split()[0]):
        translate_pickle(pkl)


def test_a_frame_ending_at_a_nested_frame_is_translatable():
    pkl = b"\x80\x04\x95\x09" + bytes(7) + b"\x95\x03" + bytes(7) + b"N.N."
    assert pickle.loads(pkl) is None and pickle.load(io.BytesIO(pkl)) is None
    assert torch._weights_only_unpickler.Unpickler(
        io.BytesIO(translate_pickle(pkl)), encoding="utf-8").load() is None


@pytest.mark.parametrize("frames, ok", [
    ((1,), True), ((2,), True), ((1, 1), True), ((0, 1), True), ((0, 2), False), ((3,), False),
    ((1, 2), False),
])
def test_frames_read_as_pickle_loads_reads_them(frames, ok):
    """FRAME lengths that do not tile the stream: a translation torch reads as CPython's C
    unpickler reads the original (straddling frames are fine, too long ones truncate)."""
    body = [b"N", b"."]
    pkl = b"\x80\x04" + b"".join(b"\x95" + struct.pack("<Q", n) + body[i]
                                   for i, n in enumerate(frames))
    pkl += b"".join(body[len(frames):])
    translated = translate_pickle(pkl)
    unpickler = torch._weights_only_unpickler.Unpickler
    if ok:
        assert pickle.loads(pkl) is None
        assert unpickler(io.BytesIO(translated), encoding="utf-8").load() is None
    else:
        with pytest.raises(pickle.UnpicklingError, match="truncated"):
            pickle.loads(pkl)
        with pytest.raises(EOFError):
            unpickler(io.BytesIO(translated), encoding="utf-8").load()


@pytest.mark.parametrize("pkl", [
    b"\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00J\x01\x00\x00\x00.",
    b"\x80\x04\x95\x0a\x00\x00\x00\x00\x00\x00\x00\x95\x03\x00\x00\x00\x00\x00\x00\x00N.N.",
])
def test_frames_cpython_reads_two_ways_are_untranslatable(pkl):
    """pickle.loads (bytes) and pickle.load (a file, as torch reads data.pkl) disagree."""
    outcomes = set()
    for read in (pickle.loads, lambda b: pickle.load(io.BytesIO(b))):
        try:
            outcomes.add(repr(read(pkl)))
        except Exception as exc:  # noqa: BLE001
            outcomes.add(type(exc).__name__)
    assert len(outcomes) == 2, outcomes
    with pytest.raises(Untranslatable, match="frame"):
        translate_pickle(pkl)


def test_memo_fetches_of_stack_global_strings_become_literals():
    """CPython memoizes the module string of a STACK_GLOBAL and fetches it for the next one;
    the translation must still name both globals."""
    pkl = (b"\x80\x04\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94"
           b"h\x00h\x01\x93)R\x94h\x00\x8c\x01x\x94\x86\x87.")
    want = pickle.loads(pkl)
    translated = translate_pickle(pkl)
    assert b"\x93" not in translated and b"\x94" not in translated
    got = torch._weights_only_unpickler.Unpickler(io.BytesIO(translated),
                                                  encoding="utf-8").load()
    assert got == want == (OrderedDict(), OrderedDict(), ("collections", "x"))
    assert type(got[1]) is OrderedDict and got[0] is not got[1]


# --------------------------------------------------------------------------- (a) round trip


def _ids_of(value: Any) -> list[str]:
    for field in ("ids", "proteins", "nucleotide", "sequence_ids"):
        if isinstance(value, dict) and field in value:
            return list(value[field])
    return []


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every corpus object at protocols 4 and 5, written with torch.save into a folder."""
    root = tmp_path_factory.mktemp("p45")
    keys = {}
    for name, obj in corpus().items():
        for protocol in PROTOCOLS:
            key = f"p{protocol}/{name}.pt"
            (root / f"p{protocol}").mkdir(exist_ok=True)
            (root / key).write_bytes(save(obj, protocol))
            keys[key] = (name, protocol)
    return root, keys


def test_every_protocol45_file_validates_and_loads_as_torch_reads_it(written):
    root, keys = written
    store = vs.open_store(str(root))
    failures = []
    for key in sorted(keys):
        data = (root / key).read_bytes()
        want = torch_loads(translate_archive(data))
        report = store.validate(key, deep=True)
        if not report.ok:
            failures.append(f"{key}: validate: {report.category}: {report.message}")
            continue
        if report.details.get("loader") != "virnucpro_store" or not report.notes:
            failures.append(f"{key}: loader {report.details.get('loader')!r}, notes "
                            f"{report.notes!r}")
        try:
            got = store.load(key)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{key}: load: {type(exc).__name__}: {exc}")
            continue
        diff = structural_diff(got, want)
        if diff:
            failures.append(f"{key}: load() differs from torch: {diff}")
    assert not failures, "\n".join(failures)


def test_protocol2_files_still_take_torchs_path(tmp_path):
    store = vs.open_store(str(tmp_path))
    (tmp_path / "a.pt").write_bytes(save(sample("shard", 2), 2))
    report = store.validate("a.pt", deep=True)
    assert report.ok and report.details.get("loader") == "torch"


def _unsafe_protocol4(ids: list[str]) -> bytes:
    """A shard-shaped protocol-4 file whose pickle calls a global outside the allow-list."""
    data = save(sample("shard", len(ids), seed=9), 4)
    graph = mutator.parse_pickle(archive_pickle(data)[1])
    graph["sequence_ids"] = list(ids)
    graph["embeddings"] = mutator.Call(mutator.Global("posix", "system"), ("true",))
    return replace_pickle(data, to_protocol4(mutator.emit_pickle(graph)))


def test_scan_reads_the_ids_torch_reads(tmp_path):
    """scan() of protocol 2/4/5 shard files: every file torch loads is valid and its ids are
    counted; a protocol-4 file torch refuses (a disallowed global) is invalid, ids not counted."""
    store = vs.open_store(str(tmp_path))
    want: set[str] = set()
    valid = []
    for i, fmt in enumerate([*FORMATS, "shard-numpy"]):
        obj = sample("shard", 3, seed=20 + i, numpy_embeddings=True) if fmt == "shard-numpy" \
            else sample(fmt, 3, seed=20 + i)
        for protocol in (2, 4, 5):
            key = f"run/{fmt}-{protocol}.pt"
            data = save(obj, protocol)
            (tmp_path / "run").mkdir(exist_ok=True)
            (tmp_path / key).write_bytes(data)
            want.update(_ids_of(torch_loads(translate_archive(data))))
            valid.append(key)
    bad = _unsafe_protocol4(["evil1", "evil2"])
    with pytest.raises(Exception, match="(?i)unsupported global|not an allowed"):
        torch_loads(translate_archive(bad))
    (tmp_path / "run" / "unsafe.pt").write_bytes(bad)
    report = store.scan("run/")
    assert sorted(report.valid) == sorted(valid), report.invalid
    assert set(report.invalid) == {"run/unsafe.pt"}
    assert report.invalid["run/unsafe.pt"].category == "unsafe"
    assert set(report.ids) == want


# --------------------------------------------------------------------------- (b) mutants


@lru_cache(maxsize=1)
def mutant_bases() -> dict[str, bytes]:
    """Real protocol 4 and 5 torch.save outputs: the mutator's small objects, every schema."""
    objects = dict(mutator._small_objects())
    for fmt in FORMATS:
        objects[f"schema-{fmt}"] = sample(fmt, 2, seed=1)
    objects["schema-shard-numpy"] = sample("shard", 2, seed=2, numpy_embeddings=True)
    objects["sets-and-bytes"] = {"s": {1, 2, 3}, "b": b"ab", "ba": bytearray(b"cd"),
                                 "np": np.arange(4, dtype=np.int16), "t": torch.ones(2)}
    return {f"p{p}-{k}": save(v, p) for k, v in objects.items() for p in PROTOCOLS
            if k != "diff-features"}


def _with_pickle(arc: mutator.Archive, pkl: bytes) -> bytes:
    arc = arc.copy()
    i = arc.find("data.pkl")
    assert i is not None
    arc.entries[i].set_data(pkl)
    return arc.build()


def p45_forms(rng: random.Random, graph: Any, pkl: bytes) -> tuple[bytes, str]:
    """One opcode of a protocol 4/5 stream in another form CPython reads alike (or nearly:
    bytes <-> bytearray): string and bytes widths, MEMOIZE <-> explicit puts, STACK_GLOBAL <->
    GLOBAL, an ADDITEMS batch split in two, a FRAME split in two."""
    from p45translate import _scan

    ops, _ = _scan(pkl)
    memo: set[int] = set()
    choices: list[tuple[int, bytes, str]] = []
    for k, op in enumerate(ops):
        raw = op.arg if isinstance(op.arg, bytes) else b""
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"):
            for new in (b"X" + struct.pack("<I", len(raw)) + raw,
                        b"\x8d" + struct.pack("<Q", len(raw)) + raw) + (
                    (b"\x8c" + bytes([len(raw)]) + raw,) if len(raw) < 256 else ()):
                choices.append((k, new, op.name))
        elif op.name in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8"):
            for new in (b"B" + struct.pack("<I", len(raw)) + raw,
                        b"\x8e" + struct.pack("<Q", len(raw)) + raw,
                        b"\x96" + struct.pack("<Q", len(raw)) + raw) + (
                    (b"C" + bytes([len(raw)]) + raw,) if len(raw) < 256 else ()):
                choices.append((k, new, op.name))
        elif op.name == "BYTEARRAY8":
            choices.append((k, b"\x8e" + struct.pack("<Q", len(raw)) + raw, op.name))
        elif op.name == "MEMOIZE":
            i = len(memo)
            choices.append((k, b"r" + struct.pack("<I", i), op.name))
            if i < 256:
                choices.append((k, b"q" + bytes([i]), op.name))
        elif op.name in ("BINPUT", "LONG_BINPUT") and op.arg == len(memo) and op.arg not in memo:
            choices.append((k, b"\x94", op.name))
        elif op.name == "STACK_GLOBAL" and k >= 2 and ops[k - 1].name == "MEMOIZE" and \
                ops[k - 2].name == "SHORT_BINUNICODE" and k >= 4 and \
                ops[k - 3].name == "MEMOIZE" and ops[k - 4].name == "SHORT_BINUNICODE":
            # the whole five-opcode run as one GLOBAL (its two memo slots then missing)
            module, name = ops[k - 4].arg, ops[k - 2].arg
            assert isinstance(module, bytes) and isinstance(name, bytes)
            choices.append((-k, b"c" + module + b"\n" + name + b"\n", "STACK_GLOBAL run"))
        elif op.name == "ADDITEMS" and k >= 3 and ops[k - 1].name != "MARK":
            choices.append((k, b"\x90(", op.name))  # ...items ADDITEMS ( item ADDITEMS
        elif op.name == "FRAME" and k + 2 < len(ops):
            cut = ops[k + 2].pos  # a second frame after the first opcode of this one
            first = cut - op.end
            rest = int(op.arg) - first  # type: ignore[call-overload]
            if rest > 0:
                choices.append((k, b"\x95" + struct.pack("<Q", first) + pkl[op.end:cut]
                                + b"\x95" + struct.pack("<Q", rest), "FRAME split"))
        if op.name in ("MEMOIZE", "BINPUT", "LONG_BINPUT"):
            memo.add(len(memo) if op.name == "MEMOIZE" else int(op.arg))  # type: ignore[call-overload]
    if not choices:
        raise mutator.Skip
    k, new, what = rng.choice(choices)
    if k < 0:  # a STACK_GLOBAL run: replace ops[-k-4 .. -k]
        start, end = ops[-k - 4].pos, ops[-k].end
    elif what == "ADDITEMS":  # split the batch before its last item
        start, end = ops[k - 1].pos, ops[k - 1].pos
        new = b"\x90("
    elif what == "FRAME split":
        start, end = ops[k].pos, ops[k + 2].pos
    else:
        start, end = ops[k].pos, ops[k].end
    return pkl[:start] + new + pkl[end:], f"{what} at {start} as {new[:12]!r}"


def _refit(pkl: bytes) -> bytes:
    """``pkl`` with its one leading FRAME's length fitted to what follows it (an opcode
    inserted or deleted inside a frame otherwise leaves a frame length no unpickler accepts
    alike, and such mutants only test the framing)."""
    if pkl[2:3] != b"\x95" or pkl.count(b"\x95") != 1:
        return pkl
    return pkl[:3] + struct.pack("<Q", len(pkl) - 11) + pkl[11:]


#: the "why" of a mutant refused by the FRAME rule (judged: the validator must say corrupted)
FRAME_RULE = "FRAME rule: "


def protocol45_mutant(seed: int) -> tuple[str, bytes, bytes | None, str]:
    """(description, mutant, translated mutant or None, why untranslatable): one to three
    pickle-layer mutations of a protocol 4/5 file; graph mutations are re-emitted in protocol
    4 (``to_protocol4``) with the base's protocol byte, so the mutant stays a 4/5 file."""
    rng = random.Random(seed)
    files = mutant_bases()
    names = sorted(files)
    for _ in range(20):
        base = rng.choice(names)
        arc = mutator.parse_archive(files[base])
        i = arc.find("data.pkl")
        assert i is not None
        pkl = arc.entries[i].data
        proto = pkl[1:2]
        descs = []
        try:
            for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
                if rng.random() < 0.6:
                    op: Any = rng.choice(mutator.GRAPH_OPS)
                    new, desc = op(rng, mutator.parse_pickle(pkl), pkl)
                    new = to_protocol4(new)
                    new = new[:1] + proto + new[2:]
                else:
                    op = rng.choice([*mutator.PKL_OPS, p45_forms, p45_forms])
                    new, desc = op(rng, None, pkl)
                    if op is not mutator.p_bytes and rng.random() < 0.75 and _refit(new) != new:
                        new, desc = _refit(new), desc + " (frame refit)"
                descs.append(f"{op.__name__}: {desc}")
                pkl = new
        except Exception:  # noqa: BLE001 -- Skip, or an operator that does not fit this file
            continue
        desc = f"{base}: {'; '.join(descs)}"
        mutant = _with_pickle(arc, pkl)
        if library_protocol(pkl) is None:  # no longer a protocol 3-5 pickle: torch's path,
            return desc, mutant, mutant, ""  # and torch judges the file as it is
        try:
            return desc, mutant, _with_pickle(arc, translate_pickle(pkl)), ""
        except FrameRefused as exc:
            return desc, mutant, None, f"{FRAME_RULE}{exc}"
        except Untranslatable as exc:
            return desc, mutant, None, str(exc)
    raise AssertionError(f"seed {seed}: no mutation applied")


def run_mutants(seeds: range) -> tuple[Counter[str], list[str]]:
    counts: Counter[str] = Counter()
    bad: list[str] = []
    extra = oracle_globals()
    for seed in seeds:
        desc, data, oracle, why = protocol45_mutant(seed)
        counts["mutants"] += 1
        if oracle is None and why.startswith(FRAME_RULE):
            r = fuzz_oracle.check_frame_rule(seed, desc, data)
            counts[f"frame rule: {r.verdict}"] += 1
            if r.verdict == "disagree":
                bad.append(f"[frame-rule] seed {seed}: {desc[:200]}\n    validator: "
                           f"{r.detail[:200]}")
            continue
        if oracle is None:  # judged by the pure-Python oracle (tests/pyoracle.py)
            r = fuzz_oracle.check_pure(seed, desc, data)
            counts[f"pure-Python oracle: {r.verdict}"] += 1
            counts[f"untranslatable: {why}"] += 1
            if r.verdict == "disagree":
                path = fuzz_oracle.save_reproducer(seed, data)
                bad.append(f"[{r.rule}] seed {seed}: {desc[:200]} ({path})\n    validator: "
                           f"{r.validator[:200]}\n    pure-Python oracle: {r.torch[:200]}")
            continue
        library = library_protocol(archive_pickle(data)[1]) is not None
        r = fuzz_oracle.check(seed, desc, data, oracle=oracle,
                              oracle_globals=extra if library else ())
        verdict = r.verdict
        if verdict == "ok/ok":
            diff = _values_agree(data, oracle)
            if diff:
                verdict, r.rule, r.detail = "disagree", "values-differ", diff
        counts[verdict] += 1
        if verdict == "disagree":
            path = fuzz_oracle.save_reproducer(seed, data)
            bad.append(f"[{r.rule}] seed {seed}: {desc[:200]} ({path})\n    validator: "
                       f"{r.validator[:200]}\n    torch (translated): {r.torch[:200]}\n"
                       f"    detail: {r.detail[:200]}")
    return counts, bad


def _values_agree(data: bytes, oracle: bytes) -> str | None:
    """store.load of the mutant == torch's load of its translation, values included."""
    store = fuzz_oracle._store()
    store.save_bytes(data, "p45.pt", validate=None)
    try:
        got = store.load("p45.pt")
    except Exception as exc:  # noqa: BLE001
        return f"load() raises {type(exc).__name__}: {exc}"[:300]
    return structural_diff(got, torch_loads(oracle))


def test_mutants_are_protocol45_files():
    """The instrument: mutants keep their protocol 4/5 header, and most are translatable."""
    protos: Counter[bytes] = Counter()
    translated = 0
    for seed in range(200):
        _, data, oracle, _ = protocol45_mutant(seed)
        protos[archive_pickle(data)[1][:2]] += 1
        translated += oracle is not None
    assert protos[b"\x80\x04"] + protos[b"\x80\x05"] > 150, protos
    assert translated > 150


def test_protocol45_mutants_agree_with_torch_on_the_translation():
    mutants = int(os.environ.get("VNPS_FUZZ_MUTANTS", "20000")) if FULL else SUBSET
    counts, bad = run_mutants(range(mutants))
    summary = {k: v for k, v in sorted(counts.items())}
    print(summary)
    assert counts["mutants"] == mutants
    assert not bad, f"{len(bad)} disagreements ({summary}):\n" + "\n".join(bad[:15])


# --------------------------------------------------------------------------- the instruments fail


def test_structural_diff_sees_each_difference_the_contract_names():
    t = torch.arange(6.0)
    base = {"t": t, "v": t[2:], "p": torch.nn.Parameter(torch.ones(2)), "o": OrderedDict(a=1),
            "a": np.arange(6.0).reshape(2, 3), "s": {1, 2}, "tu": (1, [2])}
    assert structural_diff(base, base) is None
    u = torch.arange(6.0)
    changed = {
        "value": {**base, "t": torch.arange(6.0) + 1, "v": (torch.arange(6.0) + 1)[2:]},
        "sharing": {**base, "v": u[2:]},
        "parameter": {**base, "p": torch.ones(2)},
        "requires_grad": {**base, "p": torch.nn.Parameter(torch.ones(2), requires_grad=False)},
        "ordered": {**base, "o": {"a": 1}},
        "order": {**base, "a": np.asfortranarray(base["a"])},
        "dtype": {**base, "a": base["a"].astype(np.float32)},
        "set": {**base, "s": {1, 3}},
        "tuple": {**base, "tu": [1, [2]]},
        "shape": {**base, "t": t.view(2, 3)},
    }
    for what, other in changed.items():
        assert structural_diff(other, base) is not None, what


def test_structural_diff_compares_bare_storages_by_value():
    """A pickle may return a storage itself (a mutant that deletes the REDUCE of
    _rebuild_tensor_v2 returns its arguments): two loads of it are equal by dtype, device,
    bytes and sharing, not by identity (campaign seed 2000680 was a values-differ
    disagreement between two equal storages)."""
    def loaded(values):
        typed = torch.tensor(values).storage()
        return [typed, typed, torch.tensor(values).untyped_storage()]

    a, b = loaded([1.0, 2.0]), loaded([1.0, 2.0])
    assert structural_diff(a, b) is None
    assert structural_diff(a, loaded([1.0, 3.0])) is not None  # bytes
    assert structural_diff(a, [torch.tensor([1, 2]).storage(), *b[1:]]) is not None  # dtype
    assert structural_diff(a, [b[0], loaded([1.0, 2.0])[0], b[2]]) is not None  # sharing


def test_the_mutant_comparison_can_fail():
    """A wrong oracle is caught: torch refusing what the library loads, and values that
    differ."""
    good = save(sample("shard", 2, seed=3), 4)
    refused = translate_archive(_unsafe_protocol4(["a", "b"]))
    r = fuzz_oracle.check(0, "good file, refusing oracle", good, oracle=refused)
    assert r.verdict == "disagree", r
    other = translate_archive(save(sample("shard", 2, seed=4), 4))
    assert _values_agree(good, other) is not None
    assert _values_agree(good, translate_archive(good)) is None


# --------------------------------------------------------------------------- issue 19: FRAME


def _framed_pickle(body: bytes, frame_len: int) -> bytes:
    return b"\x80\x04\x95" + struct.pack("<Q", frame_len) + body


#: {'ids': ['x'], 'data': 'not a tensor'} hidden behind a LONG_BINPUT whose index straddles the
#: frame's end: a reader that re-reads from after the frame sees other opcodes than one that
#: reads on (the bypass of issue 19)
_STRADDLE_BODY = (b"}\x94(\x8c\x03ids\x94]\x94\x8c\x01x\x94a\x8c\x04data\x94"
                  b"r\x06\x00\x00\x00\x8c\x0cnot a tensor\x94u.")


@pytest.mark.parametrize("cut", range(4))
def test_an_argument_straddling_a_frame_end_is_refused_at_every_level(cut):
    """The frame ends ``cut`` bytes into LONG_BINPUT's 4-byte index (0: between the opcode and
    its index): refused (corrupted,
    pickle.frame_straddle) by the cheap levels and deep alike, whatever any reader does."""
    at = _STRADDLE_BODY.index(b"r\x06")
    pkl = _framed_pickle(_STRADDLE_BODY, at + 1 + cut)
    base = io.BytesIO()
    torch.save({}, base, pickle_protocol=4)
    data = replace_pickle(base.getvalue(), pkl)
    for level, deep in (("load", False), ("keys", False), ("keys", True)):
        report = validate_source(BytesSource(data), level=level, deep=deep)
        assert not report.ok and report.category == "corrupted", (level, deep, report.message)
        assert report.code == "pickle.frame_straddle", report.message
    if cut:  # a read split by the frame's end: CPython's reference reader refuses it too
        with pytest.raises(pickle.UnpicklingError):
            pickle._Unpickler(io.BytesIO(pkl)).load()


def test_frames_on_opcode_boundaries_are_read_by_every_reader_alike():
    """The contrast: the same stream with frames that end on opcode boundaries is accepted,
    and the C unpickler (bytes and BytesIO) and pickle._Unpickler read the same value."""
    at = _STRADDLE_BODY.index(b"r\x06")
    first = _STRADDLE_BODY[:at]
    pkl = (b"\x80\x04\x95" + struct.pack("<Q", len(first)) + first + b"\x95"
           + struct.pack("<Q", len(_STRADDLE_BODY) - at) + _STRADDLE_BODY[at:])
    values = {repr(pickle.loads(pkl)), repr(pickle.load(io.BytesIO(pkl))),
              repr(pickle._Unpickler(io.BytesIO(pkl)).load())}
    assert values == {repr({"ids": ["x"], "data": "not a tensor"})}
    base = io.BytesIO()
    torch.save({}, base, pickle_protocol=4)
    data = replace_pickle(base.getvalue(), pkl)
    report = validate_source(BytesSource(data), level="load")
    assert report.ok, report.message
