"""Cora with TAPE's node order, labels, symmetrised citation graph and title + abstract text.

Sources (all under one directory, e.g. ``shared/data/cora``; see the shared data README):

- ``cora.zip``: the McCallum/LINQS release; ``cora/cora.content`` gives the node order (node
  ``i`` = line ``i``) and the class names, ``cora/cora.cites`` the citations.
- ``cora.pt``: TAPE's text file, a dict with ``raw_texts``, ``y`` and ``edge_index`` whose node
  order is the paper ids sorted *as strings* and whose labels use another class order.

TAPE's data conventions, see the shared data README (He et al., "Harnessing Explanations:
LLM-to-LM Interpreter for Enhanced Text-Attributed Graph Representation Learning", ICLR 2024,
https://arxiv.org/abs/2305.19523).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from tag_pipeline.datasets.base import (
    DatasetError,
    TAGraph,
    symmetrize_edges,
    tape_random_split,
    unique_sorted_edges,
)

ZIP_NAME = "cora.zip"
PT_NAME = "cora.pt"
CONTENT_MEMBER = "cora/cora.content"
CITES_MEMBER = "cora/cora.cites"

#: The files :func:`load_cora` reads, relative to its root (the graph's lineage inputs).
RAW_FILES: tuple[str, ...] = (ZIP_NAME, PT_NAME)

#: Cora's classes in TAPE's label order (alphabetical): label ``c`` is ``CLASS_NAMES[c]``.
CLASS_NAMES: tuple[str, ...] = (
    "Case_Based",
    "Genetic_Algorithms",
    "Neural_Networks",
    "Probabilistic_Methods",
    "Reinforcement_Learning",
    "Rule_Learning",
    "Theory",
)

#: ``{TAPE label: cora.pt label}``: the class order used by ``cora.pt``'s ``y``.
TAPE_TO_PT_LABEL: Mapping[int, int] = {0: 2, 1: 3, 2: 1, 3: 6, 4: 5, 5: 0, 6: 4}


def _require_file(path: Path) -> Path:
    """Return ``path`` if it is a file, else raise :class:`DatasetError` naming it."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing Cora file (expected {path.name} in {path.parent})")
    return path


def read_zip_text(zip_path: Path, member: str) -> str:
    """Read one member of a zip archive as UTF-8 text, without extracting it to disk.

    Args:
        zip_path (Path): the archive.
        member (str): the member's name inside the archive, e.g. ``"cora/cora.content"``.

    Returns:
        str: the member's decoded text.

    Raises:
        DatasetError: the archive is missing, unreadable, or lacks ``member``.
    """
    _require_file(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return zf.read(member).decode("utf-8")
    except KeyError as e:
        raise DatasetError(f"{zip_path}: archive has no member {member!r}") from e
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError) as e:
        raise DatasetError(f"{zip_path}: cannot read {member!r} ({e})") from e


def parse_cora_content(text: str, source: str) -> tuple[list[str], list[str]]:
    """Parse ``cora.content``: one line per node, ``<paper id>\\t<1433 features>\\t<class>``.

    Args:
        text (str): the file's text.
        source (str): how to name the file in errors (e.g. ``"cora.zip:cora/cora.content"``).

    Returns:
        (list[str], list[str]): the paper ids and the class names, in line order (node ``i`` =
        line ``i``, TAPE's node order).

    Raises:
        DatasetError: a line has fewer than two fields, or a paper id repeats.
    """
    ids: list[str] = []
    names: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DatasetError(f"{source}: line {lineno}: expected tab-separated fields")
        pid = fields[0].strip()
        if pid in first_line:
            raise DatasetError(
                f"{source}: line {lineno}: paper id {pid!r} repeats line {first_line[pid]}"
            )
        first_line[pid] = lineno
        ids.append(pid)
        names.append(fields[-1].strip())
    if not ids:
        raise DatasetError(f"{source}: no nodes")
    return ids, names


def parse_cora_cites(text: str, source: str, index: Mapping[str, int]) -> np.ndarray:
    """Parse ``cora.cites`` (lines ``<cited id> <citing id>``) into node-index pairs.

    Args:
        text (str): the file's text.
        source (str): how to name the file in errors.
        index (Mapping[str, int]): paper id -> node index.

    Returns:
        np.ndarray: ``[2, M]`` int64, row 0 = cited node, row 1 = citing node, one column per
        line (as stored: neither symmetrised nor deduplicated).

    Raises:
        DatasetError: a line does not hold two ids, or names an id absent from ``index``.
    """
    pairs: list[tuple[int, int]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DatasetError(f"{source}: line {lineno}: expected two paper ids, got {line!r}")
        try:
            pairs.append((index[fields[0]], index[fields[1]]))
        except KeyError as e:
            raise DatasetError(f"{source}: line {lineno}: unknown paper id {e.args[0]!r}") from e
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2).T


