"""Tests for tag_pipeline.train: full-batch training, early stopping, predictions table."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from tag_pipeline.config import GNNConfig
from tag_pipeline.datasets.base import Split, tape_random_split
from tag_pipeline.models import build_model
from tag_pipeline.train import (
    PREDICTIONS_FILE,
    TrainResult,
    accuracy,
    predictions_frame,
    read_logits,
    train_node_classifier,
    training_key,
)

N, C, F = 150, 3, 8
CFG = GNNConfig(num_layers=2, hidden=16, dropout=0.1, lr=0.05, weight_decay=0.0, epochs=60, patience=60)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _toy_graph(seed: int = 0):
    """150 nodes, 3 classes; noisy class-centroid features; mostly intra-class edges."""
    rng = np.random.default_rng(seed)
    y = np.arange(N) % C
    centroids = np.eye(C, F) * 3.0
    x = centroids[y] + rng.normal(0.0, 0.6, size=(N, F))
    src, dst = [], []
    for i in range(N):
        same = np.flatnonzero((y == y[i]) & (np.arange(N) != i))
        for j in rng.choice(same, size=3, replace=False):
            src += [i, j]
            dst += [j, i]
    for _ in range(N // 10):  # a little heterophily
        i, j = rng.choice(N, size=2, replace=False)
        src += [i, j]
        dst += [j, i]
    edge_index = torch.tensor(np.stack([src, dst]), dtype=torch.int64)
    return (
        torch.tensor(x, dtype=torch.float32),
        edge_index,
        torch.tensor(y, dtype=torch.int64),
        tape_random_split(N, 0),
    )


@pytest.fixture(scope="module")
def toy():
    return _toy_graph()


def _train(name, toy, cfg=CFG, seed=0, **kw):
    x, edge_index, y, split = toy
    return train_node_classifier(name, x, edge_index, y, split, cfg, seed=seed, num_classes=C, **kw)


# --- accuracy ------------------------------------------------------------------------------


def test_accuracy_on_hand_numbers():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.1, 0.2]])
    y = torch.tensor([0, 1, 1, 1])
    assert accuracy(logits, y, torch.tensor([0, 1, 2, 3])) == pytest.approx(0.75)
    assert accuracy(logits, y, torch.tensor([2])) == 0.0
    assert accuracy(logits, y, torch.tensor([0, 1])) == 1.0
    assert accuracy(logits, y, torch.tensor([], dtype=torch.int64)) == 0.0


# --- train_node_classifier -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "gcn", "sage"])
def test_models_learn_the_toy_task(toy, name):
    x, edge_index, y, split = toy
    res = _train(name, toy)
    assert isinstance(res, TrainResult)
    assert res.logits.shape == (N, C) and res.logits.dtype == torch.float32
    assert res.test_acc >= 0.9, res
    assert res.val_acc >= 0.9 and res.train_acc >= 0.9
    assert 1 <= res.best_epoch <= res.epochs_run <= CFG.epochs
    assert res.seconds > 0
    # reported accuracies are those of the returned logits
    assert res.val_acc == accuracy(res.logits, y, torch.from_numpy(split.val))
    assert res.test_acc == accuracy(res.logits, y, torch.from_numpy(split.test))
    assert res.train_acc == accuracy(res.logits, y, torch.from_numpy(split.train))


@pytest.mark.parametrize("name", ["mlp", "gcn"])
def test_state_dict_reproduces_best_logits(toy, name):
    x, edge_index, _, _ = toy
    res = _train(name, toy)
    fresh = build_model(name, F, C, hidden=CFG.hidden, num_layers=CFG.num_layers, dropout=CFG.dropout)
    fresh.load_state_dict(res.state_dict)
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(x, edge_index), res.logits, atol=1e-5)


def test_early_stopping_stops_patience_epochs_after_best(toy):
    cfg = CFG.model_copy(update={"epochs": 200, "patience": 3})
    res = _train("gcn", toy, cfg=cfg)
    assert res.epochs_run < cfg.epochs
    assert res.epochs_run == res.best_epoch + cfg.patience


def test_no_early_stop_runs_all_epochs(toy):
    cfg = CFG.model_copy(update={"epochs": 15, "patience": 100})
    res = _train("mlp", toy, cfg=cfg)
    assert res.epochs_run == 15 and res.best_epoch <= 15


def test_ties_keep_the_earliest_epoch(toy):
    # a learning rate this small leaves the predictions unchanged: every epoch ties epoch 1
    cfg = CFG.model_copy(update={"lr": 1e-12, "dropout": 0.0, "epochs": 50, "patience": 4})
    res = _train("mlp", toy, cfg=cfg)
    assert res.best_epoch == 1
    assert res.epochs_run == 1 + cfg.patience


def test_same_seed_same_logits_different_seed_differs(toy):
    cfg = CFG.model_copy(update={"epochs": 20, "patience": 20})
    a, b, c = (_train("sage", toy, cfg=cfg, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.logits, b.logits)
    assert a.best_epoch == b.best_epoch and a.val_acc == b.val_acc
    assert not torch.equal(a.logits, c.logits)


def test_trains_on_prediction_feature(toy):
    """TAPE's P input: [N, k] int64 ranked labels + 1 (0 = padding) through the encoder."""
    _, edge_index, y, split = toy
    rng = np.random.default_rng(1)
    p = np.zeros((N, 2), dtype=np.int64)
    p[:, 0] = y.numpy() + 1  # the LLM's first guess is right
    p[::4, 1] = rng.integers(1, C + 1, size=len(p[::4]))  # some second guesses, rest padding
    res = train_node_classifier(
        "mlp", torch.from_numpy(p), edge_index, y, split, CFG.model_copy(update={"epochs": 40}),
        seed=0, num_classes=C, topk=2,
    )
    assert res.logits.shape == (N, C)
    assert res.test_acc == 1.0
    assert res.state_dict["encoder.embedding.weight"].shape == (C + 1, CFG.hidden)
    assert torch.equal(res.state_dict["encoder.embedding.weight"][0], torch.zeros(CFG.hidden))


