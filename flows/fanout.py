"""Fan-out subflows: the embedding stage as one task per shard on a distributed task runner."""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from tag_pipeline.config import LMConfig, ScaleOutConfig
from tasks.features import embed_text_shard_task, plan_text_shards


def task_runner_for(scale_out: ScaleOutConfig):
    """The Prefect task runner ``scale_out`` asks for: prefect-dask's ``DaskTaskRunner`` on an
    existing cluster (``address``) or a temporary local one (``n_workers`` processes)."""
    if scale_out.runner == "local":
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if scale_out.address:
        return DaskTaskRunner(address=scale_out.address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": scale_out.n_workers, "threads_per_worker": scale_out.threads_per_worker,
            "processes": True, "dashboard_address": None,
        }
    )


@flow(name="embed-shards", log_prints=True)
def embed_shards(graph: str, responses: str | None, feature: str, lm: LMConfig, lake: str, shards: list[int]) -> int:
    """Embed ``shards`` of the TA/E feature in parallel, one task each; returns how many were computed."""
    futures = embed_text_shard_task.map(
        unmapped(graph), unmapped(responses), unmapped(feature), unmapped(lm), unmapped(lake), shards
    )
    return sum(bool(f.result()) for f in futures)


def fan_out_embedding(
    graph: str, responses: str | None, feature: str, lm: LMConfig, lake: str, scale_out: ScaleOutConfig
) -> int:
    """Commit every missing shard of the feature on ``scale_out``'s task runner (a subflow run);
    the ``embed-text`` task then only assembles them. Returns the shards computed."""
    shards = plan_text_shards(graph, responses, feature, lm, lake)
    if not shards:
        return 0
    runner = embed_shards.with_options(
        task_runner=task_runner_for(scale_out), flow_run_name=f"embed-shards-{feature}"
    )
    return runner(graph, responses, feature, lm, lake, shards)
