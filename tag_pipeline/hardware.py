r"""What the machine offers, and the fastest exact way to run the sentence encoder on it.

"Exact" means: every row within :data:`COSINE_BOUND` (``|1 - cos| <= 1e-3``) of the float32
row that sentence-transformers computes for the same text. Within that bound the feature
artifact's lineage key does not record how the vectors were computed (runtime and precision
are execution details, like the batch size), so every path below must stay inside it.

Measured with this repository's ``bench/embed_throughput.py`` (all-MiniLM-L6-v2, Cora title +
abstract, 256 tokens, same texts and threads, speedups are texts/s over
``SentenceTransformer.encode`` in float32):

- AVX2-only cores (2 shared AMD EPYC cores): our ONNX Runtime float32 export
  (:mod:`tag_pipeline.features.onnx_encoder`) 1.35-1.44x, max ``|1 - cos|`` ~4e-7. Dynamic int8
  quantization is faster but too inexact (max ``|1 - cos|`` 0.01-0.1) and is never chosen.
  torch bf16 autocast is *emulated* on such cores (no bf16 dot-product instructions): 6-9x
  slower than float32 (|1 - cos| 2.7e-5; 20-48 Cora texts, 1-2 threads), so it is never chosen.
- Cores with AVX512-BF16 (or AMX-BF16): torch bf16 autocast 1.79x float32 encode, max
  ``|1 - cos|`` 3.1e-5.
- CUDA: bf16 autocast (fp16 where the GPU lacks bf16), the usual tensor-core path.

Nothing here imports torch at module import; :func:`cpu_info` reads ``/proc/cpuinfo`` (Linux)
and falls back to torch's CPU capability elsewhere. :func:`choose_encoder_path` is pure: the
flags are an argument, so tests can ask what any machine would get.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

#: The CPU flags (Linux ``/proc/cpuinfo`` names) that decide the encoder path, in a fixed order.
CPU_FLAGS: tuple[str, ...] = (
    "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile",
)
#: Either of these gives the CPU native bf16 arithmetic (dot products), hence fast bf16 autocast.
BF16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")
#: Largest ``|1 - cos|`` (cosine distance, dimensionless) any chosen path may have against float32.
COSINE_BOUND = 1e-3

RUNTIME_CHOICES: tuple[str, ...] = ("auto", "torch", "onnx")
PRECISION_CHOICES: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as far as the encoder cares.

    Attributes:
        model: the model name (``/proc/cpuinfo``'s ``model name``, e.g. ``"AMD EPYC"``), or
            ``platform.processor()`` / ``platform.machine()`` elsewhere, or ``"unknown"``.
        flags: the :data:`CPU_FLAGS` this CPU has (a subset; empty when unknown).
        source: where the flags come from: ``"/proc/cpuinfo"``, ``"torch"`` (torch's CPU
            capability: AVX2 / AVX512 only, nothing on bf16) or ``"unknown"``.
    """

    model: str
    flags: frozenset[str]
    source: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"model": str, "flags": [str, ...] (in CPU_FLAGS order), "source": str}``."""
        return {"model": self.model, "flags": [f for f in CPU_FLAGS if f in self.flags], "source": self.source}


def parse_cpuinfo(text: str) -> CpuInfo:
    """Read the first processor's model name and :data:`CPU_FLAGS` from ``/proc/cpuinfo`` text.

    x86 lists its flags on a ``flags`` line; other architectures (``Features`` on aarch64) have
    none of the x86 names, so their flags come out empty.
    """
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split()) & frozenset(CPU_FLAGS)
        if model and flags:
            break
    return CpuInfo(model or platform.processor() or platform.machine() or "unknown", flags, "/proc/cpuinfo")


@lru_cache(maxsize=1)
def cpu_info(path: str = "/proc/cpuinfo") -> CpuInfo:
    """The CPU of this machine (read once per process).

    Linux: parsed from ``path`` (:func:`parse_cpuinfo`). Elsewhere, or when the file cannot be
    read: the model from :mod:`platform` and, if torch is importable, ``avx2`` / ``avx512f``
    from ``torch.backends.cpu.get_cpu_capability()`` (torch does not report bf16 support, so
    such a CPU is treated as lacking it: the safe side, float32). Never raises.
    """
    try:
        return parse_cpuinfo(Path(path).read_text(errors="replace"))
    except OSError:
        pass
    model = platform.processor() or platform.machine() or "unknown"
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - no torch, or too old for get_cpu_capability: flags unknown
        return CpuInfo(model, frozenset(), "unknown")
    flags = {"AVX2": {"avx2"}, "AVX512": {"avx2", "avx512f"}}.get(capability, set())
    return CpuInfo(model, frozenset(flags), "torch")


def missing_bf16_flags(flags: frozenset[str] | set[str] | None = None) -> tuple[str, ...]:
    """The :data:`BF16_FLAGS`, if none of them is in ``flags`` (default: this CPU's); else ``()``."""
    flags = cpu_info().flags if flags is None else flags
    return () if any(f in flags for f in BF16_FLAGS) else BF16_FLAGS


def bf16_native(device: str = "cpu", flags: frozenset[str] | set[str] | None = None) -> bool:
    """Whether ``device`` does bf16 arithmetic in hardware (so bf16 autocast is fast).

    Args:
        device: a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...).
        flags: the CPU's flags, for ``device="cpu"`` (default: :func:`cpu_info`'s).

    Returns:
        CPU: ``avx512_bf16`` or ``amx_bf16`` in ``flags``. CUDA: ``torch.cuda.is_bf16_supported()``
        (compute capability 8.0+, i.e. Ampere and later; ``False`` without CUDA). Anything else:
        ``False``.
    """
    kind = _device_type(device)
    if kind == "cpu":
        return not missing_bf16_flags(flags)
    if kind == "cuda":
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return False


@dataclass(frozen=True)
class EncoderPath:
    """How the sentence encoder runs: the outcome of :func:`choose_encoder_path`.

    Attributes:
        runtime: ``"torch"`` (sentence-transformers) or ``"onnx"`` (our ONNX Runtime export).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (the latter two: torch autocast; the
            vectors come out float32 either way).
        reason: one sentence, for people and manifests: why this path, with the evidence.
    """

    runtime: str
    precision: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        """``{"runtime", "precision", "reason"}``, JSON-able."""
        return {"runtime": self.runtime, "precision": self.precision, "reason": self.reason}


def _device_type(device: str) -> str:
    return str(device).split(":", 1)[0].strip().lower()


def _flag_text(flags: frozenset[str] | set[str]) -> str:
    present = [f for f in CPU_FLAGS if f in flags]
    return ", ".join(present) if present else "none of " + ", ".join(CPU_FLAGS)


def choose_encoder_path(
    runtime: str,
    precision: str,
    device: str,
    flags: frozenset[str] | set[str],
    mean_pooled: bool,
    *,
    cuda_bf16: bool = True,
    onnx_available: bool = True,
    field: str = "lm",
) -> EncoderPath:
    """Pick the fastest path whose vectors stay within 1e-3 cosine of float32, or honour an explicit one.

    ``"auto"`` (either argument) is resolved by the device and the CPU's flags:

    - CUDA: torch with bf16 autocast, or fp16 where the GPU has no bf16 (``cuda_bf16=False``).
    - a CPU with ``avx512_bf16`` or ``amx_bf16``: torch with bf16 autocast (1.79x float32,
      max ``|1 - cos|`` 3.1e-5 measured on all-MiniLM-L6-v2).
    - any other CPU: our ONNX Runtime float32 export where the model is mean-pooled and
      onnxruntime is installed (1.35-1.44x, ``|1 - cos|`` ~4e-7 on AVX2 AMD EPYC), else torch
      float32.
    - other devices (``mps``...): torch float32.

    Explicit values are honoured: ``precision="bf16"`` on a CPU without native bf16 is allowed
    (torch emulates it, 6-9x slower than float32 on AVX2, and the reason says so); with
    ``runtime="auto"`` an explicit ``bf16`` / ``fp16`` means torch (the ONNX export is float32
    only). Figures from ``bench/embed_throughput.py``; see the module docstring.

    Args:
        runtime: ``"auto"``, ``"torch"`` or ``"onnx"`` (``LMConfig.runtime``).
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (``LMConfig.precision``).
        device: torch device string (``"cpu"``, ``"cuda:0"``...).
        flags: the CPU's flags (:attr:`CpuInfo.flags`); only read for a CPU device.
        mean_pooled: the model is ``Transformer -> Pooling(mean) [-> Normalize]`` in a local
            directory (what the ONNX path supports).
        cuda_bf16: the CUDA device supports bf16 (``torch.cuda.is_bf16_supported()``).
            (default: ``True``)
        onnx_available: onnxruntime is importable. (default: ``True``)
        field: config section named in error messages (``"lm"`` -> ``lm.precision``).

    Returns:
        EncoderPath: a concrete ``runtime`` (``"torch"``/``"onnx"``), ``precision``
        (``"fp32"``/``"bf16"``/``"fp16"``) and the reason.

    Raises:
        ValueError: an unknown runtime or precision; ``fp16`` off CUDA (the message names
            ``<field>.precision``); ``runtime="onnx"`` on a device other than the CPU, with a
            precision other than float32, or for a model that is not mean-pooled.
    """
    if runtime not in RUNTIME_CHOICES:
        raise ValueError(f"{field}.runtime must be one of {', '.join(map(repr, RUNTIME_CHOICES))}; got {runtime!r}")
    if precision not in PRECISION_CHOICES:
        raise ValueError(
            f"{field}.precision must be one of {', '.join(map(repr, PRECISION_CHOICES))}; got {precision!r}"
        )
    kind = _device_type(device)
    if precision == "fp16" and kind != "cuda":
        raise ValueError(f"{field}.precision='fp16' needs a CUDA device; on {device!r} use 'bf16' or 'fp32'")
    if runtime == "onnx":
        if kind != "cpu":
            raise ValueError(f"{field}.runtime='onnx' runs on the CPU only; got {field}.device={device!r}")
        if precision not in ("auto", "fp32"):
            raise ValueError(
                f"{field}.runtime='onnx' is float32 only; got {field}.precision={precision!r} (use runtime 'torch')"
            )
        if not mean_pooled:
            raise ValueError(f"{field}.runtime='onnx' needs a local mean-pooling model; use runtime 'torch'")
        return EncoderPath("onnx", "fp32", "runtime='onnx' asked for: ONNX Runtime, float32")

    if kind == "cuda":
        if precision == "auto":
            if cuda_bf16:
                return EncoderPath("torch", "bf16", "CUDA with bf16: torch bf16 autocast")
            return EncoderPath("torch", "fp16", "CUDA without bf16 (compute capability < 8.0): torch fp16 autocast")
        note = " (no native bf16 on this GPU: slow)" if precision == "bf16" and not cuda_bf16 else ""
        return EncoderPath("torch", precision, f"precision={precision!r} asked for on CUDA: torch{note}")

    if kind != "cpu":
        chosen = "fp32" if precision == "auto" else precision
        return EncoderPath("torch", chosen, f"device {device!r}: torch {chosen}")

    native = not missing_bf16_flags(flags)
    has = _flag_text(flags)
    onnx_ok = mean_pooled and onnx_available
    if precision == "bf16":
        if native:
            return EncoderPath("torch", "bf16", f"precision='bf16' asked for; the CPU has native bf16 ({has})")
        return EncoderPath(
            "torch", "bf16",
            f"precision='bf16' asked for; the CPU lacks avx512_bf16 and amx_bf16 ({has}): bf16 is emulated "
            "and slow (6-9x float32's time measured on AVX2)",
        )
    if precision == "auto" and native:
        return EncoderPath(
            "torch", "bf16",
            f"CPU with native bf16 ({has}): torch bf16 autocast, 1.79x float32 at max |1-cos| 3.1e-5 (measured)",
        )
    # float32 on the CPU: precision 'fp32', or 'auto' without native bf16
    if runtime == "torch":
        why = "precision='fp32' asked for" if precision == "fp32" else f"no native bf16 ({has})"
        return EncoderPath("torch", "fp32", f"runtime='torch' asked for; {why}: float32")
    if onnx_ok:
        why = "precision='fp32' asked for" if precision == "fp32" else f"CPU without native bf16 ({has})"
        return EncoderPath(
            "onnx", "fp32",
            f"{why}: ONNX Runtime float32, 1.35-1.44x sentence-transformers at |1-cos| ~4e-7 (measured on AVX2)",
        )
    missing = "onnxruntime is not installed" if mean_pooled else "the model is not a local mean-pooling model"
    return EncoderPath("torch", "fp32", f"float32 on a CPU without native bf16 ({has}); {missing}: torch")


def check_training_precision(
    precision: str, device: str, flags: frozenset[str] | set[str], field: str = "finetune"
) -> None:
    """Refuse a training precision the device cannot run at speed (fine-tuning, not encoding).

    bf16 autocast on a CPU is only accepted with native bf16 (``avx512_bf16`` or ``amx_bf16``):
    emulated (6-9x float32's time for inference on AVX2 cores), a fine-tuning run that takes
    minutes in float32 would take most of an hour, which nobody asks for on purpose. fp16 needs CUDA (the config refuses it already).

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device: torch device string.
        flags: the CPU's flags (:attr:`CpuInfo.flags`); only read for a CPU device.
        field: config section named in the message. (default: ``"finetune"``)

    Raises:
        ValueError: ``bf16`` on a CPU without native bf16 (names the missing flags and the CPU's
            relevant flags), or ``fp16`` off CUDA.
    """
    kind = _device_type(device)
    if precision == "fp16" and kind != "cuda":
        raise ValueError(f"{field}.precision='fp16' needs a CUDA device; on {device!r} use 'bf16' or 'fp32'")
    if precision == "bf16" and kind == "cpu" and missing_bf16_flags(flags):
        raise ValueError(
            f"{field}.precision='bf16' on the CPU needs native bf16, CPU flag avx512_bf16 or amx_bf16; "
            f"this CPU has {_flag_text(flags)}: use {field}.precision='fp32'"
        )


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask (``os.sched_getaffinity``, which
    honours ``taskset`` and container cpusets), or ``os.cpu_count()`` where the platform has
    no affinity call (macOS)."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``threads`` torch intra-op threads (``None``: leave them as they are),
    then restore the previous number, also on an error."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
