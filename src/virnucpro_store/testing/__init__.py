"""Material for testing code that uses virnucpro_store, and backends written for it.

* :class:`ConformanceTests` -- the contract every backend passes, as a pytest class. Subclass it
  in a test module and override the ``store_url`` fixture (a fresh, empty root URL of your
  backend) and, if needed, ``storage_options``::

      import pytest
      from virnucpro_store.testing import ConformanceTests

      class TestMyBackend(ConformanceTests):
          @pytest.fixture
          def store_url(self, tmp_path):
              return f"toy://{tmp_path.name}"

* :mod:`.samples` -- valid feature files of each VirNucPro format; :mod:`.damage` -- ways to
  break them; :func:`.compare.assert_same` -- deep equality of loaded checkpoints. (The tour
  behind ``virnucpro-store demo``, which uses samples and damage, is ``virnucpro_store.cli_demo``.)

pytest is needed only for :class:`ConformanceTests`, imported on first access, so the demo and
the samples work without it; ``import virnucpro_store`` never imports this package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConformanceTests"]


def __getattr__(name: str) -> Any:
    if name == "ConformanceTests":
        import sys

        import pytest

        module = "virnucpro_store.testing.conformance"
        if module not in sys.modules:
            # plain asserts in an installed package: ask pytest to rewrite them for messages
            pytest.register_assert_rewrite(module)
        from .conformance import ConformanceTests

        return ConformanceTests
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
