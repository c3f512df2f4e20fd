"""The leaderboard table (tag_pipeline.leaderboard) from hand-made run summaries."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tag_pipeline.leaderboard import leaderboard_frame, llm_tokens, render_leaderboard


def _run(method, model, variant, seed, test, val=0.5, path=None, ms=None):
    return {"method": method, "model": model, "variant": variant, "feature": variant, "seed": seed,
            "test_acc": test, "val_acc": val, "path": path or f"/lake/{method}-{model}-{variant}-{seed}",
            "infer_ms_per_node": ms}


RESULTS = [
    {"method": "tape", "wall_s": 12.5, "llm_tokens": 1000, "runs": [
        _run("tape", "gcn", "TAPE", 0, 0.8), _run("tape", "gcn", "TAPE", 1, 0.9),
        _run("tape", "gcn", "E", 0, 0.1), _run("tape", "gcn", "E", 1, 0.1),  # not a headline variant
    ]},
    {"method": "gallon", "wall_s": 3.0, "llm_tokens": 1000, "runs": [
        _run("tape", "gcn", "TAPE", 0, 0.8),  # the teachers' own rows belong to TAPE
        _run("gallon", "mlp", "student", 0, 0.85, ms=0.002), _run("gallon", "mlp", "student", 1, 0.95, ms=0.004),
    ]},
]


def test_leaderboard_rows_mean_std_and_order():
    board = leaderboard_frame(RESULTS, infer_ms={"/lake/tape-gcn-TAPE-0": 0.01, "/lake/tape-gcn-TAPE-1": 0.03})
    assert board.select("method", "model", "variant").rows() == [("gallon", "mlp", "student"), ("tape", "gcn", "TAPE")]
    student, tape = board.to_dicts()
    assert student["test_mean"] == pytest.approx(0.9) and student["test_std"] == pytest.approx(0.0707107, rel=1e-5)
    assert student["infer_ms_per_node"] == pytest.approx(0.003) and student["wall_s"] == 3.0
    assert tape["test_mean"] == pytest.approx(0.85) and tape["infer_ms_per_node"] == pytest.approx(0.02)
    assert tape["seeds"] == 2 and tape["llm_tokens"] == 1000
    md = render_leaderboard("cora", board, [0, 1])
    assert "| gallon | mlp | student | 0.9000 ± 0.0707 |" in md
    assert "0.9132" in md and "0.8815" in md  # Dr.E and LLMNodeBed beside


def test_llm_tokens_sums_prompt_and_completion(tmp_path):
    pl.DataFrame({"node_id": [0, 1, 2], "prompt_tokens": [10, None, 5], "completion_tokens": [1, 2, None]}).write_parquet(
        tmp_path / "responses.parquet")
    assert llm_tokens(tmp_path) == 18
    assert llm_tokens(None) is None


def test_dre_headline_is_its_decoder_and_the_zero_shot_baseline_not_the_gnn_beside():
    dre = {"method": "dre", "wall_s": 60.0, "llm_tokens": None, "runs": [
        _run("dre", "llm", "dre", 0, 0.7), _run("dre", "llm-zero-shot", "zero-shot", 0, 0.3),
        _run("tape", "gcn", "TA", 0, 0.88),  # the frozen-TA GCN beside it belongs to TAPE's rows
    ]}
    board = leaderboard_frame([dre])
    assert board.select("method", "model", "variant").rows() == [("dre", "llm", "dre"),
                                                                  ("dre", "llm-zero-shot", "zero-shot")]


def test_materialize_leaderboard_key_and_hit(shared_data, tmp_path, monkeypatch):
    """The comparison's lake key is that of before ``LEADERBOARD_STAGE`` (computed with commit
    4183647's code), and a lake hit returns what the build returned."""
    from tag_pipeline import lake
    from tag_pipeline.config import DatasetConfig
    from tag_pipeline.datasets import materialize_graph
    from tag_pipeline.leaderboard import (
        LEADERBOARD_FILE,
        LEADERBOARD_MD,
        materialize_leaderboard,
    )

    monkeypatch.chdir(tmp_path)  # the key hashes the runs' paths: relative ones, the same every time
    root = Path("lake")
    graph = materialize_graph(DatasetConfig(root=shared_data, subset=20), [0], root)
    runs = []
    for variant, seed, acc in (("lm", 0, 0.7), ("lm", 1, 0.8), ("gnn", 0, 0.75)):
        path = root / "cora" / "glem" / f"{variant}-s{seed}"  # not a timed stage: no forward pass here
        with lake.write_artifact(path, stage="glem") as tmp:
            (tmp / "x.bin").write_bytes(b"\0")
        runs.append({"method": "glem", "model": "gcn", "variant": variant, "seed": seed, "test_acc": acc,
                     "val_acc": 0.5, "path": str(path)})
    results = [{"method": "glem", "wall_s": 12.3456, "llm_tokens": None, "runs": runs}]
    path, md, board = materialize_leaderboard("cora", graph, results, [0, 1], root)
    assert path == root / "cora" / "compare" / "9a22c53c4157dc51"
    art = lake.read_artifact(path)
    assert art.manifest["stage"] == "compare" and art.manifest["rows"] == board.height == 2
    assert art.manifest["inputs"]["glem:gcn-lm-s1-frozen"] == runs[1]["path"]
    assert (path / LEADERBOARD_MD).read_text() == md and pl.read_parquet(path / LEADERBOARD_FILE).equals(board)
    again = materialize_leaderboard("cora", graph, results, [0, 1], root)
    assert again[0] == path and again[1] == md and again[2].equals(board)
