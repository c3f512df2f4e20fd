"""Dataset stage task."""

from pathlib import Path

from prefect import task

from tag_pipeline.config import DatasetConfig
from tag_pipeline.datasets import materialize_graph
from tasks import STAGE_TASK_OPTIONS


@task(name="load-graph", task_run_name="load-graph-{dataset.name}", **STAGE_TASK_OPTIONS)
def load_graph(dataset: DatasetConfig, seeds: list[int], lake: str) -> str:
    """Load the dataset with TAPE's splits into the lake; return the graph artifact path."""
    return str(materialize_graph(dataset, seeds, Path(lake)))
