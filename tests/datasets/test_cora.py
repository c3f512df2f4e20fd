"""Cora in TAPE's conventions: the shared data README's checks, on the real files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tag_pipeline.datasets.base import DatasetError, TAGraph
from tag_pipeline.datasets.cora import load_cora


def shared_data_dir() -> Path:
    """``$TAG_SHARED_DATA`` if set, else ``../shared/data`` relative to the project root."""
    env = os.environ.get("TAG_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


CORA_DIR = shared_data_dir() / "cora"

pytestmark = pytest.mark.skipif(
    not (CORA_DIR / "cora.zip").is_file(), reason=f"real Cora data not found at {CORA_DIR}"
)

CLASS_NAMES = [
    "Case_Based",
    "Genetic_Algorithms",
    "Neural_Networks",
    "Probabilistic_Methods",
    "Reinforcement_Learning",
    "Rule_Learning",
    "Theory",
]


@pytest.fixture(scope="module")
def cora() -> TAGraph:
    return load_cora(CORA_DIR)


def test_sizes_and_classes(cora: TAGraph) -> None:
    assert cora.name == "cora"
    assert cora.num_nodes == 2708
    assert cora.num_edges == 10556
    assert cora.class_names == CLASS_NAMES
    assert cora.labels.dtype == np.int64 and cora.labels.shape == (2708,)
    assert cora.edge_index.dtype == np.int64 and cora.edge_index.shape == (2, 10556)
    assert np.bincount(cora.labels).tolist() == [298, 418, 818, 426, 217, 180, 351]


def test_node_order_is_content_order(cora: TAGraph) -> None:
    assert len(cora.source_ids) == 2708 and len(set(cora.source_ids)) == 2708
    assert cora.source_ids[:5] == ["31336", "1061127", "1106406", "13195", "37879"]
    assert cora.labels[:5].tolist() == [2, 5, 4, 4, 3]


def test_edges_symmetric_unique_sorted(cora: TAGraph) -> None:
    src, dst = cora.edge_index
    assert src.min() >= 0 and max(src.max(), dst.max()) < cora.num_nodes
    keys = src * cora.num_nodes + dst
    assert np.all(np.diff(keys) > 0)  # sorted by (src, dst), hence no duplicates
    rev = np.sort(dst * cora.num_nodes + src)
    assert np.array_equal(rev, keys)  # symmetric
    assert not np.any(src == dst)  # Cora has no self-citations


def test_seed0_split_matches_tape(cora: TAGraph) -> None:
    sp = cora.splits[0]
    assert (len(sp.train), len(sp.val), len(sp.test)) == (1624, 542, 542)
    assert sp.train[:5].tolist() == [1, 2, 4, 5, 6]
    assert sp.test[:5].tolist() == [0, 3, 7, 21, 24]


def test_splits_disjoint_and_covering(cora: TAGraph) -> None:
    assert sorted(cora.splits) == [0, 1, 2, 3]
    for sp in cora.splits.values():
        both = np.concatenate([sp.train, sp.val, sp.test])
        assert np.array_equal(np.sort(both), np.arange(cora.num_nodes))
    assert not np.array_equal(cora.splits[0].train, cora.splits[1].train)


def test_custom_seeds() -> None:
    g = load_cora(CORA_DIR, seeds=(7,))
    assert list(g.splits) == [7]


def test_llm_top1_agrees_with_tape(cora: TAGraph) -> None:
    # Checks the node order: TAPE's zero-shot GPT-3.5 accuracy is 0.6769; a wrong order ~0.16.
    lines = (shared_data_dir() / "cora" / "gpt_preds" / "cora.csv").read_text().splitlines()
    top1 = np.array([int(line.split(",")[0]) for line in lines])
    assert top1.shape == (cora.num_nodes,)
    acc = float((top1 == cora.labels).mean())
    assert round(acc, 4) == 0.6769


def test_text_in_tape_order(cora: TAGraph) -> None:
    assert cora.text is not None and len(cora.text) == 2708
    assert all(t.strip() for t in cora.text)
    assert sum(" : " not in t for t in cora.text) == 796
    # Node 0 is paper 31336 (Neural_Networks); cora.pt stores its text with a leading space.
    title, _, abstract = cora.text[0].partition(" : ")
    assert title == " The megaprior heuristic for discovering protein sequence patterns."
    assert abstract.startswith("Several computer algorithms for discovering patterns")


def test_missing_files_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cora.zip"):
        load_cora(tmp_path)
    shutil.copy(CORA_DIR / "cora.zip", tmp_path / "cora.zip")
    with pytest.raises(DatasetError, match="cora.pt"):
        load_cora(tmp_path)


def _write_altered_pt(tmp_path: Path, **changes: object) -> Path:
    data = torch.load(CORA_DIR / "cora.pt", weights_only=True)
    data.update(changes)
    shutil.copy(CORA_DIR / "cora.zip", tmp_path / "cora.zip")
    torch.save(data, tmp_path / "cora.pt")
    return tmp_path


def test_label_mismatch_in_pt_is_reported(tmp_path: Path) -> None:
    y = torch.load(CORA_DIR / "cora.pt", weights_only=True)["y"].clone()
    y[10] = (y[10] + 1) % 7
    root = _write_altered_pt(tmp_path, y=y)
    with pytest.raises(DatasetError, match=r"cora\.pt.*labels disagree.*1 nodes"):
        load_cora(root)


def test_edge_mismatch_in_pt_is_reported(tmp_path: Path) -> None:
    ei = torch.load(CORA_DIR / "cora.pt", weights_only=True)["edge_index"]
    # cora.pt stores some edges twice: drop every copy of one (u, v).
    u, v = ei[:, 0].tolist()
    keep = ~((ei[0] == u) & (ei[1] == v))
    root = _write_altered_pt(tmp_path, edge_index=ei[:, keep].clone())
    with pytest.raises(DatasetError, match=r"cora\.pt.*edge set"):
        load_cora(root)
