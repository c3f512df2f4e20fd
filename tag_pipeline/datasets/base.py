"""The in-memory text-attributed graph and its Parquet form in the lake.

A :class:`TAGraph` holds one node-classification dataset in TAPE's conventions: nodes
``0..N-1`` in the dataset's canonical order, integer labels indexing ``class_names``, a
directed ``edge_index`` (already symmetrised where the dataset is undirected), optional text
(title + abstract, the TA input) and a transductive split per seed.

Lake layout of a graph artifact (one directory, see :mod:`tag_pipeline.lake`):

- ``nodes.parquet``: ``node_id`` int64, ``source_id`` utf8 (the id in the raw data),
  ``text`` utf8 (nullable when the dataset has no text), ``label`` int64;
- ``edges.parquet``: ``src`` int64, ``dst`` int64;
- ``classes.parquet``: ``label`` int64, ``name`` utf8;
- ``splits.parquet``: ``seed`` int64, ``node_id`` int64, ``split`` utf8 (train/val/test).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

SPLIT_NAMES = ("train", "val", "test")


class DatasetError(ValueError):
    """Bad input data. The message names the file and, where there is one, the row."""


@dataclass(frozen=True)
class Split:
    """One transductive split: sorted int64 node indices per part."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def part(self, name: str) -> np.ndarray:
        """Indices of ``name`` in ``{"train", "val", "test"}``."""
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split part {name!r}; expected one of {SPLIT_NAMES}")
        return getattr(self, name)


def tape_random_split(num_nodes: int, seed: int) -> Split:
    """TAPE's random 60/20/20 split for one seed (cora, pubmed, arxiv_2023).

    Reproduces TAPE's ``np.random.seed(seed); np.random.shuffle(arange(n))`` exactly (the
    legacy global generator, which the recorded splits depend on), then takes the first
    ``int(0.6 n)`` nodes for train, the next ``int(0.8 n) - int(0.6 n)`` for validation and
    the rest for test, each sorted.

    Args:
        num_nodes: N, number of nodes.
        seed: the seed (TAPE uses 0-3).

    Returns:
        Split with int64 index arrays; for cora, seed 0: sizes 1624/542/542.
    """
    rng = np.random.RandomState(seed)  # identical stream to np.random.seed(seed)
    idx = np.arange(num_nodes)
    rng.shuffle(idx)
    a, b = int(0.6 * num_nodes), int(0.8 * num_nodes)
    return Split(
        train=np.sort(idx[:a]).astype(np.int64),
        val=np.sort(idx[a:b]).astype(np.int64),
        test=np.sort(idx[b:]).astype(np.int64),
    )


