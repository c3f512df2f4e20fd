"""What a rerun of the ``tag`` flow reuses: across seed sets, and after a library upgrade.

- Another seed set makes a new graph artifact (it holds those seeds' splits), but the LLM
  answers and the TA/P features are the same artifacts, and a seed whose split is unchanged
  is not trained again.
- Prefect's cache keys cover the task wrappers' source; ours also cover the library's
  (``tasks.LibrarySource``), so a changed ``tag_pipeline`` runs every stage task again, and
  each finds its unchanged artifact in the lake instead of recomputing it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tag_pipeline import lake as lake_lib
from tag_pipeline.config import DatasetConfig, GNNConfig, LMConfig

pytestmark = pytest.mark.slow


def _dirs(lake: Path, stage: str) -> set[str]:
    return {p.name for p in (lake / "cora" / stage).iterdir() if not p.name.startswith(".")}


def _created(lake: Path) -> dict[str, float]:
    return {
        str(p.relative_to(lake)): lake_lib.read_artifact(p, verify=False).manifest["created_unix"]
        for p in lake.glob("cora/*/*") if (p / "manifest.json").exists()
    }


def test_other_seeds_reuse_answers_features_and_same_split_runs(prefect_harness, shared_data, tmp_path, task_states):
    from flows.tag import tag

    lake = tmp_path / "lake"
    base = dict(
        dataset=DatasetConfig(root=shared_data, subset=120), features=["TA", "P"], models=["mlp"],
        lm=LMConfig(max_length=32), gnn=GNNConfig(epochs=5, patience=5), lake=str(lake),
    )
    assert tag(**base, seeds=[0, 1], return_state=True).is_completed()
    before = _created(lake)
    state = tag(**base, seeds=[0], return_state=True)
    assert state.is_completed(), state.message
    assert len(_dirs(lake, "graph")) == 2  # a graph artifact per seed set
    assert len(_dirs(lake, "llm")) == 1 and len(_dirs(lake, "features")) == 2  # TA and P, shared
    assert len(_dirs(lake, "train")) == 4  # 2 features x seeds 0, 1: seed 0's runs reused
    after = _created(lake)
    assert {k: after[k] for k in before} == before  # nothing rewritten
    states = task_states(state.state_details.flow_run_id)
    assert states["embed-TA"] == "Completed"  # the task ran (new graph input) and found its artifact


def test_library_change_reruns_tasks_without_recomputing(prefect_harness, shared_data, tmp_path, task_states, monkeypatch):
    import tasks
    from flows.tag import tag

    lake = tmp_path / "lake"
    params = dict(
        dataset=DatasetConfig(root=shared_data, subset=100), features=["P"], models=["mlp"], seeds=[0],
        gnn=GNNConfig(epochs=5, patience=5), lake=str(lake), stop_after="train",
    )

    def stage_states():
        state = tag(**params, return_state=True)
        assert state.is_completed(), state.message
        return {n: s for n, s in task_states(state.state_details.flow_run_id).items() if not n.startswith("report")}

    assert set(stage_states().values()) == {"Completed"}
    assert set(stage_states().values()) == {"Cached"}
    before = _created(lake)
    monkeypatch.setattr(tasks, "library_fingerprint", lambda: "an-upgraded-library")
    upgraded = stage_states()
    assert upgraded and set(upgraded.values()) == {"Completed"}, upgraded
    assert _created(lake) == before  # every artifact found in the lake, none rewritten
    assert set(stage_states().values()) == {"Cached"}
