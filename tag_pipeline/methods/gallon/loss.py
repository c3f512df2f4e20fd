"""GALLON's distillation loss (GLNN Eq. 1 with two teachers) and representation alignment (Sec. 3.3).
"""

from __future__ import annotations

from typing import Any, NamedTuple

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
