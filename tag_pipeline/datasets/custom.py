"""A user's own text-attributed graph, from a nodes table, an edges table and a class list.

Tables may be Parquet (``.parquet``) or CSV (``.csv``, UTF-8, with a header row). CSV cells
are read as text, so node ids keep their written form (``"007"`` stays ``"007"``). Every
problem is reported as a :class:`~tag_pipeline.datasets.base.DatasetError` naming the file
and the first offending row: ``row N`` is the 0-based data row; for CSV also ``line L`` =
``N + 2`` (the header is line 1; exact when no quoted cell spans several lines).

The loader only reads: it returns a :class:`~tag_pipeline.datasets.base.TAGraph`, which the
caller writes to the lake with :func:`tag_pipeline.lake.write_artifact` and
:func:`~tag_pipeline.datasets.base.write_graph`.

Follows TAPE's data conventions (see the shared data README): integer labels ``0..C-1``
indexing the class names, symmetrised edges for undirected graphs, TAPE's random 60/20/20
split per seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from tag_pipeline.datasets.base import (
    SPLIT_NAMES,
    DatasetError,
    Split,
    TAGraph,
    symmetrize_edges,
    tape_random_split,
    unique_sorted_edges,
)

#: Optional nodes column holding a fixed split (``train``/``val``/``test``) for every seed.
SPLIT_COL = "split"
#: Column of a CSV/Parquet class file holding the class names (in label order).
CLASS_NAME_COL = "name"

TABLE_SUFFIXES = (".parquet", ".csv")


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def where(path: Path, row: int) -> str:
    """``"row N"`` for Parquet, ``"row N (line N+2)"`` for CSV: how errors name a row.

    Args:
        path (Path): the file the row belongs to (its suffix decides the form).
        row (int): 0-based data row index.

    Returns:
        str: e.g. ``"row 3 (line 5)"``.
    """
    return f"row {row} (line {row + 2})" if _is_csv(path) else f"row {row}"


def read_table(path: Path | str) -> pl.DataFrame:
    """Read a Parquet or CSV table; CSV columns are all read as strings.

    Args:
        path (Path | str): a ``.parquet`` or ``.csv`` file (CSV: UTF-8, header row).

    Returns:
        pl.DataFrame: the table, rows in file order.

    Raises:
        DatasetError: the file is missing, has another extension, or cannot be parsed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DatasetError(
            f"{path}: unsupported file type {path.suffix!r}; expected one of {TABLE_SUFFIXES}"
        )
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        return pl.read_csv(path, infer_schema=False)
    except Exception as e:  # polars raises many types (NoDataError, ComputeError, OSError...)
        if suffix == ".csv" and "utf-8" in str(e).lower():
            line = first_non_utf8_line(path)
            if line is not None:
                raise DatasetError(f"{path}: text is not valid UTF-8 at {where(path, line - 2)}") from e
        raise DatasetError(f"{path}: cannot read table ({type(e).__name__}: {e})") from e


