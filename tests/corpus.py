"""Valid and damaged torch checkpoints, built in memory, for the validator's tests (and others').

Every builder returns the bytes of a file; the damage helpers take valid bytes and return
damaged ones, so each test can say exactly what broke.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DNABERT_DIM, ESM_DIM, MERGED_DIM = 768, 2560, 3328


def save_bytes(obj: Any, **kwargs: Any) -> bytes:
    """``torch.save(obj)`` into memory."""
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def feature_dict(schema: str, n: int = 3, *, numpy_embeddings: bool = False,
                 seed: int = 0) -> dict[str, Any]:
    """A small valid feature dict of ``schema`` with the real widths."""
    gen = torch.Generator().manual_seed(seed)
    ids = [f"seq{i}" for i in range(n)]
    common = {"version": "1.0", "status": "complete"}
    if schema == "dnabert":
        vecs = torch.randn(n, DNABERT_DIM, generator=gen)
        return {"nucleotide": ids,
                "data": [{"label": ids[i], "mean_representation": vecs[i].tolist()}
                         for i in range(n)], **common}
    if schema == "esm":
        return {"proteins": ids, "data": [torch.randn(ESM_DIM, generator=gen) for _ in ids],
                **common}
    if schema == "merged":
        return {"ids": ids, "data": torch.randn(n, MERGED_DIM, generator=gen), **common}
    if schema == "shard":
        emb = torch.randn(n, 16, generator=gen)
        return {"embeddings": emb.numpy() if numpy_embeddings else emb, "sequence_ids": ids,
                "metadata": {"model": "esm2", "layer": 36, "scale": np.float64(0.5)}, **common}
    raise ValueError(schema)


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
    valid = feature_file("merged", 2)
    evil = pickle.dumps({"ids": ["a"], "data": RunsCommand(f"touch {os.fspath(marker)}")},
                        protocol=2)
    return rewrite(valid, {"/data.pkl": evil})


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
