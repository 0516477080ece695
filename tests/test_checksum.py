"""The fast CRC-32 against the oracle every ZIP reader uses, zlib's."""

from __future__ import annotations

import mmap
import random
import zlib

from virnucpro_store.validation import checksum


def test_the_fast_implementation_is_the_one_in_use():
    # declared as a dependency: a fresh install must not silently fall back to the slow one
    assert checksum.IMPLEMENTATION == "zlib-ng"


def test_same_crc_as_zlib_for_every_kind_of_buffer_length_and_start(tmp_path):
    rng = random.Random(7)
    lengths = [0, 1, 2, 3, 7, 15, 16, 17, 31, 63, 64, 65, 255, 4095, 4096, 65537, 1 << 20]
    lengths += [rng.randrange(1, 300_000) for _ in range(40)]
    for n in lengths:
        data = rng.randbytes(n)
        start = rng.randrange(2**32)
        for buf in (data, bytearray(data), memoryview(data), memoryview(data)[1:] if n else b""):
            assert checksum.crc32(buf) == zlib.crc32(buf)
            assert checksum.crc32(buf, start) == zlib.crc32(buf, start)
    # chained over pieces, as the deep pass streams
    data = rng.randbytes(3_000_001)
    crc = 0
    for at in range(0, len(data), 123_457):
        crc = checksum.crc32(data[at:at + 123_457], crc)
    assert crc == zlib.crc32(data)
    # a read-only memory map, as the local deep pass reads its staging file
    path = tmp_path / "f"
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m, \
            memoryview(m) as view:
        assert checksum.crc32(view[17:2_000_017]) == zlib.crc32(data[17:2_000_017])
