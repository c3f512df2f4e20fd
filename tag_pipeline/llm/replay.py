"""Replay TAPE's recorded GPT-3.5 answers into the response store, and check them.

TAPE's authors released one OpenAI chat-completion object per node
(``gpt_responses/<Name>/<i>.json``, answers of ``gpt-3.5-turbo-0301``, April 2023) and their
own extraction of the ranked classes (``gpt_preds/<name>.csv``, line ``i`` = node ``i``'s
class indices, comma-separated, most likely first). Replaying the answers lets the pipeline
run TAPE end to end without an LLM; comparing our parse (:mod:`tag_pipeline.llm.parse`) with
the csv and with the labels checks parser and node order at once (TAPE, arXiv 2305.19523,
Table 2: zero-shot GPT-3.5 accuracy 0.6769 on Cora).

ogbn-arxiv's answers come packed in one Parquet file (:func:`import_tape_responses_parquet`;
:func:`import_recorded_responses` reads either form); PubMed and arxiv_2023 have only the csv,
which :func:`responses_from_tape_preds` turns into a response table without explanations.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tag_pipeline.llm.parse import extract_explanation, parse_ranked_labels
from tag_pipeline.llm.store import ResponseError, ranked_matrix, responses_from_records


def _completion_record(
    obj: Any, path: Path | str, class_names: Sequence[str], source: str
) -> dict[str, Any]:
    """One response row from a parsed chat-completion object (see :func:`import_tape_responses`)."""
    if not isinstance(obj, dict):
        raise ResponseError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    usage = obj.get("usage") or {}
    record: dict[str, Any] = {
        "model": obj.get("model"),
        "response_id": obj.get("id"),
        "created_unix": obj.get("created"),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "source": source,
    }
    if "error" in obj:  # an API error object recorded instead of an answer
        message = obj["error"].get("message") if isinstance(obj["error"], dict) else obj["error"]
        return {**record, "status": "failed", "error": f"api error: {message}",
                "ranked_labels": [], "explanation": ""}
    try:
        choice = obj["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as e:
        raise ResponseError(f"{path}: no choices[0].message.content ({e!r})") from e
    if not isinstance(text, str):
        raise ResponseError(f"{path}: choices[0].message.content is not a string")
    ranked = parse_ranked_labels(text, class_names)
    return {
        **record,
        "status": "ok",
        "raw_text": text,
        "ranked_labels": ranked,
        "explanation": extract_explanation(text, ranked),
        "finish_reason": choice.get("finish_reason"),
    }


def import_tape_responses(
    responses_dir: Path,
    class_names: Sequence[str],
    num_nodes: int,
    *,
    model: str | None = None,
    prompt_version: str | None = None,
    file_index: Sequence[int] | None = None,
) -> pl.DataFrame:
    """Read TAPE's per-node answer files into a response table.

    For each node ``i`` in ``0..N-1`` reads ``responses_dir/<i>.json``, an OpenAI
    chat-completion object, and records its answer (``choices[0].message.content``), the
    parsed ranked labels (all of them, :func:`~tag_pipeline.llm.parse.parse_ranked_labels`),
    the explanation, ``finish_reason``, token usage, ``id`` and ``created``. An answer that
    names no class is an ``"ok"`` row with an empty ranked list (it is an answer; count them
    with :func:`~tag_pipeline.llm.store.response_summary`). A missing file gives a
    ``"failed"`` row with error ``"missing file <path>"``; a recorded API error object gives a
    ``"failed"`` row with its message.

    Args:
        responses_dir (Path): e.g. ``<data>/cora/gpt_responses/Cora``.
        class_names (Sequence[str]): the C class names in label order.
        num_nodes (int): N; files ``0.json`` .. ``<N-1>.json`` are read, others ignored.
        model (str, optional): model name for the rows of missing files. (default: the most
            common ``model`` of the files read, ``"unknown"`` if none was read)
        prompt_version (str, optional): recorded in every row. (default: ``None``, unknown)
        file_index (Sequence[int], optional): ``[N]`` the file number of node ``i``, for a
            relabelled subgraph (e.g. the tiny profile's slice of Cora: pass the kept original
            node ids). (default: ``None``, node ``i`` reads ``<i>.json``)

    Returns:
        pl.DataFrame: N rows in :data:`~tag_pipeline.llm.store.RESPONSE_SCHEMA`, sorted by
        ``node_id``; ``source`` is ``"replay:"`` + the file's path relative to
        ``responses_dir.parent.parent`` (``"replay:gpt_responses/Cora/12.json"``).

    Raises:
        FileNotFoundError: ``responses_dir`` is not a directory.
        ValueError: ``file_index`` does not have N entries.
        ResponseError: a file is not valid JSON or has no ``choices[0].message.content``
            (the message names the file).
    """
    responses_dir = Path(responses_dir)
    if not responses_dir.is_dir():
        raise FileNotFoundError(f"{responses_dir}: no such directory of responses")
    if file_index is not None and len(file_index) != num_nodes:
        raise ValueError(f"file_index has {len(file_index)} entries, expected {num_nodes}")
    root = responses_dir.parent.parent
    records: list[dict[str, Any]] = []
    for i in range(num_nodes):
        path = responses_dir / f"{int(file_index[i]) if file_index is not None else i}.json"
        source = f"replay:{path.relative_to(root).as_posix()}"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            records.append({"node_id": i, "status": "failed", "error": f"missing file {path}",
                            "ranked_labels": [], "explanation": "", "source": source})
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ResponseError(f"{path}: malformed JSON ({e})") from e
        records.append({"node_id": i, **_completion_record(obj, path, class_names, source)})
    return _finish_records(records, model, prompt_version)


def _finish_records(
    records: list[dict[str, Any]], model: str | None, prompt_version: str | None
) -> pl.DataFrame:
    """Fill ``model`` (given, else the most common one read) and ``prompt_version``; build."""
    if model is None:
        seen = Counter(r["model"] for r in records if r.get("model"))
        model = seen.most_common(1)[0][0] if seen else "unknown"
    for r in records:
        if not r.get("model"):
            r["model"] = model
        r["prompt_version"] = prompt_version
    return responses_from_records(records)


#: Columns of a packed response file (one row per original ``<i>.json`` file).
PACKED_COLUMNS = ("node_id", "source_filename", "git_blob", "raw_json")


def _git_blob_sha1(data: bytes) -> str:
    """Git's object id of a file's bytes: ``sha1(b"blob <len>\\0" + data)`` in hex."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def import_tape_responses_parquet(
    parquet_path: Path,
    class_names: Sequence[str],
    num_nodes: int,
    *,
    model: str | None = None,
    prompt_version: str | None = None,
    file_index: Sequence[int] | None = None,
    verify_blobs: bool = True,
) -> pl.DataFrame:
    """Read TAPE's per-node answers packed into one Parquet file into a response table.

    The shared data packs ogbn-arxiv's 169,343 answer files into
    ``gpt_responses/ogbn-arxiv_gpt_responses.parquet``, one row per file: ``node_id``,
    ``source_filename`` (``"<i>.json"``), ``git_blob`` (git's object id of the file) and
    ``raw_json`` (the file's whole text, an OpenAI chat-completion object). Each answer is
    recorded exactly as :func:`import_tape_responses` records a file (same parse, explanation,
    ``finish_reason``, usage, ``id``, ``created``, API error objects as failed rows); a node
    without a row (or whose ``raw_json`` is null) gives a ``"failed"`` row with error
    ``"missing row node_id=<k> in <path>"``. Rows for other node ids are ignored.

    Args:
        parquet_path (Path): e.g.
            ``<data>/ogbn-arxiv/gpt_responses/ogbn-arxiv_gpt_responses.parquet``.
        class_names (Sequence[str]): the C class names in label order.
        num_nodes (int): N.
        model (str, optional): model name for the rows of missing nodes. (default: the most
            common ``model`` of the answers read, ``"unknown"`` if none was read)
        prompt_version (str, optional): recorded in every row. (default: ``None``, unknown)
        file_index (Sequence[int], optional): ``[N]`` the ``node_id`` row of node ``i``, for a
            relabelled subgraph. (default: ``None``, node ``i`` reads row ``node_id == i``)
        verify_blobs (bool, optional): check each read row's ``raw_json`` against its
            ``git_blob`` (``sha1("blob <len>\\0" + raw_json)``). (default: ``True``)

    Returns:
        pl.DataFrame: N rows in :data:`~tag_pipeline.llm.store.RESPONSE_SCHEMA`, sorted by
        ``node_id``; ``source`` is ``"replay:<folder>/<file>.parquet:<source_filename>"``
        (``"replay:gpt_responses/ogbn-arxiv_gpt_responses.parquet:12.json"``).

    Raises:
        FileNotFoundError: ``parquet_path`` is not a file.
        ValueError: ``file_index`` does not have N entries.
        ResponseError: the file is not readable Parquet, lacks a column, repeats a
            ``node_id``, a row's ``raw_json`` does not match its ``git_blob``, is not valid
            JSON or has no ``choices[0].message.content`` (the message names the file and row).
    """
    parquet_path = Path(parquet_path)
    if not parquet_path.is_file():
        raise FileNotFoundError(f"{parquet_path}: no such file of packed responses")
    if file_index is not None and len(file_index) != num_nodes:
        raise ValueError(f"file_index has {len(file_index)} entries, expected {num_nodes}")
    try:
        table = pl.read_parquet(parquet_path, columns=list(PACKED_COLUMNS))
    except Exception as e:  # polars raises several kinds for a damaged file or missing column
        raise ResponseError(f"{parquet_path}: not a packed response table ({e})") from e
    node_ids = table.get_column("node_id")
    if node_ids.null_count() or node_ids.is_duplicated().any():
        raise ResponseError(f"{parquet_path}: node_id is null or repeated")
    row_of = dict(zip(node_ids.to_list(), range(table.height)))
    names = table.get_column("source_filename").to_list()
    blobs = table.get_column("git_blob").to_list()
    texts = table.get_column("raw_json").to_list()
    prefix = f"replay:{parquet_path.parent.name}/{parquet_path.name}"
    records: list[dict[str, Any]] = []
    for i in range(num_nodes):
        wanted = int(file_index[i]) if file_index is not None else i
        row = row_of.get(wanted)
        if row is None or texts[row] is None:
            records.append({"node_id": i, "status": "failed",
                            "error": f"missing row node_id={wanted} in {parquet_path}",
                            "ranked_labels": [], "explanation": "", "source": prefix})
            continue
        where = f"{parquet_path}:{names[row]} (node_id {wanted})"
        raw = texts[row].encode("utf-8")
        if verify_blobs and _git_blob_sha1(raw) != blobs[row]:
            raise ResponseError(f"{where}: raw_json does not match git_blob {blobs[row]}")
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ResponseError(f"{where}: malformed JSON ({e})") from e
        source = f"{prefix}:{names[row]}"
        records.append({"node_id": i, **_completion_record(obj, where, class_names, source)})
    return _finish_records(records, model, prompt_version)


