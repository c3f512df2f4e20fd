"""One Dr.E run (Sec. 4.3): the GNN, quantiser, auxiliary heads and LoRA decoder trained jointly, the
epoch with the best validation accuracy kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tag_pipeline.methods.dre.config import DreMethod
from tag_pipeline.methods.dre.encoder import auxiliary_losses, build_encoder
from tag_pipeline.methods.dre.prompt import PromptTemplate
from tag_pipeline.methods.dre.quantise import nearest_codes, word_codebook
from tag_pipeline.methods.dre.score import _padded, score_classes, score_zero_shot

# --------------------------------------------------------------------------- training (Sec. 4.3)


@dataclass
class DreResult:
    """One Dr.E run.

    Attributes:
        scored: ``[S]`` int64 node ids scored (validation then test nodes).
        scores: ``[S, C]`` float32 class log-likelihoods of Dr.E (at ``best_epoch``).
        zero_shot: ``[S, C]`` float32 of the zero-shot baseline, or ``None``.
        ids: ``[N, views, K]`` int64 decoder token ids of every node's codes (``None`` if not
            quantised), from the trained encoder in eval mode (at ``best_epoch``).
        nearest: ``[N, views, K]`` int64 nearest codebook token id of each token (equal to
            ``ids`` when quantised; for the continuous ablation, the closest word by cosine).
        residual_norms: ``[N, views, K+1]`` float32 or ``None``.
        losses: mean training loss per epoch (``{"lm": [...], "commitment": [...], ...}``).
        seconds: wall seconds (``epochs`` list of training time per epoch; ``encode`` and
            ``score`` summed over the evaluations after each epoch; ``zero_shot``; the lake
            manifest adds ``load``, 0 when the decoder was passed in).
        trainable: ``{name: tensor}`` the trained GNN, heads and LoRA weights (of ``best_epoch``).
        steps: optimiser steps per epoch.
        history: per epoch ``{"epoch", "val_acc", <mean training losses>}``.
        best_epoch: the epoch (1-based) with the best validation accuracy (the first on ties),
            whose scores, words and weights these are.
    """

    scored: Any
    scores: Any
    zero_shot: Any
    ids: Any
    nearest: Any
    residual_norms: Any
    losses: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    trainable: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    history: list = field(default_factory=list)
    best_epoch: int = 1


def keep_best_epoch(best: dict | None, epoch: int, val_acc: float, state: dict) -> dict:
    """Model selection on validation, one epoch at a time: the record of the epoch with the best
    validation accuracy so far.

    ``best`` is replaced only when ``val_acc`` is strictly higher, so of epochs with equal
    validation accuracy the first is kept (a later epoch must be better, not as good).

    Args:
        best: the record so far (``None`` before the first epoch).
        epoch: this epoch (1-based).
        val_acc: its validation accuracy.
        state: what the epoch produced and the run keeps if it is chosen (scores, words,
            weights), copied by the caller.

    Returns:
        ``{"epoch", "val_acc", **state}`` of the chosen epoch (``best`` itself when kept).
    """
    if best is None or val_acc > best["val_acc"]:
        return {**state, "epoch": epoch, "val_acc": val_acc}
    return best


def best_epoch(val_accs: Sequence[float]) -> int:
    """The 1-based epoch :func:`keep_best_epoch` keeps for per-epoch validation accuracies
    ``val_accs``: the first of the best.

    Raises:
        ValueError: an empty history.
    """
    if not val_accs:
        raise ValueError("no epoch to choose from")
    best = None
    for epoch, val in enumerate(val_accs, start=1):
        best = keep_best_epoch(best, epoch, val, {})
    return best["epoch"]


def lora_config(cfg: DreMethod):
    """``peft.LoraConfig`` on the attention's query and value projections."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=["q_proj", "v_proj"], bias="none", task_type="CAUSAL_LM")


