"""Feature stage tasks."""

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tag_pipeline.config import FinetuneConfig, LMConfig
from tag_pipeline.features.stage import (
    embed_text_shard,
    materialize_prediction_feature,
    materialize_text_feature,
    missing_text_shards,
)
from tasks import STAGE_TASK_OPTIONS, reading


def _opt_path(value: str | None) -> Path | None:
    """A task's optional path argument (the responses artifact: ``None`` for TA) as a ``Path``."""
    return Path(value) if value else None


@task(name="embed-text", task_run_name="embed-{feature}", **STAGE_TASK_OPTIONS)
def embed_text(graph: str, responses: str | None, feature: str, lm: LMConfig, lake: str, build: bool = True) -> str:
    """Embed TA or E text with the LM; return the feature artifact path (``build=False``: lookup only)."""
    with reading(build, "features"):
        return str(
            materialize_text_feature(Path(graph), _opt_path(responses), feature, lm, Path(lake))
        )


@task(name="plan-shards", task_run_name="plan-shards-{feature}", cache_policy=NO_CACHE, retries=1)
def plan_text_shards(graph: str, responses: str | None, feature: str, lm: LMConfig, lake: str) -> list[int]:
    """Shards of the TA/E feature still to embed (``[]`` when its artifact exists)."""
    return missing_text_shards(Path(graph), _opt_path(responses), feature, lm, Path(lake))


@task(name="embed-shard", task_run_name="embed-{feature}-shard{index}", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=[2, 10])
def embed_text_shard_task(graph: str, responses: str | None, feature: str, lm: LMConfig, lake: str, index: int) -> bool:
    """Embed and commit one shard; ``True`` if computed, ``False`` if it was there.

    Not cached by Prefect: the committed shard is the checkpoint, and the call is a no-op when
    it exists.
    """
    return embed_text_shard(Path(graph), _opt_path(responses), feature, lm, Path(lake), index)


@task(name="finetune-lm", task_run_name="finetune-{feature}-s{seed}", **STAGE_TASK_OPTIONS)
def finetune_lm(
    graph: str, responses: str | None, feature: str, seed: int, finetune: FinetuneConfig, lake: str, build: bool = True
) -> str:
    """Fine-tune the LM on TA or E for one seed's train nodes; return the feature artifact path."""
    from tag_pipeline.finetune import materialize_finetuned_feature

    with reading(build, "features"):
        return str(materialize_finetuned_feature(
            Path(graph), _opt_path(responses), feature, seed, finetune, Path(lake)
        ))


@task(name="build-p-feature", task_run_name="build-P-top{top_k}", **STAGE_TASK_OPTIONS)
def build_prediction_feature(graph: str, responses: str, top_k: int, lake: str, build: bool = True) -> str:
    """Build the P feature (top-k ranked labels); return the feature artifact path (``build=False``: lookup only)."""
    with reading(build, "features"):
        return str(materialize_prediction_feature(Path(graph), Path(responses), top_k, Path(lake)))
