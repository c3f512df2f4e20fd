"""Prediction for new nodes on Cora: 200 nodes held back from training, then classified as new.

    python bench/predict_cora.py [--held-out 200] [--workdir data/bench/predict-cora]

1. Cora (TAPE's files) minus 200 nodes drawn at random (seed 0) from seed 0's test split is
   written as a custom dataset (nodes with seed 0's train/val/test roles as a fixed split,
   edges among the kept nodes, class names).
2. The ``tag`` flow trains on it in this process: GALLON (teachers: GCN and SAGE on TA, the
   only feature a custom dataset without LLM answers has), seed 0.
3. The ``predict`` flow classifies the 200 held-back nodes from their text (and, for the GNN,
   their edges to the kept nodes): once with the GALLON student (text only), once with the
   GCN run on TA (text + edges). Accuracy against their true labels, nodes/s.

Prints the CPU model and flags first: a figure from one machine is not a figure for another.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--held-out", type=int, default=200)
    ap.add_argument("--workdir", default="data/bench/predict-cora")
    ap.add_argument("--root", default="../shared/data")
    args = ap.parse_args()

    import numpy as np
    import polars as pl

    from tag_pipeline.config import CustomDataConfig, DatasetConfig
    from tag_pipeline.datasets import load_dataset
    from tag_pipeline.hardware import cpu_info
    from tag_pipeline.methods import GallonMethod

    cpu = cpu_info()
    print(f"CPU: {cpu.model}; flags: {', '.join(sorted(cpu.flags)) or 'none of interest'}")
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cora = load_dataset(DatasetConfig(name="cora", root=Path(args.root)), [0])
    split = cora.splits[0]
    rng = np.random.default_rng(0)
    held = np.sort(rng.choice(split.test, size=args.held_out, replace=False))
    is_held = np.zeros(cora.num_nodes, dtype=bool)
    is_held[held] = True
    role = np.full(cora.num_nodes, "", dtype=object)
    for name in ("train", "val", "test"):
        role[getattr(split, name)] = name
    ids = np.asarray(cora.source_ids, dtype=object)
    keep = ~is_held
    pl.DataFrame({"id": ids[keep].tolist(), "text": [t for t, k in zip(cora.text, keep) if k],
                  "label": [cora.class_names[y] for y in cora.labels[keep]], "split": role[keep].tolist()}
                 ).write_csv(work / "nodes.csv")
    src, dst = cora.edge_index
    both_kept = keep[src] & keep[dst]
    pl.DataFrame({"src": ids[src[both_kept]].tolist(), "dst": ids[dst[both_kept]].tolist()}).write_csv(work / "edges.csv")
    (work / "classes.txt").write_text("\n".join(cora.class_names) + "\n")
    pl.DataFrame({"id": ids[held].tolist(), "text": [cora.text[i] for i in held]}).write_csv(work / "new_nodes.csv")
    touches = is_held[src] | is_held[dst]
    pl.DataFrame({"src": ids[src[touches]].tolist(), "dst": ids[dst[touches]].tolist()}).write_csv(work / "new_edges.csv")
    truth = {cora.source_ids[i]: cora.class_names[cora.labels[i]] for i in held}
    print(f"kept {keep.sum()} nodes ({both_kept.sum()} directed edges); held back {len(held)} test nodes "
          f"with {touches.sum()} directed edges to the rest")

    from flows.predict import predict
    from flows.tag import tag

    lake = str(work / "lake")
    dataset = DatasetConfig(name="custom", custom=CustomDataConfig(
        nodes=work / "nodes.csv", edges=work / "edges.csv", classes=work / "classes.txt", name="cora-heldout"))
    start = time.perf_counter()
    out = tag(dataset=dataset, method=GallonMethod(), features=["TA"], models=["gcn", "sage"], seeds=[0], lake=lake)
    print(f"trained in {time.perf_counter() - start:.1f} s")
    by = {(r["method"], r["model"], r["variant"]): r for r in out["runs"]}
    gcn_run = by[("tape", "gcn", "TA")]["path"]
    rows = []
    for label, kwargs in (("GALLON student (text only)", dict(method="gallon")),
                          ("GCN on TA (text + edges)", dict(run=gcn_run, edges=str(work / "new_edges.csv")))):
        res = predict(nodes=str(work / "new_nodes.csv"), dataset="cora-heldout", lake=lake, **kwargs)
        pred = pl.read_parquet(Path(res["path"]) / "predictions.parquet")
        acc = float(np.mean([truth[i] == lab for i, lab in zip(pred["id"], pred["label"])]))
        rows.append((label, acc, res["nodes_per_s"], res["embed_s"], res["forward_s"], res["path"]))
    transductive = {k: by[k]["test_acc"] for k in by if k[2] in ("student", "TA")}
    print("\n| predictor | accuracy on the 200 held-back nodes | nodes/s | embed s | forward s |")
    print("|---|---|---|---|---|")
    for label, acc, nps, emb, fwd, _ in rows:
        print(f"| {label} | {acc:.4f} | {nps:.1f} | {emb:.2f} | {fwd:.4f} |")
    print("\ntest accuracy of the same runs on the kept graph's own test nodes (transductive):")
    print(json.dumps({f"{k[0]}/{k[1]}/{k[2]}": round(v, 4) for k, v in transductive.items()}, indent=1))


if __name__ == "__main__":
    main()
