"""Fixtures of the reliability suite: the tally each test fills in (and that is appended to
``$VNPS_RELIABILITY_RESULTS`` as one JSON line), the zygote that forks workers, mounts.

Fast subset (default):  python -m pytest tests/reliability
Full run (README figures):
    VNPS_RELIABILITY=full VNPS_RELIABILITY_RESULTS=reliability.jsonl \\
        python -m pytest tests/reliability -m reliability
    python tests/reliability/report.py reliability.jsonl
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from rel_common import SCALE, TIMEOUT, MountRefused, Tally, append_result, tmpfs
from rel_zygote import Zygote


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here) and item.fspath.basename.startswith("test_"):
            item.add_marker(pytest.mark.reliability)
            item.add_marker(pytest.mark.timeout(TIMEOUT))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" or report.failed:
        item._reliability_outcome = report.outcome if report.when == "call" else "error"
    return report


@pytest.fixture
def tally(request) -> Iterator[Tally]:
    """The figures of this test; written out after it, whatever its outcome."""
    t = Tally(test=request.node.name)
    yield t
    outcome = getattr(request.node, "_reliability_outcome", "unknown")
    append_result(t.record(outcome))


@pytest.fixture
def zygote() -> Iterator[Zygote]:
    with Zygote() as z:
        yield z


@pytest.fixture
def scale():
    return SCALE


@pytest.fixture
def mounted_tmpfs(tmp_path):
    """``mounted_tmpfs(size)`` -> a fresh tmpfs mount point, unmounted at teardown. Skips when
    mounting is not permitted, except under CI (``CI`` set), where that fails the test."""
    import contextlib

    stack = contextlib.ExitStack()
    counter = iter(range(1000))

    def mount(size: str):
        try:
            return stack.enter_context(tmpfs(tmp_path / f"mnt{next(counter)}", size))
        except MountRefused as exc:
            if os.environ.get("CI"):
                pytest.fail(f"{exc} (CI must be able to mount a tmpfs: run as root or with "
                            "CAP_SYS_ADMIN)")
            pytest.skip(f"{exc}: needs root or CAP_SYS_ADMIN to mount a tmpfs")

    with stack:
        yield mount
