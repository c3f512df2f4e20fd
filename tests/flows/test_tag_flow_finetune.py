"""The ``tag`` flow with frozen and fine-tuned LM features side by side (TAPE Sec. 4.2)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tag_pipeline.config import DatasetConfig, FinetuneConfig, GNNConfig, LMConfig

pytestmark = pytest.mark.slow


def test_frozen_and_finetuned_runs_side_by_side(prefect_harness, shared_data, tmp_path, task_states):
    from flows.tag import tag

    lake = tmp_path / "lake"
    params = dict(
        dataset=DatasetConfig(root=shared_data, subset=120), features=["TA", "P"], models=["gcn"], seeds=[0],
        lm=LMConfig(max_length=32), lm_modes=["frozen", "finetuned"],
        finetune=FinetuneConfig(max_length=32, epochs=1, batch_size=16, threads=1),
        gnn=GNNConfig(epochs=10, patience=10), lake=str(lake),
    )
    state = tag(**params, return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    metrics = pl.read_parquet(out["metrics"])
    # (TA, P, TAPE) x (frozen, finetuned) x (val, test)
    assert metrics.height == 3 * 2 * 2
    assert set(metrics["lm"]) == {"frozen", "finetuned"}
    assert "Test accuracy, frozen LM" in out["markdown"] and "Test accuracy, fine-tuned LM" in out["markdown"]

    states = task_states(state.state_details.flow_run_id)
    for name in ("finetune-TA-s0", "embed-TA", "train-gcn-TA-s0", "train-gcn-TA-ft-s0", "ensemble-gcn-s0",
                 "ensemble-gcn-ft-s0"):
        assert states[name] == "Completed", (name, states)
    (tuned,) = list((lake / "cora" / "features").glob("TAft-s0-*"))
    assert (tuned / "lm_logits.safetensors").exists()
    # P under the fine-tuned mode is the same artifact, so the same training run in the lake
    p_runs = {Path(p).name for p in (lake / "cora" / "train").iterdir() if p.name.startswith("gcn-P-")}
    assert len(p_runs) == 1

    again = tag(**params, return_state=True)
    states = task_states(again.state_details.flow_run_id)
    assert {n: s for n, s in states.items() if not n.startswith("report") and s != "Cached"} == {}
