"""Tests for tag_pipeline.llm.store: schema, validation messages, Parquet I/O, ranked matrix."""

import re

import numpy as np
import polars as pl
import pytest

from tag_pipeline.llm.store import (
    RESPONSE_SCHEMA,
    ResponseError,
    ranked_matrix,
    read_responses,
    response_summary,
    responses_from_records,
    validate_responses,
    write_responses,
)

N, C = 5, 4
WHERE = "lake/toy/llm/abc/responses.parquet"


def _ok(node, labels, model="m1", text="answer"):
    return {
        "node_id": node,
        "model": model,
        "status": "ok",
        "raw_text": text,
        "ranked_labels": labels,
        "explanation": "because",
        "finish_reason": "stop",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "response_id": f"id-{node}",
        "created_unix": 1682186227,
        "source": f"replay:gpt_responses/Toy/{node}.json",
    }


def _failed(node, model="m1"):
    return {
        "node_id": node,
        "model": model,
        "status": "failed",
        "error": "timeout",
        "ranked_labels": [],
        "explanation": "",
        "source": "online:litellm",
    }


@pytest.fixture
def table():
    return responses_from_records(
        [_ok(0, [2, 1]), _ok(1, [3]), _failed(2), _ok(4, [0, 1, 2, 3]), _ok(3, [])]
    )


def test_schema_columns():
    assert list(RESPONSE_SCHEMA) == [
        "node_id", "model", "status", "error", "raw_text", "ranked_labels", "explanation",
        "finish_reason", "prompt_tokens", "completion_tokens", "response_id", "created_unix",
        "source", "prompt_version",
    ]
    assert RESPONSE_SCHEMA["ranked_labels"] == pl.List(pl.Int64)


def test_valid_table_passes(table):
    out = validate_responses(table, N, C, WHERE)
    assert out.schema == pl.Schema(RESPONSE_SCHEMA)
    assert out.height == 5


def test_narrow_integers_and_column_order_are_conformed(table):
    shuffled = table.select(list(reversed(table.columns))).with_columns(
        pl.col("node_id").cast(pl.Int32), pl.col("ranked_labels").cast(pl.List(pl.Int8))
    )
    out = validate_responses(shuffled, N, C, WHERE)
    assert out.schema == pl.Schema(RESPONSE_SCHEMA)


def test_responses_from_records_rejects_unknown_key():
    with pytest.raises(KeyError, match="unknown"):
        responses_from_records([{**_ok(0, [1]), "tokens": 3}])


def _expect(df, *fragments):
    with pytest.raises(ResponseError) as info:
        validate_responses(df, N, C, WHERE)
    message = str(info.value)
    assert WHERE in message
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(info.value, ValueError)


def test_bad_node_id_names_file_and_row(table):
    bad = table.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(N).otherwise(pl.col("node_id")).alias("node_id")
    )
    _expect(bad, "row 3", "node_id 5 out of range 0..4")
    neg = table.with_columns(pl.Series("node_id", [0, 1, -1, 4, 3]))
    _expect(neg, "row 2", "node_id -1")


def test_duplicate_node_model_names_row(table):
    dup = pl.concat([table, responses_from_records([_ok(1, [0])])])
    _expect(dup, "row 1", "duplicate (node_id, model) = (1, 'm1')")
    other_model = pl.concat([table, responses_from_records([_ok(1, [0], model="m2")])])
    assert validate_responses(other_model, N, C, WHERE).height == 6


def test_label_out_of_range_names_row(table):
    bad = table.with_columns(pl.Series("ranked_labels", [[2, 1], [3], [], [0, 4], []]))
    _expect(bad, "row 3", "outside 0..3")
    neg = table.with_columns(pl.Series("ranked_labels", [[-1], [3], [], [0], []]))
    _expect(neg, "row 0", "outside")


def test_duplicate_labels_in_a_row(table):
    bad = table.with_columns(pl.Series("ranked_labels", [[2, 1], [3, 3], [], [0], []]))
    _expect(bad, "row 1", "duplicates")


