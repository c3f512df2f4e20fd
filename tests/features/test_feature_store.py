"""Tests for tag_pipeline.features.store: safetensors + Parquet index round trip."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from safetensors import safe_open

from tag_pipeline import lake
from tag_pipeline.features.store import FEATURE_FILE, INDEX_FILE, read_feature, write_feature


def test_round_trip_dense_float(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    write_feature(tmp_path, x, feature="TA", source="all-MiniLM-L6-v2")
    back = read_feature(tmp_path, num_nodes=6)
    assert back.dtype == torch.float32 and back.shape == (6, 5)
    assert torch.equal(back, x)
    assert torch.equal(read_feature(tmp_path), x)  # num_nodes defaults to the row count
    with safe_open(str(tmp_path / FEATURE_FILE), framework="pt") as f:
        meta = f.metadata()
    assert meta == {"feature": "TA", "source": "all-MiniLM-L6-v2", "shape": "[6, 5]"}
    index = pl.read_parquet(tmp_path / INDEX_FILE)
    assert index.schema == pl.Schema({"node_id": pl.Int64, "row": pl.Int64})
    assert index["node_id"].to_list() == list(range(6)) == index["row"].to_list()


def test_round_trip_int64_prediction_matrix(tmp_path):
    p = torch.tensor([[3, 1, 0], [2, 0, 0], [0, 0, 0], [1, 2, 3]], dtype=torch.int64)
    write_feature(tmp_path, p, feature="P", source="top-3 ranked labels")
    back = read_feature(tmp_path, num_nodes=4)
    assert back.dtype == torch.int64 and torch.equal(back, p)


def test_non_contiguous_input_is_written(tmp_path):
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # [4, 3] view, not contiguous
    assert not x.is_contiguous()
    write_feature(tmp_path, x, feature="E", source="m")
    assert torch.equal(read_feature(tmp_path, 4), x)


def test_rows_follow_the_index(tmp_path):
    x = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    write_feature(tmp_path, x, feature="TA", source="m")
    # row r of x belongs to node perm[r]
    perm = np.array([2, 0, 3, 1], dtype=np.int64)
    pl.DataFrame({"node_id": perm, "row": np.arange(4, dtype=np.int64)}).write_parquet(tmp_path / INDEX_FILE)
    back = read_feature(tmp_path, 4)
    for r, node in enumerate(perm):
        assert torch.equal(back[node], x[r])


def test_index_must_cover_every_node_once(tmp_path):
    write_feature(tmp_path, torch.zeros(5, 3), feature="TA", source="m")
    with pytest.raises(ValueError, match=r"index does not cover nodes 0\.\.6 once"):
        read_feature(tmp_path, num_nodes=7)
    with pytest.raises(ValueError, match="index does not cover"):
        read_feature(tmp_path, num_nodes=4)
    # a duplicated node id with the right row count
    pl.DataFrame(
        {"node_id": np.array([0, 1, 1, 3, 4], dtype=np.int64), "row": np.arange(5, dtype=np.int64)}
    ).write_parquet(tmp_path / INDEX_FILE)
    with pytest.raises(ValueError, match=INDEX_FILE):
        read_feature(tmp_path, num_nodes=5)


def test_feature_artifact_in_the_lake(tmp_path):
    path = lake.artifact_dir(tmp_path, "toy", "features", "TA-abc")
    x = torch.randn(3, 4)
    with lake.write_artifact(path, stage="features", rows=3) as tmp:
        write_feature(tmp, x, feature="TA", source="m")
    art = lake.read_artifact(path)
    assert set(art.manifest["files"]) == {FEATURE_FILE, INDEX_FILE}
    assert torch.equal(read_feature(path, 3), x)
