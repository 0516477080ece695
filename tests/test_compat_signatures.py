"""virnucpro_store.compat offers every public name of VirNucPro's four checkpoint modules with
the same signatures (parameter names, kinds, order, defaults), constants and enum members.

Annotations differ on purpose (paths widen to store URLs); the only extra parameter is
``atomic_save(..., *, overwrite=True)``, keyword-only with a default, so every VirNucPro call
binds exactly as before."""

from __future__ import annotations

import inspect
from enum import Enum

import pytest
from compat_reference import public_names, reference

import virnucpro_store.compat as compat

REF = reference()
pytestmark = pytest.mark.skipif(REF is None, reason="VirNucPro's reference modules not here")

#: deliberate additions: (qualified name, parameter) -> why
EXTENSIONS = {("atomic_save", "overwrite"): "create-only on request"}


def _names() -> list[tuple[str, str]]:
    return [(stem, name) for stem, module in (REF or {}).items() for name in public_names(module)]


def _shape(sig: inspect.Signature, qualname: str) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()
            if (qualname, p.name) not in EXTENSIONS]


def _check_signature(ref_obj: object, our_obj: object, qualname: str) -> None:
    ref_sig, our_sig = inspect.signature(ref_obj), inspect.signature(our_obj)
    assert _shape(our_sig, qualname) == _shape(ref_sig, qualname), qualname
    for name, param in our_sig.parameters.items():
        if (qualname, name) in EXTENSIONS:
            assert param.kind is inspect.Parameter.KEYWORD_ONLY
            assert param.default is not inspect.Parameter.empty


@pytest.mark.parametrize("stem,name", _names())
def test_every_public_name_is_there_with_its_signature(stem, name):
    ref_obj = getattr(REF[stem], name)
    assert hasattr(compat, name), f"virnucpro_store.compat lacks {name} (from {stem})"
    our_obj = getattr(compat, name)
    if inspect.isclass(ref_obj) and issubclass(ref_obj, Enum):
        assert [(m.name, m.value) for m in our_obj] == [(m.name, m.value) for m in ref_obj]
        assert [c.__name__ for c in our_obj.__mro__[1:]] == [c.__name__ for c in
                                                            ref_obj.__mro__[1:]]
        return
    if inspect.isclass(ref_obj):
        _check_signature(ref_obj.__init__, our_obj.__init__, f"{name}.__init__")
        ref_methods = {n for n, v in vars(ref_obj).items()
                       if not n.startswith("_") and callable(v)}
        for method in sorted(ref_methods):
            assert hasattr(our_obj, method), f"{name}.{method} missing"
            _check_signature(getattr(ref_obj, method), getattr(our_obj, method),
                             f"{name}.{method}")
        for attr, value in vars(ref_obj).items():  # class constants (MAX_ORPHANED_RETRIES)
            if attr.isupper():
                assert getattr(our_obj, attr) == value
        for dunder in ("__enter__", "__exit__"):
            assert hasattr(our_obj, dunder) == hasattr(ref_obj, dunder)
        return
    if callable(ref_obj):
        _check_signature(ref_obj, our_obj, name)
        return
    assert our_obj == ref_obj  # constants: CHECKPOINT_EXIT_CODE, CHECKPOINT_VERSION


def test_exceptions_keep_their_constructors_and_str():
    ref = REF["checkpoint_validation"].CheckpointError("p.pt", "corrupted", "file is 0 bytes")
    ours = compat.CheckpointError("p.pt", "corrupted", "file is 0 bytes")
    assert str(ours) == str(ref)
    assert (ours.checkpoint_path, ours.error_type, ours.message) == (
        ref.checkpoint_path, ref.error_type, ref.message)
    ref_m = REF["checkpoint_manifest"].ManifestCorruptedError("bad", manifest_path="m.json")
    ours_m = compat.ManifestCorruptedError("bad", manifest_path="m.json")
    assert (str(ours_m), ours_m.manifest_path) == (str(ref_m), ref_m.manifest_path)


def test_trigger_env_switch_like_the_reference(monkeypatch):
    monkeypatch.setenv("VIRNUCPRO_VIRAL_CHECKPOINT_MODE", "true")
    for cls in (REF["checkpoint_writer"].CheckpointTrigger, compat.CheckpointTrigger):
        default, explicit = cls(), cls(seq_threshold=7)
        assert (default.seq_threshold, default.time_threshold_sec) == (5000, 180.0)
        assert (explicit.seq_threshold, explicit.time_threshold_sec) == (7, 300.0)
    with pytest.raises(ValueError):
        compat.CheckpointTrigger(time_threshold_sec=10, emergency_override_sec=5)
