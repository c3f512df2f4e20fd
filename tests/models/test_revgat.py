"""Tests for tag_pipeline.models.revgat: RevGAT (grouped reversible GAT) on tiny graphs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GroupAddRev

from tag_pipeline.config import GNNConfig
from tag_pipeline.datasets.base import Split
from tag_pipeline.models import BUILDERS, NodeClassifier, PredictionEncoder, build_model, graph_operator
from tag_pipeline.models.revgat import RevGAT, RevGATBlock, build_revgat
from tag_pipeline.train import train_node_classifier

N, F_IN, C, HIDDEN = 40, 5, 3, 12  # HIDDEN = 2 groups x 2 heads (the default) x 3 channels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _graph(n: int = N, e: int = 160, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, F_IN, generator=g), torch.randint(0, n, (2, e), generator=g)


def _build(seed: int = 0, **kw) -> NodeClassifier:
    torch.manual_seed(seed)
    kw = {"hidden": HIDDEN, "num_layers": 3, "dropout": 0.5, **kw}
    return build_model("revgat", F_IN, C, **kw)


def _stored_activation_twin(model: NodeClassifier) -> NodeClassifier:
    """Same weights, but every GroupAddRev runs as plain autograd (activations stored)."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, GroupAddRev):
            module.disable = True
    return twin


def _grad_fn_names(t: torch.Tensor) -> set[str]:
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


# --- construction and forward --------------------------------------------------------------


def test_registered_beside_the_other_models():
    assert BUILDERS["revgat"] is build_revgat
    assert {"mlp", "gcn", "sage"} < set(BUILDERS)


@pytest.mark.parametrize(("num_layers", "blocks"), [(1, 1), (2, 1), (4, 3)])
def test_output_shape_dtype_and_architecture(num_layers, blocks):
    model = _build(num_layers=num_layers)
    assert isinstance(model, NodeClassifier) and model.uses_graph and model.encoder is None
    backbone = model.backbone
    assert isinstance(backbone, RevGAT)
    assert len(backbone.blocks) == blocks
    for rev in backbone.blocks:
        assert isinstance(rev, GroupAddRev) and rev.num_groups == 2 and not rev.disable
        for f in rev.convs:
            assert isinstance(f, RevGATBlock)
            assert isinstance(f.norm, torch.nn.BatchNorm1d) and f.norm.num_features == HIDDEN // 2
            conv = f.conv
            assert (conv.in_channels, conv.out_channels, conv.heads, conv.concat) == (6, 3, 2, True)
            assert conv.dropout == 0.0  # attention dropout would break the recomputation
    # the copies of a group's block are initialised independently
    w0, w1 = (f.conv.lin.weight for f in backbone.blocks[0].convs)
    assert not torch.equal(w0, w1)
    x, edge_index = _graph()
    for mode in ("train", "eval"):
        getattr(model, mode)()
        out = model(x, edge_index)
        assert out.shape == (N, C) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_float64_model_gives_float64_logits():
    model = _build().double().eval()
    x, edge_index = _graph()
    out = model(x.double(), edge_index)
    assert out.dtype == torch.float64 and out.shape == (N, C)


def test_outputs_depend_on_edges_and_eval_is_deterministic():
    model = _build().eval()
    x, edge_index = _graph()
    _, other = _graph(seed=1)
    a = model(x, edge_index)
    assert torch.equal(model(x, edge_index), a)
    assert not torch.allclose(model(x, other), a, atol=1e-4)
    # GATConv adds the self-loops: with no edges every node still sees itself, per node
    no_edges = torch.empty(2, 0, dtype=torch.int64)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model(x[perm], no_edges), model(x, no_edges)[perm], atol=1e-5)


