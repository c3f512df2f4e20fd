"""The feature stage in the lake: TA and E embeddings, and the P top-k matrix.

Text embeddings are computed in shards (:mod:`tag_pipeline.features.shards`): each shard of
``shard_size`` nodes is committed as soon as it is embedded, so a killed or failed run resumes
with only the missing shards; the final artifact is assembled from them and committed
atomically, and the shards are then removed.

How the vectors are computed (runtime and precision) is resolved once per stage by
:func:`~tag_pipeline.features.text.encoder_path`, from the machine's CPU flags or the config,
*before* the key is computed (``"auto"`` never reaches a key). Paths that agree with float32
to ~1e-6 (torch fp32, ONNX fp32) share a key; a lower precision (bf16, fp16) is a numerics
path of its own and gets its own key (a ``{"numerics": precision}`` part), so an fp32 lake
is never served bf16 vectors, nor the reverse. The manifest records the resolved path and
the CPU (``encoder``, ``cpu``) and the digest of the encoder's weights (``encoder_weights``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import torch

from tag_pipeline import hardware, lake
from tag_pipeline.config import LMConfig
from tag_pipeline.datasets import graph_content_key, open_graph
from tag_pipeline.features.shards import (
    committed_shards,
    embed_in_shards,
    embed_shard,
    remove_shards,
    shard_folder,
    shard_ranges,
)
from tag_pipeline.features.store import write_feature
from tag_pipeline.features.text import EncoderPath, encode_texts, encoder_path, model_digest

FEATURE_STAGE_VERSION = 1
#: The frozen-LM feature stage: ``<lake>/<dataset>/features/<F>-<key>`` (TA, E and P).
FEATURE_STAGE = lake.Stage(
    "features",
    FEATURE_STAGE_VERSION,
    code=(
        "tag_pipeline.features.stage", "tag_pipeline.features.text", "tag_pipeline.features.onnx_encoder",
        "tag_pipeline.features.shards", "tag_pipeline.features.store", "tag_pipeline.llm.store",
    ),
)


def feature_texts(graph_path: Path, responses_path: Path | None, feature: str, e_text: str = "auto") -> list[str]:
    """The text of every node for feature ``TA`` (title + abstract) or ``E`` (LLM answer).

    For E, a failed or missing answer yields the empty string. ``e_text`` = ``"raw"`` embeds
    the whole answer as TAPE does; ``"explanation"`` only the explanation; ``"auto"`` the
    whole answer where it was replayed prose and the explanation where it is structured JSON.

    Raises:
        ValueError: TA on a dataset without text, E without responses, or another feature.
        ResponseError: (a ``ValueError``) the responses table is invalid, e.g. an answer for a
            node the graph does not have (the message names the file and row).
    """
    graph = open_graph(graph_path)
    if feature == "TA":
        if graph.text is None:
            raise ValueError(f"{graph_path}: dataset {graph.name!r} has no text; the TA feature is unavailable")
        return list(graph.text)
    if feature == "E":
        if responses_path is None:
            raise ValueError("the E feature needs the LLM stage's responses")
        from tag_pipeline.llm.stage import RESPONSES_FILE
        from tag_pipeline.llm.store import read_responses

        df = read_responses(responses_path / RESPONSES_FILE, graph.num_nodes, graph.num_classes).sort("node_id")
        replayed = df["source"].str.starts_with("replay:")
        use_raw = replayed if e_text == "auto" else pl.Series([e_text == "raw"] * df.height)
        text = [r if raw else e for r, e, raw in zip(df["raw_text"], df["explanation"], use_raw)]
        by_node = dict(zip(df["node_id"].to_list(), text))
        return [by_node.get(i) or "" for i in range(graph.num_nodes)]
    raise ValueError(f"feature {feature!r} is not a text feature (TA or E)")


def resolve_encoder(lm: LMConfig) -> EncoderPath:
    """The concrete encoder path (runtime, precision) of ``lm`` on this machine.

    :func:`~tag_pipeline.features.text.encoder_path` of ``lm``'s ``model``, ``device``,
    ``runtime`` and ``precision``; ``"auto"`` is resolved here (CPU flags, model pipeline).
    Call it once per stage and pass the result on, so that the key and the embedding follow
    the same path.

    Raises:
        ValueError: a combination no path runs (fp16 off CUDA, ONNX in bf16/fp16...).
    """
    return encoder_path(lm.model, device=lm.device, runtime=lm.runtime, precision=lm.precision)


def text_feature_path(
    graph_path: Path,
    responses_path: Path | None,
    feature: str,
    lm: LMConfig,
    lake_root: Path,
    how: EncoderPath | None = None,
) -> Path:
    """Where the TA or E artifact of this encoder config lives: ``<lake>/<dataset>/features/<F>-<key>``.

    The key hashes the stage version, the feature, the upstream artifact (the graph's content,
    :func:`~tag_pipeline.datasets.graph_content_key`, for TA: not its splits; LLM answers for E),
    the encoder config but for ``device``, ``batch_size``, ``shard_size``, ``runtime`` and
    ``precision`` (``e_text`` too for TA), the digest of the encoder's files
    (:func:`~tag_pipeline.features.text.model_digest`: new weights at the same path re-embed),
    and the numerics path: the resolved precision (``how``) as a part ``{"numerics":
    precision}`` when it is not ``"fp32"``. So every float32 path (torch or ONNX, which agree
    to ~1e-6) shares one key, the very key of before numerics were keyed, while bf16 and fp16
    get keys of their own; ``"auto"`` has the key of what it resolves to on this machine.

    Args:
        graph_path: graph artifact directory.
        responses_path: LLM responses artifact directory (``E``), else ``None``.
        feature: ``"TA"`` or ``"E"``.
        lm: the encoder config.
        lake_root: root of the lake.
        how: ``lm``'s resolved encoder path, if the caller has it (default:
            :func:`resolve_encoder` of ``lm``).

    Raises:
        ValueError: ``lm``'s runtime and precision name no path on this machine (see
            :func:`resolve_encoder`).
    """
    how = resolve_encoder(lm) if how is None else how
    upstream = graph_content_key(graph_path) if feature == "TA" else responses_path.name if responses_path else None
    execution = {"device", "batch_size", "shard_size", "runtime", "precision"}
    if feature == "TA":
        execution.add("e_text")
    parts = [feature, upstream, lm.model_dump(mode="json", exclude=execution), model_digest(lm.model)]
    if how.precision != "fp32":
        parts.append({"numerics": how.precision})
    return FEATURE_STAGE.path(lake_root, lake.dataset_of(graph_path), FEATURE_STAGE.key(*parts), prefix=f"{feature}-")


def _encoder(lm: LMConfig, how: EncoderPath) -> Callable[[list[str]], torch.Tensor]:
    """The encoder of ``lm`` on the resolved path ``how`` (:func:`resolve_encoder`):
    ``encode(texts) -> [len(texts), dim]`` float32, run with ``how``'s concrete runtime and
    precision for every shard (no progress bar)."""

    def encode(chunk: list[str]) -> torch.Tensor:
        return encode_texts(
            chunk, lm.model, max_length=lm.max_length, batch_size=lm.batch_size, device=lm.device,
            show_progress=False, runtime=how.runtime, precision=how.precision,
        )

    return encode


def encoder_manifest(path: EncoderPath) -> dict:
    """Manifest fields of a text feature: ``{"encoder": {runtime, precision, reason}, "cpu":
    {model, flags, source}}`` (JSON-able; see :class:`~tag_pipeline.hardware.CpuInfo`)."""
    return {"encoder": path.as_dict(), "cpu": hardware.cpu_info().as_dict()}


def missing_text_shards(
    graph_path: Path, responses_path: Path | None, feature: str, lm: LMConfig, lake_root: Path
) -> list[int]:
    """Shards of the TA/E feature still to embed (``[]`` once the artifact is committed).

    Cheap: reads the node count from the graph manifest and checks shard files; what a
    distributed run fans out (:func:`embed_text_shard` per shard).
    """
    path = text_feature_path(graph_path, responses_path, feature, lm, lake_root)
    if (path / lake.MANIFEST).exists():
        return []
    rows = int(lake.read_artifact(graph_path, verify=False).manifest["rows"])
    folder = shard_folder(path)
    done = set(committed_shards(folder))
    return [i for i in range(len(shard_ranges(rows, lm.shard_size))) if i not in done]


def embed_text_shard(
    graph_path: Path, responses_path: Path | None, feature: str, lm: LMConfig, lake_root: Path, index: int
) -> bool:
    """Embed and commit one shard (``lm.shard_size`` nodes) of the TA or E feature.

    For fan-out over workers: any process that sees the lake may run any shard, in any order;
    :func:`materialize_text_feature` then assembles the committed shards (embedding any still
    missing) into the artifact. Rows equal those of a single-process run with the same
    ``shard_size`` and thread count.

    Returns:
        ``True`` if computed here, ``False`` if already committed.

    Raises:
        IndexError: no such shard; ValueError, OSError: see :func:`materialize_text_feature`.
    """
    how = resolve_encoder(lm)
    path = text_feature_path(graph_path, responses_path, feature, lm, lake_root, how=how)
    texts = feature_texts(graph_path, responses_path, feature, lm.e_text)
    return embed_shard(texts, _encoder(lm, how), shard_folder(path), index, shard_size=lm.shard_size)


def materialize_text_feature(
    graph_path: Path,
    responses_path: Path | None,
    feature: str,
    lm: LMConfig,
    lake_root: Path,
    *,
    shard_size: int | None = None,
    progress: bool = True,
) -> Path:
    """Embed TA or E text of every node; commit ``[N, dim]`` float32 to the lake.

    Resumable: nodes are embedded ``shard_size`` at a time and each shard is committed to
    ``<lake>/<dataset>/features/.shards/<feature>-<key>/`` before the next starts; a rerun
    after a kill or a failed write embeds only the shards that are missing or corrupt. Once
    all are there the artifact is committed atomically and the shard folder removed. Rows
    match one unsharded :func:`encode_texts` call to float rounding (at most ~1e-7 measured on
    MiniLM; bit for bit when each shard's texts pad to the same length), and a resumed run
    matches an uninterrupted one with the same ``shard_size`` bit for bit.

    Args:
        graph_path: graph artifact directory.
        responses_path: LLM responses artifact directory (needed for ``E``).
        feature: ``"TA"`` or ``"E"``.
        lm: the encoder config (``device``, ``batch_size`` and ``shard_size`` do not enter
            the key; ``runtime`` and ``precision`` enter it only as the resolved precision when
            that is not fp32, see :func:`text_feature_path`). Resolved once
            (:func:`resolve_encoder`): the key and every shard follow the same path.
        lake_root: root of the lake.
        shard_size: nodes per committed shard; an execution detail, not part of the key.
            (default: ``lm.shard_size``, 512)
        progress: draw a progress bar over nodes.

    Returns:
        Artifact directory ``<lake>/<dataset>/features/<feature>-<key>`` with
        ``features.safetensors`` and ``index.parquet``; its manifest records the encoder path
        (``encoder``: runtime, precision, reason) and the CPU (``cpu``: model, flags) of the
        committing process (:func:`encoder_manifest`), and the digest of the encoder's files
        (``encoder_weights``, :func:`~tag_pipeline.features.text.model_digest`; ``None`` for
        a hub name), which pin the encoder for whoever embeds new text like these rows.

    Raises:
        ValueError: see :func:`feature_texts` and :func:`resolve_encoder`.
        OSError: a shard or the artifact could not be written (the message names the path and
            the reason, e.g. ``No space left on device (ENOSPC)``); committed shards are kept
            and no artifact is committed.
    """
    how = resolve_encoder(lm)  # once: the key and every shard follow this path
    path = text_feature_path(graph_path, responses_path, feature, lm, lake_root, how=how)
    shards = shard_folder(path)
    shard_size = lm.shard_size if shard_size is None else shard_size

    def build() -> lake.Built:
        texts = feature_texts(graph_path, responses_path, feature, lm.e_text)
        sharded = embed_in_shards(
            texts, _encoder(lm, how), shards, shard_size=shard_size, progress=progress, desc=f"embed {feature}"
        )
        x = sharded.x
        inputs = {"graph": str(graph_path)} | ({"responses": str(responses_path)} if feature == "E" else {})
        return lake.Built(
            write=lambda tmp: write_feature(tmp, x, feature=feature, source=lm.model),
            config=lm, inputs=inputs, rows=x.shape[0],
            extra={
                "feature": feature, "dim": int(x.shape[1]), "shard_size": shard_size,
                # lineage of a resumed run: shards embedded by the committing run vs found committed
                "shards_computed": len(sharded.computed), "shards_reused": len(sharded.reused),
                "shard_writers": list(sharded.writers),
                # how the committing process embeds (shards found committed may come from others)
                **encoder_manifest(how),
                "encoder_weights": model_digest(lm.model),
            },
        )

    path = FEATURE_STAGE.materialize(path, build)
    if shards.exists():  # committed here, or by a run killed after its commit, before the clean-up
        remove_shards(shards)
    return path


def materialize_prediction_feature(graph_path: Path, responses_path: Path, top_k: int, lake_root: Path) -> Path:
    """Build TAPE's P feature: ``[N, top_k]`` int64 ranked labels + 1 (0 = padding).

    Returns:
        Artifact directory ``<lake>/<dataset>/features/P-<key>``.
    """
    from tag_pipeline.llm.stage import RESPONSES_FILE
    from tag_pipeline.llm.store import ranked_matrix, read_responses

    key = FEATURE_STAGE.key("P", responses_path.name, top_k)
    path = FEATURE_STAGE.path(lake_root, lake.dataset_of(graph_path), key, prefix="P-")

    def build() -> lake.Built:
        graph = open_graph(graph_path)
        df = read_responses(responses_path / RESPONSES_FILE, graph.num_nodes, graph.num_classes)
        x = torch.from_numpy(ranked_matrix(df, graph.num_nodes, top_k))
        return lake.Built(
            write=lambda tmp: write_feature(tmp, x, feature="P", source=f"top-{top_k} ranked labels"),
            config={"top_k": top_k}, inputs={"responses": str(responses_path)}, rows=x.shape[0],
            extra={"feature": "P", "top_k": top_k},
        )

    return FEATURE_STAGE.materialize(path, build)
