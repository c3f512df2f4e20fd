"""LLM stage tasks: the stage itself, and its fan-out over shards of nodes."""

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tag_pipeline.config import DatasetConfig, LLMConfig
from tag_pipeline.llm.stage import (
    LLMBudgetExhausted,
    LLMFanOutPlan,
    ask_llm_shard,
    check_failed_answers,
    materialize_responses,
    plan_llm_fan_out,
)
from tasks import reading, stage_task_options, worth_retrying


def _worth_retrying(task, task_run, state) -> bool:
    """Retry transient failures (the answer cache makes a retry cheap), not an empty budget."""
    return worth_retrying(task, task_run, state) and not isinstance(
        state.result(raise_on_failure=False), LLMBudgetExhausted
    )


@task(
    name="query-llm",
    task_run_name="query-llm-{llm.backend}",
    **stage_task_options(
        retries=3, retry_delay_seconds=[5, 30, 120], retry_condition_fn=_worth_retrying
    ),
)
def query_llm(graph: str, dataset: DatasetConfig, llm: LLMConfig, lake: str, build: bool = True) -> str:
    """Get every node's ranked labels and explanation; return the responses artifact path.

    ``build=False``: only look the answers up in the lake (raises ``MissingArtifactError``).
    More failed answers than ``llm.max_failed_fraction`` raise ``LLMTooManyFailures`` (not retried).
    """
    with reading(build, "llm"):
        path = materialize_responses(Path(graph), dataset, llm, Path(lake))
    check_failed_answers(path, llm.max_failed_fraction)
    return str(path)


@task(name="plan-llm-shards", task_run_name="plan-llm-shards-{llm.backend}", cache_policy=NO_CACHE, retries=1)
def plan_llm_shards(graph: str, llm: LLMConfig, lake: str, shard_size: int, workers: int) -> LLMFanOutPlan:
    """Shards of the LLM stage with texts not in the answer cache, and the per-shard limits."""
    return plan_llm_fan_out(Path(graph), llm, Path(lake), shard_size, workers)


@task(
    name="llm-shard", task_run_name="llm-{llm.backend}-shard{shard}", cache_policy=NO_CACHE,
    retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_worth_retrying,
)
def ask_llm_shard_task(
    graph: str, llm: LLMConfig, shard: int, shard_size: int, budget: dict[str, int] | None = None
) -> dict:
    """Ask the LLM about one shard of nodes; return its stats (requests, cache hits, worker).

    Not cached by Prefect: the answer cache is the checkpoint, and a shard whose answers are
    all cached sends nothing. Retried on transient failures, not on an exhausted budget.
    """
    return ask_llm_shard(Path(graph), llm, shard, shard_size, budget=budget)
