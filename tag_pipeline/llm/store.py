"""The LLM response store: one Parquet table of answers, shared by every LLM backend.

One row per ``(node_id, model)``: what the LLM answered for one node, parsed into TAPE's
prediction feature (ranked class indices, P) and explanation (E), with the provenance needed to
trust or redo it. Replayed answers (TAPE's released ``gpt_responses``), online APIs and offline
engines all write this table, so the later stages never care where an answer came from.

Columns (:data:`RESPONSE_SCHEMA`):

======================  ==============  ======================================================
column                  dtype           meaning
======================  ==============  ======================================================
``node_id``             Int64           node index ``0..N-1`` (dataset's canonical order)
``model``               Utf8            model that answered, e.g. ``"gpt-3.5-turbo-0301"``
``status``              Utf8            ``"ok"`` (an answer, maybe naming no class) or
                                        ``"failed"`` (no answer)
``error``               Utf8, nullable  why it failed; null when ``status == "ok"``
``raw_text``            Utf8, nullable  the answer as returned; null when failed
``ranked_labels``       List(Int64)     distinct class indices, most likely first; ``[]`` when
                                        failed or when the answer named no class
``explanation``         Utf8            the reasoning part of the answer; ``""`` when failed
``finish_reason``       Utf8, nullable  ``"stop"``, ``"length"`` (cut off), ...
``prompt_tokens``       Int64, nullable usage reported by the backend
``completion_tokens``   Int64, nullable usage reported by the backend
``response_id``         Utf8, nullable  the backend's id of the completion
``created_unix``        Int64, nullable when the backend created it (Unix seconds)
``source``              Utf8            provenance: ``"replay:<file>"``, ``"online:litellm"``,
                                        ``"offline:vllm"``, ...
``prompt_version``      Utf8, nullable  version of the prompt template, where known
======================  ==============  ======================================================

(Source: TAPE, arXiv 2305.19523, Sec. 4.1: one LLM query per node returning a ranked list of
categories and an explanation; the ``[N, k]`` matrix of :func:`ranked_matrix` is TAPE's input
to the embedding of the prediction feature.)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tag_pipeline.datasets.base import DatasetError

RESPONSE_SCHEMA: dict[str, pl.DataType] = {
    "node_id": pl.Int64(),
    "model": pl.Utf8(),
    "status": pl.Utf8(),
    "error": pl.Utf8(),
    "raw_text": pl.Utf8(),
    "ranked_labels": pl.List(pl.Int64()),
    "explanation": pl.Utf8(),
    "finish_reason": pl.Utf8(),
    "prompt_tokens": pl.Int64(),
    "completion_tokens": pl.Int64(),
    "response_id": pl.Utf8(),
    "created_unix": pl.Int64(),
    "source": pl.Utf8(),
    "prompt_version": pl.Utf8(),
}
"""Column name -> polars dtype of the response table, in column order."""

STATUSES = ("ok", "failed")
NON_NULL_COLUMNS = ("node_id", "model", "status", "ranked_labels", "explanation", "source")


class ResponseError(DatasetError):
    """A response table or a recorded answer is invalid; the message names the file and row."""


def responses_from_records(records: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Build a response table from row dicts; absent keys become nulls.

    Args:
        records (Sequence[Mapping[str, Any]]): one dict per row, keys from
            :data:`RESPONSE_SCHEMA`.

    Returns:
        pl.DataFrame: the rows in :data:`RESPONSE_SCHEMA` (not yet validated).

    Raises:
        KeyError: a record has a key that is not a column.
    """
    for i, rec in enumerate(records):
        unknown = set(rec) - set(RESPONSE_SCHEMA)
        if unknown:
            raise KeyError(f"record {i}: unknown response columns {sorted(unknown)}")
    columns = {name: [rec.get(name) for rec in records] for name in RESPONSE_SCHEMA}
    return pl.DataFrame(columns, schema=RESPONSE_SCHEMA)


