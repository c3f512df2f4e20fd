"""The low-label split (Planetoid's regime: 20 train nodes per class, 500 val, 1,000 test) on
real Cora: sizes, per-class counts, determinism, lineage keys, and the report's wording."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from tag_pipeline.config import DatasetConfig, LowLabelSplitConfig
from tag_pipeline.datasets import graph_content_key, graph_key, load_dataset, materialize_graph, split_key
from tag_pipeline.datasets.base import DatasetError, low_label_split
from tag_pipeline.datasets.cora import load_cora
from tag_pipeline.leaderboard import render_leaderboard
from tag_pipeline.report import metrics_frame, render_report


@pytest.fixture(scope="module")
def cora(shared_data):
    return load_cora(shared_data / "cora")


def test_cora_low_label_sizes_and_classes(cora):
    split = low_label_split(cora.labels, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (140, 500, 1000)
    assert np.bincount(cora.labels[split.train], minlength=7).tolist() == [20] * 7
    parts = [set(split.train.tolist()), set(split.val.tolist()), set(split.test.tolist())]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    for part in (split.train, split.val, split.test):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)


def test_same_seed_same_split_other_seed_other_split_global_rng_untouched(cora):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = low_label_split(cora.labels, seed=1)
    after = torch.rand(3)
    assert torch.equal(before, after)  # the caller's torch random stream is not consumed
    b = low_label_split(cora.labels, seed=1)
    c = low_label_split(cora.labels, seed=2)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
    assert not np.array_equal(a.train, c.train)


def test_a_small_class_gives_all_its_nodes_and_too_few_nodes_is_named():
    labels = np.array([0] * 30 + [1] * 5 + [2] * 30)
    split = low_label_split(labels, seed=0, train_per_class=10, num_val=20, num_test=10)
    assert np.bincount(labels[split.train]).tolist() == [10, 5, 10]
    with pytest.raises(DatasetError, match=r"seed 3: 65 nodes leave 40 after 25 train nodes.*num_val 30 \+ num_test 20"):
        low_label_split(labels, seed=3, train_per_class=10, num_val=30, num_test=20)


def test_load_dataset_low_label_on_a_slice(shared_data):
    cfg = DatasetConfig(root=shared_data, subset=300, split="low_label",
                        low_label=LowLabelSplitConfig(train_per_class=5, num_val=60, num_test=120))
    graph = load_dataset(cfg, [0, 1])
    for seed in (0, 1):
        s = graph.splits[seed]
        assert (len(s.val), len(s.test)) == (60, 120)
        assert np.bincount(graph.labels[s.train], minlength=7).max() <= 5
    with pytest.raises(DatasetError, match="lower dataset.low_label"):
        load_dataset(DatasetConfig(root=shared_data, subset=300, split="low_label"), [0])


def test_lineage_low_label_shares_content_not_splits(shared_data, tmp_path):
    standard = DatasetConfig(root=shared_data, subset=300)
    low = standard.model_copy(update={"split": "low_label",
                                      "low_label": LowLabelSplitConfig(train_per_class=5, num_val=60, num_test=120)})
    a, b = materialize_graph(standard, [0], tmp_path), materialize_graph(low, [0], tmp_path)
    assert a != b
    assert graph_content_key(a) == graph_content_key(b)  # LLM answers, frozen features reused
    assert split_key(a, 0) != split_key(b, 0)  # everything trained on labels is apart
    bigger = low.model_copy(update={"low_label": LowLabelSplitConfig(train_per_class=6, num_val=60, num_test=120)})
    assert graph_key(bigger, [0]) != graph_key(low, [0])


def test_standard_graph_key_predates_the_split_field(shared_data):
    # The key of full Cora, seeds 0-3, before `split` existed: the lake's graphs must not move.
    assert graph_key(DatasetConfig(root=shared_data), [0, 1, 2, 3]) == "2af372011d3b2210"


def test_report_and_leaderboard_name_the_split_and_drop_published_columns():
    runs = [{"model": "gcn", "feature": "TA", "seed": 0, "val_acc": 0.7, "test_acc": 0.69, "path": "x"}]
    metrics = metrics_frame("cora", runs)
    label = DatasetConfig(split="low_label").split_label
    assert label == "low-label split: 20 train nodes per class, 500 val, 1,000 test"
    standard = render_report("cora", metrics, {}, {})
    low = render_report("cora", metrics, {}, {}, split_label=label)
    assert "TAPE paper h_TAPE" in standard and "TAPE paper h_TAPE" not in low
    assert f"# TAPE on cora ({label})" in low
    board = pl.DataFrame({"method": ["tape"], "model": ["gcn"], "variant": ["h_TAPE"], "test_mean": [0.7],
                          "test_std": [0.0], "val_mean": [0.7], "seeds": [1], "wall_s": [1.0],
                          "llm_tokens": [None], "infer_ms_per_node": [None]},
                         schema_overrides={"llm_tokens": pl.Int64, "infer_ms_per_node": pl.Float64})
    assert "Published" in render_leaderboard("cora", board, [0])
    md = render_leaderboard("cora", board, [0], split_label=label)
    assert "Published" not in md and label in md
