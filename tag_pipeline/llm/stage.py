"""The LLM stage in the lake: one responses table per (graph, LLM config).

Also the stage's fan-out over shards of nodes (:func:`plan_llm_fan_out`, :func:`ask_llm_shard`),
whose checkpoint is the answer cache: the responses table is then committed from the cache.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from tag_pipeline import lake
from tag_pipeline.config import DatasetConfig, LLMConfig
from tag_pipeline.datasets import BUILTIN_DATASETS, TAGraph, dataset_dir, graph_content_key, open_graph

LLM_STAGE_VERSION = 1
#: The LLM stage: ``<lake>/<dataset>/llm/<backend>-<key>``, one responses table per answer set.
LLM_STAGE = lake.Stage("llm", LLM_STAGE_VERSION, code=("tag_pipeline.llm",))
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


class LLMTooManyFailures(ValueError):
    """More nodes than ``llm.max_failed_fraction`` allows have a failed answer.

    Failed answers are final (paid for, cached): a retry would fail the same way. Raise the
    fraction, or fix the cause (model, prompt, limits) and ask again with ``reask_failed``.
    """


def check_failed_answers(responses: Path | str, max_fraction: float, examples: int = 5) -> dict:
    """Fail loudly when too many nodes have no usable LLM answer; else return the counts.

    A failed answer becomes an empty E text and an all-padding P row downstream: silently, if
    nothing looked. Reads the manifest's counts and, only when failing, the failed rows.

    Args:
        responses: the responses artifact directory.
        max_fraction: largest allowed ``n_failed / n_nodes`` (``llm.max_failed_fraction``).
        examples: how many failed nodes the error names.

    Returns:
        ``{"n_failed": int, "n_nodes": int, "fraction": float}``.

    Raises:
        LLMTooManyFailures: the fraction is above ``max_fraction``; the message gives the count,
            the fraction, the first failed node ids and their errors.
    """
    art = lake.read_artifact(responses, verify=False)
    n = int(art.manifest.get("rows") or 0)
    n_failed = int(art.manifest.get("stats", {}).get("n_failed", 0))
    fraction = n_failed / n if n else 0.0
    if fraction > max_fraction:
        df = pl.read_parquet(Path(responses) / RESPONSES_FILE, columns=["node_id", "status", "error"])
        failed = df.filter(pl.col("status") == "failed").sort("node_id").head(examples)
        shown = "; ".join(f"node {i}: {e}" for i, e in zip(failed["node_id"], failed["error"]))
        raise LLMTooManyFailures(
            f"{responses}: {n_failed} of {n} nodes ({fraction:.2%}) have a failed LLM answer, more than "
            f"llm.max_failed_fraction={max_fraction:g} allows (their E text would be empty and their "
            f"P row padding); e.g. {shown}"
        )
    return {"n_failed": n_failed, "n_nodes": n, "fraction": fraction}


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
    elif llm.backend == "local":
        from tag_pipeline.llm.local import generation_params, model_identity

        c = llm.local
        model = model_identity(c)  # the file's sha256, not its path or the server's port
    else:
        from tag_pipeline.llm.offline import generation_params

        c = llm.offline
        model = {"model_path": c.model_path}
    return LLM_STAGE.key(
        graph_content_key(graph_path), llm.backend, model, generation_params(c),
        prompt_version(graph.name, c.template_version),
        prompt_hash(graph.name, graph.class_names, c.template_version, k=c.top_k),
    )


def _live_path(graph_path: Path, graph: TAGraph, llm: LLMConfig, lake_root: Path) -> Path:
    """Artifact directory of a live (online/offline) answer set: ``<lake>/<dataset>/llm/<backend>-<key>``."""
    key = _live_key(graph_path, graph, llm)
    return LLM_STAGE.path(lake_root, lake.dataset_of(graph_path), key, prefix=f"{llm.backend}-")


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
    return _ask_nodes(list(enumerate(graph.text)), graph, llm, progress=progress)


def _ask_nodes(
    nodes: list[tuple[int, str]], graph: TAGraph, llm: LLMConfig, progress: bool = True, engine=None
) -> tuple[pl.DataFrame, dict]:
    """:func:`ask_llm` for ``nodes`` (``[(node_id, text), ...]``) only; same errors."""
    if llm.backend == "online":
        from tag_pipeline.llm.online import answer_nodes

        df, stats = answer_nodes(nodes, graph.name, graph.class_names, llm.online, progress=progress)
    elif llm.backend == "local":
        from tag_pipeline.llm.local import answer_nodes_local

        df, stats = answer_nodes_local(nodes, graph.name, graph.class_names, llm.local, progress=progress)
    elif llm.backend == "offline":
        from tag_pipeline.llm.offline import answer_nodes_offline

        df, stats = answer_nodes_offline(
            nodes, graph.name, graph.class_names, llm.offline, progress=progress, engine=engine
        )
    else:
        raise ValueError(f"ask_llm handles online/local/offline, not {llm.backend!r}")
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


def responses_path(graph_path: Path, dataset: DatasetConfig, llm: LLMConfig, lake_root: Path) -> Path:
    """Where the answer set of this LLM config lives: ``<lake>/<dataset>/llm/<backend>-<key>``.

    Replay: the key hashes the graph's content, the backend and model names and the contents
    of the recorded answers (``responses_dir``, or ``preds_csv`` where no answers were
    released), so edited answer files are imported again. Online/offline: see
    :func:`_live_key` (model, endpoint, generation parameters, the rendered prompt template).

    Raises:
        FileNotFoundError: a replay source does not exist (the message names it).
        ValueError: replay has no source for this dataset (see :func:`replay_sources`).
    """
    if llm.backend != "replay":
        return _live_path(graph_path, open_graph(graph_path), llm, lake_root)
    responses_dir, preds_csv = replay_sources(dataset, llm)
    source = responses_dir if responses_dir is not None else preds_csv
    key = LLM_STAGE.key(
        graph_content_key(graph_path),
        llm.model_dump(mode="json", include={"backend", "model"}),
        lake.files_digest([source]),
    )
    return LLM_STAGE.path(lake_root, lake.dataset_of(graph_path), key, prefix=f"{llm.backend}-")


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
        path = responses_path(graph_path, dataset, llm, lake_root)
    else:
        graph = open_graph(graph_path)
        path = _live_path(graph_path, graph, llm, lake_root)

    def build() -> lake.Built:
        g = graph or open_graph(graph_path)
        inputs = {"graph": str(graph_path)}
        if llm.backend == "replay":
            df, stats = _replay(g, dataset, llm)
            if responses_dir is not None:
                inputs["responses_dir"] = str(responses_dir)
            else:
                inputs["preds_csv"] = str(preds_csv)
        else:
            df, backend_stats = ask_llm(g, llm)
            stats = {"backend": backend_stats}
        df = validate_responses(df, g.num_nodes, g.num_classes, str(path / RESPONSES_FILE))
        stats |= {
            "llm_top1_accuracy": replay_top1_accuracy(df, g.labels),
            "n_failed": int((df["status"] == "failed").sum()),
            "n_no_label": int(df.filter(pl.col("ranked_labels").list.len() == 0).height),
        }
        return lake.Built(
            write=lambda tmp: write_responses(df, tmp / RESPONSES_FILE),
            config=llm, inputs=inputs, rows=df.height, extra={"stats": stats},
        )

    return LLM_STAGE.materialize(path, build)


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


# ---------------------------------------------------------------------- fan-out over shards
#
# A distributed LLM stage: the nodes are cut into shards of ``shard_size`` consecutive node
# ids, and any process that sees the answer cache asks about one shard
# (:func:`ask_llm_shard`). Its only durable output is the per-node answer cache, which is the
# checkpoint: nothing is committed to the lake. :func:`materialize_responses` then finds
# every answer in the cache (no request) and commits the responses artifact as usual.


@dataclass(frozen=True)
class LLMFanOutPlan:
    """What a fan-out of the LLM stage asks and under which limits (:func:`plan_llm_fan_out`).

    Attributes:
        llm: the config every shard runs with: ``llm`` with the online backend's rate limits
            and concurrency divided among the concurrent shard workers
            (:func:`split_llm_limits`).
        shards: indices of the shards with texts still to ask (``[]``: nothing to fan out).
        budgets: per shard (parallel to ``shards``), its share of the run's budget:
            ``{"max_calls": int, "max_total_tokens": int}`` (only the budgets that are set;
            ``{}`` without budgets). See :func:`plan_llm_fan_out`.
        texts: distinct texts not yet in the answer cache, all shards together.
        reason: why nothing is fanned out (``shards == []``), else ``None``.
    """

    llm: LLMConfig
    shards: list[int] = field(default_factory=list)
    budgets: list[dict[str, int]] = field(default_factory=list)
    texts: int = 0
    reason: str | None = None


def llm_shard_ranges(num_nodes: int, shard_size: int) -> list[tuple[int, int]]:
    """Node id ranges ``[(start, stop), ...]`` of the LLM shards: shard ``i`` is
    ``[i * shard_size, min((i + 1) * shard_size, num_nodes))``.

    Raises:
        ValueError: ``shard_size < 1``.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [(start, min(start + shard_size, num_nodes)) for start in range(0, num_nodes, shard_size)]


