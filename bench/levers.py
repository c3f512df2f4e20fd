"""Cheap accuracy levers on top of h_TAPE, used by ``bench/ensemble_levers.py`` only.

Ensemble weights chosen on the validation set, and Correct & Smooth post-processing (Huang et
al., ICLR 2021, through PyG). They are experiments, not pipeline stages, so they live beside
the benchmark that measures them (CONVENTIONS.md: bench and experiment code stays outside the
library); ``tests/bench/test_levers.py`` tests them. Pure functions; every choice is made on
validation labels only, test labels are never read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch



_MAX_GRID_POINTS = 1_000_000
_MAX_CHUNK_ELEMENTS = 1 << 24


def _stack_outputs(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``M`` outputs ``[N, C]`` -> ``[M, N, C]`` float32, checked (non-empty, 2-D, same shape)."""
    if outputs is None or len(outputs) == 0:
        raise ValueError("ensemble of zero models: `outputs` is empty")
    for i, o in enumerate(outputs):
        if not isinstance(o, torch.Tensor):
            raise ValueError(f"outputs[{i}] is a {type(o).__name__}, expected a torch.Tensor")
        if o.dim() != 2:
            raise ValueError(f"outputs[{i}] has shape {tuple(o.shape)}; expected [N, C]")
        if not o.is_floating_point():
            raise ValueError(f"outputs[{i}] has dtype {o.dtype}; expected floating-point logits")
    shapes = {tuple(o.shape) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"outputs differ in shape: {sorted(shapes)}")
    n, c = next(iter(shapes))
    if n == 0 or c == 0:
        raise ValueError(f"outputs have an empty shape {(n, c)}")
    return torch.stack([o.detach().float() for o in outputs])


