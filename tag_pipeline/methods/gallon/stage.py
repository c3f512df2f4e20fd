"""GALLON's lake stage: one seed's distillation at ``<lake>/<dataset>/gallon/s<seed>-<key>``; its
teachers, key and files; loading a stored student.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tag_pipeline import lake
from tag_pipeline.methods.gallon.config import GallonMethod
from tag_pipeline.methods.gallon.student import (
    StudentInputs,
    build_student,
    grid_points,
    train_linear_head,
    train_student,
)
from tag_pipeline.methods.gallon.teachers import (
    check_teacher_seeds,
    choose_teacher,
    teacher_logits,
    teacher_members,
)

#: 2: commit 3aee73f changed what a student is distilled from, with the version left at 1: an
#: h_TAPE teacher averaged in ``probs`` mode is read as log-probabilities (:func:`teacher_logits`;
#: v1 applied the temperature to the probabilities themselves), and the alignment target is the
#: teacher's TA member's hidden layer (v1: the mean of the members' unaligned hidden layers).
GALLON_STAGE_VERSION = 2
#: One seed's distillation: ``<lake>/<dataset>/gallon/s<seed>-<key>``.
GALLON_STAGE = lake.Stage(
    "gallon",
    GALLON_STAGE_VERSION,
    code=(
        "tag_pipeline.methods.gallon",  # its package: config (validators, key_fields), loss, student, LM-teacher head, grid and selection
        "tag_pipeline.inference",  # the teacher members' hidden layers (alignment) and timing
        "tag_pipeline.train",  # accuracy (selection on validation), read_logits, predictions_frame
        "tag_pipeline.models",  # PredictionEncoder of the student; the teacher GNNs loaded for alignment
    ),
)
STUDENT_WEIGHTS = "student.safetensors"
MLP_WEIGHTS = "mlp.safetensors"
LM_TEACHER_WEIGHTS = "lm_teacher.safetensors"
GRID_FILE = "grid.parquet"
#: prediction files of the artifact, per variant
PREDICTION_FILES = {"student": "predictions.parquet", "mlp": "mlp_predictions.parquet",
                    "lm-teacher": "lm_teacher_predictions.parquet"}


# --- the stage in the lake ------------------------------------------------------------------


def load_student_inputs(feature_paths: Mapping[str, str], features: Sequence[str], num_nodes: int) -> StudentInputs:
    """The student's inputs from the lake's feature artifacts (dense features concatenated in
    ``features`` order; P kept apart).

    Raises:
        ValueError: a feature the student reads has no artifact in ``feature_paths``.
    """
    import torch

    from tag_pipeline.features.store import read_feature

    missing = [f for f in features if f not in feature_paths]
    if missing:
        raise ValueError(f"GALLON student reads {missing}, which this run did not build (features: {sorted(feature_paths)})")
    dense, p = [], None
    for f in features:
        lake.read_artifact(feature_paths[f])
        x = read_feature(Path(feature_paths[f]), num_nodes)
        if f == "P":
            p = x
        else:
            dense.append(x.float())
    return StudentInputs(torch.cat(dense, dim=1) if dense else torch.zeros(num_nodes, 0), p)


def gallon_key(graph_id: str, teacher_path: str, feature_paths: Mapping[str, str], cfg: GallonMethod, seed: int) -> str:
    """Lineage key of one seed's distillation: stage version, graph content and split, the
    teacher's and the read features' artifact names (which carry their own lineage), the
    seed and the method config (:meth:`GallonMethod.key_fields`: less execution details)."""
    return GALLON_STAGE.key(
        graph_id, Path(teacher_path).name,
        {f: Path(p).name for f, p in sorted(feature_paths.items())}, seed, cfg.key_fields(),
    )


def _summaries(path: Path) -> list[dict]:
    """The committed artifact's summaries, each with its ``path``: what a lake hit and a
    build both return."""
    return [dict(s, path=str(path)) for s in lake.read_artifact(path, verify=False).manifest["summaries"]]


def materialize_gallon(
    graph_path: str | Path,
    feature_paths: Mapping[str, str],
    teachers: Sequence[Mapping[str, Any]],
    seed: int,
    cfg: GallonMethod,
    lake_root: str | Path,
    threads: int | None = 1,
    lm: str = "frozen",
) -> list[dict]:
    """Distil one seed's GNN and LM teachers into the student, unless already in the lake.

    Writes ``<lake>/<dataset>/gallon/s<seed>-<key>`` with the student's, the plain MLP's and
    the LM teacher's weights and per-node predictions (``predictions.parquet`` is the
    student's; same columns as a training run's), ``grid.parquet`` (validation accuracy of
    every grid point; test accuracy is not computed for them) and a manifest whose
    ``summaries`` hold the four variants (``student``, ``mlp``, ``lm-teacher``,
    ``gnn-teacher``), each with ``infer_ms_per_node`` measured in the same process, and
    whose ``student`` entry holds what prediction for new nodes needs.

    Args:
        graph_path: the graph artifact.
        feature_paths: ``{feature: artifact path}`` of the frozen TA/E/P features of this run.
        teachers: this seed's h_TAPE summaries (or single training runs with one feature).
        seed: the split and training seed.
        cfg: the method's config.
        lake_root: root of the lake.
        threads: torch threads while training (``None``: leave as is); timing runs on one.
        lm: encoder mode of ``feature_paths``' TA/E (``frozen``, or ``finetuned`` when the run
            has only fine-tuned features), recorded in the summaries (not in the key: the
            feature artifacts' names already differ).

    Returns:
        list of 4 summary dicts (``method``, ``model``, ``variant``, ``seed``, ``val_acc``,
        ``test_acc``, ``infer_ms_per_node``, ``path`` ...).

    Raises:
        ValueError: no teacher, a teacher trained on another seed than ``seed`` (checked before
            the lake is read: :func:`check_teacher_seeds`), a student feature not built, an
            empty split.
    """
    import polars as pl
    import torch
    from safetensors.torch import save_file

    from tag_pipeline.datasets import (
        check_split,
        graph_content_key,
        open_graph,
        split_key,
    )
    from tag_pipeline.features.store import read_feature
    from tag_pipeline.hardware import torch_threads
    from tag_pipeline.inference import (
        forward_ms_per_node,
        hidden_representation,
        load_trained_model,
    )
    from tag_pipeline.train import accuracy, predictions_frame

    graph_path = Path(graph_path)
    check_teacher_seeds(teachers, seed)
    teacher = choose_teacher(teachers, cfg.teacher)
    read = {f: p for f, p in feature_paths.items() if f in set(cfg.student_features) | set(cfg.lm_teacher_features)}
    graph_id = f"{graph_content_key(graph_path)}-{split_key(graph_path, seed)}"
    key = gallon_key(graph_id, teacher["path"], read, cfg, seed)
    path = GALLON_STAGE.path(lake_root, lake.dataset_of(graph_path), key, prefix=f"s{seed}-")

    def build() -> lake.Built:
        with torch_threads(threads):
            graph = open_graph(graph_path)
            split = graph.splits[seed]
            check_split(split, seed, graph.name, graph.num_nodes)
            y = torch.from_numpy(graph.labels)
            c = graph.num_classes
            test_idx = torch.from_numpy(split.test)
            inputs = load_student_inputs(feature_paths, cfg.student_features, graph.num_nodes)

            gnn_logits = teacher_logits(teacher["path"])
            lm_feats = [f for f in cfg.lm_teacher_features if f in feature_paths]
            if not lm_feats:
                raise ValueError(f"GALLON's LM teacher reads {cfg.lm_teacher_features}; none was built in this run")
            e_lm = torch.cat([read_feature(Path(feature_paths[f]), graph.num_nodes).float() for f in lm_feats], dim=1)
            lm_fit = train_linear_head(e_lm, y, split, c, cfg, seed=seed)

            members = teacher_members(teacher)
            loaded = [load_trained_model(m, graph) for m in members]
            h_gnn = None
            if any(cfg.gammas):  # the TA member's hidden layer: members' spaces are not aligned
                on_ta = [i for i, m in enumerate(members) if "-TA-" in Path(m).name]
                h_gnn = hidden_representation(*loaded[on_ta[0] if on_ta else 0])

            grid, best, best_point = [], None, None
            for point in grid_points(cfg):
                fit = train_student(
                    inputs, y, split, c, cfg, seed=seed, gnn_logits=gnn_logits, lm_logits=lm_fit.logits,
                    h_gnn=h_gnn, e_lm=e_lm, **point,
                )
                grid.append(point | {"val_acc": fit.val_acc, "best_epoch": fit.epoch, "seconds": fit.seconds})
                if best is None or fit.val_acc > best.val_acc:
                    best, best_point = fit, point
            plain = train_student(inputs, y, split, c, cfg, seed=seed)

        # inference time per node, student vs each teacher member, same process, one thread
        # (as the leaderboard measures every other run)
        with torch_threads(1):
            student = build_student(inputs.dense.shape[1], c, cfg, inputs.topk)
            student.load_state_dict(best.state_dict)
            student.eval()
            student_ms = forward_ms_per_node(lambda: student(inputs.dense, inputs.p), graph.num_nodes, cfg.timing_repeats)
            member_ms = {
                Path(m).name: forward_ms_per_node(lambda mod=mod, x=x, op=op: mod(x, op), graph.num_nodes, cfg.timing_repeats)
                for m, (mod, x, op) in zip(members, loaded)
            }
            head = torch.nn.Linear(e_lm.shape[1], c)
            head.load_state_dict(lm_fit.state_dict)
            lm_ms = forward_ms_per_node(lambda: head(e_lm), graph.num_nodes, cfg.timing_repeats)

        def row(variant: str, model: str, logits, val: float, ms: float, **extra) -> dict:
            return {"method": "gallon", "model": model, "variant": variant, "feature": variant, "seed": seed, "lm": lm,
                    "val_acc": val, "test_acc": accuracy(logits, y, test_idx), "infer_ms_per_node": ms, **extra}

        summaries = [
            row("student", "mlp", best.logits, best.val_acc, student_ms, chosen=best_point, best_epoch=best.epoch,
                features=list(cfg.student_features), teacher_model=teacher["model"]),
            row("mlp", "mlp", plain.logits, plain.val_acc, student_ms, best_epoch=plain.epoch,
                features=list(cfg.student_features)),
            row("lm-teacher", "linear", lm_fit.logits, lm_fit.val_acc, lm_ms, features=lm_feats),
            row("gnn-teacher", teacher["model"], gnn_logits, float(teacher["val_acc"]), sum(member_ms.values()),
                teacher_path=str(teacher["path"]), member_ms=member_ms),
        ]
        student_info = {
            "features": list(cfg.student_features),
            "feature_paths": {f: str(feature_paths[f]) for f in cfg.student_features},
            "in_dim": int(inputs.dense.shape[1]), "topk": inputs.topk, "num_classes": c,
            "class_names": list(graph.class_names),
        }

        def write(tmp: Path) -> None:
            predictions_frame(best.logits, y, split).write_parquet(tmp / PREDICTION_FILES["student"])
            predictions_frame(plain.logits, y, split).write_parquet(tmp / PREDICTION_FILES["mlp"])
            predictions_frame(lm_fit.logits, y, split).write_parquet(tmp / PREDICTION_FILES["lm-teacher"])
            save_file({k: v.contiguous() for k, v in best.state_dict.items()}, str(tmp / STUDENT_WEIGHTS))
            save_file({k: v.contiguous() for k, v in plain.state_dict.items()}, str(tmp / MLP_WEIGHTS))
            save_file({k: v.contiguous() for k, v in lm_fit.state_dict.items()}, str(tmp / LM_TEACHER_WEIGHTS))
            pl.DataFrame(grid).write_parquet(tmp / GRID_FILE)

        return lake.Built(
            write=write, config=cfg.key_fields(),
            inputs={"graph": str(graph_path), "teacher": str(teacher["path"]),
                    **{f"features {f}": str(p) for f, p in read.items()}},
            rows=graph.num_nodes, extra={"summaries": summaries, "student": student_info},
        )

    return GALLON_STAGE.materialize(path, build, read=_summaries)


def load_student(path: str | Path):
    """A committed GALLON artifact's student, in eval mode, and its ``student`` manifest entry.

    Raises:
        FileNotFoundError / CorruptArtifactError: the artifact is missing or damaged.
    """
    from safetensors.torch import load_file


    art = lake.read_artifact(path)
    info = art.manifest["student"]
    cfg = GallonMethod.model_validate(art.manifest["config"])
    student = build_student(info["in_dim"], info["num_classes"], cfg, info["topk"])
    student.load_state_dict(load_file(str(Path(path) / STUDENT_WEIGHTS)))
    student.eval()
    return student, info


def student_forward_ms_per_node(path: str | Path, graph, repeats: int = 20) -> float:
    """Inference ms per node of a committed GALLON artifact's student, on its features only (no
    graph): :func:`tag_pipeline.inference.forward_ms_per_node` of :func:`load_student`. The
    leaderboard's timer for ``gallon`` artifacts (:func:`tag_pipeline.inference.run_forward_ms_per_node`).

    Raises:
        FileNotFoundError / CorruptArtifactError: the artifact is missing or damaged.
    """
    from tag_pipeline.inference import forward_ms_per_node

    student, info = load_student(path)
    inputs = load_student_inputs(info["feature_paths"], info["features"], graph.num_nodes)
    return forward_ms_per_node(lambda: student(inputs.dense, inputs.p), graph.num_nodes, repeats)
