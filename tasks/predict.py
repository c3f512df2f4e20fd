"""Prediction task: classify new nodes with a trained run (tag_pipeline.predict)."""

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tag_pipeline.predict import materialize_predictions, newest_run
from tasks import worth_retrying


@task(name="predict-new-nodes", cache_policy=NO_CACHE, retries=1, retry_condition_fn=worth_retrying)
def predict_new_nodes(run: str, dataset: str, method: str, model: str, nodes: str, edges: str | None, lake: str) -> dict:
    """Resolve ``run`` (a lake path, or ``"newest"`` for ``dataset`` and ``method``) and commit
    the predictions (the lake artifact is keyed by the run and the input files' contents, so
    a repeat returns at once; hence no Prefect cache). Returns the summary with ``path`` and
    ``run``."""
    path = Path(run) if run != "newest" else newest_run(Path(lake), dataset, method, model)
    _, summary = materialize_predictions(path, Path(nodes), Path(edges) if edges else None, Path(lake))
    return summary | {"run": str(path)}
