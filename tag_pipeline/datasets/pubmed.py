"""PubMed-Diabetes in TAPE's node order, with the Planetoid release's labels and graph.

Sources (all under one directory, e.g. ``shared/data/pubmed``; see the shared data README):

- ``planetoid/ind.pubmed.{ally,ty,test.index,graph}``: the Planetoid release (Yang et al.,
  "Revisiting Semi-Supervised Learning with Graph Embeddings", ICML 2016), Python 2 pickles of
  numpy arrays and a dict of adjacency lists, in Planetoid's node order. ``ind.pubmed.allx`` is
  not part of the shared data; only labels and graph are read.
- ``pubmed-temporal/planetoid-index-map.json.gz``: a JSON list, entry ``i`` = the Planetoid index
  of TAPE node ``i``. TAPE's node order is the order of ``Pubmed-Diabetes.NODE.paper.tab``
  (not available), which this map recovers.

The TAPE label of node ``i`` is ``{0: 0, 2: 1, 1: 2}[planetoid_y[map[i]]]``; the graph has no
text (titles and abstracts are not part of the shared data). TAPE: He et al., ICLR 2024,
https://arxiv.org/abs/2305.19523.
"""

from __future__ import annotations

import gzip
import json
import pickle
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tag_pipeline.datasets.base import DatasetError, TAGraph, symmetrize_edges, tape_random_split

PLANETOID_DIR = "planetoid"
INDEX_MAP_NAME = "pubmed-temporal/planetoid-index-map.json.gz"

#: The files :func:`load_pubmed` reads, relative to its root (the graph's lineage inputs).
RAW_FILES: tuple[str, ...] = (
    *(f"{PLANETOID_DIR}/ind.pubmed.{part}" for part in ("ally", "ty", "test.index", "graph")),
    INDEX_MAP_NAME,
)

#: TAPE's class names, label ``c`` = ``PUBMED_CLASS_NAMES[c]``.
PUBMED_CLASS_NAMES = ["Experimentally induced diabetes", "Type 1 diabetes", "Type 2 diabetes"]

#: ``{Planetoid label: TAPE label}``.
PLANETOID_TO_TAPE_LABEL: Mapping[int, int] = {0: 0, 2: 1, 1: 2}

# The only globals the Planetoid pickles reference (module and name as written by Python 2):
# numpy arrays (ally, ty) and a defaultdict of lists (graph).
_NDARRAY_RECONSTRUCT = np.empty(0).__reduce__()[0]
_PICKLE_GLOBALS: Mapping[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _NDARRAY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NDARRAY_RECONSTRUCT,
    ("collections", "defaultdict"): defaultdict,
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
}


