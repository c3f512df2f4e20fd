"""Tests for tag_pipeline.report: metrics table, summary over seeds, markdown, lake artifact."""

from __future__ import annotations

import math

import polars as pl
import pytest

from tag_pipeline import lake
from tag_pipeline.report import (
    METRICS_FILE,
    REPORT_FILE,
    accuracy_table,
    materialize_report,
    metrics_frame,
    render_report,
    summary_frame,
)


def _run(model, feature, seed, val, test):
    return {
        "model": model, "feature": feature, "seed": seed, "val_acc": val, "test_acc": test,
        "path": f"lake/cora/train/{model}-{feature}-s{seed}-abc",
    }


RUNS = [
    _run("gcn", "TA", 0, 0.7, 0.8),
    _run("gcn", "TA", 1, 0.7, 0.9),
    _run("gcn", "TA", 2, 0.7, 1.0),
    _run("gcn", "TAPE", 0, 0.85, 0.88),
    _run("mlp", "TA", 0, 0.6, 0.5),
    _run("mlp", "TA", 1, 0.6, 0.7),
]


def _row(table: str, first_cell: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {first_cell} |"))


def test_metrics_frame_schema_and_rows():
    m = metrics_frame("cora", RUNS)
    assert m.schema == pl.Schema(
        {"dataset": pl.Utf8, "model": pl.Utf8, "feature": pl.Utf8, "lm": pl.Utf8, "seed": pl.Int64,
         "split": pl.Utf8, "accuracy": pl.Float64, "method": pl.Utf8, "infer_ms_per_node": pl.Float64,
         "inputs": pl.Utf8}
    )
    assert set(m["method"]) == {"tape"} and m["infer_ms_per_node"].null_count() == m.height
    assert m["inputs"].null_count() == m.height  # TAPE's runs list no read features
    assert m.height == 2 * len(RUNS)
    assert set(m["dataset"]) == {"cora"}
    assert set(m["split"]) == {"val", "test"}
    assert m.group_by("model", "feature", "seed").len()["len"].to_list() == [2] * len(RUNS)
    row = m.filter((pl.col("model") == "gcn") & (pl.col("feature") == "TA") & (pl.col("seed") == 2))
    assert dict(zip(row["split"], row["accuracy"])) == {"val": 0.7, "test": 1.0}
    # sorted by model, feature, seed, split
    assert m.rows() == sorted(m.rows(), key=lambda r: (r[1], r[2], r[3], r[4]))


def test_metrics_frame_coerces_types_and_handles_no_runs():
    m = metrics_frame("toy", [{"model": "sage", "feature": "P", "seed": "3", "val_acc": 1, "test_acc": 0}])
    assert m["seed"].to_list() == [3, 3] and m["seed"].dtype == pl.Int64
    assert m["accuracy"].dtype == pl.Float64
    empty = metrics_frame("toy", [])
    assert empty.height == 0 and empty.columns == [
        "dataset", "model", "feature", "lm", "seed", "split", "accuracy", "method", "infer_ms_per_node", "inputs"
    ]


def test_summary_frame_mean_and_sample_std_over_seeds():
    s = summary_frame(metrics_frame("cora", RUNS))
    assert s.columns == ["model", "feature", "split", "lm", "mean", "std", "seeds"]
    got = {(r["model"], r["feature"], r["split"]): (r["mean"], r["std"], r["seeds"]) for r in s.iter_rows(named=True)}
    assert len(got) == 6
    mean, std, n = got[("gcn", "TA", "test")]
    assert mean == pytest.approx(0.9) and std == pytest.approx(0.1) and n == 3  # ddof = 1
    mean, std, n = got[("gcn", "TA", "val")]
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.0, abs=1e-12) and n == 3
    mean, std, n = got[("mlp", "TA", "test")]
    assert mean == pytest.approx(0.6) and std == pytest.approx(math.sqrt(0.02)) and n == 2
    mean, std, n = got[("gcn", "TAPE", "test")]
    assert mean == pytest.approx(0.88) and std == 0.0 and n == 1  # one seed: 0, not null