def _conform_schema(df: pl.DataFrame, path_for_errors: str) -> pl.DataFrame:
    """Columns of ``df`` in schema order and dtypes; integer widening and all-null casts only."""
    missing = [c for c in RESPONSE_SCHEMA if c not in df.columns]
    if missing:
        raise ResponseError(f"{path_for_errors}: missing response columns {missing}")
    extra = [c for c in df.columns if c not in RESPONSE_SCHEMA]
    if extra:
        raise ResponseError(f"{path_for_errors}: unknown response columns {extra}")
    out = []
    for name, dtype in RESPONSE_SCHEMA.items():
        col = df.get_column(name)
        if col.dtype != dtype:
            ok = (
                col.dtype == pl.Null
                or (dtype.is_integer() and col.dtype.is_integer())
                or (
                    isinstance(col.dtype, pl.List)
                    and isinstance(dtype, pl.List)
                    and (col.dtype.inner.is_integer() or col.dtype.inner == pl.Null)
                )
            )
            if not ok:
                raise ResponseError(
                    f"{path_for_errors}: column {name!r} has dtype {col.dtype}, expected {dtype}"
                )
            try:
                col = col.cast(dtype, strict=True)
            except pl.exceptions.PolarsError as e:
                raise ResponseError(
                    f"{path_for_errors}: column {name!r} cannot be cast to {dtype} ({e})"
                ) from e
        out.append(col)
    return pl.DataFrame(out)


def _first_bad_row(mask: pl.Series) -> int | None:
    """Index of the first ``True`` in a boolean series (nulls count as ``False``)."""
    idx = mask.fill_null(False).arg_true()
    return int(idx[0]) if len(idx) else None


def validate_responses(
    df: pl.DataFrame, num_nodes: int, num_classes: int, path_for_errors: str
) -> pl.DataFrame:
    """Check a response table and return it in :data:`RESPONSE_SCHEMA` column order.

    Checks, in order: every column present, no unknown column, dtypes (integer columns of a
    narrower integer type and all-null columns are cast); no nulls in ``node_id``, ``model``,
    ``status``, ``ranked_labels``, ``explanation``, ``source``; ``node_id`` in ``0..N-1``;
    ``status`` in ``{"ok", "failed"}``; a failed row has an ``error`` and no labels; an ok row
    has ``raw_text``; labels in ``0..C-1`` and distinct within a row; at most one row per
    ``(node_id, model)``.

    Args:
        df (pl.DataFrame): the table to check.
        num_nodes (int): N, number of nodes of the dataset.
        num_classes (int): C, number of classes.
        path_for_errors (str): the file the table came from (or will go to), for messages.

    Returns:
        pl.DataFrame: ``df`` with exactly the schema's columns and dtypes, rows unchanged.

    Raises:
        ResponseError: (a ``ValueError``) the first problem found, naming ``path_for_errors``
            and the 0-based row index.
    """
    where = path_for_errors
    df = _conform_schema(df, where)
    for name in NON_NULL_COLUMNS:
        row = _first_bad_row(df.get_column(name).is_null())
        if row is not None:
            raise ResponseError(f"{where}: row {row}: {name} is null")

    node = df.get_column("node_id")
    row = _first_bad_row((node < 0) | (node >= num_nodes))
    if row is not None:
        raise ResponseError(
            f"{where}: row {row}: node_id {node[row]} out of range 0..{num_nodes - 1}"
        )
    status = df.get_column("status")
    row = _first_bad_row(~status.is_in(STATUSES))
    if row is not None:
        raise ResponseError(f"{where}: row {row}: status {status[row]!r} not in {STATUSES}")

    failed = status == "failed"
    n_labels = df.get_column("ranked_labels").list.len()
    row = _first_bad_row(failed & df.get_column("error").is_null())
    if row is not None:
        raise ResponseError(f"{where}: row {row}: status 'failed' without an error")
    row = _first_bad_row(failed & (n_labels > 0))
    if row is not None:
        raise ResponseError(f"{where}: row {row}: status 'failed' but ranked_labels is not empty")
    row = _first_bad_row(~failed & df.get_column("raw_text").is_null())
    if row is not None:
        raise ResponseError(f"{where}: row {row}: status 'ok' without raw_text")

    labels = df.get_column("ranked_labels")
    bad_range = labels.list.eval(
        ((pl.element() < 0) | (pl.element() >= num_classes)).any()
    ).list.first()
    row = _first_bad_row(bad_range)
    if row is not None:
        raise ResponseError(
            f"{where}: row {row}: ranked_labels {labels[row].to_list()} outside "
            f"0..{num_classes - 1}"
        )
    row = _first_bad_row(labels.list.unique().list.len() != n_labels)
    if row is not None:
        raise ResponseError(
            f"{where}: row {row}: ranked_labels {labels[row].to_list()} has duplicates"
        )

    row = _first_bad_row(df.select(pl.struct("node_id", "model").is_duplicated()).to_series())
    if row is not None:
        raise ResponseError(
            f"{where}: row {row}: duplicate (node_id, model) = "
            f"({node[row]}, {df.get_column('model')[row]!r})"
        )
    return df


