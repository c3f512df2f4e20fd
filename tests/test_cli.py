"""The ``tag`` command line: YAML config, overrides, --help, one-line errors, ``tag lake``."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tag_cli.main import UsageError, main, parse_config
from tag_pipeline.config import GNNConfig, PipelineConfig

BAD_YAML = "gnn:\n  hidden: 64\n   dropout: 0.2\n"  # line 3, column 11: the ':' of a misindented key
ALLOWED_DATASETS = "'cora', 'ogbn-arxiv', 'pubmed', 'arxiv_2023' or 'custom'"


def test_defaults_equal_the_flow_parameters_defaults():
    cfg, _ = parse_config([])
    assert cfg == PipelineConfig()


def test_yaml_then_command_line_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("gnn:\n  dropout: 0.3\n  hidden: 64\nseeds: [0, 1]\ndataset:\n  subset: 100\n")
    cfg, _ = parse_config(["--config", str(path), "--gnn.hidden", "256", "--models", '["gcn"]'])
    assert cfg.gnn.hidden == 256  # command line beats YAML
    assert cfg.gnn.dropout == 0.3  # YAML beats default, sibling fields kept
    assert cfg.gnn.lr == GNNConfig().lr
    assert cfg.seeds == [0, 1] and cfg.models == ["gcn"] and cfg.dataset.subset == 100


def test_environment_is_below_yaml(tmp_path, monkeypatch):
    monkeypatch.setenv("TAG_GNN__EPOCHS", "7")
    monkeypatch.setenv("TAG_GNN__PATIENCE", "3")
    path = tmp_path / "run.yaml"
    path.write_text("gnn:\n  patience: 5\n")
    cfg, _ = parse_config(["--config", str(path)])
    assert cfg.gnn.epochs == 7 and cfg.gnn.patience == 5


@pytest.mark.parametrize(
    "argv",
    [["--gnn.dropout", "1.5"], ["--features", '["TA", "TA"]'], ["--models", '["gat"]'], ["--seeds", "[]"]],
)
def test_invalid_values_are_rejected(argv):
    with pytest.raises(UsageError, match=argv[0].removeprefix("--")):
        parse_config(argv)


def test_unknown_yaml_field_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("gnn:\n  hiden: 64\n")
    with pytest.raises(UsageError, match="hiden"):
        parse_config(["--config", str(path)])


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(UsageError, match="nope.yaml"):
        parse_config(["--config", str(tmp_path / "nope.yaml")])


def test_print_config_shows_the_merged_config(capsys):
    assert main(["--print-config", "--gnn.num_layers", "3"]) == 0
    cfg = PipelineConfig.model_validate_json(capsys.readouterr().out)
    assert cfg.gnn.num_layers == 3


def test_help_documents_every_field_with_its_default():
    out = subprocess.run(
        [sys.executable, "-m", "tag_cli.main", "--help"], capture_output=True, text=True, check=False
    ).stdout
    flat = " ".join(out.split())
    for section in ("dataset", "gnn", "llm", "lm"):
        assert f"--{section}." in flat
    for name, field in GNNConfig.model_fields.items():
        assert f"--gnn.{name}" in flat
        assert f"(default: {field.default})" in flat
    for name in ("--features", "--models", "--seeds", "--ensemble", "--lake", "--config", "--print-config", "tag lake"):
        assert name in flat


# Each case: argv ("{yaml}" is a file holding `yaml`, "{missing}" a path that does not exist),
# TAG_* variables, the YAML text, and per expected stderr line the fragments it must contain.
BAD_COMMAND_LINES = {
    "out of range": (
        ["--gnn.hidden", "-5"], {}, None,
        [["gnn.hidden: Input should be greater than or equal to 1 (got -5)"]],
    ),
    "not an allowed literal": (
        ["--dataset.name", "citeseer"], {}, None,
        [["dataset.name:", ALLOWED_DATASETS, "(got citeseer)"]],
    ),
    "malformed JSON list": (
        ["--seeds", "[0"], {}, None,
        [["seeds:", "cannot parse", "(got [0)"]],
    ),
    "unknown option": (
        ["--gnn.hiden", "3"], {}, None,
        [["--gnn.hiden: unknown option (got 3)", "did you mean --gnn.hidden?"]],
    ),
    "malformed YAML": (
        ["--config", "{yaml}"], {}, BAD_YAML,
        [["{yaml}: line 3, column 11: invalid YAML", "mapping values are not allowed"]],
    ),
    "YAML not a mapping": (
        ["--config", "{yaml}"], {}, "- gnn\n- seeds\n",
        [["{yaml}: expected a mapping of config fields", "got a list"]],
    ),
    "unknown YAML field": (
        ["--config", "{yaml}"], {}, "gnn:\n  hiden: 64\n",
        [["gnn.hiden: unknown field (got 64 in {yaml})", "did you mean gnn.hidden?"]],
    ),
    "missing config file": (
        ["--config", "{missing}"], {}, None,
        [["--config {missing}: file not found"]],
    ),
    "start_at after stop_after": (
        ["--start_at", "train", "--stop_after", "graph"], {}, None,
        [["start_at='train' comes after stop_after='graph'"]],
    ),
    "bad environment variable": (
        [], {"TAG_GNN__HIDDEN": "abc"}, None,
        [["gnn.hidden: Input should be a valid integer", "(got abc from TAG_GNN__HIDDEN)"]],
    ),
    "two problems, two lines": (
        ["--gnn.hidden", "0", "--gnn.dropout", "1.5"], {}, None,
        [["gnn.hidden:", "(got 0)"], ["gnn.dropout: Input should be less than 1 (got 1.5)"]],
    ),
    "union field, one line": (
        ["--gnn.num_layers", "abc"], {}, None,
        [["gnn.num_layers: Input should be a valid integer", "; or Input should be a valid dictionary (got abc)"]],
    ),
    "unknown method": (
        ["--method", '{{"name": "dr-e"}}'], {}, None,
        [["method: Input tag 'dr-e'", "expected tags: 'tape', 'gallon', 'glem', 'leading'"]],
    ),
    "unknown field of a method": (
        ["--method", '{{"name": "gallon", "alpha": 1}}'], {}, None,
        [["method.alpha: unknown field (got 1); did you mean method.alphas?"]],
    ),
    "bad value of a method field (YAML)": (
        ["--config", "{yaml}"], {}, "method:\n  name: gallon\n  temperatures: [0]\n",
        [["method.temperatures: temperatures must be > 0"]],
    ),
    "bad list item": (
        ["--models", '["gat"]'], {}, None,
        [["models[0]: Input should be 'mlp', 'gcn', 'sage' or 'revgat' (got gat)"]],
    ),
}


@pytest.mark.parametrize("argv, env, yaml_text, expected", BAD_COMMAND_LINES.values(), ids=BAD_COMMAND_LINES.keys())
def test_bad_command_line_prints_one_line_per_problem_and_exits_2(
    argv, env, yaml_text, expected, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("TAG_DEBUG", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    paths = {"yaml": str(tmp_path / "run.yaml"), "missing": str(tmp_path / "nope.yaml")}
    if yaml_text is not None:
        Path(paths["yaml"]).write_text(yaml_text)
    argv = [arg.format(**paths) for arg in argv]

    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no usage dump, no partial output
    lines = err.splitlines()
    assert len(lines) == len(expected), err
    for line, fragments in zip(lines, expected):
        assert line.startswith("tag: error: "), line
        for fragment in fragments:
            assert fragment.format(**paths) in line, line


def test_tag_debug_shows_the_traceback_instead(monkeypatch, capsys):
    monkeypatch.setenv("TAG_DEBUG", "1")
    assert main(["--gnn.hidden", "-5"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "pydantic_core._pydantic_core.ValidationError" in err  # the cause, with pydantic's own report
    assert "UsageError: gnn.hidden: Input should be greater than or equal to 1 (got -5)" in err
    assert "tag: error:" not in err


def test_a_failing_run_prints_one_line_and_exits_1(prefect_harness, tmp_path):
    """The real flow through the installed console script, on a dataset root that does not
    exist: the graph stage fails. (A subprocess: Prefect's log handler keeps the stream it
    first wrote to, and pytest's captured streams close after each test.)"""
    from prefect.settings import PREFECT_API_URL

    script = Path(sys.executable).parent / "tag"
    missing_root = tmp_path / "no-such-data"
    env = {k: v for k, v in os.environ.items() if k != "TAG_DEBUG"} | {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
    }
    done = subprocess.run(
        [str(script), "--dataset.root", str(missing_root), "--stop_after", "graph", "--seeds", "[0]",
         "--lake", str(tmp_path / "lake")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    ours = [line for line in done.stderr.splitlines() if line.startswith("tag: error:")]
    assert ours == [f"tag: error: {missing_root / 'cora' / 'cora.zip'}: input file not found"]


def test_ephemeral_server_gets_time_to_start(monkeypatch, tmp_path):
    """On a busy 2-core machine Prefect's default start-up wait for its in-process server ran
    out; the command line gives it 300 s unless the environment says otherwise."""
    import flows.tag

    from tag_cli.main import run_pipeline

    for name in ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "PREFECT_RESULTS_LOCAL_STORAGE_PATH"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    seen = {}
    monkeypatch.setattr(flows.tag, "tag", lambda **kw: seen.setdefault(
        "timeout", os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
    run_pipeline(PipelineConfig(lake=tmp_path / "lake"))
    assert seen == {"timeout": "300"}
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "42")
    seen.clear()
    run_pipeline(PipelineConfig(lake=tmp_path / "lake"))
    assert seen == {"timeout": "42"}


def test_lake_subcommand_gets_the_rest_of_the_command_line(monkeypatch):
    seen = []
    fake = types.ModuleType("tag_cli.lake")
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "tag_cli.lake", fake)
    assert main(["lake", "ls", "--dataset", "cora"]) == 3
    assert seen == [["ls", "--dataset", "cora"]]


def test_lake_subcommand_missing_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.delenv("TAG_DEBUG", raising=False)
    monkeypatch.setitem(sys.modules, "tag_cli.lake", None)  # as if tag_cli/lake.py were absent
    assert main(["lake", "ls"]) == 2
    assert capsys.readouterr().err == "tag: error: 'tag lake' is not available in this installation\n"


def test_installed_console_script_reports_a_bad_dataset_name():
    script = Path(sys.executable).with_name("tag")
    assert script.is_file(), f"console script {script} missing: pip install -e . installs it"
    env = {k: v for k, v in os.environ.items() if k != "TAG_DEBUG"}
    done = subprocess.run([str(script), "--dataset.name", "citeseer"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"tag: error: dataset.name: Input should be {ALLOWED_DATASETS} (got citeseer)\n"
