"""The feature stage in the lake: TA and E embeddings, and the P top-k matrix.

Text embeddings are computed in shards (:mod:`tag_pipeline.features.shards`): each shard of
``shard_size`` nodes is committed as soon as it is embedded, so a killed or failed run resumes
with only the missing shards; the final artifact is assembled from them and committed
atomically, and the shards are then removed.

How the vectors were computed (runtime and precision, chosen once per stage by
:func:`~tag_pipeline.features.text.encoder_path` from the machine's CPU flags or the config)
is recorded in the artifact's manifest (``encoder``, ``cpu``), never in its key: every path
stays within 1e-3 cosine of float32.
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


def _dataset_of(graph_path: Path) -> str:
    return graph_path.parents[1].name


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


def text_feature_path(graph_path: Path, responses_path: Path | None, feature: str, lm: LMConfig, lake_root: Path) -> Path:
    """Where the TA or E artifact of this encoder config lives: ``<lake>/<dataset>/features/<F>-<key>``.

    The key hashes the stage version, the feature, the upstream artifact (the graph's content,
    :func:`~tag_pipeline.datasets.graph_content_key`, for TA: not its splits; LLM answers for E)
    and the encoder config but for ``device``, ``batch_size``, ``shard_size``, ``runtime`` and
    ``precision`` (how, not what, is computed: rows agree to 1e-3 cosine, float32's rounding
    for the float32 paths; ``e_text`` too for TA),
    and the digest of the encoder's files (:func:`~tag_pipeline.features.text.model_digest`):
    new weights at the same path re-embed.
    """
    upstream = graph_content_key(graph_path) if feature == "TA" else responses_path.name if responses_path else None
    how = {"device", "batch_size", "shard_size", "runtime", "precision"} | ({"e_text"} if feature == "TA" else set())
    key = lake.config_hash(
        FEATURE_STAGE_VERSION, feature, upstream, lm.model_dump(mode="json", exclude=how), model_digest(lm.model)
    )
    return lake.artifact_dir(lake_root, _dataset_of(graph_path), "features", f"{feature}-{key}")


def _encoder(lm: LMConfig) -> tuple[Callable[[list[str]], torch.Tensor], EncoderPath]:
    """The encoder of ``lm`` for one stage: ``(encode, path)``.

    The path (runtime and precision) is resolved here, once (:func:`encoder_path`: CPU flags,
    model pipeline), and every shard's ``encode(texts) -> [len(texts), dim]`` float32 call
    runs it with those concrete values (no progress bar).
    """
    path = encoder_path(lm.model, device=lm.device, runtime=lm.runtime, precision=lm.precision)

    def encode(chunk: list[str]) -> torch.Tensor:
        return encode_texts(
            chunk, lm.model, max_length=lm.max_length, batch_size=lm.batch_size, device=lm.device,
            show_progress=False, runtime=path.runtime, precision=path.precision,
        )

    return encode, path


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
    path = text_feature_path(graph_path, responses_path, feature, lm, lake_root)
    texts = feature_texts(graph_path, responses_path, feature, lm.e_text)
    encode, _ = _encoder(lm)
    return embed_shard(texts, encode, shard_folder(path), index, shard_size=lm.shard_size)


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
        lm: the encoder config (``device``, ``batch_size``, ``shard_size``, ``runtime`` and
            ``precision`` do not enter the key).
        lake_root: root of the lake.
        shard_size: nodes per committed shard; an execution detail, not part of the key.
            (default: ``lm.shard_size``, 512)
        progress: draw a progress bar over nodes.

    Returns:
        Artifact directory ``<lake>/<dataset>/features/<feature>-<key>`` with
        ``features.safetensors`` and ``index.parquet``; its manifest records the encoder path
        (``encoder``: runtime, precision, reason) and the CPU (``cpu``: model, flags) of the
        committing process (:func:`encoder_manifest`).

    Raises:
        ValueError: see :func:`feature_texts`.
        OSError: a shard or the artifact could not be written (the message names the path and
            the reason, e.g. ``No space left on device (ENOSPC)``); committed shards are kept
            and no artifact is committed.
    """
    path = text_feature_path(graph_path, responses_path, feature, lm, lake_root)
    shards = shard_folder(path)
    if lake.find_artifact(path) is not None:
        if shards.exists():  # killed after the commit, before the clean-up
            remove_shards(shards)
        return path
    with lake.exclusive(path) as committed:
        if committed:
            return path
        texts = feature_texts(graph_path, responses_path, feature, lm.e_text)
        shard_size = lm.shard_size if shard_size is None else shard_size
        encode, how = _encoder(lm)
        sharded = embed_in_shards(
            texts, encode, shards, shard_size=shard_size, progress=progress, desc=f"embed {feature}"
        )
        x = sharded.x
        inputs = {"graph": str(graph_path)} | ({"responses": str(responses_path)} if feature == "E" else {})
        with lake.write_artifact(
            path, stage="features", config=lm, inputs=inputs, rows=x.shape[0],
            extra={
                "feature": feature, "dim": int(x.shape[1]), "shard_size": shard_size,
                # lineage of a resumed run: shards embedded by the committing run vs found committed
                "shards_computed": len(sharded.computed), "shards_reused": len(sharded.reused),
                "shard_writers": list(sharded.writers),
                # how the committing process embeds (shards found committed may come from others)
                **encoder_manifest(how),
            },
        ) as tmp:
            write_feature(tmp, x, feature=feature, source=lm.model)
        remove_shards(shards)
        return path


def materialize_prediction_feature(graph_path: Path, responses_path: Path, top_k: int, lake_root: Path) -> Path:
    """Build TAPE's P feature: ``[N, top_k]`` int64 ranked labels + 1 (0 = padding).

    Returns:
        Artifact directory ``<lake>/<dataset>/features/P-<key>``.
    """
    from tag_pipeline.llm.stage import RESPONSES_FILE
    from tag_pipeline.llm.store import ranked_matrix, read_responses

    key = lake.config_hash(FEATURE_STAGE_VERSION, "P", responses_path.name, top_k)
    path = lake.artifact_dir(lake_root, _dataset_of(graph_path), "features", f"P-{key}")
    if lake.find_artifact(path) is not None:
        return path
    with lake.exclusive(path) as committed:
        if committed:
            return path
        graph = open_graph(graph_path)
        df = read_responses(responses_path / RESPONSES_FILE, graph.num_nodes, graph.num_classes)
        import torch

        x = torch.from_numpy(ranked_matrix(df, graph.num_nodes, top_k))
        with lake.write_artifact(
            path, stage="features", config={"top_k": top_k}, inputs={"responses": str(responses_path)},
            rows=x.shape[0], extra={"feature": "P", "top_k": top_k},
        ) as tmp:
            write_feature(tmp, x, feature="P", source=f"top-{top_k} ranked labels")
        return path
