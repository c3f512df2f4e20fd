"""Dr.E's codebook and dual-level residual quantisation (Liu et al. 2025, Sec. 4.2): the decoder's own
words as codes, each view quantised into ``codes_per_view`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