def import_recorded_responses(
    path: Path,
    class_names: Sequence[str],
    num_nodes: int,
    *,
    model: str | None = None,
    prompt_version: str | None = None,
) -> pl.DataFrame:
    """Read recorded answers from a folder of ``<i>.json`` files or from one packed ``.parquet``.

    Dispatches on what ``path`` is: a folder goes to :func:`import_tape_responses` (TAPE's
    ``gpt_responses/Cora``), a ``.parquet`` file to :func:`import_tape_responses_parquet`
    (``gpt_responses/ogbn-arxiv_gpt_responses.parquet``, git blob ids verified). Nodes
    ``0..N-1`` are read.

    Args:
        path (Path): the folder or the Parquet file.
        class_names (Sequence[str]): the C class names in label order.
        num_nodes (int): N.
        model (str, optional): see :func:`import_tape_responses`. (default: ``None``)
        prompt_version (str, optional): recorded in every row. (default: ``None``, unknown)

    Returns:
        pl.DataFrame: N rows in :data:`~tag_pipeline.llm.store.RESPONSE_SCHEMA`, sorted by
        ``node_id``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ResponseError: ``path`` is a file but not ``.parquet``, or an answer is malformed (the
            message names the file and row).
    """
    path = Path(path)
    if path.is_dir():
        return import_tape_responses(
            path, class_names, num_nodes, model=model, prompt_version=prompt_version
        )
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder or .parquet file of recorded answers")
    if path.suffix != ".parquet":
        raise ResponseError(
            f"{path}: recorded answers must be a folder of <node>.json files or a .parquet file"
        )
    return import_tape_responses_parquet(
        path, class_names, num_nodes, model=model, prompt_version=prompt_version
    )