class _PlanetoidUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, lists and defaultdicts, and refuses anything else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def _require_file(path: Path) -> Path:
    """Return ``path`` if it is a file, else raise :class:`DatasetError` naming it."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing PubMed file (expected {path.name} in {path.parent})")
    return path


def read_planetoid_pickle(path: Path) -> Any:
    """Read one ``ind.<name>.*`` pickle of the Planetoid release.

    The files are Python 2 pickles (read with ``encoding="latin1"``, as PyG's
    ``read_planetoid_data`` does) of trusted, checksummed data (see the shared data
    ``SHA256SUMS``). Even so, the unpickler resolves only numpy's array and dtype, ``list`` and
    ``collections.defaultdict``; any other global is refused.

    Args:
        path (Path): e.g. ``planetoid/ind.pubmed.ally``.

    Returns:
        Any: the object (``np.ndarray`` for ``ally``/``ty``, ``defaultdict(list)`` for ``graph``).

    Raises:
        DatasetError: the file is missing, not a pickle, or references another global.
    """
    _require_file(path)
    try:
        with path.open("rb") as f:
            return _PlanetoidUnpickler(f, encoding="latin1").load()
    except Exception as e:  # UnpicklingError, EOFError, ValueError...
        raise DatasetError(
            f"{path}: cannot read Planetoid pickle ({type(e).__name__}: {e})"
        ) from e


def _one_hot_matrix(obj: Any, path: Path) -> np.ndarray:
    """Check that a Planetoid label object is a 2-d array and return it."""
    arr = np.asarray(obj)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise DatasetError(f"{path}: expected a 2-d one-hot label array, got shape {arr.shape}")
    return arr


def read_planetoid_labels(planetoid_dir: Path, name: str = "pubmed") -> np.ndarray:
    """Planetoid labels in Planetoid's node order, as PyG's ``read_planetoid_data`` gives them.

    ``y = argmax(concat(ally, ty))``: rows ``0..len(ally)-1`` are the non-test nodes, the last
    ``len(ty)`` rows the test nodes in the order of ``test.index``. The test nodes' labels are
    then moved to their graph indices: ``y[test_index] = y[sorted(test_index)]``.

    Args:
        planetoid_dir (Path): directory holding ``ind.<name>.ally``, ``.ty`` and
            ``.test.index``.
        name (str, optional): the Planetoid dataset name. (default: ``"pubmed"``)

    Returns:
        np.ndarray: ``[N]`` int64 Planetoid labels (PubMed: N = 19,717, labels 0..2).

    Raises:
        DatasetError: a file is missing or malformed, or the sizes disagree.
    """
    ally_path = planetoid_dir / f"ind.{name}.ally"
    ty_path = planetoid_dir / f"ind.{name}.ty"
    index_path = planetoid_dir / f"ind.{name}.test.index"
    ally = _one_hot_matrix(read_planetoid_pickle(ally_path), ally_path)
    ty = _one_hot_matrix(read_planetoid_pickle(ty_path), ty_path)
    if ally.shape[1] != ty.shape[1]:
        raise DatasetError(
            f"{ty_path}: {ty.shape[1]} classes, but {ally_path.name} has {ally.shape[1]}"
        )
    try:
        test_index = np.array(_require_file(index_path).read_text().split(), dtype=np.int64)
    except ValueError as e:
        raise DatasetError(f"{index_path}: expected one integer per line ({e})") from e
    y = np.concatenate([ally, ty]).argmax(axis=1).astype(np.int64)
    n = y.shape[0]
    if test_index.shape[0] != ty.shape[0] or np.unique(test_index).shape[0] != ty.shape[0]:
        raise DatasetError(
            f"{index_path}: {test_index.shape[0]} test indices ({np.unique(test_index).shape[0]} "
            f"distinct), expected {ty.shape[0]} (rows of {ty_path.name})"
        )
    if test_index.min() < 0 or test_index.max() >= n:
        raise DatasetError(f"{index_path}: test index outside 0..{n - 1}")
    y[test_index] = y[np.sort(test_index)]
    return y


def read_planetoid_graph(path: Path, num_nodes: int) -> np.ndarray:
    """Read the Planetoid graph (a dict ``node -> list of neighbours``) as directed pairs.

    Args:
        path (Path): e.g. ``planetoid/ind.pubmed.graph``.
        num_nodes (int): N; every index must lie in ``0..N-1``.

    Returns:
        np.ndarray: ``[2, M]`` int64, one column ``(node, neighbour)`` per list entry, as stored
        (self-loops and duplicates kept; PubMed: M = 88,676 with 6 self-loops).

    Raises:
        DatasetError: the file is missing, not a dict of integer lists, or names a node outside
            ``0..N-1``.
    """
    graph = read_planetoid_pickle(path)
    if not isinstance(graph, dict):
        raise DatasetError(
            f"{path}: expected a dict of adjacency lists, got {type(graph).__name__}"
        )
    try:
        src = np.concatenate(
            [np.full(len(nbrs), int(node), dtype=np.int64) for node, nbrs in graph.items()]
            or [np.empty(0, dtype=np.int64)]
        )
        dst = np.concatenate(
            [np.asarray(list(nbrs), dtype=np.int64).reshape(-1) for nbrs in graph.values()]
            or [np.empty(0, dtype=np.int64)]
        )
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: adjacency lists are not lists of integers ({e})") from e
    edges = np.stack([src, dst])
    if edges.size and (edges.min() < 0 or edges.max() >= num_nodes):
        raise DatasetError(f"{path}: node index outside 0..{num_nodes - 1}")
    return edges


def read_index_map(path: Path, num_nodes: int) -> np.ndarray:
    """Read ``planetoid-index-map.json.gz``: entry ``i`` = Planetoid index of TAPE node ``i``.

    Args:
        path (Path): the gzip-compressed JSON list.
        num_nodes (int): N.

    Returns:
        np.ndarray: ``[N]`` int64, a permutation of ``0..N-1``.

    Raises:
        DatasetError: the file is missing or malformed, or is not a permutation of ``0..N-1``.
    """
    _require_file(path)
    try:
        with gzip.open(path, "rb") as f:
            index_map = np.asarray(json.load(f), dtype=np.int64)
    except (OSError, EOFError, UnicodeDecodeError, TypeError, ValueError) as e:
        # json.JSONDecodeError is a ValueError; gzip.BadGzipFile an OSError
        raise DatasetError(
            f"{path}: expected a gzip-compressed JSON list of integers ({e})"
        ) from e
    if index_map.ndim != 1 or not np.array_equal(np.sort(index_map), np.arange(num_nodes)):
        raise DatasetError(f"{path}: not a permutation of 0..{num_nodes - 1}")
    return index_map


def load_pubmed(root: Path | str, seeds: Sequence[int] = (0, 1, 2, 3)) -> TAGraph:
    """Load PubMed in TAPE's conventions: 19,717 nodes, 88,648 directed edges, 3 classes.

    Node ``i`` is TAPE's node ``i`` (Planetoid node ``map[i]``). Labels are Planetoid's
    (:func:`read_planetoid_labels`) mapped through :data:`PLANETOID_TO_TAPE_LABEL`; counts
    4103/7875/7739. Edges: the Planetoid graph with its self-loops dropped, symmetrised and
    deduplicated (88,676 stored pairs, 6 of them self-loops and 22 repeats; the rest is already
    symmetric: 88,648), renumbered to TAPE's order. Splits: TAPE's random 60/20/20 split per
    seed (11,830/3,943/3,944).

    Args:
        root (Path | str): directory holding ``planetoid/`` and ``pubmed-temporal/``
            (e.g. ``shared/data/pubmed``).
        seeds (Sequence[int], optional): split seeds. (default: ``(0, 1, 2, 3)``)

    Returns:
        TAGraph: ``name="pubmed"``, ``class_names`` :data:`PUBMED_CLASS_NAMES`, ``labels``
        ``[19717]`` int64, ``edge_index`` ``[2, 88648]`` int64 sorted by (source, target),
        ``source_ids`` the node indices as strings (PubMed ids are not available in TAPE's
        order), ``text=None``, ``splits`` ``{seed: Split}``.

    Raises:
        DatasetError: a file is missing or malformed, or the files disagree (the message names
            the file).

    Source: the shared data README; Planetoid (Yang et al., 2016) as read by PyG; TAPE.
    """
    root = Path(root)
    planetoid = root / PLANETOID_DIR
    for name in RAW_FILES:
        _require_file(root / name)

    planetoid_y = read_planetoid_labels(planetoid, "pubmed")
    n = int(planetoid_y.shape[0])
    if planetoid_y.max() >= len(PLANETOID_TO_TAPE_LABEL):
        raise DatasetError(
            f"{planetoid / 'ind.pubmed.ally'}: {planetoid_y.max() + 1} classes, expected "
            f"{len(PLANETOID_TO_TAPE_LABEL)}"
        )
    index_map = read_index_map(root / INDEX_MAP_NAME, n)
    lut = np.array([PLANETOID_TO_TAPE_LABEL[c] for c in range(len(PLANETOID_TO_TAPE_LABEL))])
    labels = lut[planetoid_y[index_map]].astype(np.int64)

    pairs = read_planetoid_graph(planetoid / "ind.pubmed.graph", n)
    pairs = pairs[:, pairs[0] != pairs[1]]
    tape_of_planetoid = np.empty(n, dtype=np.int64)
    tape_of_planetoid[index_map] = np.arange(n)
    edge_index = symmetrize_edges(tape_of_planetoid[pairs], n)

    return TAGraph(
        name="pubmed",
        class_names=list(PUBMED_CLASS_NAMES),
        labels=labels,
        edge_index=edge_index,
        source_ids=[str(i) for i in range(n)],
        text=None,
        splits={int(s): tape_random_split(n, int(s)) for s in seeds},
    )
