"""ogbn-arxiv, PubMed and arxiv_2023 through the wired stages, on the real shared data.

``DatasetConfig(name=...)`` -> :func:`tag_pipeline.datasets.load_dataset` /
:func:`~tag_pipeline.datasets.materialize_graph` -> the replay LLM stage
(:func:`tag_pipeline.llm.stage.materialize_responses`), with the shared data README's checks
(sizes, splits, the zero-shot top-1 of TAPE's ``gpt_preds``: ogbn-arxiv 0.7350, PubMed 0.9342,
arxiv_2023 0.7356), and :func:`~tag_pipeline.datasets.feature_availability`. Each dataset is
loaded, materialized and replayed once per module (ogbn-arxiv: 169,343 nodes, 2.3M edges,
169,343 answers to parse).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from tag_pipeline.config import CustomDataConfig, DatasetConfig, LLMConfig
from tag_pipeline.datasets import (
    BUILTIN_DATASETS,
    DatasetError,
    TAGraph,
    feature_availability,
    graph_key,
    load_dataset,
    materialize_graph,
    open_graph,
    raw_inputs,
    tape_random_split,
)
from tag_pipeline.llm.replay import read_tape_preds
from tag_pipeline.llm.stage import RESPONSES_FILE, materialize_responses, replay_sources
from tag_pipeline.llm.store import ResponseError, ranked_matrix, read_responses, response_summary

SEEDS = [0, 1, 2, 3]
WIRED = ("ogbn-arxiv", "pubmed", "arxiv_2023")

#: The shared data README's figures: nodes, directed edges after loading, classes.
SIZES = {
    "ogbn-arxiv": (169_343, 2_315_598, 40),  # 1,166,243 citations symmetrised
    "pubmed": (19_717, 88_648, 3),
    "arxiv_2023": (46_198, 78_548, 40),  # as stored
}
#: Zero-shot top-1 accuracy of TAPE's gpt_preds csv (README; TAPE Table 2).
GPT_TOP1 = {"cora": 0.6769, "ogbn-arxiv": 0.7350, "pubmed": 0.9342, "arxiv_2023": 0.7356}
#: Split sizes (train, val, test): ogbn-arxiv official time split; the others TAPE's 60/20/20.
SPLIT_SIZES = {
    "ogbn-arxiv": (90_941, 29_799, 48_603),
    "pubmed": (11_830, 3_943, 3_944),
    "arxiv_2023": (27_718, 9_240, 9_240),
}


ALL_AVAILABLE = {"TA": None, "E": None, "P": None}


def _cfg(root: Path, name: str, **kw: object) -> DatasetConfig:
    return DatasetConfig(name=name, root=root, **kw)


def _custom_cfg() -> DatasetConfig:
    return DatasetConfig(
        name="custom", custom=CustomDataConfig(nodes="n.csv", edges="e.csv", classes="c.txt")
    )


def _committed(stage_dir: Path) -> bool:
    """Whether a stage folder of the lake holds any artifact."""
    return stage_dir.exists() and any(stage_dir.iterdir())


def _link_raw_files(src_root: Path, dst_root: Path, name: str, skip: str | None = None) -> None:
    """Symlink the dataset's raw inputs (all but ``skip``) from ``src_root`` into ``dst_root``."""
    src, dst = _cfg(src_root, name), _cfg(dst_root, name)
    for a, b in zip(raw_inputs(src), raw_inputs(dst)):
        if skip is not None and a.name == Path(skip).name:
            continue
        b.parent.mkdir(parents=True, exist_ok=True)
        b.symlink_to(a)


@pytest.fixture(scope="module")
def root(shared_data: Path) -> Path:
    missing = [n for n in WIRED if not all(p.is_file() for p in raw_inputs(_cfg(shared_data, n)))]
    if missing:
        pytest.skip(f"real data of {missing} not found under {shared_data}")
    return shared_data


