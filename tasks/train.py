"""Training and ensemble stage tasks."""

from pathlib import Path

from prefect import task
from prefect.runtime import task_run

from tag_pipeline.config import GNNConfig
from tag_pipeline.ensemble import materialize_ensemble
from tag_pipeline.train import materialize_training_run
from tasks import STAGE_TASK_OPTIONS, reading


def _run_name(prefix: str, with_feature: bool) -> str:
    """``train-gcn-TA-s0`` / ``ensemble-gcn-s0``; runs on fine-tuned LM features add ``-ft``."""
    p = task_run.parameters
    parts = [prefix, p["model"], *([p["feature"]] if with_feature else []), *(["ft"] if p.get("lm") == "finetuned" else [])]
    return "-".join(parts) + f"-s{p['seed']}"


def _train_run_name() -> str:
    return _run_name("train", True)


def _ensemble_run_name() -> str:
    return _run_name("ensemble", False)


@task(name="train-gnn", task_run_name=_train_run_name, **STAGE_TASK_OPTIONS)
def train_gnn(
    graph: str, features: str, feature: str, model: str, seed: int, gnn: GNNConfig, lake: str, build: bool = True,
    lm: str = "frozen",
) -> dict:
    """Train one GNN on one feature and seed; return its accuracies, artifact path and ``lm``
    (the encoder mode, for the report). ``build=False``: lookup only."""
    with reading(build, "train"):
        return materialize_training_run(Path(graph), Path(features), feature, model, seed, gnn, Path(lake)) | {"lm": lm}


@task(name="ensemble", task_run_name=_ensemble_run_name, **STAGE_TASK_OPTIONS)
def ensemble(graph: str, runs: list[dict], model: str, seed: int, mode: str, lake: str, lm: str = "frozen") -> dict:
    """h_TAPE of one model, seed and encoder mode: average the feature models' outputs."""
    return materialize_ensemble(Path(graph), runs, mode, Path(lake)) | {"lm": lm}
