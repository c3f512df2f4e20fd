"""``tag compare``: the compare flow from the command line, with ``tag``'s options and errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tag_cli.compare import DEFAULT_METHODS, split_methods
from tag_cli.main import main as tag_main


def main(argv: list[str]) -> int:
    return tag_main(["compare", *argv])


def test_methods_are_taken_out_of_the_command_line():
    methods, rest = split_methods(["--seeds", "[4]", "--methods", '["tape", {"name": "gallon"}]', "--gnn.hidden", "8"])
    assert methods == ["tape", {"name": "gallon"}] and rest == ["--seeds", "[4]", "--gnn.hidden", "8"]
    assert split_methods(["--methods=[dre]"])[0] == ["dre"]
    assert split_methods([]) == (DEFAULT_METHODS, [])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods"], "--methods: expected a list"),
        (["--methods", "tape"], "expected a non-empty list"),
        (["--methods", "[]"], "expected a non-empty list"),
        (["--methods", '["nope"]'], "--methods[0]: Input tag 'nope'"),
        (["--methods", '[{"name": "gallon", "bogus": 1}]'], "--methods[0]: Extra inputs are not permitted"),
        (["--gnn.hiden", "3"], "--gnn.hiden: unknown option"),
    ],
)
def test_bad_usage_prints_one_line_and_exits_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_tag_compare_runs_the_methods_and_prints_the_leaderboard(prefect_harness, shared_data, tmp_path):
    """The installed console script, the real compare flow, a 60-node Cora graph: one method,
    one seed, an MLP on TA; the leaderboard lands in the lake and its markdown is printed."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k != "TAG_DEBUG"} | {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
    }
    lake = tmp_path / "lake"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "tag"), "compare", "--methods", '["tape"]',
         "--dataset.root", str(shared_data), "--dataset.subset", "60", "--features", '["TA"]',
         "--models", '["mlp"]', "--seeds", "[3]", "--lm.max_length", "32", "--lake", str(lake)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    boards = list(lake.glob("*/compare/*/leaderboard.parquet"))
    assert len(boards) == 1
    import polars as pl

    board = pl.read_parquet(boards[0])
    assert "tape" in board["method"].to_list()
    assert any(line.startswith("|") and "tape" in line for line in done.stdout.splitlines()), done.stdout
    assert f"leaderboard: {boards[0].parent}" in done.stdout
