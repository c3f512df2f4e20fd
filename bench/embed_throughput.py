"""Throughput and exactness of every encoder path on this machine, same texts, same threads.

Embeds the title + abstract of the first N Cora nodes with each path, all on
``torch.get_num_threads()`` threads:

- ``st-fp32`` (the baseline): ``SentenceTransformer(path).encode(texts)`` at its defaults
  (batch size 32, the model's ``max_seq_length``, 256 for all-MiniLM-L6-v2), float32;
- ``onnx-fp32``: :func:`tag_pipeline.features.onnx_encoder.encode_texts_onnx` (the
  ``runtime="onnx"`` path of ``encode_texts``, at ``LMConfig``'s defaults: batch size 64, max
  length 256);
- ``torch-bf16``: :func:`tag_pipeline.features.text.encode_texts` with ``runtime="torch",
  precision="bf16"`` (sentence-transformers under ``torch.autocast("cpu", bfloat16)``, same
  batch size and length as ``onnx-fp32``), labelled ``native`` where the CPU has
  ``avx512_bf16`` or ``amx_bf16`` and ``emulated`` where it does not (then ~6x slower than the
  baseline on 2 AVX2 cores: use ``--paths`` to leave it out on a large ``--n``);
- ``torch-int8``: the baseline's model with its ``nn.Linear`` layers dynamically quantized to
  int8 (``torch.ao.quantization.quantize_dynamic``: int8 weights per tensor, activations
  quantized per batch), same settings as the baseline. Shown for its speed; it is never
  chosen, its cosine error is far above the 1e-3 the pipeline allows.

Every path is warmed up first (the ONNX export is built or taken from the cache then, and
timed as ``export_s``); each repeat runs all paths, starting from a different one each time,
and the medians are compared, since the machine may be shared. Exactness is against the
baseline's rows: max and mean over texts of ``|1 - cos|``, and the max absolute difference of
any coordinate. Finally the path ``runtime="auto", precision="auto"`` takes on this machine
(:func:`tag_pipeline.features.text.encoder_path`) is printed with its reason.

    python bench/embed_throughput.py [--n 2708] [--repeats 3] [--threads T] [--cache-dir DIR]
        [--paths st-fp32 onnx-fp32 torch-bf16 torch-int8]

Prints the CPU (model, flags), the threads, a table of paths, the auto choice, then as its
last line one JSON object:

- ``paths``: per path ``texts_per_s`` (N over the median wall time), ``speedup`` (ratio of the
  baseline's median wall time to the path's), ``speedup_paired`` (median over repeats of the
  per-repeat ratio), ``speedup_cpu`` (the same from the process's CPU time: less sensitive to
  other jobs taking the cores, more to idle threads spinning), ``max_cos_diff``,
  ``mean_cos_diff``, ``max_abs_diff``, ``label`` (e.g. ``emulated``);
- ``auto``: ``runtime``, ``precision``, ``reason``; ``cpu``: ``model``, ``flags``, ``source``;
- ``n``, ``unique``, ``threads``, ``repeats``, ``batch_parallel``, ``spinning``, ``export_s``
  (0 when the cached export was reused), ``load_avg`` (1-minute load average before and after).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tag_pipeline import hardware  # noqa: E402
from tag_pipeline.config import LMConfig  # noqa: E402
from tag_pipeline.datasets.cora import load_cora  # noqa: E402
from tag_pipeline.features import onnx_encoder  # noqa: E402
from tag_pipeline.features.text import encode_texts, encoder_path, resolve_model_path  # noqa: E402

BASELINE = "st-fp32"
PATHS = (BASELINE, "onnx-fp32", "torch-bf16", "torch-int8")


def shared_data_dir() -> Path:
    return Path(os.environ.get("TAG_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, float]:
    """Run ``fn()``; return its result, wall seconds and process CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def cos_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N]`` ``|1 - cos(a_i, b_i)|`` (float64) of two ``[N, dim]`` arrays."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.abs(1.0 - (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2708, help="first N Cora nodes (default 2708: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX threads (default: torch's)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="ONNX export cache (default: $TAG_ONNX_CACHE or data/cache/onnx)")
    parser.add_argument("--model", default=LMConfig().model)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS),
                        help=f"paths to run (default: all; {BASELINE} always runs, it is the reference)")
    parser.add_argument("--no-batch-parallel", action="store_true",
                        help="ONNX: one batch at a time on all threads (default: one batch per thread)")
    parser.add_argument("--spin", action="store_true", help="let ONNX Runtime's idle threads spin")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    cpu = hardware.cpu_info()
    bf16_label = "native" if hardware.bf16_native("cpu", cpu.flags) else "emulated"

    texts = load_cora(shared_data_dir() / "cora", seeds=()).text[: args.n]
    lm = LMConfig(model=args.model)
    path = resolve_model_path(lm.model)

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(path, device="cpu")
    names = [BASELINE] + [p for p in PATHS if p in args.paths and p != BASELINE]

    onnx_encoder.BATCH_PARALLEL = not args.no_batch_parallel
    onnx_encoder.ALLOW_SPINNING = args.spin
    reused, export_s, onnx_path = True, 0.0, None
    if "onnx-fp32" in names:
        name = Path(lm.model).name
        onnx_path = onnx_encoder.onnx_model_path(Path(path), lm.max_length, args.cache_dir, name=name)
        reused = onnx_encoder.cache_problem(onnx_path) is None
        t0 = time.perf_counter()
        onnx_encoder.ensure_onnx_model(Path(path), lm.max_length, args.cache_dir, name=name)
        export_s = time.perf_counter() - t0
    int8 = None
    if "torch-int8" in names:
        try:
            from torch.ao.quantization import quantize_dynamic
        except ImportError:  # removed from newer torch (moved to torchao): nothing to compare
            print("torch-int8 skipped: torch.ao.quantization.quantize_dynamic is not available", flush=True)
            names.remove("torch-int8")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation notices of torch.ao.quantization
                int8 = quantize_dynamic(copy.deepcopy(st), {torch.nn.Linear}, dtype=torch.qint8)

    runs: dict[str, Callable[[list[str]], np.ndarray]] = {
        BASELINE: lambda t: st.encode(t),
        "onnx-fp32": lambda t: onnx_encoder.encode_texts_onnx(
            t, lm.model, max_length=lm.max_length, batch_size=lm.batch_size, threads=threads, cache_dir=args.cache_dir,
        ).numpy(),
        "torch-bf16": lambda t: encode_texts(
            t, lm.model, max_length=lm.max_length, batch_size=lm.batch_size, show_progress=False,
            runtime="torch", precision="bf16",
        ).numpy(),
        "torch-int8": lambda t: int8.encode(t),  # only run when built
    }
    labels = {BASELINE: "baseline", "onnx-fp32": "", "torch-bf16": bf16_label, "torch-int8": "dynamic, Linear"}
    for which in names:  # warm-up: first calls allocate, build ONNX Runtime's session
        runs[which](texts[:16])

    times: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    outputs: dict[str, np.ndarray] = {}
    for r in range(args.repeats):
        for which in names[r % len(names):] + names[: r % len(names)]:
            out, wall, cpu_s = timed(lambda: runs[which](texts))
            times[which].append((wall, cpu_s))
            outputs.setdefault(which, np.asarray(out, dtype=np.float32))
            print(f"repeat {r + 1}/{args.repeats} {which:12s} {wall:8.2f} s wall {cpu_s:8.2f} s CPU", flush=True)
    load_after = os.getloadavg()[0]

    n = len(texts)
    base = outputs[BASELINE]
    base_wall = float(np.median([w for w, _ in times[BASELINE]]))
    base_cpu = float(np.median([c for _, c in times[BASELINE]]))
    results: dict[str, dict] = {}
    for which in names:
        wall = float(np.median([w for w, _ in times[which]]))
        cpu_s = float(np.median([c for _, c in times[which]]))
        diff = cos_diff(outputs[which], base)
        results[which] = {
            "label": labels[which],
            "texts_per_s": round(n / wall, 2),
            "median_wall_s": round(wall, 3),
            "median_cpu_s": round(cpu_s, 3),
            "speedup": round(base_wall / wall, 3),
            "speedup_paired": round(float(np.median([b[0] / o[0] for b, o in zip(times[BASELINE], times[which])])), 3),
            "speedup_cpu": round(base_cpu / cpu_s, 3),
            "max_cos_diff": float(diff.max()),
            "mean_cos_diff": float(diff.mean()),
            "max_abs_diff": float(np.abs(outputs[which] - base).max()),
        }
    auto = encoder_path(lm.model, device="cpu", runtime="auto", precision="auto")

    print()
    print(f"CPU: {cpu.model}; flags: {', '.join(cpu.as_dict()['flags']) or 'none of ' + ', '.join(hardware.CPU_FLAGS)} "
          f"(from {cpu.source}); native bf16: {'yes' if bf16_label == 'native' else 'no'}")
    print(f"N = {n} Cora texts ({len(set(texts))} unique), {threads} threads "
          f"(torch.get_num_threads() = {torch.get_num_threads()}), {args.repeats} repeats, "
          f"load average {load_before:.1f} -> {load_after:.1f}")
    if onnx_path is not None:
        built = "reused from cache" if reused else f"built in {export_s:.1f} s"
        print(f"ONNX export: {onnx_path} ({built})")
    print(f"{'path':30s} {'texts/s':>9s} {'speedup':>8s} {'paired':>7s} {'CPU x':>6s} "
          f"{'max |1-cos|':>12s} {'mean |1-cos|':>13s} {'max |diff|':>11s}")
    for which, res in results.items():
        label = f"{which} ({res['label']})" if res["label"] else which
        flag = "" if res["max_cos_diff"] <= hardware.COSINE_BOUND else "  > 1e-3: not exact"
        print(f"{label:30s} {res['texts_per_s']:9.1f} {res['speedup']:7.2f}x {res['speedup_paired']:6.2f}x "
              f"{res['speedup_cpu']:5.2f}x {res['max_cos_diff']:12.2e} {res['mean_cos_diff']:13.2e} "
              f"{res['max_abs_diff']:11.2e}{flag}")
    print(f"auto on this machine: runtime={auto.runtime!r}, precision={auto.precision!r}: {auto.reason}")
    print(json.dumps({
        "paths": results,
        "auto": auto.as_dict(),
        "cpu": cpu.as_dict(),
        "n": n,
        "unique": len(set(texts)),
        "threads": threads,
        "repeats": args.repeats,
        "batch_parallel": onnx_encoder.BATCH_PARALLEL,
        "spinning": onnx_encoder.ALLOW_SPINNING,
        "export_s": 0.0 if reused else round(export_s, 2),
        "load_avg": [round(load_before, 2), round(load_after, 2)],
    }))


if __name__ == "__main__":
    main()
