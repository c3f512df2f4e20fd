"""Full-batch transductive training of one node classifier, with early stopping.

Adam on cross-entropy over the seed's train nodes; after every epoch the model is evaluated
on all nodes, and the epoch with the best validation accuracy (earliest on ties) is kept:
its logits and weights are returned. Test accuracy is reported, never used for a choice.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tag_pipeline import lake
from tag_pipeline.config import GNNConfig
from tag_pipeline.datasets.base import Split
from tag_pipeline.hardware import available_cores, torch_threads
from tag_pipeline.models import build_model, graph_operator


@dataclass
class TrainResult:
    """Outcome of one training run.

    Attributes:
        logits: ``[N, C]`` float32 logits of every node at the best epoch.
        state_dict: model weights at the best epoch.
        best_epoch: 1-based epoch with the best validation accuracy.
        epochs_run: epochs trained before early stopping (or ``epochs``).
        train_acc, val_acc, test_acc: accuracies at the best epoch, in ``[0, 1]``.
        seconds: wall time of the training loop, seconds.
    """

    logits: torch.Tensor
    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    epochs_run: int
    train_acc: float
    val_acc: float
    test_acc: float
    seconds: float


def accuracy(logits: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> float:
    """Fraction of nodes in ``index`` whose arg-max logit equals ``y`` (0.0 if empty)."""
    if index.numel() == 0:
        return 0.0
    return (logits[index].argmax(-1) == y[index]).float().mean().item()


def train_node_classifier(
    model_name: str,
    x: torch.Tensor,
    edge_index: torch.Tensor,
    y: torch.Tensor,
    split: Split,
    cfg: GNNConfig,
    *,
    seed: int,
    num_classes: int,
    topk: int | None = None,
    show_progress: bool = False,
) -> TrainResult:
    """Train ``model_name`` on one feature and one split.

    Args:
        model_name: ``mlp``, ``gcn`` or ``sage``.
        x: ``[N, F]`` float32 features, or ``[N, k]`` int64 ranked labels (P) with ``topk``.
        edge_index: ``[2, E]`` int64.
        y: ``[N]`` int64 labels.
        split: train/val/test node indices.
        cfg: hyper-parameters (layers, hidden, dropout, lr, weight decay, epochs, patience).
        seed: seeds ``torch`` before the weights are initialised.
        num_classes: C.
        topk: k of the P feature, or ``None`` for dense features.
        show_progress: draw a tqdm bar over epochs.

    Returns:
        :class:`TrainResult` at the epoch of best validation accuracy.
    """
    with torch_threads(cfg.threads):
        return _train(model_name, x, edge_index, y, split, cfg, seed, num_classes, topk, show_progress)


def classifier_for(model_name: str, in_channels: int, num_classes: int, cfg: GNNConfig, topk: int | None = None):
    """The (untrained) node classifier ``cfg`` describes for ``model_name``: what
    :func:`train_node_classifier` trains, and what a training run's weights load into."""
    return build_model(
        model_name,
        in_channels,
        num_classes,
        hidden=cfg.hidden,
        num_layers=cfg.layers_for(model_name),
        dropout=cfg.dropout,
        topk=topk,
        adjacency=cfg.adjacency,
    )


def _train(model_name, x, edge_index, y, split, cfg, seed, num_classes, topk, show_progress) -> TrainResult:
    torch.manual_seed(seed)
    model = classifier_for(model_name, x.shape[1], num_classes, cfg, topk)
    edge_index = graph_operator(model_name, edge_index, x.shape[0], cfg.adjacency)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_idx, val_idx, test_idx = (torch.from_numpy(p) for p in (split.train, split.val, split.test))
    best = (-1.0, 0, None, None)  # val_acc, epoch, logits, state
    since_best = 0
    start = time.perf_counter()
    epoch = 0
    for epoch in tqdm(range(1, cfg.epochs + 1), disable=not show_progress, desc=model_name, leave=False):
        model.train()
        opt.zero_grad()
        out = model(x, edge_index)
        loss = F.cross_entropy(out[train_idx], y[train_idx])
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            logits = model(x, edge_index)
        val = accuracy(logits, y, val_idx)
        if val > best[0]:
            best = (val, epoch, logits.detach().clone(), copy.deepcopy(model.state_dict()))
            since_best = 0
        else:
            since_best += 1
            if since_best >= cfg.patience:
                break
    seconds = time.perf_counter() - start
    val_acc, best_epoch, logits, state = best
    return TrainResult(
        logits=logits,
        state_dict=state,
        best_epoch=best_epoch,
        epochs_run=epoch,
        train_acc=accuracy(logits, y, train_idx),
        val_acc=val_acc,
        test_acc=accuracy(logits, y, test_idx),
        seconds=seconds,
    )


