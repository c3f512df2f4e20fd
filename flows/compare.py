"""The ``compare`` flow: several methods on one dataset and the same seeds, one leaderboard.

Deployed as ``tag/compare``. Each method runs as a ``tag`` subflow run (visible and
retryable on its own in the UI) with the same dataset, seeds (hence splits), LLM answers,
encoder and GNN grid; stages another method already put in the lake are found there.
"""

from __future__ import annotations

import time
from typing import Literal

from prefect import flow

from tag_pipeline.config import DatasetConfig, Feature, GNNConfig, LLMConfig, LMConfig, ModelName
from tag_pipeline.methods import GallonMethod, MethodConfig, TapeMethod
from flows.tag import tag
from tasks.compare import leaderboard


@flow(name="tag", log_prints=True)  # one flow name for the project: deployments are tag/<what>
def compare(
    dataset: DatasetConfig = DatasetConfig(),
    methods: list[MethodConfig] = [TapeMethod(), GallonMethod()],
    features: list[Feature] = ["TA", "E", "P"],
    models: list[ModelName] = ["mlp", "gcn", "sage"],
    seeds: list[int] = [0, 1, 2, 3],
    llm: LLMConfig = LLMConfig(),
    lm: LMConfig = LMConfig(),
    gnn: GNNConfig = GNNConfig(),
    ensemble: Literal["logits", "probs"] = "logits",
    lake: str = "data/lake",
) -> dict:
    """Run every method in ``methods`` on ``dataset`` with ``seeds``, then one leaderboard.

    Returns:
        dict with ``leaderboard`` (lake path), ``parquet``, ``markdown``, ``rows`` (one dict
        per leaderboard row, see :func:`tag_pipeline.leaderboard.leaderboard_frame`) and
        ``reports`` (each method's report path).

    Raises:
        ValueError: no methods, or the same method name twice.
    """
    names = [m.name for m in methods]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"methods must be non-empty and distinct by name, got {names}")
    results, reports, graph = [], {}, None
    for method in methods:
        start = time.perf_counter()
        out = tag.with_options(flow_run_name=f"{method.name}-{dataset.lake_name}")(
            dataset=dataset, method=method, features=features, models=models, seeds=seeds, llm=llm, lm=lm,
            gnn=gnn, ensemble=ensemble, lake=lake,
        )
        wall = time.perf_counter() - start
        reports[method.name] = out["report"]
        graph = out["graph"]
        results.append({"method": method.name, "wall_s": wall, "runs": out["runs"],
                        "responses": out.get("responses")})
        print(f"compare: {method.name} done in {wall:.1f} s ({len(out['runs'])} run summaries)")
    board = leaderboard(dataset.lake_name, graph, results, seeds, lake, dataset.split_label)
    print(board["markdown"])
    return board | {"reports": reports}
