"""ogbn-arxiv with OGB's node order, labels and time split, and TAPE's symmetrised citations.

Sources (all under one directory, e.g. ``shared/data/ogbn-arxiv``; see the shared data README):

- ``graphsaint/adj_full.npz``: a scipy CSR matrix ``[N, N]`` (N = 169,343, nnz 1,166,243), entry
  ``(i, j)`` = paper ``i`` cites paper ``j``, in OGB's node order (GraphSAINT's copy).
- ``graphsaint/role.json``: ``{"tr", "va", "te"}`` node lists, the official time split
  (train <= 2017, validation 2018, test >= 2019).
- ``raw/node-label.csv.gz``: one label per line, no header (OGB's official labels).
- ``raw/node_year.csv.gz``: one publication year per line, no header (checks the split).
- ``mapping/labelidx2arxivcategeory.csv.gz``: ``label idx,arxiv category`` ("arxiv cs na", ...).
- ``mapping/nodeidx2paperid.csv.gz``: ``node idx,paper id`` (Microsoft Academic Graph ids).

Titles and abstracts (OGB's ``titleabs.tsv``) are not part of the shared data, so the graph has
no text. OGB: Hu et al., "Open Graph Benchmark", NeurIPS 2020 (https://arxiv.org/abs/2005.00687);
TAPE (He et al., ICLR 2024, https://arxiv.org/abs/2305.19523) symmetrises the citations
(``adj_t.to_symmetric()``) and uses the official split.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse

from tag_pipeline.datasets.base import DatasetError, Split, TAGraph, symmetrize_edges

ADJ_NAME = "graphsaint/adj_full.npz"
ROLE_NAME = "graphsaint/role.json"
LABEL_NAME = "raw/node-label.csv.gz"
YEAR_NAME = "raw/node_year.csv.gz"
CLASS_MAP_NAME = "mapping/labelidx2arxivcategeory.csv.gz"
PAPER_MAP_NAME = "mapping/nodeidx2paperid.csv.gz"

#: The files :func:`load_ogbn_arxiv` reads, relative to its root (the graph's lineage inputs).
RAW_FILES: tuple[str, ...] = (ADJ_NAME, ROLE_NAME, LABEL_NAME, CLASS_MAP_NAME, PAPER_MAP_NAME)

#: ``role.json`` key -> split part.
ROLE_KEYS = {"tr": "train", "va": "val", "te": "test"}


def _require_file(path: Path) -> Path:
    """Return ``path`` if it is a file, else raise :class:`DatasetError` naming it."""
    if not path.is_file():
        raise DatasetError(
            f"{path}: missing ogbn-arxiv file (expected {path.name} in {path.parent})"
        )
    return path


def _read_csv(path: Path, **kwargs: object) -> pl.DataFrame:
    """``polars.read_csv`` (gzip handled) with errors turned into :class:`DatasetError`."""
    _require_file(path)
    try:
        return pl.read_csv(path, **kwargs)  # type: ignore[arg-type]
    except Exception as e:  # polars raises several kinds for a malformed file
        raise DatasetError(f"{path}: cannot read csv ({type(e).__name__}: {e})") from e


def read_arxiv_class_names(path: Path) -> list[str]:
    """Read OGB's ``labelidx2arxivcategeory.csv.gz``: label index -> arXiv category name.

    Args:
        path (Path): the csv (header ``label idx,arxiv category``, gzip-compressed).

    Returns:
        list[str]: ``[C]`` names in label order, e.g. ``["arxiv cs na", "arxiv cs mm", ...]``
        (C = 40 for ogbn-arxiv).

    Raises:
        DatasetError: the file is missing or malformed, or the label indices are not
            ``0..C-1`` in order.
    """
    df = _read_csv(path, schema={"label idx": pl.Int64, "arxiv category": pl.Utf8})
    idx = df.get_column("label idx").to_numpy()
    if df.height == 0 or not np.array_equal(idx, np.arange(df.height)):
        raise DatasetError(f"{path}: label indices are not 0..{df.height - 1} in order")
    names = df.get_column("arxiv category").to_list()
    if any(n is None or not n.strip() for n in names):
        raise DatasetError(f"{path}: empty category name")
    return [n.strip() for n in names]


def read_paper_ids(path: Path, num_nodes: int) -> list[str]:
    """Read OGB's ``nodeidx2paperid.csv.gz``: node index -> MAG paper id.

    Args:
        path (Path): the csv (header ``node idx,paper id``, gzip-compressed).
        num_nodes (int): N.

    Returns:
        list[str]: ``[N]`` paper ids as strings, entry ``i`` = node ``i``'s paper.

    Raises:
        DatasetError: the file is missing or malformed, or its node indices are not ``0..N-1``.
    """
    df = _read_csv(path, schema={"node idx": pl.Int64, "paper id": pl.Utf8})
    if not np.array_equal(df.get_column("node idx").to_numpy(), np.arange(num_nodes)):
        raise DatasetError(f"{path}: node indices are not 0..{num_nodes - 1} in order")
    return df.get_column("paper id").to_list()


def read_node_column(path: Path, num_nodes: int | None = None) -> np.ndarray:
    """Read a one-integer-per-line OGB file without header (``node-label``, ``node_year``).

    Args:
        path (Path): the csv, gzip-compressed or not.
        num_nodes (int, optional): expected number of lines N. (default: ``None``, any)

    Returns:
        np.ndarray: ``[N]`` int64, line ``i`` = node ``i``.

    Raises:
        DatasetError: the file is missing, malformed, or has a wrong number of lines.
    """
    df = _read_csv(path, has_header=False, schema={"value": pl.Int64})
    col = df.get_column("value")
    if col.null_count():
        raise DatasetError(f"{path}: empty value on line {int(col.is_null().arg_true()[0]) + 1}")
    if num_nodes is not None and df.height != num_nodes:
        raise DatasetError(f"{path}: {df.height} lines, expected {num_nodes} (one per node)")
    return col.to_numpy().astype(np.int64)


def read_citations(path: Path) -> tuple[np.ndarray, int]:
    """Read GraphSAINT's ``adj_full.npz`` (``scipy.sparse.load_npz``, pickle disabled).

    Args:
        path (Path): the ``.npz`` file of a square sparse matrix, entry ``(i, j)`` = ``i``
            cites ``j``.

    Returns:
        (np.ndarray, int): the ``[2, M]`` int64 citations (row 0 = citing, row 1 = cited), one
        column per stored entry, as stored (neither symmetrised nor deduplicated); and N.

    Raises:
        DatasetError: the file is missing, not a sparse matrix, or not square.
    """
    _require_file(path)
    try:
        adj = scipy.sparse.load_npz(path)
    except Exception as e:  # ValueError, OSError, zipfile.BadZipFile...
        raise DatasetError(f"{path}: cannot read sparse matrix ({type(e).__name__}: {e})") from e
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise DatasetError(f"{path}: matrix of shape {adj.shape}, expected square")
    coo = adj.tocoo()
    return np.stack([coo.row, coo.col]).astype(np.int64), int(adj.shape[0])


def read_role_split(path: Path, num_nodes: int) -> Split:
    """Read GraphSAINT's ``role.json`` (``{"tr", "va", "te"}`` node lists) as a :class:`Split`.

    Args:
        path (Path): the JSON file.
        num_nodes (int): N.

    Returns:
        Split: sorted int64 train/val/test indices (ogbn-arxiv: 90,941/29,799/48,603).

    Raises:
        DatasetError: the file is missing or malformed, or the three lists do not partition
            ``0..N-1``.
    """
    _require_file(path)
    try:
        role = json.loads(path.read_bytes())
        parts = {ROLE_KEYS[k]: np.sort(np.asarray(role[k], dtype=np.int64)) for k in ROLE_KEYS}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(
            f"{path}: expected a JSON object with integer lists {sorted(ROLE_KEYS)} ({e!r})"
        ) from e
    everything = np.sort(np.concatenate(list(parts.values())))
    if not np.array_equal(everything, np.arange(num_nodes)):
        raise DatasetError(
            f"{path}: the {len(everything)} listed nodes do not partition 0..{num_nodes - 1}"
        )
    return Split(train=parts["train"], val=parts["val"], test=parts["test"])


def year_split(years: np.ndarray) -> Split:
    """OGB's official ogbn-arxiv split from publication years: <= 2017 / 2018 / >= 2019.

    Args:
        years (np.ndarray): ``[N]`` int years (``raw/node_year.csv.gz``).

    Returns:
        Split: sorted int64 indices.
    """
    years = np.asarray(years)
    return Split(
        train=np.flatnonzero(years <= 2017).astype(np.int64),
        val=np.flatnonzero(years == 2018).astype(np.int64),
        test=np.flatnonzero(years >= 2019).astype(np.int64),
    )


def load_ogbn_arxiv(root: Path | str, seeds: Sequence[int] = (0, 1, 2, 3)) -> TAGraph:
    """Load ogbn-arxiv in TAPE's conventions: 169,343 nodes, 40 classes, official time split.

    Node ``i`` is OGB's node ``i``. The 1,166,243 citations of ``adj_full.npz`` (row cites
    column; none repeated, no self-citation) are symmetrised and deduplicated as TAPE does
    (``adj_t.to_symmetric()``): 8,444 citation pairs go both ways, so 2 x 1,166,243 - 16,888 =
    2,315,598 directed edges remain. No self-loops are added. The split is the official time
    split of ``role.json``, the same for every seed (the seeds only vary model initialisation).

    Args:
        root (Path | str): directory holding ``graphsaint/``, ``raw/`` and ``mapping/``
            (e.g. ``shared/data/ogbn-arxiv``).
        seeds (Sequence[int], optional): seeds to attach the split to.
            (default: ``(0, 1, 2, 3)``)

    Returns:
        TAGraph: ``name="ogbn-arxiv"``, ``class_names`` the 40 category names of
        ``labelidx2arxivcategeory.csv.gz`` ("arxiv cs na", ...), ``labels`` ``[169343]`` int64,
        ``edge_index`` ``[2, 2315598]`` int64 sorted by (source, target), ``source_ids`` the MAG
        paper ids, ``text=None``, ``splits`` ``{seed: Split}`` (90,941/29,799/48,603, one
        shared :class:`Split` object).

    Raises:
        DatasetError: a file is missing or malformed, or the files disagree on N or C (the
            message names the file).

    Source: the shared data README; OGB (Hu et al., 2020); TAPE's ``load_arxiv.py``.
    """
    root = Path(root)
    for name in RAW_FILES:
        _require_file(root / name)

    class_names = read_arxiv_class_names(root / CLASS_MAP_NAME)
    labels = read_node_column(root / LABEL_NAME)
    n = int(labels.shape[0])
    if n == 0 or labels.min() < 0 or labels.max() >= len(class_names):
        raise DatasetError(f"{root / LABEL_NAME}: labels outside 0..{len(class_names) - 1}")
    cites, n_adj = read_citations(root / ADJ_NAME)
    if n_adj != n:
        raise DatasetError(f"{root / ADJ_NAME}: {n_adj} nodes, but {LABEL_NAME} has {n} labels")
    split = read_role_split(root / ROLE_NAME, n)
    return TAGraph(
        name="ogbn-arxiv",
        class_names=class_names,
        labels=labels,
        edge_index=symmetrize_edges(cites, n),
        source_ids=read_paper_ids(root / PAPER_MAP_NAME, n),
        text=None,
        splits={int(s): split for s in seeds},
    )
