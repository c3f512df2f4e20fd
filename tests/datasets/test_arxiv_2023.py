"""arxiv_2023 in TAPE's conventions: the shared data README's checks, on the real files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tag_pipeline.datasets.arxiv_2023 import (
    ARXIV_CS_CLASS_NAMES,
    GRAPH_NAME,
    load_arxiv_2023,
    read_pyg_graph,
)
from tag_pipeline.datasets.base import DatasetError, TAGraph
from tag_pipeline.datasets.ogbn_arxiv import CLASS_MAP_NAME, read_arxiv_class_names
from tag_pipeline.llm.replay import read_tape_preds


def shared_data_dir() -> Path:
    """``$TAG_SHARED_DATA`` if set, else ``../shared/data`` relative to the project root."""
    env = os.environ.get("TAG_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


ARXIV23_DIR = shared_data_dir() / "arxiv_2023"
OGBN_CLASS_MAP = shared_data_dir() / "ogbn-arxiv" / CLASS_MAP_NAME
N = 46_198

needs_data = pytest.mark.skipif(
    not (ARXIV23_DIR / GRAPH_NAME).is_file(),
    reason=f"real arxiv_2023 data not found at {ARXIV23_DIR}",
)


@pytest.fixture(scope="module")
def loaded() -> tuple[TAGraph, float]:
    start = time.perf_counter()
    graph = load_arxiv_2023(ARXIV23_DIR)
    return graph, time.perf_counter() - start


@pytest.fixture(scope="module")
def arxiv23(loaded: tuple[TAGraph, float]) -> TAGraph:
    return loaded[0]


@needs_data
def test_loads_fast(loaded: tuple[TAGraph, float]) -> None:
    assert loaded[1] < 5.0, f"load_arxiv_2023 took {loaded[1]:.2f} s"


@needs_data
def test_sizes_and_labels(arxiv23: TAGraph) -> None:
    assert arxiv23.name == "arxiv_2023"
    assert arxiv23.num_nodes == N and arxiv23.num_edges == 78_548
    assert arxiv23.num_classes == 40
    assert arxiv23.labels.dtype == np.int64 and arxiv23.labels.shape == (N,)
    counts = np.bincount(arxiv23.labels, minlength=40)
    # cs.NA (0) and cs.SY (19) were aliases of math.NA / eess.SY by 2023: no node.
    assert counts[0] == 0 and counts[19] == 0
    assert (counts[16], counts[24], counts[30]) == (10663, 9398, 5625)  # cv, lg, cl
    assert arxiv23.source_ids[:2] == ["0", "1"] and len(arxiv23.source_ids) == N
    assert arxiv23.text is None


@pytest.mark.skipif(not OGBN_CLASS_MAP.is_file(), reason=f"{OGBN_CLASS_MAP} not found")
def test_class_names_are_ogbn_arxiv_categories() -> None:
    # tape_arxiv_2023 labels papers through ogbn-arxiv's labelidx2arxivcategeory.csv.gz.
    assert list(ARXIV_CS_CLASS_NAMES) == read_arxiv_class_names(OGBN_CLASS_MAP)


@needs_data
def test_edges_used_as_stored(arxiv23: TAGraph) -> None:
    ei = arxiv23.edge_index
    assert ei.dtype == np.int64 and ei.shape == (2, 78_548)
    # An independent read of the trusted, checksummed file (see SHA256SUMS).
    stored = torch.load(ARXIV23_DIR / GRAPH_NAME, weights_only=False).edge_index.numpy()
    assert np.array_equal(ei, stored)
    keys = ei[0] * N + ei[1]
    _, counts = np.unique(keys, return_counts=True)
    assert counts.size == 39_395  # distinct directed pairs
    assert np.bincount(counts).tolist() == [0, 242, 39_153]  # most stored twice
    sym = np.unique(np.concatenate([keys, ei[1] * N + ei[0]]))
    assert sym.size == 77_726  # not symmetric as stored
    assert not np.any(ei[0] == ei[1])


@needs_data
def test_tape_random_split(arxiv23: TAGraph) -> None:
    assert sorted(arxiv23.splits) == [0, 1, 2, 3]
    for sp in arxiv23.splits.values():
        assert (len(sp.train), len(sp.val), len(sp.test)) == (27_718, 9_240, 9_240)
        everything = np.sort(np.concatenate([sp.train, sp.val, sp.test]))
        assert np.array_equal(everything, np.arange(N))


@needs_data
def test_llm_top1_agrees_with_tape(arxiv23: TAGraph) -> None:
    preds = read_tape_preds(ARXIV23_DIR / "gpt_preds" / "arxiv_2023.csv", N, 40)
    assert sum(not p for p in preds) == 25
    top1 = np.array([p[0] if p else -1 for p in preds])
    assert round(float((top1 == arxiv23.labels).mean()), 4) == 0.7356


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"graph\.pt"):
        load_arxiv_2023(tmp_path)


def test_malformed_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / GRAPH_NAME
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    with pytest.raises(DatasetError, match=r"graph\.pt: cannot read PyG graph"):
        load_arxiv_2023(tmp_path)
    torch.save({"y": torch.zeros(3, dtype=torch.long)}, path)  # no edge_index
    with pytest.raises(DatasetError, match=r"graph\.pt: cannot read PyG graph"):
        load_arxiv_2023(tmp_path)


def test_reads_a_pyg_data_object(tmp_path: Path) -> None:
    from torch_geometric.data import Data

    path = tmp_path / "g.pt"
    torch.save(Data(edge_index=torch.tensor([[0, 1], [1, 0]]), y=torch.tensor([2, 3])), path)
    edge_index, y = read_pyg_graph(path)
    assert edge_index.tolist() == [[0, 1], [1, 0]] and y.tolist() == [2, 3]
    torch.save(Data(edge_index=torch.tensor([[0], [5]]), y=torch.tensor([2, 3])), path)
    with pytest.raises(DatasetError, match="outside 0..1"):
        read_pyg_graph(path)
