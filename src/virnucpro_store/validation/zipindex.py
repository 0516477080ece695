"""A ZIP central-directory index built from a few range reads.

A torch checkpoint is a stored (uncompressed) ZIP archive. Everything the cheap levels need is in
its tail: the End Of Central Directory record (EOCD), optionally the ZIP64 locator and record that
torch writes for large files, and the central directory itself. :func:`read_index` gets them with
one tail read (``TAIL_BYTES``) plus, when the central directory does not lie in that tail, one
read of the central directory. Local headers are *not* read per record (on S3 that would be one
request per tensor): records are bound-checked against the offset of the next record instead.
The load level reads the local headers of ``data.pkl`` and the control records only, so damage
confined to a storage record's local header or bytes (torch: "failed reading file data/N:
invalid header") is found by the deep stream alone, like a CRC mismatch in its data: a cheap
"ok" says the directory, the pickle, the control records and every tensor's bounds are sound,
not that every storage record can be read (``deep=True`` says that).

:func:`verify_crcs` is the deep check: it streams the whole archive once, in bounded chunks,
parses every local header and checks every record's CRC-32.

**One archive view.** The validator resolves the archive the way torch's reader (miniz behind
caffe2's ``PyTorchStreamReader``) does, or refuses it as *corrupted* where two ZIP readers could
disagree (see :data:`ONE_VIEW_RULES`).

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

import bisect
import operator
import re
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from ..source import ByteSource
from .checksum import crc32
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
#: a data descriptor (flag bit 3, optional) is at least crc + two 4-byte sizes
MIN_DESCRIPTOR = 12
#: refuse to hold a central directory larger than this in memory ("incompatible"): 256 bytes per
#: entry at MAX_RECORDS (torch writes ~100: the name, a ZIP64 extra); parsing it (names decoded
#: and case-folded once each) stays far below the 256 MB budget of a cheap validation
MAX_CENTRAL_DIRECTORY_BYTES = 32 << 20
#: refuse archives with more records than this ("incompatible": a limit of this validator, not
#: damage). torch.save writes one record per tensor storage plus at most 7 control records; a
#: checkpoint with 2**17 separately stored tensors (an ESM file of 131,072 per-protein tensors is
#: 1.3 GB) is past anything the pipeline writes (its files hold one matrix, or one tensor per
#: protein per shard), and at this count the zip level stays well inside its budget (about 0.5 s
#: CPU and 60 MB; < 2 s and < 256 MB asserted in tests/test_zip_agreement.py).
MAX_RECORDS = 1 << 17
#: torch.save writes control records of at most 40 bytes; a larger one is refused (corrupted)
#: rather than read, so the cheap levels never fetch an unbounded "version"
MAX_CONTROL_RECORD_BYTES = 4096
#: torch's supported file format versions (caffe2/serialize/versions.h, torch 2.13):
#: kMinSupportedFileFormatVersion, kMaxSupportedFileFormatVersion
MIN_FORMAT_VERSION = 1
MAX_FORMAT_VERSION = 10
#: the highest "version needed to extract" a record may state (6.3: the newest ZIP
#: specification zipfile reads; torch writes 2.0, or 4.5 for ZIP64)
MAX_ZIP_VERSION = 63
#: a data descriptor after a record's data (flag bit 3): optional signature, crc, 4- or 8-byte sizes
DESCRIPTOR_SIG = b"PK\x07\x08"

#: The rules by which the validator sees exactly the archive torch sees, or refuses the file as
#: corrupted. Where torch would load a file that a rule refuses, the rule is a documented refusal.
ONE_VIEW_RULES = (
    "end record: the last end-of-central-directory signature with 22 bytes after it (miniz's "
    "backward search) is the end record; its comment must end exactly at the end of the file; "
    "no other signature in the searched tail may parse as an end record whose comment ends at "
    "the end of the file or whose central directory ends where it starts",
    "ZIP64: when a ZIP64 locator precedes the end record its values are used (as miniz does) and "
    "every classic value must equal them or be the 0xFFFF.. sentinel; the locator must say one "
    "disk (miniz refuses any other count) and the disk numbers must be 0 (miniz also takes 1/1, "
    "which torch.save never writes)",
    "entries: a record may not need a ZIP version above 6.3 to extract (zipfile refuses it, "
    "miniz ignores it; torch writes 2.0 or 4.5), nor be compressed, encrypted, patched or have "
    "its local header masked (flag 0x2000, which miniz refuses in any record)",
    "names: record names are compared as torch looks them up (ASCII case-insensitively, as raw "
    "bytes); two names equal under that rule are refused; names holding a backslash or a NUL "
    "byte are refused (torch.save never writes them; some readers treat '\\' as '/', and torch "
    "lists names as C strings)",
    "top folder: the first central-directory record names the folder, every record must lie "
    "under it (torch 2.13 checks this case-sensitively too)",
    "layout: the first record starts at offset 0 (no prefix: torch misreads prefixed archives); "
    "the central directory ends where the end records begin; records do not overlap; the bytes "
    "between one record's data and the next record are empty or exactly one data descriptor "
    "agreeing with the central directory (flag bit 3 does not require one: torch and zipfile "
    "read a record whose descriptor is absent) -- checked for every record by the deep stream, "
    "and for data.pkl and the control records at the load level",
    "local headers: the local header of every record read (data.pkl and the control records at "
    "the cheap levels, all of them when deep) has the central directory's name and method, and "
    "its crc and sizes agree unless it defers them to a data descriptor",
)

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
_TORCH_MARKER_BYTES = frozenset(m.encode() for m in _TORCH_MARKERS)


#: kept windows above this size are dropped once their big record is read (smaller ones stay:
#: they may serve later reads, and cost little)
FORGET_ABOVE = 1 << 22


class CachedReader:
    """Reads a source and keeps the tail (and any other window asked for) to serve later reads.

    Reads that return fewer bytes than asked, inside the object's size, mean the object is
    shorter than it claims: that is reported as corrupted.
    """

    def __init__(self, source: ByteSource) -> None:
        self.source = source
        self.size = source.size
        self._windows: list[tuple[int, bytes]] = []

    def cached(self, offset: int, length: int) -> bool:
        """Whether a read of this range would be served from a kept window."""
        return any(start <= offset and offset + length <= start + len(data)
                   for start, data in self._windows)

    def read(self, offset: int, length: int, *, keep: bool = False) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise corrupted(f"read of {length} bytes at offset {offset} lies outside the "
                            f"{self.size}-byte file", code="zip.out_of_bounds")
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

    def forget(self, offset: int, length: int) -> None:
        """Drop the kept windows larger than :data:`FORGET_ABOVE` bytes that hold
        ``[offset, offset + length)``: once a big record (``data.pkl``, read in one run with
        the control records) has been copied out, keeping its window would hold it twice."""
        self._windows = [(start, data) for start, data in self._windows
                         if len(data) <= FORGET_ABOVE
                         or not start <= offset <= offset + length <= start + len(data)]


class ZipRecord(NamedTuple):
    """One central-directory entry (a tuple: the index of a big archive stays lean)."""

    name: str
    offset: int  #: of the local header
    compressed_size: int
    uncompressed_size: int
    crc: int
    method: int
    flags: int
    name_len: int  #: in bytes, as stored in the central directory
    index: int  #: position in the central directory
    raw: bytes = b""  #: the name's bytes, as stored

    @property
    def min_span(self) -> int:
        """Fewest bytes the record occupies from its local header on (local extra unknown).

        Flag bit 3 does not reserve room for a data descriptor: torch (miniz) and zipfile take
        the sizes from the central directory and load a record whose descriptor is absent, so
        the gap after the data is checked instead (none, or one matching descriptor)."""
        return LFH_SIZE + self.name_len + self.compressed_size


def lookup_key(raw: bytes) -> bytes:
    """A record name as miniz's ``mz_zip_reader_locate_file`` compares it: ASCII lower case."""
    return raw.lower()  # bytes.lower() folds A-Z only, like MZ_TOLOWER


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
    #: every record's CRC-32 is 0: written with torch's ``compute_crc32=False`` (see
    #: :data:`CRC_LESS_RULE`); CRCs are then not compared with the data
    crc_less: bool = False
    top_raw: bytes = b""
    by_key: dict[bytes, ZipRecord] = field(default_factory=dict, repr=False)
    _offsets: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.by_key:
            self.by_key = {lookup_key(r.raw): r for r in self.records}
        self._offsets = [r.offset for r in self.records]

    def record(self, name: str) -> ZipRecord | None:
        """The record torch resolves for the full ``name`` (ASCII case-insensitively)."""
        return self.by_key.get(lookup_key(self._raw_name(name)))

    def folder_key(self, folder: str) -> bytes:
        """The lookup key of the names ``<top>/<folder><rest>``: :meth:`record` resolves such a
        name to ``by_key.get(folder_key + lookup_key(rest.encode("utf-8", "surrogatepass")))``
        for any ``rest`` (the name's first "/" lies in the prefix, so the prefix's bytes are the
        name's first bytes, and bytes.lower() folds byte by byte), without formatting and
        splitting each name."""
        return lookup_key(self._raw_name(f"{self.top}/{folder}"))

    def _raw_name(self, name: str) -> bytes:
        head, sep, rest = name.partition("/")
        if sep and self.top_raw and head == self.top:
            return self.top_raw + b"/" + rest.encode("utf-8", "surrogatepass")
        return name.encode("utf-8", "surrogatepass")

    def member(self, relative: str) -> ZipRecord | None:
        """The record torch resolves for ``<top>/relative``."""
        raw = self.top_raw + b"/" + relative.encode("utf-8", "surrogatepass")
        return self.by_key.get(lookup_key(raw))

    def next_offset(self, record: ZipRecord) -> int:
        """Offset of the record that follows ``record`` (or of the central directory)."""
        i = bisect.bisect_right(self._offsets, record.offset)
        return self._offsets[i] if i < len(self._offsets) else self.cd_offset


