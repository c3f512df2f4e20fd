"""LEADING: end-to-end LM + GNN fine-tuning at close to the cost of fine-tuning the LM alone.

Xue et al., "Efficient End-to-end Language Model Fine-tuning on Graphs", arXiv 2312.04737
(KDD 2025). No public code exists; this module follows the paper's two ideas as issue 14
states them, and says where a detail is our choice:

* **Neighbour decoupling** (Sec. 4): in a mini-batch only the target (train) nodes are
  encoded with gradients; every other node's embedding comes from :class:`NeighbourCache`,
  written by a no-gradient pass over all nodes and refreshed every ``refresh_every`` epochs
  (default 1). So no node is encoded with gradients more than once per epoch. The same
  no-gradient pass scores the epoch on validation (our choice: one pass serves both).
* **Implicit graph modelling** (Sec. 5): one implicit propagation layer instead of stacked
  GNN layers, the APPNP-style fixed point ``Z = (1 - a) A_hat Z + a f(H)`` (Gasteiger et al.,
  ICLR 2019, Eq. 7 at its limit) with ``A_hat`` GCN's normalised adjacency with self-loops
  and ``f`` a linear head on the LM embeddings ``H``. :class:`ImplicitPropagation` solves it
  by ``iters`` iterations warm-started from the previous step's ``Z``, and differentiates it
  implicitly: the adjoint ``G = (1 - a) A_hat^T G + dL/dZ`` is iterated ``iters`` times from
  ``dL/dZ`` and ``dL/df = a G`` (no unrolled graph is stored). Both are approximate: after
  ``k`` iterations the error shrinks by about ``(1 - a)^k`` (0.35 at a = 0.1, k = 10 for the
  cold-started adjoint, a few percent of the gradient); with ``iters`` large both match the
  direct solve (tested). Warm-starting the adjoint too is an open improvement. ``head="gcn"`` or ``"sage"`` (two PyG layers) are kept for
  comparison.

Labels: the loss reads only the seed's train nodes (label smoothing as TAPE's fine-tuning);
the epoch is chosen on validation accuracy. Outputs per (feature, seed): the LM embeddings
(a feature artifact the GNNs can read) and the logits, in the lake.
"""

from __future__ import annotations

import time
from pathlib import Path

from tag_pipeline import lake
from tag_pipeline.methods.leading_config import (  # re-exported: LEADING's fixed numerics and dropout
    LEADING_ATTENTION_DROPOUT as LEADING_ATTENTION_DROPOUT,
)
from tag_pipeline.methods.leading_config import LEADING_DEVICE, LeadingMethod

LEADING_STAGE_VERSION = 1
#: One (feature, seed) LEADING run: ``<lake>/<dataset>/leading/<feature>-s<seed>-<key>``.
LEADING_STAGE = lake.Stage(
    "leading",
    LEADING_STAGE_VERSION,
    code=(
        "tag_pipeline.methods.leading",  # cache, implicit layer, training loop, epoch choice
        "tag_pipeline.methods.leading_config",  # the config: key_fields, the FinetuneConfig its LM is loaded with
        "tag_pipeline.finetune_config",  # the LM fields LEADING shares with fine-tuning (LMTrainingConfig)
        "tag_pipeline.finetune",  # the LM: load_classifier, split_encoder, the batcher, MeanPoolClassifier
        "tag_pipeline.models",  # the gcn/sage heads (build_model)
        "tag_pipeline.features.stage",  # feature_texts: the TA or E text the LM reads
        "tag_pipeline.train",  # accuracy, predictions_frame
    ),
)


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


def leading_path(graph_path: str | Path, responses: str | Path | None, feature: str, seed: int, cfg: LeadingMethod,
                 lake_root: str | Path) -> Path:
    """Lake path of one (feature, seed) LEADING run: graph content and split, the LLM responses
    artifact (for E), the feature, seed, config (:meth:`LeadingMethod.key_fields`) and the LM's
    weight files."""
    from tag_pipeline.datasets import graph_content_key, split_key
    from tag_pipeline.features.text import model_digest

    graph_path = Path(graph_path)
    key = LEADING_STAGE.key(f"{graph_content_key(graph_path)}-{split_key(graph_path, seed)}",
                            Path(responses).name if (responses and feature == "E") else None, feature, seed,
                            cfg.key_fields(), model_digest(cfg.model))
    return LEADING_STAGE.path(lake_root, lake.dataset_of(graph_path), key, prefix=f"{feature}-s{seed}-")


def _summary(path: Path) -> dict:
    """The committed run's summary with its ``path``: what a lake hit and a build both return."""
    return dict(lake.read_artifact(path, verify=False).manifest["summary"], path=str(path))


def materialize_leading(graph_path: str | Path, responses: str | Path | None, feature: str, seed: int,
                        cfg: LeadingMethod, lake_root: str | Path) -> dict:
    """One (feature, seed) LEADING run unless in the lake: ``predictions.parquet`` (the
    implicit layer's logits), the LM embeddings as a feature (``read_feature`` reads the
    artifact), and a manifest with the summary and the per-epoch history.

    Returns:
        the summary dict (``method``, ``model``, ``variant`` = feature, ``seed``, ``val_acc``,
        ``test_acc``, ``best_epoch``, ``seconds``, ``path``), the same for a lake hit and a
        fresh run.
    """
    import torch

    from tag_pipeline.datasets import check_split, open_graph
    from tag_pipeline.features.stage import feature_texts
    from tag_pipeline.features.store import write_feature
    from tag_pipeline.hardware import torch_threads
    from tag_pipeline.train import accuracy, predictions_frame

    graph_path = Path(graph_path)
    path = leading_path(graph_path, responses, feature, seed, cfg, lake_root)

    def build() -> lake.Built:
        graph = open_graph(graph_path)
        split = graph.splits[seed]
        check_split(split, seed, graph.name, graph.num_nodes)
        texts = feature_texts(graph_path, Path(responses) if responses else None, feature, cfg.e_text)
        with torch_threads(cfg.threads):
            out = train_leading(texts, graph.labels, graph.edge_index, split, graph.num_classes, cfg, seed=seed,
                                progress=True)
        y = torch.from_numpy(graph.labels)
        row = {"method": "leading", "model": cfg.head, "variant": feature, "feature": feature, "seed": seed,
               "val_acc": out["val_acc"], "test_acc": accuracy(out["logits"], y, torch.from_numpy(split.test)),
               "best_epoch": out["best_epoch"], "seconds": out["seconds"], "cache_refreshes": out["cache_refreshes"]}
        inputs = {"graph": str(graph_path), **({"responses": str(responses)} if responses and feature == "E" else {})}

        def write(tmp: Path) -> None:
            predictions_frame(out["logits"], y, split).write_parquet(tmp / "predictions.parquet")
            write_feature(tmp, out["x"], feature=feature, source=f"leading:{cfg.model}")

        return lake.Built(write=write, config=cfg.key_fields(), inputs=inputs, rows=graph.num_nodes,
                          extra={"summary": row, "history": out["history"]})

    return LEADING_STAGE.materialize(path, build, read=_summary)
