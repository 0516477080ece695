"""The install guard `.ci/check_cpu_torch.py` (run by .ci/run after the install): it refuses a
CUDA build of torch and NVIDIA library wheels, and accepts the CPU build."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "check_cpu_torch.py"


def _module():
    spec = importlib.util.spec_from_file_location("check_cpu_torch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cpu_build_alone_passes():
    check = _module()
    assert check.findings("2.13.0+cpu", ["numpy", "torch", "zlib-ng"]) == []


def test_a_cuda_build_or_nvidia_wheels_fail():
    check = _module()
    # what PyPI's Linux wheel of torch 2.13.0 brings (issue 20's 2.7 GB)
    cuda = check.findings("2.13.0", ["torch", "nvidia-cublas", "nvidia_cudnn_cu13"])
    assert len(cuda) == 2 and "not the CPU build" in cuda[0]
    assert "nvidia-cublas" in cuda[1] and "nvidia_cudnn_cu13" in cuda[1]
    assert "not the CPU build" in check.findings("2.13.0+cu130", [])[0]
    assert check.findings(None, []) == ["torch is not installed"]


def test_the_script_exits_nonzero_on_a_finding(tmp_path):
    # a fake torch distribution, first on the path, that is a CUDA build
    info = tmp_path / "torch-2.13.0+cu130.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cu130\n")
    code = ("import sys, runpy; sys.path.insert(0, sys.argv[1]); "
            "runpy.run_path(sys.argv[2], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(SCRIPT)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "not the CPU build" in done.stderr
