"""LEADING's training task (one per text feature and seed)."""

from pathlib import Path

from prefect import task
from prefect.runtime import task_run

from tag_pipeline.methods.leading import LeadingMethod, leading_path, materialize_leading
from tasks import reading, stage_task_options


def _run_name() -> str:
    p = task_run.parameters
    return f"leading-{p['feature']}-s{p['seed']}"


def _lineage(inputs: dict) -> Path:
    """The run's lake path (its key covers the LM's weight files and, for E, the responses)."""
    return leading_path(Path(inputs["graph"]), inputs["responses"], inputs["feature"], inputs["seed"],
                        inputs["method"], Path(inputs["lake"]))


@task(name="train-leading", task_run_name=_run_name, **stage_task_options(_lineage))
def train_leading(
    graph: str, responses: str | None, feature: str, seed: int, method: LeadingMethod, lake: str, build: bool = True
) -> dict:
    """One LEADING run (:func:`materialize_leading`); ``build=False``: lookup only."""
    with reading(build, "train"):
        return materialize_leading(Path(graph), responses, feature, seed, method, Path(lake))
