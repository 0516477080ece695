"""A ZIP central-directory index built from a few range reads.

A torch checkpoint is a stored (uncompressed) ZIP archive. Everything the cheap levels need is in
its tail: the End Of Central Directory record (EOCD), optionally the ZIP64 locator and record that
torch writes for large files, and the central directory itself. :func:`read_index` gets them with
one tail read (``TAIL_BYTES``) plus, when the central directory does not lie in that tail, one
read of the central directory. Local headers are *not* read per record (on S3 that would be one
request per tensor): records are bound-checked against the offset of the next record instead.

:func:`verify_crcs` is the deep check: it streams the whole archive once, in bounded chunks,
parses every local header and checks every record's CRC-32.

Example:
    >>> import io, torch
    >>> from virnucpro_store.source import BytesSource
    >>> buf = io.BytesIO(); torch.save({"x": torch.zeros(2)}, buf)
    >>> index = read_index(CachedReader(BytesSource(buf.getvalue())))
    >>> check_torch_layout(index)
    'archive'
    >>> index.record("archive/data/0").compressed_size
    8
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from ..source import ByteSource
from .problem import Problem, corrupted, incompatible

EOCD_SIG = b"PK\x05\x06"
EOCD_SIZE = 22
MAX_COMMENT = 65535
#: the tail read: the EOCD and the longest comment it may carry
TAIL_BYTES = EOCD_SIZE + MAX_COMMENT
ZIP64_LOCATOR_SIG = b"PK\x06\x07"
ZIP64_LOCATOR_SIZE = 20
ZIP64_EOCD_SIG = b"PK\x06\x06"
ZIP64_EOCD_SIZE = 56
CDH_SIG = b"PK\x01\x02"
CDH_SIZE = 46
LFH_SIG = b"PK\x03\x04"
LFH_SIZE = 30
#: a data descriptor (flag bit 3) is at least crc + two 4-byte sizes
MIN_DESCRIPTOR = 12
#: refuse to hold a central directory larger than this in memory
MAX_CENTRAL_DIRECTORY_BYTES = 1 << 30
#: chunk size of the deep (CRC) stream; memory stays bounded by this, whatever the file size
DEEP_CHUNK_BYTES = 8 << 20

#: what ``torch.save(..., _use_new_zipfile_serialization=False)`` writes first: its magic number,
#: pickled with protocol 2
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."

_EOCD = struct.Struct("<4sHHHHIIH")
_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_CDH = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LFH = struct.Struct("<4sHHHHHIIIHH")

_TORCH_MARKERS = ("data.pkl", "version", "byteorder", ".format_version", ".storage_alignment",
                  ".data/version", ".data/serialization_id")


class CachedReader:
    """Reads a source and keeps the tail (and any other window asked for) to serve later reads.

    Reads that return fewer bytes than asked, inside the object's size, mean the object is
    shorter than it claims: that is reported as corrupted.
    """

    def __init__(self, source: ByteSource) -> None:
        self.source = source
        self.size = source.size
        self._windows: list[tuple[int, bytes]] = []

    def read(self, offset: int, length: int, *, keep: bool = False) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise corrupted(f"read of {length} bytes at offset {offset} lies outside the "
                            f"{self.size}-byte file")
        for start, data in self._windows:
            if start <= offset and offset + length <= start + len(data):
                return data[offset - start: offset - start + length]
        data = self.source.read(offset, length)
        if len(data) != length:
            raise corrupted(f"short read: {len(data)} of {length} bytes at offset {offset} "
                            f"(the object changed or is shorter than its reported size)")
        if keep:
            self._windows.append((offset, data))
        return data


@dataclass(frozen=True)
class ZipRecord:
    """One central-directory entry."""

    name: str
    offset: int  #: of the local header
    compressed_size: int
    uncompressed_size: int
    crc: int
    method: int
    flags: int
    name_len: int  #: in bytes, as stored in the central directory
    index: int  #: position in the central directory

    @property
    def min_span(self) -> int:
        """Fewest bytes the record occupies from its local header on (local extra unknown)."""
        descriptor = MIN_DESCRIPTOR if self.flags & 0x8 else 0
        return LFH_SIZE + self.name_len + self.compressed_size + descriptor


@dataclass
class ZipIndex:
    """The archive's records, sorted by offset, and where its central directory lies."""

    size: int
    records: list[ZipRecord]
    cd_offset: int
    cd_size: int
    end_offset: int  #: where the (ZIP64) end records begin
    zip64: bool
    top: str = ""
    by_name: dict[str, ZipRecord] = field(default_factory=dict)
    _next: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.by_name = {r.name: r for r in self.records}
        offsets = [r.offset for r in self.records] + [self.cd_offset]
        self._next = {r.offset: offsets[i + 1] for i, r in enumerate(self.records)}

    def record(self, name: str) -> ZipRecord | None:
        return self.by_name.get(name)

    def next_offset(self, record: ZipRecord) -> int:
        """Offset of the record that follows ``record`` (or of the central directory)."""
        return self._next[record.offset]


