"""Per-stage runs read their inputs from the lake; a cached result naming a deleted or damaged
artifact is rebuilt, not trusted.

The ``tag`` flow under the session's Prefect test server, on the first 120 Cora nodes
(TA + P, GCN, seed 0), as the deployments ``tag/train`` and ``tag/ensemble`` run it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from tag_pipeline.config import DatasetConfig, GNNConfig, LMConfig
from tag_pipeline.lake import MissingArtifactError

pytestmark = pytest.mark.slow


@pytest.fixture
def params(shared_data, tmp_path) -> dict:
    return dict(
        dataset=DatasetConfig(root=shared_data, subset=120), features=["TA", "P"], models=["gcn"], seeds=[0],
        lm=LMConfig(max_length=32), gnn=GNNConfig(epochs=15, patience=15), lake=str(tmp_path / "lake"),
    )


def _test_accuracy(metrics: str) -> pl.DataFrame:
    return (
        pl.read_parquet(metrics).filter(pl.col("split") == "test").select("model", "feature", "seed", "accuracy")
        .sort("model", "feature", "seed")
    )


def test_stage_run_without_its_inputs_fails_at_once_naming_the_missing_artifact(
    prefect_harness, params, task_states, task_runs
):
    from flows.tag import tag

    state = tag(**params, start_at="train", stop_after="train", return_state=True)
    assert state.is_failed()
    with pytest.raises(MissingArtifactError, match=r"cora/llm/replay-\w+: no intact llm artifact .* run that stage first"):
        state.result()
    states = task_states(state.state_details.flow_run_id)
    assert states["query-llm-replay"] == "Failed"
    assert not any(name.startswith(("embed", "train")) for name in states)
    lake = Path(params["lake"])
    # the graph (derived from raw files) is built; nothing else is computed or written
    assert sorted(p.name for p in (lake / "cora").iterdir()) == ["graph"]
    runs = [r for r in task_runs(state.state_details.flow_run_id) if r.name == "query-llm-replay"]
    assert runs[0].run_count == 1  # not retried: a retry cannot make the artifact appear


def test_stage_by_stage_equals_one_full_run_and_reuses_everything_upstream(
    prefect_harness, params, task_states, tmp_path, kit
):
    from flows.tag import tag

    lake = Path(params["lake"])
    tag(**params, stop_after="features")  # tag/llm then tag/embed
    features = kit.manifest_mtimes(lake, "features")
    assert len(features) == 2 and not kit.manifest_mtimes(lake, "train")

    train = tag(**params, start_at="train", stop_after="train", return_state=True)  # tag/train
    assert train.is_completed(), train.message
    states = task_states(train.state_details.flow_run_id)
    assert states["train-gcn-TA-s0"] == states["train-gcn-P-s0"] == "Completed"
    assert states["embed-TA"] == "Cached" and not any(n.startswith("ensemble") for n in states)
    assert kit.manifest_mtimes(lake, "features") == features  # read, not rewritten
    trained = kit.manifest_mtimes(lake, "train")
    assert len(trained) == 2 and not kit.manifest_mtimes(lake, "ensemble")

    ens = tag(**params, start_at="ensemble", return_state=True)  # tag/ensemble
    assert ens.is_completed(), ens.message
    states = task_states(ens.state_details.flow_run_id)
    assert states["ensemble-gcn-s0"] == "Completed"
    assert {states["train-gcn-TA-s0"], states["train-gcn-P-s0"]} == {"Cached"}
    assert kit.manifest_mtimes(lake, "train") == trained and len(kit.manifest_mtimes(lake, "ensemble")) == 1

    # the same numbers as one uninterrupted run in another lake
    full = tag(**(params | {"lake": str(tmp_path / "lake-full")}))
    assert _test_accuracy(ens.result()["metrics"]).equals(_test_accuracy(full["metrics"]))

    # another ensemble mode from the same training runs: no retraining
    probs = tag(**params, start_at="ensemble", ensemble="probs", return_state=True)
    assert probs.is_completed()
    assert kit.manifest_mtimes(lake, "train") == trained and len(kit.manifest_mtimes(lake, "ensemble")) == 2


def test_cached_result_naming_a_deleted_or_damaged_artifact_is_rebuilt(prefect_harness, params, task_states, kit):
    from flows.tag import tag

    first = tag(**params, stop_after="features")
    ta = Path(first["markdown"].split("features TA: `")[1].split("`")[0])
    content = kit.feature_content(ta)

    shutil.rmtree(ta)  # a user cleans the lake by hand
    again = tag(**params, stop_after="features", return_state=True)
    assert again.is_completed(), again.message
    states = task_states(again.state_details.flow_run_id)
    assert states["embed-TA"] == "Completed"  # Prefect's cache alone would say Cached, with a dead path
    assert states["load-graph-cora"] == states["build-P-top5"] == "Cached"
    assert kit.feature_content(ta) == content

    third = tag(**params, stop_after="features", return_state=True)
    assert task_states(third.state_details.flow_run_id)["embed-TA"] == "Cached"  # back to the cache

    data = ta / "features.safetensors"
    data.write_bytes(data.read_bytes()[:-100])  # truncated, manifest untouched
    fourth = tag(**params, stop_after="features", return_state=True)
    assert fourth.is_completed(), fourth.message
    assert task_states(fourth.state_details.flow_run_id)["embed-TA"] == "Completed"
    assert kit.feature_content(ta) == content
    assert len(list(ta.parent.glob(f"{ta.name}.corrupt-*"))) == 1  # kept aside, not deleted