def test_seeded_build_and_seeded_dropout_are_reproducible():
    a, b, c = _build(seed=3), _build(seed=3), _build(seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    x, edge_index = _graph()
    a.train()
    b.train()
    torch.manual_seed(11)
    ta = a(x, edge_index)
    torch.manual_seed(11)
    tb = b(x, edge_index)
    assert torch.equal(ta, tb)  # same seed -> same dropout mask -> same output
    torch.manual_seed(12)
    assert not torch.allclose(a(x, edge_index), ta)  # dropout is active in train mode


def test_gradients_reach_every_parameter():
    model = _build()
    x, edge_index = _graph()
    model.eval()
    model(x, edge_index).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
    # train mode (reversible backward): every gradient is there and finite; the biases that a
    # BatchNorm in train mode follows on every path (lin_in, each GATConv) get ~0 gradient,
    # since per-channel constants cancel in batch statistics, all others are non-zero
    model.zero_grad()
    model.train()
    model(x, edge_index).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name == "backbone.lin_in.bias" or name.endswith("conv.bias"):
            assert p.grad.abs().max() < 1e-5, name
        else:
            assert p.grad.abs().max() > 1e-6, name


# --- the reversible property ---------------------------------------------------------------


def test_reversible_backward_equals_stored_activation_autograd():
    """With dropout in train mode, the memory-saving backward (inputs rebuilt by inverting
    each block) gives the loss and gradients of plain autograd through the same blocks."""
    model = _build(num_layers=4, dropout=0.5)
    twin = _stored_activation_twin(model)
    x, edge_index = _graph()
    results = []
    for m in (model, twin):
        m.train()
        xin = x.clone().requires_grad_()
        torch.manual_seed(7)  # same dropout mask for both
        out = m(xin, edge_index)
        loss = F.cross_entropy(out, torch.arange(N) % C)
        names = _grad_fn_names(loss)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in m.named_parameters()}
        results.append((loss.detach(), out.detach(), xin.grad.clone(), grads, names))
    (loss_r, out_r, gx_r, g_r, names_r), (loss_p, out_p, gx_p, g_p, names_p) = results
    # the reversible path really ran as an invertible function, the twin as plain autograd
    assert "InvertibleFunctionBackward" in names_r and "InvertibleFunctionBackward" not in names_p
    assert torch.allclose(loss_r, loss_p, atol=1e-6)
    assert torch.allclose(out_r, out_p, atol=1e-6)
    assert torch.allclose(gx_r, gx_p, atol=1e-6) and gx_r.abs().max() > 0
    assert g_r.keys() == g_p.keys()
    for k in g_r:
        assert torch.allclose(g_r[k], g_p[k], atol=1e-6, rtol=1e-4), k