def align_cora_text(
    pt_path: Path,
    paper_ids: Sequence[str],
    labels: np.ndarray,
    edge_index: np.ndarray,
) -> list[str]:
    """Put ``cora.pt``'s texts in TAPE's node order and check that the two sources agree.

    ``cora.pt``'s node ``j`` is the ``j``-th paper id in string order, so TAPE node ``i`` gets
    ``raw_texts[position of paper_ids[i] among the sorted ids]``. The file's labels (mapped
    through :data:`TAPE_TO_PT_LABEL`) and edge set (mapped to TAPE order) must then equal
    ``labels`` and ``edge_index`` exactly.

    Args:
        pt_path (Path): ``cora.pt`` (loaded with ``torch.load(..., weights_only=True)``).
        paper_ids (Sequence[str]): ``[N]`` paper ids in TAPE order.
        labels (np.ndarray): ``[N]`` int64 TAPE labels.
        edge_index (np.ndarray): ``[2, E]`` int64 unique, sorted edges in TAPE order.

    Returns:
        list[str]: ``[N]`` texts ("Title. : Abstract") in TAPE order.

    Raises:
        DatasetError: the file is missing or unreadable, its sizes differ, or its labels or
            edge set disagree with ``cora.zip``.
    """
    _require_file(pt_path)
    try:
        data = torch.load(pt_path, weights_only=True)
        raw_texts = list(data["raw_texts"])
        pt_y = np.asarray(data["y"], dtype=np.int64).reshape(-1)
        pt_edges = np.asarray(data["edge_index"], dtype=np.int64).reshape(2, -1)
    except Exception as e:  # torch.load raises UnpicklingError, RuntimeError, EOFError...
        raise DatasetError(
            f"{pt_path}: cannot read Cora text file ({type(e).__name__}: {e})"
        ) from e
    n = len(paper_ids)
    if len(raw_texts) != n or pt_y.shape[0] != n:
        raise DatasetError(
            f"{pt_path}: {len(raw_texts)} texts and {pt_y.shape[0]} labels, expected {n} nodes"
        )
    # pt index j -> TAPE index: the j-th id in string order.
    tape_index = {pid: i for i, pid in enumerate(paper_ids)}
    pt_to_tape = np.array([tape_index[pid] for pid in sorted(paper_ids)], dtype=np.int64)
    tape_to_pt = np.empty(n, dtype=np.int64)
    tape_to_pt[pt_to_tape] = np.arange(n)

    lut = np.array([TAPE_TO_PT_LABEL[c] for c in range(len(TAPE_TO_PT_LABEL))], dtype=np.int64)
    expected = lut[labels]
    bad = np.flatnonzero(expected != pt_y[tape_to_pt])
    if bad.size:
        i = int(bad[0])
        raise DatasetError(
            f"{pt_path}: labels disagree with {ZIP_NAME} for {bad.size} nodes; first: node {i} "
            f"(paper {paper_ids[i]}) has cora.pt label {int(pt_y[tape_to_pt[i]])}, "
            f"expected {int(expected[i])}"
        )
    if pt_edges.size and (pt_edges.min() < 0 or pt_edges.max() >= n):
        raise DatasetError(f"{pt_path}: edge_index refers to nodes outside 0..{n - 1}")
    pt_in_tape = unique_sorted_edges(pt_to_tape[pt_edges], n)
    if not np.array_equal(pt_in_tape, edge_index):
        raise DatasetError(
            f"{pt_path}: edge set ({pt_in_tape.shape[1]} unique edges) differs from "
            f"{ZIP_NAME}'s ({edge_index.shape[1]} edges)"
        )
    return [str(raw_texts[j]) for j in tape_to_pt]


def load_cora(root: Path | str, seeds: Sequence[int] = (0, 1, 2, 3)) -> TAGraph:
    """Load Cora in TAPE's conventions: 2,708 nodes, 10,556 directed edges, 7 classes.

    Node ``i`` is line ``i`` of ``cora.zip:cora/cora.content``; class index = alphabetical
    order of the class names (0 Case_Based ... 6 Theory); ``cora.cites`` is symmetrised and
    deduplicated; the text comes from ``cora.pt`` (re-ordered and cross-checked by
    :func:`align_cora_text`); splits are TAPE's random 60/20/20 split per seed.

    Args:
        root (Path | str): directory holding ``cora.zip`` and ``cora.pt``
            (e.g. ``shared/data/cora``).
        seeds (Sequence[int], optional): split seeds. (default: ``(0, 1, 2, 3)``)

    Returns:
        TAGraph: ``name="cora"``, ``labels`` ``[2708]`` int64, ``edge_index`` ``[2, 10556]``
        int64 sorted by (source, target), ``source_ids`` the paper ids, ``text`` the title +
        abstract per node, ``splits`` ``{seed: Split}`` (seed 0: 1624/542/542).

    Raises:
        DatasetError: a file is missing or malformed, or ``cora.pt`` disagrees with
            ``cora.zip`` (the message names the file).

    Source: TAPE's data conventions, see the shared data README.
    """
    root = Path(root)
    zip_path = _require_file(root / ZIP_NAME)
    pt_path = _require_file(root / PT_NAME)

    content_src = f"{zip_path}:{CONTENT_MEMBER}"
    paper_ids, names = parse_cora_content(read_zip_text(zip_path, CONTENT_MEMBER), content_src)
    class_names = sorted(set(names))
    class_index = {c: k for k, c in enumerate(class_names)}
    labels = np.array([class_index[c] for c in names], dtype=np.int64)
    if tuple(class_names) != CLASS_NAMES:
        raise DatasetError(f"{content_src}: classes {class_names}, expected {list(CLASS_NAMES)}")

    index = {pid: i for i, pid in enumerate(paper_ids)}
    cites = parse_cora_cites(
        read_zip_text(zip_path, CITES_MEMBER), f"{zip_path}:{CITES_MEMBER}", index
    )
    n = len(paper_ids)
    edge_index = symmetrize_edges(cites, n)
    text = align_cora_text(pt_path, paper_ids, labels, edge_index)

    return TAGraph(
        name="cora",
        class_names=class_names,
        labels=labels,
        edge_index=edge_index,
        source_ids=list(paper_ids),
        text=text,
        splits={int(s): tape_random_split(n, int(s)) for s in seeds},
    )
