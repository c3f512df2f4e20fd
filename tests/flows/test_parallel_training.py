"""GNN training runs at once in worker processes (``GNNConfig.workers``): the worker count, and
the ``tag`` flow on a slice of real Cora giving the same numbers and lake keys with 2 workers
as with 1, its task runs under the flow run as before."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch

from tag_pipeline.config import DatasetConfig, GNNConfig, LMConfig
from tag_pipeline.train import available_cores, read_logits, run_summary, training_key, training_workers


# --- the worker count -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "workers, threads, runs, cores, expected",
    [
        (None, 1, 36, 2, 2),  # the default on a 2-core machine: one run per core
        (None, 1, 4, 16, 4),  # no more processes than runs
        (None, 2, 36, 2, 1),  # 2 threads a run fill both cores
        (None, 3, 36, 8, 2),  # cores // threads, rounded down
        (None, 4, 36, 2, 1),  # more threads than cores: still one run at a time
        (None, None, 36, 8, 1),  # torch's default threads take every core
        (3, 1, 36, 2, 3),  # asked for: as given, the cores do not cap it
        (3, 1, 2, 2, 2),  # ... but the runs do
        (1, 1, 36, 16, 1),  # one after another
        (None, 1, 0, 2, 1),  # nothing to train
        (None, 1, 1, 2, 1),
    ],
)
def test_training_workers(workers, threads, runs, cores, expected):
    assert training_workers(workers, threads, runs, cores) == expected


def test_training_workers_default_cores_are_this_process_affinity():
    cores = available_cores()
    assert cores >= 1
    if hasattr(os, "sched_getaffinity"):
        assert cores == len(os.sched_getaffinity(0))
    assert training_workers(None, 1, 10_000) == cores
    assert training_workers(None, 1, 10_000, cores=cores + 3) == cores + 3


@pytest.mark.parametrize("bad", [dict(workers=0), dict(threads=0), dict(runs=-1), dict(cores=0)])
def test_training_workers_rejects_nonsense(bad):
    args = dict(workers=None, threads=1, runs=4, cores=2) | bad
    with pytest.raises(ValueError):
        training_workers(**args)


def test_workers_is_not_in_the_training_key():
    keys = {training_key("g", "TA-x", "gcn", 0, GNNConfig(workers=w)) for w in (None, 1, 2, 8)}
    assert len(keys) == 1


# --- the flow ---------------------------------------------------------------------------------

MODELS = ["mlp", "gcn"]
FEATURES = ["TA", "P"]
SEEDS = [0, 1]
TRAIN_RUNS = {f"train-{m}-{f}-s{s}" for m in MODELS for f in FEATURES for s in SEEDS}


def _lake_entries(lake: Path) -> set[str]:
    """``<stage>/<artifact>`` of every artifact under the lake's ``cora`` folder, bar reports
    (whose key hashes the absolute paths of what they list, so it names the lake)."""
    return {f"{p.parent.name}/{p.name}" for p in (lake / "cora").glob("*/*") if p.is_dir() and p.parent.name != "report"}


def _training_summaries(lake: Path) -> dict[str, dict]:
    """Every training artifact's summary but its wall time and path, by artifact name."""
    return {
        p.name: {k: v for k, v in run_summary(p).items() if k not in ("seconds", "path")}
        for p in sorted((lake / "cora" / "train").iterdir())
        if p.is_dir()
    }


def _train_results(flow_run_id, task_runs) -> dict[str, dict]:
    """What each training task run of the flow run returned, read back through Prefect."""
    return {r.name: r.state.result() for r in task_runs(flow_run_id) if r.name.startswith("train-")}


