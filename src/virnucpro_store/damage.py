"""Ways a feature file goes bad, made on purpose: for the demo and the tests.

Each function takes the bytes of a valid ``torch.save`` file and returns damaged bytes.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile


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


def replace_record(data: bytes, suffix: str, payload: bytes) -> bytes:
    """Rewrite the archive with the record ending in ``suffix`` replaced by ``payload``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, \
            zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = payload if info.filename.endswith(suffix) else src.read(info)
            dst.writestr(info.filename, body)
    return out.getvalue()


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):  # the attack: unpickling would call os.system(command)
        import os

        return (os.system, (self.command,))


def code_running_pickle(data: bytes, command: str = "echo pwned") -> bytes:
    """Replace ``data.pkl`` with a pickle that would run ``command`` if loaded unsafely.

    Building it runs nothing; only an unsafe unpickler (``weights_only=False``) would.
    """
    payload = pickle.dumps({"ids": ["x"], "data": _RunsCommand(command)}, protocol=2)
    return replace_record(data, "/data.pkl", payload)
