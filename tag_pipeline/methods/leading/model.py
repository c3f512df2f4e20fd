"""LEADING's neighbour cache, implicit propagation layer and end-to-end training (one feature, one seed).
"""

from __future__ import annotations

import time

from tag_pipeline.methods.leading.config import LEADING_DEVICE, LeadingMethod


class NeighbourCache:
    """LM embeddings of every node, ``[N, hidden]`` float32, written only without gradients.

    ``refresh(h, epoch)`` replaces the cache when ``epoch`` is due (every ``every`` epochs,
    from epoch 1); ``mix(batch, z)`` returns the cache with rows ``batch`` replaced by the
    freshly encoded ``z`` (the only rows through which gradients flow).
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self.h = None
        self.refreshed_at: list[int] = []

    def due(self, epoch: int) -> bool:
        """Whether the cache is (re)written before ``epoch`` (1-based)."""
        return self.h is None or (epoch - 1) % self.every == 0

    def refresh(self, h, epoch: int) -> None:
        """Store ``h`` ``[N, hidden]`` if the cache is due at ``epoch``.

        Raises:
            ValueError: ``h`` requires gradients (the cache is never written with them).
        """
        if h.requires_grad:
            raise ValueError("the neighbour cache is written without gradients only")
        if self.due(epoch):
            self.h = h.detach().clone()
            self.refreshed_at.append(epoch)

    def mix(self, batch, z):
        """``[N, hidden]``: the cache, rows ``batch`` (``[B]`` int64) replaced by ``z`` ``[B, hidden]``."""
        return self.h.index_put((batch,), z)


def _propagate(a_hat, x, z0, teleport: float, iters: int):
    z = z0
    for _ in range(iters):
        z = (1.0 - teleport) * (a_hat @ z) + teleport * x
    return z


def _implicit_function():
    import torch

    class ImplicitPropagationFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, fx, a_hat, a_hat_t, z0, teleport, iters):
            with torch.no_grad():
                z = _propagate(a_hat, fx, z0, teleport, iters)
            ctx.a_hat_t, ctx.teleport, ctx.iters = a_hat_t, teleport, iters
            return z

        @staticmethod
        def backward(ctx, grad_z):
            # the adjoint fixed point aG = (1 - a) A^T (aG) + a dL/dZ, by the same iteration
            g = _propagate(ctx.a_hat_t, grad_z, grad_z, ctx.teleport, ctx.iters)
            return g, None, None, None, None, None

    return ImplicitPropagationFn


class ImplicitPropagation:
    """The implicit layer ``Z = (1 - a) A_hat Z + a f`` (module docstring), warm-started.

    Args:
        a_hat: ``[N, N]`` sparse float32 normalised adjacency (GCN's, with self-loops).
        teleport: a, in (0, 1].
        iters: fixed-point iterations per pass.
    """

    def __init__(self, a_hat, teleport: float, iters: int) -> None:
        self.a_hat, self.teleport, self.iters = a_hat, teleport, iters
        self.a_hat_t = a_hat.t() if a_hat.layout == __import__("torch").strided else (
            a_hat.to_sparse_coo().t().coalesce().to_sparse_csr())
        self.z = None
        self.fn = _implicit_function()

    def __call__(self, fx):
        """``[N, C]`` solution for ``fx`` ``[N, C]`` (differentiable in ``fx``)."""
        z0 = self.z if self.z is not None and self.z.shape == fx.shape else fx.detach()
        z = self.fn.apply(fx, self.a_hat, self.a_hat_t, z0, self.teleport, self.iters)
        self.z = z.detach()
        return z


def normalized_adjacency(edge_index, num_nodes: int):
    """``D^-1/2 (A + I) D^-1/2`` as a sparse CSR ``[N, N]`` float32 (PyG's ``gcn_norm``)."""
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    from torch_geometric.utils import to_torch_csr_tensor

    ei, w = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    return to_torch_csr_tensor(ei.flip(0), w, size=(num_nodes, num_nodes))


def fixed_point_direct(a_hat_dense, fx, teleport: float):
    """The exact fixed point ``a (I - (1 - a) A_hat)^-1 f`` (dense solve; for tests and checks)."""
    import torch

    n = a_hat_dense.shape[0]
    return teleport * torch.linalg.solve(torch.eye(n) - (1.0 - teleport) * a_hat_dense, fx)


def train_leading(texts: list[str], labels, edge_index, split, num_classes: int, cfg: LeadingMethod, *, seed: int,
                  progress: bool = False) -> dict:
    """Train one LEADING model on one text feature and one split.

    Args:
        texts: ``[N]`` node texts (TA or E).
        labels: ``[N]`` int64 (only the train nodes' enter the loss).
        edge_index: ``[2, E]`` int64.
        split: the seed's split.
        num_classes: C.
        cfg: the method's config.
        seed: seeds torch (head, dropout, batch order).
        progress: a tqdm bar over steps.

    Returns:
        dict: ``x`` ``[N, hidden]`` float32 LM embeddings and ``logits`` ``[N, C]`` at the epoch
        with the best validation accuracy; ``best_epoch``, ``val_acc``, ``history`` (per epoch
        ``train_loss``, ``val_acc``, the LM's ``lr`` at the epoch's end, ``seconds``), ``cache_refreshes`` (epochs), ``seconds``.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch_geometric.utils import k_hop_subgraph
    from tqdm.auto import tqdm

    from tag_pipeline.finetune import _batcher, load_classifier, split_encoder

    start = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer, lm = load_classifier(cfg.finetune_config(), num_classes)
    device = torch.device(LEADING_DEVICE)
    token_ids = tokenizer([t or "" for t in texts], truncation=True, max_length=cfg.max_length)["input_ids"]
    pad = tokenizer.pad_token_id or 0
    states = split_encoder(lm, token_ids, cfg.trainable_layers, pad, device) if cfg.trainable_layers else None
    batch_of = _batcher(token_ids, states, pad, device)
    n = len(texts)
    y = torch.as_tensor(labels, dtype=torch.long)
    ei = torch.as_tensor(edge_index, dtype=torch.long)
    hidden = lm.head.in_features
    if cfg.head == "implicit":
        head = nn.Linear(hidden, num_classes)
        prop = ImplicitPropagation(normalized_adjacency(ei, n), cfg.teleport, cfg.iters)
        graph_out = lambda h: prop(head(h))  # noqa: E731
    else:
        from tag_pipeline.models import build_model

        head = build_model(cfg.head, hidden, num_classes, hidden=128, num_layers=2, dropout=0.5)
        graph_out = lambda h: head(h, ei)  # noqa: E731
    opt = torch.optim.AdamW([{"params": lm.encoder.parameters(), "lr": cfg.lr},
                             {"params": head.parameters(), "lr": cfg.head_lr}], weight_decay=0.0)
    cache = NeighbourCache(cfg.refresh_every)
    train = np.asarray(split.train, dtype=np.int64)
    steps = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    scheduler = None
    if cfg.warmup_ratio is not None:
        from transformers import get_linear_schedule_with_warmup

        total = cfg.epochs * steps
        scheduler = get_linear_schedule_with_warmup(opt, round(cfg.warmup_ratio * total), total)
    val = torch.from_numpy(np.asarray(split.val, dtype=np.int64))
    rng = np.random.default_rng(seed)

    @torch.no_grad()
    def encode_all():
        lm.eval()
        out = torch.empty(n, hidden)
        order = sorted(range(n), key=lambda i: len(token_ids[i]))
        for s in range(0, n, 64):
            rows = order[s : s + 64]
            inputs, mask = batch_of(rows)
            out[torch.tensor(rows)] = lm.embed(attention_mask=mask, **inputs).float()
        return out

    h_all = encode_all()  # epoch 0's embeddings: the first cache
    best = {"val_acc": -1.0}
    history = []
    bar = tqdm(total=cfg.epochs * steps, disable=not progress, desc="LEADING", leave=False)
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        cache.refresh(h_all, epoch)
        lm.train()
        head.train()
        losses = []
        order = rng.permutation(train)
        for s in range(steps):
            batch = torch.from_numpy(order[s * cfg.batch_size : (s + 1) * cfg.batch_size])
            encoded = batch if cfg.neighbours == "cache" else k_hop_subgraph(batch, cfg.gradient_hops, ei, num_nodes=n)[0]
            inputs, mask = batch_of(encoded.tolist())
            z = lm.embed(attention_mask=mask, **inputs)
            logits = graph_out(cache.mix(encoded, z))
            loss = F.cross_entropy(logits[batch], y[batch], label_smoothing=cfg.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.item())
            bar.update(1)
        h_all = encode_all()
        head.eval()
        with torch.no_grad():
            logits = graph_out(h_all)
        val_acc = (logits[val].argmax(-1) == y[val]).float().mean().item() if val.numel() else 0.0
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_acc": val_acc,
                        "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
        if val_acc > best["val_acc"]:
            best = {"val_acc": val_acc, "best_epoch": epoch, "x": h_all.clone(), "logits": logits.clone()}
    bar.close()
    return best | {"history": history, "cache_refreshes": list(cache.refreshed_at),
                   "seconds": time.perf_counter() - start}
