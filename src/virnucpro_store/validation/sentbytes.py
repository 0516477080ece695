"""A deep check of a staged object from the bytes its upload just sent, not a download.

While ``torch.save`` streams into an object-store staging upload, the writer records, for every
``write`` call, its offset, length and CRC-32, and keeps the bytes of the small ones (torch's
zip writer hands every local header, every record's data and every data descriptor to the file
in a call of its own). Each part goes out with its CRC-32 (``x-amz-checksum-crc32``), which the
server checks against what it received and refuses on a mismatch (``BadDigest``); a part whose
response does not carry that checksum back marks the ledger unverified. So when every part is
acknowledged with its own checksum, the staging object (a unique name nothing else writes,
completed from exactly these parts in order) *is* the bytes this ledger describes, and
:func:`verify_sent` can check every local header, gap and record CRC-32 from it -- the checks of
:func:`~virnucpro_store.validation.zipindex.verify_crcs`, through the same functions -- without
reading the object back.

It only ever says "all good": on anything it cannot vouch for (a record not written in one
call, a header it did not keep, any problem at all), it returns False and the caller runs
:func:`verify_crcs` over the object itself, so a verdict on damage is always the download's.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
from typing import Any

from .checksum import crc32
from .problem import Problem
from .zipindex import LFH_SIZE, MAX_DESCRIPTOR, ZipIndex
from .zipindex import check_gap as _check_gap
from .zipindex import parse_local_header as _parse_local_header

#: writes up to this many bytes are kept whole (headers, descriptors, control records)
KEEP_BYTES = 4096


class SentLedger:
    """What a writer sent: (offset, length, CRC-32) of every write, the small writes' bytes,
    and whether the server acknowledged every part with the checksum it was sent."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._spans: dict[int, tuple[int, int]] = {}  # offset -> (length, crc)
        self._kept: dict[int, bytes] = {}
        self.size = 0
        #: parts sent, and parts the server acknowledged with their own CRC-32
        self.parts_sent = 0
        self.parts_verified = 0

    def record(self, data: Any) -> None:
        """Note one write (call it with every write, in order)."""
        view = memoryview(data).cast("B")
        n = len(view)
        if n:
            self._starts.append(self.size)
            self._spans[self.size] = (n, crc32(view))
            if n <= KEEP_BYTES:
                self._kept[self.size] = bytes(view)
        self.size += n

    def vouches_for(self, size: int) -> bool:
        """Every byte of a ``size``-byte object was recorded and every part acknowledged."""
        return size == self.size and self.parts_sent == self.parts_verified

    def crc_of(self, offset: int, length: int) -> int | None:
        """The CRC-32 of ``length`` bytes at ``offset`` when they were one write; else None."""
        span = self._spans.get(offset)
        return span[1] if span is not None and span[0] == length else None

    def bytes_at(self, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset`` when kept writes cover them all; else None."""
        out = []
        pos, end = offset, offset + length
        while pos < end:
            i = bisect.bisect_right(self._starts, pos) - 1
            if i < 0:
                return None
            start = self._starts[i]
            chunk = self._kept.get(start)
            if chunk is None or start + len(chunk) <= pos:
                return None
            piece = chunk[pos - start: end - start]
            out.append(piece)
            pos += len(piece)
        return b"".join(out)


class MappedFile:
    """The same two questions (``bytes_at``, ``crc_of``) answered from a memory map of a local
    file: a CRC pass without copying the file through ``read``. Only for a file nothing else
    can shrink meanwhile (a save's own hidden staging file): a map of a file truncated under
    it faults (SIGBUS) instead of reading short."""

    def __init__(self, path: str, size: int) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._view = memoryview(self._map)
        self.size = size

    def bytes_at(self, offset: int, length: int) -> bytes | None:
        data = self._map[offset:offset + length]
        return data if len(data) == length else None

    def crc_of(self, offset: int, length: int) -> int | None:
        with self._view[offset:offset + length] as view:
            return crc32(view) if len(view) == length else None

    def close(self) -> None:
        self._view.release()
        self._map.close()

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_sent(index: ZipIndex, ledger: SentLedger | MappedFile) -> bool:
    """True when the ledger shows every local header, gap and CRC-32 sound, by the checks of
    ``verify_crcs``; False when it cannot tell (then verify the object itself)."""
    records = index.records
    pos = 0
    try:
        for i, rec in enumerate(records):
            limit = records[i + 1].offset if i + 1 < len(records) else index.cd_offset
            if rec.offset < pos:
                return False
            header = ledger.bytes_at(rec.offset, LFH_SIZE)
            if header is None:
                return False
            nlen, elen = struct.unpack_from("<HH", header, 26)
            rest = ledger.bytes_at(rec.offset + LFH_SIZE, nlen + elen)
            if rest is None:
                return False
            data_offset = rec.offset + _parse_local_header(header + rest, 0, rec)
            crc = 0 if rec.compressed_size == 0 else ledger.crc_of(data_offset,
                                                                    rec.compressed_size)
            at = data_offset + rec.compressed_size
            if crc is None or at > limit or (crc != rec.crc and not index.crc_less):
                return False
            gap = ledger.bytes_at(at, limit - at) if limit - at <= MAX_DESCRIPTOR else None
            if gap is None and limit - at <= MAX_DESCRIPTOR:
                return False
            _check_gap(gap, rec, at, limit)
            pos = at
    except (Problem, struct.error):
        return False
    return True
