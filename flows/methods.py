"""Each method's stages, composed inside the ``tag`` flow run (see ``flows/tag.py``).

The ``tag`` flow loads the graph and the LLM answers, then hands a :class:`MethodRun` to the
stages function its method's spec names (:class:`tag_pipeline.methods.MethodSpec`,
:func:`stages_function`); that function runs the method's stages and returns its
:class:`~tag_pipeline.methods.base.RunSummary` rows, which the report reads. A method's own
stages function lives in its package and runs each library stage with :meth:`MethodRun.stage`
(the generic task :func:`tasks.methods.run_stage`), so a new method edits nothing here; the
built-in methods' stages functions are below, beside their tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.fanout import fan_out_embedding
from tag_pipeline.config import PipelineConfig
from tag_pipeline.methods import method_spec, resolve
from tag_pipeline.methods.base import RunSummary, Stages, summaries
from tasks.dre import train_dre
from tasks.features import build_prediction_feature, embed_text, finetune_lm
from tasks.gallon import distil_gallon
from tasks.glem import train_glem
from tasks.leading import train_leading
from tasks.methods import run_stage
from tasks.train import ensemble as ensemble_task
from tasks.train import train_gnn_runs


@dataclass
class MethodRun:
    """What a method's stages get from the flow: the run config, the graph and LLM responses
    artifacts (``responses`` is ``None`` when no feature needs them), the features this
    dataset has, the lake root, and the flow's ``timings`` (seconds per stage) and ``paths``
    (what to list in the report) to add to."""

    cfg: PipelineConfig
    graph: str
    responses: str | None
    features: list[str]
    lake: str
    timings: dict[str, float] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    timed: Callable = None  # type: ignore[assignment]  # timed(stage): context adding to timings

    def stage(self, fn: str, /, *, name: str, step: str = "train", **kwargs) -> Any:
        """``fn(**kwargs)`` (``"module:function"``, a library stage function) as one stage task
        run called ``name`` (:func:`tasks.methods.run_stage`); lookup only when the run starts
        past pipeline stage ``step``."""
        return run_stage(fn, kwargs, run_name=name, step=step, build=self.cfg.builds(step))

    def tape_features(self) -> dict[tuple[str, str, int], str]:
        """:func:`tape_features` of this run."""
        return tape_features(self)

    def tape_gnns(self, feature_paths: dict[tuple[str, str, int], str], modes: list[str] | None = None,
                  features: list[str] | None = None) -> list[dict]:
        """:func:`tape_gnns` of this run."""
        return tape_gnns(self, feature_paths, modes, features)


def tape_features(run: MethodRun) -> dict[tuple[str, str, int], str]:
    """TAPE's feature stage: ``{(encoder mode, feature, seed): artifact path}``; P and frozen
    TA/E serve every seed, fine-tuned TA/E are per seed."""
    cfg = run.cfg
    feature_paths: dict[tuple[str, str, int], str] = {}
    build = cfg.builds("features")
    with run.timed("features"):
        for feature in run.features:
            if feature == "P":
                path = build_prediction_feature(run.graph, run.responses, cfg.llm.top_k, run.lake, build=build)
            elif "frozen" in cfg.lm_modes:
                if build and cfg.scale_out.runner != "local":
                    fan_out_embedding(run.graph, run.responses, feature, cfg.lm, run.lake, cfg.scale_out)
                path = embed_text(run.graph, run.responses, feature, cfg.lm, run.lake, build=build)
            else:
                continue
            run.paths[f"features {feature}"] = path
            feature_paths.update({(mode, feature, s): path for mode in cfg.lm_modes for s in cfg.seeds})
    if "finetuned" in cfg.lm_modes:
        with run.timed("finetune"):
            for seed in cfg.seeds:
                for feature in (f for f in run.features if f != "P"):
                    feature_paths[("finetuned", feature, seed)] = finetune_lm(
                        run.graph, run.responses, feature, seed, cfg.finetune, run.lake, build=build
                    )
        run.paths["fine-tuned features"] = str(cfg.lake / cfg.dataset.lake_name / "features")
    return feature_paths


def tape_gnns(
    run: MethodRun, feature_paths: dict[tuple[str, str, int], str], modes: list[str] | None = None,
    features: list[str] | None = None,
) -> list[dict]:
    """TAPE's GNN and ensemble stages: one run per (encoder mode, model, seed, feature), up to
    ``gnn.workers`` at a time, then h_TAPE per (model, seed, mode) unless the run stops after
    training. ``modes`` (default ``lm_modes``) and ``features`` (default the run's) pick the
    keys of ``feature_paths`` to train on. Returns the training and ensemble summaries."""
    cfg = run.cfg
    modes = modes if modes is not None else list(cfg.lm_modes)
    features = features if features is not None else run.features
    calls = [
        dict(
            graph=run.graph, features=feature_paths[(mode, feature, seed)], feature=feature, model=model,
            seed=seed, gnn=cfg.gnn, lake=run.lake, build=cfg.builds("train"), lm=mode,
        )
        for mode in modes for model in cfg.models for seed in cfg.seeds for feature in features
    ]
    progress = create_progress_artifact(progress=0.0, description=f"GNN training runs ({len(calls)})")
    with run.timed("train"):
        trained = train_gnn_runs(
            calls, cfg.gnn.workers, cfg.gnn.threads,
            on_done=lambda done: update_progress_artifact(progress, progress=100.0 * done / len(calls)),
        )
    runs: dict[tuple[str, int, str], list[dict]] = {}
    for call, result in zip(calls, trained):
        runs.setdefault((call["model"], call["seed"], call["lm"]), []).append(result)
    run.paths["training runs"] = str(cfg.lake / cfg.dataset.lake_name / "train")
    ensembles = []
    if cfg.stop_after != "train":
        with run.timed("ensemble"):
            if len(features) > 1:
                for (model, seed, mode), members in runs.items():
                    ensembles.append(ensemble_task(run.graph, members, model, seed, cfg.ensemble, run.lake, lm=mode))
    return [r for members in runs.values() for r in members] + ensembles


def tape_stages(run: MethodRun) -> list[RunSummary]:
    """TAPE (He et al. 2024): features (Sec. 4.1-4.3), a GNN per feature, h_TAPE (Sec. 4.4)."""
    feature_paths = tape_features(run)
    if run.cfg.stop_after == "features":
        return []
    return summaries(tape_gnns(run, feature_paths), "tape")


def gallon_stages(run: MethodRun) -> list[RunSummary]:
    """GALLON (tag_pipeline.methods.gallon): TAPE's stages give the teachers (h_TAPE per model
    and seed, frozen encoder), then one distillation per seed."""
    cfg, method = run.cfg, run.cfg.method
    feature_paths = tape_features(run)
    if cfg.stop_after == "features":
        return []
    tape_runs = tape_gnns(run, feature_paths)
    out = summaries(tape_runs, "tape")
    if cfg.stop_after == "train":
        return out
    lm = "frozen" if "frozen" in cfg.lm_modes else "finetuned"
    teacher_variant = "TAPE" if len(run.features) > 1 else run.features[0]
    with run.timed("distil"):
        for seed in cfg.seeds:
            teachers = [r for r in tape_runs if r["seed"] == seed and r["feature"] == teacher_variant and r.get("lm", "frozen") == lm]
            features = {f: feature_paths[(lm, f, seed)] for f in run.features}
            out += summaries(
                distil_gallon(run.graph, features, teachers, seed, method, run.lake, threads=None,
                              build=cfg.builds("ensemble"), lm=lm),
                "gallon",
            )
    run.paths["GALLON students"] = str(cfg.lake / cfg.dataset.lake_name / "gallon")
    return out


def glem_stages(run: MethodRun) -> list[RunSummary]:
    """GLEM (tag_pipeline.methods.glem): one LM + GNN co-training per seed, on node text only."""
    if run.cfg.stop_after == "features":  # GLEM is a training stage
        return []
    out: list[RunSummary] = []
    with run.timed("glem"):
        for seed in run.cfg.seeds:
            out += summaries(train_glem(run.graph, seed, run.cfg.method, run.lake, build=run.cfg.builds("train")), "glem")
    run.paths["GLEM runs"] = str(run.cfg.lake / run.cfg.dataset.lake_name / "glem")
    return out


def leading_stages(run: MethodRun) -> list[RunSummary]:
    """LEADING (tag_pipeline.methods.leading): one end-to-end LM + implicit-layer model per
    text feature (those the method asks for and the dataset has) and seed; then, unless
    ``method.gnns`` is off, TAPE's GNNs and h_TAPE on LEADING's TA/E embeddings (encoder mode
    ``leading``) with TAPE's P, as TAPE does with fine-tuned LM features."""
    cfg, method = run.cfg, run.cfg.method
    features = [f for f in method.features if f in run.features]
    if not features:
        raise ValueError(f"LEADING trains on {method.features}; this run has {run.features}")
    if cfg.stop_after == "features":  # LEADING is a training stage
        return []
    out: list[RunSummary] = []
    feature_paths: dict[tuple[str, str, int], str] = {}
    with run.timed("leading"):
        for seed in cfg.seeds:
            for feature in features:
                res = train_leading(run.graph, run.responses, feature, seed, method, run.lake, build=cfg.builds("train"))
                feature_paths[("leading", feature, seed)] = res["path"]
                out += summaries([res], "leading")
    run.paths["LEADING runs"] = str(cfg.lake / cfg.dataset.lake_name / "leading")
    if method.gnns:
        gnn_features = list(features)
        if "P" in run.features:
            with run.timed("features"):
                p = build_prediction_feature(run.graph, run.responses, cfg.llm.top_k, run.lake,
                                             build=cfg.builds("features"))
            feature_paths.update({("leading", "P", s): p for s in cfg.seeds})
            gnn_features.append("P")
        out += summaries(tape_gnns(run, feature_paths, modes=["leading"], features=gnn_features), "tape")
    return out