@pytest.mark.slow
def test_two_workers_train_the_same_runs_as_one(
    prefect_harness, shared_data, tmp_path, task_states, task_runs, flow_run_artifacts
):
    from flows.tag import tag

    base = dict(
        dataset=DatasetConfig(root=shared_data, subset=150), features=FEATURES, models=MODELS, seeds=SEEDS,
        lm=LMConfig(max_length=32),
    )
    one, two = tmp_path / "one", tmp_path / "two"
    seq = tag(**base, gnn=GNNConfig(epochs=20, patience=20, workers=1), lake=str(one), return_state=True)
    assert seq.is_completed(), seq.message
    par_params = dict(base, gnn=GNNConfig(epochs=20, patience=20, workers=2), lake=str(two))
    par = tag(**par_params, return_state=True)
    assert par.is_completed(), par.message

    # the same artifacts under the same lineage keys, and the same numbers to the last bit
    assert _lake_entries(one) == _lake_entries(two)
    assert sum(e.startswith("train/") for e in _lake_entries(two)) == len(TRAIN_RUNS)
    assert sum(e.startswith("ensemble/") for e in _lake_entries(two)) == len(MODELS) * len(SEEDS)
    summaries = _training_summaries(one)
    assert summaries == _training_summaries(two)
    assert all({"val_acc", "test_acc", "best_epoch"} <= s.keys() for s in summaries.values())
    for name in summaries:
        assert torch.equal(read_logits(one / "cora" / "train" / name), read_logits(two / "cora" / "train" / name))
    for p in (one / "cora" / "ensemble").iterdir():
        assert torch.equal(read_logits(p), read_logits(two / "cora" / "ensemble" / p.name))
    assert pl.read_parquet(seq.result()["metrics"]).equals(pl.read_parquet(par.result()["metrics"]))

    # the parallel run's training task runs belong to its flow run, under today's names
    par_id = par.state_details.flow_run_id
    states = task_states(par_id)
    assert {n for n in states if n.startswith("train-")} == TRAIN_RUNS
    assert all(s == "Completed" for s in states.values()), states
    assert sorted(n for n in task_states(seq.state_details.flow_run_id) if n.startswith("train-")) == sorted(
        TRAIN_RUNS
    )
    assert flow_run_artifacts(par_id, "progress") == [100.0]

    # ... and ran in worker processes, more than one; the sequential ones in this process
    par_results = _train_results(par_id, task_runs)
    pids = {r["pid"] for r in par_results.values()}
    assert len(pids) >= 2 and os.getpid() not in pids, pids
    assert {r["pid"] for r in _train_results(seq.state_details.flow_run_id, task_runs).values()} == {os.getpid()}
    assert {Path(r["path"]).name for r in par_results.values()} == set(summaries)

    # nothing changed: every stage task is a cache hit, the lake gains nothing
    again = tag(**par_params, return_state=True)
    assert again.is_completed(), again.message
    states = task_states(again.state_details.flow_run_id)
    stage_states = {n: s for n, s in states.items() if not n.startswith("report")}
    assert TRAIN_RUNS <= stage_states.keys()
    assert all(s == "Cached" for s in stage_states.values()), stage_states
    assert _training_summaries(two) == summaries

    # runs gone from the lake train again, the same; one alone in this process, two in workers
    train_dir = two / "cora" / "train"
    for gone in (["gcn-P-s1"], ["mlp-TA-s0", "gcn-TA-s1"]):
        for name in gone:
            shutil.rmtree(next(train_dir.glob(f"{name}-*")))
        rerun = tag(**par_params, return_state=True)
        assert rerun.is_completed(), rerun.message
        states = task_states(rerun.state_details.flow_run_id)
        retrained = {f"train-{name}" for name in gone}
        assert {n for n, s in states.items() if n.startswith("train-") and s == "Completed"} == retrained, states
        assert {n for n, s in states.items() if n.startswith("train-") and s == "Cached"} == TRAIN_RUNS - retrained
        pids = {r["pid"] for n, r in _train_results(rerun.state_details.flow_run_id, task_runs).items() if n in retrained}
        assert (pids == {os.getpid()}) if len(gone) == 1 else (os.getpid() not in pids), pids
        assert _training_summaries(two) == summaries


@pytest.mark.slow
def test_lookup_only_training_after_a_parallel_run(prefect_harness, shared_data, tmp_path, task_states):
    """``start_at="ensemble"`` reads the training runs a parallel run wrote (lookups, in the
    flow's process); with one run's artifact gone it fails naming it."""
    from flows.tag import tag
    from tag_pipeline.lake import MissingArtifactError

    params = dict(
        dataset=DatasetConfig(root=shared_data, subset=120), features=FEATURES, models=["gcn"], seeds=[0],
        lm=LMConfig(max_length=32), gnn=GNNConfig(epochs=10, patience=10, workers=2), lake=str(tmp_path / "lake"),
    )
    first = tag(**params, stop_after="train", return_state=True)
    assert first.is_completed(), first.message
    ens = tag(**params, start_at="ensemble", return_state=True)
    assert ens.is_completed(), ens.message
    states = task_states(ens.state_details.flow_run_id)
    assert states["train-gcn-TA-s0"] == states["train-gcn-P-s0"] == "Cached"
    assert states["ensemble-gcn-s0"] == "Completed"

    shutil.rmtree(next((tmp_path / "lake" / "cora" / "train").glob("gcn-P-s0-*")))
    broken = tag(**params, start_at="ensemble", return_state=True)
    assert broken.is_failed()
    with pytest.raises(MissingArtifactError, match=r"cora/train/gcn-P-s0-\w+: no intact train artifact"):
        broken.result()
    states = task_states(broken.state_details.flow_run_id)
    assert states["train-gcn-TA-s0"] == "Cached" and states["train-gcn-P-s0"] == "Failed"


@pytest.mark.slow
def test_a_failed_run_fails_the_flow_once_the_other_workers_finish(prefect_harness, shared_data, tmp_path, task_states):
    """RevGAT cannot split 130 hidden channels into its groups and heads: its runs fail, the
    GCN runs beside them still finish and are in the lake, and the flow fails with the error."""
    from flows.tag import tag

    lake = tmp_path / "lake"
    state = tag(
        dataset=DatasetConfig(root=shared_data, subset=120), features=FEATURES, models=["revgat", "gcn"], seeds=[0],
        lm=LMConfig(max_length=32), gnn=GNNConfig(epochs=5, patience=5, hidden=130, workers=2), lake=str(lake),
        stop_after="train", return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(ValueError, match="hidden=130"):
        state.result()
    states = task_states(state.state_details.flow_run_id)
    assert {states[f"train-revgat-{f}-s0"] for f in FEATURES} == {"Failed"}
    assert {states[f"train-gcn-{f}-s0"] for f in FEATURES} == {"Completed"}
    assert sorted(p.name.split("-s0-")[0] for p in (lake / "cora" / "train").iterdir()) == ["gcn-P", "gcn-TA"]
