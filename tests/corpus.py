"""Valid and damaged torch checkpoints, built in memory, for the validator's tests (and others').

Every builder returns the bytes of a file; the damage helpers take valid bytes and return
damaged ones, so each test can say exactly what broke.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from virnucpro_store.schemas import ESM_DIM, MERGED_DIM
from virnucpro_store.testing.damage import code_running_pickle
from virnucpro_store.testing.samples import sample
from virnucpro_store.testing.samples import to_bytes as save_bytes

__all__ = ["ESM_DIM", "MERGED_DIM", "save_bytes"]  # re-exported for the tests that use them


def feature_dict(schema: str, n: int = 3, *, numpy_embeddings: bool = False,
                 seed: int = 0) -> dict[str, Any]:
    """A small valid feature dict of ``schema`` (:func:`virnucpro_store.testing.samples.sample`),
    except that shards are 16 wide and carry a numpy scalar in their metadata, as the allow-list
    must accept."""
    if schema != "shard":
        return sample(schema, n, seed=seed)
    obj = sample("shard", n, seed=seed)
    emb = obj["embeddings"][:, :16].clone()
    obj["embeddings"] = emb.numpy() if numpy_embeddings else emb
    obj["metadata"]["scale"] = np.float64(0.5)
    return obj


def feature_file(schema: str, n: int = 3, **kwargs: Any) -> bytes:
    return save_bytes(feature_dict(schema, n, **kwargs))


@dataclass(frozen=True)
class Record:
    name: str
    header_offset: int
    data_offset: int
    size: int


def records(data: bytes) -> list[Record]:
    """The archive's records in file order, with where each one's payload starts."""
    out = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            h = info.header_offset
            name_len, extra_len = struct.unpack("<HH", data[h + 26: h + 30])
            out.append(Record(info.filename, h, h + 30 + name_len + extra_len, info.compress_size))
    return sorted(out, key=lambda r: r.header_offset)


def record(data: bytes, suffix: str) -> Record:
    for rec in records(data):
        if rec.name.endswith(suffix):
            return rec
    raise KeyError(suffix)


def eocd_offset(data: bytes) -> int:
    return data.rindex(b"PK\x05\x06")


def central_directory_offset(data: bytes) -> int:
    return struct.unpack_from("<I", data, eocd_offset(data) + 16)[0]


def boundaries(data: bytes) -> list[int]:
    """Every record boundary of a file: local headers, payload starts and ends, the central
    directory and the end records (truncation points that damage a different structure each)."""
    points = {0, 1, len(data) - 1, central_directory_offset(data), eocd_offset(data)}
    zip64 = data.rfind(b"PK\x06\x06")
    if zip64 >= 0:
        points |= {zip64, data.rfind(b"PK\x06\x07")}
    for rec in records(data):
        points |= {rec.header_offset, rec.data_offset, rec.data_offset + rec.size}
    return sorted(p for p in points if 0 <= p < len(data))


def flip(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def rewrite(data: bytes, replace: dict[str, bytes | None] | None = None,
            add: dict[str, bytes] | None = None,
            compression: int = zipfile.ZIP_STORED) -> bytes:
    """The archive rewritten with zipfile: records (matched by name suffix) replaced or dropped
    (value None), others added (``add`` names are relative to the top folder)."""
    replace = replace or {}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, \
            zipfile.ZipFile(out, "w", compression) as dst:
        top = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            matched = [s for s in replace if info.filename.endswith(s)]
            if matched:
                if replace[matched[0]] is not None:
                    dst.writestr(info.filename, replace[matched[0]])
                continue
            dst.writestr(info.filename, src.read(info.filename))
        for name, payload in (add or {}).items():
            dst.writestr(f"{top}/{name}", payload)
    return out.getvalue()


class RunsCommand:
    """Pickles into a call of ``os.system(command)``: what a hostile checkpoint carries."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def hostile_file(marker: str | os.PathLike[str]) -> bytes:
    """A torch file whose data.pkl runs ``touch <marker>`` when unpickled unsafely."""
    return code_running_pickle(feature_file("merged", 2), f"touch {os.fspath(marker)}")


def short_storage_file() -> bytes:
    """A file whose storage record of 2560 float32 holds only 4096 bytes."""
    valid = save_bytes({"proteins": ["p"], "data": [torch.zeros(ESM_DIM)]})
    return rewrite(valid, {"/data/0": bytes(4096)})


def legacy_file() -> bytes:
    return save_bytes({"ids": ["a"], "data": torch.zeros(1, MERGED_DIM)},
                      _use_new_zipfile_serialization=False)


def with_zip64_extras(data: bytes) -> bytes:
    """The same archive with every central-directory size and offset moved into a ZIP64 extra
    field (0xFFFFFFFF in the classic fields), as torch writes them for files above 4 GiB."""
    eocd = eocd_offset(data)
    cd = central_directory_offset(data)
    n = struct.unpack_from("<H", data, eocd + 10)[0]
    pos, entries = cd, []
    for _ in range(n):
        nlen, elen, clen = struct.unpack_from("<HHH", data, pos + 28)
        fixed = bytearray(data[pos: pos + 46])
        name = data[pos + 46: pos + 46 + nlen]
        extra = data[pos + 46 + nlen: pos + 46 + nlen + elen]
        comment = data[pos + 46 + nlen + elen: pos + 46 + nlen + elen + clen]
        csize, usize = struct.unpack_from("<II", fixed, 20)
        offset = struct.unpack_from("<I", fixed, 42)[0]
        zip64 = struct.pack("<HHQQQ", 1, 24, usize, csize, offset)
        struct.pack_into("<II", fixed, 20, 0xFFFFFFFF, 0xFFFFFFFF)
        struct.pack_into("<H", fixed, 30, elen + len(zip64))
        struct.pack_into("<I", fixed, 42, 0xFFFFFFFF)
        entries.append(bytes(fixed) + name + extra + zip64 + comment)
        pos += 46 + nlen + elen + clen
    directory = b"".join(entries)
    z64_offset = cd + len(directory)
    z64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(directory), cd)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, z64_offset, 1)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                      0xFFFFFFFF, 0)
    return data[:cd] + directory + z64 + locator + end
