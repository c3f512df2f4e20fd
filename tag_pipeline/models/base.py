"""Shared pieces of the node classifiers: the P-feature encoder and the wrapper module."""

from __future__ import annotations

import torch
from torch import nn


class PredictionEncoder(nn.Module):
    """TAPE's P feature encoder (Sec. 4.3): embed the LLM's top-k ranked labels.

    Input ``[N, k]`` int64, labels shifted by one so that 0 is padding (a node with fewer than
    k ranked labels, or none). Each label is embedded (``nn.Embedding(C + 1, dim)``, the
    padding row fixed at zero) and the k vectors are concatenated.

    Args:
        num_classes: C.
        dim: embedding size per label.
        topk: k.

    Shapes:
        input ``[N, k]`` int64 -> output ``[N, k * dim]`` float32.
    """

    def __init__(self, num_classes: int, dim: int, topk: int):
        super().__init__()
        self.topk = topk
        self.embedding = nn.Embedding(num_classes + 1, dim, padding_idx=0)
        self.out_channels = topk * dim

    def forward(self, ranked: torch.Tensor) -> torch.Tensor:
        return self.embedding(ranked).flatten(start_dim=1)


class NodeClassifier(nn.Module):
    """An optional input encoder followed by a backbone that returns ``[N, C]`` logits.

    Args:
        backbone: a PyG model; called as ``backbone(x, edge_index)`` if ``uses_graph``,
            else ``backbone(x)``.
        uses_graph: whether the backbone does message passing.
        encoder: optional input encoder (e.g. :class:`PredictionEncoder`).
    """

    def __init__(self, backbone: nn.Module, *, uses_graph: bool, encoder: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.backbone = backbone
        self.uses_graph = uses_graph

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:
            x = self.encoder(x)
        return self.backbone(x, edge_index) if self.uses_graph else self.backbone(x)
