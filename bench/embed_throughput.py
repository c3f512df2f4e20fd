"""Throughput of the ONNX Runtime embedding path against plain sentence-transformers, same texts.

Embeds the title + abstract of the first N Cora nodes twice per repeat: with
``SentenceTransformer(path).encode(texts)`` at its defaults (batch size 32, the model's
``max_seq_length``, 256 for all-MiniLM-L6-v2) and with
:func:`tag_pipeline.features.onnx_encoder.encode_texts_onnx` (the ``runtime="onnx"`` path of
``encode_texts``, at ``LMConfig``'s defaults: batch size 64, max length 256), both on
``torch.get_num_threads()`` threads. Both are warmed up first (the ONNX export is built or
taken from the cache then, and timed as ``export_s``); the repeats alternate which of the two
runs first, and the medians are compared, since the machine may be shared.

    python bench/embed_throughput.py [--n 2708] [--repeats 3] [--threads T] [--cache-dir DIR]

Prints a table, then as its last line one JSON object:

- ``texts_per_s`` / ``baseline_texts_per_s``: N over the median wall time of our path / of
  sentence-transformers;
- ``speedup``: the ratio of the two medians; ``speedup_paired``: median over repeats of the
  per-repeat ratio; ``speedup_cpu``: the same from the process's CPU time (less sensitive to
  other jobs taking the cores, more to idle threads spinning);
- ``max_cos_diff``: max over texts of ``|1 - cos(ours_i, theirs_i)|``; ``max_abs_diff``: max
  absolute difference of any coordinate;
- ``n``, ``unique``, ``threads``, ``repeats``, ``runtime``, ``export_s`` (0 when the cached
  export was reused), ``load_avg`` (1-minute load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tag_pipeline.config import LMConfig  # noqa: E402
from tag_pipeline.datasets.cora import load_cora  # noqa: E402
from tag_pipeline.features import onnx_encoder  # noqa: E402
from tag_pipeline.features.text import resolve_model_path  # noqa: E402


def shared_data_dir() -> Path:
    return Path(os.environ.get("TAG_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def timed(fn):
    """Run ``fn()``; return its result, wall seconds and process CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2708, help="first N Cora nodes (default 2708: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX threads (default: torch's)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="ONNX export cache (default: $TAG_ONNX_CACHE or data/cache/onnx)")
    parser.add_argument("--model", default=LMConfig().model)
    parser.add_argument("--no-batch-parallel", action="store_true",
                        help="one batch at a time on all threads (default: one batch per thread)")
    parser.add_argument("--spin", action="store_true", help="let ONNX Runtime's idle threads spin")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]

    texts = load_cora(shared_data_dir() / "cora", seeds=()).text[: args.n]
    lm = LMConfig(model=args.model)
    path = resolve_model_path(lm.model)

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(path, device="cpu")

    def baseline() -> np.ndarray:
        return st.encode(texts)

    def ours() -> np.ndarray:
        return onnx_encoder.encode_texts_onnx(
            texts, lm.model, max_length=lm.max_length, batch_size=lm.batch_size,
            threads=threads, cache_dir=args.cache_dir,
        ).numpy()

    onnx_encoder.BATCH_PARALLEL = not args.no_batch_parallel
    onnx_encoder.ALLOW_SPINNING = args.spin
    name = Path(lm.model).name
    onnx_path = onnx_encoder.onnx_model_path(Path(path), lm.max_length, args.cache_dir, name=name)
    reused = onnx_encoder.cache_problem(onnx_path) is None
    t0 = time.perf_counter()
    onnx_encoder.ensure_onnx_model(Path(path), lm.max_length, args.cache_dir, name=name)
    export_s = time.perf_counter() - t0
    st.encode(texts[:64])  # warm-up: first calls allocate, build ONNX Runtime's session
    onnx_encoder.encode_texts_onnx(
        texts[:64], lm.model, max_length=lm.max_length, threads=threads, cache_dir=args.cache_dir
    )

    times: dict[str, list[tuple[float, float]]] = {"sentence-transformers": [], "onnx (ours)": []}
    outputs: dict[str, np.ndarray] = {}
    runs = {"sentence-transformers": baseline, "onnx (ours)": ours}
    for r in range(args.repeats):
        for which in list(runs) if r % 2 == 0 else list(reversed(runs)):
            out, wall, cpu = timed(runs[which])
            times[which].append((wall, cpu))
            outputs.setdefault(which, out)
            print(f"repeat {r + 1}/{args.repeats} {which:22s} {wall:7.2f} s wall {cpu:7.2f} s CPU", flush=True)
    load_after = os.getloadavg()[0]

    theirs, mine = outputs["sentence-transformers"], outputs["onnx (ours)"]
    cos = (theirs * mine).sum(1) / (np.linalg.norm(theirs, axis=1) * np.linalg.norm(mine, axis=1))
    max_cos_diff = float(np.abs(1.0 - cos).max())
    max_abs_diff = float(np.abs(theirs - mine).max())

    n = len(texts)
    med = {k: (float(np.median([w for w, _ in v])), float(np.median([c for _, c in v]))) for k, v in times.items()}
    base_wall, base_cpu = med["sentence-transformers"]
    our_wall, our_cpu = med["onnx (ours)"]
    paired = [b[0] / o[0] for b, o in zip(times["sentence-transformers"], times["onnx (ours)"])]

    print()
    print(f"N = {n} Cora texts ({len(set(texts))} unique), {threads} threads "
          f"(torch.get_num_threads() = {torch.get_num_threads()}), {args.repeats} repeats, "
          f"load average {load_before:.1f} -> {load_after:.1f}")
    built = "reused from cache" if reused else f"built in {export_s:.1f} s"
    print(f"ONNX export: {onnx_path} ({built})")
    print(f"{'path':24s} {'median wall s':>14s} {'texts/s':>9s} {'median CPU s':>13s} {'CPU ms/text':>12s}")
    for which, (wall, cpu) in med.items():
        print(f"{which:24s} {wall:14.2f} {n / wall:9.1f} {cpu:13.2f} {1000 * cpu / n:12.1f}")
    print(f"speedup (median wall) {base_wall / our_wall:.2f}x, paired {np.median(paired):.2f}x, "
          f"CPU time {base_cpu / our_cpu:.2f}x")
    print(f"max |1 - cos| = {max_cos_diff:.2e}, max |diff| = {max_abs_diff:.2e}")
    print(json.dumps({
        "texts_per_s": round(n / our_wall, 2),
        "baseline_texts_per_s": round(n / base_wall, 2),
        "speedup": round(base_wall / our_wall, 3),
        "speedup_paired": round(float(np.median(paired)), 3),
        "speedup_cpu": round(base_cpu / our_cpu, 3),
        "max_cos_diff": max_cos_diff,
        "max_abs_diff": max_abs_diff,
        "n": n,
        "unique": len(set(texts)),
        "threads": threads,
        "repeats": args.repeats,
        "runtime": "onnx",
        "batch_parallel": onnx_encoder.BATCH_PARALLEL,
        "spinning": onnx_encoder.ALLOW_SPINNING,
        "export_s": 0.0 if reused else round(export_s, 2),
        "load_avg": [round(load_before, 2), round(load_after, 2)],
    }))


if __name__ == "__main__":
    main()
