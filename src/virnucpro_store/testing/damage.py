"""Ways a feature file goes bad, made on purpose: for the demo and the tests.

Each function takes the bytes of a valid ``torch.save`` file and returns damaged bytes. Nothing
here defines an object whose unpickling runs code: the hostile pickle is written opcode by
opcode, so importing or calling this module can never run the command it embeds.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from typing import Any


def truncate(data: bytes, fraction: float = 0.5) -> bytes:
    """The first ``fraction`` of the file, as an interrupted copy or upload leaves it."""
    return data[: int(len(data) * fraction)]


def record_data_offset(data: bytes, suffix: str) -> tuple[int, int]:
    """(offset, length) of the payload of the first record whose name ends with ``suffix``."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if info.filename.endswith(suffix):
                header = data[info.header_offset: info.header_offset + 30]
                name_len, extra_len = struct.unpack("<HH", header[26:30])
                return info.header_offset + 30 + name_len + extra_len, info.compress_size
    raise KeyError(f"no record ending in {suffix!r}")


def flip_payload_byte(data: bytes, record_suffix: str = "/data/0", position: int = 0) -> bytes:
    """Flip one bit of a tensor payload: the file still loads, with a wrong number in it."""
    offset, length = record_data_offset(data, record_suffix)
    where = offset + min(position, length - 1)
    damaged = bytearray(data)
    damaged[where] ^= 0x01
    return bytes(damaged)


def flip_padding_byte(data: bytes, record_suffix: str = "/data/0") -> bytes:
    """Flip one bit inside the local header's extra field of a record (torch's alignment
    padding, which no reader interprets): not damage to any data."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(record_suffix))
    header = data[info.header_offset: info.header_offset + 30]
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    if extra_len <= 4:
        raise ValueError(f"record {info.filename!r} has no padding in its local header")
    damaged = bytearray(data)
    damaged[info.header_offset + 30 + name_len + extra_len - 1] ^= 0x01  # a padding byte
    return bytes(damaged)


def replace_record(data: bytes, suffix: str, payload: bytes) -> bytes:
    """Rewrite the archive with the record ending in ``suffix`` replaced by ``payload``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, \
            zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = payload if info.filename.endswith(suffix) else src.read(info)
            dst.writestr(info.filename, body)
    return out.getvalue()


def _unicode(text: str) -> bytes:
    raw = text.encode("utf-8")
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def code_running_pickle_bytes(command: str = "echo pwned", *, module: str = "os",
                              name: str = "system") -> bytes:
    """A protocol-2 pickle of ``{"ids": ["x"], "data": module.name(command)}``.

    Written as raw opcodes (GLOBAL, TUPLE1, REDUCE): only an unsafe unpickler would import
    ``module.name`` and call it.
    """
    return b"".join([
        pickle.PROTO + b"\x02", pickle.EMPTY_DICT, pickle.MARK,
        _unicode("ids"), pickle.EMPTY_LIST, _unicode("x"), pickle.APPEND,
        _unicode("data"), pickle.GLOBAL + f"{module}\n{name}\n".encode(),
        _unicode(command), pickle.TUPLE1, pickle.REDUCE,
        pickle.SETITEMS, pickle.STOP,
    ])


def code_running_pickle(data: bytes, command: str = "echo pwned") -> bytes:
    """Replace ``data.pkl`` of a valid file with a pickle that would run ``command`` if loaded
    unsafely (``weights_only=False``). Building it runs nothing."""
    return replace_record(data, "/data.pkl", code_running_pickle_bytes(command))


def malicious_checkpoint(command: str) -> bytes:
    """A well-formed torch zip whose data.pkl would run ``command`` if unpickled unsafely."""
    import torch

    from .samples import to_bytes

    return code_running_pickle(to_bytes({"ids": ["a"], "data": torch.zeros(1)}), command)


def put_bytes(store: Any, key: str, data: bytes | Any) -> bytes:
    """Publish raw bytes (or a torch.save of an object) under ``key`` of a CheckpointStore
    without validation -- how tests plant damaged files. Returns the bytes."""
    from .samples import to_bytes

    if not isinstance(data, (bytes, bytearray)):
        data = to_bytes(data)
    store.save_bytes(data, key, validate=None)
    return bytes(data)


def truncated(data: bytes, length: int) -> bytes:
    """The first ``length`` bytes."""
    return data[:length]