#: the rule for a file written without CRCs
CRC_LESS_RULE = (
    "An archive is CRC-less when every central-directory record has CRC-32 0, as torch writes "
    "with torch.utils.serialization.config.save.compute_crc32 = False (torch never checks CRCs "
    "when loading). Its records' data is then not compared with a CRC: the report says "
    "details['crc'] = 'absent' and notes that the CRCs could not be checked. A zero CRC in an "
    "archive where any other record has a non-zero CRC is compared as usual, so a record whose "
    "data does not hash to 0 is corrupted.")


def _not_a_zip(head: bytes, searched: int) -> Problem:
    base = f"end of central directory not found in the last {searched} bytes"
    if head.startswith(LEGACY_TORCH_MAGIC):
        return incompatible(
            "legacy torch serialization format (pre-1.6 bare pickle stream, written with "
            "_use_new_zipfile_serialization=False): load it with a trusted torch and re-save it",
            code="zip.legacy_format")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return incompatible(
            f"legacy torch serialization format: the file is a bare pickle stream (protocol "
            f"{head[1]}), not a torch ZIP checkpoint ({base})", code="zip.legacy_format")
    if head.startswith(LFH_SIG):
        return corrupted(f"{base}: file truncated or not a ZIP (it starts with a ZIP local "
                         f"header, so most likely truncated)", code="zip.no_end_record")
    return corrupted(f"{base}: file truncated or not a ZIP", code="zip.no_end_record")


