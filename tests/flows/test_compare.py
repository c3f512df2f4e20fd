"""``compare``: TAPE and GALLON on one Cora slice, one leaderboard."""

from __future__ import annotations

import polars as pl
import pytest

from tag_pipeline.config import DatasetConfig, GNNConfig, LMConfig
from tag_pipeline.methods import GallonMethod, TapeMethod

pytestmark = pytest.mark.slow


def test_compare_tape_and_gallon_on_the_same_splits(prefect_harness, shared_data, tmp_path, flow_run_artifacts):
    from flows.compare import compare

    state = compare(
        dataset=DatasetConfig(root=shared_data, subset=200),
        methods=[TapeMethod(), GallonMethod(alphas=[1.0], betas=[0.0], epochs=40, patience=40, timing_repeats=2)],
        models=["gcn"], seeds=[0, 1], lm=LMConfig(max_length=32), gnn=GNNConfig(epochs=30, patience=30),
        lake=str(tmp_path / "lake"), return_state=True,
    )
    assert state.is_completed(), state.message
    out = state.result()
    board = pl.read_parquet(out["parquet"])
    assert set(board["method"]) == {"tape", "gallon"}
    assert set(zip(board["method"], board["variant"])) == {("tape", "TAPE"), ("tape", "TA"), ("gallon", "student"),
                                                            ("gallon", "mlp")}
    assert (board["seeds"] == 2).all() and board["infer_ms_per_node"].null_count() == 0
    assert (board["llm_tokens"] > 0).all()  # TAPE's recorded answers carry their usage
    assert board["test_mean"].is_between(0, 1).all()
    assert set(out["reports"]) == {"tape", "gallon"}
    from tag_pipeline import lake

    # GALLON's GNN teachers are TAPE's own runs, found in the lake (same splits, same keys): no
    # new training artifact (a wall-time comparison here failed on a busy machine)
    report_inputs = {m: lake.read_artifact(r).manifest["inputs"] for m, r in out["reports"].items()}
    teachers = {v for k, v in report_inputs["gallon"].items() if not k.startswith("gallon:")}
    assert teachers and teachers <= set(report_inputs["tape"].values())
    # every run behind the table is in its lineage (and so kept by `tag lake gc`)

    inputs = set(lake.read_artifact(out["leaderboard"]).manifest["inputs"].values())
    reported = set()
    for report in out["reports"].values():  # the runs each method's report lists
        reported |= set(lake.read_artifact(report).manifest["inputs"].values())
    assert reported and reported <= inputs
    md = [m for m in flow_run_artifacts(state.state_details.flow_run_id, "markdown") if m.startswith("# Leaderboard")]
    assert md and "| gallon | mlp | student |" in md[0] and "0.9132" in md[0]
