"""Schemas on the lazy structure: built-ins, user-defined ones, auto-detection, versions."""

from __future__ import annotations

import time

import corpus
import pytest
import torch

from virnucpro_store.schemas import (
    BUILTIN_SCHEMAS,
    DNABERT_DIM,
    ESM_DIM,
    MERGED_DIM,
    Schema,
    check_version,
    detect_schema,
    get_schema,
)
from virnucpro_store.source import BytesSource
from virnucpro_store.validation import ArrayMeta, TensorMeta, validate_source


def vec(n: int, dtype: str = "float32") -> TensorMeta:
    return TensorMeta(dtype, (n,), (1,), 0, "0")


def mat(rows: int, cols: int, dtype: str = "float32") -> TensorMeta:
    return TensorMeta(dtype, (rows, cols), (cols, 1), 0, "0")


def test_widths():
    assert (DNABERT_DIM, ESM_DIM, MERGED_DIM) == (768, 2560, 3328)


def test_get_schema():
    assert get_schema(None) is None
    assert get_schema("esm") is BUILTIN_SCHEMAS["esm"]
    mine = Schema("mine")
    assert get_schema(mine) is mine
    with pytest.raises(ValueError, match="known schemas: dnabert, esm, merged, shard"):
        get_schema("bert")


def test_esm_rules():
    esm = get_schema("esm")
    assert esm.check({"proteins": ["a", "b"], "data": [vec(ESM_DIM), vec(ESM_DIM)]}) == []
    assert esm.check({"proteins": ["a"], "data": [vec(ESM_DIM, "float16")]}) == [
        "esm: data[0] has dtype float16, expected float32"]
    assert esm.check({"proteins": ["a", "b"], "data": [vec(ESM_DIM)]}) == [
        "esm: len(proteins) is 2 but len(data) is 1; they must be equal"]
    assert esm.check({"proteins": "ab", "data": []})[0].startswith(
        "esm: 'proteins' is a str, expected a list of strings")
    assert esm.check({"proteins": [1], "data": [vec(ESM_DIM)]}) == [
        "esm: proteins[0] is a int, expected str"]


def test_many_failures_are_counted_not_listed():
    data = [vec(ESM_DIM - 1)] * 10_000
    problems = get_schema("esm").check({"proteins": ["p"] * 10_000, "data": data})
    assert len(problems) == 5
    assert problems[0] == "esm: data[0] has shape (2559,), expected (2560,)"
    assert problems[-1].endswith("(and 9995 more of 10000 entries)")


def test_dnabert_rules():
    good = {"label": "x", "mean_representation": [0.0] * DNABERT_DIM}
    dnabert = get_schema("dnabert")
    assert dnabert.check({"nucleotide": ["x"], "data": [good]}) == []
    short = {"label": "x", "mean_representation": [0.0] * 767}
    assert dnabert.check({"nucleotide": ["x"], "data": [short]}) == [
        "dnabert: data[0] mean_representation has 767 values, expected 768"]
    assert dnabert.check({"nucleotide": ["x"], "data": [{"mean_representation": []}]}) == [
        "dnabert: data[0] lacks 'label'"]
    bad_value = {"label": "x", "mean_representation": [0.0] * 767 + ["a"]}
    assert "holds a str at position 767" in dnabert.check(
        {"nucleotide": ["x"], "data": [bad_value]})[0]


def test_merged_rules():
    merged = get_schema("merged")
    assert merged.check({"ids": ["a", "b"], "data": mat(2, MERGED_DIM)}) == []
    assert merged.check({"ids": ["a"], "data": mat(2, MERGED_DIM)}) == [
        "merged: 'data' has 2 rows but 'ids' has 1 entries; they must be equal"]
    assert merged.check({"ids": ["a"], "data": mat(1, 3000)}) == [
        "merged: 'data' has shape (1, 3000), expected (N, 3328)"]
    assert merged.check({"ids": ["a"], "data": mat(1, MERGED_DIM, "int64")}) == [
        "merged: 'data' has dtype int64, expected a float dtype"]
    assert "expected a float tensor" in merged.check({"ids": [], "data": [1.0]})[0]


def test_shard_rules():
    shard = get_schema("shard")
    arr = ArrayMeta("float16", (3, 8))
    assert shard.check({"embeddings": arr, "sequence_ids": list("abc"), "metadata": {}}) == []
    assert shard.check({"embeddings": mat(3, 8), "sequence_ids": list("ab"),
                        "metadata": {}}) == [
        "shard: 'embeddings' has 3 rows but 'sequence_ids' has 2 entries; they must be equal"]
    assert shard.check({"embeddings": vec(3), "sequence_ids": list("abc"), "metadata": {}}) == [
        "shard: 'embeddings' has shape (3,), expected (N, D), two dimensions"]
    assert shard.check({"embeddings": arr, "sequence_ids": list("abc"), "metadata": []}) == [
        "shard: 'metadata' is a list, expected a dict"]


def test_detect_schema_by_keys():
    for name in BUILTIN_SCHEMAS:
        assert detect_schema(corpus.feature_dict(name)).name == name
    assert detect_schema({"weights": 1}) is None
    assert detect_schema(None) is None


def test_check_version():
    assert check_version({"version": "1.0"}) is None
    assert check_version({"version": 1}) is None
    assert check_version({}) is None
    assert "major version 2" in check_version({"version": "2.0"})
    assert "major version 3" in check_version({"version": 3.1})
    assert "not a version" in check_version({"version": "banana"})


def test_user_schema_through_the_validator():
    def positive_rows(d):
        return [] if d["x"].shape[0] > 0 else ["mine: x has no rows"]

    mine = Schema("mine", required_keys=("x",), rules=(positive_rows,))
    good = corpus.save_bytes({"x": torch.zeros(2, 2)})
    empty = corpus.save_bytes({"x": torch.zeros(0, 2)})
    assert validate_source(BytesSource(good), schema=mine).ok
    report = validate_source(BytesSource(empty), schema=mine)
    assert report.category == "incompatible" and report.message == "mine: x has no rows"
    assert report.schema == "mine"


def test_a_crashing_user_rule_is_a_problem_not_an_exception():
    def crashes(d):
        return [] if d["x"]["nope"] else []

    report = validate_source(BytesSource(corpus.save_bytes({"x": [1]})),
                             schema=Schema("mine", ("x",), (crashes,)))
    assert report.category == "incompatible" and "rule crashes failed" in report.message


def test_schema_checks_are_fast_on_10000_entries():
    data = [{"label": "x", "mean_representation": [0.5] * DNABERT_DIM}] * 10_000
    start = time.perf_counter()
    assert get_schema("dnabert").check({"nucleotide": ["x"] * 10_000, "data": data}) == []
    assert get_schema("esm").check({"proteins": ["x"] * 10_000,
                                    "data": [vec(ESM_DIM)] * 10_000}) == []
    assert time.perf_counter() - start < 5
