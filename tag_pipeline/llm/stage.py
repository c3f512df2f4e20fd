"""The LLM stage in the lake: one responses table per (graph, LLM config)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tag_pipeline import lake
from tag_pipeline.config import DatasetConfig, LLMConfig
from tag_pipeline.datasets import BUILTIN_DATASETS, TAGraph, dataset_dir, open_graph

LLM_STAGE_VERSION = 1
RESPONSES_FILE = "responses.parquet"


def replay_sources(dataset: DatasetConfig, llm: LLMConfig) -> tuple[Path | None, Path | None]:
    """Recorded answers and TAPE's ``gpt_preds`` csv for a replay run.

    For a built-in dataset (:data:`~tag_pipeline.datasets.BUILTIN_DATASETS`) the defaults are
    TAPE's files under ``<dataset.root>/<folder>``: cora ``gpt_responses/Cora`` (a folder of
    ``<i>.json``) and ``gpt_preds/cora.csv``; ogbn-arxiv
    ``gpt_responses/ogbn-arxiv_gpt_responses.parquet`` (the answers packed in one file) and
    ``gpt_preds/ogbn-arxiv.csv``; pubmed and arxiv_2023 no answers and
    ``gpt_preds/<name>.csv``. ``llm.responses_dir`` and ``llm.preds_csv`` override them.

    Returns:
        (Path | None, Path | None): the answers (a folder of ``<i>.json`` or a ``.parquet``
        file; ``None`` where there are none, and the replay then builds ranked labels without
        explanations from the csv) and the csv (``None`` for a custom dataset without one).
        At least one of the two is set.

    Raises:
        ValueError: a custom dataset with neither ``llm.responses_dir`` nor ``llm.preds_csv``.
    """
    info = BUILTIN_DATASETS.get(dataset.name)
    if info is not None:
        folder = dataset_dir(dataset)
        responses = llm.responses_dir or (folder / info.responses if info.responses else None)
        return responses, llm.preds_csv or folder / info.preds
    if llm.responses_dir is None and llm.preds_csv is None:
        raise ValueError(
            "llm.backend='replay' on a custom dataset needs llm.responses_dir (recorded answers) "
            "or llm.preds_csv (TAPE-style ranked predictions)"
        )
    return llm.responses_dir, llm.preds_csv


class LLMStageIncomplete(RuntimeError):
    """Some nodes got no answer for a reason a retry can fix (HTTP errors, timeouts).

    Nothing is committed to the lake; every answer received is in the persistent answer
    cache, so the retry asks only for the missing nodes.
    """


class LLMBudgetExhausted(RuntimeError):
    """The run's budget (calls or tokens) ran out before every node was answered.

    Answers so far are cached; raise the budget (``llm.online.max_calls``,
    ``max_total_tokens``) and run again to continue. Retrying as is would not help.
    """


def _live_key(graph_path: Path, graph: TAGraph, llm: LLMConfig) -> str:
    """Lineage key of a live (online/offline) answer set: what shapes the answers, not limits.

    The same parameters key the answer cache (each backend's ``generation_params``), plus the
    model, the endpoint and the prompt (template version and hash of the rendered template).
    """
    from tag_pipeline.llm.prompts import prompt_hash, prompt_version

    if llm.backend == "online":
        from tag_pipeline.llm.online import generation_params

        c = llm.online
        model = {"model": c.model, "api_base": c.api_base}
    else:
        from tag_pipeline.llm.offline import generation_params

        c = llm.offline
        model = {"model_path": c.model_path}
    return lake.config_hash(
        LLM_STAGE_VERSION, graph_path.name, llm.backend, model, generation_params(c),
        prompt_version(graph.name, c.template_version),
        prompt_hash(graph.name, graph.class_names, c.template_version, k=c.top_k),
    )


def ask_llm(graph: TAGraph, llm: LLMConfig, progress: bool = True) -> tuple[pl.DataFrame, dict]:
    """Ask the online or offline LLM about every node of ``graph`` (title + abstract).

    Returns:
        (responses in ``RESPONSE_SCHEMA``, the backend's stats).

    Raises:
        ValueError: the dataset has no text to prompt with.
        LLMBudgetExhausted: the budget ran out (answers so far are cached).
        LLMStageIncomplete: retryable failures left nodes unanswered (answers so far cached),
            or the provider refused the run (authentication, unknown model).
    """
    if graph.text is None:
        raise ValueError(f"dataset {graph.name!r} has no text to prompt the LLM with")
    nodes = list(enumerate(graph.text))
    if llm.backend == "online":
        from tag_pipeline.llm.online import answer_nodes

        df, stats = answer_nodes(nodes, graph.name, graph.class_names, llm.online, progress=progress)
    elif llm.backend == "offline":
        from tag_pipeline.llm.offline import answer_nodes_offline

        df, stats = answer_nodes_offline(nodes, graph.name, graph.class_names, llm.offline, progress=progress)
    else:
        raise ValueError(f"ask_llm handles online/offline, not {llm.backend!r}")
    unanswered = int(stats.get("failed", 0)) - int(stats.get("failed_invalid", 0))
    if stats.get("budget_exhausted"):
        raise LLMBudgetExhausted(
            f"LLM budget exhausted after {stats.get('calls')} calls / {stats.get('total_tokens')} tokens; "
            f"{unanswered} of {len(nodes)} nodes unanswered (answers so far are cached)"
        )
    if stats.get("aborted") or unanswered > 0:
        reasons = df.filter(pl.col("status") == "failed")["error"].unique().to_list()[:5]
        raise LLMStageIncomplete(
            f"{unanswered} of {len(nodes)} nodes unanswered"
            + (f"; run aborted: {stats['aborted']}" if stats.get("aborted") else "")
            + f"; reasons include {reasons} (answers so far are cached; a retry asks only for the rest)"
        )
    return df, stats


def materialize_responses(graph_path: Path, dataset: DatasetConfig, llm: LLMConfig, lake_root: Path) -> Path:
    """Get every node's ranked labels and explanation into the response store in the lake.

    ``replay`` imports TAPE's recorded GPT-3.5 answers (cora, ogbn-arxiv) and records the
    parser's agreement with TAPE's ``gpt_preds``, or, where no answers were released (pubmed,
    arxiv_2023), builds the table from ``gpt_preds`` alone: ranked labels, no explanations
    (see :func:`replay_sources`); ``online`` / ``offline`` ask the LLM (see :func:`ask_llm`).
    Either way the manifest records the LLM's zero-shot top-1 accuracy and the counts of
    failed and label-less answers. An answer set is committed only when every node has an
    answer or a final (paid-for) failure.

    Args:
        graph_path: graph artifact directory.
        dataset: the dataset config (locates TAPE's files for replay).
        llm: the LLM stage config.
        lake_root: root of the lake.

    Returns:
        Artifact directory holding ``responses.parquet`` (schema: ``llm.store.RESPONSE_SCHEMA``).

    Raises:
        LLMStageIncomplete, LLMBudgetExhausted: see :func:`ask_llm`.
    """
    from tag_pipeline.llm.replay import replay_top1_accuracy
    from tag_pipeline.llm.store import validate_responses, write_responses

    graph = None  # opened (and verified) once, and only when needed
    if llm.backend == "replay":
        responses_dir, preds_csv = replay_sources(dataset, llm)
        source = responses_dir if responses_dir is not None else preds_csv
        key = lake.config_hash(
            LLM_STAGE_VERSION,
            graph_path.name,
            llm.model_dump(mode="json", include={"backend", "model"}),
            lake.files_digest([source]),
        )
    else:
        graph = open_graph(graph_path)
        key = _live_key(graph_path, graph, llm)
    path = lake.artifact_dir(lake_root, graph_path.parents[1].name, "llm", f"{llm.backend}-{key}")
    if lake.find_artifact(path) is not None:
        return path
    graph = graph or open_graph(graph_path)
    if llm.backend == "replay":
        df, stats = _replay(graph, dataset, llm)
        inputs = {"graph": str(graph_path)}
        if responses_dir is not None:
            inputs["responses_dir"] = str(responses_dir)
        else:
            inputs["preds_csv"] = str(preds_csv)
    else:
        df, backend_stats = ask_llm(graph, llm)
        stats = {"backend": backend_stats}
        inputs = {"graph": str(graph_path)}
    df = validate_responses(df, graph.num_nodes, graph.num_classes, str(path / RESPONSES_FILE))
    stats |= {
        "llm_top1_accuracy": replay_top1_accuracy(df, graph.labels),
        "n_failed": int((df["status"] == "failed").sum()),
        "n_no_label": int(df.filter(pl.col("ranked_labels").list.len() == 0).height),
    }
    with lake.write_artifact(path, stage="llm", config=llm, inputs=inputs, rows=df.height, extra={"stats": stats}) as tmp:
        write_responses(df, tmp / RESPONSES_FILE)
    return path


def _replay(graph: TAGraph, dataset: DatasetConfig, llm: LLMConfig) -> tuple[pl.DataFrame, dict]:
    """TAPE's recorded answers for the graph's nodes, or its ranked predictions where there are none.

    With answers (a folder of ``<i>.json`` or a packed ``.parquet``, see
    :func:`~tag_pipeline.llm.replay.import_recorded_responses`) the stats hold the parser's
    agreement with the ``gpt_preds`` csv (``tape_preds_agreement``) when the csv exists.
    Without (pubmed, arxiv_2023) every row comes from the csv
    (:func:`~tag_pipeline.llm.replay.responses_from_tape_preds`: ranked labels, empty
    explanation; an empty line is a failed row) and the stats say ``ranked_labels_only``.
    A graph cut to its first nodes (``dataset.subset``) reads the first lines / files only.

    Returns:
        (responses in ``RESPONSE_SCHEMA``, one row per node; stats for the manifest).

    Raises:
        FileNotFoundError: the answers or (without answers) the csv do not exist.
        ResponseError: a malformed answer or csv line (the message names the file and row).
    """
    from tag_pipeline.llm.replay import (
        agreement_with_tape_preds,
        import_recorded_responses,
        read_tape_preds,
        responses_from_tape_preds,
    )

    responses_dir, preds_csv = replay_sources(dataset, llm)
    if responses_dir is None:
        df = responses_from_tape_preds(
            Path(preds_csv), graph.num_nodes, graph.num_classes, model=llm.model,
            allow_more_lines=dataset.subset is not None,
        )
        return df, {"ranked_labels_only": True}
    df = import_recorded_responses(responses_dir, graph.class_names, graph.num_nodes)
    stats: dict = {}
    if preds_csv is not None and Path(preds_csv).exists():
        n_lines = sum(1 for _ in open(preds_csv))
        preds = read_tape_preds(Path(preds_csv), n_lines)[: graph.num_nodes]
        stats["tape_preds_agreement"] = agreement_with_tape_preds(df, preds)
    return df, stats
