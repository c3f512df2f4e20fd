"""The ``predict`` flow: labels for new nodes from a trained run (deployed as ``tag/predict``)."""

from __future__ import annotations

from typing import Literal

import polars as pl
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks.predict import predict_new_nodes


@flow(name="tag", log_prints=True)  # one flow name for the project: deployments are tag/<what>
def predict(
    nodes: str,
    edges: str | None = None,
    run: str = "newest",
    dataset: str = "cora",
    method: Literal["gallon", "tape"] = "gallon",
    model: str = "gcn",
    lake: str = "data/lake",
) -> dict:
    """Classify the new nodes in ``nodes`` (Parquet/CSV: ``id``, ``text``) and, for a GNN run,
    their ``edges`` (``src``, ``dst``: new ids or existing nodes' source ids).

    ``run`` is a run's lake path (``data/lake/cora/gallon/s0-...`` or
    ``data/lake/cora/train/gcn-TA-s0-...``) or ``"newest"``: the newest GALLON student
    (``method="gallon"``) or ``model`` run on TA (``method="tape"``) of ``dataset`` (its lake
    name). Ends with a markdown artifact: nodes/s and the first predictions. Returns the
    predictions' lake path, stats and ``run``.
    """
    summary = predict_new_nodes(run, dataset, method, model, nodes, edges, lake)
    head = pl.read_parquet(f"{summary['path']}/predictions.parquet").head(10)
    lines = [
        f"# Predictions for {summary['nodes']} new nodes", "",
        f"- run: `{summary['run']}` ({summary['kind']})",
        f"- {summary['nodes_per_s']:.1f} nodes/s ({summary['seconds']:.2f} s: embedding {summary['embed_s']:.2f} s, "
        f"forward {summary['forward_s']:.3f} s; measured when first computed)",
        f"- predictions: `{summary['path']}/predictions.parquet`", "",
        "| id | label | prob |", "|---|---|---|",
        *[f"| {r['id']} | {r['label']} | {r['prob']:.3f} |" for r in head.iter_rows(named=True)],
    ]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    create_markdown_artifact(markdown=markdown, key=f"tag-predict-{dataset}".lower().replace("_", "-"),
                             description=f"Predictions for new {dataset} nodes")
    return summary