def _find_eocd(tail: bytes) -> int | None:
    """Position in ``tail`` of the end record miniz picks: the last signature with at least
    ``EOCD_SIZE`` bytes after it (``mz_zip_reader_locate_header_sig``)."""
    pos = tail.rfind(EOCD_SIG, 0, len(tail) - EOCD_SIZE + 4)
    return pos if pos >= 0 else None


def _other_end_record(tail: bytes, chosen: int, tail_off: int) -> int | None:
    """Position of another signature in ``tail`` that a reader could take for the end record:
    its comment ends at the end of the file, or its central directory ends where it begins."""
    end = len(tail)
    while True:
        pos = tail.rfind(EOCD_SIG, 0, end)
        if pos < 0:
            return None
        end = pos + 3  # a signature may overlap the previous candidate's bytes
        if pos == chosen or pos + EOCD_SIZE > len(tail):
            continue
        (_, _d, _cd, _nd, n_total, cd_size, cd_offset, comment_len) = _EOCD.unpack_from(tail, pos)
        if pos + EOCD_SIZE + comment_len == len(tail):
            return pos
        if n_total and cd_size >= CDH_SIZE * n_total and cd_offset + cd_size == tail_off + pos:
            return pos


def read_index(reader: CachedReader) -> ZipIndex:
    """Parse the end records and the central directory; raise :class:`Problem` when damaged."""
    size = reader.size
    tail_len = min(size, TAIL_BYTES)
    tail_off = size - tail_len
    tail = reader.read(tail_off, tail_len, keep=True)
    pos = _find_eocd(tail)
    if pos is None:
        head = tail[:16] if tail_off == 0 else reader.read(0, min(16, size))
        raise _not_a_zip(head, tail_len)
    comment_len = struct.unpack_from("<H", tail, pos + 20)[0]
    extra = len(tail) - (pos + EOCD_SIZE + comment_len)
    if extra > 0:
        # torch (miniz) and zipfile would skip such a trailer; this validator does not:
        # torch.save never writes one, so bytes after the end record mean the object is not
        # what was saved (a concatenation, a padded transfer, an in-place overwrite)
        raise corrupted(f"{extra} unexpected bytes after the end of central directory at "
                        f"offset {tail_off + pos}: junk appended to the archive, or a "
                        f"file overwritten in place without truncation", code="zip.hidden_data")
    if extra < 0:
        raise corrupted(f"end of central directory not found in the last {tail_len} bytes: "
                        f"the last end record signature (offset {tail_off + pos}) announces a "
                        f"{comment_len}-byte comment that runs {-extra} bytes past the end of "
                        f"the file (truncated, or a signature inside the data)",
                        code="zip.no_end_record")
    other = _other_end_record(tail, pos, tail_off)
    if other is not None:
        raise corrupted(f"two plausible end of central directory records (offsets "
                        f"{tail_off + other} and {tail_off + pos}): ZIP readers could disagree "
                        f"on which archive this is (a comment or data hiding an end record)",
                        code="zip.ambiguous_end_record")
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
        if z_disk != 0 or z_disks != 1:  # miniz: "unsupported multidisk archive" unless 1
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
    if n_total > MAX_RECORDS:
        raise incompatible(f"the archive announces {n_total} records, more than the validator's "
                           f"limit of {MAX_RECORDS} (torch.save writes one record per tensor "
                           f"storage plus a few control records)", code="zip.too_large")
    if cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise incompatible(f"central directory of {cd_size} bytes exceeds the validator's limit "
                           f"of {MAX_CENTRAL_DIRECTORY_BYTES} bytes", code="zip.too_large")
    cd = reader.read(cd_offset, cd_size)
    parsed = _parse_plain_directory(cd, n_total) if _ACCELERATE else None
    records, by_key = parsed or _parse_central_directory(cd, n_total, cd_offset)
    del cd
    _check_bounds(records, cd_offset)
    crc_less = bool(records) and not any(map(_by_crc, records))
    return ZipIndex(size=size, records=records, cd_offset=cd_offset, cd_size=cd_size,
                    end_offset=end_offset, zip64=zip64, crc_less=crc_less, by_key=by_key)


_COMPRESSION = {8: "deflate", 12: "bzip2", 14: "lzma", 93: "zstd"}

#: parse a central directory of plain records with its checks made over columns (False: the
#: record loop alone, which the tests compare the fast parse with)
_ACCELERATE = True
#: the central-directory fields the checks use: signature, version needed, flags, method, crc,
#: compressed and uncompressed size, name, extra and comment lengths, disk, offset
_CDH_USED = struct.Struct("<4s2xHHH4xIIIHHHH6xI")
assert _CDH_USED.size == CDH_SIZE