# --- predictions_frame / read_logits -------------------------------------------------------


def test_predictions_frame_schema_and_content():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 1.5, 0.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([1, 0, 1, 2, 0])
    split = Split(
        train=np.array([0, 3], dtype=np.int64), val=np.array([1], dtype=np.int64), test=np.array([2], dtype=np.int64)
    )
    df = predictions_frame(logits, y, split)
    assert df.columns == ["node_id", "split", "label", "pred", "logits"]
    assert df.schema["node_id"] == pl.Int64 and df.schema["label"] == pl.Int64
    assert df.schema["pred"] == pl.Int64 and df.schema["split"] == pl.Utf8
    assert df.schema["logits"] in (pl.Array(pl.Float32, C), pl.List(pl.Float32))
    assert df["node_id"].to_list() == [0, 1, 2, 3, 4]
    assert df["split"].to_list() == ["train", "val", "test", "train", ""]  # node 4: in no part
    assert df["label"].to_list() == [1, 0, 1, 2, 0]
    assert df["pred"].to_list() == [1, 0, 2, 1, 0]
    assert np.allclose(np.stack(df["logits"].to_list()), logits.numpy())


def test_predictions_frame_split_labels_on_tape_split(toy):
    _, _, y, split = toy
    logits = torch.randn(N, C)
    df = predictions_frame(logits, y, split)
    counts = dict(df.group_by("split").len().iter_rows())
    assert counts == {"train": 90, "val": 30, "test": 30}
    for part in ("train", "val", "test"):
        assert np.array_equal(df.filter(pl.col("split") == part)["node_id"].to_numpy(), split.part(part))


def test_read_logits_round_trip_in_node_order(tmp_path, toy):
    _, _, y, split = toy
    logits = torch.randn(N, C)
    df = predictions_frame(logits, y, split)
    df.sample(fraction=1.0, shuffle=True, seed=0).write_parquet(tmp_path / PREDICTIONS_FILE)
    back = read_logits(tmp_path)
    assert back.dtype == torch.float32 and back.shape == (N, C)
    assert torch.equal(back, logits)


def test_training_key_counts_only_this_models_settings():
    base = GNNConfig(num_layers={"mlp": 3, "gcn": 2, "sage": 3})
    key = training_key("g", "TA-x", "gcn", 0, base)
    # another model's depth, threads and adjacency change nothing for GCN
    assert key == training_key("g", "TA-x", "gcn", 0, base.model_copy(update={"num_layers": {"gcn": 2, "revgat": 3}}))
    assert key == training_key("g", "TA-x", "gcn", 0, base.model_copy(update={"threads": 2, "adjacency": "csr"}))
    assert key == training_key("g", "TA-x", "gcn", 0, base.model_copy(update={"num_layers": 2}))
    # its own depth, the shared settings, the inputs, the model and the seed do
    assert key != training_key("g", "TA-x", "gcn", 0, base.model_copy(update={"num_layers": {"gcn": 3}}))
    assert key != training_key("g", "TA-x", "gcn", 0, base.model_copy(update={"dropout": 0.1}))
    assert len({key, training_key("h", "TA-x", "gcn", 0, base), training_key("g", "E-x", "gcn", 0, base),
                training_key("g", "TA-x", "sage", 0, base), training_key("g", "TA-x", "gcn", 1, base)}) == 5


def test_training_on_an_empty_validation_split_names_it(shared_data, tmp_path):
    """The first nodes of ogbn-arxiv are all train nodes (official split by year): a graph of
    them is fine for the LLM and embedding stages, but training on it names the empty part."""
    from tag_pipeline.config import DatasetConfig
    from tag_pipeline.datasets import DatasetError, materialize_graph
    from tag_pipeline.train import materialize_training_run

    graph = materialize_graph(DatasetConfig(name="ogbn-arxiv", root=shared_data, subset=20), [0], tmp_path)
    with pytest.raises(DatasetError, match=r"'ogbn-arxiv', seed 0: the val split is empty \(train 20, val 0, test 0"):
        materialize_training_run(graph, tmp_path / "no-features", "P", "mlp", 0, GNNConfig(), tmp_path)
    assert not (tmp_path / "ogbn-arxiv" / "train").exists() or not any((tmp_path / "ogbn-arxiv" / "train").iterdir())
