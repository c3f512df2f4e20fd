"""Dr.E: a GNN's multi-hop views, quantised into the decoder's own words, read by a LoRA-tuned LM.

Dr.E (Liu et al., "Multi-view Empowered Structural Graph Wordification for Language Models",
AAAI 2025, arXiv 2406.15504) is an RQ-VAE whose encoder is a GNN and whose decoder is an LLM;
the codebook is the LLM's own frozen token-embedding table, so each node becomes a few real
words of the LLM's vocabulary (Cora 60/20/20: 0.9132 with Llama-2-7B). Our own code, from the
paper's description:

* **Multi-view encoder (Sec. 4.1)**: ``views`` PyG ``SAGEConv`` layers over the node's frozen
  MiniLM title+abstract embedding (the TA feature TAPE's stage writes); layer ``t``'s output
  ``h_t`` (``[N, d]``, ``d`` = the decoder's embedding width) is the node's ``t``-hop view.
* **Dual-level residual quantisation (Sec. 4.2)**: intra-layer, each view is quantised into
  ``codes_per_view`` (K) codes, each the codebook row most cosine-similar to what the earlier
  codes left over (residual VQ); inter-layer, layer ``t+1`` reads ``h_t`` plus the quantised
  view ``q_t`` (the codes' reconstruction of ``h_t``). Straight-through gradients carry the LM's
  loss back into the GNN through the chosen codes (``code + r - sg(r)``).
* **Auxiliary losses (Sec. 4.2, Fig. 2)**: commitment (VQ-VAE's ``||h - sg(q)||^2``), feature
  reconstruction (a linear map of the quantised views back to the input feature, MSE), label
  prediction (a linear classifier on the quantised views, cross-entropy on train nodes only),
  adjacency reconstruction (cosine of the last quantised views of linked vs. randomly sampled
  unlinked node pairs, BCE). Each has a weight; 0 turns it off.
* **Prompt and decoder (Sec. 4.3)**: the paper's template, "Given a node, you need to classify it
  among <classes>. With the node's 1-hop information being <codes>, 2-hop information being
  <codes>, 3-hop information being <codes>, the node should be classified as:", with the codes'
  embeddings spliced into ``inputs_embeds``; the LM loss is on the label tokens only; LoRA
  (``peft``) on the decoder's ``q_proj``/``v_proj``; GNN, auxiliary heads and LoRA are trained
  jointly, the decoder's own weights (token embeddings included) stay frozen.

Choices where the paper is silent or where a CPU forces them (all fields of :class:`DreMethod`):

* **Codebook**: the token ids whose decoded text, stripped of spaces, is ASCII letters only
  and at least ``min_word_length`` (3) characters long, special tokens excluded, the first
  ``codebook_size`` of them by id (``None``: all; SmolLM2's BPE ids roughly follow merge
  frequency); by default (``word_initial``) only tokens that start a word (decoded text begins
  with a space), so suffixes such as ``ing`` are not codes. SmolLM2-135M: 30,570 such words of
  49,152 tokens; Gemma-3-270M: 84,790 of 262,144.
* **Residual update**: the paper subtracts the chosen code; with cosine selection the code's norm
  is not the residual's, so subtracting it can *grow* the residual. By default
  (``residual="projection"``) the residual loses its projection on the chosen code
  (``r <- r - (r.c^) c^``, matching pursuit over the normalised codebook): its norm never grows
  and the reconstruction ``q = sum_k (r_k.c^_k) c^_k`` is differentiable in ``h``.
  ``residual="code"`` is the literal update (``r <- r - c``, ``q = sum_k c_k`` with a
  straight-through estimator).
* **Prediction**: constrained to the class names: for every class the summed log-likelihood of
  its tokens (``" " + name`` with ``_`` as spaces, then EOS) after the prompt, argmax over
  classes (the prompt is run once, the classes share its KV cache); so the answer is always a
  class. ``class_score="mean"`` divides by the token count.
* **Zero-shot baseline** (``zero_shot``): the same decoder, no graph tokens, no LoRA, prompted
  with the node's text cut to ``max_text_tokens`` tokens and the classes, same constrained
  scoring. No chat template for either prompt (the paper feeds raw prompts to a base Llama-2).
* **Inter-layer residual**: layer ``t+1`` reads ``dropout(gelu(h_t + q_t))``; the activation
  and dropout are ours.
* **Input features**: the frozen MiniLM TA embedding (``[N, 384]`` float32), the same for every
  method of this project (the paper's released code reads its own precomputed node embeddings).
* **Weights and rates**: commitment 0.25 (VQ-VAE's beta), feature / label / adjacency 0.1 each,
  AdamW at ``lr`` 2e-4 (LoRA) and ``gnn_lr`` 1e-3 (GNN and heads), LoRA r 8, alpha 16, dropout
  0.05: ours, not tuned; the training loss is ``LM + sum of the weighted auxiliary losses``.
* **Commitment in cosine space** (``commitment="cosine"``, off by default): the codes are chosen
  by cosine, so only ``h``'s direction picks them, but VQ-VAE's MSE grows with ``h``'s norm: on
  Cora (seed 0, 1 epoch) the weighted MSE term averaged 17.5 against an LM loss of 0.70, so its
  gradient swamps the LM's in the GNN. ``1 - cos(h, sg(q))`` is scale-free, and measured on
  validation it is much worse (Cora seed 0, 1 epoch: val 0.3487 against 0.7841): nothing
  bounds ``h``'s norm any more, the projection coefficients grow with it, and the feature and
  label losses rise to 55.7 and 2.80 (0.13 and 0.13 with MSE). So MSE stays the default; the
  option is kept for larger decoders and longer runs.
* **Scale**: ``epochs`` 1 and a 135M decoder by default (the paper: 20 epochs, batch 4,
  Llama-2-7B); each training step runs the GNN on the batch's ``views``-hop subgraph
  (``k_hop_subgraph``); only validation and test nodes are scored, after every epoch, and the
  epoch with the best validation accuracy is kept (the paper is silent on model selection).

Costs on this 2-core CPU are printed by ``bench/dre_cora.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tag_pipeline import lake
from tag_pipeline.methods.dre_config import (
    CPU_FP32 as CPU_FP32,  # re-exported: the default numerics path
)
from tag_pipeline.methods.dre_config import DreMethod

#: 2: commit db57baa changed what a run computes with the version left at 1: the adjacency
#: loss's negative pairs are drawn by :func:`negative_edges` from the run's own generator (v1:
#: PyG's ``negative_sampling`` on Python's global random state), so v1 artifacts hold other
#: (and not reproducible) trained weights. The same bump takes ``device`` and ``dtype`` out of
#: the key in favour of the resolved numerics path (:meth:`DreMethod.numerics`).
DRE_STAGE_VERSION = 2
#: One seed's Dr.E run: ``<lake>/<dataset>/dre/s<seed>-<key>``.
DRE_STAGE = lake.Stage(
    "dre",
    DRE_STAGE_VERSION,
    code=(
        "tag_pipeline.methods.dre",  # codebook, quantisation, encoder, losses, prompt, scoring, training
        "tag_pipeline.methods.dre_config",  # the config: its validators, key_fields and the resolved numerics path
        "tag_pipeline.models.decoder",  # how the decoder's weights are loaded (GGUF de-quantised to the dtype)
        "tag_pipeline.train",  # accuracy (the epoch chosen on validation)
    ),
)
TOKENS_FILE = "tokens.parquet"
PREDICTIONS_FILE = "predictions.parquet"
ZERO_SHOT_FILE = "zero_shot_predictions.parquet"
WEIGHTS_FILE = "trained.safetensors"

#: the paper's prompt (Sec. 4.3), split around the classes and the codes of each view
PROMPT_HEAD = "Given a node, you need to classify it among {classes}."
PROMPT_VIEW = (" With the node's {hop}-hop information being", ", {hop}-hop information being")
PROMPT_TAIL = ", the node should be classified as:"
#: the zero-shot baseline's prompt (our wording around the paper's)
ZERO_SHOT_PROMPT = "Given a node, you need to classify it among {classes}. The node's text: {text}\nThe node should be classified as:"


# --------------------------------------------------------------------------- codebook (Sec. 4.2)


def word_codebook(tokenizer, vocab_size: int, min_length: int = 3, size: int | None = None,
                  word_initial: bool = True):
    """Token ids of the codebook: meaningful whole words of the decoder's vocabulary.

    Rule: the id's decoded text, stripped of white space, is ASCII letters only (``isascii`` and
    ``isalpha``: English words, as the datasets' texts are) and at least ``min_length`` characters; with ``word_initial`` it must also start a word (a leading
    space, or BPE's ``Ġ`` / SentencePiece's ``▁`` marker; not a suffix such as ``ing``); special
    tokens are left out; the first ``size`` such ids.

    Args:
        tokenizer: the decoder's tokenizer.
        vocab_size: rows of the embedding table (ids ``>= vocab_size`` are skipped).
        min_length: shortest word kept.
        size: keep at most this many (``None``: all).

    Returns:
        ``[M]`` int64 token ids, ascending.

    Raises:
        ValueError: no token qualifies.
    """
    import torch

    special = set(tokenizer.all_special_ids)
    ids = []
    for i in range(min(vocab_size, len(tokenizer))):
        if i in special:
            continue
        text = tokenizer.decode([i])
        word = text.strip()
        if len(word) >= min_length and word.isascii() and word.isalpha() and (not word_initial or _starts_word(tokenizer, i, text)):
            ids.append(i)
            if size is not None and len(ids) >= size:
                break
    if not ids:
        raise ValueError(f"no token of the vocabulary is an alphabetic word of >= {min_length} characters")
    return torch.tensor(ids, dtype=torch.long)


def _starts_word(tokenizer, token_id: int, text: str) -> bool:
    """Whether a token starts a word: its decoded text begins with a space, or its piece carries
    the word-start marker of byte-level BPE (``Ġ``) or SentencePiece (``▁``), whose decoding of a
    lone token may drop the space."""
    piece = tokenizer.convert_ids_to_tokens(token_id) or ""
    return text[:1].isspace() or piece[:1] in ("Ġ", "\u2581")


@dataclass
class Quantised:
    """One view's residual quantisation.

    Attributes:
        ids: ``[N, K]`` int64 codebook-row indices (into the restricted codebook).
        codes: ``[N, K, d]`` the chosen embedding rows, with straight-through gradients to the
            residuals they quantised (their values are the rows exactly).
        q: ``[N, d]`` the quantised reconstruction of ``h``.
        residual_norms: ``[N, K + 1]`` ``||r_k||`` before each code and after the last (no grad).
    """

    ids: Any
    codes: Any
    q: Any
    residual_norms: Any


def nearest_codes(x, unit, chunk: int = 4096):
    """Index of the codebook row most cosine-similar to each row of ``x`` (the first on ties).

    Args:
        x: ``[N, d]`` float vectors (no gradient flows: an arg-max).
        unit: ``[M, d]`` the codebook rows, L2-normalised.
        chunk: codebook rows compared at a time (memory: ``N x chunk`` floats).

    Returns:
        ``[N]`` int64 row indices into ``unit``.
    """
    import torch
    import torch.nn.functional as F

    xn = F.normalize(x, dim=-1)
    best_val, best_idx = None, None
    for s in range(0, unit.shape[0], chunk):
        v, i = (xn @ unit[s: s + chunk].T).max(dim=-1)
        if best_val is None:
            best_val, best_idx = v, i + s
        else:
            better = v > best_val
            best_val = torch.where(better, v, best_val)
            best_idx = torch.where(better, i + s, best_idx)
    return best_idx


def residual_quantise(h, codebook, k: int, mode: str = "projection", chunk: int = 4096) -> Quantised:
    """Intra-layer residual vector quantisation (Sec. 4.2) of ``h`` onto ``codebook`` rows.

    ``r_0 = h``; for ``k = 1..K``: ``z_k = argmax_c cos(r_{k-1}, c)``; ``r_k = r_{k-1} - (r.c^)c^``
    (``mode="projection"``) or ``r_{k-1} - c_{z_k}`` (``mode="code"``, the paper's literal form).

    Args:
        h: ``[N, d]`` float view embeddings.
        codebook: ``[M, d]`` float rows (the decoder's frozen token embeddings of the codebook ids).
        k: codes per view.
        mode: ``"projection"`` or ``"code"``.
        chunk: codebook rows compared at a time (memory: ``N x chunk`` floats).

    Returns:
        :class:`Quantised`.
    """
    import torch
    import torch.nn.functional as F

    unit = F.normalize(codebook, dim=-1)
    r = h
    ids, codes, coefs, norms = [], [], [], [r.detach().norm(dim=-1)]
    for _ in range(k):
        best_idx = nearest_codes(r.detach(), unit, chunk)
        row = codebook[best_idx]  # [N, d], frozen
        codes.append(row + (r - r.detach()))  # straight-through: value = row, grad -> r
        if mode == "projection":
            u = unit[best_idx]
            coef = (r * u).sum(-1, keepdim=True)
            coefs.append(coef * u)
            r = r - coef * u
        else:
            coefs.append(row)
            r = r - row
        ids.append(best_idx)
        norms.append(r.detach().norm(dim=-1))
    q = torch.stack(coefs, 1).sum(1)
    if mode == "code":
        q = h + (q - h).detach()  # straight-through reconstruction
    return Quantised(torch.stack(ids, 1), torch.stack(codes, 1), q, torch.stack(norms, 1))


# --------------------------------------------------------------------------- encoder (Sec. 4.1-4.2)


def build_encoder(in_dim: int, num_classes: int, codebook, cfg: DreMethod):
    """The multi-view GNN with dual-level residual quantisation and the auxiliary heads.

    Args:
        in_dim: input feature width (MiniLM: 384).
        num_classes: C (label-prediction head).
        codebook: ``[M, d]`` frozen float rows; ``d`` sets the hidden width.
        cfg: the method's config.

    Returns:
        a ``torch.nn.Module`` whose ``forward(x [N, in_dim], edge_index [2, E])`` returns a dict:
        ``tokens`` ``[N, views, K, d]`` (what the decoder reads), ``q`` (list of ``[N, d]`` per
        view), ``h`` (list of ``[N, d]``), ``ids`` (``[N, views, K]`` int64 or ``None`` when not
        quantised), ``residual_norms`` (``[N, views, K+1]`` or ``None``).
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch_geometric.nn import SAGEConv

    d = codebook.shape[1]

    class MultiViewEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("codebook", codebook.detach().clone(), persistent=False)
            self.convs = nn.ModuleList([SAGEConv(in_dim if t == 0 else d, d) for t in range(cfg.views)])
            # the ablation: K continuous tokens per view from a linear map of h_t
            self.project = None if cfg.quantise else nn.ModuleList(
                [nn.Linear(d, cfg.codes_per_view * d) for _ in range(cfg.views)])
            self.feature_head = nn.Linear(cfg.views * d, in_dim)
            self.label_head = nn.Linear(cfg.views * d, num_classes)

        def forward(self, x, edge_index):
            inp, hs, qs, toks, ids, norms = x, [], [], [], [], []
            for t, conv in enumerate(self.convs):
                h = conv(inp, edge_index)
                if cfg.quantise:
                    qz = residual_quantise(h, self.codebook, cfg.codes_per_view, cfg.residual)
                    q, tok = qz.q, qz.codes
                    ids.append(qz.ids)
                    norms.append(qz.residual_norms)
                else:
                    q, tok = h, self.project[t](h).view(h.shape[0], cfg.codes_per_view, d)
                hs.append(h)
                qs.append(q)
                toks.append(tok)
                inp = F.dropout(F.gelu(h + q), cfg.dropout, self.training)  # inter-layer residual
            return {"tokens": torch.stack(toks, 1), "q": qs, "h": hs,
                    "ids": torch.stack(ids, 1) if ids else None,
                    "residual_norms": torch.stack(norms, 1) if norms else None}

    return MultiViewEncoder()


def negative_edges(edge_index, num_nodes: int, num_samples: int, generator):
    """Random node pairs that are not edges, drawn with ``generator`` only.

    Our own sampler rather than PyG's ``negative_sampling``: that one draws from Python's and
    torch's global random state, which other threads of the process (Prefect's services under a
    flow) draw from too, so a seeded run was not reproducible. Pairs ``(i, j)`` are drawn
    uniformly; self-pairs and existing edges are dropped (as PyG's sparse method does).

    Args:
        edge_index: ``[2, E]`` int64 (any device).
        num_nodes: S.
        num_samples: pairs drawn before dropping (about E).
        generator: a CPU ``torch.Generator``.

    Returns:
        ``[2, <= num_samples]`` int64 on ``edge_index``'s device.
    """
    import torch

    src = torch.randint(num_nodes, (num_samples,), generator=generator)
    dst = torch.randint(num_nodes, (num_samples,), generator=generator)
    edges = edge_index.cpu()
    keep = (src != dst) & ~torch.isin(src * num_nodes + dst, edges[0] * num_nodes + edges[1])
    return torch.stack([src[keep], dst[keep]]).to(edge_index.device)


def auxiliary_losses(enc, out: dict, x, edge_index, y, train_mask, cfg: DreMethod, generator=None) -> dict:
    """The auxiliary losses (Sec. 4.2) on one (sub)graph, each already weighted.

    Args:
        enc: the encoder (its ``feature_head``/``label_head``).
        out: its forward output.
        x: ``[S, in_dim]`` input features; edge_index ``[2, E_S]``.
        y: ``[S]`` int64 labels (only read where ``train_mask``).
        train_mask: ``[S]`` bool, the train nodes of the subgraph.
        cfg: the weights.
        generator: CPU ``torch.Generator`` of the adjacency loss's negative pairs (default: a
            fresh unseeded one).

    Returns:
        ``{name: scalar tensor}`` for the non-zero weights.
    """
    import torch
    import torch.nn.functional as F
    losses = {}
    q_all = torch.cat(out["q"], -1)
    if cfg.commitment_weight:
        if cfg.commitment == "cosine":
            per_view = [(1.0 - F.cosine_similarity(h, q.detach(), dim=-1)).mean() for h, q in zip(out["h"], out["q"])]
        else:
            per_view = [F.mse_loss(h, q.detach()) for h, q in zip(out["h"], out["q"])]
        losses["commitment"] = cfg.commitment_weight * sum(per_view) / len(per_view)
    if cfg.feature_weight:
        losses["feature"] = cfg.feature_weight * F.mse_loss(enc.feature_head(q_all), x)
    if cfg.label_weight and bool(train_mask.any()):
        losses["label"] = cfg.label_weight * F.cross_entropy(enc.label_head(q_all[train_mask]), y[train_mask])
    if cfg.adjacency_weight and edge_index.shape[1] > 0:
        z = F.normalize(out["q"][-1], dim=-1)
        neg = negative_edges(edge_index, x.shape[0], edge_index.shape[1], generator or torch.Generator())
        pos_s = (z[edge_index[0]] * z[edge_index[1]]).sum(-1)
        neg_s = (z[neg[0]] * z[neg[1]]).sum(-1)
        scores = torch.cat([pos_s, neg_s]) * 5.0  # cosine in [-1, 1] -> logits in [-5, 5]
        target = torch.cat([torch.ones_like(pos_s), torch.zeros_like(neg_s)])
        losses["adjacency"] = cfg.adjacency_weight * F.binary_cross_entropy_with_logits(scores, target)
    return losses


# --------------------------------------------------------------------------- prompt and scoring (Sec. 4.3)


def class_display_names(class_names: Sequence[str]) -> list[str]:
    """Class names as words (``Neural_Networks`` -> ``Neural Networks``)."""
    return [c.replace("_", " ") for c in class_names]


@dataclass
class PromptTemplate:
    """The paper's prompt as token-id pieces around the graph tokens (Sec. 4.3).

    Attributes:
        pieces: ``views + 1`` lists of token ids; the prompt is ``pieces[0] codes_1 pieces[1]
            ... codes_T pieces[T]``.
        class_ids: ``[C]`` lists of token ids of each class's answer (``" " + name`` then EOS).
    """

    pieces: list[list[int]]
    class_ids: list[list[int]]

    @classmethod
    def build(cls, tokenizer, class_names: Sequence[str], views: int) -> "PromptTemplate":
        names = class_display_names(class_names)
        head = PROMPT_HEAD.format(classes=", ".join(names))
        texts = [head + PROMPT_VIEW[0].format(hop=1)]
        texts += [PROMPT_VIEW[1].format(hop=t + 1) for t in range(1, views)]
        texts.append(PROMPT_TAIL)
        # the first piece gets the special tokens the tokenizer itself adds (Llama-2: <s>; SmolLM2: none)
        pieces = [tokenizer(t, add_special_tokens=i == 0)["input_ids"] for i, t in enumerate(texts)]
        return cls(pieces, answer_ids(tokenizer, class_names))

    def length(self, k: int) -> int:
        """Prompt length in tokens with ``k`` codes per view."""
        return sum(map(len, self.pieces)) + (len(self.pieces) - 1) * k

    def embed(self, embedding, tokens):
        """The prompt's input embeddings.

        Args:
            embedding: the decoder's input embedding module.
            tokens: ``[B, views, K, d]`` graph tokens.

        Returns:
            ``[B, P, d]`` float.
        """
        import torch

        b = tokens.shape[0]
        dev, dtype = embedding.weight.device, embedding.weight.dtype
        tokens = tokens.to(device=dev, dtype=dtype)
        parts = []
        for t, piece in enumerate(self.pieces):
            e = embedding(torch.tensor(piece, dtype=torch.long, device=dev))
            parts.append(e.unsqueeze(0).expand(b, -1, -1))
            if t < tokens.shape[1]:
                parts.append(tokens[:, t])
        return torch.cat(parts, 1)


def answer_ids(tokenizer, class_names: Sequence[str]) -> list[list[int]]:
    """Each class's answer tokens: ``" " + name`` (``_`` as spaces) then EOS."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [tokenizer(" " + n, add_special_tokens=False)["input_ids"] + eos for n in class_display_names(class_names)]


def _padded(class_ids: list[list[int]], pad: int):
    import torch

    n = max(map(len, class_ids))
    ids = torch.full((len(class_ids), n), pad, dtype=torch.long)
    mask = torch.zeros((len(class_ids), n), dtype=torch.bool)
    for c, seq in enumerate(class_ids):
        ids[c, : len(seq)] = torch.tensor(seq)
        mask[c, : len(seq)] = True
    return ids, mask


def _cache_kwarg(model) -> str:
    """The forward argument that takes a KV cache: ``cache`` (transformers >= 5.24, where
    ``past_key_values`` is deprecated) or ``past_key_values``."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def score_classes(model, prompt_embeds, class_ids: list[list[int]], pad_id: int, reduce: str = "sum"):
    """Constrained prediction: each class's log-likelihood after each prompt.

    The prompts run once (``use_cache``); their KV cache is repeated per class and each class's
    answer tokens are scored on it, so the answer is always one of the classes.

    Args:
        model: the causal LM (optionally a ``peft`` model).
        prompt_embeds: ``[B, P, d]`` prompts of equal length (no padding).
        class_ids: ``C`` lists of answer token ids.
        pad_id: id used to pad shorter answers (masked out).
        reduce: ``"sum"`` or ``"mean"`` over each answer's tokens.

    Returns:
        ``[B, C]`` float32 log-likelihoods (nats).
    """
    import torch

    b, p, _ = prompt_embeds.shape
    c = len(class_ids)
    ids, mask = _padded(class_ids, pad_id)
    ids, mask = ids.to(prompt_embeds.device), mask.to(prompt_embeds.device)
    with torch.no_grad():
        out = model(inputs_embeds=prompt_embeds, use_cache=True)
        first = out.logits[:, -1].float().log_softmax(-1)  # [B, V]
        lp = first[:, ids[:, 0]].unsqueeze(-1)  # [B, C, 1]
        if ids.shape[1] > 1:
            cache = out.cache if "cache" in out else out.past_key_values  # renamed in transformers 5.24
            cache.batch_repeat_interleave(c)
            cont = ids[:, :-1].repeat(b, 1)  # [B*C, L-1], node-major like the cache
            attn = torch.cat([torch.ones(b * c, p, dtype=torch.long, device=ids.device),
                              mask[:, :-1].repeat(b, 1).long()], 1)
            out2 = model(input_ids=cont, attention_mask=attn, use_cache=False, **{_cache_kwarg(model): cache})
            rest = out2.logits.float().log_softmax(-1)  # [B*C, L-1, V]
            tgt = ids[:, 1:].repeat(b, 1)
            rest = rest.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).view(b, c, -1)
            lp = torch.cat([lp, rest], -1)
        lp = lp * mask.unsqueeze(0)
        total = lp.sum(-1)
        if reduce == "mean":
            total = total / mask.sum(-1).unsqueeze(0)
    return total.float()


def score_zero_shot(model, tokenizer, texts: Sequence[str], class_names: Sequence[str], max_text_tokens: int,
                    reduce: str = "sum", progress: Callable[[int], None] | None = None):
    """The zero-shot baseline: the base decoder, the node's text (first ``max_text_tokens``
    tokens) and the classes in the prompt, no graph tokens, constrained scoring
    (:func:`score_classes`), one node per forward pass (no padding); ``progress`` is called
    with the count of nodes done after each.

    Returns:
        ``[len(texts), C]`` float32 log-likelihoods.
    """
    import torch

    names = ", ".join(class_display_names(class_names))
    classes = answer_ids(tokenizer, class_names)
    emb = model.get_input_embeddings()
    rows = []
    for i, text in enumerate(texts):
        cut = tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:max_text_tokens])
        ids = tokenizer(ZERO_SHOT_PROMPT.format(classes=names, text=cut))["input_ids"]  # the tokenizer's own BOS, if any
        with torch.no_grad():
            e = emb(torch.tensor([ids], dtype=torch.long, device=emb.weight.device))
        rows.append(score_classes(model, e, classes, tokenizer.pad_token_id or 0, reduce).cpu())
        if progress:
            progress(i + 1)
    return torch.cat(rows) if rows else torch.zeros(0, len(class_names))


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