def _not_a_zip(head: bytes, searched: int) -> Problem:
    base = f"end of central directory not found in the last {searched} bytes"
    if head.startswith(LEGACY_TORCH_MAGIC):
        return incompatible(
            "legacy torch serialization format (pre-1.6 bare pickle stream, written with "
            "_use_new_zipfile_serialization=False): load it with a trusted torch and re-save it")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return incompatible(
            f"legacy torch serialization format: the file is a bare pickle stream (protocol "
            f"{head[1]}), not a torch ZIP checkpoint ({base})")
    if head.startswith(LFH_SIG):
        return corrupted(f"{base}: file truncated or not a ZIP (it starts with a ZIP local "
                         f"header, so most likely truncated)")
    return corrupted(f"{base}: file truncated or not a ZIP")


def _find_eocd(tail: bytes) -> int | None:
    """Position in ``tail`` of an EOCD whose comment ends exactly at the end of the file."""
    end = len(tail)
    while True:
        pos = tail.rfind(EOCD_SIG, 0, end)
        if pos < 0:
            return None
        if pos + EOCD_SIZE <= len(tail):
            comment_len = struct.unpack_from("<H", tail, pos + 20)[0]
            if pos + EOCD_SIZE + comment_len == len(tail):
                return pos
        end = pos + 3  # a signature may overlap the previous candidate's bytes


def _trailing_bytes(tail: bytes) -> tuple[int, int] | None:
    """(position, count) when the last EOCD in ``tail`` is whole but followed by more bytes than
    its comment accounts for; None when there is no such record."""
    pos = tail.rfind(EOCD_SIG)
    if pos < 0 or pos + EOCD_SIZE > len(tail):
        return None
    comment_len = struct.unpack_from("<H", tail, pos + 20)[0]
    extra = len(tail) - (pos + EOCD_SIZE + comment_len)
    return (pos, extra) if extra > 0 else None