def read_tape_preds(
    csv_path: Path, num_nodes: int, num_classes: int | None = None
) -> list[list[int]]:
    """Read TAPE's extracted predictions (``gpt_preds/<name>.csv``).

    Line ``i`` holds node ``i``'s ranked class indices, comma-separated, most likely first,
    exactly as TAPE wrote them (duplicates such as ``4,3,4`` are kept). An empty line is a node
    without prediction. A single trailing newline ends the file; it does not add a node.

    Args:
        csv_path (Path): the csv file.
        num_nodes (int): N, the expected number of lines.
        num_classes (int, optional): if given, indices must lie in ``0..C-1``.
            (default: ``None``)

    Returns:
        list[list[int]]: N lists of class indices.

    Raises:
        FileNotFoundError: ``csv_path`` does not exist.
        ResponseError: wrong number of lines, or a value that is not an integer (or out of
            range), naming the file and the 1-based line.
    """
    csv_path = Path(csv_path)
    lines = _pred_lines(csv_path, num_nodes)
    return [
        _parse_pred_line(line, csv_path, n, num_classes) for n, line in enumerate(lines, start=1)
    ]


def _pred_lines(csv_path: Path, num_nodes: int, allow_more_lines: bool = False) -> list[str]:
    """The N stripped lines of a ``gpt_preds`` csv (one trailing newline allowed).

    With ``allow_more_lines`` the file may have more lines; the first N are returned.
    """
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: no such gpt_preds csv")
    lines = csv_path.read_text().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) < num_nodes or (len(lines) > num_nodes and not allow_more_lines):
        expected = f"at least {num_nodes}" if allow_more_lines else f"{num_nodes}"
        raise ResponseError(f"{csv_path}: {len(lines)} lines, expected {expected} (one per node)")
    return [line.strip() for line in lines[:num_nodes]]


