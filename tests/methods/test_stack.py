"""The stack (cross-method ensemble selection): its maths, that it fits on validation nodes only,
its lake stage, and a real ``tag`` flow run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tag_pipeline.methods import StackMethod, method_config
from tag_pipeline.methods.stack.stage import candidate_files, ensemble_selection, materialize_stack, softmax


def _onehot(pred: list[int], c: int = 3, p: float = 0.8) -> np.ndarray:
    out = np.full((len(pred), c), (1 - p) / (c - 1))
    out[np.arange(len(pred)), pred] = p
    return out


def test_selection_starts_from_the_best_single_and_adds_what_helps():
    labels = np.array([0, 1, 2, 0, 1, 2])
    a = _onehot([0, 1, 2, 0, 2, 1])  # 4 of 6
    b = _onehot([0, 0, 2, 0, 1, 1], p=0.9)  # 4 of 6, wrong where a is right
    c = _onehot([1, 1, 2, 2, 1, 2], p=0.5)  # 4 of 6
    counts = ensemble_selection(np.stack([a, b, c]), labels, rounds=10)
    mixed = np.tensordot(counts / counts.sum(), np.stack([a, b, c]), axes=1)
    best_single = max((p.argmax(1) == labels).mean() for p in (a, b, c))
    assert (mixed.argmax(1) == labels).mean() >= best_single
    only = ensemble_selection(np.stack([a]), labels, rounds=3)
    assert only.tolist() == [1]  # more copies of one candidate change nothing: the first prefix is kept
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        ensemble_selection(np.stack([a]), labels, rounds=0)
    with pytest.raises(ValueError, match="do not match"):
        ensemble_selection(np.stack([a]), labels[:3], rounds=1)


def test_softmax_is_stable_and_sums_to_one():
    p = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, 0.0, 0.0]]))
    assert np.allclose(p.sum(1), 1) and np.allclose(p[0], [0.5, 0.5, 0.0]) and np.allclose(p[1], 1 / 3)


def test_config_rejects_itself_as_a_member_and_repeats():
    assert method_config({"name": "stack", "members": ["tape", "glem"]}).members == ["tape", "glem"]
    for members, message in (([], "at least one"), (["stack"], "its own member"), (["tape", "tape"], "repeat")):
        with pytest.raises(ValueError, match=message):
            StackMethod(members=members)


@pytest.fixture(scope="module")
def tiny(shared_data, tmp_path_factory):
    """60 Cora nodes (seeds 0, 1), frozen TA (float32), an MLP and a GCN on it per seed."""
    from tag_pipeline.config import DatasetConfig, GNNConfig, LMConfig
    from tag_pipeline.datasets import materialize_graph
    from tag_pipeline.features.stage import materialize_text_feature
    from tag_pipeline.train import materialize_training_run

    root = tmp_path_factory.mktemp("lake")
    g = materialize_graph(DatasetConfig(root=shared_data, subset=60), [0, 1], root)
    ta = materialize_text_feature(g, None, "TA", LMConfig(runtime="torch", precision="fp32", max_length=32), root,
                                  progress=False)
    runs = {(m, s): materialize_training_run(g, ta, "TA", m, s, GNNConfig(epochs=5), root, progress=False)
            for m in ("mlp", "gcn") for s in (0, 1)}
    return root, g, runs


def _candidates(runs, seed):
    return candidate_files([dict(runs[m, seed], method="tape", variant="TA") for m in ("mlp", "gcn")])


def test_the_stack_fits_on_validation_nodes_only(tiny, tmp_path):
    """Rewrite the candidates' outputs and labels on train and test nodes: the same weights
    (the fit never read them). Rewrite them on validation nodes: the fit follows."""
    import polars as pl

    from tag_pipeline import lake

    root, g, runs = tiny
    base = _candidates(runs, 0)
    assert [c["label"] for c in base] == ["tape:mlp:TA:frozen", "tape:gcn:TA:frozen"]
    (ref,) = materialize_stack(g, 0, base, StackMethod(), root)
    weights = lake.read_artifact(ref["path"], verify=False).manifest["summaries"][0]["members"]

    def rewritten(parts: tuple[str, ...], tag: str) -> list[dict]:
        out = []
        for i, c in enumerate(base):
            df = pl.read_parquet(c["file"])
            rng = np.random.default_rng(i)
            noise = [list(rng.normal(size=len(v)) * 50) for v in df["logits"].to_list()]
            hit = df["split"].is_in(list(parts))
            df = df.with_columns(pl.Series("logits", [n if h else v for n, h, v in
                                                      zip(noise, hit.to_list(), df["logits"].to_list())],
                                           dtype=df.schema["logits"]))
            folder = tmp_path / tag / f"cand{i}"
            folder.mkdir(parents=True)
            df.write_parquet(folder / "predictions.parquet")
            out.append({"label": c["label"], "file": str(folder / "predictions.parquet")})
        return out

    (other,) = materialize_stack(g, 0, rewritten(("train", "test"), "tt"), StackMethod(), root / "other")
    assert lake.read_artifact(other["path"], verify=False).manifest["summaries"][0]["members"] == weights
    assert other["val_acc"] == ref["val_acc"]
    (moved,) = materialize_stack(g, 0, rewritten(("val",), "v"), StackMethod(), root / "moved")
    assert moved["val_acc"] != ref["val_acc"] or lake.read_artifact(
        moved["path"], verify=False).manifest["summaries"][0]["members"] != weights


def test_a_predictor_of_another_seed_is_refused(tiny):
    root, g, runs = tiny
    mixed = [_candidates(runs, 0)[0], _candidates(runs, 1)[1]]
    with pytest.raises(ValueError, match="is not seed 0's split"):
        materialize_stack(g, 0, mixed, StackMethod(), root)
    with pytest.raises(ValueError, match="no candidate"):
        materialize_stack(g, 0, [], StackMethod(), root)


def test_a_lake_hit_returns_what_the_build_returned_and_the_key_follows_the_candidates(tiny):
    root, g, runs = tiny
    built = materialize_stack(g, 1, _candidates(runs, 1), StackMethod(rounds=5), root)
    assert built[0]["method"] == "stack" and Path(built[0]["path"]).name.startswith("s1-")
    assert materialize_stack(g, 1, _candidates(runs, 1), StackMethod(rounds=5), root) == built
    one = materialize_stack(g, 1, _candidates(runs, 1)[:1], StackMethod(rounds=5), root)
    assert one[0]["path"] != built[0]["path"]
    assert one[0]["test_acc"] == runs["mlp", 1]["test_acc"]  # a stack of one is that predictor


def test_the_stack_runs_in_the_tag_flow_and_reports_its_choice(prefect_harness, shared_data, tmp_path):
    from flows.tag import tag
    from tag_pipeline.config import DatasetConfig, GNNConfig, LMConfig

    out = tag(dataset=DatasetConfig(root=shared_data, subset=60), method={"name": "stack", "members": ["tape"]},
              features=["TA"], models=["mlp", "gcn"], seeds=[0], lm=LMConfig(max_length=32),
              gnn=GNNConfig(epochs=5), lake=str(tmp_path / "lake"))
    rows = [r for r in out["runs"] if r["method"] == "stack"]
    assert len(rows) == 1 and rows[0]["seed"] == 0
    report = (Path(out["report"]) / "report.md").read_text()
    assert "What each seed's stack chose" in report and "tape:" in report
