"""Leaderboard task of the ``compare`` flow."""

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tag_pipeline.leaderboard import llm_tokens, materialize_leaderboard


@task(name="leaderboard", cache_policy=NO_CACHE, retries=1)
def leaderboard(dataset: str, graph: str, results: list[dict], seeds: list[int], lake: str,
                split_label: str | None = None) -> dict:
    """Write the leaderboard to the lake and publish it as a markdown and a table artifact.

    ``results``: per method ``{"method", "wall_s", "responses", "runs"}``; the LLM tokens are
    read from each method's responses artifact here; ``split_label`` names a split other than the
    dataset's standard one."""
    results = [r | {"llm_tokens": llm_tokens(r.get("responses"))} for r in results]
    path, markdown, board = materialize_leaderboard(dataset, graph, results, seeds, Path(lake), split_label=split_label)
    key = f"tag-leaderboard-{dataset}".lower().replace("_", "-")
    create_markdown_artifact(markdown=markdown, key=key, description=f"Methods compared on {dataset}")
    create_table_artifact(table=board.to_dicts(), key=f"{key}-table", description=f"Leaderboard rows, {dataset}")
    return {"leaderboard": str(path), "parquet": str(path / "leaderboard.parquet"), "markdown": markdown,
            "rows": board.to_dicts()}
