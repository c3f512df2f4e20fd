"""The ``tag`` flow: TAPE end to end (graph -> LLM -> features -> GNNs -> h_TAPE -> report).

Deployed as ``tag/full`` (see ``prefect.yaml``); run in-process by the ``tag`` command line.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Literal

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tag_pipeline.config import (
    DatasetConfig,
    Feature,
    GNNConfig,
    LLMConfig,
    FinetuneConfig,
    LMConfig,
    ModelName,
    PipelineConfig,
    ScaleOutConfig,
    Stage,
    StartStage,
)
from tag_pipeline.datasets import feature_availability
from flows.fanout import fan_out_embedding, fan_out_llm
from tasks.data import load_graph
from tasks.features import build_prediction_feature, embed_text, finetune_lm
from tasks.llm import query_llm
from tasks.report import report
from tasks.train import ensemble as ensemble_task
from tasks.train import train_gnn_runs


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


@flow(name="tag", log_prints=True)
def tag(
    dataset: DatasetConfig = DatasetConfig(),
    features: list[Feature] = ["TA", "E", "P"],
    models: list[ModelName] = ["mlp", "gcn", "sage"],
    seeds: list[int] = [0, 1, 2, 3],
    llm: LLMConfig = LLMConfig(),
    lm: LMConfig = LMConfig(),
    lm_modes: list[Literal["frozen", "finetuned"]] = ["frozen"],
    finetune: FinetuneConfig = FinetuneConfig(),
    scale_out: ScaleOutConfig = ScaleOutConfig(),
    gnn: GNNConfig = GNNConfig(),
    ensemble: Literal["logits", "probs"] = "logits",
    lake: str = "data/lake",
    stop_after: Stage = "report",
    start_at: StartStage = "graph",
) -> dict:
    """Reproduce TAPE on one dataset: train a GNN per feature and seed, ensemble, report.

    ``stop_after`` ends the run after one stage, ``start_at`` reads the stages before it from
    the lake without computing them (failing, naming the missing artifact, if one is absent):
    the per-stage deployments ``tag/llm``, ``tag/embed``, ``tag/train``, ``tag/ensemble`` are
    this flow with both set. Every run ends with a markdown summary. Returns the report's lake
    paths and markdown, the stage timings and, under ``fan_out``, the stats of the LLM stage's
    shard tasks when ``scale_out`` fanned it out (``{"llm": [{"shard", "requests", "worker",
    ...}]}``, see ``tag_pipeline.llm.stage.ask_llm_shard``).
    """
    cfg = PipelineConfig(
        dataset=dataset, features=features, models=models, seeds=seeds, llm=llm, lm=lm, lm_modes=lm_modes,
        finetune=finetune, scale_out=scale_out, gnn=gnn,
        ensemble=ensemble, lake=lake, stop_after=stop_after, start_at=start_at,
    )
    lake_root = str(cfg.lake)
    why_not = feature_availability(cfg.dataset, cfg.llm)
    missing = [f"{f} ({why_not[f]})" for f in cfg.features if why_not[f]]
    features = [f for f in cfg.features if not why_not[f]]
    if not features:
        raise ValueError(f"none of the requested features is available for {cfg.dataset.name}: {'; '.join(missing)}")
    timings: dict[str, float] = {}
    paths: dict[str, str] = {}
    fan_out: dict[str, list[dict]] = {}  # stage -> stats of its shard tasks (scale_out.runner != "local")

    def finish(runs: list[dict]) -> dict:
        out = report(
            cfg.dataset.lake_name, runs, {k: round(v, 2) for k, v in timings.items()}, paths, responses, missing,
            lake_root, cfg.stop_after,
        )
        print(out["markdown"])
        return out | {"timings": {k: round(v, 3) for k, v in timings.items()}, "fan_out": fan_out}

    with _timed(timings, "graph"):
        graph = load_graph(cfg.dataset, cfg.seeds, lake_root)
    paths["graph"] = graph
    responses = None
    if cfg.stop_after == "graph":
        return finish([])
    if {"E", "P"} & set(features) or cfg.stop_after == "llm":
        with _timed(timings, "llm"):
            if cfg.builds("llm") and cfg.scale_out.runner != "local" and cfg.llm.backend != "replay":
                fan_out["llm"] = fan_out_llm(graph, cfg.llm, lake_root, cfg.scale_out)
            responses = query_llm(graph, cfg.dataset, cfg.llm, lake_root, build=cfg.builds("llm"))
        paths["llm responses"] = responses
    if cfg.stop_after == "llm":
        return finish([])

    # feature artifact of (encoder mode, feature, seed): P and frozen TA/E serve every seed
    feature_paths: dict[tuple[str, str, int], str] = {}
    build_features = cfg.builds("features")
    with _timed(timings, "features"):
        for feature in features:
            if feature == "P":
                path = build_prediction_feature(graph, responses, cfg.llm.top_k, lake_root, build=build_features)
            elif "frozen" in cfg.lm_modes:
                if build_features and cfg.scale_out.runner != "local":
                    fan_out_embedding(graph, responses, feature, cfg.lm, lake_root, cfg.scale_out)
                path = embed_text(graph, responses, feature, cfg.lm, lake_root, build=build_features)
            else:
                continue
            paths[f"features {feature}"] = path
            feature_paths.update({(mode, feature, s): path for mode in cfg.lm_modes for s in cfg.seeds})
    if "finetuned" in cfg.lm_modes:
        with _timed(timings, "finetune"):
            for seed in cfg.seeds:
                for feature in (f for f in features if f != "P"):
                    feature_paths[("finetuned", feature, seed)] = finetune_lm(
                        graph, responses, feature, seed, cfg.finetune, lake_root, build=build_features
                    )
        paths["fine-tuned features"] = str(cfg.lake / cfg.dataset.lake_name / "features")
    if cfg.stop_after == "features":
        return finish([])

    # one training run per (encoder mode, model, seed, feature), up to gnn.workers at a time
    calls = [
        dict(
            graph=graph, features=feature_paths[(mode, feature, seed)], feature=feature, model=model, seed=seed,
            gnn=cfg.gnn, lake=lake_root, build=cfg.builds("train"), lm=mode,
        )
        for mode in cfg.lm_modes for model in cfg.models for seed in cfg.seeds for feature in features
    ]
    progress = create_progress_artifact(progress=0.0, description=f"GNN training runs ({len(calls)})")
    with _timed(timings, "train"):
        trained = train_gnn_runs(
            calls, cfg.gnn.workers, cfg.gnn.threads,
            on_done=lambda done: update_progress_artifact(progress, progress=100.0 * done / len(calls)),
        )
    runs: dict[tuple[str, int, str], list[dict]] = {}
    for call, run in zip(calls, trained):
        runs.setdefault((call["model"], call["seed"], call["lm"]), []).append(run)

    paths["training runs"] = str(cfg.lake / cfg.dataset.lake_name / "train")
    ensembles = []
    if cfg.stop_after != "train":
        with _timed(timings, "ensemble"):
            if len(features) > 1:
                for (model, seed, mode), members in runs.items():
                    ensembles.append(ensemble_task(graph, members, model, seed, cfg.ensemble, lake_root, lm=mode))
    return finish([r for members in runs.values() for r in members] + ensembles)
