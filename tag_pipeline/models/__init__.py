"""Node classifiers, one file per model; :func:`build_model` picks one by name."""

from __future__ import annotations

from tag_pipeline.models.base import NodeClassifier, PredictionEncoder
from tag_pipeline.models.gcn import build_gcn
from tag_pipeline.models.mlp import build_mlp
from tag_pipeline.models.sage import build_sage

BUILDERS = {"mlp": build_mlp, "gcn": build_gcn, "sage": build_sage}


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    *,
    hidden: int,
    num_layers: int,
    dropout: float,
    topk: int | None = None,
) -> NodeClassifier:
    """Build node classifier ``name`` (``mlp``, ``gcn`` or ``sage``).

    Args:
        name: model name.
        in_channels: input feature size; ignored when ``topk`` is given.
        num_classes: C, the number of output logits.
        hidden: hidden channels (and the P embedding size).
        num_layers: layers of the backbone.
        dropout: dropout probability between layers.
        topk: when set, the input is TAPE's P feature (``[N, topk]`` int64 labels shifted by
            one, 0 = padding) and an :class:`PredictionEncoder` of size ``hidden`` goes first.

    Raises:
        KeyError: unknown model name.
    """
    if name not in BUILDERS:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(BUILDERS)}")
    encoder = None
    if topk is not None:
        encoder = PredictionEncoder(num_classes, hidden, topk)
        in_channels = encoder.out_channels
    return BUILDERS[name](
        in_channels, num_classes, hidden=hidden, num_layers=num_layers, dropout=dropout, encoder=encoder
    )


__all__ = ["BUILDERS", "NodeClassifier", "PredictionEncoder", "build_model"]
