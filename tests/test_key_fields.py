"""Every config field is in its stage's key or listed here with the reason it cannot change a result.

A lake key is a promise: same key, same numbers. For each config that feeds a key, every
field is set to another valid value and the key is recomputed with the library's own key
function: the fields of :data:`OUT_OF_KEY` must leave it alone, every other field must move
it. A new field fails :func:`test_every_field_is_classified` until someone decides which it is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tag_pipeline.config import DatasetConfig, FinetuneConfig, GNNConfig, LMConfig
from tag_pipeline.datasets import graph_key, materialize_graph
from tag_pipeline.features.stage import text_feature_path
from tag_pipeline.finetune import finetune_key
from tag_pipeline.llm.config import LocalLLMConfig, OfflineLLMConfig, OnlineLLMConfig
from tag_pipeline.train import training_key

#: ``{config: {field: why it cannot change the artifact}}``.
OUT_OF_KEY: dict[str, dict[str, str]] = {
    "LMConfig": {
        "batch_size": "texts per forward pass; each text is encoded on its own mask, rows agree to float rounding",
        "shard_size": "checkpoint granularity; rows of a sharded run equal an unsharded one's to float rounding",
        "runtime": "torch and ONNX Runtime in float32 agree to |1 - cos| < 1e-6; a non-fp32 precision it resolves "
                   "to enters the key (see precision)",
        "device": "where it runs; the arithmetic it implies (bf16/fp16 autocast) enters the key as the resolved "
                  "precision",
    },
    "GNNConfig": {
        "threads": "torch CPU threads: the same full-batch operations, float rounding only",
        "workers": "runs in parallel processes, each seeded itself: identical results (tests/flows/test_parallel_training.py)",
        "adjacency": "edge_index vs one sparse product per layer: same outputs to float rounding",
    },
    "FinetuneConfig": {
        "threads": "torch CPU threads: float rounding only",
        "eval_batch_size": "texts per inference pass after training: padding is masked, float rounding only",
    },
    "DatasetConfig": {
        "root": "where the raw files are; their contents are in the key (files_digest), not their place",
    },
    "OnlineLLMConfig": {
        "api_key_env": "which variable holds the secret; not what the model answers",
        "rpm": "rate limit: when requests go, not what comes back",
        "tpm": "rate limit", "burst_s": "rate limit", "max_concurrency": "requests in flight",
        "timeout_s": "whether an answer arrives, not what it says",
        "max_attempts": "retries of a failed request", "backoff_base_s": "retry timing", "backoff_max_s": "retry timing",
        "max_reasks": "whether an unparsable answer is asked again; a failure is re-asked with reask_failed",
        "max_calls": "budget: whether the stage finishes, not the answers", "max_total_tokens": "budget",
        "cache_dir": "where answers are cached; the cache is keyed by what it holds",
        "reask_failed": "asks failed answers again; answers that parsed are unchanged",
    },
    "LocalLLMConfig": {
        "model": "the file's sha256 is keyed, not its name or path (a copy under another name shares the key)",
        "served_model": "the name sent to the server; the file it serves is keyed by its digest",
        "servers": "how many servers answer side by side; each decodes one prompt at a time, greedily "
                   "(tests/llm/test_local.py: same answers)",
        "threads": "CPU threads per server: same answers (tests/llm/test_local.py, 1 vs 2 threads)",
        "startup_timeout_s": "how long to wait for the server", "rpm": "rate limit",
        "max_concurrency": "requests in flight", "timeout_s": "whether an answer arrives",
        "max_attempts": "retries of a failed request",
        "max_reasks": "whether an unparsable answer is asked again; a failure is re-asked with reask_failed",
        "max_calls": "budget", "cache_dir": "where answers are cached",
        "reask_failed": "asks failed answers again; answers that parsed are unchanged",
    },
    "OfflineLLMConfig": {
        "batch_size": "vLLM's batch scheduling (see llm.offline.generation_params)",
        "gpu_memory_utilization": "KV-cache memory of the GPU", "tensor_parallel_size": "GPUs per model",
        "max_reasks": "whether an unparsable answer is asked again", "cache_dir": "where answers are cached",
        "reask_failed": "asks failed answers again; answers that parsed are unchanged",
    },
}

#: The other value each field is set to (fields whose type alone does not give one).
OTHER = {
    ("LMConfig", "runtime"): "onnx", ("LMConfig", "device"): "cpu:0", ("LMConfig", "precision"): "bf16",
    ("GNNConfig", "num_layers"): {"mlp": 2, "gcn": 3, "sage": 3, "revgat": 3},
    ("FinetuneConfig", "precision"): "bf16", ("FinetuneConfig", "device"): "cuda",
    ("DatasetConfig", "root"): "__copy__", ("DatasetConfig", "custom"): "__skip__", ("DatasetConfig", "split"): "low_label",
    ("DatasetConfig", "low_label"): "__skip__", ("DatasetConfig", "name"): "__skip__",
    ("LocalLLMConfig", "model"): "__copy__", ("LocalLLMConfig", "mode"): "json",
}


@pytest.fixture(scope="module")
def graph(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    return materialize_graph(DatasetConfig(root=shared_data, subset=40), [0], root), root


def _keyers(graph, shared_data, moved_data, gguf_copy):
    g, root = graph

    def lm_key(cfg: LMConfig):  # E: every LMConfig field can matter (TA ignores e_text)
        return text_feature_path(g, Path("llm/replay-0123456789abcdef"), "E", cfg, root).name

    def llm_online_key(cfg):
        from tag_pipeline.llm.online import generation_params

        return (cfg.model, cfg.api_base, cfg.template_version, generation_params(cfg))

    def llm_offline_key(cfg):
        from tag_pipeline.llm.offline import generation_params

        return (cfg.model_path, cfg.template_version, generation_params(cfg))

    def llm_local_key(cfg):
        from tag_pipeline.llm.local import generation_params, model_identity

        return (model_identity(cfg), cfg.template_version, generation_params(cfg))

    return {
        LocalLLMConfig: (LocalLLMConfig(), llm_local_key, {"model": str(gguf_copy)}),
        LMConfig: (LMConfig(runtime="torch", precision="fp32"), lm_key, {}),
        GNNConfig: (GNNConfig(), lambda c: training_key("g", "f", "gcn", 0, c), {}),
        FinetuneConfig: (FinetuneConfig(), lambda c: finetune_key("up", "E", 0, c, split="s", weights="w"), {}),
        DatasetConfig: (DatasetConfig(root=shared_data, subset=40), lambda c: graph_key(c, [0]), {"root": moved_data}),
        OnlineLLMConfig: (OnlineLLMConfig(), llm_online_key, {}),
        OfflineLLMConfig: (OfflineLLMConfig(model_path="m"), llm_offline_key, {}),
    }


@pytest.fixture(scope="module")
def moved_data(shared_data, tmp_path_factory):
    """Cora's raw files, byte for byte, in another folder."""
    import shutil

    dest = tmp_path_factory.mktemp("moved") / "data"
    shutil.copytree(Path(shared_data) / "cora", dest / "cora")
    return dest