# --------------------------------------------------------------------------- lake


def dre_path(graph_path: str | Path, feature_path: str | Path, seed: int, cfg: DreMethod, lake_root: str | Path) -> Path:
    """Lake path of one seed's Dr.E run: ``<lake>/<dataset>/dre/s<seed>-<key>``; the key hashes
    the stage version, the graph's content and split, the TA feature artifact's name (its own
    lineage), the seed, the config (:meth:`DreMethod.key_fields`: less execution fields, plus
    the numerics path when it is not the CPU in float32) and the decoder's weight file digest.

    Raises:
        tag_pipeline.models.decoder.DecoderNotFoundError: the decoder is missing.
    """
    from tag_pipeline.datasets import graph_content_key, split_key
    from tag_pipeline.models.decoder import decoder_digest

    graph_path = Path(graph_path)
    key = DRE_STAGE.key(f"{graph_content_key(graph_path)}-{split_key(graph_path, seed)}",
                        Path(feature_path).name, seed, cfg.key_fields(), decoder_digest(cfg.decoder))
    return DRE_STAGE.path(lake_root, lake.dataset_of(graph_path), key, prefix=f"s{seed}-")


def decoder_numerics(decoder) -> dict[str, str]:
    """``{"device", "dtype"}`` of a loaded decoder's weights (its input embedding's), in the
    form of :meth:`DreMethod.numerics`."""
    w = decoder.get_input_embeddings().weight
    return {"device": w.device.type, "dtype": str(w.dtype).removeprefix("torch.")}