def _first_occurrences(texts: list[str]) -> list[bool]:
    """Whether each node is the first (smallest id) with its text, as the answer cache key sees
    it (:func:`~tag_pipeline.llm.cache.text_sha256`): equal texts share one answer, asked by
    the shard of their first node only."""
    from tag_pipeline.llm.cache import text_sha256

    seen: set[str] = set()
    first = []
    for text in texts:
        key = text_sha256(text)
        first.append(key not in seen)
        seen.add(key)
    return first


def _shard_nodes(texts: list[str], start: int, stop: int) -> list[tuple[int, str]]:
    """The ``(node_id, text)`` pairs a shard asks about: nodes of ``[start, stop)`` that are the
    first with their text (a node whose text occurs earlier gets the earlier shard's answer)."""
    first = _first_occurrences(texts[:stop])  # later nodes cannot come first
    return [(i, texts[i]) for i in range(start, stop) if first[i]]


def _answer_key_fn(graph: TAGraph, llm: LLMConfig):
    """``text -> answer cache key`` of ``llm``'s live backend (the backend's own
    ``node_answer_key``, so plan and backend cannot disagree), and its config."""
    if llm.backend == "online":
        from tag_pipeline.llm.online import node_answer_key

        c = llm.online
    elif llm.backend == "local":
        from tag_pipeline.llm.local import node_answer_key

        c = llm.local
    else:
        from tag_pipeline.llm.offline import node_answer_key

        c = llm.offline
    return node_answer_key(graph.name, graph.class_names, c), c


