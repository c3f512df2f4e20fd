"""Constrained class scoring (Sec. 4.3): each class's summed log-likelihood after a prompt, and the
zero-shot baseline's prompt scored the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tag_pipeline.methods.dre.prompt import (
    ZERO_SHOT_PROMPT,
    answer_ids,
    class_display_names,
)


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
