"""Feature matrices in the lake: safetensors for the tensor, Parquet for its row index.

A feature artifact holds ``features.safetensors`` (one tensor ``x``: ``[num_nodes, dim]``
float32 for TA/E embeddings, ``[num_nodes, k]`` int64 for P) and ``index.parquet``
(``node_id`` int64, ``row`` int64: row ``row`` of ``x`` belongs to node ``node_id``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file

FEATURE_FILE = "features.safetensors"
INDEX_FILE = "index.parquet"


def write_feature(directory: Path, x: torch.Tensor, *, feature: str, source: str) -> None:
    """Write feature matrix ``x`` (row i = node i) into an artifact directory.

    Args:
        directory: the (temporary) artifact directory.
        x: ``[num_nodes, dim]`` tensor.
        feature: ``"TA"``, ``"E"`` or ``"P"`` (stored in the safetensors metadata).
        source: what produced it (model name), stored in the metadata.
    """
    save_file(
        {"x": x.contiguous()},
        str(directory / FEATURE_FILE),
        metadata={"feature": feature, "source": source, "shape": str(list(x.shape))},
    )
    n = x.shape[0]
    pl.DataFrame(
        {"node_id": np.arange(n, dtype=np.int64), "row": np.arange(n, dtype=np.int64)}
    ).write_parquet(directory / INDEX_FILE)


def read_feature(directory: Path, num_nodes: int | None = None) -> torch.Tensor:
    """Read a feature artifact's matrix, rows in node order.

    Raises:
        ValueError: the index does not cover ``num_nodes`` nodes exactly once.
    """
    x = load_file(str(directory / FEATURE_FILE))["x"]
    index = pl.read_parquet(directory / INDEX_FILE).sort("node_id")
    n = num_nodes if num_nodes is not None else x.shape[0]
    if index.height != n or not np.array_equal(index["node_id"].to_numpy(), np.arange(n)):
        raise ValueError(f"{directory / INDEX_FILE}: index does not cover nodes 0..{n - 1} once")
    return x[torch.from_numpy(index["row"].to_numpy().copy())]
