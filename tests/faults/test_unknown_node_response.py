"""An LLM response for a node the graph does not have: rejected, naming file and row.

A responses artifact that is well-formed (its manifest verifies) but holds an answer for node
``N`` of an ``N``-node graph, as a buggy backend or a hand-edited table would. The stages that
read it (P and E features) must refuse it before writing anything; the LLM stage should refuse
to commit it in the first place.
"""

from __future__ import annotations

import re

import polars as pl
import pytest

from tag_pipeline import lake
from tag_pipeline.config import LLMConfig
from tag_pipeline.features.stage import materialize_prediction_feature, materialize_text_feature
from tag_pipeline.llm.stage import RESPONSES_FILE, materialize_responses
from tag_pipeline.llm.store import (
    ResponseError,
    read_responses,
    responses_from_records,
    validate_responses,
    write_responses,
)


def _with_unknown_node(df: pl.DataFrame, n: int) -> pl.DataFrame:
    """``df`` plus a copy of node 0's answer filed under node ``n`` (one past the last)."""
    rogue = df.filter(pl.col("node_id") == 0).with_columns(pl.lit(n, dtype=pl.Int64).alias("node_id"))
    return pl.concat([df, rogue])


@pytest.fixture
def rogue_responses(reference, fresh_lake, kit):
    """``(lake, graph, path)``: a committed responses artifact with an answer for node N."""
    lake_root, graph = fresh_lake
    good = materialize_responses(graph, reference.dataset, LLMConfig(), lake_root)
    df = read_responses(good / RESPONSES_FILE, kit.NUM_NODES, 7)
    path = good.with_name("replay-rogue")
    with lake.write_artifact(path, stage="llm", rows=df.height + 1) as tmp:
        write_responses(_with_unknown_node(df, kit.NUM_NODES), tmp / RESPONSES_FILE)
    lake.read_artifact(path)  # well-formed: only its content is wrong
    return lake_root, graph, path


def _expected(path, n):
    # write_responses sorts by (model, node_id): the rogue answer is the last row, row n
    return re.escape(f"{path / RESPONSES_FILE}: row {n}: node_id {n} out of range 0..{n - 1}")


def test_p_feature_rejects_unknown_node(rogue_responses, kit):
    lake_root, graph, path = rogue_responses
    with pytest.raises(ResponseError, match=_expected(path, kit.NUM_NODES)):
        materialize_prediction_feature(graph, path, 5, lake_root)
    assert not (lake_root / "cora" / "features").exists()


def test_e_feature_rejects_unknown_node_before_embedding(rogue_responses, encoder_calls, kit):
    lake_root, graph, path = rogue_responses
    with pytest.raises(ResponseError, match=_expected(path, kit.NUM_NODES)):
        materialize_text_feature(graph, path, "E", kit.LM, lake_root, shard_size=kit.SHARD, progress=False)
    assert encoder_calls == []
    assert not (lake_root / "cora" / "features").exists()  # no artifact, no shard folder


def test_validate_responses_names_file_and_row():
    rows = [
        {"node_id": i, "model": "m", "status": "ok", "raw_text": "x", "ranked_labels": [0], "explanation": "",
         "source": "test"}
        for i in (0, 1, 7, 2)
    ]
    with pytest.raises(ResponseError, match=re.escape("answers.parquet: row 2: node_id 7 out of range 0..2")):
        validate_responses(responses_from_records(rows), 3, 2, "answers.parquet")


@pytest.fixture
def online_stage_with_unknown_node(reference, fresh_lake, kit, monkeypatch):
    """The LLM stage, backend ``online``, whose (patched) backend answers for node N too."""
    import tag_pipeline.llm.stage as llm_stage

    lake_root, graph = fresh_lake
    good = materialize_responses(graph, reference.dataset, LLMConfig(), lake_root)
    df = _with_unknown_node(read_responses(good / RESPONSES_FILE, kit.NUM_NODES, 7), kit.NUM_NODES)
    monkeypatch.setattr(llm_stage, "ask_llm", lambda graph, llm, progress=True: (df, {"calls": 0}))
    llm_dir = good.parent
    before = sorted(p.name for p in llm_dir.iterdir())

    def run():
        return materialize_responses(graph, reference.dataset, LLMConfig(backend="online"), lake_root)

    yield run
    assert sorted(p.name for p in llm_dir.iterdir()) == before  # nothing committed, whatever raised
    assert kit.temp_leftovers(lake_root) == []


def test_llm_stage_does_not_commit_unknown_node(online_stage_with_unknown_node):
    with pytest.raises(ValueError, match="node_id"):
        online_stage_with_unknown_node()


def test_llm_stage_rejects_unknown_node_naming_the_row(online_stage_with_unknown_node, kit):
    with pytest.raises(ResponseError, match=rf"row {kit.NUM_NODES}: node_id {kit.NUM_NODES} out of range"):
        online_stage_with_unknown_node()
