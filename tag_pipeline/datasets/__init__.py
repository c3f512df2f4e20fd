"""Datasets: TAPE's raw layouts and a user's own TAG, loaded into a :class:`TAGraph`.

Built-in datasets (:data:`BUILTIN_DATASETS`) are read from ``<dataset.root>/<folder>`` in the
layout of the shared data README (TAPE's downloads): ``cora``, ``ogbn-arxiv``, ``pubmed`` and
``arxiv_2023``. ``custom`` reads the files ``dataset.custom`` names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tag_pipeline import lake
from tag_pipeline.config import FEATURES, CustomDataConfig, DatasetConfig, LLMConfig
from tag_pipeline.datasets import arxiv_2023, cora, ogbn_arxiv, pubmed
from tag_pipeline.datasets.base import (
    SPLIT_NAMES,
    DatasetError,
    Split,
    TAGraph,
    low_label_split,
    read_graph,
    read_splits,
    tape_random_split,
    write_graph,
)

GRAPH_STAGE_VERSION = 1
#: The graph stage: ``<lake>/<dataset>/graph/<key>`` (nodes, edges, classes, splits).
GRAPH_STAGE = lake.Stage("graph", GRAPH_STAGE_VERSION, code=("tag_pipeline.datasets",))


@dataclass(frozen=True)
class BuiltinDataset:
    """What one of TAPE's datasets ships, relative to its folder ``<dataset.root>/<folder>``.

    Attributes:
        folder: the dataset's folder under ``dataset.root``.
        raw_files: every file the loader reads (they key the graph artifact).
        responses: TAPE's recorded LLM answers: a folder of ``<i>.json`` chat completions, or
            one ``.parquet`` packing them; ``None`` where TAPE released none.
        preds: TAPE's ``gpt_preds`` csv (ranked class indices per node).
        no_text: why the dataset has no node text (title + abstract); ``None`` where it has.
        no_responses: why there are no recorded answers; ``None`` where there are.
    """

    folder: str
    raw_files: tuple[str, ...]
    responses: str | None
    preds: str
    no_text: str | None = None
    no_responses: str | None = None


#: Name -> what the dataset ships, for every built-in ``DatasetConfig.name`` (all but ``custom``).
BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "cora": BuiltinDataset(
        folder="cora",
        raw_files=cora.RAW_FILES,
        responses="gpt_responses/Cora",
        preds="gpt_preds/cora.csv",
    ),
    "ogbn-arxiv": BuiltinDataset(
        folder="ogbn-arxiv",
        raw_files=ogbn_arxiv.RAW_FILES,
        responses="gpt_responses/ogbn-arxiv_gpt_responses.parquet",
        preds="gpt_preds/ogbn-arxiv.csv",
        no_text="ogbn-arxiv ships no titles/abstracts (OGB's titleabs.tsv is not in the shared data)",
    ),
    "pubmed": BuiltinDataset(
        folder="pubmed",
        raw_files=pubmed.RAW_FILES,
        responses=None,
        preds="gpt_preds/pubmed.csv",
        no_text="pubmed ships no titles/abstracts (only the Planetoid graph and labels are in the "
        "shared data)",
        no_responses="pubmed has no recorded LLM explanations (TAPE released only its ranked "
        "predictions, gpt_preds/pubmed.csv)",
    ),
    "arxiv_2023": BuiltinDataset(
        folder="arxiv_2023",
        raw_files=arxiv_2023.RAW_FILES,
        responses=None,
        preds="gpt_preds/arxiv_2023.csv",
        no_text="arxiv_2023 ships no titles/abstracts (only graph.pt, with edges and labels, is in "
        "the shared data)",
        no_responses="arxiv_2023 has no recorded LLM explanations (TAPE released only its ranked "
        "predictions, gpt_preds/arxiv_2023.csv)",
    ),
}


def dataset_dir(cfg: DatasetConfig) -> Path:
    """The folder of a built-in dataset: ``<cfg.root>/<folder>`` (e.g. ``../shared/data/pubmed``).

    Raises:
        DatasetError: ``cfg.name`` is ``"custom"`` (its files are named one by one).
    """
    if cfg.name not in BUILTIN_DATASETS:
        raise DatasetError(f"dataset {cfg.name!r} has no folder under dataset.root; see dataset.custom")
    return cfg.root / BUILTIN_DATASETS[cfg.name].folder


def _custom_files(cfg: DatasetConfig) -> CustomDataConfig:
    """``cfg.custom``, or :class:`DatasetError` where a custom dataset lacks it."""
    if cfg.custom is None:
        raise DatasetError("dataset.name is 'custom' but dataset.custom (the file paths) is not set")
    return cfg.custom


def raw_inputs(cfg: DatasetConfig) -> list[Path]:
    """The raw files a dataset is built from: every file its loader reads.

    Their contents key the graph artifact (:func:`graph_key`), so changing any of them
    rebuilds the graph. For the built-in datasets: cora ``cora.zip``, ``cora.pt``; ogbn-arxiv
    ``graphsaint/{adj_full.npz,role.json}``, ``raw/node-label.csv.gz`` and
    ``mapping/{labelidx2arxivcategeory,nodeidx2paperid}.csv.gz``; pubmed
    ``planetoid/ind.pubmed.{ally,ty,test.index,graph}`` and
    ``pubmed-temporal/planetoid-index-map.json.gz``; arxiv_2023 ``dataset/data/graph.pt``.

    Returns:
        list[Path]: the paths (not checked to exist).

    Raises:
        DatasetError: ``custom`` without ``dataset.custom``.
    """
    if cfg.name == "custom":
        c = _custom_files(cfg)
        return [c.nodes, c.edges, c.classes]
    folder = dataset_dir(cfg)
    return [folder / name for name in BUILTIN_DATASETS[cfg.name].raw_files]


def load_dataset(cfg: DatasetConfig, seeds: list[int]) -> TAGraph:
    """Load the dataset ``cfg`` names, with TAPE's split for each seed.

    Splits: cora, pubmed and arxiv_2023 use TAPE's random 60/20/20 split of each seed
    (:func:`tape_random_split`); ogbn-arxiv uses OGB's official time split (90,941 / 29,799 /
    48,603) for every seed, as TAPE does (the seed then only varies the models); custom uses
    the nodes file's split column if it has one, else TAPE's random split. With
    ``cfg.subset``, the induced subgraph on the first ``subset`` nodes. ``cfg.split="low_label"``
    replaces every seed's split by :func:`~tag_pipeline.datasets.base.low_label_split` of
    (that subgraph's) labels.

    Args:
        cfg (DatasetConfig): which dataset and where.
        seeds (list[int]): the seeds to attach a split to.

    Returns:
        TAGraph: nodes in TAPE's order (see the shared data README); ``text`` is ``None`` for
        ogbn-arxiv, pubmed and arxiv_2023.

    Raises:
        DatasetError: missing or invalid input files (the message names file and row).
    """
    if cfg.name == "custom":
        from tag_pipeline.datasets.custom import load_custom

        c = _custom_files(cfg)
        graph = load_custom(
            c.nodes, c.edges, c.classes, name=cfg.lake_name, id_col=c.id_col, text_col=c.text_col,
            label_col=c.label_col, undirected=c.undirected, seeds=seeds,
        )
    elif cfg.name == "cora":
        graph = cora.load_cora(dataset_dir(cfg), seeds=seeds)
    elif cfg.name == "ogbn-arxiv":
        graph = ogbn_arxiv.load_ogbn_arxiv(dataset_dir(cfg), seeds=seeds)
    elif cfg.name == "pubmed":
        graph = pubmed.load_pubmed(dataset_dir(cfg), seeds=seeds)
    elif cfg.name == "arxiv_2023":
        graph = arxiv_2023.load_arxiv_2023(dataset_dir(cfg), seeds=seeds)
    else:  # unreachable through DatasetConfig's validation
        raise DatasetError(f"unknown dataset {cfg.name!r}")
    if cfg.subset is not None and cfg.subset < graph.num_nodes:
        graph = graph.subgraph(np.arange(cfg.subset))
    if cfg.split == "low_label":
        s = cfg.low_label
        graph.splits = {
            seed: low_label_split(graph.labels, seed, s.train_per_class, s.num_val, s.num_test) for seed in seeds
        }
    return graph


def feature_availability(
    dataset: DatasetConfig | TAGraph, llm: LLMConfig | None = None
) -> dict[str, str | None]:
    """Which of TAPE's features (TA, E, P) a dataset supports, and why not where it does not.

    TA embeds the node text (title + abstract); E embeds the LLM's explanation; P embeds the
    LLM's ranked labels (TAPE, arXiv 2305.19523, Sec. 4). What the LLM stage can give depends
    on its backend: ``replay`` imports TAPE's recorded answers (cora and ogbn-arxiv: full
    answers, so E and P; pubmed and arxiv_2023: only ``gpt_preds``, so P) or, where
    ``llm.responses_dir`` / ``llm.preds_csv`` are set, those files; ``online`` / ``offline`` / ``local``
    prompt with the node text, so E and P need TA's text.

    Decided from the configuration alone; the files are not opened (a missing file still
    fails its stage, naming the file).

    Args:
        dataset (DatasetConfig | TAGraph): the dataset config, or a loaded graph (its ``text``
            decides TA; its ``name`` picks the built-in dataset's recorded answers).
        llm (LLMConfig, optional): the LLM stage. (default: ``LLMConfig()``, replay)

    Returns:
        dict[str, str | None]: ``{"TA": ..., "E": ..., "P": ...}``; ``None`` where the feature
        is available, else one sentence saying why not (e.g. ``"ogbn-arxiv ships no
        titles/abstracts (...)"``).
    """
    llm = llm or LLMConfig()
    name = dataset.name
    builtin = BUILTIN_DATASETS.get(name)
    no_text = builtin.no_text if builtin is not None else None  # custom: text is required
    if isinstance(dataset, TAGraph):
        no_text = None if dataset.text is not None else (no_text or f"{name} has no node text")
    out: dict[str, str | None] = {"TA": no_text}
    if llm.backend != "replay":
        why = None
        if no_text is not None:
            why = f"llm.backend={llm.backend!r} prompts with the node text, but {no_text}"
        out |= {"E": why, "P": why}
    elif llm.responses_dir is not None:
        out |= {"E": None, "P": None}
    elif builtin is not None:
        out |= {"E": builtin.no_responses, "P": None}
    elif llm.preds_csv is not None:
        out |= {
            "E": f"{name}: llm.preds_csv gives ranked labels only; set llm.responses_dir for explanations",
            "P": None,
        }
    else:
        why = (
            f"{name}: llm.backend='replay' needs llm.responses_dir (answers) or llm.preds_csv "
            "(ranked labels)"
        )
        out |= {"E": why, "P": why}
    return {f: out[f] for f in FEATURES}


def graph_key(cfg: DatasetConfig, seeds: list[int]) -> str:
    """Lineage key of the graph artifact: raw file contents, dataset options, seeds.

    Raises:
        DatasetError: a raw input file is missing (the message names it).
    """
    # The standard split leaves split/low_label out, so keys from before the field stay put.
    exclude = {"root"} | ({"split", "low_label"} if cfg.split == "standard" else set())
    opts = cfg.model_dump(mode="json", exclude=exclude)
    if cfg.custom is not None:
        opts["custom"] = cfg.custom.model_dump(mode="json", exclude={"nodes", "edges", "classes"})
    try:
        digest = lake.files_digest(raw_inputs(cfg))
    except FileNotFoundError as e:
        raise DatasetError(str(e)) from e
    return GRAPH_STAGE.key(opts, sorted(seeds), digest)


#: The graph artifact's files that hold the graph itself; ``splits.parquet`` is left out.
CONTENT_FILES = ("nodes.parquet", "edges.parquet", "classes.parquet")


def graph_content_key(graph_path: Path | str) -> str:
    """Key of what a graph artifact holds apart from its splits: nodes (text, labels), edges, classes.

    The LLM answers and the frozen TA/E/P features depend on the graph's content and never on
    the train/val/test split, so their artifacts are keyed by this rather than by the graph
    artifact's own key (which also covers the seeds whose splits it holds). A run with other
    seeds then reuses them; only what learns from labels (fine-tuning, training) is keyed by
    the split too, see :func:`split_key`. Computed from the sha256 of the content files in the
    artifact's manifest (no file is read).

    Raises:
        FileNotFoundError: ``graph_path`` is not a committed artifact.
        CorruptArtifactError: its manifest is unreadable or lists no content file.
    """
    art = lake.read_artifact(graph_path, verify=False)
    files = art.manifest.get("files", {})
    missing = [f for f in CONTENT_FILES if f not in files]
    if missing:
        raise lake.CorruptArtifactError(f"{graph_path}: the manifest lists no {', '.join(missing)}")
    return GRAPH_STAGE.key({f: files[f]["sha256"] for f in CONTENT_FILES})


def split_key(graph_path: Path | str, seed: int) -> str:
    """Key of one seed's train/val/test split in a graph artifact (the node ids of each part).

    Raises:
        ValueError: the artifact has no split for ``seed`` (the message lists the seeds it has).
        FileNotFoundError: ``graph_path`` has no ``splits.parquet``.
    """
    splits = read_splits(Path(graph_path))
    if seed not in splits:
        raise ValueError(f"{graph_path}: no split for seed {seed} (seeds with a split: {sorted(splits)})")
    split = splits[seed]
    parts = {part: hashlib.sha256(split.part(part).astype("<i8").tobytes()).hexdigest() for part in SPLIT_NAMES}
    return lake.config_hash(parts)


def check_split(split: Split, seed: int, dataset: str, num_nodes: int) -> None:
    """A split that can be trained on: its train and validation parts hold a node each.

    An empty train part leaves nothing to learn from; an empty validation part leaves nothing
    to choose the epoch on (every accuracy on it would be NaN). Both happen with a small
    ``subset`` of a dataset with a fixed split (the first nodes of ogbn-arxiv are all train
    nodes), or a custom split column without those values. Checked by the stages that learn
    from labels (training, LM fine-tuning); the graph, LLM and frozen-feature stages do not
    need a split.

    Raises:
        DatasetError: naming the dataset, the seed, the empty part and the part sizes.
    """
    for part in ("train", "val"):
        if len(split.part(part)) == 0:
            sizes = ", ".join(f"{p} {len(split.part(p))}" for p in SPLIT_NAMES)
            raise DatasetError(
                f"dataset {dataset!r}, seed {seed}: the {part} split is empty ({sizes} of "
                f"{num_nodes} nodes); use more nodes (dataset.subset) or give the split "
                f"column '{part}' rows"
            )


def materialize_graph(cfg: DatasetConfig, seeds: list[int], lake_root: Path) -> Path:
    """Load the dataset and commit it to ``<lake>/<name>/graph/<key>`` unless already there.

    Returns:
        The artifact directory (nodes/edges/classes/splits Parquet and a manifest).
    """
    path = GRAPH_STAGE.path(lake_root, cfg.lake_name, graph_key(cfg, seeds))

    def build() -> lake.Built:
        graph = load_dataset(cfg, seeds)
        return lake.Built(
            write=lambda tmp: write_graph(graph, tmp),
            config=cfg,
            inputs={str(p): "raw" for p in raw_inputs(cfg)},
            rows=graph.num_nodes,
            extra={"num_edges": graph.num_edges, "num_classes": graph.num_classes, "seeds": sorted(seeds)},
        )

    return GRAPH_STAGE.materialize(path, build)


def open_graph(path: Path) -> TAGraph:
    """Read a committed graph artifact (verified against its manifest)."""
    art = lake.read_artifact(path)
    return read_graph(art.path, name=lake.dataset_of(path))


__all__ = [
    "BUILTIN_DATASETS", "BuiltinDataset", "DatasetError", "Split", "TAGraph", "dataset_dir",
    "check_split", "feature_availability", "graph_content_key", "graph_key", "load_dataset", "materialize_graph",
    "open_graph", "raw_inputs", "read_graph", "split_key", "tape_random_split", "write_graph",
]
