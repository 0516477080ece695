"""Issue 19's bypass: a LONG_BINPUT whose argument straddles a FRAME's end, opcodes hidden after
the STOP the model reads. The model reads the pickle contiguously (a reader with peek); the old
protocol-4 loader (torch's ``_load`` over a plain BytesIO) re-read the argument from after the
frame, swallowed the STOP and ran the hidden opcodes: ``load()`` returned
``{'data': 'not a tensor', ...}`` for a file ``validate(deep=True, schema="merged")`` passed.
Two defences now close it, each tested alone: the model refuses any FRAME straddle
(``pickle.frame_straddle``), so every reader parses what it accepts the same way; and the record
loader builds what the model read, so even with the FRAME rule switched off the loader cannot run
opcodes the model did not check.
"""

from __future__ import annotations

import io
import pickle
import struct

import pytest
import torch
from hostile import with_pickle
from test_library_loader import TENSOR4, merged4, s_str

import virnucpro_store as vs
from virnucpro_store.validation.pickling import unpickler


def straddling_file() -> bytes:
    """Issue 19's bypass: the frame ends two bytes into a LONG_BINPUT's 4-byte argument. Read
    contiguously (the model: a reader with peek) the argument takes the next two bytes and a
    STOP follows; read from a plain BytesIO (torch's ``_load``) the argument is re-read from
    after the frame, swallowing the STOP, and the opcodes hidden behind it run."""
    framed = merged4(TENSOR4) + b"r\x00\x00"
    hidden = (b"0}\x94(" + s_str("ids") + b"]\x94(" + s_str("seq0") + s_str("seq1") + b"e"
              + s_str("data") + s_str("not a tensor") + s_str("version") + s_str("1.0")
              + b"u.")
    pkl = (b"\x80\x04\x95" + struct.pack("<Q", len(framed)) + framed + b"\x00\x00.\x00"
           + hidden)
    return with_pickle(pkl)


def test_the_straddling_frame_reads_two_ways():
    """The instrument: the two readers really disagree on this pickle."""
    from hostile import data_pkl

    pkl = data_pkl(straddling_file())

    class Plain(pickle.Unpickler):
        def find_class(self, module, name):
            return {"_rebuild_tensor_v2": lambda *a: "tensor", "FloatStorage": "storage",
                    "OrderedDict": dict}[name]

        def persistent_load(self, pid):
            return "storage"

    assert Plain(io.BytesIO(pkl)).load()["data"] == "not a tensor"
    # the same C unpickler over a reader with peek() reads the argument contiguously
    assert Plain(io.BufferedReader(io.BytesIO(pkl))).load()["data"] == "tensor"


def test_the_straddling_frame_is_refused_at_every_level(tmp_path):
    """Fails on the old code (validate said ok; load() returned {'data': 'not a tensor'})."""
    (tmp_path / "f.pt").write_bytes(straddling_file())
    store = vs.open_store(str(tmp_path))
    for level in ("load", "keys"):
        for deep in (False, True):
            report = store.validate("f.pt", schema="merged", level=level, deep=deep)
            assert not report.ok and report.code == "pickle.frame_straddle", report
    with pytest.raises(vs.CheckpointCorrupted) as info:
        store.load("f.pt", schema="merged")
    assert info.value.code == "pickle.frame_straddle"


def test_without_the_frame_rule_load_still_builds_what_the_model_checked(tmp_path,
                                                                        monkeypatch):
    """Defence in depth: with the FRAME rule switched off (the check wrong again), the loader
    still builds the model's own reading, never the hidden opcodes'."""
    from virnucpro_store.validation.pickling import prescan

    real_scan = prescan.scan

    def without_frame_rule(data, check_global=None):
        try:
            return real_scan(data, check_global)
        except unpickler.Problem as problem:
            if problem.code != "pickle.frame_straddle":
                raise
            return _Accepting()

    class _Accepting:  # what the pre-scan reports for a stream it found nothing wrong with
        builds = True
        unsupported = None
        unresolved = False
        protocols = ()
        form = False
        library = 4

        def torch_problem(self):
            return None

        def patched(self, data):
            return data

    monkeypatch.setattr(unpickler, "scan", without_frame_rule)
    (tmp_path / "f.pt").write_bytes(straddling_file())
    store = vs.open_store(str(tmp_path))
    report = store.validate("f.pt", schema="merged", deep=True)
    assert report.ok, report
    loaded = store.load("f.pt", schema="merged")
    assert isinstance(loaded["data"], torch.Tensor), loaded["data"]
    assert loaded["data"].shape == (2, 3328) and loaded["ids"] == ["seq0", "seq1"]
