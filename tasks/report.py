"""Report task: metrics.parquet in the lake and a Prefect markdown artifact."""

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tag_pipeline.lake import read_artifact
from tag_pipeline.methods import MethodBase
from tag_pipeline.report import failed_answer_nodes, materialize_report


@task(name="report", cache_policy=NO_CACHE, retries=1)
def report(
    dataset: str,
    runs: list[dict],
    timings: dict[str, float],
    paths: dict[str, str],
    responses: str | None,
    missing_features: list[str],
    lake: str,
    stop_after: str = "report",
    method: MethodBase | None = None,
    split_label: str | None = None,
) -> dict:
    """Write metrics.parquet and report.md; publish the report as a markdown artifact
    (``method``, default TAPE, titles it and lays out its tables; ``split_label`` names a
    split other than the dataset's standard one)."""
    stats = read_artifact(responses, verify=False).manifest.get("stats") if responses else None
    if stats and stats.get("n_failed"):
        stats = stats | {"failed_nodes": failed_answer_nodes(responses)}
    path, markdown = materialize_report(
        dataset, runs, timings, paths, Path(lake), llm_stats=stats, missing_features=missing_features,
        stop_after=stop_after, method=method, split_label=split_label,
    )
    title = method.title if method is not None else "TAPE"
    create_markdown_artifact(
        markdown=markdown, key=f"tag-report-{dataset}".lower().replace("_", "-"),
        description=f"{title} accuracy table for {dataset}",
    )
    return {"report": str(path), "metrics": str(path / "metrics.parquet"), "markdown": markdown}
