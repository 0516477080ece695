"""Issue 14: a deep check in one pass at save time, and from the bytes an upload sent.

* ``save(deep=True)`` of the bytes this process's own ``torch.save`` wrote is the CRC pass and
  the model, without a second ``torch.load``; every other deep verdict (``validate``,
  ``save_bytes``, ``load``'s) still runs it.
* The CRC pass still reads what the file holds: a byte damaged on its way to the disk is caught.
* ``verify_sent`` (the deep check from an upload's record of what it sent) never vouches for
  what ``verify_crcs`` over the bytes themselves refuses: checked over the differential
  fuzzer's mutants, cut into writes as torch cuts them and at random.
* On S3 (SeaweedFS, which checks part checksums) a deep save reads a few hundred KB back, not
  the object; on a server that does not acknowledge checksums it downloads, as before.
"""

from __future__ import annotations

import io
import random
import re
import zipfile

import fuzz_oracle
import mutator
import pytest
import torch

import virnucpro_store as vs
from virnucpro_store.backends.local import LocalStaging
from virnucpro_store.source import BytesSource
from virnucpro_store.testing.samples import FORMATS, sample
from virnucpro_store.validation import levels, validate_source
from virnucpro_store.validation.problem import Problem
from virnucpro_store.validation.sentbytes import SentLedger, verify_sent
from virnucpro_store.validation.zipindex import CachedReader, read_index, verify_crcs


