"""The stack's maths (:func:`ensemble_selection`) and lake stage: one seed's stack at
``<lake>/<dataset>/stack/s<seed>-<key>``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tag_pipeline import lake
from tag_pipeline.methods.stack.config import StackMethod

STACK_STAGE_VERSION = 1
#: One seed's stack: ``<lake>/<dataset>/stack/s<seed>-<key>``.
STACK_STAGE = lake.Stage(
    "stack",
    STACK_STAGE_VERSION,
    code=(
        "tag_pipeline.methods.stack",  # its package: config, candidates, ensemble selection
        "tag_pipeline.train",  # accuracy, predictions_frame
    ),
)
PREDICTIONS = "predictions.parquet"


def candidate_files(summaries: Sequence[Mapping]) -> list[dict[str, str]]:
    """The distinct stored predictors among run summaries, in their order.

    A summary's predictor is ``<path>/<variant>_predictions.parquet`` where its artifact holds
    one (GALLON's ``mlp`` and ``lm_teacher``, GLEM's ``lm`` and ``gnn``; ``-`` read as ``_``),
    else ``<path>/predictions.parquet`` (a TAPE training or h_TAPE run, GALLON's student,
    GLEM's choice, LEADING). A file is listed once, under its first summary (GALLON's
    ``gnn-teacher`` row points at the student's artifact: its h_TAPE is TAPE's own candidate);
    a summary whose artifact has no such file is left out.

    Args:
        summaries: run summaries (``method``, ``model``, ``variant``, ``lm``, ``path``).

    Returns:
        ``[{"label": "<method>:<model>:<variant>:<lm>", "file": str}, ...]``.
    """
    out, seen = [], set()
    for s in summaries:
        folder = Path(str(s["path"]))
        own = folder / f"{str(s['variant']).replace('-', '_')}_predictions.parquet"
        file = own if own.exists() else folder / PREDICTIONS
        if not file.exists() or file in seen:
            continue
        seen.add(file)
        label = f"{s.get('method', 'tape')}:{s['model']}:{s['variant']}:{s.get('lm', 'frozen')}"
        out.append({"label": label, "file": str(file)})
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[n, C]`` logits (float64, max-shifted)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def ensemble_selection(probs: np.ndarray, labels: np.ndarray, rounds: int) -> np.ndarray:
    """Caruana et al.'s forward selection with replacement (ICML 2004, Sec. 2) on one held-out set.

    Each round adds the candidate whose addition to the running average of probabilities gives
    the highest accuracy on ``labels`` (ties: lower mean negative log-likelihood, then the
    lower index). After ``rounds`` additions the prefix with the best (accuracy, -NLL) is kept.

    Args:
        probs: ``[K, n, C]`` float class probabilities of ``K`` candidates on the ``n`` held-out nodes.
        labels: ``[n]`` int class labels of those nodes.
        rounds: additions at most (``>= 1``).

    Returns:
        ``[K]`` int64 selection counts (the ensemble's weights, up to their sum ``>= 1``).

    Raises:
        ValueError: no candidates, no held-out node, mismatched shapes, or ``rounds < 1``.
    """
    if probs.ndim != 3 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"ensemble_selection needs [K >= 1, n >= 1, C] probabilities, got {probs.shape}")
    if labels.shape != (probs.shape[1],):
        raise ValueError(f"labels {labels.shape} do not match {probs.shape[1]} held-out nodes")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    k, n, _ = probs.shape
    rows = np.arange(n)
    total = np.zeros(probs.shape[1:], dtype=np.float64)
    counts = np.zeros(k, dtype=np.int64)
    best, best_counts = None, None
    for r in range(1, rounds + 1):
        trial = (total[None] + probs) / r  # [K, n, C]: each candidate added
        acc = (trial.argmax(axis=2) == labels[None]).mean(axis=1)
        nll = -np.log(np.clip(trial[:, rows, labels], 1e-12, None)).mean(axis=1)
        i = int(np.lexsort((np.arange(k), nll, -acc))[0])  # best accuracy, then NLL, then index
        total += probs[i]
        counts[i] += 1
        score = (float(acc[i]), -float(nll[i]))
        if best is None or score > best:
            best, best_counts = score, counts.copy()
    return best_counts


def _read(file: str) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [N, C] float32, split [N] str)`` of a predictions file, in node order (labels
    come from the graph, not from the members' files)."""
    import polars as pl

    df = pl.read_parquet(file, columns=["node_id", "split", "logits"]).sort("node_id")
    return df["logits"].to_numpy().astype(np.float32), df["split"].to_numpy()


def stack_path(graph_path: str | Path, seed: int, candidates: Sequence[Mapping[str, str]], cfg: StackMethod,
               lake_root: str | Path) -> Path:
    """Lake path of one seed's stack: its key hashes the graph's content and split, the seed,
    the config and the candidates in order (stage folder, artifact name (which carries the
    member's own lineage key) and file)."""
    from tag_pipeline.datasets import graph_content_key, split_key

    graph_path = Path(graph_path)
    members = [(c["label"], "/".join(Path(c["file"]).parts[-3:])) for c in candidates]
    key = STACK_STAGE.key(f"{graph_content_key(graph_path)}-{split_key(graph_path, seed)}", seed,
                          cfg.key_fields(), members)
    return STACK_STAGE.path(lake_root, lake.dataset_of(graph_path), key, prefix=f"s{seed}-")


def materialize_stack(graph_path: str | Path, seed: int, candidates: Sequence[Mapping[str, str]], cfg: StackMethod,
                      lake_root: str | Path) -> list[dict]:
    """One seed's stack unless in the lake: ``predictions.parquet`` (log of the selected
    candidates' averaged probabilities as ``logits``) and a manifest with the weights per
    candidate and a ``summaries`` row (variant ``stack``; its ``val_acc`` was fit on).

    Args:
        graph_path: graph artifact directory.
        seed: the split's seed; every candidate must be of it.
        candidates: :func:`candidate_files` of the members' summaries of this seed.
        cfg: the stack's config.
        lake_root: lake root.

    Returns:
        the summary dicts (one), each with the artifact's ``path``.

    Raises:
        ValueError: no candidates, or a candidate of another graph size or split (named).
    """
    from tag_pipeline.datasets import check_split, open_graph

    if not candidates:
        raise ValueError(f"the stack of seed {seed} has no candidate with stored predictions")
    graph_path = Path(graph_path)
    path = stack_path(graph_path, seed, candidates, cfg, lake_root)

    def build() -> lake.Built:
        import torch

        from tag_pipeline.train import accuracy, predictions_frame

        graph = open_graph(graph_path)
        split = graph.splits[seed]
        check_split(split, seed, graph.name, graph.num_nodes)
        want = np.full(graph.num_nodes, "", dtype=object)
        for part in ("train", "val", "test"):
            want[split.part(part)] = part
        probs = []
        for c in candidates:
            logits, parts = _read(c["file"])
            if logits.shape[0] != graph.num_nodes or not np.array_equal(parts.astype(object), want):
                raise ValueError(f"{c['file']}: its {logits.shape[0]} nodes' split is not seed {seed}'s split of "
                                 f"{graph_path} ({graph.num_nodes} nodes); a stack combines one seed's predictors")
            probs.append(softmax(logits))
        stacked = np.stack(probs)  # [K, N, C]
        labels = np.asarray(graph.labels, dtype=np.int64)
        val = split.val
        counts = ensemble_selection(stacked[:, val], labels[val], cfg.rounds)  # validation nodes only
        weights = counts / counts.sum()
        mixed = np.tensordot(weights, stacked, axes=1)  # [N, C]
        logits = torch.from_numpy(np.log(np.clip(mixed, 1e-12, None)).astype(np.float32))
        y = torch.from_numpy(labels)
        row = {"method": "stack", "model": "stack", "variant": "stack", "feature": "stack", "seed": seed,
               "val_acc": accuracy(logits, y, torch.from_numpy(val)),
               "test_acc": accuracy(logits, y, torch.from_numpy(split.test)),
               "members": {c["label"]: float(w) for c, w in zip(candidates, weights, strict=True) if w > 0}}
        return lake.Built(
            write=lambda tmp: predictions_frame(logits, y, split).write_parquet(tmp / PREDICTIONS),
            config=cfg.key_fields(), inputs={"graph": str(graph_path)} | {c["label"]: c["file"] for c in candidates},
            rows=graph.num_nodes, extra={"summaries": [row], "candidates": [c["label"] for c in candidates]},
        )

    return STACK_STAGE.materialize(path, build, read=lambda p: [
        dict(s, path=str(p)) for s in lake.read_artifact(p, verify=False).manifest["summaries"]])
