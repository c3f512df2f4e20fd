"""Tests for the packed-answer and gpt_preds-only replays of tag_pipeline.llm.replay.

``import_tape_responses_parquet`` reads ogbn-arxiv's 169,343 answers packed in one Parquet file;
``responses_from_tape_preds`` builds a response table from ``gpt_preds/<name>.csv`` alone
(PubMed, arxiv_2023). The real data is read from ``../shared/data`` relative to the project
root (override with ``TAG_SHARED_DATA``); real-data tests skip themselves where it is absent.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tag_pipeline.datasets.arxiv_2023 import GRAPH_NAME, load_arxiv_2023
from tag_pipeline.datasets.ogbn_arxiv import (
    CLASS_MAP_NAME,
    LABEL_NAME,
    read_arxiv_class_names,
    read_node_column,
)
from tag_pipeline.datasets.pubmed import INDEX_MAP_NAME, load_pubmed
from tag_pipeline.llm.replay import (
    agreement_with_tape_preds,
    import_tape_responses,
    import_tape_responses_parquet,
    read_tape_preds,
    replay_top1_accuracy,
    responses_from_tape_preds,
)
from tag_pipeline.llm.store import (
    RESPONSE_SCHEMA,
    ResponseError,
    ranked_matrix,
    response_summary,
    validate_responses,
)
from tag_pipeline.datasets.cora import CLASS_NAMES  # noqa: E402


def _shared_data() -> Path:
    env = os.environ.get("TAG_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


DATA = _shared_data()
ARXIV = DATA / "ogbn-arxiv"
PARQUET = ARXIV / "gpt_responses" / "ogbn-arxiv_gpt_responses.parquet"
ARXIV_NODES = 169_343
needs_arxiv = pytest.mark.skipif(not PARQUET.is_file(), reason=f"no ogbn-arxiv data under {ARXIV}")

CORA_CLASSES = list(CLASS_NAMES)


# ---------------------------------------------------------------------------------------------
# Toy packed file: the same answers as files and as Parquet rows.


def _completion(content: str, finish_reason: str = "stop") -> dict:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1682186227,
        "model": "gpt-3.5-turbo-0301",
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        "choices": [
            {"message": {"role": "assistant", "content": content},
             "finish_reason": finish_reason, "index": 0}
        ],
    }


TOY_ANSWERS = {
    0: _completion("Theory, Neural Networks. \n\nExplanation: bounds."),
    1: _completion("This paper does not belong to any sub-category.", "length"),
    3: {"error": {"message": "rate limited"}},  # node 2 has no answer
}


def _blob(text: str) -> str:
    data = text.encode("utf-8")
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\x00" + data).hexdigest()


def _write_packed(
    path: Path, answers: dict[int, dict], node_order: list[int] | None = None
) -> Path:
    order = node_order if node_order is not None else sorted(answers)
    texts = [json.dumps(answers[i]) for i in order]
    pl.DataFrame(
        {
            "node_id": pl.Series(order, dtype=pl.Int32),
            "source_filename": [f"{i}.json" for i in order],
            "git_blob": [_blob(t) for t in texts],
            "raw_json": texts,
        }
    ).write_parquet(path)
    return path


@pytest.fixture
def toy(tmp_path: Path) -> tuple[Path, Path]:
    """``(directory of <i>.json files, packed Parquet file)`` with the same answers."""
    files = tmp_path / "toy" / "gpt_responses" / "Toy"
    files.mkdir(parents=True)
    for i, obj in TOY_ANSWERS.items():
        (files / f"{i}.json").write_text(json.dumps(obj))
    packed = tmp_path / "toy" / "gpt_responses" / "toy.parquet"
    _write_packed(packed, TOY_ANSWERS, node_order=[3, 0, 1])  # rows need not be in node order
    return files, packed


def test_parquet_rows_equal_file_rows(toy: tuple[Path, Path]) -> None:
    files, packed = toy
    df = import_tape_responses_parquet(packed, CORA_CLASSES, 4, prompt_version="tape-v1")
    validate_responses(df, 4, len(CORA_CLASSES), str(packed))
    assert df.schema == pl.Schema(RESPONSE_SCHEMA)
    from_files = import_tape_responses(files, CORA_CLASSES, 4, prompt_version="tape-v1")
    same = [c for c in RESPONSE_SCHEMA if c not in ("source", "error")]
    assert df.select(same).equals(from_files.select(same))
    rows = df.rows(named=True)
    assert rows[0]["ranked_labels"] == [6, 2] and rows[0]["explanation"] == "bounds."
    assert rows[0]["source"] == "replay:gpt_responses/toy.parquet:0.json"
    assert rows[1]["status"] == "ok" and rows[1]["ranked_labels"] == []
    assert rows[1]["finish_reason"] == "length"
    assert rows[2]["status"] == "failed"
    assert rows[2]["error"] == f"missing row node_id=2 in {packed}"
    assert rows[2]["model"] == "gpt-3.5-turbo-0301"
    assert rows[3]["status"] == "failed" and "rate limited" in rows[3]["error"]


def test_parquet_file_index_and_extra_rows_ignored(toy: tuple[Path, Path]) -> None:
    _, packed = toy
    df = import_tape_responses_parquet(packed, CORA_CLASSES, 2, file_index=[3, 0])
    assert df["node_id"].to_list() == [0, 1]
    assert df["status"].to_list() == ["failed", "ok"]
    assert df["ranked_labels"].to_list()[1] == [6, 2]
    assert import_tape_responses_parquet(packed, CORA_CLASSES, 1).height == 1
    with pytest.raises(ValueError, match="file_index"):
        import_tape_responses_parquet(packed, CORA_CLASSES, 3, file_index=[0])


def test_parquet_integrity_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        import_tape_responses_parquet(tmp_path / "missing.parquet", CORA_CLASSES, 1)

    path = _write_packed(tmp_path / "bad.parquet", TOY_ANSWERS)
    table = pl.read_parquet(path)
    table.with_columns(pl.lit("0" * 40).alias("git_blob")).write_parquet(path)
    with pytest.raises(ResponseError, match=r"bad\.parquet:0\.json.*git_blob"):
        import_tape_responses_parquet(path, CORA_CLASSES, 4)
    assert import_tape_responses_parquet(path, CORA_CLASSES, 4, verify_blobs=False).height == 4

    pl.concat([table, table.head(1)]).write_parquet(path)
    with pytest.raises(ResponseError, match=r"bad\.parquet: node_id is null or repeated"):
        import_tape_responses_parquet(path, CORA_CLASSES, 4)

    table.drop("raw_json").write_parquet(path)
    with pytest.raises(ResponseError, match=r"bad\.parquet: not a packed response table"):
        import_tape_responses_parquet(path, CORA_CLASSES, 4)

    bad_json = '{"choices": ['
    table.with_columns(
        pl.lit(bad_json).alias("raw_json"), pl.lit(_blob(bad_json)).alias("git_blob")
    ).write_parquet(path)
    with pytest.raises(ResponseError, match=r"bad\.parquet:0\.json.*malformed JSON"):
        import_tape_responses_parquet(path, CORA_CLASSES, 4)


# ---------------------------------------------------------------------------------------------
# gpt_preds-only replay.


def test_preds_rows(tmp_path: Path) -> None:
    csv = tmp_path / "gpt_preds" / "toy.csv"
    csv.parent.mkdir()
    csv.write_bytes(b"4,3,4\r\n\r\n1\r\n")  # TAPE's csv files end lines with \r\n
    df = responses_from_tape_preds(csv, 3, 5)
    validate_responses(df, 3, 5, str(csv))
    assert df.schema == pl.Schema(RESPONSE_SCHEMA)
    rows = df.rows(named=True)
    assert rows[0]["status"] == "ok" and rows[0]["ranked_labels"] == [4, 3]
    assert rows[0]["raw_text"] == "4,3,4" and rows[0]["explanation"] == ""
    assert rows[0]["model"] == "gpt-3.5-turbo-0301"
    assert rows[0]["source"] == "replay:gpt_preds/toy.csv"
    assert rows[0]["finish_reason"] is None and rows[0]["prompt_tokens"] is None
    assert rows[1]["status"] == "failed" and rows[1]["ranked_labels"] == []
    assert rows[1]["error"] == "no prediction in gpt_preds/toy.csv line 2"
    assert rows[1]["raw_text"] is None
    assert rows[2]["ranked_labels"] == [1]
    assert ranked_matrix(df, 3, 2).tolist() == [[5, 4], [0, 0], [2, 0]]

    other = responses_from_tape_preds(csv, 3, 5, model="m", prompt_version="v")
    assert set(other["model"]) == {"m"} and set(other["prompt_version"]) == {"v"}


def test_preds_errors_name_the_file(tmp_path: Path) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text("1,2\n")
    with pytest.raises(ResponseError, match=r"p\.csv: 1 lines, expected 2"):
        responses_from_tape_preds(csv, 2, 3)
    with pytest.raises(ResponseError, match=r"p\.csv: line 1: class index outside 0\.\.1"):
        responses_from_tape_preds(csv, 1, 2)
    csv.write_text("1,x\n")
    with pytest.raises(ResponseError, match=r"p\.csv: line 1: not a list of integers"):
        responses_from_tape_preds(csv, 1, 3)


# ---------------------------------------------------------------------------------------------
# Real data.


@pytest.fixture(scope="module")
def arxiv_import() -> pl.DataFrame:
    names = read_arxiv_class_names(ARXIV / CLASS_MAP_NAME)
    return import_tape_responses_parquet(PARQUET, names, ARXIV_NODES)


@pytest.fixture(scope="module")
def arxiv_labels() -> np.ndarray:
    return read_node_column(ARXIV / LABEL_NAME, ARXIV_NODES)


@needs_arxiv
def test_arxiv_import_rows_and_finish_reasons(arxiv_import: pl.DataFrame) -> None:
    df = arxiv_import
    validate_responses(df, ARXIV_NODES, 40, str(PARQUET))
    assert df["node_id"].to_list() == list(range(ARXIV_NODES))
    summary = response_summary(df)
    assert summary["n_ok"] == ARXIV_NODES and summary["n_failed"] == 0
    assert summary["models"] == ["gpt-3.5-turbo-0301"]
    assert summary["finish_reasons"] == {"stop": 167_990, "length": 1_344, "content_filter": 9}
    assert summary["n_no_class"] == 36
    row = df.row(0, named=True)
    assert row["ranked_labels"] == [24, 4, 10, 16, 23]  # "cs.LG, cs.CR, cs.AI, cs.CV, cs.SE"
    assert row["source"] == "replay:gpt_responses/ogbn-arxiv_gpt_responses.parquet:0.json"
    assert row["response_id"] == "chatcmpl-726mWS3YJaEDSSncFRPBK7esCB450"


@needs_arxiv
def test_arxiv_parsed_top1_accuracy(
    arxiv_import: pl.DataFrame, arxiv_labels: np.ndarray
) -> None:
    df = arxiv_import
    assert replay_top1_accuracy(df, arxiv_labels) == pytest.approx(0.735, abs=0.001)
    preds = read_tape_preds(ARXIV / "gpt_preds" / "ogbn-arxiv.csv", ARXIV_NODES, 40)
    stats = agreement_with_tape_preds(df, preds)
    assert stats["n_csv_empty"] == 36 and stats["n_compared"] == ARXIV_NODES - 36
    assert stats["top1_agreement"] >= 0.9999, stats


@needs_arxiv
def test_arxiv_preds_only_table(arxiv_labels: np.ndarray) -> None:
    df = responses_from_tape_preds(ARXIV / "gpt_preds" / "ogbn-arxiv.csv", ARXIV_NODES, 40)
    validate_responses(df, ARXIV_NODES, 40, "ogbn-arxiv.csv")
    assert response_summary(df)["n_failed"] == 36
    assert round(replay_top1_accuracy(df, arxiv_labels), 4) == 0.7350


@pytest.mark.skipif(not (DATA / "pubmed" / INDEX_MAP_NAME).is_file(), reason="no PubMed data")
def test_pubmed_preds_only_table() -> None:
    graph = load_pubmed(DATA / "pubmed", seeds=())
    df = responses_from_tape_preds(DATA / "pubmed" / "gpt_preds" / "pubmed.csv", graph.num_nodes, 3)
    validate_responses(df, graph.num_nodes, 3, "pubmed.csv")
    summary = response_summary(df)
    assert summary["n_ok"] == graph.num_nodes and summary["n_failed"] == 0
    assert df["ranked_labels"].list.len().max() <= 3  # repeats such as "1,0,1" dropped
    assert round(replay_top1_accuracy(df, graph.labels), 4) == 0.9342


@pytest.mark.skipif(not (DATA / "arxiv_2023" / GRAPH_NAME).is_file(), reason="no arxiv_2023 data")
def test_arxiv_2023_preds_only_table() -> None:
    graph = load_arxiv_2023(DATA / "arxiv_2023", seeds=())
    csv = DATA / "arxiv_2023" / "gpt_preds" / "arxiv_2023.csv"
    df = responses_from_tape_preds(csv, graph.num_nodes, 40)
    validate_responses(df, graph.num_nodes, 40, "arxiv_2023.csv")
    assert response_summary(df)["n_failed"] == 25
    assert round(replay_top1_accuracy(df, graph.labels), 4) == 0.7356
