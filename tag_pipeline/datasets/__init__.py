"""Datasets: TAPE's raw layouts and a user's own TAG, loaded into a :class:`TAGraph`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tag_pipeline import lake
from tag_pipeline.config import DatasetConfig
from tag_pipeline.datasets.base import DatasetError, Split, TAGraph, read_graph, tape_random_split, write_graph

GRAPH_STAGE_VERSION = 1


def raw_inputs(cfg: DatasetConfig) -> list[Path]:
    """The raw files a dataset is built from (their contents key the graph artifact)."""
    if cfg.name == "cora":
        return [cfg.root / "cora" / "cora.zip", cfg.root / "cora" / "cora.pt"]
    if cfg.custom is None:
        raise DatasetError("dataset.name is 'custom' but dataset.custom (the file paths) is not set")
    return [cfg.custom.nodes, cfg.custom.edges, cfg.custom.classes]


def load_dataset(cfg: DatasetConfig, seeds: list[int]) -> TAGraph:
    """Load the dataset ``cfg`` names, with TAPE's split for each seed.

    Raises:
        DatasetError: missing or invalid input files (the message names file and row).
    """
    if cfg.name == "cora":
        from tag_pipeline.datasets.cora import load_cora

        graph = load_cora(cfg.root / "cora", seeds=seeds)
    else:
        from tag_pipeline.datasets.custom import load_custom

        c = cfg.custom
        if c is None:
            raise DatasetError("dataset.name is 'custom' but dataset.custom (the file paths) is not set")
        graph = load_custom(
            c.nodes, c.edges, c.classes, name="custom", id_col=c.id_col, text_col=c.text_col,
            label_col=c.label_col, undirected=c.undirected, seeds=seeds,
        )
    if cfg.subset is not None and cfg.subset < graph.num_nodes:
        graph = graph.subgraph(np.arange(cfg.subset))
    return graph


def graph_key(cfg: DatasetConfig, seeds: list[int]) -> str:
    """Lineage key of the graph artifact: raw file contents, dataset options, seeds.

    Raises:
        DatasetError: a raw input file is missing (the message names it).
    """
    opts = cfg.model_dump(mode="json", exclude={"root"})
    if cfg.custom is not None:
        opts["custom"] = cfg.custom.model_dump(mode="json", exclude={"nodes", "edges", "classes"})
    try:
        digest = lake.files_digest(raw_inputs(cfg))
    except FileNotFoundError as e:
        raise DatasetError(str(e)) from e
    return lake.config_hash(GRAPH_STAGE_VERSION, opts, sorted(seeds), digest)


def materialize_graph(cfg: DatasetConfig, seeds: list[int], lake_root: Path) -> Path:
    """Load the dataset and commit it to ``<lake>/<name>/graph/<key>`` unless already there.

    Returns:
        The artifact directory (nodes/edges/classes/splits Parquet and a manifest).
    """
    path = lake.artifact_dir(lake_root, cfg.name, "graph", graph_key(cfg, seeds))
    if lake.find_artifact(path) is not None:
        return path
    graph = load_dataset(cfg, seeds)
    with lake.write_artifact(
        path,
        stage="graph",
        config=cfg,
        inputs={str(p): "raw" for p in raw_inputs(cfg)},
        rows=graph.num_nodes,
        extra={"num_edges": graph.num_edges, "num_classes": graph.num_classes, "seeds": sorted(seeds)},
    ) as tmp:
        write_graph(graph, tmp)
    return path


def open_graph(path: Path) -> TAGraph:
    """Read a committed graph artifact (verified against its manifest)."""
    art = lake.read_artifact(path)
    return read_graph(art.path, name=Path(path).parents[1].name)


__all__ = [
    "DatasetError", "Split", "TAGraph", "load_dataset", "materialize_graph", "open_graph",
    "read_graph", "tape_random_split", "write_graph",
]
