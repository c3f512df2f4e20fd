"""Bad files for a user's own TAG: a DatasetError naming file (and row), nothing in the lake.

Every case goes through the stage, ``materialize_graph(DatasetConfig(name="custom", ...))``,
starting from a small valid graph (4 nodes, 2 classes, CSV) with one thing broken.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from tag_pipeline.config import CustomDataConfig, DatasetConfig
from tag_pipeline.datasets import DatasetError, materialize_graph

NODES_CSV = "id,text,label\nn0,Graph networks,AI\nn1,Bayesian methods,ML\nn2,Robot learning,AI\nn3,Kernel machines,ML\n"
EDGES_CSV = "src,dst\nn0,n1\nn1,n2\nn2,n3\n"
CLASSES_TXT = "AI\nML\n"


def _files(tmp_path: Path, nodes=NODES_CSV, edges=EDGES_CSV, classes=CLASSES_TXT) -> dict[str, Path]:
    """Write the three input files (text or bytes, or a polars frame for Parquet)."""
    out = {}
    for name, content, default in (("nodes", nodes, ".csv"), ("edges", edges, ".csv"), ("classes", classes, ".txt")):
        if isinstance(content, pl.DataFrame):
            path = tmp_path / f"{name}.parquet"
            content.write_parquet(path)
        else:
            path = tmp_path / f"{name}{default}"
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        out[name] = path
    return out


def _materialize(files: dict[str, Path], lake: Path) -> Path:
    cfg = DatasetConfig(name="custom", custom=CustomDataConfig(**files))
    return materialize_graph(cfg, [0], lake)


def _assert_nothing_written(lake: Path) -> None:
    assert not lake.exists() or not any(lake.rglob("*")), sorted(map(str, lake.rglob("*")))


def test_valid_baseline_loads(tmp_path):
    path = _materialize(_files(tmp_path), tmp_path / "lake")
    assert (path / "manifest.json").exists()


NODES_PARQUET = dict(id=["n0", "n1", "n2", "n3"], text=["a b", "c d", "e f", "g h"], label=["AI", "ML", "AI", "ML"])

# case id -> (file overrides, file that must be named, expected text of the message, regex)
CASES = {
    "missing column": (
        dict(nodes="id,text\nn0,a\nn1,b\n"), "nodes", r"missing column\(s\) 'label'"),
    "missing edge column": (
        dict(edges="source,dst\nn0,n1\n"), "edges", r"missing column\(s\) 'src'"),
    "wrong dtype: list text": (
        dict(nodes=pl.DataFrame(NODES_PARQUET | dict(text=[["a"], ["b"], ["c"], ["d"]]))),
        "nodes", r"column 'text' of type List\(String\) cannot be read as text"),
    "wrong dtype: list ids": (
        dict(nodes=pl.DataFrame(NODES_PARQUET | dict(id=[[0], [1], [2], [3]]))),
        "nodes", r"column 'id' of type List\(Int64\) cannot be read as text"),
    "wrong dtype: float labels": (
        dict(nodes=pl.DataFrame(NODES_PARQUET | dict(label=[0.0, 1.0, 1.5, 0.0]))),
        "nodes", r"label not in the class list .* at row 0: '0\.0'"),
    "wrong dtype: float edge ids": (
        dict(nodes=pl.DataFrame(NODES_PARQUET | dict(id=[0, 1, 2, 3])),
             edges=pl.DataFrame(dict(src=[0.0, 1.0], dst=[1.0, 2.0]))),
        "edges", r"dangling edge at row 0: src='0\.0', dst='1\.0' is not a node id"),
    "null id": (
        dict(nodes=pl.DataFrame(NODES_PARQUET | dict(id=["n0", None, "n2", "n3"]))),
        "nodes", r"null node id in column 'id' at row 1: None"),
    "duplicate ids": (
        dict(nodes=NODES_CSV.replace("n3,Kernel", "n1,Kernel")),
        "nodes", r"duplicate node id 'n1' at row 3 \(line 5\), first at row 1 \(line 3\)"),
    "dangling edge": (
        dict(edges=EDGES_CSV + "n3,n9\n"),
        "edges", r"dangling edge at row 3 \(line 5\): src='n3', dst='n9' is not a node id"),
    "label outside the class list": (
        dict(nodes=NODES_CSV.replace("Robot learning,AI", "Robot learning,Robotics")),
        "nodes", r"label not in the class list \['AI', 'ML'\] .* at row 2 \(line 4\): 'Robotics'"),
    "label index out of range": (
        dict(nodes=pl.DataFrame(NODES_PARQUET | dict(label=[0, 1, 2, 0]))),
        "nodes", r"label outside class indices 0\.\.1 at row 2: 2"),
    "empty text": (
        dict(nodes=NODES_CSV.replace("Bayesian methods", "")),
        "nodes", r"empty or missing text in column 'text' at row 1 \(line 3\)"),
    "blank text": (
        dict(nodes=NODES_CSV.replace("Kernel machines", '"   "')),
        "nodes", r"empty or missing text in column 'text' at row 3 \(line 5\): '   '"),
    "empty graph: header only": (
        dict(nodes="id,text,label\n"), "nodes", r"the nodes table has no rows"),
    "empty graph: empty file": (
        dict(nodes=""), "nodes", r"cannot read table"),
    "duplicate class name": (
        dict(classes="AI\nML\nAI\n"), "classes", r"duplicate class name 'AI' at line 3 \(first at line 1\)"),
    "non-UTF-8 bytes": (
        dict(nodes=NODES_CSV.encode().replace(b"Kernel machines", b"Kernel caf\xe9 machines")),
        "nodes", r"(invalid utf-8|UTF-8)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_file_and_row_and_writes_nothing(tmp_path, case):
    overrides, culprit, pattern = CASES[case]
    files = _files(tmp_path, **overrides)
    lake = tmp_path / "lake"
    with pytest.raises(DatasetError) as ei:
        _materialize(files, lake)
    msg = str(ei.value)
    assert msg.startswith(f"{files[culprit]}: "), msg
    assert re.search(pattern, msg), msg
    _assert_nothing_written(lake)


def test_non_utf8_csv_names_the_row(tmp_path):
    overrides, _, _ = CASES["non-UTF-8 bytes"]
    files = _files(tmp_path, **overrides)
    with pytest.raises(DatasetError, match=r"row 3 \(line 5\)"):
        _materialize(files, tmp_path / "lake")


def test_missing_file_is_a_dataset_error(tmp_path):
    files = _files(tmp_path)
    files["edges"].unlink()
    lake = tmp_path / "lake"
    try:
        with pytest.raises(DatasetError):
            _materialize(files, lake)
    finally:  # whatever is raised, it names the file and nothing is written
        _assert_nothing_written(lake)


def test_missing_file_names_it_and_writes_nothing(tmp_path):
    files = _files(tmp_path)
    files["edges"].unlink()
    lake = tmp_path / "lake"
    with pytest.raises((DatasetError, FileNotFoundError), match=re.escape(str(files["edges"]))):
        _materialize(files, lake)
    _assert_nothing_written(lake)