def read_index(reader: CachedReader) -> ZipIndex:
    """Parse the end records and the central directory; raise :class:`Problem` when damaged."""
    size = reader.size
    tail_len = min(size, TAIL_BYTES)
    tail_off = size - tail_len
    tail = reader.read(tail_off, tail_len, keep=True)
    pos = _find_eocd(tail)
    if pos is None:
        trailer = _trailing_bytes(tail)
        if trailer is not None:
            # torch (miniz) and zipfile would skip such a trailer; this validator does not:
            # torch.save never writes one, so bytes after the end record mean the object is not
            # what was saved (a concatenation, a padded transfer, an in-place overwrite)
            where, extra = trailer
            raise corrupted(f"{extra} unexpected bytes after the end of central directory at "
                            f"offset {tail_off + where}: junk appended to the archive, or a "
                            f"file overwritten in place without truncation")
        head = tail[:16] if tail_off == 0 else reader.read(0, min(16, size))
        raise _not_a_zip(head, tail_len)
    eocd_abs = tail_off + pos
    (_, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _comment_len) = \
        _EOCD.unpack_from(tail, pos)
    zip64 = False
    end_offset = eocd_abs
    has_locator = (eocd_abs >= ZIP64_LOCATOR_SIZE and
                   reader.read(eocd_abs - ZIP64_LOCATOR_SIZE, 4) == ZIP64_LOCATOR_SIG)
    needs_zip64 = 0xFFFF in (n_disk, n_total) or 0xFFFFFFFF in (cd_size, cd_offset)
    if has_locator:
        zip64 = True
        _, z_disk, z_offset, z_disks = _LOCATOR.unpack(
            reader.read(eocd_abs - ZIP64_LOCATOR_SIZE, ZIP64_LOCATOR_SIZE))
        if z_disk != 0 or z_disks > 1:
            raise corrupted(f"ZIP64 end locator at offset {eocd_abs - ZIP64_LOCATOR_SIZE} names "
                            f"disk {z_disk} of {z_disks}: a damaged end record (torch files are "
                            f"single-disk)")
        if z_offset + ZIP64_EOCD_SIZE > eocd_abs - ZIP64_LOCATOR_SIZE:
            raise corrupted(f"ZIP64 end record offset {z_offset} points past its locator at "
                            f"{eocd_abs - ZIP64_LOCATOR_SIZE}: damaged end record")
        classic = (disk, cd_disk, n_disk, n_total, cd_size, cd_offset)
        (sig, rec_size, _vm, _vn, disk, cd_disk, n_disk, n_total, cd_size, cd_offset) = \
            _ZIP64_EOCD.unpack(reader.read(z_offset, ZIP64_EOCD_SIZE))
        if sig != ZIP64_EOCD_SIG:
            raise corrupted(f"ZIP64 end of central directory record not found at offset "
                            f"{z_offset} (named by the locator): damaged or truncated file")
        if z_offset + 12 + rec_size != eocd_abs - ZIP64_LOCATOR_SIZE:
            raise corrupted(f"ZIP64 end record at offset {z_offset} claims {rec_size} bytes, "
                            f"which does not end at its locator: damaged end record")
        # torch (miniz) writes the real values in the classic record too, when they fit; each
        # must be either the 0xFFFF.. sentinel or agree, so a flipped byte there is caught
        for name, old, new, sentinel in zip(
                ("disk", "central directory disk", "entries on disk", "entries",
                 "central directory size", "central directory offset"),
                classic, (disk, cd_disk, n_disk, n_total, cd_size, cd_offset),
                (0xFFFF,) * 4 + (0xFFFFFFFF,) * 2):
            if old != sentinel and old != new:
                raise corrupted(f"end of central directory at offset {eocd_abs} says {name} "
                                f"{old}, its ZIP64 record says {new}: damaged end record")
        end_offset = z_offset
    elif needs_zip64:
        raise corrupted(f"end of central directory at offset {eocd_abs} asks for ZIP64 values "
                        f"but no ZIP64 locator precedes it: damaged end record")
    if disk != 0 or cd_disk != 0 or n_disk != n_total:
        raise corrupted(f"end of central directory at offset {eocd_abs} describes a multi-disk "
                        f"archive (disk {disk}, central directory disk {cd_disk}, {n_disk} of "
                        f"{n_total} entries here): damaged end record")
    if cd_offset + cd_size != end_offset:
        how = "runs past" if cd_offset + cd_size > end_offset else "ends before"
        raise corrupted(f"central directory (offset {cd_offset}, {cd_size} bytes) {how} the end "
                        f"record at offset {end_offset}: damaged end record or spliced file")
    if cd_size < CDH_SIZE * n_total:
        raise corrupted(f"central directory of {cd_size} bytes cannot hold the {n_total} entries "
                        f"the end record announces")
    if cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise incompatible(f"central directory of {cd_size} bytes exceeds the validator's limit "
                           f"of {MAX_CENTRAL_DIRECTORY_BYTES} bytes")
    cd = reader.read(cd_offset, cd_size)
    records = _parse_central_directory(cd, n_total, cd_offset)
    _check_bounds(records, cd_offset)
    return ZipIndex(size=size, records=records, cd_offset=cd_offset, cd_size=cd_size,
                    end_offset=end_offset, zip64=zip64)