def test_accuracy_table_test_split_on_cora():
    table = accuracy_table(metrics_frame("cora", RUNS), "test", "cora")
    lines = table.splitlines()
    assert lines[0] == "| model | h_TA | h_TAPE | TAPE paper h_TAPE |"
    assert lines[1] == "|---|---|---|---|"
    assert len(lines) == 4  # header, rule, MLP, GCN (model order mlp, gcn, sage)
    assert lines[2].startswith("| MLP |") and lines[3].startswith("| GCN |")
    gcn = _row(table, "GCN")
    assert "0.9000 ± 0.1000" in gcn
    assert "| 0.8800 |" in gcn and "0.8800 ±" not in gcn  # one seed: the accuracy alone, no std
    assert gcn.endswith("| 0.9119 |")  # TAPE's published h_TAPE for GCN on cora
    mlp = _row(table, "MLP")
    assert "0.6000 ± 0.1414" in mlp and "–" in mlp and mlp.endswith("| 0.8778 |")
    assert "±" in table


def test_accuracy_table_val_split_and_unknown_dataset_have_no_paper_column():
    val = accuracy_table(metrics_frame("cora", RUNS), "val", "cora")
    assert "TAPE paper" not in val and "0.9119" not in val
    assert "0.7000 ± 0.0000" in _row(val, "GCN")
    other = accuracy_table(metrics_frame("toy", RUNS), "test", "toy")
    assert "TAPE paper" not in other
    assert other.splitlines()[0] == "| model | h_TA | h_TAPE |"


def test_render_report_sections():
    md = render_report(
        "cora",
        metrics_frame("cora", RUNS),
        timings={"graph": 1.5, "train": 10.0},
        paths={"graph": "lake/cora/graph/abc"},
        llm_stats={"llm_top1_accuracy": 0.7, "tape_preds_agreement": {"top1_agreement": 0.99, "n_compared": 100},
                   "n_failed": 2},
        missing_features=["E"],
    )
    assert md.startswith("# TAPE on cora: node classification accuracy\n")
    assert md.endswith("\n")
    assert "seeds [0, 1, 2]" in md
    assert md.count("| model | h_TA | h_TAPE |") == 2  # test and validation tables
    assert "0.9119" in md
    assert "LLM zero-shot top-1 accuracy (parsed answers): 0.7000 (TAPE: 0.6769)" in md
    assert "0.9900 over 100 nodes" in md and "- n_failed: 2" in md
    assert "Features not available for this dataset: E." in md
    assert "| graph | 1.5 |" in md
    assert "| train | 10.0 |" in md
    assert "- graph: `lake/cora/graph/abc`" in md


def test_materialize_report_commits_artifact(tmp_path):
    path, md = materialize_report("cora", RUNS, {"train": 3.0}, {"graph": "g"}, tmp_path)
    assert path.parent == tmp_path / "cora" / "report"
    art = lake.read_artifact(path)
    assert set(art.manifest["files"]) == {METRICS_FILE, REPORT_FILE}
    assert art.manifest["stage"] == "report" and art.manifest["rows"] == 2 * len(RUNS)
    assert len(art.manifest["inputs"]) == len(RUNS)
    assert (path / REPORT_FILE).read_text() == md
    assert f"- report: `{path}`" in md
    assert pl.read_parquet(path / METRICS_FILE).equals(metrics_frame("cora", RUNS))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no .tmp-* left


def test_materialize_report_is_idempotent_for_the_same_runs(tmp_path):
    path1, md1 = materialize_report("cora", RUNS, {"train": 3.0}, {}, tmp_path)
    created = lake.read_artifact(path1).manifest["created_unix"]
    # a later (cached) run: same runs in another order, other timings
    path2, md2 = materialize_report("cora", list(reversed(RUNS)), {"train": 0.1}, {}, tmp_path)
    assert path2 == path1
    assert (path1 / REPORT_FILE).read_text() == md1  # not rewritten
    assert lake.read_artifact(path1).manifest["created_unix"] == created
    assert "| train | 0.1 |" in md2  # the returned markdown is this run's
    assert len(list(path1.parent.iterdir())) == 1
    # other runs: another key
    path3, _ = materialize_report("cora", RUNS[:2], {}, {}, tmp_path)
    assert path3 != path1 and lake.read_artifact(path3).manifest["rows"] == 4


