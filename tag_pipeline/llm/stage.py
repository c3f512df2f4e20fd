"""The LLM stage in the lake: one responses table per (graph, LLM config)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tag_pipeline import lake
from tag_pipeline.config import DatasetConfig, LLMConfig
from tag_pipeline.datasets import open_graph

LLM_STAGE_VERSION = 1
RESPONSES_FILE = "responses.parquet"


def replay_sources(dataset: DatasetConfig, llm: LLMConfig) -> tuple[Path, Path | None]:
    """Folder of recorded answers and (optional) TAPE preds csv for a replay run.

    Raises:
        ValueError: a custom dataset without ``llm.responses_dir``.
    """
    if dataset.name == "cora":
        responses = llm.responses_dir or dataset.root / "cora" / "gpt_responses" / "Cora"
        preds = llm.preds_csv or dataset.root / "cora" / "gpt_preds" / "cora.csv"
        return responses, preds
    if llm.responses_dir is None:
        raise ValueError("llm.backend='replay' on a custom dataset needs llm.responses_dir")
    return llm.responses_dir, llm.preds_csv


def materialize_responses(graph_path: Path, dataset: DatasetConfig, llm: LLMConfig, lake_root: Path) -> Path:
    """Import the LLM's answers for every node of the graph into the response store.

    Replay (TAPE's recorded GPT-3.5 answers) parses each answer's ranked labels and
    explanation, and records its agreement with TAPE's own ``gpt_preds`` extraction and the
    top-1 accuracy of the LLM (zero-shot) in the manifest.

    Args:
        graph_path: graph artifact directory.
        dataset: the dataset config (locates TAPE's files).
        llm: the LLM stage config.
        lake_root: root of the lake.

    Returns:
        Artifact directory holding ``responses.parquet`` (schema: ``llm.store.RESPONSE_SCHEMA``).
    """
    from tag_pipeline.llm.replay import (
        agreement_with_tape_preds,
        import_tape_responses,
        read_tape_preds,
        replay_top1_accuracy,
    )
    from tag_pipeline.llm.store import write_responses

    graph = open_graph(graph_path)
    responses_dir, preds_csv = replay_sources(dataset, llm)
    key = lake.config_hash(
        LLM_STAGE_VERSION,
        graph_path.name,
        llm.model_dump(mode="json", exclude={"responses_dir", "preds_csv", "top_k"}),
        lake.files_digest([responses_dir]),
    )
    path = lake.artifact_dir(lake_root, graph_path.parents[1].name, "llm", f"{llm.backend}-{key}")
    if lake.find_artifact(path) is not None:
        return path
    df = import_tape_responses(responses_dir, graph.class_names, graph.num_nodes)
    stats: dict = {
        "llm_top1_accuracy": replay_top1_accuracy(df, graph.labels),
        "n_failed": int((df["status"] == "failed").sum()),
        "n_no_label": int(df.filter(pl.col("ranked_labels").list.len() == 0).height),
    }
    if preds_csv is not None and Path(preds_csv).exists():
        n_lines = sum(1 for _ in open(preds_csv))
        preds = read_tape_preds(Path(preds_csv), n_lines)[: graph.num_nodes]
        stats["tape_preds_agreement"] = agreement_with_tape_preds(df, preds)
    with lake.write_artifact(
        path,
        stage="llm",
        config=llm,
        inputs={"graph": str(graph_path), "responses_dir": str(responses_dir)},
        rows=df.height,
        extra={"stats": stats},
    ) as tmp:
        write_responses(df, tmp / RESPONSES_FILE)
    return path