def split_llm_limits(llm: LLMConfig, workers: int) -> LLMConfig:
    """The config each of ``workers`` concurrent shard tasks runs with, so that together they
    keep ``llm``'s limits. A process asks one shard at a time (:func:`ask_llm_shard`), so
    ``workers`` is the number of worker processes.

    Online: ``rpm`` (requests/min), ``tpm`` (tokens/min) and ``max_concurrency`` (requests in
    flight) are divided by ``workers`` (``max_concurrency`` rounded down, at least 1). Each
    shard task has its own token buckets, so ``workers`` tasks at ``rpm / workers`` each send at
    most ``rpm`` requests/min together; only the buckets' start-up bursts add up (at most
    ``max(1, round(rpm / workers * burst_s / 60))`` requests per shard start). Budgets are split
    per shard, not per worker: see :func:`plan_llm_fan_out`. Local: with a shared ``api_base``,
    its ``rpm`` and ``max_concurrency`` are divided likewise; else every worker starts its own
    servers, and the machine's cores are divided among the workers (``servers`` of ``threads``
    each; with workers on several machines, set ``llm.local.servers`` yourself). Offline (vLLM) and replay: returned
    unchanged (each worker needs a GPU of its own; nothing is rate-limited).

    Args:
        llm: the stage's config (the run's global limits).
        workers: shard tasks that may run at the same time (Dask worker processes in all).

    Returns:
        LLMConfig: with the same answer cache key and lineage key as ``llm`` (limits are in
        neither).

    Raises:
        ValueError: ``workers < 1``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if llm.backend == "local" and workers > 1:
        c = llm.local
        if c.api_base is not None:  # one shared server: share its request rate and queue
            update = {"rpm": c.rpm / workers, "max_concurrency": max(1, (c.max_concurrency or 2) // workers)}
        else:  # each worker starts its own servers: share the machine's cores among them
            from tag_pipeline.llm.local import server_count

            update = {"servers": c.servers or max(1, server_count(c) // workers)}
        return llm.model_copy(update={"local": c.model_copy(update=update)})
    if llm.backend != "online" or workers == 1:
        return llm
    c = llm.online
    online = c.model_copy(update={
        "rpm": c.rpm / workers,
        "tpm": None if c.tpm is None else c.tpm / workers,
        "max_concurrency": max(1, c.max_concurrency // workers),
    })
    return llm.model_copy(update={"online": online})


def plan_llm_fan_out(
    graph_path: Path, llm: LLMConfig, lake_root: Path, shard_size: int, workers: int
) -> LLMFanOutPlan:
    """Plan a fan-out of the LLM stage: the shards with texts not yet in the answer cache, the
    per-shard config (:func:`split_llm_limits`) and each shard's share of the budget.

    Cheap next to asking: opens the graph and looks every distinct text up in the cache
    (a text that failed before counts as missing with ``reask_failed``). Nothing is planned
    once the responses artifact is committed, whatever the cache holds.

    Budgets (online ``max_calls``, ``max_total_tokens``) bound a whole run; shard tasks cannot
    share a counter, so the budget is split among the shards to ask, in proportion to their
    missing texts (calls) or to those texts' estimated tokens (tokens,
    :func:`~tag_pipeline.llm.online.estimate_tokens`), rounded down: the shares never add up
    to more than the budget. A shard that spends its share stops with
    :class:`LLMBudgetExhausted` even if another shard left some unspent (an uneven need of
    re-asks or retries): raise the budget and run again; cached answers are not asked again.
    When ``max_calls`` is below the number of missing texts (the run cannot finish within it
    anyway), nothing is fanned out (``reason`` says so) and the stage runs in one process
    under the whole budget, as a local run would: it spends the budget and stops.

    Args:
        graph_path: graph artifact directory.
        llm: the stage's config (``replay``: nothing to plan).
        lake_root: root of the lake.
        shard_size: nodes per shard (see :func:`llm_shard_ranges`).
        workers: shard tasks that may run at the same time.

    Returns:
        LLMFanOutPlan: ``shards == []`` with a ``reason`` when there is nothing to fan out.

    Raises:
        ValueError: the dataset has no text, ``shard_size < 1`` or ``workers < 1``.
    """
    if llm.backend == "replay":
        return LLMFanOutPlan(llm=llm, reason="replay backend: nothing to compute")
    graph = open_graph(graph_path)
    if graph.text is None:
        raise ValueError(f"dataset {graph.name!r} has no text to prompt the LLM with")
    if lake.find_artifact(_live_path(graph_path, graph, llm, lake_root)) is not None:
        return LLMFanOutPlan(llm=llm, reason="the responses are in the lake")
    from tag_pipeline.llm.cache import get_answer, open_cache

    key, c = _answer_key_fn(graph, llm)
    texts, names = list(graph.text), list(graph.class_names)
    first = _first_occurrences(texts)
    count_tokens = llm.backend == "online" and llm.online.max_total_tokens is not None
    if count_tokens:
        from tag_pipeline.llm.online import estimate_tokens
        from tag_pipeline.llm.prompts import build_messages
    shards, need_texts, need_tokens = [], [], []
    with open_cache(c.cache_dir) as cache:
        for index, (start, stop) in enumerate(llm_shard_ranges(graph.num_nodes, shard_size)):
            n = tokens = 0
            for i in range(start, stop):
                if not first[i]:
                    continue
                hit = get_answer(cache, key(texts[i]))
                if hit is not None and not (c.reask_failed and hit.get("status") == "failed"):
                    continue
                n += 1
                if count_tokens:
                    messages = build_messages(graph.name, names, texts[i], c.template_version, k=c.top_k)
                    tokens += estimate_tokens(messages, c.max_output_tokens)
            if n:
                shards.append(index)
                need_texts.append(n)
                need_tokens.append(tokens)
    total = sum(need_texts)
    if not shards:
        return LLMFanOutPlan(llm=llm, reason="every answer is in the cache")
    budgets: list[dict[str, int]] = [{} for _ in shards]
    if llm.backend == "online":
        calls, tokens = llm.online.max_calls, llm.online.max_total_tokens
        if calls is not None:
            if calls < total:
                return LLMFanOutPlan(
                    llm=llm, texts=total,
                    reason=f"budget max_calls={calls} < {total} texts to ask: not split over shards; "
                    "the stage spends it in one process",
                )
            for b, n in zip(budgets, need_texts, strict=True):
                b["max_calls"] = calls * n // total  # >= n, since calls >= total
        if tokens is not None:
            all_tokens = sum(need_tokens)
            for b, t in zip(budgets, need_tokens, strict=True):
                # a share of 0 is written as 1: every request is estimated at >= 16 tokens, so
                # a 1-token budget sends nothing, and the shares sent still add up to <= tokens
                b["max_total_tokens"] = max(1, tokens * t // all_tokens)
    return LLMFanOutPlan(
        llm=split_llm_limits(llm, workers), shards=shards, budgets=budgets, texts=total
    )


_ONE_SHARD_AT_A_TIME = threading.Lock()
"""Shards of one process are asked one after the other: the online backend runs an event loop
per call and litellm keeps process-wide state bound to one loop (two loops at once in one process
break its logging worker); offline, the process has one vLLM engine. A shard task has
``max_concurrency`` requests (or a vLLM batch) in flight of its own, so threads add nothing."""


class _SharedEngine:
    """The vLLM engine of this process, loaded on first use and kept for the next shards.

    A Dask worker runs many shard tasks; loading the model for each (minutes) would dwarf the
    generation. One engine per process (a GPU holds one), replaced when a shard needs another
    model; calls from the worker's threads are serialised (``vllm.LLM`` is not thread-safe).
    """

    _lock = threading.Lock()
    _engine = None
    _key: str | None = None

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def chat(self, messages, sampling_params=None, use_tqdm=True):
        from tag_pipeline.llm import offline

        key = self.cfg.model_dump_json(
            include={"model_path", "gpu_memory_utilization", "max_model_len", "tensor_parallel_size", "dtype", "seed"}
        )
        with _SharedEngine._lock:
            if _SharedEngine._key != key:
                _SharedEngine._engine = _SharedEngine._key = None  # free the GPU before loading
                _SharedEngine._engine = offline.load_engine(self.cfg)
                _SharedEngine._key = key
            return _SharedEngine._engine.chat(messages, sampling_params, use_tqdm=use_tqdm)


def worker_identity() -> str:
    """``host:pid`` of the calling process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def ask_llm_shard(
    graph_path: Path,
    llm: LLMConfig,
    shard: int,
    shard_size: int,
    budget: Mapping[str, int] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Ask the online or offline LLM about one shard of nodes; the answers go to the cache only.

    The shard is node ids ``[shard * shard_size, (shard + 1) * shard_size)``
    (:func:`llm_shard_ranges`); a node whose text occurs at a smaller node id is left to that
    node's shard, so every distinct text is asked by exactly one shard. Answers already cached
    are not asked again, so a retried or repeated shard costs only what is missing. For the
    fan-out (:func:`plan_llm_fan_out`): any process that sees the answer cache may run any
    shard, in any order; ``llm`` should carry the split limits (:func:`split_llm_limits`).
    Calls from several threads of one process run one after the other (see
    ``_ONE_SHARD_AT_A_TIME``). Offline, the process keeps its vLLM engine for its next shards.

    Args:
        graph_path: graph artifact directory.
        llm: the config to ask with (``online`` or ``offline``).
        shard: the shard's index.
        shard_size: nodes per shard.
        budget: this shard's share of the online budget, ``{"max_calls": n,
            "max_total_tokens": n}`` (either optional; overrides ``llm.online``'s).
        progress: show the backend's progress bar.

    Returns:
        dict: ``shard``; ``nodes`` (in its range); ``texts`` (distinct texts it is responsible
        for); ``cache_hits`` (of those, already cached); ``requests`` (HTTP requests sent, or
        prompts generated offline, re-asks and retries included); ``failed`` (texts whose final
        answer is a failure: invalid after the re-asks, or cut off); ``worker`` (``host:pid``);
        ``limits`` (online: the ``rpm`` requests/min, ``tpm`` tokens/min and
        ``max_concurrency`` it ran under; offline ``{}``); ``wall_s`` (seconds, model loading
        and imports included).

    Raises:
        ValueError: replay backend, no text, or ``shard_size < 1``.
        IndexError: no such shard.
        LLMBudgetExhausted, LLMStageIncomplete: see :func:`ask_llm` (answers so far cached).
    """
    if llm.backend not in ("online", "local", "offline"):
        raise ValueError(f"ask_llm_shard handles online/local/offline, not {llm.backend!r}")
    t_start = time.monotonic()
    graph = open_graph(graph_path)
    if graph.text is None:
        raise ValueError(f"dataset {graph.name!r} has no text to prompt the LLM with")
    ranges = llm_shard_ranges(graph.num_nodes, shard_size)
    if not 0 <= shard < len(ranges):
        raise IndexError(f"no LLM shard {shard}: {graph.num_nodes} nodes make {len(ranges)} shards of {shard_size}")
    start, stop = ranges[shard]
    nodes = _shard_nodes(list(graph.text), start, stop)
    if budget and llm.backend == "online":
        llm = llm.model_copy(update={"online": llm.online.model_copy(update=dict(budget))})
    limits = {}
    if llm.backend == "online":
        limits = {"rpm": llm.online.rpm, "tpm": llm.online.tpm, "max_concurrency": llm.online.max_concurrency}
    out = {"shard": shard, "nodes": stop - start, "texts": len(nodes), "cache_hits": 0, "requests": 0,
           "failed": 0, "worker": worker_identity(), "limits": limits}
    if nodes:
        engine = _SharedEngine(llm.offline) if llm.backend == "offline" else None
        with _ONE_SHARD_AT_A_TIME:
            _, stats = _ask_nodes(nodes, graph, llm, progress=progress, engine=engine)
        requests = stats.get("generated") if llm.backend == "offline" else stats.get("calls")
        out |= {"cache_hits": int(stats.get("cache_hits", 0)), "requests": int(requests or 0),
                "failed": int(stats.get("failed", 0))}
    return out | {"wall_s": round(time.monotonic() - t_start, 3)}