def test_report_shows_frozen_and_finetuned_side_by_side():
    runs = [
        {"model": "gcn", "feature": f, "seed": s, "val_acc": 0.8, "test_acc": acc, "lm": lm}
        for lm, acc in (("frozen", 0.8), ("finetuned", 0.9))
        for f in ("TA", "TAPE")
        for s in (0, 1)
    ]
    m = metrics_frame("cora", runs)
    assert set(m["lm"]) == {"frozen", "finetuned"}
    md = render_report("cora", m, {}, {})
    frozen = md.index("Test accuracy, frozen LM")
    tuned = md.index("Test accuracy, fine-tuned LM")
    assert frozen < tuned
    assert "0.8000 ± 0.0000" in md[frozen:tuned] and "0.9000 ± 0.0000" in md[tuned:md.index("Validation")]
    # runs without an lm field are frozen, and a single mode gets no per-mode titles
    one = render_report("cora", metrics_frame("cora", [{**r, "lm": "frozen"} for r in runs[:4]]), {}, {})
    assert "Test accuracy:" in one and "frozen LM" not in one
    # a single seed says so, and shows no std
    single = render_report("cora", metrics_frame("cora", [r for r in runs if r["seed"] == 0]), {}, {})
    assert "seed 0 only (no std)" in single and "±" not in single.split("## ")[0].replace("mean ± std", "")


def test_report_inputs_keep_frozen_and_finetuned_runs_apart(tmp_path):
    runs = [
        {"model": "gcn", "feature": "TA", "seed": 0, "val_acc": 0.8, "test_acc": 0.8, "lm": lm, "path": f"lake/train/{lm}"}
        for lm in ("frozen", "finetuned")
    ]
    path, _ = materialize_report("cora", runs, {}, {}, tmp_path)
    assert lake.read_artifact(path).manifest["inputs"] == {
        "gcn-TA-s0": "lake/train/frozen", "gcn-TA-s0-ft": "lake/train/finetuned",
    }


def test_report_keys_are_pinned(tmp_path):
    """The report's lake key moves only with its version: TAPE's without the method's name,
    other methods' with it. (Version 2's keys, 85fbb0a1afebc474 / 2288149629da6afa, were those
    of commit 4183647, before ``REPORT_STAGE``; version 3 added ``inputs`` to metrics.parquet.)"""
    from tag_pipeline.methods import GallonMethod

    path, _ = materialize_report("cora", RUNS, {"train": 3.0}, {"graph": "g"}, tmp_path)
    assert path.name == "83a70b9ceb5f7388"
    path, _ = materialize_report("cora", RUNS, {"train": 3.0}, {"graph": "g"}, tmp_path, method=GallonMethod())
    assert path.name == "6cc6471233293089" and lake.read_artifact(path).manifest["stage"] == "report"


def test_the_llm_section_shows_what_asking_a_live_llm_cost():
    backend = {"nodes": 10, "ok": 9, "failed": 1, "failed_invalid": 1, "calls": 12, "reasks": 2, "retries": 0,
               "cache_hits": 0, "prompt_tokens": 4000, "completion_tokens": 900, "wall_s": 20.0,
               "answers_per_s": 0.5, "completion_tokens_per_s": 45.0,
               "server": {"model_file": "/x/SmolLM2.gguf", "model_sha256": "b179c9523d0e6a0f", "version": "0.3.36",
                          "servers": 2, "threads": 1}}
    text = render_report("cora", metrics_frame("cora", RUNS), {}, {}, llm_stats={"llm_top1_accuracy": 0.2,
                         "n_failed": 1, "backend": backend})
    assert "- Answers: 9 of 10 nodes valid (90.00%), 1 failed (1 invalid after re-asks); 12 requests, 2 re-asks" in text
    assert "- Tokens: 4,000 in, 900 out; 20.0 s asking, 0.500 answers/s, 45.0 completion tokens/s" in text
    assert "- Local model: SmolLM2.gguf (sha256 b179c9523d0e), 2 llama-cpp-python 0.3.36 server(s) of 1 thread(s)" in text
    replay = render_report("cora", metrics_frame("cora", RUNS), {}, {}, llm_stats={"llm_top1_accuracy": 0.6769})
    assert "- Answers:" not in replay and "- Tokens:" not in replay