def test_one_dropout_mask_per_pass_shared_by_blocks_and_recomputation():
    p = 0.4
    model = _build(num_layers=4, dropout=p)  # 3 reversible blocks x 2 groups
    calls: dict[int, list[torch.Tensor | None]] = {}

    def record(group: int):
        def hook(module, args):
            calls.setdefault(group, []).append(args[2].clone() if len(args) > 2 else None)

        return hook

    for rev in model.backbone.blocks:
        for g, f in enumerate(rev.convs):
            f.register_forward_pre_hook(record(g))
    x, edge_index = _graph()
    model.train()
    model(x, edge_index).sum().backward()
    # each group's f runs 3 times per block: forward, inverse (rebuild input), recompute (grad)
    assert [len(calls[g]) for g in (0, 1)] == [9, 9]
    masks = {g: calls[g][0] for g in (0, 1)}
    for g in (0, 1):
        assert masks[g].shape == (N, HIDDEN // 2)
        assert ((masks[g] == 0) | torch.isclose(masks[g], torch.tensor(1 / (1 - p)))).all()
        assert (masks[g] == 0).any() and (masks[g] != 0).any()
        assert all(torch.equal(m, masks[g]) for m in calls[g])  # every block, every pass
    assert not torch.equal(masks[0], masks[1])  # each group gets its own chunk
    # the next forward pass samples a new mask; eval passes none
    calls.clear()
    model(x, edge_index)
    assert not torch.equal(calls[0][0], masks[0])
    calls.clear()
    model.eval()
    model(x, edge_index)
    assert all(m is None for g in (0, 1) for m in calls[g])


def test_batchnorm_running_stats_see_the_recomputation():
    """Documented side effect: f runs 3 times per step, so BatchNorm counts 3 batches."""
    model = _build()
    twin = _stored_activation_twin(model)
    x, edge_index = _graph()
    for m in (model, twin):
        m.train()
        m(x, edge_index).sum().backward()
    block_norm = "backbone.blocks.0.convs.0.norm.num_batches_tracked"
    assert model.state_dict()[block_norm].item() == 3
    assert twin.state_dict()[block_norm].item() == 1
    assert model.state_dict()["backbone.norm.num_batches_tracked"].item() == 1


def test_training_on_cora_lowers_the_loss_like_stored_activations(shared_data: Path):
    """A few Adam steps on a real 300-node Cora subgraph: the loss falls, and the reversible
    model follows the same trajectory as plain autograd (same loss every step)."""
    from tag_pipeline.config import DatasetConfig
    from tag_pipeline.datasets import load_dataset

    graph = load_dataset(DatasetConfig(root=shared_data, subset=300), [0])
    edge_index = torch.from_numpy(graph.edge_index)
    assert edge_index.dtype == torch.int64 and edge_index.shape[0] == 2
    y = torch.from_numpy(graph.labels)
    train = torch.from_numpy(graph.splits[0].train)
    x = torch.randn(graph.num_nodes, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = build_model("revgat", 16, graph.num_classes, hidden=HIDDEN, num_layers=3, dropout=0.2)
    twin = _stored_activation_twin(model)
    losses = {}
    for name, m in (("rev", model), ("plain", twin)):
        opt = torch.optim.Adam(m.parameters(), lr=0.05)
        torch.manual_seed(1)
        losses[name] = []
        for _ in range(20):
            m.train()
            opt.zero_grad()
            loss = F.cross_entropy(m(x, edge_index)[train], y[train])
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    assert losses["rev"][-1] < 0.8 * losses["rev"][0], losses["rev"]
    assert np.allclose(losses["rev"], losses["plain"], atol=1e-4), losses


# --- learning ------------------------------------------------------------------------------


def _neighbour_task(seed: int = 0):
    """30 'hub' nodes whose features show their class; 90 'leaf' nodes with pure-noise
    features, each linked to 3 hubs of its class. A leaf's label is only inferable from its
    neighbours; train = hubs + 30 leaves, val and test = 30 other leaves each."""
    rng = np.random.default_rng(seed)
    hubs, leaves, f = 30, 90, 6
    y = np.concatenate([np.arange(hubs) % C, rng.integers(0, C, leaves)])
    x = rng.normal(0.0, 0.5, size=(hubs + leaves, f))
    x[:hubs] = 2.0 * np.eye(C, f)[y[:hubs]] + rng.normal(0.0, 0.3, size=(hubs, f))
    src, dst = [], []
    for leaf in range(hubs, hubs + leaves):
        for hub in rng.choice(np.flatnonzero(y[:hubs] == y[leaf]), size=3, replace=False):
            src += [leaf, hub]
            dst += [hub, leaf]
    order = hubs + rng.permutation(leaves)
    split = Split(
        train=np.sort(np.concatenate([np.arange(hubs), order[:30]])),
        val=np.sort(order[30:60]),
        test=np.sort(order[60:]),
    )
    return (
        torch.tensor(x, dtype=torch.float32),
        torch.tensor([src, dst], dtype=torch.int64),
        torch.tensor(y, dtype=torch.int64),
        split,
    )


def test_train_node_classifier_learns_from_neighbours_where_mlp_cannot():
    """Full-batch training through tag_pipeline.train: RevGAT reads the leaves' labels off
    their neighbours; an MLP, blind to edges, stays near chance (1/3) on test leaves."""
    x, edge_index, y, split = _neighbour_task()
    cfg = GNNConfig(num_layers=2, hidden=HIDDEN, dropout=0.2, lr=0.02, epochs=60, patience=60)
    res = {
        name: train_node_classifier(name, x, edge_index, y, split, cfg, seed=0, num_classes=C)
        for name in ("revgat", "mlp")
    }
    rev, mlp = res["revgat"], res["mlp"]
    assert rev.logits.shape == (len(y), C) and rev.logits.dtype == torch.float32
    # test accuracy over training seeds 0-5 measured 0.87-1.0 (default 2 heads); the MLP 0.2-0.47
    assert rev.test_acc >= 0.8 and rev.val_acc >= 0.8, rev
    assert mlp.test_acc <= 0.6, mlp
    # the kept weights reproduce the kept logits (BatchNorm running stats included)
    fresh = build_model("revgat", x.shape[1], C, hidden=HIDDEN, num_layers=2, dropout=0.2)
    fresh.load_state_dict(rev.state_dict)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x, edge_index), rev.logits, atol=1e-5)
    # adjacency="csr" in the config leaves RevGAT on edge_index: same run, same result
    csr = train_node_classifier(
        "revgat", x, edge_index, y, split, cfg.model_copy(update={"adjacency": "csr"}), seed=0, num_classes=C
    )
    assert torch.equal(csr.logits, rev.logits)


