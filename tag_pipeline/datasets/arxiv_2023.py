"""arxiv_2023: TAPE's citation graph of cs arXiv papers from 2023, with its stored edges and labels.

Source (under one directory, e.g. ``shared/data/arxiv_2023``; see the shared data README):

- ``dataset/data/graph.pt``: a pickled PyG ``Data`` with ``edge_index`` ``[2, 78548]`` and ``y``
  ``[46198]`` (``XiaoxinHe/tape_arxiv_2023``).

Labels index ogbn-arxiv's 40 arXiv cs categories: TAPE's ``tape_arxiv_2023`` (``src/process.py``)
maps each paper's primary subject through OGB's ``labelidx2arxivcategeory.csv.gz``, so
:data:`ARXIV_CS_CLASS_NAMES` is that file's list (cs.NA and cs.SY, by 2023 aliases of math.NA and
eess.SY, have no node). The graph has no text (titles and abstracts are not part of the shared
data). TAPE: He et al., ICLR 2024, https://arxiv.org/abs/2305.19523.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tag_pipeline.datasets.base import DatasetError, TAGraph, tape_random_split

GRAPH_NAME = "dataset/data/graph.pt"

#: The files :func:`load_arxiv_2023` reads, relative to its root (the graph's lineage inputs).
RAW_FILES: tuple[str, ...] = (GRAPH_NAME,)

#: Label ``c`` = ``ARXIV_CS_CLASS_NAMES[c]``; the same list, in the same order, as ogbn-arxiv's
#: ``mapping/labelidx2arxivcategeory.csv.gz`` (checked by the tests against that file).
ARXIV_CS_CLASS_NAMES: tuple[str, ...] = tuple(
    f"arxiv cs {code}"
    for code in (
        "na mm lo cy cr dc hc ce ni cc ai ma gl ne sc ar cv gr et sy "
        "cg oh pl se lg sd si ro it pf cl ir ms fl ds os gt db dl dm"
    ).split()
)


def _require_file(path: Path) -> Path:
    """Return ``path`` if it is a file, else raise :class:`DatasetError` naming it."""
    if not path.is_file():
        raise DatasetError(
            f"{path}: missing arxiv_2023 file (expected {path.name} in {path.parent})"
        )
    return path


def _pyg_data_globals() -> list[type]:
    """The PyG classes a pickled ``Data`` object references, to allow in ``torch.load``."""
    from torch_geometric.data.data import Data, DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    return [Data, DataEdgeAttr, DataTensorAttr, GlobalStorage]


def read_pyg_graph(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``edge_index`` and ``y`` from a ``torch.save``-d PyG ``Data`` object.

    Loads with ``torch.load(path, weights_only=True)``, PyG's ``Data`` and its storage classes
    registered as safe globals (``torch.serialization.safe_globals``), so no other code can run
    while unpickling. (The file is a trusted, checksummed one in any case.)

    Args:
        path (Path): e.g. ``dataset/data/graph.pt``.

    Returns:
        (np.ndarray, np.ndarray): ``edge_index`` ``[2, E]`` int64, as stored, and ``y`` ``[N]``
        int64.

    Raises:
        DatasetError: the file is missing or unreadable, lacks ``edge_index`` or ``y``, or has
            malformed shapes or edge indices outside ``0..N-1``.
    """
    _require_file(path)
    allowed = _pyg_data_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(path, weights_only=True, map_location="cpu")
        edge_index = torch.as_tensor(data.edge_index).numpy().astype(np.int64)
        y = torch.as_tensor(data.y).numpy().astype(np.int64)
    except Exception as e:  # UnpicklingError, RuntimeError, AttributeError...
        raise DatasetError(f"{path}: cannot read PyG graph ({type(e).__name__}: {e})") from e
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise DatasetError(f"{path}: edge_index has shape {edge_index.shape}, expected [2, E]")
    if y.ndim != 1 or y.shape[0] == 0:
        raise DatasetError(f"{path}: y has shape {y.shape}, expected [N]")
    if edge_index.size and (edge_index.min() < 0 or edge_index.max() >= y.shape[0]):
        raise DatasetError(f"{path}: edge_index refers to nodes outside 0..{y.shape[0] - 1}")
    return edge_index, y


def load_arxiv_2023(root: Path | str, seeds: Sequence[int] = (0, 1, 2, 3)) -> TAGraph:
    """Load arxiv_2023 in TAPE's conventions: 46,198 nodes, 78,548 stored edges, 40 classes.

    Node ``i`` is node ``i`` of ``graph.pt``. ``edge_index`` is used as stored, as TAPE does:
    directed citation pairs, not symmetrised, most of them stored twice (once from the citing
    paper's references, once from the cited paper's citations): 78,548 columns, 39,395 distinct
    pairs, 77,726 after symmetrising. Splits: TAPE's random 60/20/20 split per seed
    (27,718/9,240/9,240).

    Args:
        root (Path | str): directory holding ``dataset/data/graph.pt``
            (e.g. ``shared/data/arxiv_2023``).
        seeds (Sequence[int], optional): split seeds. (default: ``(0, 1, 2, 3)``)

    Returns:
        TAGraph: ``name="arxiv_2023"``, ``class_names`` :data:`ARXIV_CS_CLASS_NAMES`,
        ``labels`` ``[46198]`` int64, ``edge_index`` ``[2, 78548]`` int64 in stored order,
        ``source_ids`` the node indices as strings, ``text=None``, ``splits`` ``{seed: Split}``.

    Raises:
        DatasetError: the file is missing or malformed, or a label lies outside ``0..39``
            (the message names the file).

    Source: the shared data README; TAPE's ``load_arxiv_2023.py`` and ``tape_arxiv_2023``.
    """
    path = _require_file(Path(root) / GRAPH_NAME)
    edge_index, labels = read_pyg_graph(path)
    if labels.min() < 0 or labels.max() >= len(ARXIV_CS_CLASS_NAMES):
        raise DatasetError(f"{path}: labels outside 0..{len(ARXIV_CS_CLASS_NAMES) - 1}")
    n = int(labels.shape[0])
    return TAGraph(
        name="arxiv_2023",
        class_names=list(ARXIV_CS_CLASS_NAMES),
        labels=labels,
        edge_index=edge_index,
        source_ids=[str(i) for i in range(n)],
        text=None,
        splits={int(s): tape_random_split(n, int(s)) for s in seeds},
    )