def dre_stages(run: MethodRun) -> list[RunSummary]:
    """Dr.E (tag_pipeline.methods.dre): the frozen TA feature (TAPE's embedding stage), then one
    GNN + quantiser + LoRA decoder run per seed, with the zero-shot decoder baseline; unless
    ``method.gnns`` is off, TAPE's GNNs (the run's models) on the same TA feature and seeds."""
    cfg = run.cfg
    if "TA" not in run.features:
        raise ValueError(f"Dr.E encodes the frozen TA feature; this run has {run.features} (add 'TA' to features)")
    with run.timed("features"):
        ta = embed_text(run.graph, None, "TA", cfg.lm, run.lake, build=cfg.builds("features"))
    run.paths["features TA"] = ta
    if cfg.stop_after == "features":  # Dr.E's own stage is a training stage
        return []
    out: list[RunSummary] = []
    with run.timed("dre"):
        for seed in cfg.seeds:
            out += summaries(train_dre(run.graph, ta, seed, cfg.method, run.lake, build=cfg.builds("train")), "dre")
    run.paths["Dr.E runs"] = str(cfg.lake / cfg.dataset.lake_name / "dre")
    if cfg.method.gnns:
        out += summaries(tape_gnns(run, {("frozen", "TA", s): ta for s in cfg.seeds}, modes=["frozen"],
                                   features=["TA"]), "tape")
    return out


