"""LEADING's training task (one per text feature and seed)."""

from pathlib import Path

from prefect import task
from prefect.runtime import task_run

from tag_pipeline.methods.leading.config import LeadingMethod
from tag_pipeline.methods.leading.stage import materialize_leading
from tasks import STAGE_TASK_OPTIONS, reading


def _run_name() -> str:
    p = task_run.parameters
    return f"leading-{p['feature']}-s{p['seed']}"


@task(name="train-leading", task_run_name=_run_name, **STAGE_TASK_OPTIONS)
def train_leading(
    graph: str, responses: str | None, feature: str, seed: int, method: LeadingMethod, lake: str, build: bool = True
) -> dict:
    """One LEADING run (:func:`materialize_leading`); ``build=False``: lookup only."""
    with reading(build, "train"):
        return materialize_leading(Path(graph), responses, feature, seed, method, Path(lake))
