"""Inference with trained runs of the lake: rebuild a model, time its forward pass, read its
hidden layer. Used by GALLON (teacher representations, inference time), the leaderboard
(inference ms per node of every method, measured side by side) and prediction for new nodes.

This module knows training runs (``train``) and h_TAPE ensembles (``ensemble``) and imports
no method: it sits below them (GALLON imports it). How to time a method's own artifact (a
GALLON student) is handed to :func:`run_forward_ms_per_node` by its caller (``timers``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: ``timer(run_path, graph, repeats) -> ms per node`` of one artifact (see :func:`run_forward_ms_per_node`).
ForwardTimer = Callable[[str, Any, int], float]


def forward_ms_per_node(fn, num_nodes: int, repeats: int) -> float:
    """Median wall time of ``fn()`` (a full-batch forward pass, no gradients) per node, in
    milliseconds, over ``repeats`` calls after one warm-up call."""
    import statistics

    import torch

    with torch.inference_mode():
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / max(num_nodes, 1)


def load_trained_model(run_path: str | Path, graph, *, threads: int | None = None):
    """A training run's model with its best-epoch weights, ready for inference.

    Returns:
        ``(model, x, operator)``: the :class:`~tag_pipeline.models.NodeClassifier` in eval mode,
        its input feature ``[N, F]`` (or ``[N, k]`` for P) read from the run's feature artifact,
        and what it is called with for the graph (:func:`~tag_pipeline.models.graph_operator`).
    """
    import torch
    from safetensors.torch import load_file

    from tag_pipeline import lake
    from tag_pipeline.config import GNNConfig
    from tag_pipeline.features.store import read_feature
    from tag_pipeline.models import graph_operator
    from tag_pipeline.train import WEIGHTS_FILE, classifier_for

    art = lake.read_artifact(run_path, verify=False)
    summary = art.manifest["summary"]
    cfg = GNNConfig.model_validate(art.manifest["config"])
    x = read_feature(Path(art.manifest["inputs"]["features"]), graph.num_nodes)
    model_name = summary["model"]
    model = classifier_for(model_name, x.shape[1], graph.num_classes, cfg, x.shape[1] if summary["feature"] == "P" else None)
    model.load_state_dict(load_file(str(Path(run_path) / WEIGHTS_FILE)))
    model.eval()
    op = graph_operator(model_name, torch.from_numpy(graph.edge_index), graph.num_nodes, cfg.adjacency)
    return model, x, op


def hidden_representation(model, x, op):
    """``[N, H]`` input of the model's last layer (its last hidden representation), no gradient.

    Raises:
        ValueError: a model without a PyG ``convs`` or ``lins`` list (e.g. RevGAT).
    """
    import torch

    layers = getattr(model.backbone, "convs", None) or getattr(model.backbone, "lins", None)
    if not layers:
        raise ValueError(f"representation alignment needs a PyG GCN/SAGE/MLP teacher, not {type(model.backbone).__name__}")
    seen = {}
    handle = layers[-1].register_forward_pre_hook(lambda mod, args: seen.__setitem__("h", args[0]))
    try:
        with torch.no_grad():
            model(x, op)
    finally:
        handle.remove()
    return seen["h"].detach()


def run_forward_ms_per_node(
    run_path: str | Path, graph, repeats: int = 20, *, timers: Mapping[str, ForwardTimer] | None = None
) -> float:
    """Inference ms per node of a training run (:func:`forward_ms_per_node` of its model on
    the whole graph), of an h_TAPE ensemble (the sum over its members: each runs once), or of
    an artifact of another stage timed by ``timers[stage]`` (a GALLON artifact: its student,
    on its features only).

    Args:
        run_path: the artifact (its manifest's ``stage`` says which kind).
        graph: the dataset's graph (``num_nodes``, ``num_classes``, ``edge_index``).
        repeats: timed forward passes (after one warm-up). (default: ``20``)
        timers: ``{stage: timer(run_path, graph, repeats)}`` for the stages of methods, which
            own their models (the leaderboard passes GALLON's); ``train`` and ``ensemble``
            need none. (default: none)

    Raises:
        KeyError: a stage that is neither ``train``, ``ensemble`` nor in ``timers``.
        FileNotFoundError: not an artifact.
    """
    from tag_pipeline import lake

    timers = timers or {}
    manifest = lake.read_artifact(run_path, verify=False).manifest
    stage = manifest.get("stage")
    if stage in timers:
        return timers[stage](str(run_path), graph, repeats)
    if stage == "ensemble":
        return sum(run_forward_ms_per_node(p, graph, repeats, timers=timers) for p in manifest["inputs"].values())
    if stage != "train":
        raise KeyError(
            f"{run_path}: cannot time a {stage!r} artifact here (train and ensemble runs, or stages "
            f"given in timers: {sorted(timers)})"
        )
    model, x, op = load_trained_model(run_path, graph)
    return forward_ms_per_node(lambda: model(x, op), graph.num_nodes, repeats)
