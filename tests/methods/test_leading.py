"""LEADING's pieces: the implicit layer, the neighbour cache, labels outside the train split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tag_pipeline.methods.leading.config import LeadingMethod
from tag_pipeline.methods.leading.model import (
    ImplicitPropagation,
    NeighbourCache,
    fixed_point_direct,
    normalized_adjacency,
    train_leading,
)


def _graph(n=30, e=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    return torch.cat([ei, ei.flip(0)], 1)


@pytest.mark.parametrize("teleport", [0.1, 0.5])
def test_implicit_layer_matches_the_direct_solve_and_its_gradient(teleport):
    n = 30
    a_hat = normalized_adjacency(_graph(n), n)
    fx = torch.randn(n, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    prop = ImplicitPropagation(a_hat, teleport, iters=300)
    z = prop(fx)
    direct = fixed_point_direct(a_hat.to_dense(), fx, teleport)
    assert torch.allclose(z, direct, atol=1e-5)
    w = torch.randn(n, 4)
    (g_implicit,) = torch.autograd.grad((z * w).sum(), fx)
    (g_direct,) = torch.autograd.grad((direct * w).sum(), fx)
    assert torch.allclose(g_implicit, g_direct, atol=1e-5)


def test_implicit_layer_warm_start_converges_with_few_iterations():
    n = 30
    a_hat = normalized_adjacency(_graph(n), n)
    fx = torch.randn(n, 3)
    prop = ImplicitPropagation(a_hat, 0.1, iters=5)
    errors = []
    for _ in range(6):  # the same input, each pass starting from the last solution
        errors.append((prop(fx) - fixed_point_direct(a_hat.to_dense(), fx, 0.1)).abs().max().item())
    assert errors[-1] < errors[0] / 10


def test_neighbour_cache_is_written_without_gradients_on_schedule():
    cache = NeighbourCache(every=2)
    h = torch.zeros(4, 2)
    for epoch in range(1, 6):
        cache.refresh(h + epoch, epoch)
    assert cache.refreshed_at == [1, 3, 5] and cache.h[0, 0].item() == 5.0
    with pytest.raises(ValueError, match="without gradients"):
        cache.refresh(torch.zeros(4, 2, requires_grad=True), 7)
    z = torch.ones(1, 2, requires_grad=True)
    mixed = cache.mix(torch.tensor([2]), z)
    mixed.sum().backward()
    assert z.grad is not None and not cache.h.requires_grad and mixed[2].tolist() == [1.0, 1.0]


@pytest.mark.slow
def test_leading_trains_and_no_label_outside_the_train_split_matters(shared_data, one_torch_thread):
    from tag_pipeline.config import DatasetConfig
    from tag_pipeline.datasets import load_dataset

    graph = load_dataset(DatasetConfig(root=shared_data, subset=60), [0])
    split = graph.splits[0]
    cfg = LeadingMethod(max_length=16, epochs=2, batch_size=8, trainable_layers=1)
    a = train_leading(graph.text, graph.labels, graph.edge_index, split, graph.num_classes, cfg, seed=0)
    shuffled = graph.labels.copy()
    others = np.setdiff1d(np.arange(graph.num_nodes), split.train)
    shuffled[others] = (shuffled[others] + 1) % graph.num_classes
    b = train_leading(graph.text, shuffled, graph.edge_index, split, graph.num_classes, cfg, seed=0)
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["logits"], b["logits"])
    assert a["cache_refreshes"] == [1, 2] and a["x"].shape == (60, 384) and a["logits"].shape == (60, 7)


@pytest.mark.slow
def test_naive_end_to_end_encodes_neighbours_with_gradients(shared_data, one_torch_thread, monkeypatch):
    from tag_pipeline import finetune
    from tag_pipeline.config import DatasetConfig
    from tag_pipeline.datasets import load_dataset

    graph = load_dataset(DatasetConfig(root=shared_data, subset=60), [0])
    encoded_with_grad = []
    real = finetune.MeanPoolClassifier.embed

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if torch.is_grad_enabled():
            encoded_with_grad.append(out.shape[0])
        return out

    monkeypatch.setattr(finetune.MeanPoolClassifier, "embed", spy)
    sizes = {}
    for mode in ("cache", "gradient"):
        encoded_with_grad.clear()
        cfg = LeadingMethod(max_length=16, epochs=1, batch_size=8, trainable_layers=1, neighbours=mode)
        train_leading(graph.text, graph.labels, graph.edge_index, graph.splits[0], graph.num_classes, cfg, seed=0)
        sizes[mode] = sum(encoded_with_grad)
    assert sizes["cache"] == len(graph.splits[0].train)  # each target once per epoch, no neighbour
    assert sizes["gradient"] > sizes["cache"]


@pytest.mark.slow
def test_warmup_schedule_is_followed_and_its_absence_keeps_old_keys(shared_data, one_torch_thread):
    from tag_pipeline.config import DatasetConfig
    from tag_pipeline.datasets import load_dataset

    assert "warmup_ratio" not in LeadingMethod().key_fields()  # keys of runs before the lever stay put
    assert LeadingMethod(warmup_ratio=0.5).key_fields()["warmup_ratio"] == 0.5
    graph = load_dataset(DatasetConfig(root=shared_data, subset=60), [0])
    base = dict(max_length=16, epochs=2, batch_size=8, trainable_layers=1)
    flat = train_leading(graph.text, graph.labels, graph.edge_index, graph.splits[0], graph.num_classes,
                         LeadingMethod(**base), seed=0)
    warm = train_leading(graph.text, graph.labels, graph.edge_index, graph.splits[0], graph.num_classes,
                         LeadingMethod(**base, warmup_ratio=0.5), seed=0)
    assert [h["lr"] for h in flat["history"]] == [1e-4, 1e-4]
    # half the steps warm up to the peak (end of epoch 1), the rest decay to 0
    assert warm["history"][0]["lr"] == pytest.approx(1e-4) and warm["history"][1]["lr"] == 0.0


# --- the stage in the lake --------------------------------------------------------------------


def test_default_keys_are_those_of_before_the_stage_refactor(stand_in_digests):
    from pathlib import Path

    from tag_pipeline.methods.leading.stage import LEADING_STAGE, leading_path

    # computed with lake.config_hash(LEADING_STAGE_VERSION, ...) and lake.artifact_dir before LEADING_STAGE existed
    graph, responses = Path("/lake/cora/graph/abc"), "/lake/cora/llm/replay-x"
    pins = [("TA", LeadingMethod(), "TA-s1-373f1f4b47c5c7e6"), ("E", LeadingMethod(), "E-s1-405f3c0bda994a3b"),
            ("TA", LeadingMethod(warmup_ratio=0.1), "TA-s1-c08fb6595f37ca40"),
            ("E", LeadingMethod(head="gcn"), "E-s1-6d1517f860bd0e41")]
    for feature, cfg, name in pins:
        assert leading_path(graph, responses, feature, 1, cfg, "/lake") == Path("/lake/cora/leading") / name
    # threads and the GNNs trained beside are execution and other artifacts: the same key
    same = leading_path(graph, responses, "E", 1, LeadingMethod(threads=2, gnns=False), "/lake")
    assert same == leading_path(graph, responses, "E", 1, LeadingMethod(), "/lake")
    assert LEADING_STAGE.name == "leading" and LEADING_STAGE.version == 1


@pytest.mark.slow
def test_a_lake_hit_returns_what_the_build_returned(shared_data, tmp_path, one_torch_thread):
    from pathlib import Path

    from tag_pipeline import lake
    from tag_pipeline.config import DatasetConfig
    from tag_pipeline.datasets import materialize_graph
    from tag_pipeline.features.store import read_feature
    from tag_pipeline.methods.leading.stage import leading_path, materialize_leading

    root = tmp_path / "lake"
    g = materialize_graph(DatasetConfig(root=shared_data, subset=40), [0], root)
    cfg = LeadingMethod(features=["TA"], max_length=16, epochs=1, batch_size=8, trainable_layers=1)
    built = materialize_leading(g, None, "TA", 0, cfg, root)
    path = Path(built["path"])
    assert path == leading_path(g, None, "TA", 0, cfg, root) == lake.locate(materialize_leading, g, None, "TA", 0, cfg, root)
    assert (built["method"], built["variant"], built["best_epoch"]) == ("leading", "TA", 1)
    assert lake.read_artifact(path).manifest["stage"] == "leading" and read_feature(path, 40).shape == (40, 384)
    assert materialize_leading(g, None, "TA", 0, cfg, root) == built
