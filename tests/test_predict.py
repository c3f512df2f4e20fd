"""Prediction for new nodes: input checks (file and row named) and predictions that match the
trained runs (tag_pipeline.predict, flows.predict, ``tag predict``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tag_pipeline.datasets.base import DatasetError
from tag_pipeline.predict import read_new_nodes

EXISTING = ["100", "200", "300"]


def _csv(path: Path, **cols) -> Path:
    pl.DataFrame(cols).write_csv(path)
    return path


@pytest.mark.parametrize(
    "nodes, edges, message",
    [
        (dict(id=["a"], title=["x"]), None, r"nodes\.csv: missing column\(s\) 'text'"),
        (dict(id=["a", "b"], text=["fine", "  "]), None, r"nodes\.csv: empty or missing text .* at row 1 \(line 3\)"),
        (dict(id=["a", "a"], text=["x", "y"]), None, r"nodes\.csv: duplicate node id 'a' at row 1 \(line 3\)"),
        (dict(id=["a", "200"], text=["x", "y"]), None, r"nodes\.csv: id in column 'id' is already a node .* row 1"),
        (dict(id=["a"], text=["x"]), dict(src=["a", "a"], dst=["100", "999"]),
         r"edges\.csv: dangling edge at row 1 \(line 3\): src='a', dst='999' is not a node id"),
        (dict(id=["a"], text=["x"]), dict(src=["a", "100"], dst=["200", "300"]),
         r"edges\.csv: edge between two existing nodes .* row 1"),
        (dict(id=["a"], text=["x"]), dict(source=["a"], dst=["100"]), r"edges\.csv: missing column\(s\) 'src'"),
    ],
)
def test_bad_new_nodes_name_the_file_and_row(tmp_path, nodes, edges, message):
    n = _csv(tmp_path / "nodes.csv", **nodes)
    e = _csv(tmp_path / "edges.csv", **edges) if edges else None
    with pytest.raises(DatasetError, match=message):
        read_new_nodes(n, e, EXISTING)


def test_edges_map_to_existing_then_new_indices(tmp_path):
    n = _csv(tmp_path / "nodes.csv", id=["a", "b"], text=["x", "y"])
    e = _csv(tmp_path / "edges.csv", src=["a", "300"], dst=["100", "b"])
    new = read_new_nodes(n, e, EXISTING)
    assert new.ids == ["a", "b"] and new.texts == ["x", "y"]
    # a = 3, b = 4 (after the 3 existing nodes); both directions
    assert sorted(map(tuple, new.edges.T.tolist())) == [(0, 3), (2, 4), (3, 0), (4, 2)]


@pytest.mark.slow
def test_predict_new_nodes_like_the_trained_runs(prefect_harness, shared_data, tmp_path, capsys):
    from flows.predict import predict
    from flows.tag import tag
    from tag_cli.main import main as tag_main
    from tag_pipeline.config import DatasetConfig, GNNConfig, LMConfig
    from tag_pipeline.datasets import open_graph
    from tag_pipeline.methods import GallonMethod

    lake = tmp_path / "lake"
    out = tag(dataset=DatasetConfig(root=shared_data, subset=150), method=GallonMethod(alphas=[1.0], betas=[0.0],
              epochs=40, patience=40, timing_repeats=1), features=["TA"], models=["gcn"], seeds=[0],
              lm=LMConfig(max_length=32), gnn=GNNConfig(epochs=20, patience=20), lake=str(lake))
    by = {(r["method"], r["variant"]): r for r in out["runs"]}
    graph = open_graph(Path(out["graph"]))
    picked = [3, 17, 42, 99]
    nodes = _csv(tmp_path / "new.csv", id=[f"new-{i}" for i in picked], text=[graph.text[i] for i in picked])

    # the student sees only a node's text: a new node with node i's text gets node i's prediction
    res = predict(nodes=str(nodes), dataset="cora", method="gallon", lake=str(lake))
    assert res["run"] == by[("gallon", "student")]["path"] and res["nodes"] == 4 and res["nodes_per_s"] > 0
    pred = pl.read_parquet(Path(res["path"]) / "predictions.parquet")
    stored = pl.read_parquet(Path(res["run"]) / "predictions.parquet").sort("node_id")
    assert pred["pred"].to_list() == stored["pred"].gather(picked).to_list()
    probs = np.stack(pred["probs"].to_numpy())
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5) and set(pred["label"]) <= set(graph.class_names)
    mine = np.stack(stored["logits"].gather(picked).to_numpy())
    want = np.exp(mine - mine.max(1, keepdims=True))
    assert np.allclose(probs, want / want.sum(1, keepdims=True), atol=2e-3)  # re-embedded text: ~1e-6 cos

    # a GNN run uses the edges: the same nodes, wired to their old neighbours, predict differently
    # from the same nodes without edges, and a run on TA is found by its path
    gcn = by[("tape", "TA")]["path"]
    src, dst = graph.edge_index
    new_of = {i: f"new-{i}" for i in picked}
    rows = [(new_of[s], graph.source_ids[d]) for s, d in zip(src, dst) if s in new_of and d not in new_of]
    edges = _csv(tmp_path / "new_edges.csv", src=[r[0] for r in rows], dst=[r[1] for r in rows])
    wired = predict(nodes=str(nodes), edges=str(edges), run=gcn, lake=str(lake))
    alone = predict(nodes=str(nodes), run=gcn, lake=str(lake))
    assert wired["kind"] == "gnn" and wired["path"] != alone["path"]
    p_wired = np.stack(pl.read_parquet(Path(wired["path"]) / "predictions.parquet")["probs"].to_numpy())
    p_alone = np.stack(pl.read_parquet(Path(alone["path"]) / "predictions.parquet")["probs"].to_numpy())
    assert not np.allclose(p_wired, p_alone, atol=1e-4)

    # the command line: bad input is one line naming the file and row, exit 2
    bad = _csv(tmp_path / "bad.csv", id=["x", "y"], text=["ok", ""])
    capsys.readouterr()
    assert tag_main(["predict", "--nodes", str(bad), "--lake", str(lake)]) == 2
    # (Prefect's own log lines go to stderr too; ours is one line)
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tag predict: error: ")]
    assert len(ours) == 1 and "bad.csv" in ours[0] and "row 1" in ours[0]
    assert tag_main(["predict", "--nodes", str(nodes), "--lake", str(lake), "--run",
                     str(lake / "cora" / "graph")]) == 2
    assert tag_main(["predict", "--nodes", str(nodes), "--lake", str(lake)]) == 0


def test_runs_on_trained_lm_features_are_refused(tmp_path):
    from tag_pipeline import lake
    from tag_pipeline.config import FinetuneConfig
    from tag_pipeline.predict import newest_run, run_kind

    feats = tmp_path / "cora" / "features" / "TA-ft-s0-aaaa"
    with lake.write_artifact(feats, stage="features", config=FinetuneConfig()) as tmp:
        (tmp / "x.bin").write_bytes(b"\0")
    run = tmp_path / "cora" / "train" / "gcn-TA-s0-bbbb"
    with lake.write_artifact(run, stage="train", inputs={"features": str(feats)},
                             extra={"summary": {"feature": "TA", "model": "gcn"}}) as tmp:
        (tmp / "x.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="trained LM .* frozen TA"):
        run_kind(run)
    with pytest.raises(lake.MissingArtifactError, match="no tape run"):
        newest_run(tmp_path, "cora", "tape")
