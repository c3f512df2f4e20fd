"""Prediction for new nodes from a trained run in the lake (no retraining, no LLM call).

Two kinds of run can classify new papers:

* a **GALLON student** (``<lake>/<dataset>/gallon/s<seed>-<key>``) reads only the node's own
  text embedding: new nodes are embedded with the frozen encoder that built the run's TA
  feature (runs on fine-tuned or LEADING embeddings are refused: a new node cannot be
  embedded the same way) and classified one by one, with no graph and no LLM;
* a **GNN training run on TA** (``<lake>/<dataset>/train/<model>-TA-s<seed>-<key>``): the new
  nodes are embedded the same way, appended to the graph with the given edges to existing
  nodes (both directions), and one full-batch forward pass classifies them with the trained
  weights (inductive inference; the existing nodes' outputs are not kept).

Runs on E or P need the LLM's answer for each new node and are refused with a clear error.

New nodes are embedded by the encoder the run's TA feature records, not by whatever the
config would pick today (:func:`pinned_encoder`): the same weights (their digest, checked
against the feature manifest's ``encoder_weights``) and the same numerics path (the
manifest's ``encoder`` runtime and precision, passed to
:func:`~tag_pipeline.features.text.encode_texts` explicitly, never ``"auto"``). Other weights
at the model's path, or a precision this machine cannot run (fp16 without CUDA), are refused.

Input files (Parquet or CSV, as custom datasets, see :mod:`tag_pipeline.datasets.custom`):
nodes with ``id`` and ``text`` (title + abstract, formatted as the dataset's); optional edges
with ``src`` and ``dst``, each an id of a new node or the source id of an existing node (the
dataset's own id, e.g. Cora's paper id), at least one end new.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl

from tag_pipeline import lake
from tag_pipeline.datasets.base import DatasetError

if TYPE_CHECKING:
    from tag_pipeline.config import LMConfig

#: 2: new nodes are embedded with the run's recorded encoder weights and numerics path (v1
#: used whatever weights sat at the model path and whatever ``auto`` picked on the machine).
PREDICT_STAGE_VERSION = 2
PREDICTIONS_FILE = "predictions.parquet"
PREDICT_STAGE = lake.Stage(
    "predict",
    PREDICT_STAGE_VERSION,
    code=(
        "tag_pipeline.predict",  # input checks, pinned encoder, softmax and table
        "tag_pipeline.datasets.custom",  # how the new nodes' files are read
        "tag_pipeline.features.text",  # encode_texts (torch paths)
        "tag_pipeline.features.onnx_encoder",  # encode_texts (ONNX path)
        "tag_pipeline.inference",  # load_trained_model (GNN runs)
        "tag_pipeline.models",  # the GNNs and graph_operator
        "tag_pipeline.methods.gallon",  # load_student (GALLON runs)
    ),
)


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
    which the message names when given); :func:`pinned_encoder` adds the recorded weights and
    numerics path that new nodes are embedded with.

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


@dataclass(frozen=True)
class PinnedEncoder:
    """The frozen encoder that embedded a run's TA feature, as its manifest records it.

    Attributes:
        feature: the TA feature artifact.
        lm: its encoder config (model, max length, batch size...).
        runtime: ``"torch"`` or ``"onnx"``, as recorded (never ``"auto"``).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``, as recorded (never ``"auto"``).
        device: where new nodes are embedded: the recorded ``lm.device``, or the CPU when that
            was a CUDA device and this machine has none (same runtime and precision).
        weights: digest of the encoder's files (:func:`~tag_pipeline.features.text.model_digest`)
            that the feature was embedded with, checked against the files now at ``lm.model``;
            ``None`` for a hub name (no local files to digest).
    """

    feature: Path
    lm: LMConfig
    runtime: str
    precision: str
    device: str
    weights: str | None

    def encode(self, texts: list[str]):
        """``[len(texts), dim]`` float32 embeddings of ``texts``, on the recorded path."""
        from tag_pipeline.features.text import encode_texts

        cfg = self.lm
        return encode_texts(texts, cfg.model, max_length=cfg.max_length, batch_size=cfg.batch_size,
                            device=self.device, show_progress=len(texts) > 1000, runtime=self.runtime,
                            precision=self.precision)

    def manifest(self) -> dict:
        """Manifest fields of a prediction, laid out as the feature's: ``{"encoder": {runtime,
        precision, device, feature}, "encoder_weights": digest}``."""
        return {"encoder": {"runtime": self.runtime, "precision": self.precision, "device": self.device,
                            "feature": str(self.feature)},
                "encoder_weights": self.weights}


def recorded_numerics(manifest: dict, where: str) -> tuple[str, str]:
    """``(runtime, precision)`` a text feature was embedded with, from its manifest.

    The ``encoder`` field (:func:`~tag_pipeline.features.stage.encoder_manifest`); a feature
    written before it existed ran the config's ``runtime`` (``"torch"`` or ``"onnx"``; there
    was no ``"auto"`` then) in float32 (there was no ``precision`` then).

    Raises:
        ValueError: neither says a concrete path (``where`` names the artifact).
    """
    enc = manifest.get("encoder")
    if enc:
        return enc["runtime"], enc["precision"]
    cfg = manifest.get("config") or {}
    runtime, precision = cfg.get("runtime", "torch"), cfg.get("precision", "fp32")
    if "auto" in (runtime, precision):
        raise ValueError(f"{where}: its manifest records no encoder path (runtime {runtime!r}, precision "
                         f"{precision!r}); new nodes cannot be embedded the same way; rebuild the feature")
    return runtime, precision


def pinned_encoder(ta_feature: str | Path, run: str | Path | None = None) -> PinnedEncoder:
    """The encoder to embed new nodes with for a run whose TA feature is ``ta_feature``:
    the weights and numerics path that feature records, checked against this machine.

    Weights: the digest of the files now at the configured model
    (:func:`~tag_pipeline.features.text.model_digest`) must equal the manifest's
    ``encoder_weights``. A feature written before that field existed is checked through its
    key instead, which hashes the same digest: the key
    :func:`~tag_pipeline.features.stage.text_feature_path` gives for the same graph and encoder
    config with the current weights must be the feature's own. Such features were keyed
    before the numerics path was, so the key is recomputed as a float32 path's (the key every
    path had then). A feature whose key differs for another reason (an older version of the
    feature stage or of its config) is refused too: rebuild the run.

    Numerics: the recorded runtime and precision (:func:`recorded_numerics`) on the recorded
    device; on the CPU when that was a CUDA device and there is none here, except for fp16,
    which needs CUDA.

    Args:
        ta_feature: the run's TA feature artifact (from the run's ``inputs`` or GALLON's
            ``student.feature_paths``).
        run: the run, named in messages.

    Raises:
        ValueError: one line: a fine-tuned or LEADING feature (:func:`frozen_encoder`); other
            weights at the model path (both digests and the path named); a precision that cannot
            run here.
    """
    import torch

    from tag_pipeline.features.text import (
        encoder_path,
        model_digest,
        resolve_model_path,
    )

    ta_feature = Path(ta_feature)
    where = run or ta_feature
    cfg = frozen_encoder(ta_feature, run)
    manifest = lake.read_artifact(ta_feature, verify=False).manifest
    runtime, precision = recorded_numerics(manifest, str(ta_feature))
    current = model_digest(cfg.model)
    model_at = resolve_model_path(cfg.model)
    if "encoder_weights" in manifest:
        recorded = manifest["encoder_weights"]
        if recorded != current:
            raise ValueError(
                f"{where}: its TA feature {ta_feature} was embedded with encoder weights {recorded}, but the "
                f"weights now at {model_at} are {current}; restore those weights or retrain the run on the new ones"
            )
    else:
        from tag_pipeline.features.stage import text_feature_path
        from tag_pipeline.hardware import EncoderPath

        # Features from before the digest was recorded were keyed before the numerics path
        # was (every path had the float32 key then): recompute that key.
        then = EncoderPath(runtime, "fp32", "the key of a feature written before numerics were keyed")
        graph = Path(manifest["inputs"]["graph"])
        expected = text_feature_path(graph, None, "TA", cfg, ta_feature.parents[2], how=then)
        if expected.name != ta_feature.name:
            raise ValueError(
                f"{where}: its TA feature {ta_feature} records no encoder digest, and the weights now at {model_at} "
                f"({current}) give the key {expected.name}, not its own: the weights changed (or the feature "
                "predates this version of the feature stage); restore them or retrain the run"
            )
    device = cfg.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        if precision == "fp16":
            raise ValueError(f"{where}: its TA feature {ta_feature} was embedded in fp16 on {device}, which needs "
                             "CUDA, and this machine has none; predict on a machine with a CUDA GPU")
        device = "cpu"
    try:
        encoder_path(cfg.model, device=device, runtime=runtime, precision=precision)
    except ValueError as e:
        raise ValueError(f"{where}: its TA feature {ta_feature} was embedded with runtime {runtime!r}, precision "
                         f"{precision!r}, which cannot run here: {e}") from None
    return PinnedEncoder(ta_feature, cfg, runtime, precision, device, current)


def run_ta_feature(run: str | Path) -> Path:
    """The TA feature artifact a GALLON student or a GNN run on TA was trained on (its lineage).

    Raises:
        ValueError: the run has no TA feature (a GALLON student without TA).
    """
    manifest = lake.read_artifact(run, verify=False).manifest
    if manifest.get("stage") == "gallon":
        ta = manifest.get("student", {}).get("feature_paths", {}).get("TA")
        if ta is None:
            raise ValueError(f"{run}: this GALLON run has no TA feature; only a TA-only student predicts "
                             "without the LLM (method.student_features: [TA])")
        return Path(ta)
    return Path(manifest["inputs"]["features"])


def predict_new_nodes(
    run: str | Path, new: NewNodes, graph_path: str | Path | None = None, encoder: PinnedEncoder | None = None
) -> tuple[pl.DataFrame, dict]:
    """Classify ``new`` with the trained run ``run``.

    Args:
        run: a GALLON artifact or a GNN training run on TA.
        new: the new nodes (:func:`read_new_nodes`).
        graph_path: the run's graph (default: the run's ``inputs["graph"]``).
        encoder: the encoder to embed with (default: :func:`pinned_encoder` of the run's TA
            feature, which checks the weights and numerics).

    Returns:
        (frame, stats): ``id`` utf8, ``pred`` int64, ``label`` utf8 (class name), ``prob``
        float32 (of ``pred``), ``probs`` list[float32] ``[C]``, one row per new node in input
        order; stats ``{"nodes", "embed_s", "forward_s", "seconds", "nodes_per_s"}`` (seconds,
        nodes per second over embedding and forward pass).

    Raises:
        ValueError: see :func:`run_kind` and :func:`pinned_encoder`; a GALLON student that
            reads E or P.
    """
    import torch

    from tag_pipeline.datasets import open_graph

    kind = run_kind(run)
    art = lake.read_artifact(run)
    encoder = encoder or pinned_encoder(run_ta_feature(run), run)
    start = time.perf_counter()
    if kind == "gallon":
        from tag_pipeline.methods.gallon.stage import load_student

        student, info = load_student(run)
        if info["features"] != ["TA"]:
            raise ValueError(f"{run}: this student reads {info['features']}; only a TA-only student predicts "
                             "without the LLM (method.student_features: [TA])")
        class_names = info["class_names"]
        x = encoder.encode(new.texts)
        t1 = time.perf_counter()
        with torch.inference_mode():
            logits, _ = student(x.float())
    else:
        from tag_pipeline.inference import load_trained_model

        graph = open_graph(Path(graph_path or art.manifest["inputs"]["graph"]))
        class_names = graph.class_names
        model, x_old, _ = load_trained_model(run, graph)
        x = encoder.encode(new.texts)
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
    the manifest's ``summary`` has the stats, and ``encoder`` / ``encoder_weights`` the
    encoder the new nodes were embedded with (:meth:`PinnedEncoder.manifest`: the run's TA
    feature's). Returns at once when that artifact exists (it was embedded with the run's
    recorded encoder, so the weights now at the model path are not needed then).

    Returns:
        (artifact directory, summary dict with the stats and ``path``), the same for a lake hit
        and a fresh build.

    Raises:
        DatasetError / ValueError / MissingArtifactError: see :func:`read_new_nodes`,
            :func:`run_kind` and :func:`pinned_encoder`; an input file that does not exist
            (named).
    """
    from tag_pipeline.datasets import open_graph

    run = Path(run)
    for f in (nodes, edges):
        if f is not None and not Path(f).is_file():
            raise DatasetError(f"{f}: input file not found")
    kind = run_kind(run)
    lake_root = Path(lake_root) if lake_root is not None else run.parents[2]
    key = PREDICT_STAGE.key(run.name, lake.file_sha256(nodes), lake.file_sha256(edges) if edges is not None else None)
    path = PREDICT_STAGE.path(lake_root, lake.dataset_of(run), key, prefix=f"{run.name}-")

    def build() -> lake.Built:
        encoder = pinned_encoder(run_ta_feature(run), run)
        graph_path = Path(lake.read_artifact(run, verify=False).manifest["inputs"]["graph"])
        new = read_new_nodes(nodes, edges, open_graph(graph_path).source_ids)
        if new.edges is not None and kind == "gallon":
            print(f"predict: {run.name} is a graph-free student; the {new.edges.shape[1] // 2} edges are not used")
        frame, stats = predict_new_nodes(run, new, graph_path, encoder)
        return lake.Built(
            write=lambda tmp: frame.write_parquet(tmp / PREDICTIONS_FILE),
            config={"run": str(run)},
            inputs={"run": str(run), "nodes": str(nodes), **({"edges": str(edges)} if edges else {})},
            rows=frame.height,
            extra={"summary": stats, **encoder.manifest()},
        )

    def read(p: Path) -> tuple[Path, dict]:
        return p, dict(lake.read_artifact(p, verify=False).manifest["summary"], path=str(p))

    return PREDICT_STAGE.materialize(path, build, read)