def _parse_plain_directory(cd: bytes, count: int
                           ) -> tuple[list[ZipRecord], dict[bytes, ZipRecord]] | None:
    """What :func:`_parse_central_directory` returns, for a directory whose records are all
    plain: the entries fill ``cd`` exactly, with ASCII names free of backslashes and NULs and
    unique to torch's lookup, stored, unencrypted, on disk 0, without ZIP64 values. None for any
    other directory: the record loop then parses it and names its first problem.

    The loop only makes the records; the checks the record loop makes on each are made here
    once over a column (so "all plain" means it would raise none)."""
    records: list[ZipRecord] = []
    append = records.append
    new = tuple.__new__
    unpack = _CDH_USED.unpack_from
    odd = 0  # any signature, version needed or disk number that is not a plain record's
    pos = 0
    try:
        for i in range(count):
            (sig, needed, flags, method, crc, csize, usize, nlen, elen, clen, disk,
             offset) = unpack(cd, pos)
            start = pos + CDH_SIZE
            pos = start + nlen
            raw = cd[start:pos]
            pos += elen + clen
            odd |= (sig != CDH_SIG) | (needed > MAX_ZIP_VERSION) | disk
            append(new(ZipRecord, (raw.decode("ascii"), offset, csize, usize, crc, method, flags,
                                   nlen, i, raw)))
    except (struct.error, UnicodeDecodeError):  # an entry past the end; a name not ASCII
        return None
    if odd or not records or pos != len(cd):  # each entry ends where the next begins
        return None
    names = b"".join(map(_by_raw, records))
    csizes = list(map(_by_csize, records))
    flags = set(map(_by_flags, records))
    if (any(map(_by_method, records)) or any(f & _REFUSED_FLAGS for f in flags) or
            csizes != list(map(_by_usize, records)) or max(csizes) >= 0xFFFFFFFF or
            max(map(_by_offset, records)) >= 0xFFFFFFFF or b"\\" in names or b"\0" in names):
        return None
    by_key = dict(zip(map(bytes.lower, map(_by_raw, records)), records))
    if len(by_key) != count:  # two names equal to torch's lookup
        return None
    records.sort(key=_by_offset)
    return records, by_key


_by_csize, _by_usize, _by_crc, _by_method, _by_flags, _by_raw = (
    operator.itemgetter(i) for i in (2, 3, 4, 5, 6, 9))


def _parse_central_directory(cd: bytes, count: int, cd_offset: int
                             ) -> tuple[list[ZipRecord], dict[bytes, ZipRecord]]:
    """The records sorted by offset, and the map from torch's lookup key to each record.

    One tuple per record and one dict entry: the cost is linear and small (see MAX_RECORDS).
    """
    records: list[ZipRecord] = []
    append = records.append
    by_key: dict[bytes, ZipRecord] = {}
    unpack = _CDH.unpack_from
    new = tuple.__new__
    size = len(cd)
    pos = 0
    for i in range(count):
        if pos + CDH_SIZE > size:
            raise corrupted(f"central directory entry {i} (offset {cd_offset + pos}) runs past "
                            f"the end of the central directory")
        (sig, _vm, needed, flags, method, _t, _d, crc, csize, usize, nlen, elen, clen,
         disk_start, _ia, _ea, offset) = unpack(cd, pos)
        name_end = pos + CDH_SIZE + nlen
        end = name_end + elen + clen
        if sig != CDH_SIG or end > size:
            where = f"central directory entry {i} (offset {cd_offset + pos})"
            if sig != CDH_SIG:
                raise corrupted(f"{where} has a bad signature {sig!r}: damaged central directory")
            raise corrupted(f"{where} runs past the end of the central directory")
        raw = cd[pos + CDH_SIZE: name_end]
        # ASCII is the same in both encodings, and decodes in C (cp437 is a Python codec).
        # The name is for messages only: lookups compare raw bytes, as miniz does (the names
        # below the top folder must be UTF-8 all the same: check_torch_layout)
        name = raw.decode("ascii") if raw.isascii() else raw.decode(
            "utf-8", "backslashreplace") if flags & 0x800 else raw.decode("cp437")
        if offset == 0xFFFFFFFF or usize == 0xFFFFFFFF or csize == 0xFFFFFFFF:
            # (a disk number of 0xFFFF is not looked up in the ZIP64 extra: miniz refuses it
            # as "unsupported multidisk" whatever the extra says; _refuse_entry below)
            usize, csize, offset, disk_start = _zip64_extra(
                cd[name_end: name_end + elen], usize, csize, offset, disk_start, name)
        if disk_start or flags & _REFUSED_FLAGS or method or csize != usize or \
                needed > MAX_ZIP_VERSION:
            _refuse_entry(name, disk_start, flags, method, csize, usize, needed)
        if b"\\" in raw or b"\0" in raw:
            raise corrupted(f"record name {name!r} holds a backslash or a NUL byte; torch.save "
                            f"never writes one and ZIP readers disagree on its meaning")
        rec = new(ZipRecord, (name, offset, csize, usize, crc, method, flags, nlen, i, raw))
        key = raw.lower()
        seen = by_key.get(key)
        if seen is not None:
            if seen.raw == raw:
                raise corrupted(f"duplicate record name {name!r} in the central directory",
                                code="zip.duplicate_name")
            raise corrupted(f"record names {seen.name!r} and {name!r} are the same name to "
                            f"torch, which looks names up case-insensitively: ZIP readers would "
                            f"disagree on which record is meant", code="zip.duplicate_name")
        by_key[key] = rec
        append(rec)
        pos = end
    if pos != size:
        raise corrupted(f"central directory has {size - pos} bytes after the {count} entries "
                        f"the end record announces: damaged end record or central directory")
    records.sort(key=_by_offset)
    return records, by_key


