"""The ``tag`` flow: graph -> LLM answers -> the method's stages -> report.

With the default method, TAPE end to end (graph -> LLM -> features -> GNNs -> h_TAPE ->
report); other methods plug in through ``method`` (``flows/methods.py``). Deployed as
``tag/full`` (see ``prefect.yaml``); run in-process by the ``tag`` command line.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Literal

from prefect import flow
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
from tag_pipeline.methods import MethodConfig, TapeMethod
from tag_pipeline.methods.base import RunSummary
from flows.fanout import fan_out_llm
from flows.methods import MethodRun, stages_function
from tasks.data import load_graph
from tasks.llm import query_llm
from tasks.report import report


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


@flow(name="tag", log_prints=True)
def tag(
    dataset: DatasetConfig = DatasetConfig(),
    method: MethodConfig = TapeMethod(),
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
    """Run one method on one dataset: by default TAPE (a GNN per feature and seed, h_TAPE).

    ``method`` picks the method (``{"name": "gallon", ...}``: GALLON's distilled MLP student,
    see :mod:`tag_pipeline.methods`); TAPE's grid parameters (``features``, ``models``,
    ``lm_modes``, ``gnn``, ``ensemble``) also set the GNN teachers of methods built on them.

    ``stop_after`` ends the run after one stage, ``start_at`` reads the stages before it from
    the lake without computing them (failing, naming the missing artifact, if one is absent):
    the per-stage deployments ``tag/llm``, ``tag/embed``, ``tag/train``, ``tag/ensemble`` are
    this flow with both set. Every run ends with a markdown summary. Returns the report's lake
    paths and markdown, ``runs`` (the method's run summaries as dicts, see
    :class:`~tag_pipeline.methods.base.RunSummary`), ``method`` (its name), ``graph`` and
    ``responses`` (lake paths; ``responses`` ``None`` when no LLM answer was read), the stage
    timings and, under ``fan_out``, the stats of the LLM stage's
    shard tasks when ``scale_out`` fanned it out (``{"llm": [{"shard", "requests", "worker",
    ...}]}``, see ``tag_pipeline.llm.stage.ask_llm_shard``).
    """
    cfg = PipelineConfig(
        dataset=dataset, method=method, features=features, models=models, seeds=seeds, llm=llm, lm=lm, lm_modes=lm_modes,
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

    def finish(runs: list[RunSummary]) -> dict:
        rows = [r.as_run() for r in runs]
        out = report(
            cfg.dataset.lake_name, rows, {k: round(v, 2) for k, v in timings.items()}, paths, responses, missing,
            lake_root, cfg.stop_after, cfg.method, cfg.dataset.split_label,
        )
        print(out["markdown"])
        return out | {
            "runs": rows, "method": cfg.method.name, "graph": paths.get("graph"), "responses": responses,
            "timings": {k: round(v, 3) for k, v in timings.items()}, "fan_out": fan_out,
        }

    with _timed(timings, "graph"):
        graph = load_graph(cfg.dataset, cfg.seeds, lake_root)
    paths["graph"] = graph
    responses = None
    if cfg.stop_after == "graph":
        return finish([])
    if cfg.method.needs_llm(features) or cfg.stop_after == "llm":
        with _timed(timings, "llm"):
            if cfg.builds("llm") and cfg.scale_out.runner != "local" and cfg.llm.backend != "replay":
                fan_out["llm"] = fan_out_llm(graph, cfg.llm, lake_root, cfg.scale_out)
            responses = query_llm(graph, cfg.dataset, cfg.llm, lake_root, build=cfg.builds("llm"))
        paths["llm responses"] = responses
    if cfg.stop_after == "llm":
        return finish([])

    stages = stages_function(cfg.method.name)
    run = MethodRun(cfg, graph, responses, features, lake_root, timings, paths, timed=lambda stage: _timed(timings, stage))
    return finish(stages(run))