def tokens_frame(result: DreResult, tokenizer, split, num_nodes: int):
    """The chosen words per node, for a person to read: ``node_id``, ``split``, and per view
    ``t`` ``hop<t>`` (list of decoded strings) and ``hop<t>_ids`` (list of int64 token ids).
    For the continuous ablation the words are each token's nearest codebook word."""
    import numpy as np
    import polars as pl

    part = np.full(num_nodes, "", dtype=object)
    for name in ("train", "val", "test"):
        part[split.part(name)] = name
    ids = result.nearest.numpy()
    decoded = {int(i): tokenizer.decode([int(i)]).strip() for i in np.unique(ids)}
    cols: dict[str, Any] = {"node_id": np.arange(num_nodes, dtype=np.int64), "split": part.tolist()}
    for t in range(ids.shape[1]):
        cols[f"hop{t + 1}"] = [[decoded[int(i)] for i in row] for row in ids[:, t]]
        cols[f"hop{t + 1}_ids"] = [row.astype(np.int64).tolist() for row in ids[:, t]]
    return pl.DataFrame(cols)


def words_section(run_path: str | Path, limit: int = 5) -> list[str]:
    """Markdown lines: the first ``limit`` test nodes of one Dr.E run (by node id), each with its
    label, Dr.E's prediction and its chosen words per view (``tokens.parquet``), then how many
    distinct words the run used.

    Args:
        run_path: the run's lake artifact (:func:`dre_path`).
        limit: rows shown.

    Raises:
        FileNotFoundError: the artifact lacks ``tokens.parquet`` or ``predictions.parquet``.
    """
    import polars as pl

    from tag_pipeline.datasets import open_graph

    run_path = Path(run_path)
    manifest = lake.read_artifact(run_path, verify=False).manifest
    names = open_graph(Path(manifest["inputs"]["graph"])).class_names
    words = pl.read_parquet(run_path / TOKENS_FILE)
    hops = [c for c in words.columns if c.startswith("hop") and not c.endswith("_ids")]
    preds = pl.read_parquet(run_path / PREDICTIONS_FILE, columns=["node_id", "label", "pred"])
    rows = words.join(preds, on="node_id").filter(pl.col("split") == "test").sort("node_id").head(limit)
    usage = manifest.get("codebook_usage")
    kind = "chosen codes" if usage else "nearest words of the continuous tokens"
    out = [f"## Words standing for a node's neighbourhood ({kind}, `{run_path.name}`)", "",
        "| node | label | Dr.E | " + " | ".join(f"{h[3:]}-hop words" for h in hops) + " |",
        "|---|---|---|" + "---|" * len(hops)]
    for r in rows.iter_rows(named=True):
        out.append(f"| {r['node_id']} | {names[r['label']]} | {names[r['pred']]} | "
                   + " | ".join(" ".join(r[h]) for h in hops) + " |")
    distinct = words.select(pl.concat_list(hops).explode().n_unique()).item()
    total = words.height * sum(len(words[h][0]) for h in hops)
    out += ["", f"{distinct:,} distinct words among the {total:,} of all {words.height:,} nodes "
            f"(`{run_path / TOKENS_FILE}`).", ""]
    return out


