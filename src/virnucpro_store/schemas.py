"""Schemas: what each VirNucPro feature file must hold, checked on the validator's lazy structure.

A schema is a name, the top-level keys it requires, and rules. A rule is any callable that takes
the loaded top-level dict (tensors appear as :class:`~virnucpro_store.validation.TensorMeta`,
numpy arrays as :class:`~virnucpro_store.validation.ArrayMeta`) and returns a list of problem
strings (empty when the rule holds). A missing key or a broken rule makes a file
"incompatible": whole, but not what the pipeline reads.

Example:
    >>> from virnucpro_store.lazy import TensorMeta
    >>> esm = get_schema("esm")
    >>> ok = TensorMeta("float32", (ESM_DIM,), (1,), 0, "0")
    >>> esm.check({"proteins": ["p1"], "data": [ok]})
    []
    >>> esm.check({"proteins": ["p1"]})
    ["esm: required key 'data' is missing (keys present: 'proteins')"]
    >>> mine = Schema("mine", required_keys=("x",),
    ...               rules=(lambda d: [] if d["x"] > 0 else ["mine: x must be positive"],))
    >>> mine.check({"x": -1})
    ['mine: x must be positive']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .lazy import FLOAT_DTYPES, INT64, ArrayMeta, TensorMeta, shape_text

DNABERT_DIM = 768
ESM_DIM = 2560
MERGED_DIM = DNABERT_DIM + ESM_DIM  # 3328
#: files whose ``version`` has a larger major number are "incompatible"
SUPPORTED_MAJOR = 1
#: per rule, how many failing entries are named before the rest are only counted
MAX_REPORTED = 5
#: the ``schema`` value that asks the validator to pick a schema from the keys present
AUTO = "auto"

Rule = Callable[[Mapping[str, Any]], list[str]]


@dataclass(frozen=True)
class Schema:
    """A named set of required keys and rules."""

    name: str
    required_keys: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    description: str = ""
    #: the key holding the file's sequence ids (a list of str), which ``scan`` reads to tell
    #: which sequences are done; None: the files of this schema name no ids
    id_field: str | None = None

    def check(self, obj: Any) -> list[str]:
        """Problems found in ``obj`` (the lazy structure); empty when it fits the schema."""
        if not isinstance(obj, Mapping):
            return [f"{self.name}: the checkpoint holds a {type(obj).__name__}, expected a dict "
                    f"with keys {', '.join(map(repr, self.required_keys))}"]
        missing = [k for k in self.required_keys if k not in obj]
        if missing:
            present = ", ".join(_short_repr(k, 40) for k in list(obj)[:20]) or "none"
            return [f"{self.name}: required key {k!r} is missing (keys present: {present})"
                    for k in missing]
        problems: list[str] = []
        for rule in self.rules:
            try:
                problems.extend(rule(obj))
            except Exception as exc:  # a user rule that trips over an odd file
                rule_name = getattr(rule, "__name__", repr(rule))
                problems.append(f"{self.name}: rule {rule_name} failed on this file: "
                                f"{type(exc).__name__}: {exc}")
        return problems


def _describe(value: Any) -> str:
    if isinstance(value, TensorMeta):
        return f"a {value.dtype} tensor of shape {shape_text(value.shape)}"
    if isinstance(value, ArrayMeta):
        return f"a {value.dtype} numpy array of shape {shape_text(value.shape)}"
    return f"a {type(value).__name__}"


def _first_failures(prefix: str, items: Iterable[tuple[Any, str | None]], total: int
                    ) -> list[str]:
    """Name the first MAX_REPORTED failures (``(index, problem)`` pairs), count the rest."""
    named: list[str] = []
    extra = 0
    for index, problem in items:
        if problem is None:
            continue
        if len(named) < MAX_REPORTED:
            named.append(f"{prefix}[{index}] {problem}")
        else:
            extra += 1
    if extra:
        named[-1] += f" (and {extra} more of {total} entries)"
    return named


_STR_ONLY = frozenset({str})


def _str_list(schema: str, key: str) -> Rule:
    def rule(d: Mapping[str, Any]) -> list[str]:
        value = d[key]
        if not isinstance(value, list):
            return [f"{schema}: {key!r} is {_describe(value)}, expected a list of strings"]
        if set(map(type, value)) <= _STR_ONLY:  # C speed: a 1 GB merged file has 80k ids
            return []
        bad = ((i, None if isinstance(v, str) else f"is {_describe(v)}, expected str")
               for i, v in enumerate(value))
        return _first_failures(f"{schema}: {key}", bad, len(value))

    rule.__name__ = f"{key}_is_list_of_str"
    return rule


def _same_length(schema: str, a: str, b: str) -> Rule:
    def rule(d: Mapping[str, Any]) -> list[str]:
        la, lb = _length(d[a]), _length(d[b])
        if la is None or lb is None or la == lb:
            return []
        return [f"{schema}: len({a}) is {la} but len({b}) is {lb}; they must be equal"]

    rule.__name__ = f"len_{a}_equals_len_{b}"
    return rule


def _length(value: Any) -> int | None:
    if isinstance(value, list):
        return len(value)
    if isinstance(value, (TensorMeta, ArrayMeta)) and value.shape:
        return value.shape[0]
    return None


_FLOAT_ONLY = frozenset({float})


def _fits_float(x: int) -> bool:
    try:
        float(x)
    except OverflowError:
        return False
    return True


def _is_float_vector(value: Any, width: int) -> str | None:
    """None when ``value`` is a list of ``width`` numbers or a float tensor/array (width,)."""
    if isinstance(value, list):
        if len(value) != width:
            return f"has {len(value)} values, expected {width}"
        types = set(map(type, value))
        if types <= _FLOAT_ONLY:  # C speed: 7.7M floats in a DNABERT file
            return None
        for j, x in enumerate(value):
            if not isinstance(x, (int, float)) or isinstance(x, bool):
                return f"holds {_describe(x)} at position {j}, expected floats"
            # torch.tensor() of the list: with a float in it every int becomes a float (past
            # 2**1024: "int too large to convert to float"); of ints alone, a 64-bit int
            if isinstance(x, int) and not (-INT64 <= x < INT64 or float in types
                                           and _fits_float(x)):
                return (f"holds an int of {x.bit_length()} bits at position {j}, which "
                        f"torch.tensor cannot take")
        return None
    if isinstance(value, (TensorMeta, ArrayMeta)):
        if value.dtype not in FLOAT_DTYPES:
            return f"is {_describe(value)}, expected floats"
        if value.shape != (width,):
            return f"has shape {shape_text(value.shape)}, expected ({width},)"
        return None
    return f"is {_describe(value)}, expected a list of {width} floats"


def _dnabert_data(d: Mapping[str, Any]) -> list[str]:
    data = d["data"]
    if not isinstance(data, list):
        return [f"dnabert: 'data' is {_describe(data)}, expected a list of dicts"]

    def check(entry: Any) -> str | None:
        if not isinstance(entry, dict):
            return f"is {_describe(entry)}, expected a dict with 'label' and 'mean_representation'"
        if "label" not in entry or "mean_representation" not in entry:
            return f"lacks {'label' if 'label' not in entry else 'mean_representation'!r}"
        if not isinstance(entry["label"], str):
            return f"label is {_describe(entry['label'])}, expected str"
        problem = _is_float_vector(entry["mean_representation"], DNABERT_DIM)
        return None if problem is None else f"mean_representation {problem}"

    return _first_failures("dnabert: data", ((i, check(e)) for i, e in enumerate(data)),
                           len(data))


def _esm_data(d: Mapping[str, Any]) -> list[str]:
    data = d["data"]
    if not isinstance(data, list):
        return [f"esm: 'data' is {_describe(data)}, expected a list of float32 tensors"]

    def check(t: Any) -> str | None:
        if not isinstance(t, TensorMeta):
            return f"is {_describe(t)}, expected a float32 tensor of shape ({ESM_DIM},)"
        if t.shape != (ESM_DIM,):
            return f"has shape {shape_text(t.shape)}, expected ({ESM_DIM},)"
        if t.dtype != "float32":
            return f"has dtype {t.dtype}, expected float32"
        return None

    return _first_failures("esm: data", ((i, check(t)) for i, t in enumerate(data)), len(data))


def _float_matrix(schema: str, key: str, width: int | None, count_key: str,
                  arrays: bool) -> Rule:
    def rule(d: Mapping[str, Any]) -> list[str]:
        value = d[key]
        kinds = (TensorMeta, ArrayMeta) if arrays else (TensorMeta,)
        kind = "tensor or numpy array" if arrays else "tensor"
        want = f"a float {kind} of shape (N, {width if width is not None else 'D'})"
        if not isinstance(value, kinds):
            return [f"{schema}: {key!r} is {_describe(value)}, expected {want}"]
        problems = []
        if value.dtype not in FLOAT_DTYPES:
            problems.append(f"{schema}: {key!r} has dtype {value.dtype}, expected a float dtype")
        if len(value.shape) != 2 or (width is not None and value.shape[1] != width):
            expected = f"(N, {width})" if width is not None else "(N, D), two dimensions"
            problems.append(f"{schema}: {key!r} has shape {shape_text(value.shape)}, expected "
                            f"{expected}")
            return problems
        ids = d[count_key]
        if isinstance(ids, list) and value.shape[0] != len(ids):
            problems.append(f"{schema}: {key!r} has {value.shape[0]} rows but {count_key!r} has "
                            f"{len(ids)} entries; they must be equal")
        return problems

    rule.__name__ = f"{key}_is_float_matrix"
    return rule


def _is_dict(schema: str, key: str) -> Rule:
    def rule(d: Mapping[str, Any]) -> list[str]:
        if isinstance(d[key], dict):
            return []
        return [f"{schema}: {key!r} is {_describe(d[key])}, expected a dict"]

    rule.__name__ = f"{key}_is_dict"
    return rule


BUILTIN_SCHEMAS: dict[str, Schema] = {
    "dnabert": Schema(
        "dnabert", ("nucleotide", "data"),
        (_str_list("dnabert", "nucleotide"), _dnabert_data,
         _same_length("dnabert", "nucleotide", "data")),
        f"DNABERT-S features: nucleotide ids and {DNABERT_DIM}-float mean representations",
        id_field="nucleotide"),
    "esm": Schema(
        "esm", ("proteins", "data"),
        (_str_list("esm", "proteins"), _esm_data, _same_length("esm", "proteins", "data")),
        f"ESM-2 features: protein ids and float32 ({ESM_DIM},) tensors", id_field="proteins"),
    "merged": Schema(
        "merged", ("ids", "data"),
        (_str_list("merged", "ids"), _float_matrix("merged", "data", MERGED_DIM, "ids", False)),
        f"merged features: ids and one float (N, {MERGED_DIM}) tensor", id_field="ids"),
    "shard": Schema(
        "shard", ("embeddings", "sequence_ids", "metadata"),
        (_str_list("shard", "sequence_ids"),
         _float_matrix("shard", "embeddings", None, "sequence_ids", True),
         _is_dict("shard", "metadata")),
        "an embedding shard: a float (N, D) tensor or numpy array, ids and metadata",
        id_field="sequence_ids"),
}


def get_schema(schema: str | Schema | None) -> Schema | None:
    """The schema named ``schema`` (or ``schema`` itself, or None).

    >>> get_schema("esm").required_keys
    ('proteins', 'data')
    >>> get_schema("nope")
    Traceback (most recent call last):
    ...
    ValueError: unknown schema 'nope'; known schemas: dnabert, esm, merged, shard (or 'auto')
    """
    if schema is None or isinstance(schema, Schema):
        return schema
    if isinstance(schema, str) and schema in BUILTIN_SCHEMAS:
        return BUILTIN_SCHEMAS[schema]
    raise ValueError(f"unknown schema {schema!r}; known schemas: "
                     f"{', '.join(BUILTIN_SCHEMAS)} (or {AUTO!r})")


def detect_schema(structure: Any) -> Schema | None:
    """The built-in schema whose required keys are all present (the most specific one wins).

    >>> detect_schema({"ids": [], "data": None, "version": "1.0"}).name
    'merged'
    >>> detect_schema([1, 2]) is None
    True
    """
    if not isinstance(structure, Mapping):
        return None
    best: Schema | None = None
    for candidate in BUILTIN_SCHEMAS.values():
        if all(k in structure for k in candidate.required_keys):
            if best is None or len(candidate.required_keys) > len(best.required_keys):
                best = candidate
    return best


def check_version(structure: Any) -> str | None:
    """A problem string when the structure's ``version`` is newer than this code supports.

    >>> check_version({"version": "2.0"})
    "version '2.0' has major version 2; this code reads major version 1 or older"
    >>> check_version({"version": "1.3"}) is None
    True
    """
    if not isinstance(structure, Mapping) or "version" not in structure:
        return None
    version = structure["version"]
    major: int | None = None
    if isinstance(version, bool):
        major = None
    elif isinstance(version, int):
        major = version
    elif isinstance(version, float):
        major = int(version) if version == version and abs(version) < 1e18 else None
    elif isinstance(version, str):
        head = version[:64].strip().lstrip("vV").split(".")[0]
        # ASCII digits only: str.isdigit() is also true for '²' (int() raises) and '١' (a
        # version no writer of this format produces); too long for int() is not a version
        major = int(head) if head.isascii() and head.isdigit() and len(head) <= 18 else None
    if major is None or major < 0:
        return f"version {_short_repr(version)} is not a version this code understands"
    if major > SUPPORTED_MAJOR:
        shown = major if major < 1 << 63 else f"of {major.bit_length()} bits"
        return (f"version {_short_repr(version)} has major version {shown}; this code reads "
                f"major version {SUPPORTED_MAJOR} or older")
    return None


def _short_repr(value: Any, limit: int = 60) -> str:
    """``repr`` bounded in length (and safe for ints too large to print)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1 << 63:
        return f"<int of {value.bit_length()} bits>"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    text = repr(value) if isinstance(value, (int, float, str, bool, type(None))) \
        else f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
