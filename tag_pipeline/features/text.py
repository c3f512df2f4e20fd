"""Embed node text (TA: title + abstract, E: the LLM's explanation) with a sentence encoder.

TAPE (Sec. 4.2) feeds TA and E through an LM interpreter and uses the resulting node
vectors as GNN input. This module is the frozen variant: a sentence-transformers model,
mean-pooled, one vector per text. ``runtime="onnx"`` computes the same vectors with ONNX
Runtime (:mod:`tag_pipeline.features.onnx_encoder`); ``precision="bf16"``/``"fp16"`` runs
sentence-transformers under torch autocast. ``"auto"`` (the default of both) takes the fastest
of these whose rows stay within 1e-3 cosine of float32 on this machine
(:func:`tag_pipeline.hardware.choose_encoder_path`; :func:`encoder_path` says which).

:func:`resolve_model_path` and :func:`unique_texts`, which both paths need, are
:mod:`~tag_pipeline.features.onnx_encoder`'s, imported here (that module imports nothing from
this one).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

from tag_pipeline import hardware
from tag_pipeline.features.onnx_encoder import (
    encode_texts_onnx,
    read_sentence_pipeline,
    resolve_model_path,
    unique_texts,
)
from tag_pipeline.hardware import EncoderPath

#: Ways to run the encoder: sentence-transformers on torch, or our ONNX export on ONNX Runtime
#: (what ``runtime="auto"`` resolves to; see :func:`encoder_path`).
RUNTIMES: tuple[str, ...] = ("torch", "onnx")
#: Arithmetic of the encoder (what ``precision="auto"`` resolves to); bf16 and fp16 are torch
#: autocast around sentence-transformers, the rows come out float32 either way.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


def onnx_supported(model: str) -> bool:
    """Whether ``model`` resolves to a local ``Transformer -> Pooling(mean) [-> Normalize]`` model,
    the kind our ONNX export computes (:func:`~tag_pipeline.features.onnx_encoder.read_sentence_pipeline`)."""
    path = Path(resolve_model_path(model))
    if not path.is_dir():
        return False
    try:
        read_sentence_pipeline(path)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def encoder_path(
    model: str = "all-MiniLM-L6-v2",
    *,
    device: str = "cpu",
    runtime: str = "auto",
    precision: str = "auto",
) -> EncoderPath:
    """The path :func:`encode_texts` takes for these settings on this machine (``LMConfig``'s fields).

    Reads the CPU's flags (:func:`tag_pipeline.hardware.cpu_info`, cached), asks CUDA whether
    it has bf16 (for a CUDA device), and, only where it can matter (``runtime="auto"`` on the
    CPU), whether the model is a local mean-pooling model and onnxruntime is installed; then
    :func:`tag_pipeline.hardware.choose_encoder_path` decides. Cheap after the first call; call
    it once per stage and pass the result's ``runtime`` and ``precision`` to
    :func:`encode_texts`. For ``runtime="onnx"`` the model is not inspected here: the ONNX
    encoder raises its own, more precise error for a model it cannot run.

    Args:
        model: sentence-transformers model name or local path.
        device: torch device string. (default: ``"cpu"``)
        runtime: ``"auto"``, ``"torch"`` or ``"onnx"``. (default: ``"auto"``)
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``. (default: ``"auto"``)

    Returns:
        EncoderPath: concrete ``runtime`` (in :data:`RUNTIMES`), ``precision`` (in
        :data:`PRECISIONS`) and the reason.

    Raises:
        ValueError: see :func:`~tag_pipeline.hardware.choose_encoder_path` (unknown values,
            fp16 off CUDA, ONNX off the CPU or in bf16/fp16).
    """
    kind = torch.device(device).type
    mean_pooled = True
    onnx_available = True
    if runtime == "auto" and kind == "cpu":
        onnx_available = importlib.util.find_spec("onnxruntime") is not None
        mean_pooled = onnx_supported(model)
    cuda_bf16 = bool(kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return hardware.choose_encoder_path(
        runtime, precision, device, hardware.cpu_info().flags, mean_pooled,
        cuda_bf16=cuda_bf16, onnx_available=onnx_available,
    )


def encode_texts(
    texts: Sequence[str],
    model: str = "all-MiniLM-L6-v2",
    *,
    max_length: int = 256,
    batch_size: int = 64,
    device: str = "cpu",
    show_progress: bool = True,
    runtime: Literal["auto", "torch", "onnx"] = "auto",
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
) -> torch.Tensor:
    """Embed ``texts`` with a frozen sentence encoder.

    Identical texts are encoded once (LLM answers and abstracts repeat now and then). The path
    is :func:`encoder_path`'s for ``(model, device, runtime, precision)``:

    - ``runtime="onnx"``: our ONNX export of the same model on ONNX Runtime, CPU, float32
      (rows agree with torch float32 to |1 - cos| < 1e-6, 1.35-1.44x faster on 2 AVX2 cores;
      :func:`tag_pipeline.features.onnx_encoder.encode_texts_onnx`);
    - ``runtime="torch"``: sentence-transformers, in float32 or under
      ``torch.autocast(device_type, bf16 | fp16)`` (bf16 on a CPU with AVX512-BF16/AMX: 1.79x,
      max |1 - cos| 3.1e-5; emulated, hence slow, on other CPUs).

    Every path keeps rows within 1e-3 cosine of float32, which is why neither setting enters
    the feature key. Callers encoding many chunks resolve once with :func:`encoder_path` and
    pass the concrete values (then nothing is inspected per call).

    Args:
        texts: ``N`` strings; ``None`` or empty strings are encoded as the empty string.
        model: sentence-transformers model name or local path (see :func:`resolve_model_path`).
        max_length: tokens kept per text (longer texts are truncated; MiniLM: 256).
        batch_size: texts per forward pass.
        device: torch device.
        show_progress: draw a tqdm progress bar.
        runtime: ``"auto"``, ``"torch"`` (sentence-transformers) or ``"onnx"`` (ONNX Runtime,
            CPU only, mean-pooling models only; exports cached under ``$TAG_ONNX_CACHE`` or
            ``data/cache/onnx``). (default: ``"auto"``)
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only).
            (default: ``"auto"``)

    Returns:
        ``[N, dim]`` float32 CPU tensor (``dim`` = 384 for all-MiniLM-L6-v2), as the model's own
        pipeline leaves it (all-MiniLM-L6-v2 ends in a ``Normalize`` module: unit norm, to
        bf16 rounding on the bf16 path).

    Raises:
        ValueError: an unknown ``runtime`` or ``precision``; ``fp16`` off CUDA;
            ``runtime="onnx"`` with a device other than the CPU, with bf16/fp16, or a model
            that is not mean-pooled.
        OSError: the model cannot be found locally and no hub is reachable.
    """
    path = encoder_path(model, device=device, runtime=runtime, precision=precision)
    if path.runtime == "onnx":
        return encode_texts_onnx(
            texts, model, max_length=max_length, batch_size=batch_size, show_progress=show_progress
        )
    encoder = load_encoder(model, device)
    if len(texts) == 0:
        # sentence-transformers 6 renamed get_sentence_embedding_dimension (FutureWarning)
        dim = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
        return torch.empty(0, dim(), dtype=torch.float32)
    unique, inverse = unique_texts(texts)
    encoder.max_seq_length = max_length
    dtype = _AUTOCAST_DTYPES.get(path.precision)
    autocast = (
        torch.autocast(device_type=torch.device(device).type, dtype=dtype)
        if dtype is not None else contextlib.nullcontext()
    )
    with autocast:
        emb = encoder.encode(
            unique,
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_tensor=True,
            normalize_embeddings=False,
        )
    emb = emb.detach().to(device="cpu", dtype=torch.float32)
    return emb[torch.from_numpy(inverse)].contiguous()
