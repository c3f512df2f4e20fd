"""Training and ensemble stage tasks."""

from pathlib import Path

from prefect import task

from tag_pipeline.config import GNNConfig
from tag_pipeline.ensemble import materialize_ensemble
from tag_pipeline.train import materialize_training_run
from tasks import STAGE_TASK_OPTIONS, reading


@task(name="train-gnn", task_run_name="train-{model}-{feature}-s{seed}", **STAGE_TASK_OPTIONS)
def train_gnn(
    graph: str, features: str, feature: str, model: str, seed: int, gnn: GNNConfig, lake: str, build: bool = True
) -> dict:
    """Train one GNN on one feature and seed; return its accuracies and artifact path (``build=False``: lookup only)."""
    with reading(build, "train"):
        return materialize_training_run(Path(graph), Path(features), feature, model, seed, gnn, Path(lake))


@task(name="ensemble", task_run_name="ensemble-{model}-s{seed}", **STAGE_TASK_OPTIONS)
def ensemble(graph: str, runs: list[dict], model: str, seed: int, mode: str, lake: str) -> dict:
    """h_TAPE of one model and seed: average the feature models' outputs."""
    return materialize_ensemble(Path(graph), runs, mode, Path(lake))
