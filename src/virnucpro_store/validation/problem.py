"""The one internal exception the validation steps raise: a category, a message and a code.

``code`` names the defect in a stable, machine-readable way (:data:`CODES`), as a category
says what to do about it and the message says where: tests and programs match the code,
people read the message. A problem raised without a code of its own is reported with
``"<level>.<category>"`` of the level that found it (``"zip.corrupted"``).
"""

from __future__ import annotations

#: the defects with a code of their own; every other is "<level>.<category>"
CODES: dict[str, str] = {
    "size.empty": "the object is empty (0 bytes)",
    "size.truncated": "a window of a container file (a DCP slice) runs past its end",
    "zip.no_end_record": "no end of central directory: truncated, or not a ZIP at all",
    "zip.ambiguous_end_record": "two end records that readers could each take",
    "zip.out_of_bounds": "a record, directory or read lies outside the file",
    "zip.hidden_data": "bytes no record accounts for (a prefix, a gap, a trailer)",
    "zip.duplicate_name": "two records with one name as torch looks names up",
    "zip.too_large": "more records or a larger directory than the validator admits",
    "zip.unsupported_record": "compressed, encrypted or patched records",
    "zip.not_torch": "a ZIP archive, but not a torch checkpoint",
    "zip.legacy_format": "torch's pre-1.6 bare pickle format",
    "zip.missing_record": "a record torch needs is not there",
    "zip.crc_mismatch": "a record's data does not match its CRC-32 (deep)",
    "zip.header_mismatch": "a local header disagrees with the central directory (deep)",
    "zip.control_record": "a control record (.format_version, byteorder, ...) torch refuses",
    "zip.newer_format": "a format version newer than this torch reads",
    "pickle.unreadable": "data.pkl is not a readable pickle (damage, truncation)",
    "pickle.frame_straddle": "an opcode straddles a FRAME's end, or a FRAME opens inside "
                             "another: readers parse such a stream differently",
    "pickle.too_large": "data.pkl above the validator's size limit",
    "pickle.memo_bomb": "a memo index far past the entries stored (memory bomb)",
    "pickle.hash_bomb": "a dict key or set element too deep or too large to hash",
    "pickle.hash_flood": "too many keys sharing one hash value (quadratic build)",
    "pickle.too_complex": "more pickle opcodes outside record runs than the validator's "
                          "cost bound admits (a table of tiny objects, not a feature file)",
    "pickle.too_deep": "nesting past the recursion limit, or past the walk's node limit",
    "pickle.forbidden_global": "a global outside the allow-list: nothing of it runs",
    "pickle.unsupported_global": "a torch global (quantized, sparse, ...) not modelled",
    "pickle.unsupported_form": "an opcode or form torch's weights-only loader refuses",
    "numpy.object_dtype": "a numpy array or scalar of object dtype",
    "tensor.storage_missing": "a tensor's storage record is not in the archive",
    "tensor.storage_size": "a storage record shorter or longer than its tensor needs",
    "tensor.out_of_bounds": "a tensor view that does not fit its storage",
    "load.torch_refused": "torch refused to build a tensor the model accepted (load, deep)",
    "load.unsupported_type": "the loaded structure holds a value the record loader has no "
                             "rule to build",
    "keys.version": "a version this code does not read",
    "keys.no_schema": "no built-in schema matches the file's keys",
    "keys.schema": "a schema's required key or shape rule does not hold",
    "dcp.metadata": "a DCP .metadata that is not readable DCP metadata",
    "dcp.metadata_global": "a DCP .metadata naming a global outside its allow-list",
    "dcp.path_escape": "a DCP .metadata naming a file outside the checkpoint",
    "dcp.manifest": "a DCP checksum manifest that is not readable",
    "dcp.checksum_mismatch": "a DCP data file whose bytes differ from its manifest's CRC-32",
    "dcp.truncated": "a DCP data file shorter than the slices .metadata names",
    "dcp.item": "a DCP item that is not what the load plan expects",
    "run.not_committed": "a file of a committed run whose size or checksum is not the one "
                         "its manifest lists",
}


class Problem(Exception):
    """A validation step found the file unusable; ``category`` is one of errors.CATEGORIES,
    ``code`` one of :data:`CODES` (or None: the level's generic code)."""

    def __init__(self, category: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.category = category
        self.message = message
        self.code = code


def corrupted(message: str, code: str | None = None) -> Problem:
    return Problem("corrupted", message, code)


def incompatible(message: str, code: str | None = None) -> Problem:
    return Problem("incompatible", message, code)


def unsafe(message: str, code: str | None = None) -> Problem:
    return Problem("unsafe", message, code)