def write_responses(df: pl.DataFrame, path: Path | str) -> Path:
    """Write a response table to Parquet atomically, sorted by ``(model, node_id)``.

    The file is written to a temporary sibling and renamed into place, so a reader never sees
    a half-written table. Inside a lake artifact, write into the directory that
    :func:`tag_pipeline.lake.write_artifact` yields instead.

    Args:
        df (pl.DataFrame): rows in :data:`RESPONSE_SCHEMA` (narrower integer dtypes are cast).
        path (Path | str): the ``.parquet`` file to create or replace.

    Returns:
        Path: ``path``.

    Raises:
        ResponseError: a column is missing, unknown or of the wrong dtype.
    """
    path = Path(path)
    df = _conform_schema(df, str(path)).sort("model", "node_id")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        df.write_parquet(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_responses(path: Path | str, num_nodes: int, num_classes: int) -> pl.DataFrame:
    """Read and validate a response table written by :func:`write_responses`.

    Args:
        path (Path | str): the Parquet file.
        num_nodes (int): N, number of nodes of the dataset.
        num_classes (int): C, number of classes.

    Returns:
        pl.DataFrame: the validated table in :data:`RESPONSE_SCHEMA`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ResponseError: the file is not readable Parquet or fails :func:`validate_responses`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no response table")
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # polars raises several kinds for a damaged file
        raise ResponseError(f"{path}: not a readable Parquet file ({e})") from e
    return validate_responses(df, num_nodes, num_classes, str(path))


def ranked_matrix(df: pl.DataFrame, num_nodes: int, k: int) -> np.ndarray:
    """TAPE's prediction-feature input: the top-``k`` labels of each node, shifted by +1.

    Entry ``[i, j]`` is ``1 + (j-th ranked label of node i)``, and ``0`` pads rows with fewer
    than ``k`` labels, so that the matrix feeds an ``nn.Embedding(C + 1, d, padding_idx=0)``.
    Nodes without a row, failed rows and answers naming no class give all zeros.

    Args:
        df (pl.DataFrame): a response table holding a single model.
        num_nodes (int): N, number of rows of the result.
        k (int): number of ranks kept (TAPE uses the top ``k`` of the LLM's list).

    Returns:
        np.ndarray: int64 ``[N, k]`` with values in ``0..C``.

    Raises:
        ValueError: ``k < 0``, ``df`` holds more than one model, or a ``node_id`` is outside
            ``0..N-1``.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    models = df.get_column("model").unique().to_list()
    if len(models) > 1:
        raise ValueError(f"response table holds several models {sorted(models)}; filter first")
    out = np.zeros((num_nodes, k), dtype=np.int64)
    ok = df.filter(pl.col("status") == "ok")
    if ok.height == 0 or k == 0:
        return out
    nodes = ok.get_column("node_id").to_numpy().astype(np.int64)
    if nodes.min() < 0 or nodes.max() >= num_nodes:
        raise ValueError(f"node_id outside 0..{num_nodes - 1}")
    heads = ok.get_column("ranked_labels").list.head(k)
    lengths = heads.list.len().to_numpy().astype(np.int64)
    flat = heads.explode().drop_nulls().to_numpy().astype(np.int64)
    rows = np.repeat(nodes, lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    cols = np.arange(len(flat), dtype=np.int64) - starts
    out[rows, cols] = flat + 1
    return out


def response_summary(df: pl.DataFrame) -> dict[str, Any]:
    """Counts a person checks after a run: rows, ok, failed, answers naming no class, cut-offs.

    Args:
        df (pl.DataFrame): a response table.

    Returns:
        dict: ``n_rows``, ``n_ok``, ``n_failed``, ``n_no_class`` (ok rows with an empty ranked
        list), ``finish_reasons`` (``{reason: count}``, null as ``"null"``) and ``models``.
    """
    ok = df.get_column("status") == "ok"
    empty = df.get_column("ranked_labels").list.len() == 0
    reasons = df.get_column("finish_reason").fill_null("null").value_counts(sort=True)
    return {
        "n_rows": df.height,
        "n_ok": int(ok.sum()),
        "n_failed": int((~ok).sum()),
        "n_no_class": int((ok & empty).sum()),
        "finish_reasons": dict(zip(reasons[:, 0].to_list(), reasons[:, 1].to_list())),
        "models": sorted(df.get_column("model").unique().to_list()),
    }
