"""Feature stage tasks."""

from pathlib import Path

from prefect import task

from tag_pipeline.config import FinetuneConfig, LMConfig
from tag_pipeline.features.stage import materialize_prediction_feature, materialize_text_feature
from tasks import STAGE_TASK_OPTIONS, reading


@task(name="embed-text", task_run_name="embed-{feature}", **STAGE_TASK_OPTIONS)
def embed_text(graph: str, responses: str | None, feature: str, lm: LMConfig, lake: str, build: bool = True) -> str:
    """Embed TA or E text with the LM; return the feature artifact path (``build=False``: lookup only)."""
    with reading(build, "features"):
        return str(
            materialize_text_feature(Path(graph), Path(responses) if responses else None, feature, lm, Path(lake))
        )


@task(name="finetune-lm", task_run_name="finetune-{feature}-s{seed}", **STAGE_TASK_OPTIONS)
def finetune_lm(
    graph: str, responses: str | None, feature: str, seed: int, finetune: FinetuneConfig, lake: str, build: bool = True
) -> str:
    """Fine-tune the LM on TA or E for one seed's train nodes; return the feature artifact path."""
    from tag_pipeline.finetune import materialize_finetuned_feature

    with reading(build, "features"):
        return str(materialize_finetuned_feature(
            Path(graph), Path(responses) if responses else None, feature, seed, finetune, Path(lake)
        ))


@task(name="build-p-feature", task_run_name="build-P-top{top_k}", **STAGE_TASK_OPTIONS)
def build_prediction_feature(graph: str, responses: str, top_k: int, lake: str, build: bool = True) -> str:
    """Build the P feature (top-k ranked labels); return the feature artifact path (``build=False``: lookup only)."""
    with reading(build, "features"):
        return str(materialize_prediction_feature(Path(graph), Path(responses), top_k, Path(lake)))