def scores_frame(nodes, scores, labels, split):
    """Per scored node: ``node_id``, ``split``, ``label``, ``pred`` (argmax class), ``logits``
    (``[C]`` float32 class log-likelihoods, nats). Train nodes are not scored."""
    import numpy as np
    import polars as pl

    nodes = np.asarray(nodes, dtype=np.int64)
    part = np.full(len(labels), "", dtype=object)
    for name in ("train", "val", "test"):
        part[split.part(name)] = name
    return pl.DataFrame({"node_id": nodes, "split": part[nodes].tolist(), "label": np.asarray(labels)[nodes],
                         "pred": scores.argmax(-1).numpy().astype(np.int64), "logits": scores.float().numpy()})


def materialize_dre(graph_path: str | Path, feature_path: str | Path, seed: int, cfg: DreMethod,
                    lake_root: str | Path, decoder=None, tokenizer=None,
                    log: Callable[[str], None] | None = None) -> list[dict]:
    """One seed's Dr.E run unless in the lake.

    Writes ``<lake>/<dataset>/dre/s<seed>-<key>`` (:func:`dre_path`) with ``predictions.parquet``
    (Dr.E's class log-likelihoods on val/test nodes), ``zero_shot_predictions.parquet`` (when
    ``cfg.zero_shot``), ``tokens.parquet`` (:func:`tokens_frame`: every node's words per view),
    ``trained.safetensors`` (GNN, heads, LoRA) and a manifest whose ``summaries`` hold the
    ``dre`` (model ``llm``) and ``zero-shot`` (model ``llm-zero-shot``) variants, and whose
    ``seconds`` hold the epoch, encode and scoring wall times (``steps_per_epoch`` the steps).

    Args:
        graph_path: the graph artifact.
        feature_path: the frozen TA feature artifact (``[N, 384]`` MiniLM embeddings).
        seed: split and training seed.
        cfg: the method's config.
        lake_root: root of the lake.
        decoder, tokenizer: an already loaded decoder (tests); default: load ``cfg.decoder`` in
            ``cfg``'s resolved device and dtype. A passed decoder must be on that device type
            and in that dtype: the key says which numerics computed the run.
        log: progress lines.

    Returns:
        summary dicts (``method``, ``model``, ``variant``, ``seed``, ``val_acc``, ``test_acc``, ``path``),
        the same for a lake hit and a fresh run.

    Raises:
        ValueError: the dataset has no text, an empty split, a passed decoder whose device type
            or dtype is not ``cfg``'s (:meth:`DreMethod.numerics`).
        tag_pipeline.models.decoder.DecoderNotFoundError: the decoder is missing.
    """
    import torch
    from safetensors.torch import save_file

    from tag_pipeline.datasets import check_split, open_graph
    from tag_pipeline.features.store import read_feature
    from tag_pipeline.hardware import torch_threads

    graph_path = Path(graph_path)
    numerics = cfg.numerics()
    if decoder is not None and decoder_numerics(decoder) != numerics:
        raise ValueError(f"Dr.E: the passed decoder runs {decoder_numerics(decoder)}, the config {numerics} "
                         f"(device={cfg.device!r}, dtype={cfg.dtype!r}); the run's key must say its numerics")
    path = dre_path(graph_path, feature_path, seed, cfg, lake_root)

    def summaries(p: Path) -> list[dict]:
        return [dict(s, path=str(p)) for s in lake.read_artifact(p, verify=False).manifest["summaries"]]

    def build() -> lake.Built:
        nonlocal decoder, tokenizer
        graph = open_graph(graph_path)
        split = graph.splits[seed]
        check_split(split, seed, graph.name, graph.num_nodes)
        x = read_feature(Path(feature_path), graph.num_nodes).float()
        load_s = None
        if decoder is None:
            from tag_pipeline.models.decoder import load_decoder

            start = time.perf_counter()
            decoder, tokenizer = load_decoder(cfg.decoder, cfg.torch_dtype())
            decoder.to(cfg.torch_device())
            load_s = time.perf_counter() - start
        with torch_threads(cfg.threads):
            res = run_dre(x, graph.edge_index, graph.labels, split, graph.class_names, cfg, seed=seed,
                          texts=graph.text, decoder=decoder, tokenizer=tokenizer, log=log)
        res.seconds["load"] = load_s or 0.0
        y = torch.from_numpy(graph.labels)
        nodes = res.scored
        n_val = len(split.val)

        def acc(scores, part) -> float:
            sl = slice(0, n_val) if part == "val" else slice(n_val, None)
            s, idx = scores[sl], nodes[sl]
            return float((s.argmax(-1) == y[idx]).float().mean()) if idx.numel() else float("nan")

        def row(variant: str, model: str, scores) -> dict:
            return {"method": "dre", "model": model, "variant": variant, "feature": variant, "seed": seed,
                    "val_acc": acc(scores, "val"), "test_acc": acc(scores, "test")}

        rows = [row("dre", "llm", res.scores)]
        if res.zero_shot is not None:
            rows.append(row("zero-shot", "llm-zero-shot", res.zero_shot))
        usage = None
        if res.ids is not None:
            usage = {"distinct_codes": int(res.ids.unique().numel()), "codes": int(res.ids.numel())}
        extra = {"summaries": rows, "seconds": res.seconds, "steps_per_epoch": res.steps, "losses": res.losses,
                 "history": res.history, "best_epoch": res.best_epoch,
                 "codebook_usage": usage, "numerics": numerics,
                 "tokens": "chosen codes" if cfg.quantise else "nearest words of continuous tokens"}

        def write(tmp: Path) -> None:
            scores_frame(nodes, res.scores, graph.labels, split).write_parquet(tmp / PREDICTIONS_FILE)
            if res.zero_shot is not None:
                scores_frame(nodes, res.zero_shot, graph.labels, split).write_parquet(tmp / ZERO_SHOT_FILE)
            tokens_frame(res, tokenizer, split, graph.num_nodes).write_parquet(tmp / TOKENS_FILE)
            save_file(res.trainable, str(tmp / WEIGHTS_FILE))

        return lake.Built(write=write, config=cfg.key_fields(), inputs={"graph": str(graph_path), "TA": str(feature_path)},
                          rows=graph.num_nodes, extra=extra)

    return DRE_STAGE.materialize(path, build, read=summaries)
