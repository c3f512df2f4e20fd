"""Wall time of each pipeline stage: cold and warm, and cold against a plain float32 baseline.

    python bench/pipeline.py --dataset cora                          # TAPE on Cora, seeds 0-3
    python bench/pipeline.py --dataset cora --subset 300 --seeds 0   # a quick check
    python bench/pipeline.py --no-baseline                           # cold and warm only

Runs the ``tag`` flow in-process (Prefect starts its own temporary server) against fresh
temporary lakes:

- **auto**, the defaults (``lm.runtime``/``lm.precision`` ``auto``: the fastest encoder path
  within 1e-3 cosine of float32 on this CPU; ``gnn.workers`` ``None``: as many training
  processes as the cores hold), twice: cold (every stage computed) and warm (every stage
  task a cache hit);
- **baseline**, unless ``--no-baseline``: the same flow with ``LMConfig(runtime="torch",
  precision="fp32")`` (sentence-transformers in float32) and ``GNNConfig(workers=1)``
  (training runs one after another), cold, on a lake of its own (the encoder path is not part
  of the lake's keys, so a shared lake would hand it the auto run's features).

Prints the machine (CPU model and the flags that pick the encoder path, cores, torch threads),
what each variant resolved to (encoder path from the feature manifests, training workers), the
load average, then seconds per stage: auto cold, auto warm, cold/warm, baseline cold and
baseline/auto. The last line is one JSON object with all of it.

The ONNX export that the auto path may use is cached across runs (``$TAG_ONNX_CACHE``, default
``data/cache/onnx``); the header says whether it existed before, i.e. whether auto cold paid
for the export. ``--fresh-onnx-cache`` makes it pay (a temporary cache).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

def resolved_workers(gnn: Any, runs: int) -> int | None:
    """Training processes the flow will use for ``runs`` runs (``None`` if the library cannot say)."""
    try:
        from tag_pipeline.train import training_workers
    except ImportError:
        return None
    return training_workers(getattr(gnn, "workers", None), gnn.threads, runs)


def training_runs(tag, dataset: Any, seeds: list[int]) -> int:
    """GNN training runs of a ``tag`` flow with default models and features on ``dataset``."""
    from tag_pipeline.config import LLMConfig
    from tag_pipeline.datasets import feature_availability

    defaults = inspect.signature(tag.fn).parameters
    why_not = feature_availability(dataset, LLMConfig())
    features = [f for f in defaults["features"].default if not why_not[f]]
    return len(defaults["models"].default) * len(seeds) * len(features)


def encoder_paths(lake: Path, dataset: str) -> dict[str, str]:
    """``{feature artifact: "runtime/precision"}`` from the text features' manifests in ``lake``."""
    found = {}
    for manifest in sorted((lake / dataset / "features").glob("*/manifest.json")):
        encoder = json.loads(manifest.read_text()).get("encoder")
        if encoder:
            found[manifest.parent.name.split("-")[0]] = f"{encoder.get('runtime')}/{encoder.get('precision')}"
    return found