def first_non_utf8_line(path: Path) -> int | None:
    """1-based number of the first line of ``path`` that is not valid UTF-8, or ``None``.

    Counts physical lines, as :func:`where` does (a quoted cell spanning lines shifts it).
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def require_columns(df: pl.DataFrame, path: Path, columns: Sequence[str]) -> None:
    """Raise :class:`DatasetError` naming ``path`` and every column of ``columns`` it lacks."""
    missing = [c for c in dict.fromkeys(columns) if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"found {df.columns}"
        )


def fail_first(path: Path, bad: np.ndarray, what: str, values: Sequence[object]) -> None:
    """Raise :class:`DatasetError` for the first ``True`` row of ``bad``, if any.

    Args:
        path (Path): the file.
        bad (np.ndarray): ``[R]`` bool, one per data row: which rows offend.
        what (str): the problem, e.g. ``"empty text"``.
        values (Sequence[object]): ``[R]`` the offending column's values (for the message).

    Raises:
        DatasetError: ``"<path>: <what> at row N (line L): <value>; K row(s) affected"``.
    """
    rows = np.flatnonzero(np.asarray(bad, dtype=bool))
    if rows.size:
        r = int(rows[0])
        raise DatasetError(
            f"{path}: {what} at {where(path, r)}: {values[r]!r}; "
            f"{rows.size} row(s) affected in total"
        )


def _as_text(series: pl.Series, path: Path) -> pl.Series:
    try:
        return series.cast(pl.Utf8)
    except Exception as e:
        raise DatasetError(
            f"{path}: column {series.name!r} of type {series.dtype} cannot be read as text"
        ) from e


def _check_class_names(
    names: Sequence[object], source: object, position: Callable[[int], str]
) -> list[str]:
    """Validate class names (non-empty, unique); ``position(k)`` names entry ``k`` in errors."""
    if len(names) == 0:
        raise DatasetError(f"{source}: no class names")
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        if name is None or not str(name).strip():
            raise DatasetError(f"{source}: empty class name at {position(k)}: {name!r}")
        if str(name) in seen:
            raise DatasetError(
                f"{source}: duplicate class name {name!r} at {position(k)} "
                f"(first at {position(seen[str(name)])})"
            )
        seen[str(name)] = k
    return [str(n) for n in names]


def read_class_names(classes: Sequence[str] | str | os.PathLike[str]) -> list[str]:
    """The class names, in label order, from a list or a file.

    Args:
        classes (Sequence[str] | str | PathLike): the names themselves, or a path to a ``.txt``
            file (one name per line, surrounding whitespace stripped, trailing blank lines
            ignored) or a ``.csv``/``.parquet`` table with a ``name`` column (row order).

    Returns:
        list[str]: ``[C]`` unique, non-empty class names; label ``c`` means ``names[c]``.

    Raises:
        DatasetError: the file is missing or of another type, lacks the ``name`` column, or a
            name is empty or repeated (the message names the file and the row or line).
    """
    if isinstance(classes, (str, os.PathLike)):
        path = Path(classes)
        if path.suffix.lower() == ".txt":
            if not path.is_file():
                raise DatasetError(f"{path}: file not found")
            try:
                lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            except (OSError, UnicodeDecodeError) as e:
                raise DatasetError(f"{path}: cannot read class names ({e})") from e
            while lines and not lines[-1]:
                lines.pop()
            return _check_class_names(lines, path, lambda k: f"line {k + 1}")
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise DatasetError(
                f"{path}: unsupported class file type {path.suffix!r}; "
                "expected .txt, .csv or .parquet"
            )
        df = read_table(path)
        require_columns(df, path, [CLASS_NAME_COL])
        names = _as_text(df[CLASS_NAME_COL], path).to_list()
        return _check_class_names(names, path, lambda k: where(path, k))
    return _check_class_names(list(classes), "classes", lambda k: f"position {k}")


def node_ids(df: pl.DataFrame, path: Path, id_col: str) -> list[str]:
    """The node ids as strings, checked non-null and unique.

    Args:
        df (pl.DataFrame): the nodes table.
        path (Path): its file (for messages).
        id_col (str): the id column.

    Returns:
        list[str]: ``[N]`` ids in row order.

    Raises:
        DatasetError: a null id, or an id that repeats an earlier row (both rows named).
    """
    ids = _as_text(df[id_col], path)
    fail_first(path, ids.is_null().to_numpy(), f"null node id in column {id_col!r}", ids.to_list())
    dup = (~ids.is_first_distinct()).to_numpy()
    rows = np.flatnonzero(dup)
    if rows.size:
        r = int(rows[0])
        first = ids.to_list().index(ids[r])
        raise DatasetError(
            f"{path}: duplicate node id {ids[r]!r} at {where(path, r)}, first at "
            f"{where(path, first)}; {rows.size} duplicate row(s) in total"
        )
    return ids.to_list()


def node_texts(df: pl.DataFrame, path: Path, text_col: str) -> list[str]:
    """The node texts, checked non-null and not blank.

    Args:
        df (pl.DataFrame): the nodes table.
        path (Path): its file (for messages).
        text_col (str): the text column.

    Returns:
        list[str]: ``[N]`` texts, as stored (not stripped).

    Raises:
        DatasetError: a null, empty or whitespace-only text (first such row named).
    """
    text = _as_text(df[text_col], path)
    blank = text.is_null() | (text.str.strip_chars().str.len_chars() == 0)
    what = f"empty or missing text in column {text_col!r}"
    fail_first(path, blank.fill_null(True).to_numpy(), what, text.to_list())
    return text.to_list()


def node_labels(
    df: pl.DataFrame, path: Path, label_col: str, class_names: Sequence[str]
) -> np.ndarray:
    """Map the label column to ``0..C-1``.

    The column holds either class names or integer class indices: an integer column is read
    as indices; a text column is read as names when every value is a class name, else as
    indices when every value is a string of digits (as CSV stores integers), else as names.

    Args:
        df (pl.DataFrame): the nodes table.
        path (Path): its file (for messages).
        label_col (str): the label column.
        class_names (Sequence[str]): ``[C]`` the classes.

    Returns:
        np.ndarray: ``[N]`` int64 labels in ``0..C-1``.

    Raises:
        DatasetError: a null label, or one that is neither a class name nor an index in
            ``0..C-1`` (first such row named).
    """
    col = df[label_col]
    c = len(class_names)
    if col.dtype.is_integer():
        values = col.to_list()
        idx = col.cast(pl.Int64).fill_null(-1).to_numpy()
        bad = col.is_null().to_numpy() | (idx < 0) | (idx >= c)
        fail_first(path, bad, f"label outside class indices 0..{c - 1}", values)
        return idx.astype(np.int64)
    text = _as_text(col, path)
    values = text.to_list()
    lookup = {name: k for k, name in enumerate(class_names)}
    non_null = text.drop_nulls()
    as_names = non_null.is_in(list(class_names)).all()
    as_index = (not as_names) and non_null.len() > 0 and non_null.str.contains(r"^\d+$").all()
    if as_index:
        idx = text.cast(pl.Int64, strict=False).fill_null(-1).to_numpy()
        bad = text.is_null().to_numpy() | (idx < 0) | (idx >= c)
        fail_first(path, bad, f"label outside class indices 0..{c - 1}", values)
        return idx.astype(np.int64)
    idx = np.array([lookup.get(v, -1) if v is not None else -1 for v in values], dtype=np.int64)
    what = (
        f"label not in the class list {list(class_names)} (labels must be all class names "
        f"or all indices 0..{c - 1})"
    )
    fail_first(path, idx < 0, what, values)
    return idx


def fixed_split(df: pl.DataFrame, path: Path) -> Split:
    """A fixed split from the nodes table's ``split`` column (``train``/``val``/``test``).

    Args:
        df (pl.DataFrame): the nodes table (with a ``split`` column).
        path (Path): its file (for messages).

    Returns:
        Split: sorted int64 node indices per part.

    Raises:
        DatasetError: a null value or one outside ``train``/``val``/``test`` (first row named).
    """
    parts = _as_text(df[SPLIT_COL], path)
    values = parts.to_list()
    bad = ~parts.is_in(list(SPLIT_NAMES)).fill_null(False).to_numpy()
    fail_first(path, bad, f"{SPLIT_COL!r} value not in {SPLIT_NAMES}", values)
    arr = np.asarray(values, dtype=object)
    return Split(*(np.flatnonzero(arr == p).astype(np.int64) for p in SPLIT_NAMES))


def edge_index_from_ids(
    df: pl.DataFrame,
    path: Path,
    ids: Sequence[str],
    src_col: str,
    dst_col: str,
    undirected: bool,
) -> np.ndarray:
    """Map an edge list of node ids to node indices; symmetrise, deduplicate and sort.

    Args:
        df (pl.DataFrame): the edges table.
        path (Path): its file (for messages).
        ids (Sequence[str]): ``[N]`` node ids, index ``i`` = node ``i``.
        src_col (str): source id column.
        dst_col (str): target id column.
        undirected (bool): add the reverse of every edge.

    Returns:
        np.ndarray: ``[2, E]`` int64, unique, sorted by (source, target); self-loops kept.

    Raises:
        DatasetError: an edge row whose source or target is not a node id (first row named).
    """
    n = len(ids)
    node_of = pl.Series("id", list(ids), dtype=pl.Utf8)
    index = pl.Series("index", np.arange(n, dtype=np.int64))
    mapped = []
    for col in (src_col, dst_col):
        s = _as_text(df[col], path)
        m = s.replace_strict(node_of, index, default=None, return_dtype=pl.Int64)
        mapped.append((s, m))
    (src_s, src), (dst_s, dst) = mapped
    bad = (src.is_null() | dst.is_null()).to_numpy()
    rows = np.flatnonzero(bad)
    if rows.size:
        r = int(rows[0])
        raise DatasetError(
            f"{path}: dangling edge at {where(path, r)}: {src_col}={src_s[r]!r}, "
            f"{dst_col}={dst_s[r]!r} is not a node id; {rows.size} row(s) affected in total"
        )
    ei = np.stack([src.to_numpy(), dst.to_numpy()]).astype(np.int64).reshape(2, -1)
    return symmetrize_edges(ei, n) if undirected else unique_sorted_edges(ei, n)


def load_custom(
    nodes_path: Path | str,
    edges_path: Path | str,
    classes: Sequence[str] | str | os.PathLike[str],
    *,
    name: str,
    id_col: str = "id",
    text_col: str = "text",
    label_col: str = "label",
    src_col: str = "src",
    dst_col: str = "dst",
    undirected: bool = True,
    seeds: Sequence[int] = (0, 1, 2, 3),
) -> TAGraph:
    """Load a user's text-attributed graph into a :class:`TAGraph`.

    Node ``i`` is row ``i`` of the nodes table. Edges name node ids; they are mapped to node
    indices, symmetrised when ``undirected``, deduplicated and sorted (self-loops kept).
    Labels (class names or indices) are mapped to ``0..C-1``. Splits are TAPE's random
    60/20/20 split per seed, unless the nodes table has a ``split`` column
    (``train``/``val``/``test``), which is then used as a fixed split for every seed.

    Args:
        nodes_path (Path | str): nodes table (``.parquet`` or ``.csv``), one row per node.
        edges_path (Path | str): edges table (``.parquet`` or ``.csv``), one row per edge.
        classes (Sequence[str] | str | PathLike): class names in label order, or a file of
            them (see :func:`read_class_names`).
        name (str): dataset name.
        id_col (str, optional): node id column. (default: ``"id"``)
        text_col (str, optional): text column. (default: ``"text"``)
        label_col (str, optional): label column. (default: ``"label"``)
        src_col (str, optional): edge source column. (default: ``"src"``)
        dst_col (str, optional): edge target column. (default: ``"dst"``)
        undirected (bool, optional): add reverse edges. (default: ``True``)
        seeds (Sequence[int], optional): split seeds. (default: ``(0, 1, 2, 3)``)

    Returns:
        TAGraph: ``labels`` ``[N]`` int64, ``edge_index`` ``[2, E]`` int64, ``source_ids``
        the ids as strings, ``text`` ``[N]``, ``splits`` ``{seed: Split}``.

    Raises:
        DatasetError: unsupported or missing file, missing columns, empty nodes table, null or
            duplicate ids, empty text, unknown labels, bad split values, dangling edges, bad
            class names. The message names the file and the first offending row (and how
            many rows offend).

    Source: TAPE's data conventions, see the shared data README.
    """
    if not name:
        raise DatasetError("load_custom: name must be a non-empty string")
    nodes_path, edges_path = Path(nodes_path), Path(edges_path)
    class_names = read_class_names(classes)

    nodes = read_table(nodes_path)
    require_columns(nodes, nodes_path, [id_col, text_col, label_col])
    if nodes.height == 0:
        raise DatasetError(f"{nodes_path}: the nodes table has no rows")
    ids = node_ids(nodes, nodes_path, id_col)
    text = node_texts(nodes, nodes_path, text_col)
    labels = node_labels(nodes, nodes_path, label_col, class_names)
    split = fixed_split(nodes, nodes_path) if SPLIT_COL in nodes.columns else None

    edges = read_table(edges_path)
    require_columns(edges, edges_path, [src_col, dst_col])
    edge_index = edge_index_from_ids(edges, edges_path, ids, src_col, dst_col, undirected)

    n = len(ids)
    splits = {int(s): split if split is not None else tape_random_split(n, int(s)) for s in seeds}
    return TAGraph(
        name=name,
        class_names=class_names,
        labels=labels,
        edge_index=edge_index,
        source_ids=ids,
        text=text,
        splits=splits,
    )
