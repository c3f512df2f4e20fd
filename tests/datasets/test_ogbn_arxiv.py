"""ogbn-arxiv in TAPE's conventions: the shared data README's checks, on the real files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from tag_pipeline.datasets.base import DatasetError, TAGraph
from tag_pipeline.datasets.base import symmetrize_edges
from tag_pipeline.datasets.ogbn_arxiv import (
    ADJ_NAME,
    CLASS_MAP_NAME,
    LABEL_NAME,
    PAPER_MAP_NAME,
    RAW_FILES,
    ROLE_NAME,
    YEAR_NAME,
    load_ogbn_arxiv,
    read_citations,
    read_node_column,
    year_split,
)
from tag_pipeline.llm.replay import read_tape_preds


def shared_data_dir() -> Path:
    """``$TAG_SHARED_DATA`` if set, else ``../shared/data`` relative to the project root."""
    env = os.environ.get("TAG_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


ARXIV_DIR = shared_data_dir() / "ogbn-arxiv"
REQUIRED = (ADJ_NAME, ROLE_NAME, LABEL_NAME, CLASS_MAP_NAME, PAPER_MAP_NAME)
assert REQUIRED == RAW_FILES
N = 169_343

needs_data = pytest.mark.skipif(
    not (ARXIV_DIR / ADJ_NAME).is_file(), reason=f"real ogbn-arxiv data not found at {ARXIV_DIR}"
)


@pytest.fixture(scope="module")
def loaded() -> tuple[TAGraph, float]:
    start = time.perf_counter()
    graph = load_ogbn_arxiv(ARXIV_DIR)
    return graph, time.perf_counter() - start


@pytest.fixture(scope="module")
def arxiv(loaded: tuple[TAGraph, float]) -> TAGraph:
    return loaded[0]


@needs_data
def test_loads_fast(loaded: tuple[TAGraph, float]) -> None:
    assert loaded[1] < 5.0, f"load_ogbn_arxiv took {loaded[1]:.2f} s"


@needs_data
def test_sizes_and_classes(arxiv: TAGraph) -> None:
    assert arxiv.name == "ogbn-arxiv"
    assert arxiv.num_nodes == N
    assert arxiv.num_classes == 40
    assert arxiv.class_names[:3] == ["arxiv cs na", "arxiv cs mm", "arxiv cs lo"]
    assert arxiv.class_names[24] == "arxiv cs lg" and arxiv.class_names[-1] == "arxiv cs dm"
    assert arxiv.labels.dtype == np.int64 and arxiv.labels.shape == (N,)
    assert arxiv.labels[:5].tolist() == [4, 5, 28, 8, 27]
    counts = np.bincount(arxiv.labels, minlength=40)
    assert counts.sum() == N and counts.min() > 0
    assert (counts[16], counts[24], counts[28]) == (27321, 22187, 21406)  # cv, lg, it
    assert arxiv.text is None


@needs_data
def test_source_ids_are_mag_paper_ids(arxiv: TAGraph) -> None:
    assert len(arxiv.source_ids) == N and len(set(arxiv.source_ids)) == N
    assert arxiv.source_ids[:3] == ["9657784", "39886162", "116214155"]


@needs_data
def test_citations_as_stored() -> None:
    cites, n = read_citations(ARXIV_DIR / ADJ_NAME)
    assert n == N and cites.shape == (2, 1_166_243) and cites.dtype == np.int64
    assert not np.any(cites[0] == cites[1])
    assert np.all(np.diff(np.sort(cites[0] * N + cites[1])) > 0)  # no citation repeated
    # Row cites column: a citing paper is almost never older than the one it cites.
    years = read_node_column(ARXIV_DIR / YEAR_NAME, N)
    assert np.mean(years[cites[0]] >= years[cites[1]]) > 0.98


@needs_data
def test_edges_symmetric_unique_sorted(arxiv: TAGraph) -> None:
    src, dst = arxiv.edge_index
    assert arxiv.edge_index.dtype == np.int64
    # 8,444 citation pairs go both ways: 2 * 1,166,243 - 16,888 duplicates dropped.
    assert arxiv.num_edges == 2_315_598 == 2 * 1_166_243 - 16_888
    keys = src * N + dst
    assert np.all(np.diff(keys) > 0)  # sorted by (src, dst), hence unique
    assert np.array_equal(np.sort(dst * N + src), keys)  # symmetric
    assert not np.any(src == dst)  # no self-loops added


@needs_data
def test_official_time_split(arxiv: TAGraph) -> None:
    assert sorted(arxiv.splits) == [0, 1, 2, 3]
    sp = arxiv.splits[0]
    assert (len(sp.train), len(sp.val), len(sp.test)) == (90_941, 29_799, 48_603)
    assert np.array_equal(np.sort(np.concatenate([sp.train, sp.val, sp.test])), np.arange(N))
    for seed in (1, 2, 3):
        for part in ("train", "val", "test"):
            assert np.array_equal(arxiv.splits[seed].part(part), sp.part(part))
    by_year = year_split(read_node_column(ARXIV_DIR / YEAR_NAME, N))
    for part in ("train", "val", "test"):
        assert np.array_equal(by_year.part(part), sp.part(part)), part


@needs_data
def test_llm_top1_agrees_with_tape(arxiv: TAGraph) -> None:
    preds = read_tape_preds(ARXIV_DIR / "gpt_preds" / "ogbn-arxiv.csv", N, 40)
    assert sum(not p for p in preds) == 36
    top1 = np.array([p[0] if p else -1 for p in preds])
    assert round(float((top1 == arxiv.labels).mean()), 4) == 0.7350


def test_symmetrize_edges_matches_a_set_of_pairs() -> None:
    rng = np.random.default_rng(0)
    edges = rng.integers(0, 7, size=(2, 30))
    expected = sorted({(int(a), int(b)) for a, b in edges.T} | {(int(b), int(a)) for a, b in edges.T})
    out = symmetrize_edges(edges, 7)
    assert out.dtype == np.int64
    assert [tuple(map(int, e)) for e in out.T] == expected
    assert symmetrize_edges(np.empty((2, 0), dtype=np.int64), 3).shape == (2, 0)


def _link_all_but(root: Path, missing: str) -> None:
    for name in REQUIRED:
        if name != missing:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(ARXIV_DIR / name)


@needs_data
@pytest.mark.parametrize("missing", REQUIRED)
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    _link_all_but(tmp_path, missing)
    with pytest.raises(DatasetError, match=Path(missing).name.replace(".", r"\.")):
        load_ogbn_arxiv(tmp_path)


@needs_data
def test_bad_role_json_is_named(tmp_path: Path) -> None:
    _link_all_but(tmp_path, ROLE_NAME)
    (tmp_path / ROLE_NAME).write_text(json.dumps({"tr": [0, 1], "va": [2], "te": [3]}))
    with pytest.raises(DatasetError, match=r"role\.json.*do not partition"):
        load_ogbn_arxiv(tmp_path)
    (tmp_path / ROLE_NAME).write_text("{not json")
    with pytest.raises(DatasetError, match=r"role\.json"):
        load_ogbn_arxiv(tmp_path)


def test_missing_root_names_first_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"adj_full\.npz"):
        load_ogbn_arxiv(tmp_path)
