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


# --- the encoder is pinned: the run's recorded weights and numerics path, nothing else ----------


def _fake_model(folder: Path, content: bytes = b"weights") -> Path:
    """A stand-in model folder: enough for model_digest (the torch path never opens it here)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(content)
    return folder


def _fake_feature(root: Path, model: Path, **extra) -> Path:
    from tag_pipeline import lake
    from tag_pipeline.config import LMConfig

    path = root / "cora" / "features" / "TA-0123456789abcdef"
    with lake.write_artifact(path, stage="features", config=LMConfig(model=str(model)),
                             inputs={"graph": str(root / "cora" / "graph" / "g")}, extra=extra) as tmp:
        (tmp / "x.bin").write_bytes(b"\0")
    return path


def test_pinned_encoder_takes_the_recorded_path_and_weights(tmp_path):
    from tag_pipeline.features.text import model_digest
    from tag_pipeline.predict import pinned_encoder

    model = _fake_model(tmp_path / "model")
    feat = _fake_feature(tmp_path, model, encoder={"runtime": "torch", "precision": "bf16", "reason": "r"},
                         encoder_weights=model_digest(str(model)))
    enc = pinned_encoder(feat)
    assert (enc.runtime, enc.precision, enc.device, enc.weights) == ("torch", "bf16", "cpu", model_digest(str(model)))
    assert enc.manifest()["encoder"] == {"runtime": "torch", "precision": "bf16", "device": "cpu",
                                         "feature": str(feat)}


def test_other_weights_at_the_model_path_are_refused_naming_both_digests(tmp_path):
    from tag_pipeline.features.text import model_digest
    from tag_pipeline.predict import pinned_encoder

    model = _fake_model(tmp_path / "model")
    feat = _fake_feature(tmp_path, model, encoder={"runtime": "torch", "precision": "fp32", "reason": "r"},
                         encoder_weights="0123456789abcdef")
    with pytest.raises(ValueError) as err:
        pinned_encoder(feat, "the-run")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("the-run: ")
    assert "0123456789abcdef" in msg and model_digest(str(model)) in msg and str(model) in msg


def test_a_precision_that_cannot_run_here_is_refused(tmp_path):
    import torch

    from tag_pipeline.features.text import model_digest
    from tag_pipeline.predict import pinned_encoder

    model = _fake_model(tmp_path / "model")
    digest = model_digest(str(model))
    # fp16 recorded for the CPU: nowhere to run it (torch autocast fp16 needs CUDA)
    feat = _fake_feature(tmp_path, model, encoder={"runtime": "torch", "precision": "fp16", "reason": "r"},
                         encoder_weights=digest)
    with pytest.raises(ValueError, match=r"precision 'fp16', which cannot run here: .*needs a CUDA device") as err:
        pinned_encoder(feat)
    assert "\n" not in str(err.value)
    if not torch.cuda.is_available():  # fp16 recorded on a GPU, asked on a machine without one
        from tag_pipeline import lake
        from tag_pipeline.config import LMConfig

        gpu = tmp_path / "gpu" / "cora" / "features" / "TA-fedcba9876543210"
        with lake.write_artifact(gpu, stage="features", config=LMConfig(model=str(model), device="cuda"),
                                 extra={"encoder": {"runtime": "torch", "precision": "fp16", "reason": "r"},
                                        "encoder_weights": digest}) as tmp:
            (tmp / "x.bin").write_bytes(b"\0")
        with pytest.raises(ValueError, match=r"fp16 on cuda, which needs CUDA, and this machine has none"):
            pinned_encoder(gpu)
        # bf16 recorded on a GPU runs on the CPU here, still in bf16
        (gpu / "manifest.json").write_text((gpu / "manifest.json").read_text().replace('"fp16"', '"bf16"'))
        enc = pinned_encoder(gpu)
        assert (enc.runtime, enc.precision, enc.device) == ("torch", "bf16", "cpu")


def test_recorded_numerics_of_features_written_before_the_encoder_field():
    from tag_pipeline.predict import recorded_numerics

    assert recorded_numerics({"encoder": {"runtime": "onnx", "precision": "fp32"}}, "f") == ("onnx", "fp32")
    # before runtime/precision 'auto' existed: the config's runtime, in float32
    assert recorded_numerics({"config": {"runtime": "onnx"}}, "f") == ("onnx", "fp32")
    assert recorded_numerics({"config": {"runtime": "torch"}}, "f") == ("torch", "fp32")
    with pytest.raises(ValueError, match="f: its manifest records no encoder path"):
        recorded_numerics({"config": {"runtime": "auto", "precision": "auto"}}, "f")


@pytest.fixture(scope="module")
def minilm_run(shared_data, tmp_path_factory):
    """A GCN on TA of 150 Cora nodes, embedded by a private copy of MiniLM (its weights can be
    altered in place) on an explicit path, torch float32: not what ``auto`` picks on any CPU."""
    import shutil

    import torch

    from tag_pipeline.config import DatasetConfig, GNNConfig, LMConfig
    from tag_pipeline.datasets import materialize_graph
    from tag_pipeline.features.stage import materialize_text_feature
    from tag_pipeline.features.text import resolve_model_path
    from tag_pipeline.train import materialize_training_run

    root = tmp_path_factory.mktemp("pinned")
    model = root / "minilm"
    shutil.copytree(resolve_model_path("all-MiniLM-L6-v2"), model)
    lake_root = root / "lake"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = materialize_graph(DatasetConfig(root=shared_data, subset=150), [0], lake_root)
        lm = LMConfig(model=str(model), max_length=32, runtime="torch", precision="fp32")
        ta = materialize_text_feature(g, None, "TA", lm, lake_root, progress=False)
        run = materialize_training_run(g, ta, "TA", "gcn", 0, GNNConfig(epochs=3), lake_root, progress=False)["path"]
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "model": model, "lake": lake_root, "graph": Path(g), "ta": Path(ta), "run": Path(run)}


def _nodes(ctx, name: str, picked: list[int]) -> Path:
    from tag_pipeline.datasets import open_graph

    graph = open_graph(ctx["graph"])
    return _csv(ctx["root"] / f"{name}.csv", id=[f"{name}-{i}" for i in picked], text=[graph.text[i] for i in picked])


class _altered_weights:
    """Within the block, one byte of the model's weights differs (restored on exit)."""

    def __init__(self, model: Path):
        self.file, self.at = model / "model.safetensors", (model / "model.safetensors").stat().st_size - 64

    def __enter__(self):
        with open(self.file, "r+b") as f:
            f.seek(self.at)
            self.byte = f.read(1)
            f.seek(self.at)
            f.write(bytes([self.byte[0] ^ 0x40]))

    def __exit__(self, *exc):
        with open(self.file, "r+b") as f:
            f.seek(self.at)
            f.write(self.byte)


