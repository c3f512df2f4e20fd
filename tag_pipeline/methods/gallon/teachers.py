"""GALLON's teachers: the GNN teacher chosen among h_TAPE runs on validation, its logits and members,
and the check that every teacher belongs to the seed being distilled."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tag_pipeline import lake


def choose_teacher(candidates: Sequence[Mapping[str, Any]], teacher: str) -> Mapping[str, Any]:
    """The GNN teacher among one seed's h_TAPE summaries: the one of model ``teacher``, or
    (``"best"``) the best validation accuracy, earliest in ``candidates`` on ties.

    Raises:
        ValueError: no candidate, or none of model ``teacher``.
    """
    if not candidates:
        raise ValueError("GALLON needs at least one GNN teacher (train a GNN in this run: models)")
    if teacher == "best":
        return max(candidates, key=lambda r: r["val_acc"])  # max keeps the first of equal keys
    chosen = [r for r in candidates if r["model"] == teacher]
    if not chosen:
        raise ValueError(f"GALLON teacher {teacher!r} was not trained in this run (models: {sorted({r['model'] for r in candidates})})")
    return chosen[0]


def teacher_logits(path: str | Path):
    """``[N, C]`` float32 logits of a teacher artifact. An h_TAPE averaged in ``probs`` mode
    stores probabilities in its ``logits`` column: their log is returned (a softmax of it
    gives the probabilities back), so a temperature applies as to logits."""
    import torch

    from tag_pipeline.train import read_logits

    scores = read_logits(Path(path))
    config = lake.read_artifact(path, verify=False).manifest.get("config") or {}
    if config.get("mode") == "probs":
        return torch.log(scores.clamp_min(1e-12))
    return scores


def teacher_members(teacher: Mapping[str, Any]) -> list[str]:
    """Training-run paths behind a teacher summary: the h_TAPE ensemble's members (read from
    its manifest), or the run itself when it is a single training run."""
    manifest = lake.read_artifact(teacher["path"], verify=False).manifest
    if manifest.get("stage") == "ensemble":
        return [str(p) for p in manifest["inputs"].values()]
    return [str(teacher["path"])]


def teacher_seed(teacher: Mapping[str, Any]) -> int | None:
    """The seed a teacher was trained on: its artifact's manifest (``summary.seed``) where the
    artifact is there, else the summary's ``seed``; ``None`` when neither says.

    Raises:
        ValueError: the summary and its artifact's manifest disagree.
    """
    claimed = teacher.get("seed")
    recorded = None
    path = teacher.get("path")
    if path is not None and (Path(path) / lake.MANIFEST).exists():
        summary = lake.read_artifact(path, verify=False).manifest.get("summary") or {}
        recorded = summary.get("seed")
    if claimed is not None and recorded is not None and int(claimed) != int(recorded):
        raise ValueError(f"GALLON teacher {path}: its summary says seed {claimed}, its artifact seed {recorded}")
    seed = recorded if recorded is not None else claimed
    return None if seed is None else int(seed)


def check_teacher_seeds(teachers: Sequence[Mapping[str, Any]], seed: int) -> None:
    """Refuse teachers of another seed than the student's: a teacher trained on seed ``s`` has
    seen, among its train nodes, test nodes of seed ``seed``'s split, and distilling it would
    carry their labels into the student.

    Raises:
        ValueError: a teacher was trained on another seed (the message names both seeds), or
            its seed cannot be told.
    """
    for t in teachers:
        s = teacher_seed(t)
        if s is None:
            raise ValueError(f"GALLON teacher {t.get('path', t)}: no seed in its summary or manifest; "
                             f"the student's seed is {seed}")
        if s != int(seed):
            raise ValueError(
                f"GALLON teacher {t.get('path', t.get('model'))} was trained on seed {s}, the student on seed "
                f"{seed}: a teacher of another seed has seen this seed's test nodes in training"
            )