# --- the training stage in the lake -------------------------------------------------------

TRAIN_STAGE_VERSION = 1
#: The training stage: ``<lake>/<dataset>/train/<model>-<feature>-s<seed>-<key>``.
TRAIN_STAGE = lake.Stage("train", TRAIN_STAGE_VERSION, code=("tag_pipeline.train", "tag_pipeline.models"))
#: Graphs this large show a progress bar over epochs by default (see :func:`materialize_training_run`).
PROGRESS_MIN_NODES = 20_000
PREDICTIONS_FILE = "predictions.parquet"
WEIGHTS_FILE = "weights.safetensors"


def predictions_frame(logits: torch.Tensor, y: torch.Tensor, split: Split) -> "pl.DataFrame":
    """Per-node predictions: ``node_id``, ``split``, ``label``, ``pred``, ``logits`` ``[C]`` float32."""
    import numpy as np
    import polars as pl

    n = logits.shape[0]
    part = np.full(n, "", dtype=object)
    for name in ("train", "val", "test"):
        part[split.part(name)] = name
    return pl.DataFrame(
        {
            "node_id": np.arange(n, dtype=np.int64),
            "split": part.tolist(),
            "label": y.numpy().astype(np.int64),
            "pred": logits.argmax(-1).numpy().astype(np.int64),
            "logits": logits.float().numpy(),
        }
    )


def read_logits(path: "Path") -> torch.Tensor:
    """``[N, C]`` float32 logits from a training or ensemble artifact, rows in node order."""
    import polars as pl

    df = pl.read_parquet(path / PREDICTIONS_FILE).sort("node_id")
    return torch.from_numpy(df["logits"].to_numpy().astype("float32"))


def run_summary(path: "Path") -> dict:
    """The summary a training or ensemble artifact's manifest carries (metrics, identity)."""
    return dict(lake.read_artifact(path, verify=False).manifest["summary"], path=str(path))


def training_key(graph_name: str, feature_name: str, model_name: str, seed: int, cfg: GNNConfig) -> str:
    """Lineage key of one training run: stage version, graph (content and this seed's split:
    ``graph_name``) and feature artifact names, model,
    seed and the GNN settings that decide its result. ``threads`` and ``adjacency`` (how fast,
    not what) are left out, and of ``num_layers`` only this model's depth counts, so setting
    another model's depth retrains nothing else."""
    fields = cfg.model_dump(exclude={"threads", "workers", "adjacency", "num_layers"}) | {"num_layers": cfg.layers_for(model_name)}
    return TRAIN_STAGE.key(graph_name, feature_name, model_name, seed, fields)