def run_flow(tag, params: dict[str, Any]) -> dict[str, float]:
    """One ``tag`` flow run: its stage timings (seconds) plus ``total``, the wall time of the call."""
    start = time.perf_counter()
    out = tag(**params)
    return out["timings"] | {"total": time.perf_counter() - start}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def main(argv: list[str] | None = None) -> None:
    """Command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cora")
    ap.add_argument("--root", default=str(PROJECT_ROOT.parent / "shared" / "data"))
    ap.add_argument("--subset", type=int, default=None, help="first N nodes only (default: all)")
    ap.add_argument("--seeds", default="0,1,2,3", help="comma-separated (default 0,1,2,3)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the float32 / sequential baseline run")
    ap.add_argument("--fresh-onnx-cache", action="store_true", help="export the ONNX encoder anew (temporary cache)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tag-bench-"))
    onnx_cache = work / "onnx" if args.fresh_onnx_cache else Path(
        os.environ.get("TAG_ONNX_CACHE") or PROJECT_ROOT / "data" / "cache" / "onnx"
    )
    onnx_cached_before = onnx_cache.is_dir() and any(onnx_cache.iterdir())
    os.environ.update({
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(work / "results"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TAG_ONNX_CACHE": str(onnx_cache),
    })
    os.environ.pop("PREFECT_API_URL", None)  # Prefect starts a temporary local server
    from tag_cli.main import EPHEMERAL_STARTUP_TIMEOUT_S  # as patient as the `tag` command on a busy machine

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S)
    import torch

    from flows.tag import tag
    from tag_pipeline.config import DatasetConfig, GNNConfig, LMConfig
    from tag_pipeline.hardware import available_cores, cpu_info

    seeds = [int(s) for s in args.seeds.split(",")]
    common = dict(dataset=DatasetConfig(name=args.dataset, root=args.root, subset=args.subset), seeds=seeds)
    variants: dict[str, dict[str, Any]] = {"auto": dict(lm=LMConfig(), gnn=GNNConfig())}
    if not args.no_baseline:
        variants["baseline"] = dict(lm=LMConfig(runtime="torch", precision="fp32"), gnn=GNNConfig(workers=1))
    runs_per_variant = training_runs(tag, common["dataset"], seeds)

    cpu = cpu_info().as_dict()
    machine = {
        "cpu": cpu, "cores": available_cores(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "onnx_cache": str(onnx_cache), "onnx_cached_before": onnx_cached_before,
    }
    print(f"tag flow on {args.dataset} (subset={args.subset}, seeds={args.seeds}); work dir {work}")
    print(f"CPU: {cpu['model']}; flags: {', '.join(cpu['flags']) or 'none of avx2/avx512*/amx*'} ({cpu['source']})")
    print(f"cores available: {machine['cores']}; torch {torch.__version__} with {machine['torch_threads']} threads")
    print(f"ONNX export cache {onnx_cache}: {'present before this run' if onnx_cached_before else 'empty: auto cold pays the export'}")

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # start the temporary server outside every timing
        client.hello()
    timings: dict[str, dict[str, float]] = {}
    resolved: dict[str, dict[str, Any]] = {}
    load = {"start": _load()}
    for name, config in variants.items():
        lake = work / name / "lake"
        params = common | config | {"lake": str(lake)}
        timings[f"{name} cold"] = run_flow(tag, params)
        if name == "auto":
            timings["auto warm"] = run_flow(tag, params)
        gnn = config["gnn"]
        resolved[name] = {
            "lm.runtime": config["lm"].runtime, "lm.precision": getattr(config["lm"], "precision", None),
            "encoder": encoder_paths(lake, args.dataset),
            "gnn.workers": getattr(gnn, "workers", None), "gnn.threads": gnn.threads,
            "training processes": resolved_workers(gnn, runs_per_variant),
        }
        print(
            f"{name}: lm runtime={resolved[name]['lm.runtime']} precision={resolved[name]['lm.precision']} -> "
            f"{', '.join(f'{k} {v}' for k, v in resolved[name]['encoder'].items()) or 'no text feature manifest'}; "
            f"gnn.workers={resolved[name]['gnn.workers']} threads={gnn.threads} -> "
            f"{resolved[name]['training processes']} training process(es) for {runs_per_variant} runs"
        )
    load["end"] = _load()
    print(f"load average (1, 5, 15 min): {load['start']} at the start, {load['end']} at the end")

    stages = list(timings["auto cold"])
    head = f"{'stage':<10}{'auto cold':>11}{'auto warm':>11}{'cold/warm':>11}"
    if "baseline cold" in timings:
        head += f"{'base cold':>11}{'base/auto':>11}"
    print(head)
    for s in stages:
        c, w = timings["auto cold"][s], timings["auto warm"].get(s, 0.0)
        row = f"{s:<10}{c:>11.2f}{w:>11.2f}{(c / w if w else float('inf')):>11.1f}"
        if "baseline cold" in timings:
            b = timings["baseline cold"].get(s, 0.0)
            row += f"{b:>11.2f}{(b / c if c else float('inf')):>11.2f}"
        print(row)
    print(json.dumps({
        "dataset": args.dataset, "subset": args.subset, "seeds": seeds, "machine": machine, "resolved": resolved,
        "load_average": load, "seconds": {k: {s: round(v, 2) for s, v in t.items()} for k, t in timings.items()},
        "speedup_cold_warm": round(timings["auto cold"]["total"] / timings["auto warm"]["total"], 1),
        "baseline_over_auto": (
            {s: round(timings["baseline cold"].get(s, 0.0) / v, 2) for s, v in timings["auto cold"].items() if v}
            if "baseline cold" in timings else None
        ),
    }))


if __name__ == "__main__":
    main()
