#!/usr/bin/env python3
"""Fail unless the environment holds the CPU build of torch and no NVIDIA library wheel.

What it guards: the `cpu` and `dev` extras pin torch==2.13.0 so that pip takes the CPU build
(2.13.0+cpu, from pip's find-links or the PyTorch CPU index, docs/install.md); PyPI's own
torch 2.13.0 for Linux is the CUDA build, which pulls ~2.7 GB of `nvidia-*` wheels. A change of
pins, extras or index configuration that lets pip (or uv) pick that build is caught here, by
`.ci/run` right after the install: CI machines have no GPU, so nothing else would notice (the
tests pass on either build). Exit status 1 and a line per finding when it fails.

    python .ci/check_cpu_torch.py
"""

from __future__ import annotations

import sys
from importlib import metadata


def findings(torch_version: str | None, distributions: list[str]) -> list[str]:
    """What is wrong with an environment holding ``torch_version`` (None: no torch) and the
    distributions named ``distributions``; empty when it is fine."""
    found = []
    if torch_version is None:
        found.append("torch is not installed")
    elif not torch_version.endswith("+cpu"):
        found.append(f"torch {torch_version} is not the CPU build (expected a version ending "
                     f"in '+cpu'; see docs/install.md)")
    nvidia = sorted(n for n in distributions if n.lower().replace("_", "-").startswith("nvidia-"))
    if nvidia:
        found.append(f"NVIDIA library wheels are installed: {', '.join(nvidia)}")
    return found


def main() -> int:
    try:
        version: str | None = metadata.version("torch")
    except metadata.PackageNotFoundError:
        version = None
    names = [d.metadata["Name"] or "" for d in metadata.distributions()]
    problems = findings(version, names)
    for line in problems:
        print(f"check_cpu_torch: {line}", file=sys.stderr)
    if not problems:
        print(f"check_cpu_torch: torch {version}, no nvidia-* wheels")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
