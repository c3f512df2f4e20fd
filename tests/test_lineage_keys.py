"""Lineage keys across seed sets: what does not learn from labels is shared, what does is not.

A graph artifact holds the graph and the splits of the seeds it was asked for, so its own key
covers the seeds. The LLM answers and the frozen TA/E/P features depend only on the graph's
content: a run with seeds [0] must reuse the artifacts of a run with seeds [0, 1] (on
ogbn-arxiv, hours of embedding). Fine-tuning and training learn from one seed's train labels:
they are keyed by that seed's split, shared between seed sets that hold the same split, and
apart for another split.
"""

from __future__ import annotations

import pytest

from tag_pipeline import lake
from tag_pipeline.config import DatasetConfig, GNNConfig, LLMConfig
from tag_pipeline.datasets import graph_content_key, materialize_graph, split_key
from tag_pipeline.features.stage import materialize_prediction_feature
from tag_pipeline.finetune import finetune_key
from tag_pipeline.llm.stage import materialize_responses
from tag_pipeline.train import materialize_training_run

N = 150

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def two_seed_sets(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    cfg = DatasetConfig(root=shared_data, subset=N)
    one = materialize_graph(cfg, [0], root)
    two = materialize_graph(cfg, [0, 1], root)
    return {"root": root, "cfg": cfg, "one": one, "two": two}


def test_graph_artifacts_differ_but_share_content(two_seed_sets):
    one, two = two_seed_sets["one"], two_seed_sets["two"]
    assert one != two  # each holds its own seeds' splits
    assert graph_content_key(one) == graph_content_key(two)
    assert split_key(one, 0) == split_key(two, 0)
    assert split_key(two, 0) != split_key(two, 1)
    other = materialize_graph(DatasetConfig(root=two_seed_sets["cfg"].root, subset=N - 1), [0], two_seed_sets["root"])
    assert graph_content_key(other) != graph_content_key(one)


def test_split_key_for_a_seed_the_graph_lacks_names_the_seeds(two_seed_sets):
    with pytest.raises(ValueError, match=r"no split for seed 3 \(seeds with a split: \[0\]\)"):
        split_key(two_seed_sets["one"], 3)


def test_llm_answers_and_p_feature_are_shared_between_seed_sets(two_seed_sets):
    root, cfg = two_seed_sets["root"], two_seed_sets["cfg"]
    llm_one = materialize_responses(two_seed_sets["one"], cfg, LLMConfig(), root)
    created = lake.read_artifact(llm_one).manifest["created_unix"]
    llm_two = materialize_responses(two_seed_sets["two"], cfg, LLMConfig(), root)
    assert llm_two == llm_one
    assert lake.read_artifact(llm_two).manifest["created_unix"] == created  # not rewritten
    p_one = materialize_prediction_feature(two_seed_sets["one"], llm_one, 3, root)
    assert materialize_prediction_feature(two_seed_sets["two"], llm_two, 3, root) == p_one
    assert len([d for d in (root / "cora" / "llm").iterdir() if not d.name.startswith(".")]) == 1


def test_training_is_keyed_by_the_seeds_split(two_seed_sets):
    root, cfg = two_seed_sets["root"], two_seed_sets["cfg"]
    llm = materialize_responses(two_seed_sets["one"], cfg, LLMConfig(), root)
    p = materialize_prediction_feature(two_seed_sets["one"], llm, 3, root)
    gnn = GNNConfig(epochs=3, patience=3, hidden=8)
    run_one = materialize_training_run(two_seed_sets["one"], p, "P", "mlp", 0, gnn, root)
    run_two = materialize_training_run(two_seed_sets["two"], p, "P", "mlp", 0, gnn, root)
    assert run_two["path"] == run_one["path"]  # same split: the run of seeds [0] is reused
    seed_1 = materialize_training_run(two_seed_sets["two"], p, "P", "mlp", 1, gnn, root)
    assert seed_1["path"] != run_one["path"]
    with pytest.raises(ValueError, match="no split for seed 1"):
        materialize_training_run(two_seed_sets["one"], p, "P", "mlp", 1, gnn, root)


def test_finetune_key_depends_on_the_split():
    from tag_pipeline.config import FinetuneConfig

    cfg = FinetuneConfig()
    assert finetune_key("g", "TA", 0, cfg, split="a") != finetune_key("g", "TA", 0, cfg, split="b")
    assert finetune_key("g", "TA", 0, cfg, split="a") == finetune_key("g", "TA", 0, cfg, split="a")
