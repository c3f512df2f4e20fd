"""GALLON's MLP student, the LM teacher's linear head, their training and the grid of loss weights.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass
from typing import Any

from tag_pipeline.methods.gallon.config import GallonMethod
from tag_pipeline.methods.gallon.loss import alignment_loss, distillation_loss

# --- models ---------------------------------------------------------------------------------


def build_student(in_dim: int, num_classes: int, cfg: GallonMethod, topk: int | None = None):
    """The student: ``[N, in_dim]`` dense features (and ``[N, topk]`` P labels, when P is read)
    -> ``([N, C] logits, [N, hidden] last hidden layer)``.

    A PyG ``MLP`` (plain: no norm), with TAPE's :class:`~tag_pipeline.models.PredictionEncoder`
    for P (embedding size ``cfg.hidden``) whose output is concatenated to the dense features.
    """
    import torch
    from torch import nn
    from torch_geometric.nn.models import MLP

    from tag_pipeline.models import PredictionEncoder

    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            self.p_encoder = PredictionEncoder(num_classes, cfg.hidden, topk) if topk else None
            width = in_dim + (self.p_encoder.out_channels if self.p_encoder is not None else 0)
            self.mlp = MLP(in_channels=width, hidden_channels=cfg.hidden, out_channels=num_classes,
                           num_layers=cfg.num_layers, dropout=cfg.dropout, norm=None)

        def forward(self, x, p=None):
            if self.p_encoder is not None:
                x = torch.cat([x, self.p_encoder(p)], dim=-1) if x.shape[1] else self.p_encoder(p)
            return self.mlp(x, return_emb=True)

    return Student()


@dataclass
class StudentInputs:
    """What a student reads: ``dense`` ``[N, D]`` float32 (may have 0 columns) and ``p``
    ``[N, k]`` int64 (or ``None``)."""

    dense: Any
    p: Any = None

    @property
    def topk(self) -> int | None:
        return None if self.p is None else int(self.p.shape[1])


@dataclass
class Fit:
    """A trained student: best-epoch ``logits`` ``[N, C]``, ``state_dict``, ``val_acc``, ``epoch``, ``seconds``."""

    logits: Any
    state_dict: dict
    val_acc: float
    epoch: int
    seconds: float


def train_student(
    inputs: StudentInputs,
    y,
    split,
    num_classes: int,
    cfg: GallonMethod,
    *,
    seed: int,
    gnn_logits=None,
    lm_logits=None,
    alpha: float = 0.0,
    beta: float = 0.0,
    temperature: float = 1.0,
    gamma: float = 0.0,
    h_gnn=None,
    e_lm=None,
) -> Fit:
    """Train one student (or, with ``alpha = beta = gamma = 0``, the plain MLP) full-batch.

    Adam on :func:`distillation_loss`; the epoch with the best validation accuracy (earliest
    on ties) is kept. Test labels are never read.

    Args:
        inputs: the student's features.
        y: ``[N]`` int64 labels.
        split: the seed's :class:`~tag_pipeline.datasets.base.Split`.
        num_classes: C.
        cfg: the student's architecture and optimiser.
        seed: seeds torch before the weights are drawn.
        gnn_logits, lm_logits: ``[N, C]`` teacher logits (needed when alpha / beta > 0).
        alpha, beta, temperature, gamma: loss weights and T.
        h_gnn: ``[N, H_gnn]`` teacher representation, ``e_lm`` ``[N, D]`` LM embedding (gamma > 0).

    Raises:
        ValueError: a teacher needed by a non-zero weight is missing.
    """
    import torch
    from torch import nn

    if alpha and gnn_logits is None:
        raise ValueError("alpha > 0 needs the GNN teacher's logits")
    if gamma and (h_gnn is None or e_lm is None):
        raise ValueError("gamma > 0 needs the GNN teacher's representation and the LM embedding")
    torch.manual_seed(seed)
    student = build_student(inputs.dense.shape[1], num_classes, cfg, inputs.topk)
    params = list(student.parameters())
    to_gnn = from_lm = None
    if gamma:
        to_gnn = nn.Linear(cfg.hidden, h_gnn.shape[1])
        from_lm = nn.Linear(e_lm.shape[1], cfg.hidden)
        params += list(to_gnn.parameters()) + list(from_lm.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_idx = torch.from_numpy(split.train)

    def step() -> None:
        student.train()
        opt.zero_grad()
        logits, h = student(inputs.dense, inputs.p)
        align = alignment_loss(h, h_gnn, e_lm, to_gnn, from_lm) if gamma else None
        terms = distillation_loss(
            logits, y, train_idx, gnn_logits if alpha else logits.detach(), lm_logits,
            alpha=alpha, beta=beta, temperature=temperature, align=align, gamma=gamma,
        )
        terms.total.backward()
        opt.step()

    def predict():
        student.eval()
        return student(inputs.dense, inputs.p)[0]

    return _fit(student, step, predict, y, split, cfg)


def _fit(module, step, predict, y, split, cfg: GallonMethod) -> Fit:
    """Full-batch training with early stopping on validation accuracy: ``step()`` once per
    epoch, then ``predict()`` (no gradient) gives ``[N, C]`` logits; the best epoch's logits and
    ``module``'s weights are kept (earliest on ties; stop after ``cfg.patience`` epochs
    without a better one)."""
    import torch

    from tag_pipeline.train import accuracy

    val_idx = torch.from_numpy(split.val)
    best = Fit(None, {}, -1.0, 0, 0.0)
    since = 0
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        step()
        with torch.no_grad():
            logits = predict()
        val = accuracy(logits, y, val_idx)
        if val > best.val_acc:
            best = Fit(logits.clone(), copy.deepcopy(module.state_dict()), val, epoch, 0.0)
            since = 0
        else:
            since += 1
            if since >= cfg.patience:
                break
    best.seconds = time.perf_counter() - start
    return best


def train_linear_head(x, y, split, num_classes: int, cfg: GallonMethod, *, seed: int) -> Fit:
    """The LM teacher's head: ``Linear(D, C)`` on frozen embeddings ``x`` ``[N, D]``, Adam with
    ``cfg``'s lr and weight decay, best validation epoch kept (patience ``cfg.patience``)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    head = nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_idx = torch.from_numpy(split.train)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(head(x[train_idx]), y[train_idx]).backward()
        opt.step()

    return _fit(head, step, lambda: head(x), y, split, cfg)


def grid_points(cfg: GallonMethod) -> list[dict[str, float]]:
    """Every (alpha, beta, temperature, gamma) of the config's grids, in a fixed order."""
    return [
        {"alpha": a, "beta": b, "temperature": t, "gamma": g}
        for a, b, t, g in itertools.product(cfg.alphas, cfg.betas, cfg.temperatures, cfg.gammas)
    ]