@pytest.fixture(scope="module")
def loaded(root: Path) -> dict[str, tuple[TAGraph, float]]:
    """Each wired dataset through ``load_dataset`` once, with its load time in seconds."""
    out = {}
    for name in WIRED:
        start = time.perf_counter()
        graph = load_dataset(_cfg(root, name), SEEDS)
        out[name] = (graph, time.perf_counter() - start)
    return out


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lake")


@pytest.fixture(scope="module")
def staged(root: Path, lake_root: Path) -> dict[str, tuple[Path, Path]]:
    """Each wired dataset's graph and replayed responses committed to one lake: (graph, llm)."""
    out = {}
    for name in WIRED:
        cfg = _cfg(root, name)
        graph_path = materialize_graph(cfg, SEEDS, lake_root)
        out[name] = (graph_path, materialize_responses(graph_path, cfg, LLMConfig(), lake_root))
    return out


# ---------------------------------------------------------------------------------------------
# Config and raw inputs.


def test_dataset_config_names() -> None:
    for name in ("cora", "custom", *WIRED):
        assert DatasetConfig(name=name).name == name
    with pytest.raises(ValidationError):
        DatasetConfig(name="ogbn_arxiv")
    assert set(BUILTIN_DATASETS) == {"cora", *WIRED}


def test_raw_inputs_of_cora_unchanged(tmp_path: Path) -> None:
    cora = tmp_path / "cora"
    assert raw_inputs(_cfg(tmp_path, "cora")) == [cora / "cora.zip", cora / "cora.pt"]


def test_raw_inputs_name_every_file(tmp_path: Path) -> None:
    assert raw_inputs(_cfg(tmp_path, "ogbn-arxiv")) == [
        tmp_path / "ogbn-arxiv" / f
        for f in ("graphsaint/adj_full.npz", "graphsaint/role.json", "raw/node-label.csv.gz",
                  "mapping/labelidx2arxivcategeory.csv.gz", "mapping/nodeidx2paperid.csv.gz")
    ]
    assert raw_inputs(_cfg(tmp_path, "pubmed")) == [
        tmp_path / "pubmed" / f
        for f in ("planetoid/ind.pubmed.ally", "planetoid/ind.pubmed.ty", "planetoid/ind.pubmed.test.index",
                  "planetoid/ind.pubmed.graph", "pubmed-temporal/planetoid-index-map.json.gz")
    ]
    graph_pt = tmp_path / "arxiv_2023" / "dataset" / "data" / "graph.pt"
    assert raw_inputs(_cfg(tmp_path, "arxiv_2023")) == [graph_pt]


@pytest.mark.parametrize("name", WIRED)
def test_loader_reads_only_raw_inputs(
    root: Path, loaded: dict[str, tuple[TAGraph, float]], tmp_path: Path, name: str
) -> None:
    # A root holding nothing but raw_inputs loads the same graph: they are all the loader reads.
    _link_raw_files(root, tmp_path, name)
    graph, reference = load_dataset(_cfg(tmp_path, name), [0]), loaded[name][0]
    assert np.array_equal(graph.labels, reference.labels)
    assert np.array_equal(graph.edge_index, reference.edge_index)
    assert graph.class_names == reference.class_names


@pytest.mark.parametrize(
    ("name", "missing"), [(n, f) for n in WIRED for f in BUILTIN_DATASETS[n].raw_files]
)
def test_missing_raw_file_is_named(root: Path, tmp_path: Path, name: str, missing: str) -> None:
    _link_raw_files(root, tmp_path, name, skip=missing)
    cfg = _cfg(tmp_path, name)
    pattern = Path(missing).name.replace(".", r"\.")
    with pytest.raises(DatasetError, match=pattern):
        load_dataset(cfg, [0])
    with pytest.raises(DatasetError, match=pattern):
        materialize_graph(cfg, [0], tmp_path / "lake")
    assert not _committed(tmp_path / "lake" / name / "graph")


# ---------------------------------------------------------------------------------------------
# load_dataset: the README's checks.


