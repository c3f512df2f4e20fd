"""GALLON's distillation task (one per seed)."""

from pathlib import Path

from prefect import task
from prefect.runtime import task_run

from tag_pipeline.methods.gallon.config import GallonMethod
from tag_pipeline.methods.gallon.stage import materialize_gallon
from tasks import STAGE_TASK_OPTIONS, reading


def _run_name() -> str:
    return f"distil-gallon-s{task_run.parameters['seed']}"


@task(name="distil-gallon", task_run_name=_run_name, **STAGE_TASK_OPTIONS)
def distil_gallon(
    graph: str,
    features: dict[str, str],
    teachers: list[dict],
    seed: int,
    method: GallonMethod,
    lake: str,
    threads: int | None = 1,
    build: bool = True,
    lm: str = "frozen",
) -> list[dict]:
    """Distil one seed's teachers into GALLON's MLP student (:func:`materialize_gallon`);
    returns the student's, the plain MLP's and both teachers' summaries. ``build=False``:
    lookup only."""
    with reading(build, "ensemble"):
        return materialize_gallon(Path(graph), features, teachers, seed, method, Path(lake), threads=threads, lm=lm)