def _parse_pred_line(
    line: str, csv_path: Path, lineno: int, num_classes: int | None
) -> list[int]:
    """Class indices of one stripped ``gpt_preds`` line, as written (``[]`` if empty)."""
    if not line:
        return []
    try:
        values = [int(v) for v in line.split(",")]
    except ValueError as e:
        raise ResponseError(f"{csv_path}: line {lineno}: not a list of integers: {line!r}") from e
    if num_classes is not None and any(v < 0 or v >= num_classes for v in values):
        raise ResponseError(
            f"{csv_path}: line {lineno}: class index outside 0..{num_classes - 1}"
        )
    return values


def responses_from_tape_preds(
    csv_path: Path,
    num_nodes: int,
    num_classes: int,
    model: str = "gpt-3.5-turbo-0301",
    *,
    prompt_version: str | None = None,
    allow_more_lines: bool = False,
) -> pl.DataFrame:
    """A response table from TAPE's extracted predictions alone (``gpt_preds/<name>.csv``).

    For datasets whose answers were not released (PubMed, arxiv_2023) the csv is all there is
    of the LLM: TAPE's prediction feature (P) but no explanation (E). Line ``i`` (see
    :func:`read_tape_preds`) gives node ``i`` an ``"ok"`` row with ``ranked_labels`` = the
    line's indices with repeats dropped (first occurrence kept: ``"4,3,4"`` -> ``[4, 3]``),
    ``raw_text`` = the line itself, ``explanation`` ``""`` and null usage and
    ``finish_reason``. An empty line gives a ``"failed"`` row with error
    ``"no prediction in <folder>/<file> line <n>"`` (1-based).

    Args:
        csv_path (Path): e.g. ``<data>/pubmed/gpt_preds/pubmed.csv``.
        num_nodes (int): N, the expected number of lines.
        num_classes (int): C; indices must lie in ``0..C-1``.
        model (str, optional): the model that answered. (default: ``"gpt-3.5-turbo-0301"``,
            TAPE's)
        prompt_version (str, optional): recorded in every row. (default: ``None``, unknown)
        allow_more_lines (bool, optional): the csv may have more than N lines and only the first
            N are read (a graph cut to its first N nodes, ``dataset.subset``). (default:
            ``False``, exactly N lines)

    Returns:
        pl.DataFrame: N rows in :data:`~tag_pipeline.llm.store.RESPONSE_SCHEMA`, sorted by
        ``node_id``, with ``source`` ``"replay:<folder>/<file>"``
        (``"replay:gpt_preds/pubmed.csv"``).

    Raises:
        FileNotFoundError: ``csv_path`` does not exist.
        ResponseError: wrong number of lines, or a value that is not an integer in ``0..C-1``
            (naming the file and the 1-based line).
    """
    csv_path = Path(csv_path)
    name = f"{csv_path.parent.name}/{csv_path.name}"
    records: list[dict[str, Any]] = []
    for n, line in enumerate(_pred_lines(csv_path, num_nodes, allow_more_lines), start=1):
        record: dict[str, Any] = {"node_id": n - 1, "model": model, "explanation": "",
                                  "source": f"replay:{name}", "prompt_version": prompt_version}
        values = _parse_pred_line(line, csv_path, n, num_classes)
        if values:
            record.update(status="ok", raw_text=line, ranked_labels=list(dict.fromkeys(values)))
        else:
            record.update(status="failed", error=f"no prediction in {name} line {n}",
                          ranked_labels=[])
        records.append(record)
    return responses_from_records(records)


