"""GraphSAGE (Hamilton et al., NeurIPS 2017) with mean aggregation, PyG's ``GraphSAGE``."""

from __future__ import annotations

from torch import nn
from torch_geometric.nn.models import GraphSAGE

from tag_pipeline.models.base import NodeClassifier


def build_sage(
    in_channels: int,
    num_classes: int,
    *,
    hidden: int,
    num_layers: int,
    dropout: float,
    encoder: nn.Module | None = None,
) -> NodeClassifier:
    """A GraphSAGE node classifier: ``[N, in_channels]`` -> ``[N, num_classes]`` logits."""
    backbone = GraphSAGE(
        in_channels=in_channels,
        hidden_channels=hidden,
        num_layers=num_layers,
        out_channels=num_classes,
        dropout=dropout,
    )
    return NodeClassifier(backbone, uses_graph=True, encoder=encoder)