@pytest.mark.parametrize("name", WIRED)
def test_load_dataset_sizes(loaded: dict[str, tuple[TAGraph, float]], name: str) -> None:
    graph, seconds = loaded[name]
    n, e, c = SIZES[name]
    assert graph.name == name
    assert (graph.num_nodes, graph.num_edges, graph.num_classes) == (n, e, c)
    assert graph.labels.dtype == np.int64 and graph.edge_index.dtype == np.int64
    assert graph.text is None
    assert seconds < 15.0, f"loading {name} took {seconds:.1f} s"
    if name == "pubmed":
        assert np.bincount(graph.labels).tolist() == [4103, 7875, 7739]


@pytest.mark.parametrize("name", WIRED)
def test_load_dataset_splits(loaded: dict[str, tuple[TAGraph, float]], name: str) -> None:
    graph = loaded[name][0]
    assert sorted(graph.splits) == SEEDS
    for seed, sp in graph.splits.items():
        assert (len(sp.train), len(sp.val), len(sp.test)) == SPLIT_SIZES[name]
        everything = np.sort(np.concatenate([sp.train, sp.val, sp.test]))
        assert np.array_equal(everything, np.arange(graph.num_nodes))
        # ogbn-arxiv: the official split, whatever the seed; the others: TAPE's split of the seed
        expected = graph.splits[0] if name == "ogbn-arxiv" else tape_random_split(graph.num_nodes, seed)
        assert all(np.array_equal(sp.part(p), expected.part(p)) for p in ("train", "val", "test"))
    if name != "ogbn-arxiv":
        assert not np.array_equal(graph.splits[0].train, graph.splits[1].train)


@pytest.mark.parametrize("name", ("cora", *WIRED))
def test_gpt_preds_top1_matches_readme(
    root: Path, loaded: dict[str, tuple[TAGraph, float]], name: str
) -> None:
    # TAPE's extracted top-1 against the loaded labels: checks node order and label map.
    cfg = _cfg(root, name)
    graph = loaded[name][0] if name in loaded else load_dataset(cfg, [0])
    _, csv = replay_sources(cfg, LLMConfig())
    preds = read_tape_preds(csv, graph.num_nodes, graph.num_classes)
    top1 = np.array([p[0] if p else -1 for p in preds])
    assert round(float((top1 == graph.labels).mean()), 4) == GPT_TOP1[name]


def test_subset_is_a_prefix(root: Path, loaded: dict[str, tuple[TAGraph, float]]) -> None:
    graph = load_dataset(_cfg(root, "pubmed", subset=100), SEEDS)
    assert graph.num_nodes == 100
    assert np.array_equal(graph.labels, loaded["pubmed"][0].labels[:100])


# ---------------------------------------------------------------------------------------------
# materialize_graph.


@pytest.mark.parametrize("name", WIRED)
def test_materialize_graph(
    root: Path,
    loaded: dict[str, tuple[TAGraph, float]],
    staged: dict[str, tuple[Path, Path]],
    lake_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    cfg = _cfg(root, name)
    graph_path = staged[name][0]
    assert graph_path == lake_root / name / "graph" / graph_key(cfg, SEEDS)
    manifest = json.loads((graph_path / "manifest.json").read_text())
    assert sorted(manifest["inputs"]) == sorted(str(p) for p in raw_inputs(cfg))
    assert manifest["rows"] == SIZES[name][0]
    stored, reference = open_graph(graph_path), loaded[name][0]
    assert stored.name == name and stored.text is None
    assert stored.class_names == reference.class_names
    assert np.array_equal(stored.labels, reference.labels)
    assert np.array_equal(stored.edge_index, reference.edge_index)
    assert sorted(stored.splits) == SEEDS
    assert np.array_equal(stored.splits[3].test, reference.splits[3].test)
    # committed once: a second call finds the artifact and loads nothing
    import tag_pipeline.datasets as datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a: pytest.fail("reloaded"))
    assert materialize_graph(cfg, SEEDS, lake_root) == graph_path


# ---------------------------------------------------------------------------------------------
# The replay LLM stage.


