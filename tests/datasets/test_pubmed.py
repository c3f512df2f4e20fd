"""PubMed in TAPE's conventions: the shared data README's checks, on the real files."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from tag_pipeline.datasets.base import DatasetError, TAGraph
from tag_pipeline.datasets.pubmed import (
    INDEX_MAP_NAME,
    PUBMED_CLASS_NAMES,
    RAW_FILES,
    load_pubmed,
    read_planetoid_graph,
    read_planetoid_labels,
    read_planetoid_pickle,
)
from tag_pipeline.llm.replay import read_tape_preds


def shared_data_dir() -> Path:
    """``$TAG_SHARED_DATA`` if set, else ``../shared/data`` relative to the project root."""
    env = os.environ.get("TAG_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


PUBMED_DIR = shared_data_dir() / "pubmed"
PLANETOID = ("ally", "ty", "test.index", "graph")
REQUIRED = (*(f"planetoid/ind.pubmed.{p}" for p in PLANETOID), INDEX_MAP_NAME)
assert REQUIRED == RAW_FILES
N = 19_717

needs_data = pytest.mark.skipif(
    not (PUBMED_DIR / INDEX_MAP_NAME).is_file(),
    reason=f"real PubMed data not found at {PUBMED_DIR}",
)


@pytest.fixture(scope="module")
def loaded() -> tuple[TAGraph, float]:
    start = time.perf_counter()
    graph = load_pubmed(PUBMED_DIR)
    return graph, time.perf_counter() - start


@pytest.fixture(scope="module")
def pubmed(loaded: tuple[TAGraph, float]) -> TAGraph:
    return loaded[0]


@needs_data
def test_loads_fast(loaded: tuple[TAGraph, float]) -> None:
    assert loaded[1] < 2.0, f"load_pubmed took {loaded[1]:.2f} s"


@needs_data
def test_sizes_and_classes(pubmed: TAGraph) -> None:
    assert pubmed.name == "pubmed"
    assert pubmed.num_nodes == N and pubmed.num_edges == 88_648
    assert pubmed.class_names == [
        "Experimentally induced diabetes",
        "Type 1 diabetes",
        "Type 2 diabetes",
    ] == PUBMED_CLASS_NAMES
    assert pubmed.labels.dtype == np.int64 and pubmed.labels.shape == (N,)
    assert np.bincount(pubmed.labels).tolist() == [4103, 7875, 7739]
    assert pubmed.source_ids[:3] == ["0", "1", "2"] and len(pubmed.source_ids) == N
    assert pubmed.text is None


@needs_data
def test_edges_symmetric_unique_sorted(pubmed: TAGraph) -> None:
    src, dst = pubmed.edge_index
    assert pubmed.edge_index.dtype == np.int64
    keys = src * N + dst
    assert np.all(np.diff(keys) > 0)
    assert np.array_equal(np.sort(dst * N + src), keys)
    assert not np.any(src == dst)


@needs_data
def test_planetoid_sources() -> None:
    planetoid = PUBMED_DIR / "planetoid"
    y = read_planetoid_labels(planetoid)
    assert y.shape == (N,) and np.bincount(y).tolist() == [4103, 7739, 7875]
    pairs = read_planetoid_graph(planetoid / "ind.pubmed.graph", N)
    assert pairs.shape == (2, 88_676) and int(np.sum(pairs[0] == pairs[1])) == 6


@needs_data
def test_tape_random_split(pubmed: TAGraph) -> None:
    assert sorted(pubmed.splits) == [0, 1, 2, 3]
    for sp in pubmed.splits.values():
        assert (len(sp.train), len(sp.val), len(sp.test)) == (11_830, 3_943, 3_944)
        everything = np.sort(np.concatenate([sp.train, sp.val, sp.test]))
        assert np.array_equal(everything, np.arange(N))
    assert not np.array_equal(pubmed.splits[0].train, pubmed.splits[1].train)


@needs_data
def test_llm_top1_agrees_with_tape(pubmed: TAGraph) -> None:
    # Checks node order and label map: TAPE's zero-shot GPT-3.5 accuracy is 0.9342.
    preds = read_tape_preds(PUBMED_DIR / "gpt_preds" / "pubmed.csv", N, 3)
    assert all(preds)
    top1 = np.array([p[0] for p in preds])
    assert round(float((top1 == pubmed.labels).mean()), 4) == 0.9342


@needs_data
@pytest.mark.parametrize("missing", REQUIRED)
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    for name in REQUIRED:
        if name != missing:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).symlink_to(PUBMED_DIR / name)
    with pytest.raises(DatasetError, match=Path(missing).name.replace(".", r"\.")):
        load_pubmed(tmp_path)


@needs_data
def test_index_map_not_a_permutation(tmp_path: Path) -> None:
    for name in REQUIRED[:-1]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(PUBMED_DIR / name)
    (tmp_path / INDEX_MAP_NAME).parent.mkdir(parents=True)
    with gzip.open(tmp_path / INDEX_MAP_NAME, "wt") as f:
        json.dump([0] * N, f)
    with pytest.raises(DatasetError, match=r"planetoid-index-map\.json\.gz.*permutation"):
        load_pubmed(tmp_path)


def test_unpickler_refuses_other_globals(tmp_path: Path) -> None:
    path = tmp_path / "ind.pubmed.graph"
    path.write_bytes(pickle.dumps(OrderedDict(a=[1]), protocol=2))
    with pytest.raises(DatasetError, match=r"ind\.pubmed\.graph.*not allowed"):
        read_planetoid_pickle(path)


def test_unpickler_reads_arrays_and_adjacency_lists(tmp_path: Path) -> None:
    from collections import defaultdict

    arr = np.eye(3, dtype=np.int32)
    # Protocol 4: Python 3 writes bytes in protocol 2 through _codecs.encode, which the
    # unpickler does not allow (Python 2's pickles, the real files, store them as str).
    (tmp_path / "a").write_bytes(pickle.dumps(arr, protocol=4))
    assert np.array_equal(read_planetoid_pickle(tmp_path / "a"), arr)
    graph = defaultdict(list, {0: [1, 1, 0], 1: [0]})
    (tmp_path / "g").write_bytes(pickle.dumps(graph, protocol=2))
    pairs = read_planetoid_graph(tmp_path / "g", 2)
    assert pairs.tolist() == [[0, 0, 0, 1], [1, 1, 0, 0]]
    with pytest.raises(DatasetError, match="outside 0..0"):
        read_planetoid_graph(tmp_path / "g", 1)