_by_offset = operator.itemgetter(1)


#: general-purpose flag bits a record may not have: 0x1 encrypted, 0x20 patched data, 0x40
#: strong encryption, 0x2000 local header masked (torch's miniz refuses each; see _refuse_entry)
_REFUSED_FLAGS = 0x2061


def _refuse_entry(name: str, disk_start: int, flags: int, method: int, csize: int,
                  usize: int, needed: int) -> None:
    if needed > MAX_ZIP_VERSION:
        # miniz ignores the field, zipfile refuses the archive: readers disagree
        raise corrupted(f"record {name!r} needs ZIP version {needed // 10}.{needed % 10} to be "
                        f"extracted (torch writes 2.0 or 4.5; readers stop at 6.3): damaged "
                        f"central directory")
    if disk_start != 0:
        raise corrupted(f"record {name!r} claims to start on disk {disk_start}: damaged "
                        f"central directory")
    if flags & 0x1:
        raise incompatible(f"record {name!r} is encrypted; torch checkpoints never are",
                           code="zip.unsupported_record")
    if flags & _REFUSED_FLAGS:  # the rest of them (0x1 is refused above)
        # 0x20 "compressed patched data", 0x40 strong encryption: neither torch nor zipfile
        # reads such a record; 0x2000 "local header masked" (an encrypted central directory):
        # miniz refuses the whole archive when any record has it
        raise incompatible(f"record {name!r} has ZIP flags {flags:#06x} (patched data, "
                           f"strong encryption or a masked local header); torch checkpoints "
                           f"never do", code="zip.unsupported_record")
    # torch.save stores every record uncompressed (method 0) and torch.load memory-maps and
    # aligns them. torch.load can read a re-zipped, deflated archive, but then the sizes and
    # CRCs this validator checks by range reads no longer describe the tensor bytes, so a
    # compressed record is "incompatible" (a whole file in a layout we do not read), not
    # "corrupted".
    if method != 0:
        kind = _COMPRESSION.get(method, "unknown")
        raise incompatible(f"record {name!r} is compressed (method {method}, {kind}); torch "
                           f"checkpoints store records uncompressed", code="zip.unsupported_record")
    if csize != usize:
        raise corrupted(f"record {name!r} is stored uncompressed but its sizes differ "
                        f"({csize} stored, {usize} uncompressed): damaged central directory")


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int, disk: int,
                 name: str) -> tuple[int, int, int, int]:
    # as miniz walks the extra data: every field needs its 4-byte header and its whole body
    # within the extra data ("invalid header or corrupted" otherwise), up to the ZIP64 one
    pos = 0
    while pos < len(extra):
        if pos + 4 > len(extra):
            raise corrupted(f"record {name!r} has an extra field header cut short at byte "
                            f"{pos} of its {len(extra)}-byte extra data: damaged central "
                            f"directory (miniz: invalid header)")
        tag, length = struct.unpack_from("<HH", extra, pos)
        if pos + 4 + length > len(extra):
            raise corrupted(f"record {name!r} has an extra field of {length} bytes running "
                            f"past its extra data: damaged central directory (miniz: invalid "
                            f"header)")
        body = extra[pos + 4: pos + 4 + length]
        if tag == 0x0001:
            cursor = 0
            values = []
            for value, sentinel, width in ((usize, 0xFFFFFFFF, 8), (csize, 0xFFFFFFFF, 8),
                                           (offset, 0xFFFFFFFF, 8)):
                if value == sentinel:
                    if cursor + width > len(body):
                        raise corrupted(f"record {name!r} has a ZIP64 extra field too short "
                                        f"for its 0xFFFFFFFF sizes")
                    value = int.from_bytes(body[cursor:cursor + width], "little")
                    cursor += width
                values.append(value)
            return values[0], values[1], values[2], disk
        pos += 4 + length
    raise corrupted(f"record {name!r} needs a ZIP64 extra field (a size or offset is "
                    f"0xFFFFFFFF) but has none: damaged central directory")


def _check_bounds(records: list[ZipRecord], cd_offset: int) -> None:
    limits = [r.offset for r in records[1:]]
    limits.append(cd_offset)
    for rec, limit in zip(records, limits):
        if rec.offset + LFH_SIZE + rec.name_len + rec.compressed_size > limit:
            _overlap(records, cd_offset)
    for rec in records[-1:]:
        if rec.offset >= cd_offset:
            raise corrupted(f"record {rec.name!r} claims a local header at offset {rec.offset}, "
                            f"at or past the central directory (offset {cd_offset}): outside "
                            f"the archive's data (damaged central directory)")
    if records and records[0].offset != 0:
        first = records[0]
        raise corrupted(f"{first.offset} bytes before the first record {first.name!r} that the "
                        f"central directory does not account for (torch.save writes its first "
                        f"record at offset 0; readers disagree on prefixed archives)",
                        code="zip.hidden_data")


