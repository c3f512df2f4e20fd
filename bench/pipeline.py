"""Wall time of each pipeline stage, cold (empty lake and cache) and warm (everything cached).

    python bench/pipeline.py --dataset cora              # TAPE on Cora, seeds 0-3
    python bench/pipeline.py --dataset cora --subset 300 --seeds 0

Runs the ``tag`` flow in-process twice with the same parameters against a fresh temporary
lake and Prefect home (Prefect starts its own temporary server): the first run computes
every stage, the second finds every stage task cached. Prints seconds per stage side by
side with the cold/warm ratio; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cora")
    ap.add_argument("--root", default=str(PROJECT_ROOT.parent / "shared" / "data"))
    ap.add_argument("--subset", type=int, default=None, help="first N nodes only (default: all)")
    ap.add_argument("--seeds", default="0,1,2,3")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tag-bench-"))
    os.environ.update({
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(work / "results"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    })
    os.environ.pop("PREFECT_API_URL", None)  # Prefect starts a temporary local server
    from flows.tag import tag
    from tag_pipeline.config import DatasetConfig

    params = dict(
        dataset=DatasetConfig(name=args.dataset, root=args.root, subset=args.subset),
        seeds=[int(s) for s in args.seeds.split(",")], lake=str(work / "lake"),
    )
    runs = {}
    for phase in ("cold", "warm"):
        start = time.perf_counter()
        out = tag(**params)
        runs[phase] = out["timings"] | {"total": time.perf_counter() - start}
    stages = list(runs["cold"])
    print(f"tag flow on {args.dataset} (subset={args.subset}, seeds={args.seeds}); lake {work / 'lake'}")
    print(f"{'stage':<10}{'cold s':>10}{'warm s':>10}{'cold/warm':>11}")
    for s in stages:
        c, w = runs["cold"][s], runs["warm"].get(s, 0.0)
        print(f"{s:<10}{c:>10.2f}{w:>10.2f}{(c / w if w else float('inf')):>11.1f}")
    print(json.dumps({
        "dataset": args.dataset, "subset": args.subset, "seeds": params["seeds"],
        "cold_s": {k: round(v, 2) for k, v in runs["cold"].items()},
        "warm_s": {k: round(v, 2) for k, v in runs["warm"].items()},
        "speedup_total": round(runs["cold"]["total"] / runs["warm"]["total"], 1),
    }))


if __name__ == "__main__":
    main()
