"""The validator core's seams (validation/check.py, levels.evaluate, levels.LADDER) and the
CLI's one room for output (cli_render.py).

- one Level: ``validate=`` (save/load/submit) and ``level=`` (validate/scan/commit) parse
  through ``Level.parse`` (the same error for both);
- one schema check: ``SchemaChoice.parse``; validate's default (NONE) and scan's (DETECT) are
  two values of it, and they judge a file differently, as before;
- the evidence a save has is passed in (``Evidence``), never read off the source: a source
  that merely *carries* a ledger is not trusted, the same ledger passed explicitly is;
- one keys verdict: validate, inspect and scan agree on a file whose schema rules fail;
- a rule is one function in ``levels.LADDER`` plus one ``problem.CODES`` entry;
- cli.py prints nothing itself.
"""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest
import torch

import virnucpro_store as vs
from virnucpro_store.source import BytesSource
from virnucpro_store.testing import damage
from virnucpro_store.testing.samples import sample, to_bytes
from virnucpro_store.validation import (
    Check,
    Evidence,
    Level,
    SchemaChoice,
    evaluate,
    inspect_source,
    keys_verdict,
    levels,
    problem,
)
from virnucpro_store.validation.sentbytes import SentLedger

SRC = Path(vs.__file__).parent


def test_both_level_parameters_parse_into_one_level():
    store = vs.open_store("memory://core-levels")
    messages = set()
    for call in (lambda: store.save({"a": 1}, "x.pt", validate="deeep"),
                 lambda: store.load("x.pt", validate="deeep"),
                 lambda: store.validate("x.pt", level="deeep"),
                 lambda: store.scan("", level="deeep"),
                 lambda: Level.parse("deeep")):
        with pytest.raises(ValueError) as info:
            call()
        messages.add(str(info.value))
    assert messages == {"unknown validation level 'deeep'; choose one of size, zip, load, "
                        "keys"}
    assert Level.parse("zip") == "zip" and Level.parse_optional(None) is None
    assert [lv.value for lv in Level.KEYS.up_to()] == ["size", "zip", "load", "keys"]
    assert Level.SIZE < Level.ZIP < Level.LOAD < Level.KEYS
    report = store.validate("missing.pt", level=Level.ZIP)  # a Level is a level name too
    assert report.requested_level == "zip" and type(report.requested_level) is str


def test_the_schema_argument_is_checked_in_one_place():
    with pytest.raises(ValueError, match="unknown schema 'nope'") as direct:
        SchemaChoice.parse("nope")
    store = vs.open_store("memory://core-schema")
    for call in (lambda: store.save({"a": 1}, "x.pt", schema="nope"),
                 lambda: store.load("x.pt", schema="nope"),
                 lambda: store.validate("x.pt", schema="nope"),
                 lambda: store.validate_slice("x.pt", 0, 1, schema="nope")):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == str(direct.value)
    assert not list(store.list())  # refused before any I/O
    assert SchemaChoice.parse(None) is SchemaChoice.NONE
    assert SchemaChoice.parse(None, default=SchemaChoice.DETECT) is SchemaChoice.DETECT
    assert SchemaChoice.parse("auto") is SchemaChoice.AUTO
    assert SchemaChoice.parse("esm").schema is vs.schemas.get_schema("esm")


def _mismatched_shard() -> bytes:
    obj = sample("shard", 3)
    obj["sequence_ids"] = obj["sequence_ids"][:2]  # 3 rows, 2 ids
    return to_bytes(obj)


def test_validate_none_and_scan_detect_are_two_values_of_the_schema_choice():
    data = _mismatched_shard()
    store = vs.open_store("memory://core-defaults")
    store.save_bytes(data, "r/a.pt", validate=None)
    # validate without a schema: NONE (no schema rules); scan without one: DETECT
    assert store.validate("r/a.pt").ok
    assert evaluate(BytesSource(data), Check(schema=SchemaChoice.NONE)).report.ok
    scanned = store.scan("r")
    assert list(scanned.invalid) == ["r/a.pt"]
    detected = evaluate(BytesSource(data), Check(schema=SchemaChoice.DETECT))
    assert detected.report.code == "keys.schema" and detected.schema.name == "shard"
    # and no built-in match is fine for DETECT, incompatible for AUTO
    plain = to_bytes({"weights": torch.zeros(2)})
    assert evaluate(BytesSource(plain), Check(schema=SchemaChoice.DETECT)).report.ok
    assert evaluate(BytesSource(plain),
                    Check(schema=SchemaChoice.AUTO)).report.code == "keys.no_schema"


def test_one_keys_verdict_for_validate_inspect_and_scan():
    data = _mismatched_shard()
    outcome = evaluate(BytesSource(data), Check(schema=SchemaChoice.AUTO))
    verdict = keys_verdict(outcome.structure, SchemaChoice.DETECT)
    assert verdict.problem().code == "keys.schema" and verdict.problems
    assert outcome.report.code == "keys.schema"
    assert outcome.report.message.startswith(verdict.problems[0])
    info = inspect_source(BytesSource(data))
    assert info["schema"] == "shard" and info["schema_ok"] is False
    assert info["schema_problems"] == list(verdict.problems)
    store = vs.open_store("memory://core-verdict")
    store.save_bytes(data, "r/a.pt", validate=None)
    assert store.scan("r").invalid["r/a.pt"].message == outcome.report.message