def test_missing_unknown_and_mistyped_columns(table):
    _expect(table.drop("source"), "missing response columns ['source']")
    _expect(table.with_columns(pl.lit(1).alias("extra")), "unknown response columns ['extra']")
    _expect(table.with_columns(pl.col("node_id").cast(pl.Utf8)), "'node_id' has dtype")


def test_nulls_status_and_failure_rules(table):
    _expect(table.with_columns(pl.Series("model", ["m1", None, "m1", "m1", "m1"])), "row 1",
            "model is null")
    _expect(table.with_columns(pl.Series("status", ["ok", "ok", "failed", "done", "ok"])),
            "row 3", "status 'done'")
    _expect(table.with_columns(pl.lit(None, dtype=pl.Utf8).alias("error")), "row 2",
            "without an error")
    _expect(table.with_columns(pl.Series("ranked_labels", [[2], [3], [1], [0], []])), "row 2",
            "not empty")
    _expect(table.with_columns(pl.lit(None, dtype=pl.Utf8).alias("raw_text")), "row 0",
            "without raw_text")


def test_write_read_roundtrip(tmp_path, table):
    path = write_responses(table, tmp_path / "sub" / "responses.parquet")
    assert [p.name for p in path.parent.iterdir()] == ["responses.parquet"]  # no temp left
    back = read_responses(path, N, C)
    assert back["node_id"].to_list() == [0, 1, 2, 3, 4]  # sorted on write
    assert back.filter(pl.col("node_id") == 0)["ranked_labels"].to_list() == [[2, 1]]
    assert back.schema == pl.Schema(RESPONSE_SCHEMA)


def test_read_validates_and_names_file(tmp_path, table):
    path = tmp_path / "responses.parquet"
    table.with_columns(pl.Series("node_id", [0, 1, 2, 3, 99])).write_parquet(path)
    with pytest.raises(ResponseError, match=re.escape(f"{path}: row 4: node_id 99")):
        read_responses(path, N, C)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(ResponseError, match="junk.parquet"):
        read_responses(junk, N, C)
    with pytest.raises(FileNotFoundError):
        read_responses(tmp_path / "absent.parquet", N, C)


def test_ranked_matrix_shift_and_padding(table):
    mat = ranked_matrix(table, N, 3)
    assert mat.dtype == np.int64 and mat.shape == (N, 3)
    expected = np.array(
        [
            [3, 2, 0],  # labels [2, 1] shifted by +1, padded with 0
            [4, 0, 0],
            [0, 0, 0],  # failed
            [0, 0, 0],  # answered, no class named
            [1, 2, 3],  # [0, 1, 2, 3] truncated to k = 3
        ]
    )
    np.testing.assert_array_equal(mat, expected)


def test_ranked_matrix_missing_nodes_and_edge_cases(table):
    mat = ranked_matrix(table.filter(pl.col("node_id") != 1), 7, 2)
    assert mat.shape == (7, 2)
    assert mat[1].tolist() == [0, 0] and mat[5:].sum() == 0
    assert ranked_matrix(table, N, 0).shape == (N, 0)
    assert ranked_matrix(table.clear(), N, 2).sum() == 0
    with pytest.raises(ValueError, match="several models"):
        ranked_matrix(pl.concat([table, responses_from_records([_ok(0, [1], model="m2")])]), N, 2)
    with pytest.raises(ValueError):
        ranked_matrix(table, 3, 2)  # node 4 is outside 0..2
    with pytest.raises(ValueError):
        ranked_matrix(table, N, -1)


def test_response_summary(table):
    s = response_summary(table)
    assert s["n_rows"] == 5 and s["n_ok"] == 4 and s["n_failed"] == 1
    assert s["n_no_class"] == 1
    assert s["finish_reasons"] == {"stop": 4, "null": 1}
    assert s["models"] == ["m1"]