def _parse_central_directory(cd: bytes, count: int, cd_offset: int) -> list[ZipRecord]:
    records: list[ZipRecord] = []
    seen: set[str] = set()
    pos = 0
    for i in range(count):
        where = f"central directory entry {i} (offset {cd_offset + pos})"
        if pos + CDH_SIZE > len(cd):
            raise corrupted(f"{where} runs past the end of the central directory")
        (sig, _vm, _vn, flags, method, _t, _d, crc, csize, usize, nlen, elen, clen, disk_start,
         _ia, _ea, offset) = _CDH.unpack_from(cd, pos)
        if sig != CDH_SIG:
            raise corrupted(f"{where} has a bad signature {sig!r}: damaged central directory")
        end = pos + CDH_SIZE + nlen + elen + clen
        if end > len(cd):
            raise corrupted(f"{where} runs past the end of the central directory")
        raw_name = cd[pos + CDH_SIZE: pos + CDH_SIZE + nlen]
        try:
            name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        except UnicodeDecodeError:
            raise corrupted(f"{where} has an undecodable name {raw_name!r}") from None
        extra = cd[pos + CDH_SIZE + nlen: pos + CDH_SIZE + nlen + elen]
        if 0xFFFFFFFF in (usize, csize, offset) or disk_start == 0xFFFF:
            usize, csize, offset, disk_start = _zip64_extra(
                extra, usize, csize, offset, disk_start, name)
        if disk_start != 0:
            raise corrupted(f"record {name!r} claims to start on disk {disk_start}: damaged "
                            f"central directory")
        if flags & 0x1:
            raise incompatible(f"record {name!r} is encrypted; torch checkpoints never are")
        if flags & 0x60:
            # 0x20 "compressed patched data", 0x40 strong encryption: neither torch nor zipfile
            # reads such a record
            raise incompatible(f"record {name!r} has ZIP flags {flags:#06x} (patched data or "
                               f"strong encryption); torch checkpoints never do")
        # torch.save stores every record uncompressed (method 0) and torch.load memory-maps and
        # aligns them. torch.load can read a re-zipped, deflated archive, but then the sizes and
        # CRCs this validator checks by range reads no longer describe the tensor bytes, so a
        # compressed record is "incompatible" (a whole file in a layout we do not read), not
        # "corrupted".
        if method != 0:
            kind = {8: "deflate", 12: "bzip2", 14: "lzma", 93: "zstd"}.get(method, "unknown")
            raise incompatible(f"record {name!r} is compressed (method {method}, {kind}); torch "
                               f"checkpoints store records uncompressed")
        if csize != usize:
            raise corrupted(f"record {name!r} is stored uncompressed but its sizes differ "
                            f"({csize} stored, {usize} uncompressed): damaged central directory")
        if name in seen:
            raise corrupted(f"duplicate record name {name!r} in the central directory")
        seen.add(name)
        records.append(ZipRecord(name, offset, csize, usize, crc, method, flags, nlen, i))
        pos = end
    if pos != len(cd):
        raise corrupted(f"central directory has {len(cd) - pos} bytes after the {count} entries "
                        f"the end record announces: damaged end record or central directory")
    records.sort(key=lambda r: r.offset)
    return records


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int, disk: int,
                 name: str) -> tuple[int, int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4: pos + 4 + length]
        if tag == 0x0001:
            cursor = 0
            values = []
            for value, sentinel, width in ((usize, 0xFFFFFFFF, 8), (csize, 0xFFFFFFFF, 8),
                                           (offset, 0xFFFFFFFF, 8), (disk, 0xFFFF, 4)):
                if value == sentinel:
                    if cursor + width > len(body):
                        raise corrupted(f"record {name!r} has a ZIP64 extra field too short "
                                        f"for its 0xFFFFFFFF sizes")
                    value = int.from_bytes(body[cursor:cursor + width], "little")
                    cursor += width
                values.append(value)
            return values[0], values[1], values[2], values[3]
        pos += 4 + length
    raise corrupted(f"record {name!r} needs a ZIP64 extra field (a size or offset is "
                    f"0xFFFFFFFF) but has none: damaged central directory")


