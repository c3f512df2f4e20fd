"""The LM stage of TAPE: fine-tune a small text encoder per seed, keep its node embeddings.

TAPE (He et al., ICLR 2024, arXiv 2305.19523, Sec. 4.2) fine-tunes an LM interpreter
(DeBERTa-base) on the train nodes of each seed, once on the original text (TA) and once on
the LLM's explanations (E), and feeds the fine-tuned LM's node embeddings to the GNN; the LM's
own predictions are kept too. Their recipe (``core/LMs/lm_trainer.py`` and the configs of
XiaoxinHe/TAPE): 4 epochs, lr 2e-5, warmup over 0.6 epoch, label smoothing 0.3, dropout 0.3,
attention dropout 0.1, classifier dropout 0.4, batch size 9, no weight decay, evaluation on
the validation nodes and the best checkpoint kept.

This module does the same for a sentence encoder (all-MiniLM-L6-v2 by default) on CPU or GPU:
the transformer, mean pooling over tokens (as all-MiniLM-L6-v2 pools; TAPE's DeBERTa takes the
CLS token), dropout and a linear head. :func:`finetune_node_classifier` is the pure training
function; :func:`materialize_finetuned_feature` commits its embeddings (a feature artifact the
GNN code reads unchanged) and LM logits to the lake.

Cost, measured with ``bench/finetune_cora.py`` (Cora, seed 0, TA, 128 tokens, batch 16, one
torch thread on a shared 2-core CPU): 384 s for one epoch (1624 train texts, then 542
validation texts), 557 s for the whole call including the final pass over all 2708 nodes;
validation accuracy 0.812 after that one epoch. Four epochs of full fine-tuning took 3208 s
(best validation accuracy 0.8247); with ``trainable_layers=2`` (:func:`split_encoder`: the
bottom 4 of MiniLM's 6 layers run once, 90 s, and only the top 2 train) the same seed took
855 s for four epochs with a best validation accuracy of 0.8358 (both runs on 1 thread of a
shared, busy 2-core CPU, so the seconds are indicative; ``bench/finetune_cora.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tag_pipeline import hardware, lake
from tag_pipeline.config import FinetuneConfig

FINETUNE_STAGE_VERSION = 1
#: The fine-tuned LM features: ``<lake>/<dataset>/features/<F>ft-s<seed>-<key>``, in the folder
#: of the frozen ones and read like them (the manifest's ``stage`` says ``features``, as before).
FINETUNE_STAGE = lake.Stage(
    "finetune",
    FINETUNE_STAGE_VERSION,
    code=("tag_pipeline.finetune", "tag_pipeline.finetune_config", "tag_pipeline.features.stage",
          "tag_pipeline.features.store"),
    folder="features",
)
#: The LM's logits in a fine-tuned feature artifact: one tensor ``logits`` ``[N, C]`` float32.
LOGITS_FILE = "lm_logits.safetensors"
TEXT_FEATURES = ("TA", "E")


@dataclass
class FinetuneResult:
    """Outcome of one fine-tuning run.

    Attributes:
        x: ``[N, hidden]`` float32 mean-pooled embeddings of every node (before the head's
            dropout and linear layer) under the best epoch's weights, rows in node order.
        logits: ``[N, C]`` float32 LM logits of every node under the same weights.
        best_epoch: 1-based epoch with the best validation accuracy (earliest on ties; the last
            epoch where there are no validation nodes).
        val_acc: accuracy of ``logits`` on the validation nodes, in ``[0, 1]``.
        train_acc: accuracy of ``logits`` on the train nodes, in ``[0, 1]``.
        history: one dict per epoch: ``epoch``, ``train_loss`` (mean smoothed cross-entropy over
            the epoch's batches), ``val_acc``, ``lr`` (at the epoch's end), ``seconds``.
        seconds: wall time of the whole call (tokenizing, training, inference), seconds.
    """

    x: torch.Tensor
    logits: torch.Tensor
    best_epoch: int
    val_acc: float
    train_acc: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


class MeanPoolClassifier(nn.Module):
    """Transformer encoder, mean pooling over non-padding tokens, dropout, linear head.

    Args:
        encoder: a ``transformers`` base model (``AutoModel``) returning ``last_hidden_state``.
        num_classes: C, output logits per text.
        classifier_dropout: dropout on the pooled vector before the head.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, classifier_dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(classifier_dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def embed(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, hidden]`` mean of the last hidden states over the tokens ``attention_mask`` keeps.

        Takes token ids ``[B, L]`` int64, or, once :func:`split_encoder` has cut the encoder,
        the frozen layers' hidden states ``inputs_embeds`` ``[B, L, hidden]`` float32.
        """
        hidden = self.encoder(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding [B, hidden], logits [B, C])``."""
        z = self.embed(input_ids, attention_mask, inputs_embeds)
        return z, self.head(self.dropout(z))


class _CachedStates(nn.Module):
    """Stands in for the embedding layer of an encoder whose bottom layers already ran: hands
    their cached hidden states (``inputs_embeds``) to the remaining layers unchanged."""

    def forward(self, input_ids: Any = None, inputs_embeds: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        if inputs_embeds is None:
            raise ValueError("the encoder was split (trainable_layers): pass the frozen layers' states")
        return inputs_embeds


def _layer_list(encoder: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(encoder, "embeddings"):
        raise ValueError(
            f"trainable_layers needs a BERT-style encoder (.embeddings and .encoder.layer); "
            f"{type(encoder).__name__} has not: leave trainable_layers unset"
        )
    return layers


@torch.no_grad()
def split_encoder(
    model: MeanPoolClassifier,
    token_ids: list[list[int]],
    trainable_layers: int,
    pad_id: int,
    device: torch.device,
    batch_size: int = 64,
) -> list[torch.Tensor]:
    """Run the frozen bottom layers once over every text, then cut them off ``model``.

    The encoder's embeddings and its bottom ``L - trainable_layers`` layers run in eval mode (no
    dropout, no gradients) over texts sorted by length; afterwards ``model.encoder`` keeps only
    its top ``trainable_layers`` layers behind a stand-in for the embeddings that passes
    ``inputs_embeds`` through, so ``model(attention_mask=m, inputs_embeds=states)`` computes
    what the whole model would on those texts. Freezing lower layers is a standard cheap
    variant of fine-tuning (e.g. Lee et al., "What would Elsa do? Freezing layers during
    transformer fine-tuning", 2019); with a cache of the frozen outputs an epoch only pays for
    the top layers.

    Args:
        model: a :class:`MeanPoolClassifier` on a BERT-style encoder with L layers.
        token_ids: N token id lists (already truncated).
        trainable_layers: k, 1 <= k < L.
        pad_id: padding token id.
        device: where the layers run.
        batch_size: texts per forward pass.

    Returns:
        N float32 CPU tensors ``[len(token_ids[i]), hidden]``: the hidden states after layer
        ``L - k`` (padding stripped). Memory: total tokens x hidden x 4 bytes.

    Raises:
        ValueError: the encoder is not BERT-style, or k is not in ``1..L-1``.
    """
    layers = _layer_list(model.encoder)
    n_layers = len(layers)
    if not 1 <= trainable_layers < n_layers:
        raise ValueError(f"trainable_layers must be in 1..{n_layers - 1} for this {n_layers}-layer encoder, got {trainable_layers}")
    cut = n_layers - trainable_layers
    was_training = model.training
    model.eval()
    model.encoder.encoder.layer = nn.ModuleList(list(layers)[:cut])
    states: list[torch.Tensor] = [torch.empty(0)] * len(token_ids)
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        input_ids, mask = _pad([token_ids[i] for i in batch], pad_id, device)
        hidden = model.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state.float().cpu()
        for row, i in enumerate(batch):
            states[i] = hidden[row, : len(token_ids[i])].clone()
    model.encoder.encoder.layer = nn.ModuleList(list(layers)[cut:])
    model.encoder.embeddings = _CachedStates()
    model.train(was_training)
    return states


def load_classifier(cfg: FinetuneConfig, num_classes: int) -> tuple[Any, MeanPoolClassifier]:
    """The tokenizer and a fresh :class:`MeanPoolClassifier` on ``cfg.model`` (head initialised
    from torch's current RNG), with ``cfg``'s dropout set in the encoder's config.

    Raises:
        OSError: the model cannot be found locally and no hub is reachable.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from tag_pipeline.features.text import resolve_model_path

    path = resolve_model_path(cfg.model)
    config = AutoConfig.from_pretrained(path)
    # BERT/DeBERTa/RoBERTa names, then DistilBERT's
    for name, value in (
        ("hidden_dropout_prob", cfg.dropout), ("attention_probs_dropout_prob", cfg.attention_dropout),
        ("dropout", cfg.dropout), ("attention_dropout", cfg.attention_dropout),
    ):
        if hasattr(config, name):
            setattr(config, name, value)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path, config=config)
    return tokenizer, MeanPoolClassifier(encoder, num_classes, cfg.classifier_dropout)


def _pad(ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists to the longest: ``(input_ids [B, L], attention_mask [B, L])`` int64."""
    width = max(len(t) for t in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, t in enumerate(ids):
        input_ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        mask[i, : len(t)] = 1
    return input_ids.to(device), mask.to(device)


def _batcher(
    token_ids: list[list[int]], states: list[torch.Tensor] | None, pad_id: int, device: torch.device
):
    """``rows -> (model inputs, attention_mask [B, L] int64)``: padded token ids, or padded
    frozen-layer states ``[B, L, hidden]`` when the encoder was split."""

    def batch_of(rows: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if states is None:
            input_ids, mask = _pad([token_ids[i] for i in rows], pad_id, device)
            return {"input_ids": input_ids}, mask
        seqs = [states[i] for i in rows]
        x = nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        mask = torch.zeros(x.shape[:2], dtype=torch.long)
        for row, seq in enumerate(seqs):
            mask[row, : seq.shape[0]] = 1
        return {"inputs_embeds": x.to(device)}, mask.to(device)

    return batch_of


def _autocast(cfg: FinetuneConfig, device: torch.device):
    """``torch.autocast`` in ``cfg.precision`` on ``device`` (CUDA, or a CPU with native bf16:
    :func:`finetune_node_classifier` checks first); a no-op for fp32."""
    if cfg.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def _infer(
    model: MeanPoolClassifier,
    token_ids: list[list[int]],
    nodes: np.ndarray,
    cfg: FinetuneConfig,
    batch_of: Any,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``[len(nodes), hidden]`` and logits ``[len(nodes), C]`` (float32, CPU), rows in
    the order of ``nodes``; batches of texts of similar length (sorted) to save padding."""
    model.eval()
    order = sorted(range(len(nodes)), key=lambda i: len(token_ids[nodes[i]]))
    xs, ls = [], []
    for start in range(0, len(order), cfg.eval_batch_size):
        batch = order[start : start + cfg.eval_batch_size]
        inputs, mask = batch_of([nodes[i] for i in batch])
        with _autocast(cfg, device):
            z, logits = model(attention_mask=mask, **inputs)
        xs.append(z.float().cpu())
        ls.append(logits.float().cpu())
    hidden, classes = model.head.in_features, model.head.out_features
    x = torch.empty(len(nodes), hidden, dtype=torch.float32)
    out = torch.empty(len(nodes), classes, dtype=torch.float32)
    if order:
        where = torch.tensor(order, dtype=torch.long)
        x[where] = torch.cat(xs)
        out[where] = torch.cat(ls)
    return x, out


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(-1) == y).float().mean().item() if y.numel() else 0.0


def _as_index(idx: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{name} has indices outside 0..{n - 1}")
    return arr


def finetune_node_classifier(
    texts: list[str],
    labels: np.ndarray | torch.Tensor,
    train_idx: np.ndarray | torch.Tensor,
    val_idx: np.ndarray | torch.Tensor,
    num_classes: int,
    cfg: FinetuneConfig,
    seed: int,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``cfg.model`` + mean pooling + linear head on the train nodes; embed every node.

    TAPE's LM stage (Sec. 4.2; recipe in :class:`FinetuneConfig`): cross-entropy with label
    smoothing on the train nodes, AdamW, linear warm-up then linear decay
    (``get_linear_schedule_with_warmup``), gradient clipping; after every epoch the validation
    accuracy is measured and the best epoch's weights are kept in memory (earliest on ties).
    With those weights every node's mean-pooled embedding and logits are computed.

    **No leakage**: the labels of nodes outside ``train_idx`` are never used for the loss, and
    the labels of ``val_idx`` only choose the epoch; ``labels`` is read at ``train_idx`` and
    ``val_idx`` only, so other entries (test nodes) may hold anything, even ``-1``.

    Written as a plain PyTorch loop rather than ``transformers.Trainer``: the Trainer needs
    ``accelerate`` (not installed here), keeps the best checkpoint on disk rather than in
    memory, and hides the per-epoch RNG; the loop is short and deterministic: one seed fixes the
    head's initialisation, the order of train batches (a seeded ``torch.Generator``) and dropout
    (torch's RNG, forked so the caller's RNG state is left untouched). On CPU two calls with the
    same inputs, seed and thread count return identical tensors bit for bit.

    Texts are tokenized once (truncated to ``cfg.max_length``); train batches are padded to
    their longest text; evaluation and inference batches take texts sorted by length, rows are
    returned in node order.

    Args:
        texts: N strings, one per node (``None`` or empty = the empty string).
        labels: ``[N]`` int64 class of each node in ``0..num_classes-1`` (only train and val
            entries are read).
        train_idx: int64 indices of the train nodes (the loss).
        val_idx: int64 indices of the validation nodes (model selection only; may be empty, then
            the last epoch is kept).
        num_classes: C.
        cfg: the fine-tuning recipe.
        seed: seeds the head, the batch order and dropout.
        progress: draw a tqdm bar per epoch (train batches), with the loss.

    Returns:
        FinetuneResult: ``x`` ``[N, hidden]`` float32 (hidden = 384 for MiniLM), ``logits``
        ``[N, C]`` float32, ``best_epoch``, ``val_acc``, ``train_acc``, ``history``, ``seconds``.

    Precision: ``cfg.precision="bf16"`` runs forward passes under ``torch.autocast`` in bf16, on
    CUDA or on a CPU with native bf16 (flag ``avx512_bf16`` or ``amx_bf16``); elsewhere on a
    CPU it is refused before anything is loaded (emulated bf16 is 6-9x slower than float32).
    ``"fp16"`` (CUDA only) adds a gradient scaler. Embeddings and logits are float32 always.

    Raises:
        ValueError: ``cfg.precision="bf16"`` on a CPU without ``avx512_bf16`` / ``amx_bf16``
            (the message names them; :func:`tag_pipeline.hardware.check_training_precision`),
            no train nodes, lengths that disagree, indices out of range, or a train or val
            label outside ``0..num_classes-1``.
        OSError: the model cannot be found locally and no hub is reachable.
    """
    t0 = time.perf_counter()
    flags = hardware.cpu_info().flags if torch.device(cfg.device).type == "cpu" else frozenset()
    hardware.check_training_precision(cfg.precision, cfg.device, flags)
    n = len(texts)
    y = torch.as_tensor(labels).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{n} texts but {y.shape[0]} labels")
    train = _as_index(train_idx, n, "train_idx")
    val = _as_index(val_idx, n, "val_idx")
    if train.size == 0:
        raise ValueError("train_idx is empty: nothing to fine-tune on")
    # the only reads of `labels`: train (loss) and val (selection)
    y_train = y[torch.from_numpy(train)].to(torch.long)
    y_val = y[torch.from_numpy(val)].to(torch.long)
    for name, part in (("train", y_train), ("val", y_val)):
        if part.numel() and (part.min() < 0 or part.max() >= num_classes):
            raise ValueError(f"a {name} label is outside 0..{num_classes - 1}")
    device = torch.device(cfg.device)
    rng_devices = [device] if device.type == "cuda" else []

    with hardware.torch_threads(cfg.threads), torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        tokenizer, model = load_classifier(cfg, num_classes)
        model.to(device)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        token_ids: list[list[int]] = tokenizer(
            [t if t else "" for t in texts], truncation=True, max_length=cfg.max_length,
        )["input_ids"]
        states = None
        if cfg.trainable_layers is not None and cfg.trainable_layers < len(_layer_list(model.encoder)):
            t_frozen = time.perf_counter()
            states = split_encoder(model, token_ids, cfg.trainable_layers, pad_id, device, cfg.eval_batch_size)
            if progress:
                tqdm.write(f"frozen bottom layers over {n} texts: {time.perf_counter() - t_frozen:.1f} s")
        batch_of = _batcher(token_ids, states, pad_id, device)

        no_decay = [p for p in model.parameters() if p.ndim < 2]
        decay = [p for p in model.parameters() if p.ndim >= 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
        )
        from transformers import get_linear_schedule_with_warmup

        batches_per_epoch = math.ceil(train.size / cfg.batch_size)
        steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
        total_steps = steps_per_epoch * cfg.epochs
        scheduler = get_linear_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * total_steps), total_steps)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        generator = torch.Generator().manual_seed(seed)
        y_train_dev = y_train.to(device)

        history: list[dict[str, float]] = []
        best: dict[str, torch.Tensor] | None = None
        best_epoch, best_val = 0, -1.0
        for epoch in range(1, cfg.epochs + 1):
            t_epoch = time.perf_counter()
            model.train()
            perm = torch.randperm(train.size, generator=generator)
            losses = []
            desc = f"fine-tune epoch {epoch}/{cfg.epochs}"
            bar = tqdm(range(batches_per_epoch), desc=desc, disable=not progress, leave=False)
            optimizer.zero_grad(set_to_none=True)
            for b in bar:
                pos = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                inputs, mask = batch_of(train[pos.numpy()])
                with _autocast(cfg, device):
                    _, logits = model(attention_mask=mask, **inputs)
                loss = F.cross_entropy(logits.float(), y_train_dev[pos.to(device)], label_smoothing=cfg.label_smoothing)
                scaler.scale(loss / cfg.grad_accum).backward()
                losses.append(loss.item())
                if (b + 1) % cfg.grad_accum == 0 or b + 1 == batches_per_epoch:
                    if cfg.max_grad_norm > 0:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.close()
            _, val_logits = _infer(model, token_ids, val, cfg, batch_of, device)
            val_acc = _accuracy(val_logits, y_val)
            history.append({
                "epoch": epoch, "train_loss": float(np.mean(losses)), "val_acc": val_acc,
                "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - t_epoch,
            })
            if progress:
                h = history[-1]
                tqdm.write(f"{desc}: train loss {h['train_loss']:.4f}, val acc {val_acc:.4f}, {h['seconds']:.1f} s")
            # best on validation (earliest on ties); without validation nodes, the last epoch
            if (val.size and val_acc > best_val) or (not val.size and epoch == cfg.epochs):
                best_epoch, best_val = epoch, val_acc
                best = {k: v.detach().clone() for k, v in model.state_dict().items()}

        assert best is not None
        model.load_state_dict(best)
        x, logits = _infer(model, token_ids, np.arange(n), cfg, batch_of, device)
    return FinetuneResult(
        x=x,
        logits=logits,
        best_epoch=best_epoch,
        val_acc=_accuracy(logits[torch.from_numpy(val)], y_val),
        train_acc=_accuracy(logits[torch.from_numpy(train)], y_train),
        history=history,
        seconds=time.perf_counter() - t0,
    )


def finetune_key(
    upstream: str | None, feature: str, seed: int, cfg: FinetuneConfig, split: str, weights: str | None = None
) -> str:
    """Lineage key of a fine-tuned feature: stage version, feature, upstream artifact (graph
    content for TA, responses for E), seed, the seed's split (its labels are what the LM learns
    from; :func:`tag_pipeline.datasets.split_key`), the config's result-deciding fields (the
    autocast ``precision`` among them), the digest of the starting weights (``weights``,
    :func:`tag_pipeline.features.text.model_digest`; left out of the hash when ``None``) and
    the numerics path of the device: a part ``{"device": <torch device type>}`` when that is
    not ``"cpu"`` (CUDA kernels do not reproduce the CPU's float rounding, and training
    amplifies the difference), so CPU keys are those of before devices were keyed and
    ``cuda`` / ``cuda:1`` share one. Computing it needs no GPU.

    Raises:
        RuntimeError: ``cfg.device`` is not a torch device string.
    """
    fields = cfg.key_fields()
    if feature == "TA":
        fields.pop("e_text")
    parts = [feature, upstream, seed, split, fields] + ([weights] if weights else [])
    device = torch.device(cfg.device).type
    if device != "cpu":
        parts.append({"device": device})
    return FINETUNE_STAGE.key(*parts)


def finetuned_feature_path(
    graph_path: Path, responses_path: Path | None, feature: str, seed: int, cfg: FinetuneConfig, lake_root: Path
) -> Path:
    """Where the fine-tuned TA/E feature of one seed lives: ``<lake>/<dataset>/features/<F>ft-s<seed>-<key>``.

    The key (:func:`finetune_key`) hashes the upstream artifact, the seed's split, the recipe,
    the digest of the encoder's files and the device type when it is not the CPU, so it
    changes with anything that changes the result.

    Raises:
        ValueError: ``feature`` is not TA or E, E without responses, or no split for ``seed``.
    """
    from tag_pipeline.datasets import graph_content_key, split_key
    from tag_pipeline.features.text import model_digest

    if feature not in TEXT_FEATURES:
        raise ValueError(f"feature {feature!r} cannot be fine-tuned on: expected one of {TEXT_FEATURES}")
    if feature == "E" and responses_path is None:
        raise ValueError("the E feature needs the LLM stage's responses")
    upstream = graph_content_key(graph_path) if feature == "TA" else Path(responses_path).name
    key = finetune_key(upstream, feature, seed, cfg, split=split_key(graph_path, seed), weights=model_digest(cfg.model))
    return FINETUNE_STAGE.path(lake_root, lake.dataset_of(graph_path), key, prefix=f"{feature}ft-s{seed}-")


def materialize_finetuned_feature(
    graph_path: Path,
    responses_path: Path | None,
    feature: str,
    seed: int,
    cfg: FinetuneConfig,
    lake_root: Path,
    *,
    progress: bool = True,
) -> Path:
    """Fine-tune the LM on one seed's train nodes and commit its TA or E embeddings to the lake.

    The counterpart of :func:`tag_pipeline.features.stage.materialize_text_feature` for TAPE's
    fine-tuned LM (Sec. 4.2): the artifact holds ``features.safetensors`` (``x`` ``[N, hidden]``
    float32) and ``index.parquet`` as :func:`~tag_pipeline.features.store.write_feature` writes
    them, so :func:`~tag_pipeline.features.store.read_feature` and the GNN code read it
    unchanged, plus :data:`LOGITS_FILE` (``logits`` ``[N, C]`` float32, see
    :func:`read_lm_logits`). The manifest's extra fields: ``feature``, ``dim``, ``seed``,
    ``num_classes``, ``best_epoch``, ``val_acc``, ``train_acc``, ``history``, ``seconds``,
    ``lm="finetuned"``. An existing intact artifact is returned without training.

    Args:
        graph_path: graph artifact directory (text, labels and the seed's split).
        responses_path: LLM responses artifact directory (needed for ``E``).
        feature: ``"TA"`` or ``"E"``.
        seed: the split (``graph.splits[seed]``) and the fine-tuning seed.
        cfg: the recipe; ``threads`` and ``eval_batch_size`` do not enter the key, and
            ``device`` only as its type when that is not the CPU (:func:`finetune_key`).
        lake_root: root of the lake.
        progress: draw progress bars.

    Returns:
        Artifact directory ``<lake>/<dataset>/features/<feature>ft-s<seed>-<key>``.

    Raises:
        ValueError: ``feature`` is not TA or E, the graph has no split for ``seed``, or see
            :func:`tag_pipeline.features.stage.feature_texts`.
        MissingArtifactError: inside :func:`tag_pipeline.lake.lookup_only` and not in the lake.
        OSError: the artifact could not be written (nothing is committed).
    """
    from safetensors.torch import save_file

    from tag_pipeline.datasets import check_split, open_graph
    from tag_pipeline.features.stage import feature_texts
    from tag_pipeline.features.store import write_feature

    path = finetuned_feature_path(graph_path, responses_path, feature, seed, cfg, lake_root)

    def build() -> lake.Built:
        graph = open_graph(graph_path)
        split = graph.splits[seed]
        check_split(split, seed, graph.name, graph.num_nodes)
        texts = feature_texts(graph_path, responses_path, feature, cfg.e_text)
        res = finetune_node_classifier(
            texts, graph.labels, split.train, split.val, graph.num_classes, cfg, seed, progress=progress,
        )

        def write(tmp: Path) -> None:
            write_feature(tmp, res.x, feature=feature, source=f"{cfg.model} fine-tuned, seed {seed}")
            save_file(
                {"logits": res.logits.contiguous()}, str(tmp / LOGITS_FILE),
                metadata={"feature": feature, "seed": str(seed), "shape": str(list(res.logits.shape))},
            )

        inputs = {"graph": str(graph_path)} | ({"responses": str(responses_path)} if feature == "E" else {})
        return lake.Built(
            write=write, config=cfg, inputs=inputs, rows=res.x.shape[0],
            extra={
                "feature": feature, "dim": int(res.x.shape[1]), "seed": seed, "num_classes": graph.num_classes,
                "best_epoch": res.best_epoch, "val_acc": res.val_acc, "train_acc": res.train_acc,
                "history": res.history, "seconds": res.seconds, "lm": "finetuned",
            },
        )

    return FINETUNE_STAGE.materialize(path, build)


def read_lm_logits(directory: Path) -> torch.Tensor:
    """The fine-tuned LM's ``[N, C]`` float32 logits from a :func:`materialize_finetuned_feature`
    artifact, rows in node order.

    Raises:
        FileNotFoundError: the artifact has no :data:`LOGITS_FILE` (e.g. a frozen-LM feature).
    """
    from safetensors.torch import load_file

    f = Path(directory) / LOGITS_FILE
    if not f.exists():
        raise FileNotFoundError(f"{f}: not a fine-tuned feature artifact (no LM logits)")
    return load_file(str(f))["logits"]
