"""Prediction for new nodes from a trained run in the lake (no retraining, no LLM call).

Two kinds of run can classify new papers:

* a **GALLON student** (``<lake>/<dataset>/gallon/s<seed>-<key>``) reads only the node's own
  text embedding: new nodes are embedded with the frozen encoder that built the run's TA
  feature (runs on fine-tuned or LEADING embeddings are refused: a new node cannot be
  embedded the same way) and
  classified one by one, with no graph and no LLM;
* a **GNN training run on TA** (``<lake>/<dataset>/train/<model>-TA-s<seed>-<key>``): the new
  nodes are embedded the same way, appended to the graph with the given edges to existing
  nodes (both directions), and one full-batch forward pass classifies them with the trained
  weights (inductive inference; the existing nodes' outputs are not kept).

Runs on E or P need the LLM's answer for each new node and are refused with a clear error.

Input files (Parquet or CSV, as custom datasets, see :mod:`tag_pipeline.datasets.custom`):
nodes with ``id`` and ``text`` (title + abstract, formatted as the dataset's); optional edges
with ``src`` and ``dst``, each an id of a new node or the source id of an existing node (the
dataset's own id, e.g. Cora's paper id), at least one end new.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from tag_pipeline import lake
from tag_pipeline.datasets.base import DatasetError

PREDICT_STAGE_VERSION = 1
PREDICTIONS_FILE = "predictions.parquet"


@dataclass
class NewNodes:
    """Validated new nodes: ``ids`` ``[M]`` str, ``texts`` ``[M]`` str and, with edges,
    ``edges`` ``[2, E]`` int64 indices into ``existing ids + new ids`` (existing first)."""

    ids: list[str]
    texts: list[str]
    edges: np.ndarray | None = None


def read_new_nodes(
    nodes: str | Path, edges: str | Path | None, existing_ids: list[str], id_col: str = "id", text_col: str = "text"
) -> NewNodes:
    """Read and check the new nodes (and their edges) against the graph's node ids.

    Raises:
        DatasetError: (a ``ValueError``) the file is missing or unreadable, lacks a column, a
            row has a null or duplicate id, an id that is already an existing node's, an empty
            text; an edge row with an unknown endpoint or with no new node (each message names
            the file and the first offending row).
    """
    from tag_pipeline.datasets.custom import (
        _as_text,
        edge_index_from_ids,
        fail_first,
        node_ids,
        node_texts,
        read_table,
        require_columns,
    )

    nodes = Path(nodes)
    df = read_table(nodes)
    require_columns(df, nodes, [id_col, text_col])
    if df.height == 0:
        raise DatasetError(f"{nodes}: no rows; nothing to predict")
    ids = node_ids(df, nodes, id_col)
    known = set(existing_ids)
    fail_first(nodes, np.array([i in known for i in ids]), f"id in column {id_col!r} is already a node of the graph", ids)
    texts = node_texts(df, nodes, text_col)
    if edges is None:
        return NewNodes(ids, texts)
    edges = Path(edges)
    ef = read_table(edges)
    require_columns(ef, edges, ["src", "dst"])
    new = set(ids)
    both_old = np.array([
        s not in new and d not in new for s, d in zip(_as_text(ef["src"], edges).to_list(), _as_text(ef["dst"], edges).to_list())
    ], dtype=bool)
    all_ids = list(existing_ids) + ids
    ei = edge_index_from_ids(ef, edges, all_ids, "src", "dst", undirected=True)
    fail_first(edges, both_old, "edge between two existing nodes (prediction does not change the trained graph)",
               [f"{s} -> {d}" for s, d in zip(ef["src"].to_list(), ef["dst"].to_list())])
    return NewNodes(ids, texts, ei)


def run_kind(run: str | Path) -> Literal["gallon", "gnn"]:
    """``"gallon"`` for a GALLON artifact, ``"gnn"`` for a training run on TA.

    Raises:
        lake.MissingArtifactError / CorruptArtifactError: not a committed artifact.
        ValueError: another stage, or a training run on E or P.
    """
    art = lake.find_artifact(run)
    if art is None:
        raise lake.MissingArtifactError(f"{run}: no committed run artifact there")
    stage = art.manifest.get("stage")
    if stage == "gallon":
        ta = art.manifest.get("student", {}).get("feature_paths", {}).get("TA")
        if ta is not None:
            frozen_encoder(ta, run)
        return "gallon"
    if stage == "train":
        feature = art.manifest["summary"]["feature"]
        if feature != "TA":
            raise ValueError(f"{run}: a GNN on {feature} needs the LLM's answer for each new node; "
                             "choose a run on TA or a GALLON student")
        frozen_encoder(art.manifest["inputs"]["features"], run)
        return "gnn"
    raise ValueError(f"{run}: a {stage!r} artifact cannot predict; choose a GALLON student (gallon/...) "
                     "or a GNN training run on TA (train/<model>-TA-...)")


def frozen_encoder(ta_feature: str | Path, run: str | Path | None = None):
    """The :class:`~tag_pipeline.config.LMConfig` that embedded a TA feature (that of ``run``,
    which the message names when given), which new nodes are embedded with.

    Raises:
        ValueError: the TA feature is not a frozen encoder's (fine-tuned or LEADING
            embeddings: a new node cannot be embedded the same way).
    """
    from pydantic import ValidationError

    from tag_pipeline.config import LMConfig

    manifest = lake.read_artifact(ta_feature, verify=False).manifest
    try:
        return LMConfig.model_validate(manifest.get("config") or {})
    except ValidationError:
        raise ValueError(
            f"{run or ta_feature}: its TA feature {ta_feature} comes from a trained LM ({manifest.get('stage')}), not the "
            "frozen encoder: new nodes cannot be embedded the same way; choose a run on frozen TA"
        ) from None


def newest_run(lake_root: str | Path, dataset: str, method: str, model: str = "gcn") -> Path:
    """The newest committed run of ``method`` for ``dataset``: a GALLON artifact (``gallon``),
    or a ``model`` training run on TA (``tape``); by the manifest's creation time.

    Raises:
        lake.MissingArtifactError: none in the lake (the message says how to make one).
    """
    if method == "gallon":
        folder, pattern = Path(lake_root) / dataset / "gallon", "s*"
    elif method == "tape":
        folder, pattern = Path(lake_root) / dataset / "train", f"{model}-TA-s*"
    else:
        raise ValueError(f"method {method!r} cannot predict new nodes; use 'gallon' or 'tape'")
    found = [(a.manifest.get("created_unix", 0), p) for p in folder.glob(pattern)
             if (a := lake.find_artifact(p)) and _can_predict(p)]
    if not found:
        raise lake.MissingArtifactError(
            f"no {method} run for {dataset!r} under {folder}; run the tag flow with method {method!r} first"
        )
    return max(found)[1]


def _can_predict(run: Path) -> bool:
    try:
        run_kind(run)
    except ValueError:
        return False
    return True


def _encode(texts: list[str], ta_feature: Path):
    """Embed ``texts`` with the frozen encoder (model, max length) that built the TA feature."""
    from tag_pipeline.features.text import encode_texts

    cfg = frozen_encoder(ta_feature)
    return encode_texts(texts, cfg.model, max_length=cfg.max_length, batch_size=cfg.batch_size, device=cfg.device,
                        show_progress=len(texts) > 1000, runtime=cfg.runtime, precision=cfg.precision)


def predict_new_nodes(run: str | Path, new: NewNodes, graph_path: str | Path | None = None) -> tuple[pl.DataFrame, dict]:
    """Classify ``new`` with the trained run ``run``.

    Returns:
        (frame, stats): ``id`` utf8, ``pred`` int64, ``label`` utf8 (class name), ``prob``
        float32 (of ``pred``), ``probs`` list[float32] ``[C]``, one row per new node in input
        order; stats ``{"nodes", "embed_s", "forward_s", "seconds", "nodes_per_s"}`` (seconds,
        nodes per second over embedding and forward pass).

    Raises:
        ValueError: see :func:`run_kind`; a GALLON student that reads E or P.
    """
    import torch

    from tag_pipeline.datasets import open_graph

    kind = run_kind(run)
    art = lake.read_artifact(run)
    start = time.perf_counter()
    if kind == "gallon":
        from tag_pipeline.methods.gallon import load_student

        student, info = load_student(run)
        if info["features"] != ["TA"]:
            raise ValueError(f"{run}: this student reads {info['features']}; only a TA-only student predicts "
                             "without the LLM (method.student_features: [TA])")
        class_names = info["class_names"]
        x = _encode(new.texts, Path(info["feature_paths"]["TA"]))
        t1 = time.perf_counter()
        with torch.inference_mode():
            logits, _ = student(x.float())
    else:
        from tag_pipeline.inference import load_trained_model

        graph = open_graph(Path(graph_path or art.manifest["inputs"]["graph"]))
        class_names = graph.class_names
        model, x_old, _ = load_trained_model(run, graph)
        x = _encode(new.texts, Path(art.manifest["inputs"]["features"]))
        t1 = time.perf_counter()
        from tag_pipeline.models import graph_operator

        n_old = graph.num_nodes
        ei = graph.edge_index if new.edges is None else np.concatenate([graph.edge_index, new.edges], axis=1)
        cfg_adj = art.manifest["config"].get("adjacency", "edge_index")
        op = graph_operator(art.manifest["summary"]["model"], torch.from_numpy(ei), n_old + len(new.ids), cfg_adj)
        with torch.inference_mode():
            logits = model(torch.cat([x_old, x.float()]), op)[n_old:]
    t2 = time.perf_counter()
    probs = torch.softmax(logits.float(), dim=-1)
    prob, pred = probs.max(dim=-1)
    frame = pl.DataFrame({
        "id": new.ids,
        "pred": pred.numpy().astype(np.int64),
        "label": [class_names[i] for i in pred.tolist()],
        "prob": prob.numpy().astype(np.float32),
        "probs": probs.numpy().astype(np.float32),
    })
    seconds = t2 - start
    stats = {"nodes": len(new.ids), "embed_s": t1 - start, "forward_s": t2 - t1, "seconds": seconds,
             "nodes_per_s": len(new.ids) / seconds if seconds > 0 else None, "kind": kind}
    return frame, stats


def materialize_predictions(
    run: str | Path, nodes: str | Path, edges: str | Path | None, lake_root: str | Path | None = None
) -> tuple[Path, dict]:
    """Predict the nodes of ``nodes`` (and ``edges``) with ``run`` and commit the predictions.

    Writes ``<lake>/<dataset>/predict/<run name>-<key>/predictions.parquet`` (see
    :func:`predict_new_nodes`), the key hashing the run's name and the input files' contents;
    the manifest's ``summary`` has the stats. Returns at once when that artifact exists.

    Returns:
        (artifact directory, summary dict with the stats and ``path``).

    Raises:
        DatasetError / ValueError / MissingArtifactError: see :func:`read_new_nodes` and
            :func:`run_kind`; an input file that does not exist (named).
    """
    from tag_pipeline.datasets import open_graph

    run = Path(run)
    for f in (nodes, edges):
        if f is not None and not Path(f).is_file():
            raise DatasetError(f"{f}: input file not found")
    kind = run_kind(run)
    dataset = run.parents[1].name
    lake_root = Path(lake_root) if lake_root is not None else run.parents[2]
    key = lake.config_hash(PREDICT_STAGE_VERSION, run.name, lake.file_sha256(nodes),
                           lake.file_sha256(edges) if edges is not None else None)
    path = lake.artifact_dir(lake_root, dataset, "predict", f"{run.name}-{key}")
    if (art := lake.find_artifact(path)) is not None:
        return path, dict(art.manifest["summary"], path=str(path))
    with lake.exclusive(path) as committed:
        if committed:
            return path, dict(lake.read_artifact(path).manifest["summary"], path=str(path))
        manifest = lake.read_artifact(run, verify=False).manifest
        graph_path = Path(manifest["inputs"]["graph"])
        graph = open_graph(graph_path)
        new = read_new_nodes(nodes, edges, graph.source_ids)
        if new.edges is not None and kind == "gallon":
            print(f"predict: {run.name} is a graph-free student; the {new.edges.shape[1] // 2} edges are not used")
        frame, stats = predict_new_nodes(run, new, graph_path)
        with lake.write_artifact(
            path, stage="predict", config={"run": str(run)},
            inputs={"run": str(run), "nodes": str(nodes), **({"edges": str(edges)} if edges else {})},
            rows=frame.height, extra={"summary": stats},
        ) as tmp:
            frame.write_parquet(tmp / PREDICTIONS_FILE)
        return path, dict(stats, path=str(path))
