"""Every failed validation names its defect with a stable code (``validation.problem.CODES``, or
``<level>.<category>``), the same through the report, the error and the CLI's JSON."""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile

import pytest
from helpers import run_cli

import virnucpro_store as vs
from virnucpro_store.source import BytesSource
from virnucpro_store.testing.damage import malicious_checkpoint
from virnucpro_store.testing.samples import sample, to_bytes
from virnucpro_store.validation import validate_source
from virnucpro_store.validation.problem import CODES
from virnucpro_store.validation.report import LEVELS

GENERIC = re.compile(rf"^({'|'.join(LEVELS)})\.(corrupted|incompatible|unsafe)$")

MERGED = to_bytes(sample("merged", 4))


def _rewrite(data: bytes, name_end: str, new: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            z.writestr(info.filename, new if info.filename.endswith(name_end)
                       else src.read(info.filename))
    return out.getvalue()


def _flip_payload(data: bytes) -> bytes:
    info = next(i for i in zipfile.ZipFile(io.BytesIO(data)).infolist()
                if i.filename.endswith("/data/0"))
    local_extra = struct.unpack_from("<H", data, info.header_offset + 28)[0]
    at = info.header_offset + 30 + len(info.filename.encode()) + local_extra + 10
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


CASES = {
    # name: (bytes, level, deep, schema, expected code)
    "empty": (b"", "keys", False, None, "size.empty"),
    "truncated": (MERGED[: len(MERGED) // 2], "keys", False, None, "zip.no_end_record"),
    "flipped payload": (_flip_payload(MERGED), "zip", True, None, "zip.crc_mismatch"),
    "code-running pickle": (malicious_checkpoint("echo pwned"), "load", False, None,
                            "pickle.forbidden_global"),
    "memo bomb": (_rewrite(MERGED, "/data.pkl", b"\x80\x02Nr\x00\x00\x00\x10."), "load", False,
                  None, "pickle.memo_bomb"),
    "short storage": (_rewrite(MERGED, "/data/0", b"\0" * 8), "load", False, None,
                      "tensor.storage_size"),
    "dropped key": (to_bytes({"ids": ["a"]}), "keys", False, "merged", "keys.schema"),
    "legacy format": (b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.", "zip", False, None,
                      "zip.legacy_format"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_defect_has_its_code(name):
    data, level, deep, schema, code = CASES[name]
    assert code in CODES
    report = validate_source(BytesSource(data), level=level, deep=deep, schema=schema)
    assert not report.ok and report.code == code, report
    assert report.to_dict()["code"] == code
    assert report.error().code == code


def test_a_valid_file_has_no_code():
    report = validate_source(BytesSource(MERGED), schema="merged")
    assert report.ok and report.code is None and report.to_dict()["code"] is None


def test_every_code_of_the_hostile_corpus_is_known():
    """Hundreds of damaged and hostile files: each failure's code is a named one or the
    generic form of the level that found it; never empty, never free text."""
    import hostile

    seen = set()
    for variant in hostile.build():
        if variant.heavy:
            continue
        report = validate_source(BytesSource(variant.data), schema=variant.schema or None)
        if report.ok:
            continue
        assert report.code in CODES or GENERIC.match(report.code or ""), (variant.name,
                                                                          report.code)
        seen.add(report.code)
    # the corpus exercises many of them: a code per defect, not one for all
    assert len(seen & set(CODES)) >= 12, sorted(seen)


def test_the_store_and_the_cli_give_the_same_code(tmp_path):
    store = vs.open_store(str(tmp_path))
    store.save_bytes(malicious_checkpoint("echo pwned"), "bad.pt", validate=None)
    with pytest.raises(vs.UnsafeCheckpoint) as info:
        store.load("bad.pt", validate="load")
    assert info.value.code == "pickle.forbidden_global"
    done = run_cli("validate", "--json", "--level", "load", str(tmp_path / "bad.pt"))
    assert done.returncode == 3, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["code"] == "pickle.forbidden_global"


def test_a_missing_file_and_a_storage_free_error_have_codes(tmp_path):
    store = vs.open_store(str(tmp_path))
    assert store.validate("nope.pt").code == "missing"
    assert vs.CheckpointCorrupted("x").code == "corrupted"