def _check_bounds(records: list[ZipRecord], cd_offset: int) -> None:
    for rec in records[-1:]:
        if rec.offset >= cd_offset:
            raise corrupted(f"record {rec.name!r} claims a local header at offset {rec.offset}, "
                            f"at or past the central directory (offset {cd_offset}): outside "
                            f"the archive's data (damaged central directory)")
    for rec, nxt in zip(records, records[1:] + [None]):
        limit = nxt.offset if nxt is not None else cd_offset
        if rec.offset + rec.min_span > limit:
            what = (f"the next record {nxt.name!r} at offset {nxt.offset}" if nxt is not None
                    else f"the central directory at offset {cd_offset}")
            raise corrupted(f"record {rec.name!r} (local header at offset {rec.offset}, "
                            f"{rec.compressed_size} bytes of data) overlaps {what}: "
                            f"damaged central directory or truncated data")


def check_torch_layout(index: ZipIndex) -> str:
    """The top-level folder of a torch archive; a :class:`Problem` when the layout is not torch's.

    torch writes every record under one folder (``archive/`` or the file's stem) with at least
    ``<top>/data.pkl`` and ``<top>/version`` (or ``<top>/.data/version``) or ``<top>/byteorder``.
    """
    records = sorted(index.records, key=lambda r: r.index)
    if not records:
        raise incompatible("an empty ZIP archive (no records): not a torch checkpoint")
    names = [r.name for r in records]
    looks_torch = any(n.split("/", 1)[-1] in _TORCH_MARKERS or "/data/" in n for n in names)
    first = names[0]
    if "/" not in first:
        if not looks_torch:
            raise incompatible(f"a ZIP archive but not a torch checkpoint: record {first!r} is "
                               f"not under a top-level folder and no data.pkl exists")
        raise corrupted(f"record {first!r} is not under a top-level folder: damaged central "
                        f"directory")
    top = first.split("/", 1)[0]
    prefix = top + "/"
    stray = [n for n in names if not n.startswith(prefix)]
    if stray:
        if not looks_torch:
            raise incompatible("a ZIP archive but not a torch checkpoint (no data.pkl record)")
        raise corrupted(f"records are not under one top-level folder: {prefix!r} and "
                        f"{stray[0]!r}: damaged central directory")
    missing = [m for m in ("data.pkl",) if prefix + m not in index.by_name]
    if not any(prefix + m in index.by_name for m in ("version", ".data/version", "byteorder")):
        missing.append("version")
    if missing:
        if not looks_torch:
            raise incompatible("a ZIP archive but not a torch checkpoint (no data.pkl record)")
        raise corrupted(f"torch record {prefix + missing[0]!r} is missing from the central "
                        f"directory ({len(names)} records under {prefix!r})")
    index.top = top
    return top


def read_record(reader: CachedReader, index: ZipIndex, record: ZipRecord) -> bytes:
    """The bytes of one stored record, with ONE read from its local header to the next record."""
    limit = index.next_offset(record)
    # the local extra field (torch's alignment padding) is at most 65535 bytes
    want = min(limit - record.offset,
               LFH_SIZE + record.name_len + 0xFFFF + record.compressed_size + 24)
    buf = reader.read(record.offset, want)
    start = _parse_local_header(buf, 0, record)
    end = start + record.compressed_size
    if end > len(buf) or record.offset + end > limit:
        raise corrupted(f"record {record.name!r}: its {record.compressed_size} bytes of data, "
                        f"after a {start}-byte local header at offset {record.offset}, run past "
                        f"the next record at offset {limit}")
    data = buf[start:end]
    crc = zlib.crc32(data)
    if crc != record.crc:
        raise corrupted(f"CRC-32 mismatch in record {record.name!r}: stored {record.crc:08x}, "
                        f"computed {crc:08x} over {len(data)} bytes at offset "
                        f"{record.offset + start}")
    return data