def _scores(stacked: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-model scores to be averaged: the logits themselves or their softmax."""
    if mode == "logits":
        return stacked
    if mode == "probs":
        return stacked.softmax(-1)
    raise ValueError(f"unknown ensemble mode {mode!r}; expected 'logits' or 'probs'")


def _index(idx, n: int, what: str) -> torch.Tensor:
    """A non-empty 1-D int64 node index (a bool mask is turned into indices), within ``[0, n)``."""
    idx = torch.as_tensor(idx)
    if idx.dtype == torch.bool:
        if idx.shape != (n,):
            raise ValueError(f"{what} is a mask of shape {tuple(idx.shape)}; expected ({n},)")
        idx = idx.nonzero().view(-1)
    if idx.dim() != 1 or idx.is_floating_point() or idx.is_complex():
        raise ValueError(f"{what} must be a 1-D integer index tensor, got {idx.dtype} {tuple(idx.shape)}")
    if idx.numel() == 0:
        raise ValueError(f"{what} is empty")
    idx = idx.long()
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise ValueError(f"{what} has indices outside [0, {n}): min {int(idx.min())}, max {int(idx.max())}")
    return idx


def _labels_at(y, idx: torch.Tensor, n: int, c: int, what: str) -> torch.Tensor:
    """``y[idx]`` as int64 after checking ``y`` is ``[N]`` integer; only the entries at ``idx`` are read."""
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"labels have shape {tuple(y.shape)}; expected [{n}] (one per node)")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels have dtype {y.dtype}; expected an integer dtype")
    part = y[idx].long()
    if int(part.min()) < 0 or int(part.max()) >= c:
        raise ValueError(f"{what} labels outside [0, {c}): min {int(part.min())}, max {int(part.max())}")
    return part


def _grid_units(grid_step: float) -> int:
    """``K = 1 / grid_step`` as an integer (the grid is ``{k / K}``); ValueError if not one."""
    try:
        step = float(grid_step)
    except (TypeError, ValueError):
        raise ValueError(f"grid_step must be a number in (0, 1], got {grid_step!r}") from None
    if not math.isfinite(step) or not 0.0 < step <= 1.0:
        raise ValueError(f"grid_step must be in (0, 1], got {grid_step!r}")
    units = round(1.0 / step)
    if abs(units * step - 1.0) > 1e-9:
        raise ValueError(f"grid_step must divide 1 exactly (1/step an integer), got {grid_step!r}")
    return units


def _compositions(total: int, parts: int):
    """All tuples of ``parts`` non-negative ints summing to ``total``, in lexicographic order."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total + 1):
        for rest in _compositions(total - first, parts - 1):
            yield (first,) + rest


def fit_ensemble_weights(
    outputs: Sequence[torch.Tensor],
    y: torch.Tensor,
    val_idx: torch.Tensor,
    mode: str = "probs",
    grid_step: float = 0.1,
) -> tuple[float, ...]:
    r"""Ensemble weights on the simplex that maximise validation accuracy (grid search).

    A cheap lever on TAPE's h_TAPE (He et al., ICLR 2024, Sec. 4.4), which averages the TA, E and
    P models with equal weights. Here the weighted average

    .. math::
        \mathbf{S} = \sum_m w_m \, f(\mathbf{Z}_m), \qquad w_m \ge 0,\ \sum_m w_m = 1,

    (:math:`f` = identity for ``mode="logits"``, softmax for ``mode="probs"``) is scored by its
    arg-max accuracy on the validation nodes for every ``w`` of the grid
    :math:`\{k / K\}^M \cap \text{simplex}` with :math:`K = 1/\text{grid\_step}`, plus the exact
    uniform point :math:`(1/M, \dots, 1/M)` (not on the grid when ``K`` is not a multiple of
    ``M``). Ties go to the weights closest (Euclidean) to uniform, then to the uniform point, then to
    the first in lexicographic order; so with no signal in the validation set this returns TAPE's
    plain average.

    Only ``y[val_idx]`` is read: train and test labels never influence the weights.

    Args:
        outputs: ``M`` float tensors ``[N, C]`` (logits), the same model and seed on different
            features (e.g. TA, E, P), rows in node order.
        y: ``[N]`` integer labels; only the entries at ``val_idx`` are read (others may be
            anything, e.g. ``-1``).
        val_idx: ``[V]`` int64 validation node indices (or an ``[N]`` bool mask), non-empty.
        mode: ``"probs"`` (default: average softmax probabilities) or ``"logits"`` (TAPE).
        grid_step: grid resolution in ``(0, 1]``; ``1 / grid_step`` must be an integer
            (default ``0.1``: 66 points for ``M = 3``).

    Returns:
        ``M`` floats ``>= 0`` summing to 1 (up to float rounding), in the order of ``outputs``;
        pass them to :func:`weighted_ensemble`.

    Raises:
        ValueError: empty ``outputs``, mismatched or non-2-D shapes, labels of the wrong shape or
            dtype or out of ``[0, C)`` at ``val_idx``, an empty or out-of-range ``val_idx``, an
            unknown ``mode``, a ``grid_step`` outside ``(0, 1]`` or not dividing 1, or a grid of more
            than a million points.
    """
    stacked = _stack_outputs(outputs)
    m, n, c = stacked.shape
    units = _grid_units(grid_step)
    idx = _index(val_idx, n, "val_idx")
    y_val = _labels_at(y, idx, n, c, "validation")
    if math.comb(units + m - 1, m - 1) > _MAX_GRID_POINTS:
        raise ValueError(
            f"weight grid too large: {math.comb(units + m - 1, m - 1)} points for {m} models at "
            f"step {grid_step}; use a coarser grid_step"
        )
    scores = _scores(stacked[:, idx].double(), mode)  # [M, V, C]

    grid = list(_compositions(units, m))
    weights = torch.tensor([[1.0 / m] * m] + [[k / units for k in g] for g in grid], dtype=torch.float64)
    # squared distance to uniform, scaled by (M K)^2 so that it is an exact integer
    dist = [0] + [sum((m * k - units) ** 2 for k in g) for g in grid]
    chunk = max(1, _MAX_CHUNK_ELEMENTS // (idx.numel() * c))
    correct: list[int] = []
    for start in range(0, weights.shape[0], chunk):
        combined = torch.einsum("gm,mvc->gvc", weights[start : start + chunk], scores)
        correct += (combined.argmax(-1) == y_val).sum(-1).tolist()
    best = min(range(len(correct)), key=lambda i: (-correct[i], dist[i], i))
    if best == 0:
        return tuple(1.0 / m for _ in range(m))
    return tuple(k / units for k in grid[best - 1])


def weighted_ensemble(
    outputs: Sequence[torch.Tensor], weights: Sequence[float], mode: str = "probs"
) -> torch.Tensor:
    """Weighted average of the outputs of models trained on different features.

    :func:`ensemble_logits` with weights: ``sum_m weights[m] * f(outputs[m])`` where ``f`` is the
    identity (``mode="logits"``) or the softmax (``mode="probs"``). Uniform weights give
    :func:`ensemble_logits` (up to float rounding).

    Args:
        outputs: ``M`` float tensors ``[N, C]`` (logits).
        weights: ``M`` non-negative finite floats summing to 1 (tolerance ``1e-6``), e.g. from
            :func:`fit_ensemble_weights`.
        mode: ``"probs"`` (default) or ``"logits"``.

    Returns:
        ``[N, C]`` float32 scores (probabilities summing to 1 per row for ``"probs"``); the
        arg-max is the ensemble's prediction.

    Raises:
        ValueError: empty or mismatched ``outputs``, ``len(weights) != M``, negative or
            non-finite weights, weights not summing to 1, or an unknown ``mode``.
    """
    stacked = _stack_outputs(outputs)
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.dim() != 1 or w.numel() != stacked.shape[0]:
        raise ValueError(f"{w.numel()} weights for {stacked.shape[0]} outputs")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
    if abs(float(w.sum()) - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1, got {float(w.sum())!r}")
    scores = _scores(stacked.double(), mode)
    return torch.einsum("m,mnc->nc", w, scores).float()


def _normalized_adjacency(edge_index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Symmetric, self-loop-free ``edge_index`` and its :math:`D^{-1/2} A D^{-1/2}` edge weights."""
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    from torch_geometric.utils import remove_self_loops, to_undirected

    ei = to_undirected(edge_index.long(), num_nodes=num_nodes)
    ei, _ = remove_self_loops(ei)
    ei, ew = gcn_norm(ei, None, num_nodes=num_nodes, add_self_loops=False)
    return ei, ew


def _check_cs_inputs(scores, y, train_idx, edge_index, num_nodes):
    """Validated ``(scores float32 [N, C], y_train [T], train_idx [T], edge_index [2, E])``."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or not scores.is_floating_point():
        raise ValueError(
            f"scores must be a float tensor [N, C], got "
            f"{getattr(scores, 'dtype', type(scores).__name__)} {tuple(getattr(scores, 'shape', ()))}"
        )
    n, c = scores.shape
    if int(num_nodes) != n:
        raise ValueError(f"num_nodes={num_nodes} but scores has {n} rows")
    if n == 0 or c == 0:
        raise ValueError(f"scores has an empty shape {(n, c)}")
    s = scores.detach().float()
    if not torch.isfinite(s).all() or (s < 0).any() or not torch.allclose(s.sum(-1), torch.ones(n), atol=1e-3):
        raise ValueError("scores must be probabilities (non-negative, rows summing to 1); apply softmax to logits")
    idx = _index(train_idx, n, "train_idx")
    y_train = _labels_at(y, idx, n, c, "training")
    edge_index = torch.as_tensor(edge_index)
    if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.is_floating_point():
        raise ValueError(
            f"edge_index must be an integer tensor [2, E], got {edge_index.dtype} {tuple(edge_index.shape)}"
        )
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise ValueError(f"edge_index has node ids outside [0, {n})")
    return s, y_train, idx, edge_index.long()


def _check_cs_params(num_correction_layers, correction_alpha, num_smoothing_layers, smoothing_alpha, scale):
    for name, v in (("num_correction_layers", num_correction_layers), ("num_smoothing_layers", num_smoothing_layers)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    for name, v in (("correction_alpha", correction_alpha), ("smoothing_alpha", smoothing_alpha)):
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale!r}")


def _cs_model(num_correction_layers, correction_alpha, num_smoothing_layers, smoothing_alpha, autoscale, scale):
    from torch_geometric.nn.models import CorrectAndSmooth

    _check_cs_params(num_correction_layers, correction_alpha, num_smoothing_layers, smoothing_alpha, scale)
    return CorrectAndSmooth(
        num_correction_layers=num_correction_layers, correction_alpha=float(correction_alpha),
        num_smoothing_layers=num_smoothing_layers, smoothing_alpha=float(smoothing_alpha),
        autoscale=bool(autoscale), scale=float(scale),
    )


def _correct(cs, s, y_train, idx, ei, ew) -> torch.Tensor:
    """``cs.correct``; NaN rows (PyG's autoscale divides 0 by 0 when the training residual is
    exactly zero) fall back to the uncorrected scores."""
    out = cs.correct(s, y_train, idx, ei, ew)
    return torch.where(torch.isnan(out), s, out)


def correct_and_smooth(
    scores: torch.Tensor,
    y: torch.Tensor,
    train_idx: torch.Tensor,
    edge_index: torch.Tensor,
    num_nodes: int,
    num_correction_layers: int = 50,
    correction_alpha: float = 0.5,
    num_smoothing_layers: int = 50,
    smoothing_alpha: float = 0.8,
    autoscale: bool = True,
    scale: float = 1.0,
) -> torch.Tensor:
    r"""Correct & Smooth post-processing of soft predictions (Huang et al., ICLR 2021).

    From `"Combining Label Propagation And Simple Models Out-performs Graph Neural Networks"
    <https://arxiv.org/abs/2010.13993>`_, via PyG's
    :class:`torch_geometric.nn.models.CorrectAndSmooth`: the residuals
    :math:`\mathbf{Y} - \mathbf{Z}` on the known nodes are propagated over
    :math:`\mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2}` and added back (correct; scaled
    automatically or by ``scale``), then the known labels are planted and label propagation
    smooths the result (smooth).

    The graph is made undirected and self-loop free, and its symmetric normalisation
    :math:`\mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2}` (``gcn_norm`` without self loops, as
    PyG's :class:`~torch_geometric.nn.models.LabelPropagation` does) is passed as
    ``edge_index`` + ``edge_weight``; no ``torch-sparse`` is needed.

    **Known labels are the training labels only**: ``y`` is read at ``train_idx`` and nowhere
    else. When the C&S hyper-parameters are chosen on validation accuracy (see
    :func:`tune_correct_and_smooth`), validation labels must not be passed as known labels
    (the smoothing step copies known labels into the output, so validation accuracy would be
    ~1 and the choice meaningless). The C&S paper adds validation labels for the final test
    predictions; we do not, so that the result stays comparable with TAPE's protocol.

    Args:
        scores: ``[N, C]`` float probabilities (rows sum to 1, e.g. an ensemble's softmax);
            apply softmax to logits first.
        y: ``[N]`` integer labels; only the entries at ``train_idx`` are read.
        train_idx: ``[T]`` int64 training node indices (or an ``[N]`` bool mask), non-empty.
        edge_index: ``[2, E]`` int64 edges (either direction; symmetrised here).
        num_nodes: ``N``; must equal ``scores.shape[0]``.
        num_correction_layers: propagations :math:`L_1` of the correction step (default 50).
        correction_alpha: :math:`\alpha_1 \in [0, 1]` (default 0.5; 0 = no correction).
        num_smoothing_layers: propagations :math:`L_2` of the smoothing step (default 50).
        smoothing_alpha: :math:`\alpha_2 \in [0, 1]` (default 0.8; 0 = no smoothing).
        autoscale: choose the correction scale :math:`\gamma` automatically (default ``True``).
        scale: fixed :math:`\gamma` when ``autoscale`` is ``False`` (default 1.0).

    Returns:
        ``[N, C]`` float32 corrected and smoothed scores (not normalised; arg-max = prediction;
        training rows carry their planted labels, so train accuracy is no longer informative).

    Raises:
        ValueError: ``scores`` not ``[N, C]`` probabilities, ``num_nodes`` mismatch, labels of
            the wrong shape/dtype or outside ``[0, C)`` at ``train_idx``, empty or out-of-range
            ``train_idx``, bad ``edge_index``, negative layers, alphas outside ``[0, 1]`` or a
            non-finite ``scale``.
    """
    s, y_train, idx, ei = _check_cs_inputs(scores, y, train_idx, edge_index, num_nodes)
    cs = _cs_model(num_correction_layers, correction_alpha, num_smoothing_layers, smoothing_alpha, autoscale, scale)
    ei, ew = _normalized_adjacency(ei, s.shape[0])
    with torch.no_grad():
        out = _correct(cs, s, y_train, idx, ei, ew)
        out = cs.smooth(out, y_train, idx, ei, ew)
    return out.float()


CS_LAYERS: tuple[int, ...] = (10, 50)
CS_CORRECTION_ALPHAS: tuple[float, ...] = (0.0, 0.5, 0.8, 1.0)
CS_SMOOTHING_ALPHAS: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.9)
CS_SCALES: tuple[float | None, ...] = (None, 1.0, 5.0)


def tune_correct_and_smooth(
    scores: torch.Tensor,
    y: torch.Tensor,
    train_idx: torch.Tensor,
    val_idx: torch.Tensor,
    edge_index: torch.Tensor,
    num_nodes: int,
    layers: Sequence[int] = CS_LAYERS,
    correction_alphas: Sequence[float] = CS_CORRECTION_ALPHAS,
    smoothing_alphas: Sequence[float] = CS_SMOOTHING_ALPHAS,
    scales: Sequence[float | None] = CS_SCALES,
) -> tuple[dict, float]:
    r"""Choose :func:`correct_and_smooth`'s hyper-parameters by validation accuracy (small grid).

    Every combination of ``layers`` (used for both steps), ``scales`` (``None`` = autoscale),
    ``correction_alphas`` and ``smoothing_alphas`` is run with the **training labels only** as
    known labels and scored by arg-max accuracy on ``val_idx``. The correction is computed once
    per (layers, scale, correction alpha) and reused for every smoothing alpha (same result as
    calling :func:`correct_and_smooth`). The default grid (2 x 3 x 4 x 5 = 120 points) contains
    the no-op ``correction_alpha = smoothing_alpha = 0`` (base predictions unchanged off the
    training nodes), first in grid order; ties go to the earliest point, so C&S is only kept when
    it strictly helps validation accuracy. Only ``y[train_idx]`` and ``y[val_idx]`` are read.

    Args:
        scores: ``[N, C]`` float probabilities (see :func:`correct_and_smooth`).
        y: ``[N]`` integer labels; read at ``train_idx`` (known labels) and ``val_idx`` (scoring).
        train_idx: ``[T]`` int64 training node indices (or bool mask).
        val_idx: ``[V]`` int64 validation node indices (or bool mask); must not overlap
            ``train_idx``.
        edge_index: ``[2, E]`` int64 edges.
        num_nodes: ``N``.
        layers: propagation depths tried for both steps (default ``(10, 50)``).
        correction_alphas: :math:`\alpha_1` values (default ``(0.0, 0.5, 0.8, 1.0)``).
        smoothing_alphas: :math:`\alpha_2` values (default ``(0.0, 0.5, 0.7, 0.8, 0.9)``).
        scales: correction scales; ``None`` = autoscale (default ``(None, 1.0, 5.0)``).

    Returns:
        ``(params, val_acc)``: ``params`` are keyword arguments for :func:`correct_and_smooth`
        (``num_correction_layers``, ``correction_alpha``, ``num_smoothing_layers``,
        ``smoothing_alpha``, ``autoscale``, ``scale``); ``val_acc`` their validation accuracy.

    Raises:
        ValueError: as :func:`correct_and_smooth`; also an empty grid, an empty or out-of-range
            ``val_idx``, or ``val_idx`` overlapping ``train_idx``.
    """
    s, y_train, tidx, ei = _check_cs_inputs(scores, y, train_idx, edge_index, num_nodes)
    n, c = s.shape
    vidx = _index(val_idx, n, "val_idx")
    if torch.isin(vidx, tidx).any():
        raise ValueError("val_idx overlaps train_idx: validation labels would be fed to C&S as known labels")
    y_val = _labels_at(y, vidx, n, c, "validation")
    if not (layers and correction_alphas and smoothing_alphas and scales):
        raise ValueError("empty C&S grid: layers, correction_alphas, smoothing_alphas and scales must be non-empty")
    ei, ew = _normalized_adjacency(ei, n)
    best: tuple[int, dict] | None = None
    with torch.no_grad():
        for num_layers in layers:
            for sc in scales:
                for ca in correction_alphas:
                    autoscale = sc is None
                    scale = 1.0 if sc is None else float(sc)
                    cs = _cs_model(num_layers, ca, num_layers, 0.0, autoscale, scale)
                    corrected = _correct(cs, s, y_train, tidx, ei, ew)
                    for sa in smoothing_alphas:
                        params = {
                            "num_correction_layers": int(num_layers), "correction_alpha": float(ca),
                            "num_smoothing_layers": int(num_layers), "smoothing_alpha": float(sa),
                            "autoscale": autoscale, "scale": scale,
                        }
                        out = _cs_model(**params).smooth(corrected, y_train, tidx, ei, ew)
                        hits = int((out[vidx].argmax(-1) == y_val).sum())
                        if best is None or hits > best[0]:
                            best = (hits, params)
    assert best is not None
    return best[1], best[0] / vidx.numel()