def test_replay_sources(tmp_path: Path) -> None:
    llm = LLMConfig()
    assert replay_sources(_cfg(tmp_path, "cora"), llm) == (
        tmp_path / "cora" / "gpt_responses" / "Cora", tmp_path / "cora" / "gpt_preds" / "cora.csv")
    assert replay_sources(_cfg(tmp_path, "ogbn-arxiv"), llm) == (
        tmp_path / "ogbn-arxiv" / "gpt_responses" / "ogbn-arxiv_gpt_responses.parquet",
        tmp_path / "ogbn-arxiv" / "gpt_preds" / "ogbn-arxiv.csv")
    assert replay_sources(_cfg(tmp_path, "pubmed"), llm) == (
        None, tmp_path / "pubmed" / "gpt_preds" / "pubmed.csv")
    assert replay_sources(_cfg(tmp_path, "arxiv_2023"), llm) == (
        None, tmp_path / "arxiv_2023" / "gpt_preds" / "arxiv_2023.csv")
    mine = LLMConfig(responses_dir=tmp_path / "answers", preds_csv=tmp_path / "p.csv")
    assert replay_sources(_cfg(tmp_path, "pubmed"), mine) == (tmp_path / "answers", tmp_path / "p.csv")
    custom = _custom_cfg()
    with pytest.raises(ValueError, match="responses_dir.*preds_csv"):
        replay_sources(custom, llm)
    assert replay_sources(custom, LLMConfig(preds_csv=tmp_path / "p.csv")) == (None, tmp_path / "p.csv")


@pytest.mark.parametrize("name", WIRED)
def test_replayed_responses(staged: dict[str, tuple[Path, Path]], name: str) -> None:
    graph_path, llm_path = staged[name]
    n, _, c = SIZES[name]
    df = read_responses(llm_path / RESPONSES_FILE, n, c)  # validates the store
    assert df["node_id"].to_list() == list(range(n))
    stats = json.loads((llm_path / "manifest.json").read_text())["stats"]
    assert round(stats["llm_top1_accuracy"], 4) == GPT_TOP1[name]
    assert ranked_matrix(df, n, 5).shape == (n, 5)  # the P feature's input
    summary = response_summary(df)
    assert summary["models"] == ["gpt-3.5-turbo-0301"]
    if name == "ogbn-arxiv":  # full answers: explanations (E) and ranked labels (P)
        assert summary["n_failed"] == 0 and summary["n_no_class"] == 36
        assert summary["finish_reasons"] == {"stop": 167_990, "length": 1_344, "content_filter": 9}
        assert (df["explanation"].str.len_chars() > 0).mean() > 0.99
        agreement = stats["tape_preds_agreement"]
        assert agreement["n_csv_empty"] == 36 and agreement["top1_agreement"] >= 0.9999
        assert df["source"][0] == "replay:gpt_responses/ogbn-arxiv_gpt_responses.parquet:0.json"
    else:  # gpt_preds only: ranked labels, no explanation
        assert stats["ranked_labels_only"] is True
        assert (df["explanation"] == "").all()
        assert df["source"][0] == f"replay:gpt_preds/{name}.csv"
        assert summary["n_failed"] == {"pubmed": 0, "arxiv_2023": 25}[name]


@pytest.mark.parametrize("name", WIRED)
def test_replay_of_a_subset(root: Path, tmp_path: Path, name: str) -> None:
    cfg = _cfg(root, name, subset=50)
    graph_path = materialize_graph(cfg, [0], tmp_path)
    llm_path = materialize_responses(graph_path, cfg, LLMConfig(), tmp_path)
    df = read_responses(llm_path / RESPONSES_FILE, 50, SIZES[name][2])
    assert df["node_id"].to_list() == list(range(50))


