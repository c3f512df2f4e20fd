"""Dataset stage task."""

from pathlib import Path

from prefect import task

from tag_pipeline.config import DatasetConfig
from tag_pipeline.datasets import graph_key, materialize_graph
from tasks import stage_task_options


def _graph_lineage(inputs: dict) -> str:
    """The graph artifact's lineage key: raw file contents, dataset options, seeds."""
    return graph_key(inputs["dataset"], inputs["seeds"])


@task(name="load-graph", task_run_name="load-graph-{dataset.name}", **stage_task_options(_graph_lineage))
def load_graph(dataset: DatasetConfig, seeds: list[int], lake: str) -> str:
    """Load the dataset with TAPE's splits into the lake; return the graph artifact path."""
    return str(materialize_graph(dataset, seeds, Path(lake)))