class _RecordingBuffer(io.BytesIO):
    def __init__(self, ledger: SentLedger) -> None:
        super().__init__()
        self.ledger = ledger

    def write(self, data) -> int:  # type: ignore[override]
        self.ledger.record(data)
        return super().write(data)


class _ForeignSource:
    """A source from outside the package that happens to carry a ``sent`` attribute."""

    def __init__(self, data: bytes, sent: SentLedger) -> None:
        self._inner = BytesSource(data)
        self.size, self.etag, self.sent = len(data), None, sent

    def read(self, offset: int, length: int) -> bytes:
        return self._inner.read(offset, length)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_evidence_is_passed_in_never_fished_off_the_source():
    ledger = SentLedger()
    buf = _RecordingBuffer(ledger)
    torch.save(sample("esm", 4), buf)
    good = buf.getvalue()
    assert ledger.vouches_for(len(good))
    bad = damage.flip_payload_byte(good, "/data/0", position=5)  # same size, bad CRC
    deep = Check(level=Level.ZIP, deep=True)
    # the bytes judged on their own: the damage is found
    assert evaluate(BytesSource(bad), deep).report.code == "zip.crc_mismatch"
    # a ledger merely carried by the source is not evidence: the core never looks for it
    assert evaluate(_ForeignSource(bad, ledger), deep).report.code == "zip.crc_mismatch"
    # the same ledger handed in explicitly is what the deep CRC pass reads (as a save's
    # staged upload does): it vouches for the bytes it recorded, so nothing is read back
    vouched = evaluate(BytesSource(bad), deep.given(Evidence(sent=ledger)))
    assert vouched.report.ok and vouched.report.details["crc"] == "ok"
    # a built-in source declares its evidence; the store hands it over with Evidence.of
    source = BytesSource(good)
    source.sent = ledger
    assert Evidence.of(source).sent is ledger and Evidence.of(source).local
    assert Evidence.of(_ForeignSource(good, ledger)) == Evidence()


def test_own_save_evidence_maps_the_local_file(tmp_path):
    good = to_bytes(sample("merged", 3))
    bad = damage.flip_payload_byte(good, "/data/0", position=5)
    path = tmp_path / "m.pt"
    path.write_bytes(good)
    check = Check(level=Level.KEYS, deep=True)
    # the save's own staging file, handed in, is what the CRC pass maps and judges (here a
    # different file from the source's bytes, to show which one is read)
    mapped = evaluate(BytesSource(bad), check.given(
        Evidence(own_save=True, local_file=str(path), local=True))).report
    assert mapped.ok and mapped.details["torch_load"] == "not run (own torch.save)"
    # without the file, the source's own bytes are read: the damage is found
    read = evaluate(BytesSource(bad), check.given(Evidence(own_save=True, local=True))).report
    assert read.code == "zip.crc_mismatch"
    # a save's real path: Evidence.of the staging file's source maps that very file
    store = vs.open_store(tmp_path / "store")
    info = store.save(sample("merged", 3), "m.pt", schema="merged", deep=True)
    assert info.size > 0


def test_a_rule_is_one_function_and_one_code(monkeypatch):
    def keys_no_status(st: levels.State) -> None:
        if isinstance(st.structure, dict) and "status" not in st.structure:
            raise problem.incompatible("no 'status' key", code="keys.no_status")

    monkeypatch.setitem(problem.CODES, "keys.no_status", "the file has no status key")
    monkeypatch.setitem(levels.LADDER, Level.KEYS, (*levels.LADDER[Level.KEYS],
                                                    keys_no_status))
    data = to_bytes({"ids": ["a"], "data": torch.zeros(1, 3328)})
    report = evaluate(BytesSource(data)).report
    assert (report.ok, report.level, report.code) == (False, "load", "keys.no_status")
    assert evaluate(BytesSource(data), Check(level=Level.LOAD)).report.ok


def test_every_rule_of_the_ladder_is_documented():
    for level, rules in levels.LADDER.items():
        assert isinstance(level, Level)
        for rule in rules:
            assert rule.__doc__ or rule is levels.size_not_empty, rule


def test_cli_py_builds_no_output_itself():
    """Everything the CLI prints (text and --json rows) is built in cli_render.py."""
    tree = ast.parse((SRC / "cli.py").read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else None
            if (name, node.func.attr) in (("click", "echo"), ("json", "dumps"),
                                          ("click", "secho")) or node.func.attr == "print":
                found.append(f"line {node.lineno}: {ast.unparse(node.func)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id == "print":
            found.append(f"line {node.lineno}: print")
    assert found == []


def test_the_demo_lives_with_the_cli():
    assert (SRC / "cli_demo.py").exists()
    assert not (SRC / "testing" / "demo.py").exists()
