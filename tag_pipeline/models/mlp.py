"""MLP baseline: node features only, no message passing (PyG ``MLP``)."""

from __future__ import annotations

from torch import nn
from torch_geometric.nn.models import MLP

from tag_pipeline.models.base import NodeClassifier


def build_mlp(
    in_channels: int,
    num_classes: int,
    *,
    hidden: int,
    num_layers: int,
    dropout: float,
    encoder: nn.Module | None = None,
) -> NodeClassifier:
    """An MLP node classifier: ``[N, in_channels]`` -> ``[N, num_classes]`` logits."""
    backbone = MLP(
        in_channels=in_channels,
        hidden_channels=hidden,
        out_channels=num_classes,
        num_layers=num_layers,
        dropout=dropout,
        norm=None,
    )
    return NodeClassifier(backbone, uses_graph=False, encoder=encoder)
