"""End to end: the ``tag`` flow on a slice of real Cora under a Prefect test server."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tag_pipeline.config import DatasetConfig, GNNConfig, LMConfig

pytestmark = pytest.mark.slow


def _artifact_dirs(lake: Path) -> set[str]:
    return {str(p.relative_to(lake)) for p in lake.glob("*/*/*") if p.is_dir()}


def test_tag_flow_on_cora_slice_then_all_cache_hits(
    prefect_harness, shared_data, tmp_path, task_states, flow_run_artifacts
):
    from flows.tag import tag

    lake = tmp_path / "lake"
    params = dict(
        dataset=DatasetConfig(root=shared_data, subset=160),
        seeds=[0, 1],
        lm=LMConfig(max_length=64),
        gnn=GNNConfig(epochs=40, patience=40),
        lake=str(lake),
    )
    state = tag(**params, return_state=True)
    assert state.is_completed(), state.message
    out = state.result()

    metrics = pl.read_parquet(out["metrics"])
    assert metrics.columns == [
        "dataset", "model", "feature", "lm", "seed", "split", "accuracy", "method", "infer_ms_per_node", "inputs"
    ]
    assert set(metrics["method"]) == {"tape"} and out["method"] == "tape"
    assert {(r["model"], r["feature"], r["seed"]) for r in out["runs"]} == {
        (m, f, s) for m in ("mlp", "gcn", "sage") for f in ("TA", "E", "P", "TAPE") for s in (0, 1)
    }
    assert set(metrics["lm"]) == {"frozen"}
    # 3 models x (TA, E, P, TAPE) x 2 seeds x (val, test)
    assert metrics.height == 3 * 4 * 2 * 2
    assert set(metrics["feature"]) == {"TA", "E", "P", "TAPE"}
    assert metrics["accuracy"].is_between(0, 1).all()
    # 7 classes: chance is ~0.3 for the majority class; every h_TAPE must beat it clearly
    tape_test = metrics.filter((pl.col("feature") == "TAPE") & (pl.col("split") == "test"))
    assert tape_test["accuracy"].mean() > 0.6

    first_run = state.state_details.flow_run_id
    states = task_states(first_run)
    assert sum(name.startswith("train-") for name in states) == 3 * 3 * 2
    assert all(s == "Completed" for s in states.values()), states
    reports = flow_run_artifacts(first_run, "markdown")
    assert len(reports) == 1 and "h_TAPE" in reports[0] and "0.9119" in reports[0]

    artifacts_before = _artifact_dirs(lake)
    assert {p.split("/")[1] for p in artifacts_before} >= {"graph", "llm", "features", "train", "ensemble", "report"}

    # Nothing changed: every stage task is a cache hit and the lake gains nothing.
    state2 = tag(**params, return_state=True)
    assert state2.is_completed()
    states2 = task_states(state2.state_details.flow_run_id)
    stage_states = {n: s for n, s in states2.items() if not n.startswith("report")}
    assert stage_states and all(s == "Cached" for s in stage_states.values()), stage_states
    assert _artifact_dirs(lake) == artifacts_before
    assert pl.read_parquet(state2.result()["metrics"]).equals(metrics)


def test_gnn_change_reuses_graph_llm_and_features(prefect_harness, shared_data, tmp_path, task_states):
    from flows.tag import tag

    lake = tmp_path / "lake"
    base = dict(
        dataset=DatasetConfig(root=shared_data, subset=120),
        features=["TA", "P"], models=["gcn"], seeds=[0],
        lm=LMConfig(max_length=32), lake=str(lake),
    )
    tag(**base, gnn=GNNConfig(epochs=10, patience=10))
    state = tag(**base, gnn=GNNConfig(epochs=12, patience=12), return_state=True)
    states = task_states(state.state_details.flow_run_id)
    assert states["load-graph-cora"] == "Cached"
    assert states["query-llm-replay"] == "Cached"
    assert states["embed-TA"] == "Cached"
    assert states["train-gcn-TA-s0"] == "Completed"
    assert len(list((lake / "cora" / "train").iterdir())) == 4  # 2 features x 2 GNN configs


def test_stop_after_llm_runs_only_graph_and_llm(prefect_harness, shared_data, tmp_path, task_states):
    from flows.tag import tag

    lake = tmp_path / "lake"
    state = tag(dataset=DatasetConfig(root=shared_data, subset=50), seeds=[0], lake=str(lake),
                stop_after="llm", return_state=True)
    assert state.is_completed()
    out = state.result()
    assert "stopped after the llm stage" in out["markdown"]
    assert sorted(p.name for p in (lake / "cora").iterdir()) == ["graph", "llm", "report"]
    names = set(task_states(state.state_details.flow_run_id))
    assert names == {"load-graph-cora", "query-llm-replay", "report"} or (
        {n.split("-")[0] for n in names} == {"load", "query", "report"}
    )
    assert pl.read_parquet(out["metrics"]).is_empty()


def test_low_label_split_runs_through_the_flow(prefect_harness, shared_data, tmp_path):
    from flows.tag import tag
    from tag_pipeline.config import LowLabelSplitConfig
    from tag_pipeline.datasets import open_graph

    low = LowLabelSplitConfig(train_per_class=3, num_val=40, num_test=80)
    out = tag(dataset=DatasetConfig(root=shared_data, subset=150, split="low_label", low_label=low),
              features=["TA"], models=["mlp"], seeds=[0], lm=LMConfig(max_length=32), lake=str(tmp_path / "lake"),
              gnn=GNNConfig(epochs=5, patience=5))
    split = open_graph(Path(out["graph"])).splits[0]
    assert (len(split.val), len(split.test)) == (40, 80) and len(split.train) <= 3 * 7
    assert "# TAPE on cora (low-label split: 3 train nodes per class, 40 val, 80 test)" in out["markdown"]
    assert "TAPE paper h_TAPE" not in out["markdown"]
