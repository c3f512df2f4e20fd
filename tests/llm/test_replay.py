"""Tests for tag_pipeline.llm.replay: TAPE's recorded Cora answers and gpt_preds, plus toy files.

The real data is read from ``../shared/data`` relative to the project root (override with the
environment variable ``TAG_SHARED_DATA``); the real-data tests skip themselves where it is
absent.
"""

import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tag_pipeline.llm.replay import (
    agreement_with_tape_preds,
    import_tape_responses,
    read_tape_preds,
    replay_top1_accuracy,
)
from tag_pipeline.llm.store import (
    ResponseError,
    ranked_matrix,
    response_summary,
    responses_from_records,
    validate_responses,
)
from tag_pipeline.datasets.cora import CLASS_NAMES  # noqa: E402

CORA_CLASSES = list(CLASS_NAMES)
CORA_NODES = 2708


def _shared_data() -> Path:
    env = os.environ.get("TAG_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


CORA = _shared_data() / "cora"
needs_cora = pytest.mark.skipif(
    not (CORA / "gpt_responses" / "Cora").is_dir(), reason=f"no Cora data under {CORA}"
)


@pytest.fixture(scope="module")
def cora_import():
    start = time.perf_counter()
    df = import_tape_responses(CORA / "gpt_responses" / "Cora", CORA_CLASSES, CORA_NODES)
    return df, time.perf_counter() - start


@pytest.fixture(scope="module")
def cora_labels() -> np.ndarray:
    with zipfile.ZipFile(CORA / "cora.zip") as z:
        lines = z.read("cora/cora.content").decode().strip().split("\n")
    names = [line.split("\t")[-1] for line in lines]
    classes = sorted(set(names))
    assert classes == CORA_CLASSES
    return np.array([classes.index(n) for n in names], dtype=np.int64)


@needs_cora
def test_cora_import_rows_schema_and_speed(cora_import):
    df, seconds = cora_import
    assert seconds < 2.0, f"import took {seconds:.2f} s"
    assert df.height == CORA_NODES
    assert df["node_id"].to_list() == list(range(CORA_NODES))
    validate_responses(df, CORA_NODES, len(CORA_CLASSES), "cora responses")
    summary = response_summary(df)
    assert summary["n_ok"] == CORA_NODES and summary["n_failed"] == 0
    assert summary["models"] == ["gpt-3.5-turbo-0301"]
    assert summary["finish_reasons"] == {"stop": CORA_NODES - 1, "length": 1}
    # answers that name no class are ok rows with an empty ranking (README: about 27 refuse;
    # a few of those still lead with "Theory" and keep it)
    assert 15 <= summary["n_no_class"] <= 30


@needs_cora
def test_cora_row_fields(cora_import):
    df, _ = cora_import
    cut = df.row(1735, named=True)
    assert cut["finish_reason"] == "length"
    assert cut["raw_text"].startswith("Sub-category: Case Based")
    assert cut["ranked_labels"][0] == 0
    row = df.row(12, named=True)
    assert row["source"] == "replay:gpt_responses/Cora/12.json"
    assert row["response_id"].startswith("chatcmpl-")
    assert row["created_unix"] > 1_600_000_000
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    first = df.row(0, named=True)
    assert first["ranked_labels"] == [3]  # "Probabilistic Methods. \n\nExplanation: ..."
    assert first["explanation"].startswith("The paper discusses several computer algorithms")


@needs_cora
def test_cora_agreement_with_tape_preds(cora_import):
    df, _ = cora_import
    preds = read_tape_preds(CORA / "gpt_preds" / "cora.csv", CORA_NODES, len(CORA_CLASSES))
    assert preds[42] == [1, 5, 1, 5]  # TAPE's extraction keeps duplicates
    stats = agreement_with_tape_preds(df, preds)
    assert stats["n_compared"] == CORA_NODES
    assert stats["top1_agreement"] >= 0.985, stats
    assert stats["n_disagree"] == stats["n_compared"] - stats["n_agree"]
    assert stats["n_parsed_empty"] == response_summary(df)["n_no_class"]
    assert stats["n_no_answer"] == 0
    assert len(stats["disagree_examples"]) <= 10
    assert stats["ranking_agreement"] >= 0.97, stats


@needs_cora
def test_cora_zero_shot_accuracy(cora_import, cora_labels):
    df, _ = cora_import
    preds = read_tape_preds(CORA / "gpt_preds" / "cora.csv", CORA_NODES)
    tape_acc = float(np.mean([p[0] == y for p, y in zip(preds, cora_labels)]))
    assert tape_acc == pytest.approx(0.6769, abs=5e-5)  # checks node order and labels
    assert replay_top1_accuracy(df, cora_labels) == pytest.approx(0.6769, abs=0.005)


@needs_cora
def test_cora_ranked_matrix(cora_import):
    df, _ = cora_import
    mat = ranked_matrix(df, CORA_NODES, 3)
    assert mat.shape == (CORA_NODES, 3) and mat.dtype == np.int64
    assert mat[0].tolist() == [4, 0, 0]  # Probabilistic_Methods (3) shifted by +1
    assert mat.min() >= 0 and mat.max() <= len(CORA_CLASSES)


def _write_completion(path: Path, content: str, **extra) -> None:
    obj = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1682186227,
        "model": "gpt-3.5-turbo-0301",
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        "choices": [
            {"message": {"role": "assistant", "content": content},
             "finish_reason": "stop", "index": 0}
        ],
        **extra,
    }
    path.write_text(json.dumps(obj))