def test_preds_only_replay_names_bad_csv(root: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _link_raw_files(root, data, "pubmed")
    cfg = _cfg(data, "pubmed")
    graph_path = materialize_graph(cfg, [0], tmp_path / "lake")
    csv = data / "pubmed" / "gpt_preds" / "pubmed.csv"
    with pytest.raises(FileNotFoundError, match=r"pubmed\.csv"):
        materialize_responses(graph_path, cfg, LLMConfig(), tmp_path / "lake")
    csv.parent.mkdir(parents=True)
    lines = (root / "pubmed" / "gpt_preds" / "pubmed.csv").read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ResponseError, match=r"pubmed\.csv: 19716 lines, expected 19717"):
        materialize_responses(graph_path, cfg, LLMConfig(), tmp_path / "lake")
    lines[41] = "0,x"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(ResponseError, match=r"pubmed\.csv: line 42: not a list of integers"):
        materialize_responses(graph_path, cfg, LLMConfig(), tmp_path / "lake")
    assert not _committed(tmp_path / "lake" / "pubmed" / "llm")


def test_missing_packed_answers_are_named(root: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _link_raw_files(root, data, "ogbn-arxiv")
    cfg = _cfg(data, "ogbn-arxiv", subset=20)
    graph_path = materialize_graph(cfg, [0], tmp_path / "lake")
    with pytest.raises(FileNotFoundError, match=r"ogbn-arxiv_gpt_responses\.parquet"):
        materialize_responses(graph_path, cfg, LLMConfig(), tmp_path / "lake")


# ---------------------------------------------------------------------------------------------
# feature_availability.


def test_feature_availability_of_builtin_datasets(tmp_path: Path) -> None:
    assert feature_availability(_cfg(tmp_path, "cora")) == ALL_AVAILABLE
    arxiv = feature_availability(_cfg(tmp_path, "ogbn-arxiv"))
    assert list(arxiv) == ["TA", "E", "P"]
    assert arxiv["TA"].startswith("ogbn-arxiv ships no titles/abstracts")
    assert arxiv["E"] is None and arxiv["P"] is None
    for name in ("pubmed", "arxiv_2023"):
        got = feature_availability(_cfg(tmp_path, name))
        assert got["TA"].startswith(f"{name} ships no titles/abstracts")
        assert got["E"].startswith(f"{name} has no recorded LLM explanations")
        assert got["P"] is None
        # answers of one's own make E available
        assert feature_availability(_cfg(tmp_path, name), LLMConfig(responses_dir=tmp_path))["E"] is None


def test_feature_availability_with_a_live_llm(tmp_path: Path) -> None:
    online = LLMConfig(backend="online")
    assert feature_availability(_cfg(tmp_path, "cora"), online) == ALL_AVAILABLE
    got = feature_availability(_cfg(tmp_path, "ogbn-arxiv"), online)
    assert got["TA"] and "ogbn-arxiv ships no titles/abstracts" in got["E"] and got["E"] == got["P"]
    assert "prompts with the node text" in got["E"]


def test_feature_availability_of_a_graph(loaded: dict[str, tuple[TAGraph, float]]) -> None:
    graph = loaded["pubmed"][0].subgraph(np.arange(10))
    got = feature_availability(graph)
    assert got["TA"].startswith("pubmed ships no") and got["E"] and got["P"] is None
    with_text = TAGraph(name="custom", class_names=["a", "b"], labels=np.array([0, 1]),
                        edge_index=np.zeros((2, 0), dtype=np.int64), source_ids=["x", "y"], text=["t", "u"])
    assert feature_availability(with_text, LLMConfig(backend="online")) == ALL_AVAILABLE
    assert feature_availability(with_text, LLMConfig(preds_csv=Path("p.csv")))["E"]
    assert feature_availability(with_text, LLMConfig(preds_csv=Path("p.csv")))["P"] is None


def test_feature_availability_of_custom() -> None:
    custom = _custom_cfg()
    got = feature_availability(custom)
    assert got["TA"] is None and "llm.responses_dir" in got["E"] and got["E"] == got["P"]
    assert feature_availability(custom, LLMConfig(responses_dir=Path("answers"))) == ALL_AVAILABLE
