"""Fan-out subflows: the LLM and embedding stages as one task per shard on a distributed task runner."""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from tag_pipeline.config import LLMConfig, LMConfig, ScaleOutConfig
from tasks.features import embed_text_shard_task, plan_text_shards
from tasks.llm import ask_llm_shard_task, plan_llm_shards


def task_runner_for(scale_out: ScaleOutConfig):
    """The Prefect task runner ``scale_out`` asks for: prefect-dask's ``DaskTaskRunner`` on an
    existing cluster (``address``) or a temporary local one (``n_workers`` processes)."""
    if scale_out.runner == "local":
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if scale_out.address:
        return DaskTaskRunner(address=scale_out.address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": scale_out.n_workers, "threads_per_worker": scale_out.threads_per_worker,
            "processes": True, "dashboard_address": None,
        }
    )


@flow(name="embed-shards", log_prints=True)
def embed_shards(graph: str, responses: str | None, feature: str, lm: LMConfig, lake: str, shards: list[int]) -> int:
    """Embed ``shards`` of the TA/E feature in parallel, one task each; returns how many were computed."""
    futures = embed_text_shard_task.map(
        unmapped(graph), unmapped(responses), unmapped(feature), unmapped(lm), unmapped(lake), shards
    )
    return sum(bool(f.result()) for f in futures)


def fan_out_embedding(
    graph: str, responses: str | None, feature: str, lm: LMConfig, lake: str, scale_out: ScaleOutConfig
) -> int:
    """Commit every missing shard of the feature on ``scale_out``'s task runner (a subflow run);
    the ``embed-text`` task then only assembles them. Returns the shards computed."""
    shards = plan_text_shards(graph, responses, feature, lm, lake)
    if not shards:
        return 0
    runner = embed_shards.with_options(
        task_runner=task_runner_for(scale_out), flow_run_name=f"embed-shards-{feature}"
    )
    return runner(graph, responses, feature, lm, lake, shards)


def llm_shard_workers(scale_out: ScaleOutConfig) -> int:
    """LLM shard tasks ``scale_out`` runs at once: one per worker process (a process asks one
    shard at a time, whatever its threads), i.e. ``n_workers``; for an existing cluster
    (``address``) ``n_workers`` must state its worker processes in all (see
    :class:`~tag_pipeline.config.ScaleOutConfig`). 1 for ``local``."""
    return 1 if scale_out.runner == "local" else scale_out.n_workers


@flow(name="llm-shards", log_prints=True)
def llm_shards(
    graph: str, llm: LLMConfig, shards: list[int], shard_size: int, budgets: list[dict[str, int]]
) -> list[dict]:
    """Ask the LLM about ``shards`` in parallel, one task each, ``llm`` carrying the per-task
    limits and ``budgets`` each shard's share of the budget; returns the shards' stats."""
    futures = ask_llm_shard_task.map(
        unmapped(graph), unmapped(llm), shards, unmapped(shard_size), budgets
    )
    stats = [f.result() for f in futures]
    workers = sorted({s["worker"] for s in stats if s["requests"]})
    print(
        f"LLM fan-out: {len(stats)} shards, {sum(s['requests'] for s in stats)} requests, "
        f"{sum(s['cache_hits'] for s in stats)} cache hits, from {len(workers)} worker processes"
    )
    return stats


def fan_out_llm(graph: str, llm: LLMConfig, lake: str, scale_out: ScaleOutConfig) -> list[dict]:
    """Fill the answer cache for every node on ``scale_out``'s task runner (a subflow run), the
    global rate limits and budget split among the shard tasks; the ``query-llm`` task then
    finds every answer cached and commits the responses. Returns the shards' stats (``[]``
    when nothing was fanned out: replay, all cached, responses committed, or a budget too small
    to split, which ``query-llm`` then spends in one process)."""
    plan = plan_llm_shards(graph, llm, lake, scale_out.llm_shard_size, llm_shard_workers(scale_out))
    if not plan.shards:
        print(f"LLM fan-out: nothing to fan out ({plan.reason})")
        return []
    runner = llm_shards.with_options(
        task_runner=task_runner_for(scale_out), flow_run_name=f"llm-shards-{llm.backend}"
    )
    return runner(graph, plan.llm, plan.shards, scale_out.llm_shard_size, plan.budgets)