class _Recorder(io.RawIOBase):
    """A file that keeps every write torch.save makes, as torch made it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self.writes.append(bytes(data))
        return len(data)


def _ledger(chunks: list[bytes]) -> SentLedger:
    ledger = SentLedger()
    for chunk in chunks:
        ledger.record(chunk)
    return ledger


@pytest.fixture
def torch_load_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = levels.build  # the deep level's load: the record loader over the model

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(levels, "build", counting)
    return calls


@pytest.mark.parametrize("fmt", FORMATS)
def test_own_save_deep_skips_torch_load_only_there(tmp_path, fmt, torch_load_calls):
    store = vs.open_store(tmp_path)
    obj = sample(fmt, 6)
    store.save(obj, "a.pt", schema=fmt, deep=True)
    assert torch_load_calls == []  # own torch.save output: CRC pass + model
    assert store.validate("a.pt", schema=fmt, deep=True).details["torch_load"] == "ok"
    assert len(torch_load_calls) == 1
    store.save_bytes(store.read_bytes("a.pt"), "b.pt", deep=True)  # bytes from elsewhere
    assert len(torch_load_calls) == 2
    assert sorted(store.load("a.pt")) == sorted(obj)


def test_own_save_deep_refuses_what_torch_refuses(tmp_path, torch_load_calls):
    """What torch.load(weights_only=True) would refuse, the model refuses without it."""
    store = vs.open_store(tmp_path)
    with pytest.raises(vs.errors.UnsafeCheckpoint):
        store.save({"x": zipfile.ZipInfo("a")}, "a.pt", deep=True)
    assert torch_load_calls == [] and list(store.list()) == []


@pytest.mark.parametrize("where", ["payload", "local header", "descriptor"])
def test_local_deep_save_reads_back_what_the_disk_holds(tmp_path, monkeypatch, where):
    """A byte changed between torch's writer and the file (after torch computed its CRCs) is
    refused by a deep save -- the CRC pass reads the file, not the writer's memory -- and
    nothing is published; a save without deep publishes it (the cheap levels do not read it)."""
    finish = LocalStaging.finish

    def damaging(self: LocalStaging) -> None:
        finish(self)
        with open(self.path, "r+b") as f:
            data = f.read()
            info = next(i for i in zipfile.ZipFile(io.BytesIO(data)).infolist()
                        if i.filename.endswith("/data/0"))
            name = len(info.filename.encode())
            extra = int.from_bytes(data[info.header_offset + 28: info.header_offset + 30],
                                   "little")
            start = info.header_offset + 30 + name + extra
            at = {"payload": start + 5, "local header": info.header_offset + 8,
                  "descriptor": start + info.compress_size + 4}[where]
            f.seek(at)
            f.write(bytes([data[at] ^ 0x40]))

    monkeypatch.setattr(LocalStaging, "finish", damaging)
    store = vs.open_store(tmp_path)
    obj = sample("merged", 3)
    with pytest.raises(vs.errors.CheckpointCorrupted):
        store.save(obj, "deep.pt", deep=True)
    assert not store.exists("deep.pt")
    store.save(obj, "cheap.pt")
    assert store.validate("cheap.pt", deep=True).category == "corrupted"


def test_one_pass_deep_ok_means_torch_loads():
    """The ground the save-time deep check stands on: over the fuzzer's mutants, whenever the
    cheap levels and the CRC pass (what save(deep=True) runs on its own bytes) pass, torch.load
    (weights_only=True) loads the file. (40,000 mutants, 0 exceptions, when this was written;
    protocol 3-5 pickles, which the library's own loader reads, are judged by fuzz_oracle.)"""
    bases = mutator.base_files()
    passed = 0
    for seed in range(100_000, 101_200):
        data = mutator.mutate(seed, bases).data
        report = validate_source(BytesSource(data), level="load", deep=True, own_save=True)
        if not report.ok or report.details.get("loader") == "virnucpro_store":
            continue
        real = fuzz_oracle.torch_load(data)
        assert real.ok or real.environment, f"seed {seed}: torch refuses: {real.error}"
        passed += 1
    assert passed > 200


def _torch_cuts(data: bytes) -> list[bytes]:
    """``data`` cut where torch's writer cuts its writes: each local header, name + extra,
    record data, data descriptor, central directory (sizes as the directory claims them)."""
    index = read_index(CachedReader(BytesSource(data)))
    cuts = {0, len(data), index.cd_offset}
    for m in re.finditer(rb"PK\x07\x08", data):
        cuts.add(m.start())
    for rec in index.records:
        header = data[rec.offset:rec.offset + 30]
        if len(header) < 30:
            continue
        start = rec.offset + 30 + int.from_bytes(header[26:28], "little") + \
            int.from_bytes(header[28:30], "little")
        cuts.update(p for p in (rec.offset, rec.offset + 30, start, start + rec.compressed_size)
                    if p <= len(data))
    points = sorted(cuts)
    return [data[a:b] for a, b in zip(points, points[1:])]


def _random_cuts(data: bytes, rng: random.Random) -> list[bytes]:
    points = sorted({0, len(data), *(rng.randrange(len(data) + 1) for _ in range(8))})
    return [data[a:b] for a, b in zip(points, points[1:])]


def _crcs_ok(data: bytes) -> bool | None:
    """verify_crcs over the bytes themselves: True/False; None when no index parses."""
    source = BytesSource(data)
    try:
        index = read_index(CachedReader(source))
    except Problem:
        return None
    try:
        verify_crcs(source, index)
    except Problem:
        return False
    return True


def test_verify_sent_never_vouches_for_what_verify_crcs_refuses():
    """Over the fuzzer's mutants (ZIP and pickle damage, all base files and save options):
    whenever the ledger says "all good", reading the bytes says so too; and on the real
    torch.save files, cut as torch cuts them, it always can tell (no download needed)."""
    bases = mutator.base_files()
    for name, data in bases.items():
        index = read_index(CachedReader(BytesSource(data)))
        assert verify_sent(index, _ledger(_torch_cuts(data))), name
    rng = random.Random(14)
    vouched = refused = 0
    for seed in range(1500):
        mutant = mutator.mutate(seed, bases).data
        truth = _crcs_ok(mutant)
        if truth is None:
            continue
        index = read_index(CachedReader(BytesSource(mutant)))
        for chunks in (_torch_cuts(mutant), _random_cuts(mutant, rng)):
            if verify_sent(index, _ledger(chunks)):
                assert truth, f"seed {seed}: the ledger vouches for bytes verify_crcs refuses"
                vouched += 1
            elif not truth:
                refused += 1
    assert vouched > 300 and refused > 50, (vouched, refused)


def test_verify_sent_from_torchs_own_writes():
    """The ledger a real torch.save produces (its own write calls) vouches for its file."""
    for fmt in FORMATS:
        rec = _Recorder()
        torch.save(sample(fmt, 20), rec)
        data = b"".join(rec.writes)
        index = read_index(CachedReader(BytesSource(data)))
        assert verify_sent(index, _ledger(rec.writes)), fmt
        ledger = _ledger(rec.writes)
        ledger.parts_sent = 1  # a part not acknowledged: the ledger vouches for nothing
        assert not ledger.vouches_for(len(data)) and _ledger(rec.writes).vouches_for(len(data))


def test_s3_deep_save_reads_back_only_the_index(s3_seaweed_store_factory):
    """SeaweedFS checks each part's CRC-32: a deep save validates from what it sent."""
    store = s3_seaweed_store_factory(part_size=5 << 20)
    obj = sample("merged", 1200)  # ~16 MB: four parts
    backend = store.backend
    before = backend.bytes_downloaded
    info = store.save(obj, "a.pt", schema="merged", deep=True)
    read = backend.bytes_downloaded - before
    assert read < info.size // 20, (read, info.size)
    assert store.validate("a.pt", deep=True).ok
    small = store.save(sample("esm", 3), "b.pt", deep=True)  # one PutObject
    assert small.size > 0 and store.validate("b.pt", deep=True).ok


def test_s3_deep_save_downloads_where_checksums_are_not_acknowledged(s3_seaweed_store_factory,
                                                                     monkeypatch):
    """A server that answers a part without its checksum proves nothing: read it back."""
    from virnucpro_store.backends.s3.upload import UploadWriter

    real = UploadWriter._acknowledged

    def forgetful(self, sent, result):
        return real(self, sent, {k: v for k, v in result.items() if k != "ChecksumCRC32"})

    monkeypatch.setattr(UploadWriter, "_acknowledged", forgetful)
    store = s3_seaweed_store_factory(part_size=5 << 20)
    before = store.backend.bytes_downloaded
    info = store.save(sample("merged", 1200), "a.pt", deep=True)
    assert store.backend.bytes_downloaded - before >= info.size
