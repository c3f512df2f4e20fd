"""The ``tag`` command line: YAML config, overrides, --help."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from tag_pipeline.cli import main, parse_config
from tag_pipeline.config import GNNConfig, PipelineConfig


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
    with pytest.raises((ValidationError, SystemExit)):
        parse_config(argv)


def test_unknown_yaml_field_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("gnn:\n  hiden: 64\n")
    with pytest.raises(ValidationError, match="hiden"):
        parse_config(["--config", str(path)])


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(SystemExit, match="nope.yaml"):
        parse_config(["--config", str(tmp_path / "nope.yaml")])


def test_print_config_shows_the_merged_config(capsys):
    assert main(["--print-config", "--gnn.num_layers", "3"]) == 0
    cfg = PipelineConfig.model_validate_json(capsys.readouterr().out)
    assert cfg.gnn.num_layers == 3


def test_help_documents_every_field_with_its_default():
    out = subprocess.run(
        [sys.executable, "-m", "tag_pipeline.cli", "--help"], capture_output=True, text=True, check=False
    ).stdout
    flat = " ".join(out.split())
    for section, model in [("dataset", PipelineConfig.model_fields["dataset"].default),
                           ("gnn", GNNConfig()), ("llm", None), ("lm", None)]:
        assert f"--{section}." in flat
    for name, field in GNNConfig.model_fields.items():
        assert f"--gnn.{name}" in flat
        assert f"(default: {field.default})" in flat
    for name in ("--features", "--models", "--seeds", "--ensemble", "--lake", "--config"):
        assert name in flat
