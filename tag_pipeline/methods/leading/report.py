"""LEADING's part of the run report: its own accuracy per text feature, then TAPE's tables of the
GNNs trained on LEADING's embeddings."""

from __future__ import annotations

import polars as pl

from tag_pipeline.methods.base_config import MethodBase
from tag_pipeline.report import tape_gnn_section, variant_table


def leading_sections(method: MethodBase, dataset: str, metrics: pl.DataFrame) -> list[str]:
    """LEADING's report: its own accuracy per text feature (the implicit layer's logits), then
    TAPE's tables of the GNNs trained on LEADING's embeddings."""
    return variant_table(method, dataset, metrics) + tape_gnn_section(
        dataset, metrics, "## TAPE's GNNs on LEADING's TA/E embeddings (h_TAPE with TAPE's P)")
