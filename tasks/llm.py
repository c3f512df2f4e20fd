"""LLM stage task."""

from pathlib import Path

from prefect import task

from tag_pipeline.config import DatasetConfig, LLMConfig
from tag_pipeline.llm.stage import LLMBudgetExhausted, materialize_responses
from tasks import STAGE_TASK_OPTIONS, reading, worth_retrying


def _worth_retrying(task, task_run, state) -> bool:
    """Retry transient failures (the answer cache makes a retry cheap), not an empty budget."""
    return worth_retrying(task, task_run, state) and not isinstance(
        state.result(raise_on_failure=False), LLMBudgetExhausted
    )


@task(
    name="query-llm",
    task_run_name="query-llm-{llm.backend}",
    **(STAGE_TASK_OPTIONS | {"retries": 3, "retry_delay_seconds": [5, 30, 120], "retry_condition_fn": _worth_retrying}),
)
def query_llm(graph: str, dataset: DatasetConfig, llm: LLMConfig, lake: str, build: bool = True) -> str:
    """Get every node's ranked labels and explanation; return the responses artifact path.

    ``build=False``: only look the answers up in the lake (raises ``MissingArtifactError``).
    """
    with reading(build, "llm"):
        return str(materialize_responses(Path(graph), dataset, llm, Path(lake)))