def materialize_training_run(
    graph_path: "Path",
    feature_path: "Path",
    feature: str,
    model_name: str,
    seed: int,
    cfg: GNNConfig,
    lake_root: "Path",
    progress: bool | None = None,
) -> dict:
    """Train one (model, feature, seed) unless its artifact exists; return its summary.

    The artifact ``<lake>/<dataset>/train/<model>-<feature>-s<seed>-<key>`` holds
    ``predictions.parquet`` (see :func:`predictions_frame`), ``weights.safetensors`` (the
    best epoch's state dict) and a manifest whose ``summary`` has the accuracies.
    ``progress`` draws a bar over epochs; ``None`` draws it for graphs of at least
    :data:`PROGRESS_MIN_NODES` nodes, where an epoch takes seconds (ogbn-arxiv: ~4-20 s on
    2 cores), not for Cora-size runs that finish in a second or two.

    Returns:
        dict with ``model``, ``feature``, ``seed``, ``best_epoch``, ``epochs_run``,
        ``train_acc``, ``val_acc``, ``test_acc``, ``seconds`` and ``path``.

    Raises:
        ValueError: the graph artifact has no split for ``seed``.
    """
    from pathlib import Path

    from safetensors.torch import save_file

    from tag_pipeline.datasets import check_split, graph_content_key, open_graph, split_key
    from tag_pipeline.features.store import read_feature

    graph_path, feature_path = Path(graph_path), Path(feature_path)
    graph_id = f"{graph_content_key(graph_path)}-{split_key(graph_path, seed)}"
    key = training_key(graph_id, feature_path.name, model_name, seed, cfg)
    path = TRAIN_STAGE.path(lake_root, lake.dataset_of(graph_path), key, prefix=f"{model_name}-{feature}-s{seed}-")

    def build() -> lake.Built:
        graph = open_graph(graph_path)
        check_split(graph.splits[seed], seed, graph.name, graph.num_nodes)
        lake.read_artifact(feature_path)
        x = read_feature(feature_path, graph.num_nodes)
        y = torch.from_numpy(graph.labels)
        edge_index = torch.from_numpy(graph.edge_index)
        split = graph.splits[seed]
        result = train_node_classifier(
            model_name, x, edge_index, y, split, cfg, seed=seed, num_classes=graph.num_classes,
            topk=x.shape[1] if feature == "P" else None,
            show_progress=graph.num_nodes >= PROGRESS_MIN_NODES if progress is None else progress,
        )
        summary = {
            "model": model_name, "feature": feature, "seed": seed, "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run, "train_acc": result.train_acc, "val_acc": result.val_acc,
            "test_acc": result.test_acc, "seconds": result.seconds,
        }

        def write(tmp: Path) -> None:
            predictions_frame(result.logits, y, split).write_parquet(tmp / PREDICTIONS_FILE)
            save_file({k: v.contiguous() for k, v in result.state_dict.items()}, str(tmp / WEIGHTS_FILE))

        return lake.Built(
            write=write, config=cfg, inputs={"graph": str(graph_path), "features": str(feature_path)},
            rows=graph.num_nodes, extra={"summary": summary},
        )

    return TRAIN_STAGE.materialize(path, build, read=run_summary)


def training_run_in_lake(
    graph_path: "Path", feature_path: "Path", feature: str, model_name: str, seed: int, cfg: GNNConfig,
    lake_root: "Path",
) -> bool:
    """Whether :func:`materialize_training_run` (same arguments) would return at once, its
    artifact committed and intact in the lake, instead of training.

    A probe that never trains or writes: any error (a graph artifact gone, a seed without a
    split) answers ``False``, left for the real call to report. Like the real call, it moves
    a corrupt artifact aside.
    """
    try:
        with lake.lookup_only("only asking whether the run is in the lake"):
            materialize_training_run(graph_path, feature_path, feature, model_name, seed, cfg, lake_root, progress=False)
    except Exception:
        return False
    return True


# --- how many training runs at once -------------------------------------------------------


def training_workers(workers: int | None, threads: int | None, runs: int, cores: int | None = None) -> int:
    """Training runs to run at once: ``GNNConfig.workers`` resolved for this machine.

    Each run gets a process of its own with ``threads`` torch threads, so the cores are shared
    out as ``cores // threads`` processes; there is no point in more processes than runs.
    Results do not depend on the answer (every run seeds torch itself), only the wall time.

    Args:
        workers (int, optional): ``GNNConfig.workers``: processes asked for, or ``None`` for
            as many as the cores hold.
        threads (int, optional): ``GNNConfig.threads``: torch threads per run; ``None`` is
            torch's default (a thread per core), which leaves room for one run at a time.
        runs (int): training runs to do.
        cores (int, optional): CPU cores to share out; ``None`` = :func:`available_cores`.

    Returns:
        int: ``workers``, or ``cores // threads`` when it is ``None``; at most ``runs`` and
        at least 1 (1 = one run after another in the caller's process).

    Raises:
        ValueError: ``workers``, ``threads`` or ``cores`` below 1, or ``runs`` below 0.
    """
    if (workers is not None and workers < 1) or (threads is not None and threads < 1) or runs < 0:
        raise ValueError(f"need workers >= 1, threads >= 1, runs >= 0; got {workers}, {threads}, {runs}")
    if workers is None:
        cores = available_cores() if cores is None else cores
        if cores < 1:
            raise ValueError(f"cores must be >= 1, got {cores}")
        workers = cores // threads if threads is not None else 1
    return max(1, min(workers, runs))