@pytest.mark.slow
def test_prediction_embeds_with_the_runs_recorded_encoder(minilm_run):
    from tag_pipeline import lake
    from tag_pipeline.features.store import read_feature
    from tag_pipeline.features.text import encoder_path, model_digest
    from tag_pipeline.predict import materialize_predictions, pinned_encoder

    ctx = minilm_run
    feature = lake.read_artifact(ctx["ta"]).manifest
    assert (feature["encoder"]["runtime"], feature["encoder"]["precision"]) == ("torch", "fp32")
    auto = encoder_path(str(ctx["model"]))  # bf16 autocast with AVX512-BF16/AMX, ONNX on AVX2
    assert (auto.runtime, auto.precision) != ("torch", "fp32")

    path, summary = materialize_predictions(ctx["run"], _nodes(ctx, "same", [3, 17, 42]), None)
    pred = lake.read_artifact(path).manifest
    assert summary["nodes"] == 3 and summary["kind"] == "gnn" and summary["path"] == str(path)
    assert pred["encoder"] == {"runtime": "torch", "precision": "fp32", "device": "cpu", "feature": str(ctx["ta"])}
    assert pred["encoder_weights"] == model_digest(str(ctx["model"]))
    assert pred["encoder_weights"] == feature.get("encoder_weights", pred["encoder_weights"])
    # the same path gives the stored rows (float32 torch to float32 torch: ~1e-7)
    from tag_pipeline.datasets import open_graph

    graph = open_graph(ctx["graph"])
    x = pinned_encoder(ctx["ta"]).encode([graph.text[i] for i in (3, 17, 42)])
    stored = read_feature(ctx["ta"], graph.num_nodes)[[3, 17, 42]]
    assert torch_cos_min(x, stored) > 1 - 1e-6
    # a hit returns the same value as the build
    assert materialize_predictions(ctx["run"], _nodes(ctx, "same", [3, 17, 42]), None) == (path, summary)


def torch_cos_min(a, b) -> float:
    import torch

    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1).min())


@pytest.mark.slow
def test_new_weights_at_the_same_model_path_are_refused(minilm_run):
    from tag_pipeline import lake
    from tag_pipeline.features.text import model_digest
    from tag_pipeline.predict import materialize_predictions

    ctx = minilm_run
    recorded = lake.read_artifact(ctx["ta"]).manifest["encoder_weights"]  # tag_pipeline.features.stage writes it
    assert recorded == model_digest(str(ctx["model"]))
    done, _ = materialize_predictions(ctx["run"], _nodes(ctx, "before", [5]), None)
    committed = sorted((ctx["lake"] / "cora" / "predict").iterdir())
    with _altered_weights(ctx["model"]):
        now = model_digest(str(ctx["model"]))
        assert now != recorded
        with pytest.raises(ValueError) as err:
            materialize_predictions(ctx["run"], _nodes(ctx, "after", [5, 6]), None)
        msg = str(err.value)
        assert "\n" not in msg and recorded in msg and now in msg and str(ctx["model"]) in msg
        assert sorted((ctx["lake"] / "cora" / "predict").iterdir()) == committed  # nothing committed
        # predictions made before were embedded with the recorded weights: still found
        assert materialize_predictions(ctx["run"], _nodes(ctx, "before", [5]), None)[0] == done
    assert materialize_predictions(ctx["run"], _nodes(ctx, "after", [5, 6]), None)[1]["nodes"] == 2


@pytest.mark.slow
def test_features_without_a_weights_digest_are_checked_by_their_key(minilm_run):
    import json

    from tag_pipeline.predict import materialize_predictions

    ctx = minilm_run
    manifest = ctx["ta"] / "manifest.json"
    text = manifest.read_text()
    old = json.loads(text)
    old.pop("encoder_weights", None)  # as written before the field existed
    manifest.write_text(json.dumps(old, indent=2))
    try:
        assert materialize_predictions(ctx["run"], _nodes(ctx, "old", [7]), None)[1]["nodes"] == 1
        refused = r"records no encoder digest, and the weights now at .*minilm \([0-9a-f]{16}\) give the key TA-"
        with _altered_weights(ctx["model"]), pytest.raises(ValueError, match=refused + r"[0-9a-f]{16}, not its own"):
            materialize_predictions(ctx["run"], _nodes(ctx, "old-after", [7, 8]), None)
    finally:
        manifest.write_text(text)
