"""Dr.E's multi-view GNN encoder with residual quantisation and its auxiliary losses (Sec. 4.1-4.2).
"""

from __future__ import annotations

from tag_pipeline.methods.dre.config import DreMethod
from tag_pipeline.methods.dre.quantise import residual_quantise

# --------------------------------------------------------------------------- encoder (Sec. 4.1-4.2)


def build_encoder(in_dim: int, num_classes: int, codebook, cfg: DreMethod):
    """The multi-view GNN with dual-level residual quantisation and the auxiliary heads.

    Args:
        in_dim: input feature width (MiniLM: 384).
        num_classes: C (label-prediction head).
        codebook: ``[M, d]`` frozen float rows; ``d`` sets the hidden width.
        cfg: the method's config.

    Returns:
        a ``torch.nn.Module`` whose ``forward(x [N, in_dim], edge_index [2, E])`` returns a dict:
        ``tokens`` ``[N, views, K, d]`` (what the decoder reads), ``q`` (list of ``[N, d]`` per
        view), ``h`` (list of ``[N, d]``), ``ids`` (``[N, views, K]`` int64 or ``None`` when not
        quantised), ``residual_norms`` (``[N, views, K+1]`` or ``None``).
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch_geometric.nn import SAGEConv

    d = codebook.shape[1]

    class MultiViewEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("codebook", codebook.detach().clone(), persistent=False)
            self.convs = nn.ModuleList([SAGEConv(in_dim if t == 0 else d, d) for t in range(cfg.views)])
            # the ablation: K continuous tokens per view from a linear map of h_t
            self.project = None if cfg.quantise else nn.ModuleList(
                [nn.Linear(d, cfg.codes_per_view * d) for _ in range(cfg.views)])
            self.feature_head = nn.Linear(cfg.views * d, in_dim)
            self.label_head = nn.Linear(cfg.views * d, num_classes)

        def forward(self, x, edge_index):
            inp, hs, qs, toks, ids, norms = x, [], [], [], [], []
            for t, conv in enumerate(self.convs):
                h = conv(inp, edge_index)
                if cfg.quantise:
                    qz = residual_quantise(h, self.codebook, cfg.codes_per_view, cfg.residual)
                    q, tok = qz.q, qz.codes
                    ids.append(qz.ids)
                    norms.append(qz.residual_norms)
                else:
                    q, tok = h, self.project[t](h).view(h.shape[0], cfg.codes_per_view, d)
                hs.append(h)
                qs.append(q)
                toks.append(tok)
                inp = F.dropout(F.gelu(h + q), cfg.dropout, self.training)  # inter-layer residual
            return {"tokens": torch.stack(toks, 1), "q": qs, "h": hs,
                    "ids": torch.stack(ids, 1) if ids else None,
                    "residual_norms": torch.stack(norms, 1) if norms else None}

    return MultiViewEncoder()


def negative_edges(edge_index, num_nodes: int, num_samples: int, generator):
    """Random node pairs that are not edges, drawn with ``generator`` only.

    Our own sampler rather than PyG's ``negative_sampling``: that one draws from Python's and
    torch's global random state, which other threads of the process (Prefect's services under a
    flow) draw from too, so a seeded run was not reproducible. Pairs ``(i, j)`` are drawn
    uniformly; self-pairs and existing edges are dropped (as PyG's sparse method does).

    Args:
        edge_index: ``[2, E]`` int64 (any device).
        num_nodes: S.
        num_samples: pairs drawn before dropping (about E).
        generator: a CPU ``torch.Generator``.

    Returns:
        ``[2, <= num_samples]`` int64 on ``edge_index``'s device.
    """
    import torch

    src = torch.randint(num_nodes, (num_samples,), generator=generator)
    dst = torch.randint(num_nodes, (num_samples,), generator=generator)
    edges = edge_index.cpu()
    keep = (src != dst) & ~torch.isin(src * num_nodes + dst, edges[0] * num_nodes + edges[1])
    return torch.stack([src[keep], dst[keep]]).to(edge_index.device)


def auxiliary_losses(enc, out: dict, x, edge_index, y, train_mask, cfg: DreMethod, generator=None) -> dict:
    """The auxiliary losses (Sec. 4.2) on one (sub)graph, each already weighted.

    Args:
        enc: the encoder (its ``feature_head``/``label_head``).
        out: its forward output.
        x: ``[S, in_dim]`` input features; edge_index ``[2, E_S]``.
        y: ``[S]`` int64 labels (only read where ``train_mask``).
        train_mask: ``[S]`` bool, the train nodes of the subgraph.
        cfg: the weights.
        generator: CPU ``torch.Generator`` of the adjacency loss's negative pairs (default: a
            fresh unseeded one).

    Returns:
        ``{name: scalar tensor}`` for the non-zero weights.
    """
    import torch
    import torch.nn.functional as F
    losses = {}
    q_all = torch.cat(out["q"], -1)
    if cfg.commitment_weight:
        if cfg.commitment == "cosine":
            per_view = [(1.0 - F.cosine_similarity(h, q.detach(), dim=-1)).mean() for h, q in zip(out["h"], out["q"])]
        else:
            per_view = [F.mse_loss(h, q.detach()) for h, q in zip(out["h"], out["q"])]
        losses["commitment"] = cfg.commitment_weight * sum(per_view) / len(per_view)
    if cfg.feature_weight:
        losses["feature"] = cfg.feature_weight * F.mse_loss(enc.feature_head(q_all), x)
    if cfg.label_weight and bool(train_mask.any()):
        losses["label"] = cfg.label_weight * F.cross_entropy(enc.label_head(q_all[train_mask]), y[train_mask])
    if cfg.adjacency_weight and edge_index.shape[1] > 0:
        z = F.normalize(out["q"][-1], dim=-1)
        neg = negative_edges(edge_index, x.shape[0], edge_index.shape[1], generator or torch.Generator())
        pos_s = (z[edge_index[0]] * z[edge_index[1]]).sum(-1)
        neg_s = (z[neg[0]] * z[neg[1]]).sum(-1)
        scores = torch.cat([pos_s, neg_s]) * 5.0  # cosine in [-1, 1] -> logits in [-5, 5]
        target = torch.cat([torch.ones_like(pos_s), torch.zeros_like(neg_s)])
        losses["adjacency"] = cfg.adjacency_weight * F.binary_cross_entropy_with_logits(scores, target)
    return losses
