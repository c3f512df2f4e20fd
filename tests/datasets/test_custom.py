"""The generic loader on tiny graphs written to tmp_path, as CSV and as Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from tag_pipeline.datasets.base import DatasetError, read_graph, tape_random_split, write_graph
from tag_pipeline.datasets.custom import load_custom, read_class_names
from tag_pipeline.lake import MANIFEST, artifact_dir, read_artifact, write_artifact

CLASSES = ["Theory", "Neural_Networks", "Case_Based"]

# Six papers, ids as text (one with a leading zero); edges given once each, plus a duplicate
# in the other direction and a self-loop.
NODES: dict[str, list[Any]] = {
    "id": ["p1", "p2", "007", "p4", "p5", "p6"],
    "text": ["Title one. : Abstract.", "Two", "Three", "Four", "Five", "Six"],
    "label": ["Theory", "Neural_Networks", "Case_Based", "Theory", "Theory", "Case_Based"],
}
EDGES: dict[str, list[Any]] = {
    "src": ["p1", "p2", "007", "p4", "p5"],
    "dst": ["p2", "p1", "p4", "p4", "p6"],
}
# p1-p2 (both directions given), 007-p4, p4-p4 (self-loop), p5-p6.
UNDIRECTED = [(0, 1), (1, 0), (2, 3), (3, 2), (3, 3), (4, 5), (5, 4)]

FORMATS = ["csv", "parquet"]


def write_table(path: Path, columns: dict[str, list[Any]], schema: Any = None) -> Path:
    """Write ``columns`` to ``path`` as CSV or Parquet (by suffix)."""
    df = pl.DataFrame(columns, schema=schema, strict=False)
    if path.suffix == ".csv":
        df.write_csv(path)
    else:
        df.write_parquet(path)
    return path


def row(fmt: str, n: int) -> str:
    """The regex for how an error names 0-based data row ``n`` of a ``fmt`` file."""
    return rf"row {n} \(line {n + 2}\)" if fmt == "csv" else rf"row {n}(?! \()"


def make(
    tmp_path: Path, fmt: str, nodes: dict[str, list[Any]] | None = None,
    edges: dict[str, list[Any]] | None = None,
) -> tuple[Path, Path]:
    n = write_table(tmp_path / f"nodes.{fmt}", NODES if nodes is None else nodes)
    e = write_table(tmp_path / f"edges.{fmt}", EDGES if edges is None else edges)
    return n, e


def with_column(name: str, values: list[Any], base: dict[str, list[Any]] = NODES) -> dict:
    return {**base, name: values}


# --------------------------------------------------------------------------- good inputs


@pytest.mark.parametrize("fmt", FORMATS)
def test_good_graph_loads(tmp_path: Path, fmt: str) -> None:
    n, e = make(tmp_path, fmt)
    g = load_custom(n, e, CLASSES, name="toy")
    assert g.name == "toy" and g.num_nodes == 6 and g.num_classes == 3
    assert g.class_names == CLASSES
    assert g.source_ids == ["p1", "p2", "007", "p4", "p5", "p6"]
    assert g.text == NODES["text"]
    assert g.labels.dtype == np.int64 and g.labels.tolist() == [0, 1, 2, 0, 0, 2]
    assert g.edge_index.dtype == np.int64 and g.edge_index.shape == (2, len(UNDIRECTED))
    assert list(zip(*g.edge_index.tolist())) == UNDIRECTED
    assert sorted(g.splits) == [0, 1, 2, 3]
    for seed, sp in g.splits.items():
        ref = tape_random_split(6, seed)
        assert all(np.array_equal(sp.part(p), ref.part(p)) for p in ("train", "val", "test"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_directed_keeps_given_direction(tmp_path: Path, fmt: str) -> None:
    n, e = make(tmp_path, fmt)
    g = load_custom(n, e, CLASSES, name="toy", undirected=False, seeds=(5,))
    assert list(zip(*g.edge_index.tolist())) == [(0, 1), (1, 0), (2, 3), (3, 3), (4, 5)]
    assert list(g.splits) == [5]


@pytest.mark.parametrize("fmt", FORMATS)
def test_labels_by_index(tmp_path: Path, fmt: str) -> None:
    labels = [0, 1, 2, 0, 0, 2]
    # CSV stores digits as text; Parquet keeps an integer column.
    n, e = make(tmp_path, fmt, nodes=with_column("label", labels))
    g = load_custom(n, e, CLASSES, name="toy")
    assert g.labels.tolist() == labels


def test_integer_ids_in_parquet_match_text_ids_in_csv(tmp_path: Path) -> None:
    n = write_table(tmp_path / "nodes.parquet", with_column("id", [10, 20, 30, 40, 50, 60]))
    e = write_table(tmp_path / "edges.csv", {"src": ["10", "30"], "dst": ["20", "60"]})
    g = load_custom(n, e, CLASSES, name="toy")
    assert g.source_ids == ["10", "20", "30", "40", "50", "60"]
    assert list(zip(*g.edge_index.tolist())) == [(0, 1), (1, 0), (2, 5), (5, 2)]


def test_column_names_are_configurable(tmp_path: Path) -> None:
    n = write_table(
        tmp_path / "n.csv",
        {"paper": NODES["id"], "abstract": NODES["text"], "y": NODES["label"]},
    )
    e = write_table(tmp_path / "e.csv", {"cited": EDGES["src"], "citing": EDGES["dst"]})
    g = load_custom(
        n, e, CLASSES, name="toy", id_col="paper", text_col="abstract", label_col="y",
        src_col="cited", dst_col="citing",
    )
    assert g.num_nodes == 6 and g.num_edges == len(UNDIRECTED)


def test_no_edges(tmp_path: Path) -> None:
    n, e = make(tmp_path, "csv", edges={"src": [], "dst": []})
    g = load_custom(n, e, CLASSES, name="toy")
    assert g.edge_index.shape == (2, 0) and g.edge_index.dtype == np.int64


@pytest.mark.parametrize("kind", ["txt", "csv", "parquet"])
def test_class_file_variants(tmp_path: Path, kind: str) -> None:
    if kind == "txt":
        path = tmp_path / "classes.txt"
        path.write_bytes(b"Theory\r\n  Neural_Networks \nCase_Based\n\n")
    else:
        path = write_table(tmp_path / f"classes.{kind}", {"label": [0, 1, 2], "name": CLASSES})
    assert read_class_names(path) == CLASSES
    assert read_class_names(str(path)) == CLASSES
    n, e = make(tmp_path, "csv")
    assert load_custom(n, e, path, name="toy").labels.tolist() == [0, 1, 2, 0, 0, 2]


@pytest.mark.parametrize("fmt", FORMATS)
def test_fixed_split_column(tmp_path: Path, fmt: str) -> None:
    parts = ["train", "train", "val", "test", "train", "test"]
    n, e = make(tmp_path, fmt, nodes=with_column("split", parts))
    g = load_custom(n, e, CLASSES, name="toy", seeds=(0, 1))
    for sp in g.splits.values():
        assert sp.train.tolist() == [0, 1, 4]
        assert sp.val.tolist() == [2]
        assert sp.test.tolist() == [3, 5]


# ---------------------------------------------------------------------------- bad inputs


def test_unsupported_extension(tmp_path: Path) -> None:
    n, e = make(tmp_path, "csv")
    tsv = tmp_path / "nodes.tsv"
    tsv.write_text("id\ttext\tlabel\n")
    with pytest.raises(DatasetError, match=r"nodes\.tsv.*unsupported"):
        load_custom(tsv, e, CLASSES, name="toy")
    with pytest.raises(DatasetError, match=r"classes\.json.*unsupported"):
        load_custom(n, e, tmp_path / "classes.json", name="toy")


def test_missing_file(tmp_path: Path) -> None:
    n, _ = make(tmp_path, "csv")
    with pytest.raises(DatasetError, match=r"nope\.parquet.*not found"):
        load_custom(n, tmp_path / "nope.parquet", CLASSES, name="toy")


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_columns(tmp_path: Path, fmt: str) -> None:
    nodes = {"id": NODES["id"], "body": NODES["text"]}
    n, e = make(tmp_path, fmt, nodes=nodes)
    with pytest.raises(DatasetError, match=rf"nodes\.{fmt}: missing column\(s\) 'text', 'label'"):
        load_custom(n, e, CLASSES, name="toy")
    n, e = make(tmp_path, fmt, edges={"source": ["p1"], "dst": ["p2"]})
    with pytest.raises(DatasetError, match=rf"edges\.{fmt}: missing column\(s\) 'src'"):
        load_custom(n, e, CLASSES, name="toy")


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_nodes_table(tmp_path: Path, fmt: str) -> None:
    n, e = make(tmp_path, fmt, nodes={"id": [], "text": [], "label": []})
    with pytest.raises(DatasetError, match=rf"nodes\.{fmt}: .*no rows"):
        load_custom(n, e, CLASSES, name="toy")


@pytest.mark.parametrize("fmt", FORMATS)
def test_duplicate_ids_name_both_rows(tmp_path: Path, fmt: str) -> None:
    ids = ["p1", "p2", "007", "p2", "p5", "p1"]
    n, e = make(tmp_path, fmt, nodes=with_column("id", ids))
    with pytest.raises(
        DatasetError,
        match=rf"nodes\.{fmt}: duplicate node id 'p2' at {row(fmt, 3)}, first at {row(fmt, 1)}"
        r".*2 duplicate row",
    ):
        load_custom(n, e, CLASSES, name="toy")


@pytest.mark.parametrize("fmt", FORMATS)
def test_null_id(tmp_path: Path, fmt: str) -> None:
    n, e = make(tmp_path, fmt, nodes=with_column("id", ["p1", "p2", None, "p4", "p5", "p6"]))
    with pytest.raises(DatasetError, match=rf"nodes\.{fmt}: null node id.* at {row(fmt, 2)}"):
        load_custom(n, e, CLASSES, name="toy")


@pytest.mark.parametrize("fmt", FORMATS)
def test_dangling_edge(tmp_path: Path, fmt: str) -> None:
    edges = {"src": ["p1", "p2", "p9", "p4", "p5"], "dst": ["p2", "p1", "p4", "p8", "p6"]}
    n, e = make(tmp_path, fmt, edges=edges)
    with pytest.raises(
        DatasetError,
        match=rf"edges\.{fmt}: dangling edge at {row(fmt, 2)}: src='p9'.*2 row\(s\)",
    ):
        load_custom(n, e, CLASSES, name="toy")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("labels", "value"),
    [
        (["Theory", "Neural_Networks", "Theroy", "Theory", "Rule_Learning", "Theory"], "'Theroy'"),
        (["Theory", "Neural_Networks", None, "Theory", "Theory", "Theory"], "None"),
        ([0, 1, 3, 0, 0, 7], r"'?3'?"),
    ],
    ids=["unknown-name", "null", "index-out-of-range"],
)
def test_label_outside_classes(tmp_path: Path, fmt: str, labels: list[Any], value: str) -> None:
    n, e = make(tmp_path, fmt, nodes=with_column("label", labels))
    with pytest.raises(DatasetError, match=rf"nodes\.{fmt}: label .* at {row(fmt, 2)}: {value}"):
        load_custom(n, e, CLASSES, name="toy")


def test_mixed_names_and_indices_rejected(tmp_path: Path) -> None:
    n, e = make(tmp_path, "csv", nodes=with_column("label", ["Theory", "1", "2", "0", "0", "2"]))
    with pytest.raises(DatasetError, match=rf"nodes\.csv: label not in .* at {row('csv', 1)}"):
        load_custom(n, e, CLASSES, name="toy")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bad", ["", "   \t", None], ids=["empty", "whitespace", "null"])
def test_empty_text(tmp_path: Path, fmt: str, bad: str | None) -> None:
    text = ["Title one", "Two", "Three", bad, "Five", bad]
    n, e = make(tmp_path, fmt, nodes=with_column("text", text))
    with pytest.raises(
        DatasetError, match=rf"nodes\.{fmt}: empty or missing text.* at {row(fmt, 3)}.*2 row"
    ):
        load_custom(n, e, CLASSES, name="toy")


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_split_value(tmp_path: Path, fmt: str) -> None:
    parts = ["train", "train", "val", "test", "validation", None]
    n, e = make(tmp_path, fmt, nodes=with_column("split", parts))
    with pytest.raises(
        DatasetError, match=rf"nodes\.{fmt}: 'split' value .* at {row(fmt, 4)}: 'validation'"
    ):
        load_custom(n, e, CLASSES, name="toy")


def test_bad_class_lists(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"duplicate class name 'A' at position 2 \(first at"):
        read_class_names(["A", "B", "A"])
    with pytest.raises(DatasetError, match=r"empty class name at position 1"):
        read_class_names(["A", " ", "C"])
    with pytest.raises(DatasetError, match=r"no class names"):
        read_class_names([])
    txt = tmp_path / "classes.txt"
    txt.write_text("A\n\nB\n")
    with pytest.raises(DatasetError, match=r"classes\.txt: empty class name at line 2"):
        read_class_names(txt)
    csv = write_table(tmp_path / "classes.csv", {"name": ["A", "B", "B"]})
    with pytest.raises(DatasetError, match=rf"classes\.csv: duplicate .* at {row('csv', 2)}"):
        read_class_names(csv)
    pq = write_table(tmp_path / "classes.parquet", {"title": ["A"]})
    with pytest.raises(DatasetError, match=r"classes\.parquet: missing column\(s\) 'name'"):
        read_class_names(pq)


def test_unparseable_csv(tmp_path: Path) -> None:
    n, _ = make(tmp_path, "csv")
    e = tmp_path / "edges.csv"
    e.write_bytes(b"src,dst\np1,p2\np2,p1,p4,extra\n")
    with pytest.raises(DatasetError, match=r"edges\.csv: cannot read table"):
        load_custom(n, e, CLASSES, name="toy")


# ------------------------------------------------------------------------------ the lake


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_through_lake(tmp_path: Path, fmt: str) -> None:
    n, e = make(tmp_path, fmt, nodes=with_column("split", ["train"] * 3 + ["val", "test", "test"]))
    g = load_custom(n, e, CLASSES, name="toy", seeds=(0, 3))
    path = artifact_dir(tmp_path / "lake", "toy", "graph", "k1")
    with write_artifact(path, stage="graph", rows=g.num_nodes) as tmp:
        write_graph(g, tmp)
    art = read_artifact(path)
    assert art.manifest["rows"] == 6
    back = read_graph(art.path, "toy")
    assert back.name == g.name and back.class_names == g.class_names
    assert back.source_ids == g.source_ids and back.text == g.text
    assert np.array_equal(back.labels, g.labels) and back.labels.dtype == np.int64
    assert np.array_equal(back.edge_index, g.edge_index) and back.edge_index.dtype == np.int64
    assert sorted(back.splits) == [0, 3]
    for seed in (0, 3):
        for part in ("train", "val", "test"):
            assert np.array_equal(back.splits[seed].part(part), g.splits[seed].part(part))


def test_failed_load_writes_nothing(tmp_path: Path) -> None:
    n, e = make(tmp_path, "csv", edges={"src": ["p1"], "dst": ["nobody"]})
    path = artifact_dir(tmp_path / "lake", "toy", "graph", "k1")
    with pytest.raises(DatasetError, match=r"edges\.csv: dangling edge"):
        with write_artifact(path, stage="graph") as tmp:
            write_graph(load_custom(n, e, CLASSES, name="toy"), tmp)
    assert not path.exists() and not (path / MANIFEST).exists()
    assert list(path.parent.iterdir()) == []  # no committed artifact, no leftover .tmp-*