def low_label_split(labels: np.ndarray, seed: int, train_per_class: int = 20, num_val: int = 500,
                    num_test: int = 1000) -> Split:
    """The low-label (Planetoid-style) random split of one seed, drawn by PyG's ``RandomNodeSplit``.

    Per class ``train_per_class`` random train nodes (every node of a smaller class), then
    ``num_val`` validation and ``num_test`` test nodes at random from the rest (Yang et al.,
    ICML 2016; PyG's ``split="random"``). Drawn from torch's generator seeded with ``seed``
    inside ``torch.random.fork_rng``, so the caller's random state is untouched and the same
    seed gives the same split on every machine (CPU generator).

    Args:
        labels: ``[N]`` integer labels in ``0..C-1``.
        seed: the seed of the split.
        train_per_class, num_val, num_test: the part sizes (nodes).

    Returns:
        Split with sorted int64 index arrays; for cora: 140/500/1,000.

    Raises:
        DatasetError: fewer nodes than the split needs (the message gives the sizes).
    """
    import torch
    from torch_geometric.data import Data
    from torch_geometric.transforms import RandomNodeSplit

    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    counts = torch.bincount(y)
    num_train = int(counts.clamp(max=train_per_class).sum())
    if y.numel() - num_train < num_val + num_test:
        raise DatasetError(
            f"low-label split of seed {seed}: {y.numel()} nodes leave {y.numel() - num_train} after "
            f"{num_train} train nodes ({train_per_class} per class), fewer than num_val {num_val} + "
            f"num_test {num_test}; lower dataset.low_label's sizes"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        data = RandomNodeSplit("random", num_train_per_class=train_per_class, num_val=num_val,
                               num_test=num_test)(Data(y=y, num_nodes=y.numel()))
    parts = (data.train_mask, data.val_mask, data.test_mask)
    return Split(*(m.nonzero().view(-1).numpy().astype(np.int64) for m in parts))


def unique_sorted_edges(edge_index: np.ndarray, num_nodes: int) -> np.ndarray:
    """Drop duplicate edges and sort by (source, target).

    Sorts the ``source * N + target`` keys rather than calling ``np.unique``, which is
    hash-based in numpy >= 2.3 and about 40x slower on millions of edges (ogbn-arxiv).

    Args:
        edge_index: ``[2, M]`` integer node indices in ``0..num_nodes-1``.
        num_nodes: N.

    Returns:
        ``[2, E]`` int64, unique, sorted by source then target.
    """
    src, dst = np.asarray(edge_index, dtype=np.int64).reshape(2, -1)
    n = np.int64(max(num_nodes, 1))
    keys = src * n + dst
    keys.sort()
    if keys.size:
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    return np.stack([keys // n, keys % n])


def symmetrize_edges(edge_index: np.ndarray, num_nodes: int) -> np.ndarray:
    """Add the reverse of every edge, drop duplicates and sort by (source, target).

    Returns:
        ``[2, E]`` int64, unique, symmetric, sorted by source then target.
    """
    edge_index = np.asarray(edge_index, dtype=np.int64).reshape(2, -1)
    return unique_sorted_edges(np.concatenate([edge_index, edge_index[::-1]], axis=1), num_nodes)


@dataclass
class TAGraph:
    """A text-attributed graph for node classification.

    Attributes:
        name: dataset name (``"cora"``...).
        class_names: ``[C]`` class names; label ``c`` means ``class_names[c]``.
        labels: ``[N]`` int64 labels in ``0..C-1``.
        edge_index: ``[2, E]`` int64, row 0 = source, row 1 = target.
        source_ids: ``[N]`` the node ids of the raw data, as strings.
        text: ``[N]`` title + abstract per node, or ``None`` where the dataset has none.
        splits: ``{seed: Split}``.
    """

    name: str
    class_names: list[str]
    labels: np.ndarray
    edge_index: np.ndarray
    source_ids: list[str]
    text: list[str] | None = None
    splits: dict[int, Split] = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subgraph(self, nodes: np.ndarray) -> "TAGraph":
        """The induced subgraph on ``nodes`` (relabelled ``0..len(nodes)-1``, order kept).

        Splits are restricted to the kept nodes. Used for the tiny profile and tests.
        """
        nodes = np.asarray(nodes, dtype=np.int64)
        remap = np.full(self.num_nodes, -1, dtype=np.int64)
        remap[nodes] = np.arange(len(nodes))
        src, dst = remap[self.edge_index[0]], remap[self.edge_index[1]]
        keep = (src >= 0) & (dst >= 0)
        splits = {
            s: Split(*(np.sort(remap[p][remap[p] >= 0]) for p in (sp.train, sp.val, sp.test)))
            for s, sp in self.splits.items()
        }
        return TAGraph(
            name=self.name,
            class_names=list(self.class_names),
            labels=self.labels[nodes].copy(),
            edge_index=np.stack([src[keep], dst[keep]]),
            source_ids=[self.source_ids[i] for i in nodes],
            text=[self.text[i] for i in nodes] if self.text is not None else None,
            splits=splits,
        )


def write_graph(graph: TAGraph, directory: Path) -> None:
    """Write ``graph`` as the four Parquet files of a graph artifact into ``directory``.

    Call inside :func:`tag_pipeline.lake.write_artifact` so the write is atomic.
    """
    n = graph.num_nodes
    pl.DataFrame(
        {
            "node_id": np.arange(n, dtype=np.int64),
            "source_id": graph.source_ids,
            "text": graph.text if graph.text is not None else [None] * n,
            "label": graph.labels.astype(np.int64),
        },
        schema={"node_id": pl.Int64, "source_id": pl.Utf8, "text": pl.Utf8, "label": pl.Int64},
    ).write_parquet(directory / "nodes.parquet")
    pl.DataFrame(
        {"src": graph.edge_index[0].astype(np.int64), "dst": graph.edge_index[1].astype(np.int64)}
    ).write_parquet(directory / "edges.parquet")
    pl.DataFrame(
        {"label": np.arange(graph.num_classes, dtype=np.int64), "name": graph.class_names}
    ).write_parquet(directory / "classes.parquet")
    rows = [
        pl.DataFrame(
            {
                "seed": np.full(len(idx), seed, dtype=np.int64),
                "node_id": idx.astype(np.int64),
                "split": [part] * len(idx),
            }
        )
        for seed, sp in sorted(graph.splits.items())
        for part in SPLIT_NAMES
        for idx in [sp.part(part)]
    ]
    splits = (
        pl.concat(rows)
        if rows
        else pl.DataFrame(schema={"seed": pl.Int64, "node_id": pl.Int64, "split": pl.Utf8})
    )
    splits.write_parquet(directory / "splits.parquet")


def read_splits(directory: Path) -> dict[int, Split]:
    """``{seed: Split}`` from a graph artifact's ``splits.parquet`` (node ids sorted, int64)."""
    splits_df = pl.read_parquet(Path(directory) / "splits.parquet")
    splits = {}
    for seed in sorted(splits_df["seed"].unique().to_list()):
        sub = splits_df.filter(pl.col("seed") == seed)
        parts = [
            np.sort(sub.filter(pl.col("split") == p)["node_id"].to_numpy()).astype(np.int64)
            for p in SPLIT_NAMES
        ]
        splits[int(seed)] = Split(*parts)
    return splits


def read_graph(directory: Path, name: str) -> TAGraph:
    """Read a graph artifact written by :func:`write_graph`."""
    nodes = pl.read_parquet(directory / "nodes.parquet").sort("node_id")
    edges = pl.read_parquet(directory / "edges.parquet")
    classes = pl.read_parquet(directory / "classes.parquet").sort("label")
    splits = read_splits(directory)
    text = nodes["text"].to_list()
    return TAGraph(
        name=name,
        class_names=classes["name"].to_list(),
        labels=nodes["label"].to_numpy().astype(np.int64),
        edge_index=np.stack([edges["src"].to_numpy(), edges["dst"].to_numpy()]).astype(np.int64),
        source_ids=nodes["source_id"].to_list(),
        text=None if all(t is None for t in text) else text,
        splits=splits,
    )
