"""Tests for the accuracy levers of bench/levers.py: val-fitted weights and Correct & Smooth."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from tag_pipeline.ensemble import ensemble_logits

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from levers import correct_and_smooth, fit_ensemble_weights, tune_correct_and_smooth, weighted_ensemble  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _outputs(m=3, n=40, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, generator=g) * 2 for _ in range(m)]


def _labels(n=40, c=4, seed=1):
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


def _on_grid(w, step):
    units = round(1 / step)
    return all(abs(x * units - round(x * units)) < 1e-9 for x in w)


def _acc(scores, y, idx):
    return (scores[idx].argmax(-1) == y[idx]).float().mean().item()


# ---------------------------------------------------------------- fit_ensemble_weights


@pytest.mark.parametrize("m,step,mode", [(2, 0.1, "probs"), (3, 0.1, "logits"), (4, 0.25, "probs"), (5, 0.2, "logits")])
def test_weights_sum_to_one_and_lie_on_the_grid(m, step, mode):
    outs, y = _outputs(m=m), _labels()
    w = fit_ensemble_weights(outs, y, torch.arange(10, 30), mode=mode, grid_step=step)
    assert isinstance(w, tuple) and len(w) == m
    assert all(isinstance(x, float) and x >= 0 for x in w)
    assert math.isclose(sum(w), 1.0, abs_tol=1e-9)
    uniform = all(math.isclose(x, 1 / m) for x in w)
    assert _on_grid(w, step) or uniform


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("mode", ["logits", "probs"])
def test_identical_outputs_give_uniform_weights(m, mode):
    (x,) = _outputs(m=1)
    w = fit_ensemble_weights([x.clone() for _ in range(m)], _labels(), torch.arange(40), mode=mode)
    assert w == tuple(1 / m for _ in range(m))  # exactly TAPE's plain average (1/3 is off the 0.1 grid)


@pytest.mark.parametrize("mode", ["logits", "probs"])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_model_perfect_on_val_gets_all_the_weight(mode, position):
    n, c = 60, 4
    y = _labels(n, c)
    g = torch.Generator().manual_seed(3)
    # barely right everywhere vs confidently random: any weight on the random models flips some nodes
    perfect = 0.1 * torch.nn.functional.one_hot(y, c).float()
    noise = [10.0 * torch.nn.functional.one_hot(torch.randint(0, c, (n,), generator=g), c).float() for _ in range(2)]
    outs = noise[:position] + [perfect] + noise[position:]
    w = fit_ensemble_weights(outs, y, torch.arange(20, 40), mode=mode)
    expected = [0.0, 0.0, 0.0]
    expected[position] = 1.0
    assert w == tuple(expected)


def test_only_validation_labels_are_read():
    outs, y = _outputs(n=60), _labels(60)
    val = torch.arange(20, 35)
    w = fit_ensemble_weights(outs, y, val)
    y2 = torch.randint(0, 4, (60,), generator=torch.Generator().manual_seed(9))
    y2[val] = y[val]
    assert fit_ensemble_weights(outs, y2, val) == w
    y3 = torch.full((60,), -1)  # out-of-range labels off val are never even looked at
    y3[val] = y[val]
    assert fit_ensemble_weights(outs, y3, val) == w
    mask = torch.zeros(60, dtype=torch.bool)
    mask[val] = True
    assert fit_ensemble_weights(outs, y3, mask) == w


def test_weights_maximise_validation_accuracy():
    outs, y = _outputs(n=80), _labels(80)
    val = torch.arange(80)
    w = fit_ensemble_weights(outs, y, val, mode="probs")
    best = _acc(weighted_ensemble(outs, w, mode="probs"), y, val)
    assert best >= _acc(ensemble_logits(outs, "probs"), y, val)
    assert all(best >= _acc(o, y, val) for o in outs)


def test_weighted_ensemble_matches_plain_average_and_keeps_inputs():
    outs = _outputs()
    copies = [o.clone() for o in outs]
    for mode in ("logits", "probs"):
        out = weighted_ensemble(outs, (1 / 3, 1 / 3, 1 / 3), mode=mode)
        assert out.shape == (40, 4) and out.dtype == torch.float32
        assert torch.allclose(out, ensemble_logits(outs, mode), atol=1e-6)
    p = weighted_ensemble(outs, (0.2, 0.0, 0.8))
    assert torch.allclose(p, 0.2 * outs[0].softmax(-1) + 0.8 * outs[2].softmax(-1), atol=1e-6)
    assert torch.allclose(p.sum(-1), torch.ones(40), atol=1e-6)
    assert all(torch.equal(o, c) for o, c in zip(outs, copies))


def test_weight_errors():
    outs, y = _outputs(), _labels()
    val = torch.arange(10)
    with pytest.raises(ValueError, match="zero models"):
        fit_ensemble_weights([], y, val)
    with pytest.raises(ValueError, match="shape"):
        fit_ensemble_weights([outs[0], outs[1][:, :3]], y, val)
    with pytest.raises(ValueError, match="shape"):
        fit_ensemble_weights([outs[0], outs[1][:30]], y, val)
    with pytest.raises(ValueError, match=r"expected \[N, C\]"):
        fit_ensemble_weights([outs[0][0]], y, val)
    for step in (0, -0.1, 0.3, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match="grid_step"):
            fit_ensemble_weights(outs, y, val, grid_step=step)
    with pytest.raises(ValueError, match="mode"):
        fit_ensemble_weights(outs, y, val, mode="median")
    with pytest.raises(ValueError, match="labels have shape"):
        fit_ensemble_weights(outs, y[:30], val)
    with pytest.raises(ValueError, match="val_idx is empty"):
        fit_ensemble_weights(outs, y, torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        fit_ensemble_weights(outs, y, torch.tensor([0, 40]))
    with pytest.raises(ValueError, match="validation labels outside"):
        fit_ensemble_weights(outs, torch.full((40,), 7), val)
    with pytest.raises(ValueError, match="too large"):
        fit_ensemble_weights(_outputs(m=8), y, val, grid_step=0.01)
    with pytest.raises(ValueError, match="3 outputs"):
        weighted_ensemble(outs, (0.5, 0.5))
    with pytest.raises(ValueError, match="sum to 1"):
        weighted_ensemble(outs, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="non-negative"):
        weighted_ensemble(outs, (1.5, -0.5, 0.0))
    with pytest.raises(ValueError, match="zero models"):
        weighted_ensemble([], ())


# ---------------------------------------------------------------- Correct & Smooth


def _sbm(n_per_class=50, c=3, p_in=0.12, p_out=0.005, seed=0):
    """A small homophilous stochastic block model, noisy base probabilities and a split."""
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * c
    y = torch.arange(c).repeat_interleave(n_per_class)
    same = y[:, None] == y[None, :]
    prob = torch.where(same, torch.tensor(p_in), torch.tensor(p_out))
    upper = torch.triu(torch.rand(n, n, generator=g) < prob, diagonal=1)
    edge_index = upper.nonzero().t()
    edge_index = torch.cat([edge_index, edge_index.flip(0)], 1)
    logits = 1.0 * torch.nn.functional.one_hot(y, c).float() + 1.2 * torch.randn(n, c, generator=g)
    perm = torch.randperm(n, generator=g)
    train, val, test = perm[: int(0.4 * n)], perm[int(0.4 * n) : int(0.6 * n)], perm[int(0.6 * n) :]
    return logits.softmax(-1), y, edge_index, train.sort().values, val.sort().values, test.sort().values


def test_correct_and_smooth_improves_noisy_predictions_on_a_homophilous_graph():
    probs, y, edge_index, train, val, test = _sbm()
    n = y.numel()
    base = _acc(probs, y, test)
    out = correct_and_smooth(probs, y, train, edge_index, n)
    assert out.shape == probs.shape and out.dtype == torch.float32
    assert torch.equal(out[train].argmax(-1), y[train])  # known labels are planted
    assert _acc(out, y, test) > base + 0.15, (base, _acc(out, y, test))


def test_correct_and_smooth_reads_no_label_outside_train():
    probs, y, edge_index, train, val, test = _sbm()
    n = y.numel()
    out = correct_and_smooth(probs, y, train, edge_index, n, autoscale=False, scale=2.0)
    y2 = y.clone()
    y2[val] = (y[val] + 1) % 3
    y2[test] = -1
    assert torch.equal(correct_and_smooth(probs, y2, train, edge_index, n, autoscale=False, scale=2.0), out)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[train] = True
    assert torch.equal(correct_and_smooth(probs, y2, mask, edge_index, n, autoscale=False, scale=2.0), out)


def test_correct_and_smooth_accepts_one_direction_of_each_edge():
    probs, y, edge_index, train, _, _ = _sbm()
    one_way = edge_index[:, edge_index[0] < edge_index[1]]
    n = y.numel()
    assert torch.allclose(
        correct_and_smooth(probs, y, train, one_way, n), correct_and_smooth(probs, y, train, edge_index, n)
    )


def test_zero_alphas_leave_non_training_rows_unchanged():
    probs, y, edge_index, train, val, test = _sbm()
    out = correct_and_smooth(probs, y, train, edge_index, y.numel(), correction_alpha=0.0, smoothing_alpha=0.0)
    rest = torch.cat([val, test])
    assert torch.allclose(out[rest], probs[rest])


def test_tune_correct_and_smooth_chooses_on_validation_only():
    probs, y, edge_index, train, val, test = _sbm()
    n = y.numel()
    grid = dict(layers=(10,), correction_alphas=(0.0, 0.8), smoothing_alphas=(0.0, 0.8), scales=(None, 1.0))
    params, val_acc = tune_correct_and_smooth(probs, y, train, val, edge_index, n, **grid)
    assert set(params) == {
        "num_correction_layers", "correction_alpha", "num_smoothing_layers", "smoothing_alpha", "autoscale", "scale",
    }
    out = correct_and_smooth(probs, y, train, edge_index, n, **params)
    assert val_acc == pytest.approx(_acc(out, y, val))
    assert val_acc >= _acc(probs, y, val)  # the no-op is in the grid
    y2 = y.clone()
    y2[test] = -1
    assert tune_correct_and_smooth(probs, y2, train, val, edge_index, n, **grid) == (params, val_acc)


def test_tune_without_signal_keeps_the_no_op():
    probs, y, edge_index, train, val, _ = _sbm()
    n = y.numel()
    empty = torch.empty(2, 0, dtype=torch.long)  # no edges: nothing can change off the training nodes
    params, val_acc = tune_correct_and_smooth(probs, y, train, val, empty, n)
    assert params["correction_alpha"] == 0.0 and params["smoothing_alpha"] == 0.0
    assert val_acc == pytest.approx(_acc(probs, y, val))


def test_correct_and_smooth_errors():
    probs, y, edge_index, train, val, _ = _sbm()
    n = y.numel()
    with pytest.raises(ValueError, match="probabilities"):
        correct_and_smooth(probs.log(), y, train, edge_index, n)
    with pytest.raises(ValueError, match="num_nodes"):
        correct_and_smooth(probs, y, train, edge_index, n + 1)
    with pytest.raises(ValueError, match=r"float tensor \[N, C\]"):
        correct_and_smooth(probs[0], y, train, edge_index, n)
    with pytest.raises(ValueError, match="train_idx is empty"):
        correct_and_smooth(probs, y, torch.tensor([], dtype=torch.long), edge_index, n)
    with pytest.raises(ValueError, match="labels have shape"):
        correct_and_smooth(probs, y[:10], train, edge_index, n)
    with pytest.raises(ValueError, match="edge_index"):
        correct_and_smooth(probs, y, train, edge_index[0], n)
    with pytest.raises(ValueError, match="edge_index"):
        correct_and_smooth(probs, y, train, edge_index + n, n)
    with pytest.raises(ValueError, match="correction_alpha"):
        correct_and_smooth(probs, y, train, edge_index, n, correction_alpha=1.5)
    with pytest.raises(ValueError, match="num_smoothing_layers"):
        correct_and_smooth(probs, y, train, edge_index, n, num_smoothing_layers=-1)
    with pytest.raises(ValueError, match="overlaps"):
        tune_correct_and_smooth(probs, y, train, train[:5], edge_index, n)
    with pytest.raises(ValueError, match="empty C&S grid"):
        tune_correct_and_smooth(probs, y, train, val, edge_index, n, scales=())
