"""Tests for tag_pipeline.ensemble.ensemble_logits (TAPE's h_TAPE averaging)."""

from __future__ import annotations

import pytest
import torch

from tag_pipeline.ensemble import ensemble_logits


def _outputs(m=3, n=5, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, generator=g) * 3 for _ in range(m)]


def test_logits_mode_is_the_arithmetic_mean():
    a = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    b = torch.tensor([[3.0, 0.0], [-1.0, 4.0]])
    c = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    out = ensemble_logits([a, b, c])
    assert out.shape == (2, 2) and out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[2.0, 1.0], [1.0, 1.0]]))
    assert torch.allclose(ensemble_logits([a, b], mode="logits"), (a + b) / 2)


def test_single_output_is_returned_unchanged():
    (x,) = _outputs(m=1)
    assert torch.allclose(ensemble_logits([x]), x)
    assert torch.allclose(ensemble_logits([x], mode="probs"), x.softmax(-1))


def test_probs_mode_rows_sum_to_one_and_average_softmax():
    outs = _outputs()
    p = ensemble_logits(outs, mode="probs")
    assert p.shape == (5, 4) and p.dtype == torch.float32
    assert torch.allclose(p.sum(-1), torch.ones(5), atol=1e-6)
    assert (p >= 0).all() and (p <= 1).all()
    expected = sum(o.softmax(-1) for o in outs) / len(outs)
    assert torch.allclose(p, expected, atol=1e-6)


def test_modes_can_disagree():
    # one model is extremely confident in class 0; three mildly prefer class 1
    loud = torch.tensor([[20.0, 0.0]])
    mild = torch.tensor([[0.0, 2.0]])
    outs = [loud, mild, mild, mild]
    assert ensemble_logits(outs, "logits").argmax(-1).item() == 0  # mean logits [5.0, 1.5]
    assert ensemble_logits(outs, "probs").argmax(-1).item() == 1  # mean probs ~[0.34, 0.66]


def test_inputs_are_not_modified_and_half_precision_is_upcast():
    outs = [o.half() for o in _outputs()]
    copies = [o.clone() for o in outs]
    out = ensemble_logits(outs)
    assert out.dtype == torch.float32
    assert all(torch.equal(o, c) for o, c in zip(outs, copies))


def test_errors():
    a, b = _outputs(m=2)
    with pytest.raises(ValueError, match="zero"):
        ensemble_logits([])
    with pytest.raises(ValueError, match="shape"):
        ensemble_logits([a, b[:, :3]])
    with pytest.raises(ValueError, match="shape"):
        ensemble_logits([a, b[:4]])
    with pytest.raises(ValueError, match="mode"):
        ensemble_logits([a, b], mode="median")