def _overlap(records: list[ZipRecord], cd_offset: int) -> None:
    """Raise for the first record that overlaps its successor (after the fast check found one)."""
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

    torch takes the folder from the first central-directory record and requires every record
    under it, with at least ``<top>/data.pkl`` and ``<top>/version`` (or ``<top>/.data/version``).
    """
    if not index.records:
        raise incompatible("an empty ZIP archive (no records): not a torch checkpoint",
                           code="zip.not_torch")
    first = min(index.records, key=_by_index)

    def looks_torch() -> bool:
        return any(r.raw.split(b"/", 1)[-1] in _TORCH_MARKER_BYTES or b"/data/" in r.raw
                   for r in index.records)

    if b"/" not in first.raw:
        if not looks_torch():
            raise incompatible(f"a ZIP archive but not a torch checkpoint: record {first.name!r} "
                               f"is not under a top-level folder and no data.pkl exists",
                               code="zip.not_torch")
        raise corrupted(f"record {first.name!r} is not under a top-level folder: damaged central "
                        f"directory")
    top_raw = first.raw.split(b"/", 1)[0]
    prefix = top_raw + b"/"
    stray = next((r for r in index.records if not r.raw.startswith(prefix)), None)
    top = first.name.split("/", 1)[0]
    if stray is not None:
        if not looks_torch():
            raise incompatible("a ZIP archive but not a torch checkpoint (no data.pkl record)",
                               code="zip.not_torch")
        raise corrupted(f"records are not under one top-level folder: {top + '/'!r} and "
                        f"{stray.name!r}: damaged central directory")
    index.top, index.top_raw = top, top_raw
    # torch.load lists the records' names below the top folder as Python strs
    # (get_all_records, looking for TorchScript's constants.pkl): one that is not UTF-8 fails
    # with UnicodeDecodeError
    if not b"".join(r.raw[len(prefix):] for r in index.records).isascii():
        for r in index.records:
            try:
                r.raw[len(prefix):].decode("utf-8")
            except UnicodeDecodeError:
                raise corrupted(f"record {r.name!r}: its name below the top folder is not "
                                f"UTF-8; torch.load fails on it (UnicodeDecodeError)") from None
    if any(r.raw == prefix + b"constants.pkl" for r in index.records):
        # torch.load: "constants.pkl" among the records makes it a TorchScript archive, which
        # it refuses under weights_only
        raise incompatible(f"record {top + '/constants.pkl'!r}: torch treats the file as a "
                           f"TorchScript archive and refuses it under weights_only",
                           code="zip.not_torch")
    missing = [m for m in ("data.pkl",) if index.member(m) is None]
    if index.member("version") is None and index.member(".data/version") is None:
        missing.append("version")
    if missing:
        index.top, index.top_raw = "", b""
        if not looks_torch():
            raise incompatible("a ZIP archive but not a torch checkpoint (no data.pkl record)",
                               code="zip.not_torch")
        raise corrupted(f"torch record {top + '/' + missing[0]!r} is missing from the central "
                        f"directory ({len(index.records)} records under {top + '/'!r})",
                        code="zip.missing_record")
    return top


_by_index = operator.itemgetter(8)


#: the longest data descriptor: signature, crc, two 8-byte sizes
MAX_DESCRIPTOR = 24


def check_head(reader: CachedReader, index: ZipIndex) -> None:
    """torch.load reads the file as a ZIP only when it starts with a local header signature
    (``PK\\3\\4``; anything else is its legacy format): the record at offset 0 must have one.
    Read only where that record's local header is not read anyway (data.pkl is first in every
    file torch.save writes)."""
    first = index.records[0] if index.records else None
    if first is None or first.offset != 0 or first.raw == index.top_raw + b"/data.pkl":
        return
    head = reader.read(0, 4)
    if head != LFH_SIG:
        raise corrupted(f"the file starts with {head!r}, not a ZIP local header (PK\\3\\4): "
                        f"torch.load would not read it as a ZIP archive")


def read_record(reader: CachedReader, index: ZipIndex, record: ZipRecord) -> bytes:
    """The bytes of one stored record, with ONE read from its local header to the next record.

    The local header must agree with the central directory, the bytes up to the next record
    must be empty or one data descriptor, and the CRC-32 must match (unless the archive is
    CRC-less, see :data:`CRC_LESS_RULE`).
    """
    limit = index.next_offset(record)
    span = limit - record.offset
    # the local extra field (torch's alignment padding) is at most 65535 bytes
    want = min(span, LFH_SIZE + record.name_len + 0xFFFF + record.compressed_size + MAX_DESCRIPTOR)
    buf = reader.read(record.offset, want)
    start = parse_local_header(buf, 0, record)
    end = start + record.compressed_size
    if end > len(buf) or record.offset + end > limit:
        raise corrupted(f"record {record.name!r}: its {record.compressed_size} bytes of data, "
                        f"after a {start}-byte local header at offset {record.offset}, run past "
                        f"the next record at offset {limit}")
    data = buf[start:end]
    if not index.crc_less:
        crc = crc32(data)
        if crc != record.crc:
            raise corrupted(f"CRC-32 mismatch in record {record.name!r}: stored "
                            f"{record.crc:08x}, computed {crc:08x} over {len(data)} bytes at "
                            f"offset {record.offset + start}", code="zip.crc_mismatch")
    check_gap(buf[end:] if want == span else None, record, record.offset + end, limit)
    return data


def _is_descriptor(gap: bytes, record: ZipRecord) -> bool:
    bodies = [gap[4:], gap] if gap[:4] == DESCRIPTOR_SIG else [gap]
    for body in bodies:
        if len(body) == 12:
            values = struct.unpack("<III", body)
        elif len(body) == 20:
            values = struct.unpack("<IQQ", body)
        else:
            continue
        if values == (record.crc, record.compressed_size, record.uncompressed_size):
            return True
    return False


def check_gap(gap: bytes | None, record: ZipRecord, at: int, limit: int) -> None:
    """The bytes between a record's data (ending at ``at``) and the next record (``limit``):
    none, or one data descriptor that agrees with the central directory. ``gap`` None: the gap
    is longer than any descriptor."""
    if gap == b"" or (gap is not None and record.flags & 0x8 and _is_descriptor(gap, record)):
        return
    if gap is not None and record.flags & 0x8 and gap[:4] == DESCRIPTOR_SIG and \
            len(gap) in (16, 24):
        crc, csize = struct.unpack_from("<II" if len(gap) == 16 else "<IQ", gap, 4)
        what = "CRC-32 mismatch in" if crc != record.crc else "size mismatch in"
        raise corrupted(f"{what} record {record.name!r}: its data descriptor at offset {at} says "
                        f"crc {crc:08x}, size {csize}; the central directory says crc "
                        f"{record.crc:08x}, size {record.compressed_size}: damaged central "
                        f"directory or descriptor", code="zip.header_mismatch")
    raise corrupted(f"{limit - at} bytes after the data of record {record.name!r} (offset {at} "
                    f"to {limit}) that the central directory does not account for: not a data "
                    f"descriptor of this record (hidden data, or a damaged header)",
                    code="zip.hidden_data")


def parse_local_header(buf: bytes, pos: int, record: ZipRecord) -> int:
    """Check the local header at ``buf[pos:]``; return the offset in ``buf`` of the data."""
    where = f"local header of record {record.name!r} at offset {record.offset}"
    if len(buf) - pos < LFH_SIZE:
        raise corrupted(f"{where} is cut short")
    (sig, _vn, flags, method, _t, _d, crc, csize, usize, nlen, elen) = _LFH.unpack_from(buf, pos)
    if sig != LFH_SIG:
        raise corrupted(f"{where} has a bad signature {sig!r}")
    name = bytes(buf[pos + LFH_SIZE: pos + LFH_SIZE + nlen])
    if name != record.raw:
        raise corrupted(f"{where} names {name!r}, not the central directory's name",
                        code="zip.header_mismatch")
    if method != record.method:
        raise corrupted(f"{where} says compression method {method}, central directory says "
                        f"{record.method}")
    if not flags & 0x8:
        sizes_ok = ((csize == 0xFFFFFFFF or csize == record.compressed_size) and
                    (usize == 0xFFFFFFFF or usize == record.uncompressed_size))
        if crc != record.crc or not sizes_ok:
            raise corrupted(f"{where} disagrees with the central directory (crc {crc:08x} vs "
                            f"{record.crc:08x}, size {csize} vs {record.compressed_size})",
                            code="zip.header_mismatch")
    return pos + LFH_SIZE + nlen + elen


def local_data_start(buf: bytes | memoryview, pos: int, record: ZipRecord) -> int:
    """Check the local header of ``record`` at ``buf[pos:]`` as every reader of this package
    does; return the offset in ``buf`` where its data begins (the record loader's entry)."""
    return parse_local_header(buf, pos, record)


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
            raise corrupted(f"records overlap near offset {offset}", code="zip.out_of_bounds")
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
            crc = crc32(part, crc)
            got += len(part)
            self.pos += len(part)
        return crc, got


def verify_crcs(source: ByteSource, index: ZipIndex, *, chunk_size: int = DEEP_CHUNK_BYTES,
                max_reported: int = 5) -> int:
    """Stream the archive once; check every local header, every gap between records and every
    CRC-32 (not in a CRC-less archive: :data:`CRC_LESS_RULE`). Returns records checked.

    Memory stays bounded by ``chunk_size`` (plus one local header), whatever the file size.
    """
    stream = _Stream(source, index.cd_offset, chunk_size)
    bad: list[str] = []
    records = index.records
    for i, rec in enumerate(records):
        limit = records[i + 1].offset if i + 1 < len(records) else index.cd_offset
        stream.skip_to(rec.offset)
        header = stream.take(LFH_SIZE)
        if len(header) < LFH_SIZE:
            raise corrupted(f"local header of record {rec.name!r} at offset {rec.offset} is cut "
                            f"short")
        nlen, elen = struct.unpack_from("<HH", header, 26)
        header += stream.take(nlen + elen)
        parse_local_header(header, 0, rec)
        data_offset = stream.pos
        crc, got = stream.crc(rec.compressed_size)
        if got != rec.compressed_size:
            raise corrupted(f"record {rec.name!r} is short: {got} bytes stored before offset "
                            f"{index.cd_offset}, {rec.compressed_size} expected")
        at = stream.pos
        if at > limit:
            raise corrupted(f"record {rec.name!r}: its data runs {at - limit} bytes past the "
                            f"next record at offset {limit} (overlapping records)")
        check_gap(stream.take(limit - at) if limit - at <= MAX_DESCRIPTOR else None, rec, at,
                   limit)
        if crc != rec.crc and not index.crc_less:
            bad.append(f"CRC-32 mismatch in record {rec.name!r}: stored {rec.crc:08x}, computed "
                       f"{crc:08x} over {got} bytes at offset {data_offset}")
    if bad:
        more = f" (and {len(bad) - max_reported} more records)" if len(bad) > max_reported else ""
        raise corrupted("; ".join(bad[:max_reported]) + more, code="zip.crc_mismatch")
    return len(index.records)


#: the control records torch reads (relative to the top folder), checked at the load level
CONTROL_RECORDS = (".format_version", ".storage_alignment", "byteorder", "version",
                   ".data/version", ".data/serialization_id")
#: std::stoull as caffe2 applies it to ``version``: C white space, a sign, decimal digits; the
#: rest of the record is ignored
_STOULL = re.compile(rb"[ \t\n\x0b\x0c\r]*([+-]?)([0-9]+)")


def read_control_records(reader: CachedReader, index: ZipIndex) -> dict[str, bytes]:
    """The control records' bytes, by relative name, read together with ``data.pkl``.

    Records that lie next to each other (torch writes ``.format_version`` and
    ``.storage_alignment`` after ``data.pkl``, ``version``, ``byteorder`` and the serialization
    id just before the central directory, usually inside the tail already read) are fetched with
    one range read per run, so the load level costs at most two reads more than ``data.pkl``.
    """
    present = {rel: rec for rel in CONTROL_RECORDS if (rec := index.member(rel)) is not None}
    for rec in present.values():
        if rec.compressed_size > MAX_CONTROL_RECORD_BYTES:
            raise corrupted(f"control record {rec.name!r} holds {rec.compressed_size} bytes; "
                            f"torch writes at most 40 (limit {MAX_CONTROL_RECORD_BYTES})",
                            code="zip.control_record")
    pkl = index.member("data.pkl")
    wanted = sorted([*present.values(), *([pkl] if pkl is not None else [])], key=_by_offset)
    runs: list[list[ZipRecord]] = []
    for rec in wanted:
        if runs and index.next_offset(runs[-1][-1]) == rec.offset:
            runs[-1].append(rec)
        else:
            runs.append([rec])
    for run in runs:
        start, end = run[0].offset, index.next_offset(run[-1])
        # never more than the records' own reads would fetch (a record followed by a huge gap
        # is read, capped, on its own -- and refused for the gap)
        most = sum(LFH_SIZE + r.name_len + 0xFFFF + r.compressed_size + MAX_DESCRIPTOR
                   for r in run)
        if len(run) > 1 and end - start <= most and not reader.cached(start, end - start):
            reader.read(start, end - start, keep=True)
    return {rel: read_record(reader, index, rec) for rel, rec in present.items()}


def parse_format_version(data: bytes, name: str) -> int:
    """The archive format version as caffe2 reads it; a :class:`Problem` where torch refuses."""
    match = _STOULL.match(data)
    if match is None:
        raise corrupted(f"record {name!r} holds {data[:40]!r}, not a format version number "
                        f"(torch: \"couldn't parse the version\")", code="zip.control_record")
    sign, digits = match.groups()
    value = int(digits)
    if value >= 1 << 64:
        raise corrupted(f"record {name!r}: format version {digits[:40].decode()} is out of range")
    if sign == b"-":
        value = -value % (1 << 64)  # stoull negates in unsigned arithmetic
    if value >= 1 << 63:  # torch then compares the version as a signed 64-bit number
        value -= 1 << 64
    if value < MIN_FORMAT_VERSION:
        raise corrupted(f"record {name!r}: format version {value} predates every torch")
    if value > MAX_FORMAT_VERSION:
        raise incompatible(f"record {name!r}: format version {value} is newer than "
                           f"{MAX_FORMAT_VERSION}, the newest this torch reads: written by a "
                           f"newer torch", code="zip.newer_format")
    return value


def check_control_records(reader: CachedReader, index: ZipIndex) -> int:
    """Read and check the control records as torch does; return the format version.

    ``.data/version`` (else ``version``): parsed like ``std::stoull``, within torch's supported
    range (newer: *incompatible*; malformed: *corrupted*). ``byteorder``: exactly ``little`` or
    ``big``. ``.storage_alignment``: a Python ``int()``. ``.data/serialization_id``: UTF-8.
    ``.format_version``: any bytes (torch only compares them with ``b"1"``).
    """
    records = read_control_records(reader, index)
    top = index.top + "/"
    rel = ".data/version" if ".data/version" in records else "version"
    version = parse_format_version(records[rel], top + rel)
    order = records.get("byteorder")
    if order is not None and order not in (b"little", b"big"):
        raise corrupted(f"record {top + 'byteorder'!r} holds {order[:40]!r}; torch reads only "
                        f"'little' or 'big'", code="zip.control_record")
    alignment = records.get(".storage_alignment")
    if alignment is not None:
        try:
            int(alignment)
        except ValueError:
            raise corrupted(f"record {top + '.storage_alignment'!r} holds {alignment[:40]!r}, "
                            f"not an integer") from None
    serial = records.get(".data/serialization_id")
    if serial is not None:
        try:
            serial.decode("utf-8")
        except UnicodeDecodeError:
            raise corrupted(f"record {top + '.data/serialization_id'!r} is not UTF-8 text "
                            f"(torch fails to read it)") from None
    return version