@pytest.fixture(scope="module")
def gguf_copy(tmp_path_factory):
    """The packaged SmolLM2 GGUF, byte for byte, under another name."""
    import shutil

    from tag_pipeline.llm.local import model_file

    dest = tmp_path_factory.mktemp("gguf") / "renamed.gguf"
    shutil.copyfile(model_file("smollm2"), dest)
    return dest


CONFIGS = [LMConfig, GNNConfig, FinetuneConfig, DatasetConfig, OnlineLLMConfig, OfflineLLMConfig, LocalLLMConfig]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_is_classified_and_moves_the_key_iff_it_is_in_it(
    cls, graph, shared_data, moved_data, gguf_copy, other_value
):
    base, key, copies = _keyers(graph, shared_data, moved_data, gguf_copy)[cls]
    out = OUT_OF_KEY.get(cls.__name__, {})
    assert set(out) <= set(cls.model_fields), f"{cls.__name__}: OUT_OF_KEY names no such field"
    k0 = key(base)
    wrong = []
    for name in cls.model_fields:
        value = other_value(cls, name, getattr(base, name), OTHER)
        if value == "__copy__":
            value = copies[name]
        if value == "__skip__":  # covered by their own tests (custom data, the low-label split)
            continue
        moved = key(base.model_copy(update={name: value})) != k0
        if moved == (name in out):
            wrong.append(f"{name} -> {value!r}: key {'moved' if moved else 'unchanged'}")
    assert not wrong, f"{cls.__name__}: " + "; ".join(wrong)


def test_the_encoder_precision_is_keyed_as_resolved(graph):
    """'fp32' on torch and on ONNX share a key; bf16 gets its own; 'auto' takes the key of what it resolves to."""
    from tag_pipeline.features.text import encoder_path

    g, root = graph
    fp32 = text_feature_path(g, None, "TA", LMConfig(runtime="torch", precision="fp32"), root)
    assert text_feature_path(g, None, "TA", LMConfig(runtime="onnx", precision="fp32"), root) == fp32
    bf16 = text_feature_path(g, None, "TA", LMConfig(runtime="torch", precision="bf16"), root)
    assert bf16 != fp32
    chosen = encoder_path("all-MiniLM-L6-v2")
    auto = text_feature_path(g, None, "TA", LMConfig(), root)
    assert auto == (fp32 if chosen.precision == "fp32" else bf16)
