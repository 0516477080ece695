"""CRC-32 (ZIP's polynomial, what torch's writer stores per record) at memory speed.

CPython's ``zlib.crc32`` runs at about 2 GB/s on this project's machines; zlib-ng's, with
carry-less multiplication (PCLMULQDQ on x86, PMULL on ARM), at about 10 GB/s: a deep check of a
1 GB file costs 0.1 s of CRC instead of 0.5 s, which is what lets a deep save cost little more
than a plain one. Same polynomial and same results (``tests/test_checksum.py`` compares them);
plain zlib is the fallback where zlib-ng is not installed.

>>> crc32(b"123456789") == 0xCBF43926
True
>>> crc32(b"6789", crc32(b"12345")) == crc32(b"123456789")
True
"""

from __future__ import annotations

try:
    from zlib_ng.zlib_ng import crc32
    #: which implementation this process uses
    IMPLEMENTATION = "zlib-ng"
except ImportError:  # pragma: no cover - the dependency is declared; a stripped install works
    from zlib import crc32
    IMPLEMENTATION = "zlib"

__all__ = ["IMPLEMENTATION", "crc32"]