def stack_stages(run: MethodRun) -> list[RunSummary]:
    """Stack (tag_pipeline.methods.stack): each member method's stages with its default config
    (found in the lake when they already ran), then per seed one ensemble selection over the
    members' stored predictors, fit on that seed's validation nodes."""
    import dataclasses

    from tag_pipeline.methods import method_config
    from tag_pipeline.methods.stack.stage import candidate_files

    cfg, method = run.cfg, run.cfg.method
    members: list[RunSummary] = []
    for name in method.members:
        member = dataclasses.replace(run, cfg=cfg.model_copy(update={"method": method_config(name)}))
        members += stages_function(name)(member)
    if cfg.stop_after in ("features", "train"):  # the stack is an ensemble stage
        return members
    out = list(members)
    with run.timed("stack"):
        for seed in cfg.seeds:
            candidates = candidate_files([m.model_dump() for m in members if m.seed == seed])
            out += summaries(run.stage("tag_pipeline.methods.stack.stage:materialize_stack", name=f"stack-seed{seed}",
                                       step="ensemble", graph_path=run.graph, seed=seed, candidates=candidates,
                                       cfg=method, lake_root=run.lake), "stack")
    run.paths["stacks"] = str(cfg.lake / cfg.dataset.lake_name / "stack")
    return out


def stages_function(name: str) -> Stages:
    """The stages function of method ``name``: the one its spec names.

    Raises:
        ValueError: no method ``name`` is registered (:func:`tag_pipeline.methods.register_method`).
    """
    spec = method_spec(name)
    if spec is None:
        raise ValueError(f"method {name!r} is not registered (tag_pipeline.methods.register_method)")
    return resolve(spec.stages)