@pytest.fixture
def toy_dir(tmp_path) -> Path:
    d = tmp_path / "toy" / "gpt_responses" / "Toy"
    d.mkdir(parents=True)
    _write_completion(d / "0.json", "Theory, Neural Networks. \n\nExplanation: bounds.")
    _write_completion(d / "1.json", "This paper does not belong to any sub-category.")
    # 2.json missing
    (d / "3.json").write_text(json.dumps({"error": {"message": "rate limited"}}))
    return d


def test_import_toy_directory(toy_dir):
    df = import_tape_responses(toy_dir, CORA_CLASSES, 4, prompt_version="tape-v1")
    validate_responses(df, 4, 7, str(toy_dir))
    rows = df.rows(named=True)
    assert rows[0]["ranked_labels"] == [6, 2] and rows[0]["explanation"] == "bounds."
    assert rows[0]["source"] == "replay:gpt_responses/Toy/0.json"
    assert rows[1]["status"] == "ok" and rows[1]["ranked_labels"] == []
    assert rows[2]["status"] == "failed"
    assert rows[2]["error"] == f"missing file {toy_dir / '2.json'}"
    assert rows[2]["model"] == "gpt-3.5-turbo-0301"  # inferred from the files read
    assert rows[3]["status"] == "failed" and "rate limited" in rows[3]["error"]
    assert set(df["prompt_version"].to_list()) == {"tape-v1"}


def test_import_subgraph_file_index(toy_dir):
    df = import_tape_responses(toy_dir, CORA_CLASSES, 2, file_index=[3, 0])
    assert df["node_id"].to_list() == [0, 1]
    assert df["status"].to_list() == ["failed", "ok"]
    assert df["source"].to_list()[1] == "replay:gpt_responses/Toy/0.json"
    assert df["ranked_labels"].to_list()[1] == [6, 2]
    with pytest.raises(ValueError, match="file_index"):
        import_tape_responses(toy_dir, CORA_CLASSES, 3, file_index=[0])


def test_import_malformed_json_names_file(toy_dir):
    bad = toy_dir / "2.json"
    bad.write_text('{"choices": [')
    with pytest.raises(ResponseError, match="2.json: malformed JSON"):
        import_tape_responses(toy_dir, CORA_CLASSES, 4)


def test_import_without_content_names_file(toy_dir):
    (toy_dir / "2.json").write_text(json.dumps({"choices": []}))
    with pytest.raises(ResponseError, match="2.json: no choices"):
        import_tape_responses(toy_dir, CORA_CLASSES, 4)


def test_import_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        import_tape_responses(tmp_path / "absent", CORA_CLASSES, 3)


def test_read_tape_preds(tmp_path):
    csv = tmp_path / "toy.csv"
    csv.write_text("3\n4,3,4\n\n6,0\n")
    assert read_tape_preds(csv, 4) == [[3], [4, 3, 4], [], [6, 0]]
    with pytest.raises(ResponseError, match="toy.csv: 4 lines, expected 5"):
        read_tape_preds(csv, 5)
    csv.write_text("3\n4,x\n")
    with pytest.raises(ResponseError, match="toy.csv: line 2: not a list of integers"):
        read_tape_preds(csv, 2)
    csv.write_text("3\n9\n")
    with pytest.raises(ResponseError, match="line 2: class index outside 0..6"):
        read_tape_preds(csv, 2, num_classes=7)


def _toy_responses(rankings):
    return responses_from_records(
        [
            {"node_id": i, "model": "m", "status": "ok", "raw_text": "x", "ranked_labels": r,
             "explanation": "", "source": "test"}
            for i, r in enumerate(rankings)
            if r is not None
        ]
    )


def test_agreement_and_accuracy_on_toy_rankings():
    df = _toy_responses([[1, 2], [0], [], None, [3]])
    preds = [[1, 2, 1], [2], [4], [0], []]
    stats = agreement_with_tape_preds(df, preds)
    assert stats["n_compared"] == 4  # node 4 has an empty csv line
    assert stats["n_agree"] == 1 and stats["n_disagree"] == 3
    assert stats["top1_agreement"] == pytest.approx(0.25)
    assert stats["n_parsed_empty"] == 1 and stats["n_no_answer"] == 1
    assert stats["n_csv_empty"] == 1
    assert stats["disagree_examples"] == [1, 2, 3]
    assert stats["ranking_agreement"] == pytest.approx(1 / 5)  # node 0: [1, 2] == dedup
    labels = np.array([1, 0, 2, 0, 1])
    assert replay_top1_accuracy(df, labels) == pytest.approx(2 / 5)
    assert replay_top1_accuracy(df.filter(pl.col("node_id") > 10), labels) == 0.0