# --- interface -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"hidden": 13}, "divisible by num_groups=2"),
        ({"hidden": 16, "heads": 3}, "groups of 8 channels .* divisible by heads=3"),
        ({"hidden": 12, "heads": 4}, "divisible by heads=4"),
        ({"hidden": 12, "num_groups": 3, "heads": 3}, "divisible by heads=3"),
        ({"hidden": 12, "num_groups": 1}, "num_groups >= 2"),
        ({"hidden": 12, "heads": 0}, "heads must be >= 1"),
        ({"hidden": 12, "num_layers": 0}, "num_layers must be >= 1"),
        ({"hidden": 12, "dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_sizes_raise_value_error(kw, match):
    kw = {"num_layers": 2, "dropout": 0.1, **kw}
    with pytest.raises(ValueError, match=match):
        build_revgat(F_IN, C, **kw)


def test_other_heads_and_groups_are_accepted():
    torch.manual_seed(0)
    model = build_revgat(F_IN, C, hidden=16, num_layers=2, dropout=0.1, heads=2, num_groups=4)
    rev = model.backbone.blocks[0]
    assert rev.num_groups == 4
    assert (rev.convs[0].conv.in_channels, rev.convs[0].conv.heads, rev.convs[0].conv.out_channels) == (4, 2, 2)
    x, edge_index = _graph()
    model.train()
    model(x, edge_index).sum().backward()  # reversible backward with 4 groups
    assert model(x, edge_index).shape == (N, C)


def test_build_model_with_the_p_feature_encoder():
    k = 2
    torch.manual_seed(0)
    model = build_model("revgat", 999, C, hidden=HIDDEN, num_layers=2, dropout=0.3, topk=k)
    assert isinstance(model.encoder, PredictionEncoder) and model.encoder.out_channels == k * HIDDEN
    assert model.backbone.lin_in.in_features == k * HIDDEN
    ranked = torch.randint(0, C + 1, (N, k), generator=torch.Generator().manual_seed(0))
    _, edge_index = _graph()
    model.train()
    out = model(ranked, edge_index)
    assert out.shape == (N, C) and out.dtype == torch.float32
    out.square().mean().backward()
    emb = model.encoder.embedding.weight.grad
    assert torch.equal(emb[0], torch.zeros(HIDDEN)) and emb[1:].abs().sum() > 0


def test_graph_operator_keeps_edge_index_for_revgat():
    _, edge_index = _graph()
    for adjacency in ("edge_index", "csr"):
        assert graph_operator("revgat", edge_index, N, adjacency) is edge_index
    assert graph_operator("gcn", edge_index, N, "csr").layout == torch.sparse_csr  # others unchanged