def _parse_local_header(buf: bytes, pos: int, record: ZipRecord) -> int:
    """Check the local header at ``buf[pos:]``; return the offset in ``buf`` of the data."""
    where = f"local header of record {record.name!r} at offset {record.offset}"
    if len(buf) - pos < LFH_SIZE:
        raise corrupted(f"{where} is cut short")
    (sig, _vn, flags, method, _t, _d, crc, csize, usize, nlen, elen) = _LFH.unpack_from(buf, pos)
    if sig != LFH_SIG:
        raise corrupted(f"{where} has a bad signature {sig!r}")
    name = bytes(buf[pos + LFH_SIZE: pos + LFH_SIZE + nlen])
    if name != record.name.encode("utf-8" if record.flags & 0x800 else "cp437"):
        raise corrupted(f"{where} names {name!r}, not the central directory's name")
    if method != record.method:
        raise corrupted(f"{where} says compression method {method}, central directory says "
                        f"{record.method}")
    if not flags & 0x8:
        sizes_ok = ((csize == 0xFFFFFFFF or csize == record.compressed_size) and
                    (usize == 0xFFFFFFFF or usize == record.uncompressed_size))
        if crc != record.crc or not sizes_ok:
            raise corrupted(f"{where} disagrees with the central directory (crc {crc:08x} vs "
                            f"{record.crc:08x}, size {csize} vs {record.compressed_size})")
    return pos + LFH_SIZE + nlen + elen


class _Stream:
    """Sequential reads of a source in bounded chunks."""

    def __init__(self, source: ByteSource, end: int, chunk: int) -> None:
        self.source = source
        self.end = end
        self.chunk = chunk
        self.pos = 0  # absolute offset of the next unread byte
        self.buf = b""
        self.buf_start = 0

    def _fill(self) -> memoryview:
        idx = self.pos - self.buf_start
        if idx < len(self.buf):
            return memoryview(self.buf)[idx:]
        if self.pos >= self.end:
            return memoryview(b"")
        want = min(self.chunk, self.end - self.pos)
        self.buf = self.source.read(self.pos, want)
        self.buf_start = self.pos
        if len(self.buf) != want:
            raise corrupted(f"short read: {len(self.buf)} of {want} bytes at offset {self.pos}")
        return memoryview(self.buf)

    def skip_to(self, offset: int) -> None:
        if offset < self.pos:
            raise corrupted(f"records overlap near offset {offset}")
        if offset > self.buf_start + len(self.buf):
            self.buf, self.buf_start = b"", offset
        self.pos = offset

    def take(self, n: int) -> bytes:
        parts = []
        while n > 0:
            view = self._fill()
            if not view:
                break
            part = view[:n]
            parts.append(bytes(part))
            self.pos += len(part)
            n -= len(part)
        return b"".join(parts)

    def crc(self, n: int) -> tuple[int, int]:
        """CRC-32 of the next ``n`` bytes and how many were there."""
        crc = 0
        got = 0
        while got < n:
            view = self._fill()
            if not view:
                break
            part = view[: n - got]
            crc = zlib.crc32(part, crc)
            got += len(part)
            self.pos += len(part)
        return crc, got


def verify_crcs(source: ByteSource, index: ZipIndex, *, chunk_size: int = DEEP_CHUNK_BYTES,
                max_reported: int = 5) -> int:
    """Stream the archive once; check every local header and CRC-32. Returns records checked.

    Memory stays bounded by ``chunk_size`` (plus one local header), whatever the file size.
    """
    stream = _Stream(source, index.cd_offset, chunk_size)
    bad: list[str] = []
    for rec in index.records:
        stream.skip_to(rec.offset)
        header = stream.take(LFH_SIZE)
        if len(header) < LFH_SIZE:
            raise corrupted(f"local header of record {rec.name!r} at offset {rec.offset} is cut "
                            f"short")
        nlen, elen = struct.unpack_from("<HH", header, 26)
        header += stream.take(nlen + elen)
        _parse_local_header(header, 0, rec)
        data_offset = stream.pos
        crc, got = stream.crc(rec.compressed_size)
        if got != rec.compressed_size:
            raise corrupted(f"record {rec.name!r} is short: {got} bytes stored before offset "
                            f"{index.cd_offset}, {rec.compressed_size} expected")
        if crc != rec.crc:
            bad.append(f"CRC-32 mismatch in record {rec.name!r}: stored {rec.crc:08x}, computed "
                       f"{crc:08x} over {got} bytes at offset {data_offset}")
    if bad:
        more = f" (and {len(bad) - max_reported} more records)" if len(bad) > max_reported else ""
        raise corrupted("; ".join(bad[:max_reported]) + more)
    return len(index.records)