def run_dre(x, edge_index, labels, split, class_names: Sequence[str], cfg: DreMethod, *, seed: int,
            decoder, tokenizer, texts: Sequence[str] | None = None,
            log: Callable[[str], None] | None = None, progress: bool = True) -> DreResult:
    """Train Dr.E on one split and score its validation and test nodes after every epoch; the
    epoch with the best validation accuracy (the first on ties) gives the scores, words and
    weights returned (the paper is silent on model selection; every other method here chooses
    its epoch on validation too).

    Args:
        x: ``[N, F]`` float32 frozen TA embeddings.
        edge_index: ``[2, E]`` int64.
        labels: ``[N]`` int64 (only train labels are trained on; val/test only for accuracy,
            by the caller).
        split: the seed's split (``train``, ``val``, ``test`` index arrays).
        class_names: ``[C]``.
        cfg: the method's config.
        seed: seeds the GNN, LoRA init and dropout (torch's global RNG), and the run's own
            generator of the batch order and the adjacency loss's negative pairs.
        texts: ``[N]`` node texts (the zero-shot baseline; ``None`` skips it).
        decoder, tokenizer: a loaded decoder (:func:`~tag_pipeline.models.decoder.load_decoder`;
            :func:`materialize_dre` loads ``cfg.decoder``), used where it is (its device and
            dtype); it gets LoRA adapters for the run and loses them again at the end (``peft``'s
            ``unload``): its own weights are never changed. The GNN runs in float32 on the
            decoder's device.
        log: called with a progress line per epoch (and every 50 steps).
        progress: tqdm bars (stderr) over the zero-shot nodes, the training steps and the
            scored nodes.

    Returns:
        :class:`DreResult`.

    Raises:
        ValueError: an empty train split, or a non-word codebook.
    """
    import numpy as np
    import torch
    from peft import get_peft_model
    from torch_geometric.utils import k_hop_subgraph
    from tqdm.auto import tqdm

    from tag_pipeline.train import accuracy

    seconds: dict[str, Any] = {"epochs": []}
    for p in decoder.parameters():
        p.requires_grad_(False)
    emb = decoder.get_input_embeddings()
    dev = emb.weight.device
    x = torch.as_tensor(x, dtype=torch.float32).to(dev)
    ei = torch.as_tensor(np.asarray(edge_index), dtype=torch.long).to(dev)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(dev)
    n = x.shape[0]
    train = torch.as_tensor(np.asarray(split.train), dtype=torch.long)
    scored = torch.as_tensor(np.concatenate([np.asarray(split.val), np.asarray(split.test)]), dtype=torch.long)
    if train.numel() == 0:
        raise ValueError("Dr.E needs train nodes: the split has none")
    train_mask = torch.zeros(n, dtype=torch.bool, device=dev)
    train_mask[train] = True

    vocab = word_codebook(tokenizer, emb.weight.shape[0], cfg.min_word_length, cfg.codebook_size, cfg.word_initial)
    with torch.no_grad():  # the embedding module's output: the table's rows (times Gemma's embed scale)
        codebook = emb(vocab.to(dev)).float()
    template = PromptTemplate.build(tokenizer, class_names, cfg.views)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    zero = None
    if cfg.zero_shot and texts is not None:
        start = time.perf_counter()
        decoder.eval()
        with tqdm(total=scored.numel(), desc="Dr.E zero-shot", unit="node", disable=not progress, leave=False) as bar:
            zero = score_zero_shot(decoder, tokenizer, [texts[i] for i in scored.tolist()], class_names,
                                   cfg.max_text_tokens, cfg.class_score, progress=lambda done: bar.update(1))
        seconds["zero_shot"] = time.perf_counter() - start

    torch.manual_seed(seed)
    enc = build_encoder(x.shape[1], len(class_names), codebook, cfg).to(dev)
    model = get_peft_model(decoder, lora_config(cfg))
    try:
        lora_params = [p for n_, p in model.named_parameters() if p.requires_grad]
        opt = torch.optim.AdamW([{"params": list(enc.parameters()), "lr": cfg.gnn_lr},
                                 {"params": lora_params, "lr": cfg.lr}])
        gen = torch.Generator().manual_seed(seed)
        losses: dict[str, list[float]] = {}
        steps_per_epoch: list[int] = []
        n_val = len(split.val)
        y_scored = y[scored.to(dev)].cpu()
        history: list[dict] = []
        best: dict | None = None
        seconds["encode"], seconds["score"] = 0.0, 0.0

        def evaluate() -> dict:
            """Encode every node (eval mode), score the val/test nodes, copy the trained weights."""
            start = time.perf_counter()
            enc.eval()
            model.eval()
            with torch.no_grad():
                out = enc(x, ei)
                tokens = out["tokens"]
                if out["ids"] is not None:
                    ids = nearest = vocab[out["ids"].cpu()]
                    norms = out["residual_norms"].float().cpu()
                else:
                    ids, norms = None, None
                    unit = torch.nn.functional.normalize(codebook, dim=-1)
                    flat = tokens.reshape(-1, tokens.shape[-1]).float()
                    nearest = vocab[nearest_codes(flat, unit).cpu()].view(tokens.shape[:3])
            seconds["encode"] += time.perf_counter() - start
            start = time.perf_counter()
            rows = []
            with torch.no_grad(), tqdm(total=scored.numel(), desc="Dr.E scoring", unit="node", disable=not progress,
                                       leave=False) as sbar:
                for s in range(0, scored.numel(), cfg.eval_batch_size):
                    nodes = scored[s: s + cfg.eval_batch_size].to(dev)
                    rows.append(score_classes(model, template.embed(emb, tokens[nodes]), template.class_ids, pad,
                                              cfg.class_score).cpu())
                    sbar.update(nodes.numel())
            seconds["score"] += time.perf_counter() - start
            trainable = {f"gnn.{k_}": v.detach().cpu().clone().contiguous() for k_, v in enc.state_dict().items()}
            trainable.update({f"lora.{k_}": p.detach().cpu().clone().contiguous()
                              for k_, p in model.named_parameters() if p.requires_grad})
            return {"scores": torch.cat(rows) if rows else torch.zeros(0, len(class_names)), "ids": ids,
                    "nearest": nearest, "norms": norms, "trainable": trainable}

        per_epoch = math.ceil(train.numel() / cfg.batch_size)
        per_epoch = min(per_epoch, cfg.max_steps) if cfg.max_steps is not None else per_epoch
        bar = tqdm(total=cfg.epochs * per_epoch, desc="Dr.E training", unit="step", disable=not progress, leave=False)
        for epoch in range(cfg.epochs):
            start = time.perf_counter()
            enc.train()
            model.train()
            order = train[torch.randperm(train.numel(), generator=gen)]
            sums: dict[str, float] = {}
            steps = 0
            for s in range(0, order.numel(), cfg.batch_size):
                if cfg.max_steps is not None and steps >= cfg.max_steps:
                    break
                batch = order[s: s + cfg.batch_size].to(dev)
                subset, sub_ei, mapping, _ = k_hop_subgraph(batch, cfg.views, ei, relabel_nodes=True, num_nodes=n)
                out = enc(x[subset], sub_ei)
                tokens = out["tokens"][mapping]  # [B, views, K, d]
                prompt = template.embed(emb, tokens)
                ans = [template.class_ids[int(c)] for c in y[batch]]
                ans_ids, ans_mask = (t_.to(dev) for t_ in _padded(ans, pad))
                inputs = torch.cat([prompt, emb(ans_ids)], 1)
                attn = torch.cat([torch.ones(prompt.shape[:2], dtype=torch.long, device=dev), ans_mask.long()], 1)
                target = torch.cat([torch.full(prompt.shape[:2], -100, dtype=torch.long, device=dev),
                                    ans_ids.masked_fill(~ans_mask, -100)], 1)
                lm_loss = model(inputs_embeds=inputs, attention_mask=attn, labels=target).loss
                aux = auxiliary_losses(enc, out, x[subset], sub_ei, y[subset], train_mask[subset], cfg, gen)
                loss = lm_loss + sum(aux.values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                bar.update(1)
                for k_, v in {"lm": lm_loss, **aux}.items():
                    sums[k_] = sums.get(k_, 0.0) + float(v.detach())
                if log and steps % 50 == 0:
                    log(f"Dr.E epoch {epoch + 1}: step {steps}/{math.ceil(order.numel() / cfg.batch_size)}, "
                        f"{time.perf_counter() - start:.0f} s, lm loss {sums['lm'] / steps:.4f}")
            for k_, v in sums.items():
                losses.setdefault(k_, []).append(v / max(steps, 1))
            seconds["epochs"].append(time.perf_counter() - start)
            steps_per_epoch.append(steps)
            ev = evaluate()
            val_acc = accuracy(ev["scores"], y_scored, torch.arange(n_val))
            history.append({"epoch": epoch + 1, "val_acc": val_acc, **{k_: v[-1] for k_, v in losses.items()}})
            best = keep_best_epoch(best, epoch + 1, val_acc, ev)
            if log:
                log(f"Dr.E epoch {epoch + 1}/{cfg.epochs}: {steps} steps, {seconds['epochs'][-1]:.1f} s, "
                    + ", ".join(f"{k_} {v[-1]:.4f}" for k_, v in losses.items()) + f", val acc {val_acc:.4f}")
        bar.close()
    finally:
        model.unload()  # remove the adapters: a passed decoder is returned as it came
        decoder.eval()
    assert best is not None  # cfg.epochs >= 1
    return DreResult(scored, best["scores"], zero, best["ids"], best["nearest"], best["norms"], losses, seconds,
                     best["trainable"], steps_per_epoch, history, best["epoch"])
