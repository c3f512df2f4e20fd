"""GCN (Kipf & Welling, ICLR 2017), PyG's ``GCN`` with symmetric normalisation cached."""

from __future__ import annotations

from torch import nn
from torch_geometric.nn.models import GCN

from tag_pipeline.models.base import NodeClassifier


def build_gcn(
    in_channels: int,
    num_classes: int,
    *,
    hidden: int,
    num_layers: int,
    dropout: float,
    encoder: nn.Module | None = None,
    normalize: bool = True,
) -> NodeClassifier:
    """A GCN node classifier: ``[N, in_channels]`` -> ``[N, num_classes]`` logits.

    The normalised adjacency is cached after the first forward pass (``cached=True``),
    which is valid for full-batch transductive training on one fixed graph.
    """
    backbone = GCN(
        in_channels=in_channels,
        hidden_channels=hidden,
        num_layers=num_layers,
        out_channels=num_classes,
        dropout=dropout,
        cached=normalize,
        normalize=normalize,
    )
    return NodeClassifier(backbone, uses_graph=True, encoder=encoder)
