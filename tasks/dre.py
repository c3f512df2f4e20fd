"""Dr.E's training task (one per seed)."""

from pathlib import Path

from prefect import task
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.runtime import task_run

from tag_pipeline.methods.dre.config import DreMethod
from tag_pipeline.methods.dre.stage import materialize_dre
from tasks import STAGE_TASK_OPTIONS, reading


def _run_name() -> str:
    return f"dre-s{task_run.parameters['seed']}"


@task(name="train-dre", task_run_name=_run_name, **STAGE_TASK_OPTIONS)
def train_dre(graph: str, features: str, seed: int, method: DreMethod, lake: str, build: bool = True) -> list[dict]:
    """One seed's Dr.E run (:func:`materialize_dre`) on the frozen TA feature ``features``: the
    ``dre`` and ``zero-shot`` summaries. ``build=False``: lookup only."""
    with reading(build, "train"):
        return materialize_dre(Path(graph), Path(features), seed, method, Path(lake), log=_log)


def _log(line: str) -> None:
    """A progress line to the task run's log (printed when called outside a run, e.g. ``.fn()``)."""
    try:
        get_run_logger().info(line)
    except MissingContextError:
        print(line)
