"""h_TAPE: the ensemble of the per-feature node classifiers (TAPE, Sec. 4.4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tag_pipeline import lake


def ensemble_logits(outputs: Sequence[torch.Tensor], mode: str = "logits") -> torch.Tensor:
    """Average the outputs of models trained on different features.

    TAPE averages the predictions of the TA, E and P models; ``mode`` chooses whether the raw
    logits (TAPE) or the softmax probabilities are averaged.

    Args:
        outputs: ``M`` tensors of shape ``[N, C]`` (float logits).
        mode: ``"logits"`` or ``"probs"``.

    Returns:
        ``[N, C]`` float32 scores; the arg-max is the ensemble's prediction.

    Raises:
        ValueError: no outputs, mismatched shapes, or an unknown ``mode``.
    """
    if not outputs:
        raise ValueError("ensemble of zero models")
    shapes = {tuple(o.shape) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"outputs differ in shape: {sorted(shapes)}")
    if mode == "logits":
        stacked = torch.stack([o.float() for o in outputs])
    elif mode == "probs":
        stacked = torch.stack([o.float().softmax(-1) for o in outputs])
    else:
        raise ValueError(f"unknown ensemble mode {mode!r}; expected 'logits' or 'probs'")
    return stacked.mean(0)


ENSEMBLE_STAGE_VERSION = 1
#: The h_TAPE stage: ``<lake>/<dataset>/ensemble/<model>-TAPE-s<seed>-<key>`` (its predictions
#: are written by :func:`tag_pipeline.train.predictions_frame`, hence that module too).
ENSEMBLE_STAGE = lake.Stage("ensemble", ENSEMBLE_STAGE_VERSION, code=("tag_pipeline.ensemble", "tag_pipeline.train"))


def materialize_ensemble(graph_path, runs: Sequence[dict], mode: str, lake_root) -> dict:
    """h_TAPE for one (model, seed): average the feature models' outputs, score and commit.

    Args:
        graph_path: graph artifact directory (labels and split).
        runs: summaries of the training runs to combine (same model and seed; from
            :func:`tag_pipeline.train.materialize_training_run`).
        mode: ``"logits"`` or ``"probs"`` (see :func:`ensemble_logits`).
        lake_root: root of the lake.

    Returns:
        summary dict with ``model``, ``feature`` (``"TAPE"``), ``seed``, ``features``,
        ``val_acc``, ``test_acc``, ``path``.

    Raises:
        ValueError: runs of different models or seeds.
    """
    from pathlib import Path

    from tag_pipeline.datasets import open_graph
    from tag_pipeline.train import PREDICTIONS_FILE, accuracy, predictions_frame, read_logits, run_summary

    if len({(r["model"], r["seed"]) for r in runs}) != 1:
        raise ValueError(f"ensemble over different models or seeds: {[(r['model'], r['seed']) for r in runs]}")
    graph_path = Path(graph_path)
    model, seed = runs[0]["model"], runs[0]["seed"]
    members = sorted(runs, key=lambda r: r["feature"])
    key = ENSEMBLE_STAGE.key([Path(r["path"]).name for r in members], mode)
    path = ENSEMBLE_STAGE.path(lake_root, lake.dataset_of(graph_path), key, prefix=f"{model}-TAPE-s{seed}-")

    def build() -> lake.Built:
        graph = open_graph(graph_path)
        split = graph.splits[seed]
        y = torch.from_numpy(graph.labels)
        scores = ensemble_logits([read_logits(Path(r["path"])) for r in members], mode)
        summary = {
            "model": model, "feature": "TAPE", "seed": seed, "features": [r["feature"] for r in members],
            "mode": mode,
            "train_acc": accuracy(scores, y, torch.from_numpy(split.train)),
            "val_acc": accuracy(scores, y, torch.from_numpy(split.val)),
            "test_acc": accuracy(scores, y, torch.from_numpy(split.test)),
        }
        return lake.Built(
            write=lambda tmp: predictions_frame(scores, y, split).write_parquet(tmp / PREDICTIONS_FILE),
            config={"mode": mode}, inputs={r["feature"]: r["path"] for r in members}, rows=graph.num_nodes,
            extra={"summary": summary},
        )

    return ENSEMBLE_STAGE.materialize(path, build, read=run_summary)
