"""Tests for tag_pipeline.models: build_model, PredictionEncoder, NodeClassifier (tiny graphs)."""

from __future__ import annotations

import copy

import pytest
import torch

from tag_pipeline.models import BUILDERS, NodeClassifier, PredictionEncoder, build_model

N, F, C, HIDDEN = 6, 4, 3, 8
MODELS = ("mlp", "gcn", "sage")

# a 6-node undirected graph: a path 0-1-2-3-4-5 plus the chord 0-3 (both directions)
EDGES = torch.tensor(
    [[0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 0, 3], [1, 0, 2, 1, 3, 2, 4, 3, 5, 4, 3, 0]], dtype=torch.int64
)
# the same nodes wired differently: a star around node 5
OTHER_EDGES = torch.tensor([[5, 5, 5, 5, 5, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 5, 5, 5, 5]], dtype=torch.int64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, F, generator=g)


def _build(name, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"hidden": HIDDEN, "num_layers": 2, "dropout": 0.5, **kw}
    return build_model(name, F, C, **kw)


def test_registry_names():
    assert set(BUILDERS) == {*MODELS, "revgat"}  # revgat has its own tests (test_revgat.py)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_dense_input_gives_n_by_c_logits(name, num_layers):
    model = _build(name, num_layers=num_layers)
    assert isinstance(model, NodeClassifier) and model.encoder is None
    assert model.uses_graph == (name != "mlp")
    model.eval()
    out = model(_x(), EDGES)
    assert out.shape == (N, C) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.sum().backward()  # differentiable end to end
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unknown_model_name_raises_key_error():
    with pytest.raises(KeyError, match="gat"):
        build_model("gat", F, C, hidden=HIDDEN, num_layers=2, dropout=0.0)


def test_prediction_encoder_shapes_and_padding():
    k = 3
    enc = PredictionEncoder(num_classes=C, dim=HIDDEN, topk=k)
    assert enc.out_channels == k * HIDDEN
    assert enc.embedding.num_embeddings == C + 1
    ranked = torch.tensor([[1, 2, 3], [3, 0, 0], [0, 0, 0], [2, 2, 1]], dtype=torch.int64)
    out = enc(ranked)
    assert out.shape == (4, k * HIDDEN) and out.dtype == torch.float32
    assert torch.equal(out[2], torch.zeros(k * HIDDEN))  # all padding -> zeros
    assert torch.equal(out[1, HIDDEN:], torch.zeros(2 * HIDDEN))  # padded slots -> zeros
    assert out[1, :HIDDEN].abs().sum() > 0
    # slot j of the output is the embedding of ranked[:, j]
    assert torch.equal(out[0, HIDDEN : 2 * HIDDEN], enc.embedding.weight[2])
    assert torch.equal(out[3, :HIDDEN], out[3, HIDDEN : 2 * HIDDEN])
    # the padding row gets no gradient
    out.sum().backward()
    assert torch.equal(enc.embedding.weight.grad[0], torch.zeros(HIDDEN))
    assert enc.embedding.weight.grad[1:].abs().sum() > 0


@pytest.mark.parametrize("name", MODELS)
def test_topk_input_goes_through_prediction_encoder(name):
    k = 2
    model = _build(name, topk=k, dropout=0.0)
    assert isinstance(model.encoder, PredictionEncoder)
    assert model.encoder.out_channels == k * HIDDEN
    model.eval()
    ranked = torch.tensor([[1, 2], [2, 0], [3, 1], [0, 0], [1, 3], [2, 2]], dtype=torch.int64)
    encoded = model.encoder(ranked)
    assert encoded.shape == (N, k * HIDDEN)
    assert torch.equal(encoded[3], torch.zeros(k * HIDDEN))
    out = model(ranked, EDGES)
    assert out.shape == (N, C) and out.dtype == torch.float32


@pytest.mark.parametrize("name", ["gcn", "sage"])
def test_message_passing_outputs_depend_on_edges(name):
    model = _build(name)
    twin = copy.deepcopy(model)  # same weights, fresh (empty) normalisation cache
    model.eval()
    twin.eval()
    x = _x()
    a, b = model(x, EDGES), twin(x, OTHER_EDGES)
    assert not torch.allclose(a, b, atol=1e-4)
    # and eval mode is deterministic
    assert torch.equal(model(x, EDGES), a)


def test_mlp_output_ignores_edges():
    model = _build("mlp")
    model.eval()
    x = _x()
    a = model(x, EDGES)
    assert torch.equal(a, model(x, OTHER_EDGES))
    assert torch.equal(a, model(x, torch.empty(2, 0, dtype=torch.int64)))
    # rows are independent: permuting nodes permutes logits
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    assert torch.allclose(model(x[perm], EDGES), a[perm], atol=1e-6)


def test_gcn_without_edges_is_a_per_node_transform():
    """Removing all edges turns GCN (with self-loops) into a per-node transform."""
    model = _build("gcn")
    model.eval()
    x = _x()
    no_edges = torch.empty(2, 0, dtype=torch.int64)
    out = copy.deepcopy(model)(x, no_edges)
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    assert torch.allclose(copy.deepcopy(model)(x[perm], no_edges), out[perm], atol=1e-6)


def test_dropout_active_only_in_train_mode():
    model = _build("mlp", dropout=0.5, hidden=64)
    x = _x()
    model.train()
    torch.manual_seed(1)
    t1 = model(x, EDGES)
    torch.manual_seed(2)
    t2 = model(x, EDGES)
    assert not torch.allclose(t1, t2)
    model.eval()
    assert torch.equal(model(x, EDGES), model(x, EDGES))


def test_same_seed_same_weights():
    for name in MODELS:
        a, b, c = _build(name, seed=3), _build(name, seed=3), _build(name, seed=4)
        sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name", ["gcn", "sage", "mlp"])
def test_csr_adjacency_gives_the_edge_index_outputs(name):
    """The sparse-matrix path (GNNConfig.adjacency='csr') computes the same function."""
    import warnings

    from torch_geometric.utils import coalesce, to_undirected

    from tag_pipeline.models import build_model, graph_operator

    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
    n = 300
    edge_index = to_undirected(coalesce(torch.randint(0, n, (2, 2000), generator=torch.Generator().manual_seed(0))))
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(1))
    outs = {}
    for adjacency in ("edge_index", "csr"):
        torch.manual_seed(0)
        model = build_model(name, 16, 5, hidden=32, num_layers=2, dropout=0.0, adjacency=adjacency).eval()
        outs[adjacency] = model(x, graph_operator(name, edge_index, n, adjacency))
    assert (outs["edge_index"] - outs["csr"]).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="unknown adjacency"):
        graph_operator(name if name != "mlp" else "gcn", edge_index, n, "coo")
