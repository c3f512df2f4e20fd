"""LLM stage task."""

from pathlib import Path

from prefect import task

from tag_pipeline.config import DatasetConfig, LLMConfig
from tag_pipeline.llm.stage import materialize_responses
from tasks import STAGE_TASK_OPTIONS


@task(name="query-llm", task_run_name="query-llm-{llm.backend}", **STAGE_TASK_OPTIONS)
def query_llm(graph: str, dataset: DatasetConfig, llm: LLMConfig, lake: str) -> str:
    """Get every node's ranked labels and explanation; return the responses artifact path."""
    return str(materialize_responses(Path(graph), dataset, llm, Path(lake)))