def agreement_with_tape_preds(
    df: pl.DataFrame, preds: Sequence[Sequence[int]], max_examples: int = 10
) -> dict[str, Any]:
    """Compare our parsed rankings with TAPE's own extraction (``gpt_preds``).

    Args:
        df (pl.DataFrame): a response table of one model over nodes ``0..len(preds)-1``.
        preds (Sequence[Sequence[int]]): TAPE's rankings, from :func:`read_tape_preds`.
        max_examples (int, optional): how many disagreeing node ids to list. (default: ``10``)

    Returns:
        dict: ``top1_agreement`` (over the ``n_compared`` nodes whose csv line has a top-1,
        the fraction where our top-1 exists and equals it), ``n_compared``, ``n_agree``,
        ``n_disagree`` (``n_compared - n_agree``; includes nodes we parsed as empty),
        ``n_parsed_empty`` (ok answers naming no class), ``n_no_answer`` (nodes without an
        ok row), ``n_csv_empty``, ``ranking_agreement`` (fraction of all nodes whose full
        ranking equals the csv's with its duplicates dropped) and ``disagree_examples``
        (node ids).

    Raises:
        ValueError: ``df`` holds several models or node ids outside ``0..len(preds)-1``.
    """
    n = len(preds)
    top1 = ranked_matrix(df, n, 1)[:, 0] - 1  # -1: no label
    ok = df.filter(pl.col("status") == "ok")
    ranked: dict[int, list[int]] = dict(
        zip(ok.get_column("node_id").to_list(), ok.get_column("ranked_labels").to_list())
    )
    compared = [i for i in range(n) if preds[i]]
    disagree = [i for i in compared if top1[i] != preds[i][0]]
    same_ranking = sum(ranked.get(i, []) == list(dict.fromkeys(preds[i])) for i in range(n))
    n_agree = len(compared) - len(disagree)
    return {
        "top1_agreement": n_agree / len(compared) if compared else float("nan"),
        "n_compared": len(compared),
        "n_agree": n_agree,
        "n_disagree": len(disagree),
        "n_parsed_empty": sum(1 for labels in ranked.values() if not labels),
        "n_no_answer": n - len(ranked),
        "n_csv_empty": n - len(compared),
        "ranking_agreement": same_ranking / n if n else float("nan"),
        "disagree_examples": disagree[:max_examples],
    }


def replay_top1_accuracy(df: pl.DataFrame, labels: np.ndarray) -> float:
    """Zero-shot accuracy of the LLM: fraction of nodes whose parsed top-1 equals the label.

    Nodes without an answer, with a failed answer or with an answer naming no class count as
    wrong, as in TAPE's reported zero-shot numbers (Table 2).

    Args:
        df (pl.DataFrame): a response table of one model.
        labels (np.ndarray): ``[N]`` int labels in ``0..C-1``.

    Returns:
        float: accuracy over all N nodes.

    Raises:
        ValueError: ``df`` holds several models or node ids outside ``0..N-1``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    top1 = ranked_matrix(df, len(labels), 1)[:, 0] - 1
    return float((top1 == labels).mean()) if len(labels) else float("nan")
