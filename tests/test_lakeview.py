"""``tag_pipeline.lakeview``, its text (``tag_cli.lakeview_render``) and ``tag lake`` on a real
lake built by the real flow.

One small lake per module (120 Cora nodes, seed 0, MLP and GCN on TA, E and P, then the same
with ``gnn.hidden`` 64): listing, lineage, one node against the artifacts' own tables, a diff
that names the changed key, and a garbage collection that removes the old configuration's
runs and nothing the new report needs (a rerun of the new configuration then finds every
artifact intact). The garbage-collection test deletes, so it runs last.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from tag_cli import lakeview_render as render
from tag_pipeline import lake as lake_lib
from tag_pipeline import lakeview
from tag_pipeline.config import DatasetConfig, GNNConfig, LMConfig

pytestmark = pytest.mark.slow

NODE = 42
SUBSET = 120


def _manifest(path) -> dict:
    return lake_lib.read_artifact(path, verify=False).manifest


@pytest.fixture(scope="module")
def built(prefect_harness, shared_data, tmp_path_factory, one_torch_thread):
    """The lake after an old config (hidden 128) and a new one (hidden 64); report paths of both."""
    from flows.tag import tag

    root = tmp_path_factory.mktemp("lakeview") / "lake"
    base = dict(
        dataset=DatasetConfig(root=shared_data, subset=SUBSET), models=["mlp", "gcn"], seeds=[0],
        lm=LMConfig(max_length=32), lake=str(root),
    )
    old_gnn = GNNConfig(epochs=40, patience=20)
    new_gnn = GNNConfig(epochs=40, patience=20, hidden=64)
    old = tag(**base, gnn=old_gnn)
    new = tag(**base, gnn=new_gnn)
    old_report, new_report = Path(old["report"]), Path(new["report"])
    assert old_report != new_report
    return SimpleNamespace(
        root=root, base=base, new_gnn=new_gnn, old_report=old_report, new_report=new_report,
        old_inputs={k: Path(v) for k, v in _manifest(old_report)["inputs"].items()},
        new_inputs={k: Path(v) for k, v in _manifest(new_report)["inputs"].items()},
    )


def _newest_graph(root: Path) -> Path:
    graphs = [p for p in (root / "cora" / "graph").iterdir() if (p / "manifest.json").exists()]
    return max(graphs, key=lambda p: _manifest(p)["created_unix"])


# ----------------------------------------------------------------------------- ls


def test_ls_lists_every_stage_with_counts(built):
    df = lakeview.list_artifacts(built.root)
    assert dict(df.group_by("stage").len().iter_rows()) == {
        "graph": 1, "llm": 1, "features": 3, "train": 12, "ensemble": 4, "report": 2,
    }
    assert df["stage"].unique(maintain_order=True).to_list() == ["graph", "llm", "features", "train", "ensemble", "report"]
    assert df.schema["created"] == pl.Datetime("us", "UTC")
    for r in df.iter_rows(named=True):
        m = _manifest(r["path"])
        assert (r["dataset"], r["stage"], r["key"]) == ("cora", m["stage"], m["key"])
        assert r["rows"] == m["rows"]
        assert r["bytes"] == sum(f.stat().st_size for f in Path(r["path"]).rglob("*") if f.is_file())
        assert r["created"].timestamp() == pytest.approx(m["created_unix"], abs=1e-3)
        if r["stage"] == "train":
            s = m["summary"]
            assert r["produced_by"] == f"{s['model']} on {s['feature']}, seed {s['seed']}"
    by_key = {r["key"]: r["produced_by"] for r in df.iter_rows(named=True)}
    assert by_key[_newest_graph(built.root).name] == f"cora subset {SUBSET}, seeds 0"
    assert by_key[built.new_inputs["gcn-TAPE-s0"].name] == "gcn TAPE (E+P+TA), seed 0, mode logits"
    assert by_key[built.new_report.name] == "8 runs: models gcn,mlp, features E,P,TA,TAPE, seeds 0"

    assert lakeview.list_artifacts(built.root, stage="train").height == 12
    assert lakeview.list_artifacts(built.root, dataset="cora").height == df.height
    with pytest.raises(ValueError, match=r"no dataset 'pubmed' .*datasets: cora"):
        lakeview.list_artifacts(built.root, dataset="pubmed")
    with pytest.raises(ValueError, match=r"no stage 'trian' .*stages: graph, llm, features, train"):
        lakeview.list_artifacts(built.root, stage="trian")
    with pytest.raises(FileNotFoundError, match="no lake here"):
        lakeview.list_artifacts(built.root / "missing")
    text = render.render_artifacts(df)
    assert "23 artifacts" in text and built.new_report.name in text


# --------------------------------------------------------------------------- show


def test_show_follows_lineage_up_and_down(built):
    run = built.new_inputs["gcn-E-s0"]
    m = _manifest(run)
    features, graph = Path(m["inputs"]["features"]), Path(m["inputs"]["graph"])
    responses = Path(_manifest(features)["inputs"]["responses"])
    info = lakeview.show_artifact(run)
    assert info["manifest"] == m and info["stage"] == "train" and info["key"] == run.name
    up = {(e["stage"], e["key"], e["depth"]) for e in info["up"]}
    assert up == {("features", features.name, 1), ("graph", graph.name, 1), ("llm", responses.name, 2)}
    down = {(e["stage"], e["key"]): e for e in info["down"]}
    assert set(down) == {("ensemble", built.new_inputs["gcn-TAPE-s0"].name), ("report", built.new_report.name)}
    assert down[("ensemble", built.new_inputs["gcn-TAPE-s0"].name)]["name"] == "E"

    # the TA embedding feeds both configs: 4 runs, their 4 ensembles, both reports
    ta = lakeview.show_artifact(built.new_inputs["gcn-TA-s0"])["up"]
    ta_path = next(Path(e["path"]) for e in ta if e["stage"] == "features")
    down = lakeview.show_artifact(ta_path)["down"]
    expected = {("train", built.old_inputs[f"{mo}-TA-s0"].name) for mo in ("mlp", "gcn")}
    expected |= {("train", built.new_inputs[f"{mo}-TA-s0"].name) for mo in ("mlp", "gcn")}
    expected |= {("ensemble", ins[f"{mo}-TAPE-s0"].name) for ins in (built.old_inputs, built.new_inputs)
                 for mo in ("mlp", "gcn")}
    expected |= {("report", built.old_report.name), ("report", built.new_report.name)}
    assert {(e["stage"], e["key"]) for e in down} == expected

    g = lakeview.show_artifact(graph)
    assert g["up"] == [] and {e["value"] for e in g["external"]} == {"raw"}
    assert any(e["name"].endswith("cora.zip") for e in g["external"])
    report = lakeview.show_artifact(built.new_report)
    assert {e["stage"] for e in report["up"]} == {"graph", "llm", "features", "train", "ensemble"}
    assert len(report["up"]) == 1 + 1 + 3 + 6 + 2 and report["down"] == []
    text = render.render_artifact(info)
    assert "lineage up" in text and features.name in text and built.new_report.name in text


def test_show_says_what_a_non_artifact_path_is(built, tmp_path):
    cora = built.root / "cora"
    with pytest.raises(ValueError, match="stage folder holding 12 artifacts"):
        lakeview.show_artifact(cora / "train")
    with pytest.raises(ValueError, match="dataset folder"):
        lakeview.show_artifact(cora)
    with pytest.raises(ValueError, match="lake root"):
        lakeview.show_artifact(built.root)
    with pytest.raises(ValueError, match="a file, not an artifact folder"):
        lakeview.show_artifact(built.new_report / "manifest.json")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        lakeview.show_artifact(cora / "train" / "gcn-TA-s9-0000")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no manifest.json"):
        lakeview.show_artifact(tmp_path / "empty")


# --------------------------------------------------------------------------- node


def test_node_view_shows_what_the_artifacts_hold(built):
    view = lakeview.node_view(built.root, "cora", NODE)
    graph = _newest_graph(built.root)
    assert view["graph"] == str(graph) and view["num_nodes"] == SUBSET
    node = pl.read_parquet(graph / "nodes.parquet").filter(pl.col("node_id") == NODE).row(0, named=True)
    classes = pl.read_parquet(graph / "classes.parquet").sort("label")["name"].to_list()
    assert view["text"] == node["text"] and view["label"] == node["label"]
    assert view["label_name"] == classes[node["label"]]
    assert view["title"] + " : " + view["abstract"] == node["text"].strip()
    part = pl.read_parquet(graph / "splits.parquet").filter((pl.col("node_id") == NODE) & (pl.col("seed") == 0))
    assert view["splits"] == {0: part["split"].item()}

    responses = Path(_manifest(built.new_inputs["gcn-P-s0"])["inputs"]["features"])
    responses = Path(_manifest(responses)["inputs"]["responses"])
    answer = pl.read_parquet(responses / "responses.parquet").filter(pl.col("node_id") == NODE).row(0, named=True)
    [llm] = view["llm"]
    assert llm["path"] == str(responses) and llm["backend"] == "replay"
    assert llm["ranked_labels"] == [classes[c] for c in answer["ranked_labels"]]
    assert (llm["raw_text"], llm["explanation"], llm["status"]) == (answer["raw_text"], answer["explanation"], "ok")
    assert llm["prompt"] is None and "TAPE's recorded answer" in llm["prompt_note"]

    runs = {Path(r["path"]).name: r for r in view["runs"]}
    expected = {p.name for ins in (built.old_inputs, built.new_inputs) for p in ins.values()}
    assert set(runs) == expected and len(runs) == 16
    for ins in (built.old_inputs, built.new_inputs):
        for name, path in ins.items():
            stored = pl.read_parquet(path / "predictions.parquet").filter(pl.col("node_id") == NODE).row(0, named=True)
            logits = np.asarray(stored["logits"], dtype=np.float64)
            r = runs[path.name]
            assert r["pred"] == stored["pred"] == int(logits.argmax())
            assert r["pred_name"] == classes[stored["pred"]]
            assert r["prob"] == pytest.approx(np.exp(logits - logits.max()).max() / np.exp(logits - logits.max()).sum())
            assert r["split"] == stored["split"] and r["correct"] == (stored["pred"] == node["label"])
            assert f"{r['model']}-{r['feature']}-s{r['seed']}" == name and r["lm"] == "frozen"
    text = render.render_node(view)
    assert classes[node["label"]] in text and "predictions of 16 runs" in text


def test_node_view_errors_name_the_problem(built):
    with pytest.raises(ValueError, match=rf"node id {SUBSET} out of range: .* has {SUBSET} nodes"):
        lakeview.node_view(built.root, "cora", SUBSET)
    with pytest.raises(ValueError, match=r"node id -1 out of range"):
        lakeview.node_view(built.root, "cora", -1)
    with pytest.raises(ValueError, match=r"no dataset 'citeseer' in this lake \(datasets: cora\)"):
        lakeview.node_view(built.root, "citeseer", 0)
    with pytest.raises(ValueError, match="not a graph artifact"):
        lakeview.node_view(built.root, "cora", 0, graph=built.new_report)


def test_node_view_renders_the_prompt_of_a_live_backend(built, tmp_path):
    """An answer from the online backend: the prompt is rendered as the backend would send it."""
    from tag_pipeline.config import LLMConfig
    from tag_pipeline.llm.config import OnlineLLMConfig
    from tag_pipeline.llm.prompts import build_messages
    from tag_pipeline.llm.store import responses_from_records, write_responses

    graph = _newest_graph(built.root)
    root = tmp_path / "lake"
    copy = root / "cora" / "graph" / graph.name
    shutil.copytree(graph, copy)
    cfg = LLMConfig(backend="online", online=OnlineLLMConfig(model="openai/qwen", top_k=3))
    df = responses_from_records([{
        "node_id": NODE, "model": "openai/qwen", "status": "failed", "error": "timed out after 60 s",
        "ranked_labels": [], "explanation": "", "source": "online:litellm", "prompt_version": "cora.v1",
    }])
    with lake_lib.write_artifact(root / "cora" / "llm" / "online-test", stage="llm", config=cfg,
                                 inputs={"graph": str(copy)}, rows=1) as tmp:
        write_responses(df, tmp / "responses.parquet")
    view = lakeview.node_view(root, "cora", NODE)
    [llm] = view["llm"]
    assert llm["prompt"] == build_messages("cora", view["class_names"], view["text"], "v1", k=3)
    assert (llm["status"], llm["error"], llm["ranked_labels"]) == ("failed", "timed out after 60 s", [])
    assert view["runs"] == []
    text = render.render_node(view)
    assert "[user]" in text and "timed out after 60 s" in text


# --------------------------------------------------------------------------- diff


def test_diff_names_exactly_the_changed_key(built):
    a, b = built.old_inputs["gcn-TA-s0"], built.new_inputs["gcn-TA-s0"]
    d = lakeview.diff_runs(a, b)
    assert d["config"] == {"hidden": (128, 64)}
    assert d["inputs"] == {}  # same graph, same features
    sa, sb = _manifest(a)["summary"], _manifest(b)["summary"]
    assert d["runs"]["val_acc"] == (sa["val_acc"], sb["val_acc"])
    assert d["runs"]["test_acc"] == (sa["test_acc"], sb["test_acc"])

    e = lakeview.diff_runs(built.old_inputs["mlp-TAPE-s0"], built.new_inputs["mlp-TAPE-s0"])
    assert e["config"] == {"train.hidden": (128, 64)} and set(e["inputs"]) == {"TA", "E", "P"}

    r = lakeview.diff_runs(built.old_report, built.new_report)
    assert r["config"] == {"train.hidden": (128, 64)}
    metrics = r["metrics"]
    assert metrics.height == 2 * 4 * 2  # models x features (TA, E, P, TAPE) x splits, seed 0
    old = pl.read_parquet(built.old_report / "metrics.parquet")
    new = pl.read_parquet(built.new_report / "metrics.parquet")
    keys = ["model", "feature", "lm", "seed", "split"]
    assert metrics.sort(keys)["accuracy_a"].to_list() == old.sort(keys)["accuracy"].to_list()
    assert metrics.sort(keys)["accuracy_b"].to_list() == new.sort(keys)["accuracy"].to_list()
    text = render.render_diff(r)
    assert "train.hidden" in text and "accuracy, mean over seeds" in text

    with pytest.raises(ValueError, match="cannot compare a train artifact .* with a report artifact"):
        lakeview.diff_runs(a, built.new_report)


# ---------------------------------------------------------------------------- cli


def test_cli_prints_and_fails_with_one_line(built, capsys, monkeypatch):
    from tag_cli.lake import main

    root = str(built.root)
    assert main(["--lake", root, "node", "cora", str(NODE)]) == 0
    out = capsys.readouterr()
    assert "predictions of 16 runs" in out.out and out.err == ""
    assert main(["ls", "--stage", "report", "--lake", root]) == 0
    assert built.new_report.name in capsys.readouterr().out
    assert main(["--lake", root, "show", "cora/report/" + built.new_report.name]) == 0  # relative to the lake
    assert "lineage up" in capsys.readouterr().out
    assert main(["--lake", root, "diff", str(built.old_report), str(built.new_report)]) == 0
    assert "train.hidden" in capsys.readouterr().out

    bad = [
        (["--lake", root, "node", "cora", str(SUBSET)], f"node id {SUBSET} out of range"),
        (["--lake", root, "node", "cora", "x"], "invalid int value: 'x'"),
        (["--lake", root, "show", str(built.root / "cora" / "train")], "stage folder"),
        (["--lake", root, "ls", "--dataset", "nope"], "no dataset 'nope'"),
        (["--lake", root, "gc", "--keep-reports", "0"], "keep_reports must be an integer >= 1"),
        (["--lake", root, "frob"], "invalid choice: 'frob'"),
        (["--lake", str(built.root / "nowhere"), "ls"], "no lake here"),
        ([], "required: COMMAND"),
    ]
    for argv, message in bad:
        assert main(argv) == 2, argv
        out = capsys.readouterr()
        lines = out.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("tag lake: error: ") and message in lines[0], (argv, out.err)
        assert out.out == ""
    monkeypatch.setenv("TAG_DEBUG", "1")
    with pytest.raises(ValueError, match="out of range"):
        main(["--lake", root, "node", "cora", str(SUBSET)])


def test_cli_publishes_a_prefect_table_artifact(built, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tag_cli.lake import main

    assert main(["--lake", str(built.root), "ls", "--stage", "train", "--artifact"]) == 0
    assert "published Prefect table artifact 'tag-lake-ls' (12 rows)" in capsys.readouterr().out
    with get_client(sync_client=True) as client:
        [art] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tag-lake-ls"])))
    assert art.type == "table"
    rows = json.loads(art.data) if isinstance(art.data, str) else art.data
    assert {r["key"] for r in rows} == {p.name for ins in (built.old_inputs, built.new_inputs)
                                        for n, p in ins.items() if "TAPE" not in n}


# ----------------------------------------------------------------------------- gc


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_gc_removes_the_old_config_and_keeps_what_the_new_report_reaches(built):
    from flows.tag import tag
    from tag_cli.lake import main

    root, cora = built.root, built.root / "cora"
    listed_before = lakeview.list_artifacts(root)
    new_closure = {built.new_report} | {Path(e["path"]) for e in lakeview.show_artifact(built.new_report)["up"]}
    old_only = {built.old_report} | set(built.old_inputs.values())
    assert len(old_only) == 1 + 6 + 2 and not old_only & new_closure

    # committed after the newest report: a run in progress may own it, so it is kept
    in_progress = cora / "train" / "mlp-TA-s0-0000000000000000"
    with lake_lib.write_artifact(in_progress, stage="train", inputs={"graph": str(built.old_inputs["mlp-TA-s0"])}) as tmp:
        (tmp / "predictions.parquet").write_bytes(b"\0")
    assert in_progress not in set(map(Path, lakeview.gc_plan(root)["path"]))
    shutil.rmtree(in_progress)

    # debris (planted after the write above, which removes dead writers' temporaries):
    # a corrupt copy moved aside, a dead writer's temporary, a live one's, left-over shards
    old_run = built.old_inputs["gcn-TA-s0"]
    corrupt = old_run.with_name(f"{old_run.name}.corrupt-1700000000-deadbeef")
    shutil.copytree(old_run, corrupt)
    host = lake_lib.temp_owner_tag().split(".")[0]
    stale = cora / "train" / f".tmp-{old_run.name}-{host}.{_dead_pid()}-abcdef12"
    stale.mkdir()
    (stale / "predictions.parquet").write_bytes(b"\0" * 1000)
    live = cora / "train" / f".tmp-other-{lake_lib.temp_owner_tag()}-abcdef12"
    live.mkdir()
    ta = next(p for p in new_closure if p.parent.name == "features" and p.name.startswith("TA-"))
    shards = cora / "features" / ".shards" / ta.name
    shards.mkdir(parents=True)
    (shards / "shard-00000.json").write_text("{}")
    assert lakeview.list_artifacts(root).equals(listed_before)  # debris is not an artifact

    plan = lakeview.gc_plan(root)
    kinds = {Path(r["path"]): r["kind"] for r in plan.iter_rows(named=True)}
    assert {p for p, k in kinds.items() if k == "artifact"} == old_only
    assert not set(kinds) & new_closure
    assert kinds[corrupt] == "corrupt" and kinds[stale] == "temp" and kinds[shards] == "shards"
    assert live not in kinds and len(kinds) == len(old_only) + 3
    assert set(lakeview.gc_plan(root, keep_reports=2)["kind"]) == {"corrupt", "temp", "shards"}

    assert main(["--lake", str(root), "gc"]) == 0  # dry run: lists, deletes nothing
    assert all(p.exists() for p in kinds)
    expected = int(plan["bytes"].sum())
    assert expected == sum(f.stat().st_size for p in kinds for f in [p, *p.rglob("*")] if f.is_file())
    assert lakeview.apply_gc(plan) == expected
    assert not any(p.exists() for p in kinds) and live.exists()
    assert not (cora / "features" / ".shards").exists()
    live.rmdir()

    kept = lakeview.list_artifacts(root)
    assert dict(kept.group_by("stage").len().iter_rows()) == {
        "graph": 1, "llm": 1, "features": 3, "train": 6, "ensemble": 2, "report": 1,
    }
    assert {Path(p) for p in kept["path"]} == new_closure
    again = tag(**built.base, gnn=built.new_gnn)  # the new config finds everything in place
    assert Path(again["report"]) == built.new_report
    after = lakeview.list_artifacts(root)
    assert after.select("path", "created").equals(kept.select("path", "created"))  # nothing rebuilt
    for p in after["path"]:
        lake_lib.read_artifact(p, verify=True)
    assert lakeview.gc_plan(root).height == 0

    # a run that stops after the features writes a report without runs; what it used is
    # named only in its report.md, and that is enough to keep it
    partial = Path(tag(**built.base, gnn=built.new_gnn, stop_after="features")["report"])
    assert _manifest(partial)["inputs"] == {}
    upstream = {p for p in new_closure if p.parent.name in ("graph", "llm", "features")}
    assert len(upstream) == 5
    assert set(map(Path, lakeview.gc_plan(root)["path"])) == new_closure - upstream


def test_gc_keeps_predictions_leaderboards_and_the_runs_they_used(tmp_path):
    root = tmp_path / "lake"
    cora = root / "cora"

    def art(stage: str, name: str, **inputs) -> Path:
        path = cora / stage / name
        with lake_lib.write_artifact(path, stage=stage, inputs={k: str(v) for k, v in inputs.items()}) as tmp:
            (tmp / "x.parquet").write_bytes(b"\0")
        return path

    graph = art("graph", "g0")
    used = art("gallon", "s0-aaaa", graph=graph)
    unused = art("train", "gcn-TA-s0-bbbb", graph=graph)
    board_run = art("train", "sage-TA-s0-cccc", graph=graph)
    prediction = art("predict", "s0-aaaa-dddd", run=used)
    board = art("compare", "eeee", graph=graph, run=board_run)
    art("report", "ffff", graph=graph)  # the newest report reaches only the graph
    planned = set(map(Path, lakeview.gc_plan(root)["path"]))
    assert planned == {unused}
    assert not {used, prediction, board, board_run} & planned
