"""GALLON on text-attributed graphs: distil a GNN teacher and an LM teacher into a graph-free MLP.

GALLON (Xu et al., "LLM and GNN are Complementary: Distilling LLM for Multimodal Graph
Learning", arXiv 2406.01032, Sec. 3) trains a GNN teacher and an LLM-informed LM teacher and
distils both into an MLP student that needs no edges at inference. The paper works on
molecule graphs; on a TAG the same design is (issue 13):

* **GNN teacher**: h_TAPE of one GNN (TAPE's per-feature GNNs with their logits averaged,
  He et al. 2024, Sec. 4.4); ``teacher="best"`` takes, per seed, the model whose h_TAPE has
  the best *validation* accuracy.
* **LM teacher**: the LM that read the title + abstract and the LLM's explanation, here the
  sentence encoder's TA and E embeddings (frozen; fine-tuned when the run has only fine-tuned
  features), concatenated, with a linear head trained on the seed's train nodes (the issue allows frozen + linear head; fine-tuned LM logits are not
  stored in the lake).
* **Student**: an MLP over the node's own features (default: its TA embedding only, so that
  a new paper is classified from its text, with no LLM call and no graph).

The loss (GLNN, Zhang et al., ICLR 2022, Eq. 1, extended to two teachers as in GALLON's
``trainDistill_class.py``) is

    L = CE(y_train, p_S) + alpha * T^2 * KL(p_GNN^T || p_S^T) + beta * T^2 * KL(p_LM^T || p_S^T)
        [+ gamma * (MSE(U h_S, h_GNN) + MSE(h_S, W e_LM))]

with the KL terms over *all* nodes (GLNN: the teacher's soft labels on unlabelled nodes are
the point of distillation), ``p^T`` the softmax at temperature ``T``, and the ``T^2`` factor
of Hinton et al. (2015) so that the soft terms' gradients do not shrink as ``T`` grows (GLNN
and GALLON leave it implicit). The optional last term is GALLON's representation alignment
(Sec. 3.3): ``h_S`` the student's last hidden layer, ``h_GNN`` the last hidden layer of the
teacher's member on TA (h_TAPE's members are trained apart: their hidden spaces are not
aligned, so they are not averaged), ``e_LM`` the LM teacher's input embedding, ``U`` and ``W``
learnt linear maps (``U`` only maps ``h_S`` to the GNN's width; both are left out of the
student at inference).

alpha, beta, T and gamma are chosen per seed on validation accuracy from the config's grids
(test accuracy is computed once, for the chosen student). The plain MLP baseline is the same
student architecture and training with CE only.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from tag_pipeline import lake
from tag_pipeline.methods.gallon_config import GallonMethod

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
        "tag_pipeline.methods.gallon",  # loss, student, LM-teacher head, grid and selection
        "tag_pipeline.methods.gallon_config",  # the config: its validators, key_fields
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


# --- the loss ------------------------------------------------------------------------------


class KDTerms(NamedTuple):
    """The terms of the distillation loss (scalars; see :func:`distillation_loss`)."""

    total: Any
    ce: Any
    kl_gnn: Any
    kl_lm: Any
    align: Any


def soft_kl(student_logits, teacher_logits, temperature: float):
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, mean over nodes.

    Args:
        student_logits: ``[N, C]`` float32.
        teacher_logits: ``[N, C]`` float32 (no gradient flows into it).
        temperature: T > 0.

    Returns:
        0-dim float32 tensor (nats).
    """
    import torch.nn.functional as F

    t = float(temperature)
    log_s = F.log_softmax(student_logits / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * (t * t)


def distillation_loss(
    student_logits,
    y,
    train_idx,
    gnn_logits,
    lm_logits,
    *,
    alpha: float,
    beta: float,
    temperature: float,
    align=None,
    gamma: float = 0.0,
) -> KDTerms:
    """GALLON's student loss on a TAG (module docstring; GLNN Eq. 1 with a second teacher).

    Args:
        student_logits: ``[N, C]`` float32, every node.
        y: ``[N]`` int64 labels (only ``y[train_idx]`` is read).
        train_idx: ``[n_train]`` int64 node ids of the seed's train split.
        gnn_logits, lm_logits: ``[N, C]`` float32 teacher logits (``lm_logits`` may be ``None``
            when ``beta`` is 0).
        alpha, beta: weights of the GNN and LM teachers' KL terms.
        temperature: T of both KL terms.
        align: 0-dim tensor, the representation-alignment term, or ``None``.
        gamma: its weight.

    Returns:
        :class:`KDTerms` with ``total = ce + alpha*kl_gnn + beta*kl_lm + gamma*align``.

    Raises:
        ValueError: ``beta > 0`` without ``lm_logits``, or mismatched shapes.
    """
    import torch
    import torch.nn.functional as F

    if gnn_logits.shape != student_logits.shape:
        raise ValueError(f"GNN teacher logits {tuple(gnn_logits.shape)} != student {tuple(student_logits.shape)}")
    zero = student_logits.new_zeros(())
    ce = F.cross_entropy(student_logits[train_idx], y[train_idx])
    kl_gnn = soft_kl(student_logits, gnn_logits, temperature) if alpha else zero
    if beta:
        if lm_logits is None:
            raise ValueError("beta > 0 needs the LM teacher's logits")
        if lm_logits.shape != student_logits.shape:
            raise ValueError(f"LM teacher logits {tuple(lm_logits.shape)} != student {tuple(student_logits.shape)}")
        kl_lm = soft_kl(student_logits, lm_logits, temperature)
    else:
        kl_lm = zero
    al = align if (align is not None and gamma) else zero
    total = ce + alpha * kl_gnn + beta * kl_lm + gamma * al
    return KDTerms(total=total, ce=ce, kl_gnn=kl_gnn, kl_lm=kl_lm, align=torch.as_tensor(al))


def alignment_loss(h_student, h_gnn, e_lm, to_gnn, from_lm):
    """GALLON's representation alignment: ``MSE(U h_S, h_GNN) + MSE(h_S, W e_LM)``.

    Args:
        h_student: ``[N, H]`` the student's last hidden layer.
        h_gnn: ``[N, H_gnn]`` the GNN teacher's last hidden layer (a fixed target).
        e_lm: ``[N, D]`` the LM teacher's input embedding (fixed).
        to_gnn: ``U``, a ``Linear(H, H_gnn)``.
        from_lm: ``W``, a ``Linear(D, H)``.

    Returns:
        0-dim float32 tensor.
    """
    import torch.nn.functional as F

    return F.mse_loss(to_gnn(h_student), h_gnn.detach()) + F.mse_loss(h_student, from_lm(e_lm.detach()))


# --- models ---------------------------------------------------------------------------------


def build_student(in_dim: int, num_classes: int, cfg: GallonMethod, topk: int | None = None):
    """The student: ``[N, in_dim]`` dense features (and ``[N, topk]`` P labels, when P is read)
    -> ``([N, C] logits, [N, hidden] last hidden layer)``.

    A PyG ``MLP`` (plain: no norm), with TAPE's :class:`~tag_pipeline.models.PredictionEncoder`
    for P (embedding size ``cfg.hidden``) whose output is concatenated to the dense features.
    """
    import torch
    from torch import nn
    from torch_geometric.nn.models import MLP

    from tag_pipeline.models import PredictionEncoder

    class Student(nn.Module):
        def __init__(self):
            super().__init__()
            self.p_encoder = PredictionEncoder(num_classes, cfg.hidden, topk) if topk else None
            width = in_dim + (self.p_encoder.out_channels if self.p_encoder is not None else 0)
            self.mlp = MLP(in_channels=width, hidden_channels=cfg.hidden, out_channels=num_classes,
                           num_layers=cfg.num_layers, dropout=cfg.dropout, norm=None)

        def forward(self, x, p=None):
            if self.p_encoder is not None:
                x = torch.cat([x, self.p_encoder(p)], dim=-1) if x.shape[1] else self.p_encoder(p)
            return self.mlp(x, return_emb=True)

    return Student()


@dataclass
class StudentInputs:
    """What a student reads: ``dense`` ``[N, D]`` float32 (may have 0 columns) and ``p``
    ``[N, k]`` int64 (or ``None``)."""

    dense: Any
    p: Any = None

    @property
    def topk(self) -> int | None:
        return None if self.p is None else int(self.p.shape[1])


@dataclass
class Fit:
    """A trained student: best-epoch ``logits`` ``[N, C]``, ``state_dict``, ``val_acc``, ``epoch``, ``seconds``."""

    logits: Any
    state_dict: dict
    val_acc: float
    epoch: int
    seconds: float


def train_student(
    inputs: StudentInputs,
    y,
    split,
    num_classes: int,
    cfg: GallonMethod,
    *,
    seed: int,
    gnn_logits=None,
    lm_logits=None,
    alpha: float = 0.0,
    beta: float = 0.0,
    temperature: float = 1.0,
    gamma: float = 0.0,
    h_gnn=None,
    e_lm=None,
) -> Fit:
    """Train one student (or, with ``alpha = beta = gamma = 0``, the plain MLP) full-batch.

    Adam on :func:`distillation_loss`; the epoch with the best validation accuracy (earliest
    on ties) is kept. Test labels are never read.

    Args:
        inputs: the student's features.
        y: ``[N]`` int64 labels.
        split: the seed's :class:`~tag_pipeline.datasets.base.Split`.
        num_classes: C.
        cfg: the student's architecture and optimiser.
        seed: seeds torch before the weights are drawn.
        gnn_logits, lm_logits: ``[N, C]`` teacher logits (needed when alpha / beta > 0).
        alpha, beta, temperature, gamma: loss weights and T.
        h_gnn: ``[N, H_gnn]`` teacher representation, ``e_lm`` ``[N, D]`` LM embedding (gamma > 0).

    Raises:
        ValueError: a teacher needed by a non-zero weight is missing.
    """
    import torch
    from torch import nn

    if alpha and gnn_logits is None:
        raise ValueError("alpha > 0 needs the GNN teacher's logits")
    if gamma and (h_gnn is None or e_lm is None):
        raise ValueError("gamma > 0 needs the GNN teacher's representation and the LM embedding")
    torch.manual_seed(seed)
    student = build_student(inputs.dense.shape[1], num_classes, cfg, inputs.topk)
    params = list(student.parameters())
    to_gnn = from_lm = None
    if gamma:
        to_gnn = nn.Linear(cfg.hidden, h_gnn.shape[1])
        from_lm = nn.Linear(e_lm.shape[1], cfg.hidden)
        params += list(to_gnn.parameters()) + list(from_lm.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_idx = torch.from_numpy(split.train)

    def step() -> None:
        student.train()
        opt.zero_grad()
        logits, h = student(inputs.dense, inputs.p)
        align = alignment_loss(h, h_gnn, e_lm, to_gnn, from_lm) if gamma else None
        terms = distillation_loss(
            logits, y, train_idx, gnn_logits if alpha else logits.detach(), lm_logits,
            alpha=alpha, beta=beta, temperature=temperature, align=align, gamma=gamma,
        )
        terms.total.backward()
        opt.step()

    def predict():
        student.eval()
        return student(inputs.dense, inputs.p)[0]

    return _fit(student, step, predict, y, split, cfg)


def _fit(module, step, predict, y, split, cfg: GallonMethod) -> Fit:
    """Full-batch training with early stopping on validation accuracy: ``step()`` once per
    epoch, then ``predict()`` (no gradient) gives ``[N, C]`` logits; the best epoch's logits and
    ``module``'s weights are kept (earliest on ties; stop after ``cfg.patience`` epochs
    without a better one)."""
    import torch

    from tag_pipeline.train import accuracy

    val_idx = torch.from_numpy(split.val)
    best = Fit(None, {}, -1.0, 0, 0.0)
    since = 0
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        step()
        with torch.no_grad():
            logits = predict()
        val = accuracy(logits, y, val_idx)
        if val > best.val_acc:
            best = Fit(logits.clone(), copy.deepcopy(module.state_dict()), val, epoch, 0.0)
            since = 0
        else:
            since += 1
            if since >= cfg.patience:
                break
    best.seconds = time.perf_counter() - start
    return best


def train_linear_head(x, y, split, num_classes: int, cfg: GallonMethod, *, seed: int) -> Fit:
    """The LM teacher's head: ``Linear(D, C)`` on frozen embeddings ``x`` ``[N, D]``, Adam with
    ``cfg``'s lr and weight decay, best validation epoch kept (patience ``cfg.patience``)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    head = nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_idx = torch.from_numpy(split.train)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(head(x[train_idx]), y[train_idx]).backward()
        opt.step()

    return _fit(head, step, lambda: head(x), y, split, cfg)


def grid_points(cfg: GallonMethod) -> list[dict[str, float]]:
    """Every (alpha, beta, temperature, gamma) of the config's grids, in a fixed order."""
    return [
        {"alpha": a, "beta": b, "temperature": t, "gamma": g}
        for a, b, t, g in itertools.product(cfg.alphas, cfg.betas, cfg.temperatures, cfg.gammas)
    ]


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


def gallon_key(graph_id: str, teacher_path: str, feature_paths: Mapping[str, str], cfg: GallonMethod, seed: int) -> str:
    """Lineage key of one seed's distillation: stage version, graph content and split, the
    teacher's and the read features' artifact names (which carry their own lineage), the
    seed and the method config (:meth:`GallonMethod.key_fields`: less execution details)."""
    return GALLON_STAGE.key(
        graph_id, Path(teacher_path).name,
        {f: Path(p).name for f, p in sorted(feature_paths.items())}, seed, cfg.key_fields(),
    )


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

    from tag_pipeline.datasets import check_split, graph_content_key, open_graph, split_key
    from tag_pipeline.features.store import read_feature
    from tag_pipeline.hardware import torch_threads
    from tag_pipeline.inference import forward_ms_per_node, hidden_representation, load_trained_model
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
