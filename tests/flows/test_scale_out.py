"""The embedding stage fanned out over a local Dask cluster of 2 worker processes.

prefect-dask's ``DaskTaskRunner`` runs one Prefect task per shard (``embed-shard``) in a
subflow; the ``embed-text`` task then assembles the committed shards. The result must equal
the single-process stage and the shards must come from more than one worker process.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tag_pipeline.config import DatasetConfig, LMConfig, ScaleOutConfig

pytestmark = pytest.mark.slow


def test_dask_fan_out_equals_local_embedding(prefect_harness, shared_data, tmp_path, task_states):
    pytest.importorskip("prefect_dask")
    from flows.tag import tag
    from tag_pipeline import lake
    from tag_pipeline.datasets import materialize_graph
    from tag_pipeline.features.stage import materialize_text_feature
    from tag_pipeline.features.store import read_feature

    dataset = DatasetConfig(root=shared_data, subset=300)
    lm = LMConfig(max_length=32, shard_size=64)  # 5 shards
    state = tag(
        dataset=dataset, features=["TA"], models=["gcn"], seeds=[0], lm=lm, lake=str(tmp_path / "lake"),
        scale_out=ScaleOutConfig(runner="dask", n_workers=2), stop_after="features", return_state=True,
    )
    assert state.is_completed(), state.message
    path = state.result()["markdown"].split("features TA: `")[1].split("`")[0]

    manifest = lake.read_artifact(path).manifest
    assert manifest["shards_computed"] == 0 and manifest["shards_reused"] == 5  # all by the workers
    writers = set(manifest["shard_writers"])
    assert len(writers) >= 2, writers  # more than one worker process embedded shards
    assert f"{socket.gethostname()}:{os.getpid()}" not in writers  # none in the flow's process

    local_lake = tmp_path / "local"
    graph = materialize_graph(dataset, [0], local_lake)
    local = materialize_text_feature(graph, None, "TA", lm, local_lake, progress=False)
    ours, ref = read_feature(Path(path), 300), read_feature(local, 300)
    assert ours.shape == ref.shape == (300, 384)
    assert (ours - ref).abs().max().item() <= 1e-6

    states = task_states(state.state_details.flow_run_id)
    assert states["embed-TA"] == "Completed" and states["plan-shards-TA"] == "Completed"
