"""One task for every method's library stage: a stage function named by its dotted path."""

from __future__ import annotations

import inspect
from typing import Any

from prefect import task
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.runtime import task_run

from tag_pipeline.methods import resolve
from tasks import STAGE_TASK_OPTIONS, reading


def _run_name() -> str:
    return task_run.parameters["run_name"]


@task(name="method-stage", task_run_name=_run_name, **STAGE_TASK_OPTIONS)
def run_stage(stage: str, kwargs: dict[str, Any], run_name: str, step: str = "train", build: bool = True) -> Any:
    """Run the library stage function ``stage`` (``"module:function"``) on ``kwargs``; it passes a
    ``log`` for progress lines when the function takes one. ``build=False``: lookup only (the run
    starts past pipeline stage ``step``).

    The stage's own ``lake.Stage.materialize`` decides its Prefect cache key
    (:class:`tasks.StageLineage` runs this function under ``lake.locate``), so a method needs
    no task of its own."""
    fn = resolve(stage)
    if "log" in inspect.signature(fn).parameters and "log" not in kwargs:
        kwargs = kwargs | {"log": _log}
    with reading(build, step):
        return fn(**kwargs)


def _log(line: str) -> None:
    """A progress line to the task run's log (printed when called outside a run, e.g. ``.fn()``)."""
    try:
        get_run_logger().info(line)
    except MissingContextError:
        print(line)
