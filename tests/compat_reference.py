"""VirNucPro's own checkpoint modules (read-only, /work/shared/reference/virnucpro-checkpoint or
$VNPS_VIRNUCPRO_REFERENCE), imported under the names VirNucPro gives them, for the compat tests
to compare signatures and behaviour with. ``reference()`` is None where they are not there."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

REFERENCE_DIR = Path(os.environ.get("VNPS_VIRNUCPRO_REFERENCE",
                                    "/work/shared/reference/virnucpro-checkpoint"))

MODULES = {
    "checkpoint_validation": "virnucpro.core.checkpoint_validation",
    "checkpoint": "virnucpro.core.checkpoint",
    "checkpoint_writer": "virnucpro.pipeline.checkpoint_writer",
    "checkpoint_manifest": "virnucpro.pipeline.checkpoint_manifest",
}

_loaded: dict[str, types.ModuleType] | None = None


def reference() -> dict[str, types.ModuleType] | None:
    """{file stem: module}; the packages ``virnucpro``, ``virnucpro.core`` and
    ``virnucpro.pipeline`` are stubbed as empty modules so the files import each other."""
    global _loaded
    if _loaded is not None:
        return _loaded
    if not all((REFERENCE_DIR / f"{stem}.py").is_file() for stem in MODULES):
        return None
    for package in ("virnucpro", "virnucpro.core", "virnucpro.pipeline"):
        if package not in sys.modules:
            module = types.ModuleType(package)
            module.__path__ = []  # a package
            sys.modules[package] = module
    loaded = {}
    for stem, name in MODULES.items():
        spec = importlib.util.spec_from_file_location(name, REFERENCE_DIR / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        loaded[stem] = module
    _loaded = loaded
    return loaded


def public_names(module: types.ModuleType) -> list[str]:
    """The module's own public names (defined in it, not imported), as VirNucPro's callers
    import them; CheckpointManager/FileProgressTracker are out of scope (stage tracking)."""
    out = []
    for name, value in vars(module).items():
        if name.startswith("_") or name in ("CheckpointManager", "FileProgressTracker", "logger"):
            continue
        if isinstance(value, types.ModuleType):
            continue
        if getattr(value, "__module__", module.__name__) != module.__name__:
            continue  # imported (Path, Dict, torch, ...)
        out.append(name)
    return sorted(out)
