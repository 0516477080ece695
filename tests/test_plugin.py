"""A backend from outside this repository: a package that only declares an entry point is found
by ``open_store("toy://...")`` and passes :class:`virnucpro_store.testing.ConformanceTests`.

The package is built in ``tmp_path`` and installed with ``pip install --no-deps
--no-build-isolation --no-index --target DIR`` (offline); everything that uses it runs in a
subprocess with ``PYTHONPATH=DIR``, so this process's registry and metadata are untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import virnucpro_store

pytestmark = pytest.mark.timeout(120)

# The "Writing a backend" example of docs/backends.md (toy://NAME[/prefix], objects in a
# dict), verbatim.
TOY_BACKEND = '''\
import io
from datetime import datetime, timezone
from virnucpro_store.backends.base import Backend, ObjectInfo, Staging
from virnucpro_store.errors import AlreadyExists, CheckpointMissing
from virnucpro_store.source import BytesSource

class ToyStaging(Staging):  # bytes go to self.file; nothing is visible before publish()
    def __init__(self, backend, key): self.b, self.key, self.file = backend, key, io.BytesIO()
    def finish(self): pass
    def abort(self): pass  # nothing was stored: dropping the buffer is the whole abort
    def source(self): return BytesSource(self.file.getvalue())
    def publish(self, *, overwrite=True):  # one dict assignment: atomic
        full = self.b.prefix + self.key
        if not overwrite and full in self.b.objects:
            raise AlreadyExists(f"{self.b.url_for(self.key)}: exists", key=self.key)
        self.b.objects[full] = (self.file.getvalue(), datetime.now(timezone.utc))
        return self.b.stat(self.key)

class ToyBackend(Backend):
    scheme, concurrent_writes, spaces = "toy", 1, {}  # spaces: NAME -> {key: (bytes, time)}
    def __init__(self, location, **storage_options):
        name, _, prefix = location.partition("/")
        self.url, self.prefix = f"toy://{location}", prefix + "/" if prefix else ""
        self.objects = self.spaces.setdefault(name, {})
    def _get(self, key):
        if self.prefix + key not in self.objects:
            raise CheckpointMissing(f"{self.url_for(key)}: no such checkpoint", key=key)
        return self.objects[self.prefix + key]
    def stat(self, key):
        data, modified = self._get(key)
        return ObjectInfo(key, len(data), modified, None, self.url_for(key))
    def list(self, prefix=""):
        n, start = len(self.prefix), self.prefix + prefix
        return iter(sorted(k[n:] for k in self.objects if k.startswith(start)))
    def stage(self, key): return ToyStaging(self, key)
    def open_source(self, key): return BytesSource(self._get(key)[0])
    def delete(self, key): self._get(key); del self.objects[self.prefix + key]
    def leftovers(self, older_than): return []  # staging is never stored: nothing left over
    def remove_leftover(self, leftover): pass
'''


def pyproject(name: str, module: str, entry_points: dict[str, str]) -> str:
    """A whole pyproject.toml: one module, and entry points in the backends group."""
    lines = "".join(f'{scheme} = "{target}"\n' for scheme, target in entry_points.items())
    return f"""\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1"

[project.entry-points."virnucpro_store.backends"]
{lines}
[tool.setuptools]
py-modules = ["{module}"]
"""


# The package a backend author writes: the module above and one entry point, nothing else.
TOY_PYPROJECT = pyproject("toy-backend", "toy_backend", {"toy": "toy_backend:ToyBackend"})
# A second distribution: one entry point whose module does not import, one that claims a
# built-in scheme (which stays the built-in's).
ROGUE_PYPROJECT = pyproject("rogue-backends", "rogue_backends", {
    "broken": "rogue_backends:Nope", "memory": "toy_backend:ToyBackend"})

# What runs in the subprocess: the lookup checks first (nothing has used a scheme yet), then
# the conformance suite exactly as a backend author subclasses it.
TOY_TESTS = """\
import sys
import uuid

import pytest

import virnucpro_store as vs
from virnucpro_store.registry import known_schemes
from virnucpro_store.testing import ConformanceTests


def test_found_by_its_entry_point_and_imported_on_first_use():
    assert {"toy", "broken"} <= set(known_schemes()), known_schemes()
    vs.open_store("memory://plain").save({"a": 1}, "a.pt")
    assert "toy_backend" not in sys.modules, "entry points must be imported on first use only"
    store = vs.open_store("toy://x/run")
    store.save({"a": 2}, "k.pt")
    assert type(store.backend).__module__ == "toy_backend"
    assert list(vs.open_store("toy://x").list()) == ["run/k.pt"]
    assert vs.validate("toy://x/run/k.pt").ok


def test_a_broken_entry_point_names_its_distribution_and_the_error():
    with pytest.raises(vs.BackendUnavailable) as err:
        vs.open_store("broken://x")
    for part in ("'rogue-backends'", "rogue_backends:Nope", "ModuleNotFoundError",
                 "no_such_dependency_xyz"):
        assert part in str(err.value)


def test_an_entry_point_never_takes_a_built_in_scheme():
    assert type(vs.open_store("memory://m").backend).__module__ == \\
        "virnucpro_store.backends.memory"


class TestToy(ConformanceTests):
    @pytest.fixture
    def store_url(self):
        return f"toy://{uuid.uuid4().hex}"
"""


def _write(root: Path, files: dict[str, str]) -> Path:
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def _env(site: Path) -> dict[str, str]:
    # the package under test from wherever this process imports it, plus the installed plugins
    here = Path(virnucpro_store.__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(here)]),
               PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    return env


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """Both distributions, built and installed into one folder outside this repository."""
    root = tmp_path_factory.mktemp("plugins")
    toy = _write(root / "toy", {"pyproject.toml": TOY_PYPROJECT, "toy_backend.py": TOY_BACKEND})
    rogue = _write(root / "rogue", {"pyproject.toml": ROGUE_PYPROJECT,
                                    "rogue_backends.py": "import no_such_dependency_xyz\n"})
    site = root / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(toy), str(rogue)],
        capture_output=True, text=True, timeout=120, env=_env(root / "nothing"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(site.glob("toy_backend-0.1.dist-info/entry_points.txt"))
    return site


def test_an_outside_backend_is_found_and_passes_the_conformance_suite(plugin_site, tmp_path):
    (tmp_path / "test_toy.py").write_text(TOY_TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-W", "error::pytest.PytestAssertRewriteWarning", "test_toy.py"],
        capture_output=True, text=True, timeout=120, env=_env(plugin_site), cwd=tmp_path)
    tail = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, tail
    passed = int(tail.rsplit(" passed", 1)[0].split()[-1])
    assert passed >= 3 + 47, tail
    assert "failed" not in tail and "error" not in tail.lower(), tail
