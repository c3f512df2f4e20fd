"""GLEM's training task (one per seed)."""

from pathlib import Path

from prefect import task
from prefect.runtime import task_run

from tag_pipeline.methods.glem.config import GlemMethod
from tag_pipeline.methods.glem.stage import materialize_glem
from tasks import STAGE_TASK_OPTIONS, reading


def _run_name() -> str:
    return f"glem-s{task_run.parameters['seed']}"


@task(name="train-glem", task_run_name=_run_name, **STAGE_TASK_OPTIONS)
def train_glem(graph: str, seed: int, method: GlemMethod, lake: str, build: bool = True) -> list[dict]:
    """One seed's GLEM run (:func:`materialize_glem`): the LM's, the GNN's and the chosen
    predictor's summaries. ``build=False``: lookup only."""
    with reading(build, "train"):
        return materialize_glem(Path(graph), seed, method, Path(lake))
