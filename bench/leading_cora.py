"""LEADING on Cora: accuracy through the tag flow, and cost per epoch against LM-only
fine-tuning and naive end-to-end training, side by side on this machine.

    python bench/leading_cora.py accuracy --seeds 0 --features TA      # the tag flow, method leading
    python bench/leading_cora.py accuracy --seeds 0 --features TA --warmup-ratio 0.15 --head-lr 1e-3  # levers
    python bench/leading_cora.py cost --subset 500                     # one epoch of each, own process
    python bench/leading_cora.py lowlabel --seeds 0 1 2 3              # 20 per class / 500 / 1,000

``lowlabel`` runs Cora's low-label split (``dataset.split=low_label``: 20 train nodes per
class, 500 validation, 1,000 test, random per seed) through the tag flow twice, TA only (the
regime's papers have no LLM explanations): TAPE with frozen and fine-tuned encoders (GCN and
MLP per encoder), then LEADING with its GCN. It prints one table: LEADING's own logits, the
fine-tuned LM's own logits (read from its lake artifact), and GCNs on frozen, fine-tuned and
LEADING embeddings, mean ± std over seeds. The fine-tuned LM uses LEADING's recipe (MiniLM,
top 2 layers, 128 tokens, lr 1e-4, 4 epochs), so the graph is the only difference.

``cost`` runs each variant in a fresh process (so each peak RSS is its own; "whole call"
adds loading the model, tokenising and the frozen lower layers' one pass): LM-only
fine-tuning (``tag_pipeline.finetune``, the same top-2-layer MiniLM, one epoch), LEADING (the
targets encoded with gradients, neighbours from the cache) and the naive end-to-end baseline
(each step also encodes the targets' 2-hop neighbours with gradients), on the first
``--subset`` Cora nodes, TA text, 128 tokens. It prints the CPU model and flags first: a
figure from one machine is not a figure for another.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _graph(root: str, subset: int | None):
    from tag_pipeline.config import DatasetConfig
    from tag_pipeline.datasets import load_dataset

    return load_dataset(DatasetConfig(name="cora", root=root, subset=subset), [0])


def one_epoch(variant: str, root: str, subset: int | None, threads: int) -> dict:
    """One epoch of ``variant`` in this process: wall seconds and peak RSS (MiB)."""
    import torch

    torch.set_num_threads(threads)
    graph = _graph(root, subset)
    split = graph.splits[0]
    start = time.perf_counter()
    if variant == "finetune":
        from tag_pipeline.config import FinetuneConfig
        from tag_pipeline.finetune import finetune_node_classifier

        cfg = FinetuneConfig(epochs=1, trainable_layers=2)
        res = finetune_node_classifier(graph.text, graph.labels, split.train, split.val, graph.num_classes, cfg, seed=0,
                                       progress=False)
        val, epoch_s = res.val_acc, res.history[0]["seconds"]
    else:
        from tag_pipeline.methods.leading.config import LeadingMethod
        from tag_pipeline.methods.leading.model import train_leading

        cfg = LeadingMethod(epochs=1, neighbours="cache" if variant == "leading" else "gradient")
        res = train_leading(graph.text, graph.labels, graph.edge_index, split, graph.num_classes, cfg, seed=0)
        val, epoch_s = res["val_acc"], res["history"][0]["seconds"]
    return {"variant": variant, "seconds": time.perf_counter() - start, "epoch_s": epoch_s, "val_acc": val,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def cost(args) -> None:
    rows = []
    for variant in ("finetune", "leading", "naive"):
        out = subprocess.run(
            [sys.executable, __file__, "_epoch", variant, "--root", args.root, "--subset", str(args.subset),
             "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"\nCora first {args.subset} nodes, TA, 128 tokens, top 2 of 6 MiniLM layers trained, {args.threads} threads")
    print("| variant | epoch s | x LM-only | whole call s | peak RSS MiB | x LM-only | val acc after 1 epoch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['epoch_s']:.1f} | {r['epoch_s'] / base['epoch_s']:.2f} | {r['seconds']:.1f} | "
              f"{r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] / base['peak_rss_mib']:.2f} | {r['val_acc']:.4f} |")


def accuracy(args) -> None:
    from flows.tag import tag
    from tag_pipeline import lake
    from tag_pipeline.config import DatasetConfig
    from tag_pipeline.methods import LeadingMethod

    start = time.perf_counter()
    levers = {k: v for k, v in (("lr", args.lr), ("head_lr", args.head_lr), ("warmup_ratio", args.warmup_ratio))
              if v is not None}
    out = tag(dataset=DatasetConfig(name="cora", root=args.root),
              method=LeadingMethod(features=args.features, **levers), seeds=args.seeds, lake=args.lake)
    print(f"LEADING on Cora, seeds {args.seeds}, features {args.features}, levers {levers or 'none'}: "
          f"{time.perf_counter() - start:.0f} s")
    for r in out["runs"]:
        if r["method"] == "leading":
            manifest = lake.read_artifact(r["path"], verify=False).manifest
            print(f"{r['variant']} seed {r['seed']}: val per epoch "
                  f"{[round(h['val_acc'], 4) for h in manifest['history']]}, best epoch "
                  f"{manifest['summary'].get('best_epoch')}")
    print(out["markdown"].split("## LLM stage")[0])


def lowlabel(args) -> None:
    import statistics

    import torch

    from flows.tag import tag
    from tag_pipeline.config import DatasetConfig, FinetuneConfig, LowLabelSplitConfig
    from tag_pipeline.datasets import open_graph
    from tag_pipeline.finetune import materialize_finetuned_feature, read_lm_logits
    from tag_pipeline.methods import LeadingMethod
    from tag_pipeline.report import mean_std_cell
    from tag_pipeline.train import accuracy

    sizes = LowLabelSplitConfig(train_per_class=args.per_class, num_val=args.num_val, num_test=args.num_test)
    dataset = DatasetConfig(name="cora", root=args.root, subset=args.subset, split="low_label", low_label=sizes)
    common = dict(dataset=dataset, features=["TA"], seeds=args.seeds, lake=args.lake)
    finetune = FinetuneConfig(trainable_layers=LeadingMethod().trainable_layers)
    start = time.perf_counter()
    tape = tag(**common, models=["mlp", "gcn"], lm_modes=["frozen", "finetuned"], finetune=finetune)
    tape_s = time.perf_counter() - start
    leading = tag(**common, models=["gcn"], method=LeadingMethod(features=["TA"]))
    leading_s = time.perf_counter() - start - tape_s
    graph = open_graph(Path(tape["graph"]))
    y = torch.from_numpy(graph.labels)
    rows: dict[str, list[tuple[float, float]]] = {}
    for r in tape["runs"] + leading["runs"]:
        if r["feature"] != "TA":  # h_TAPE of one feature repeats it
            continue
        name = "LEADING (own logits)" if r["method"] == "leading" else f"{r['model'].upper()} on {r['lm']} TA"
        rows.setdefault(name, []).append((r["val_acc"], r["test_acc"]))
    for seed in args.seeds:  # the fine-tuned LM's own logits: the artifact the flow made (no retraining)
        path = materialize_finetuned_feature(Path(tape["graph"]), None, "TA", seed, finetune, Path(args.lake))
        logits, split = read_lm_logits(path), graph.splits[seed]
        rows.setdefault("fine-tuned LM (own logits)", []).append(
            tuple(accuracy(logits, y, torch.from_numpy(p)) for p in (split.val, split.test)))

    def cell(values: list[float]) -> str:
        return mean_std_cell(statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))

    print(f"\nCora low-label ({dataset.split_label}), TA, seeds {args.seeds}; tag flow TAPE {tape_s:.0f} s, "
          f"LEADING {leading_s:.0f} s")
    print("| predictor | test | val |\n|---|---|---|")
    for name, vals in sorted(rows.items(), key=lambda kv: -statistics.mean(t for _, t in kv[1])):
        print(f"| {name} | {cell([t for _, t in vals])} | {cell([v for v, _ in vals])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["accuracy", "cost", "lowlabel", "_epoch"])
    ap.add_argument("variant", nargs="?")
    ap.add_argument("--root", default="../shared/data")
    ap.add_argument("--subset", type=int, default=None, help="first N Cora nodes (cost: default 500; lowlabel: all)")
    ap.add_argument("--lr", type=float, default=None, help="accuracy: LEADING's LM learning rate (a lever)")
    ap.add_argument("--head-lr", type=float, default=None, help="accuracy: the head's learning rate (a lever)")
    ap.add_argument("--warmup-ratio", type=float, default=None, help="accuracy: warm-up then linear decay (a lever)")
    ap.add_argument("--per-class", type=int, default=20, help="lowlabel: train nodes per class")
    ap.add_argument("--num-val", type=int, default=500, help="lowlabel: validation nodes")
    ap.add_argument("--num-test", type=int, default=1000, help="lowlabel: test nodes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--features", nargs="+", default=["TA"])
    ap.add_argument("--lake", default="data/lake")
    args = ap.parse_args()
    if args.what in ("cost", "_epoch") and args.subset is None:
        args.subset = 500
    if args.what == "_epoch":
        print(json.dumps(one_epoch(args.variant, args.root, args.subset, args.threads)))
        return
    from tag_pipeline.hardware import cpu_info

    cpu = cpu_info()
    print(f"CPU: {cpu.model}; flags: {', '.join(sorted(cpu.flags)) or 'none of interest'}")
    {"cost": cost, "accuracy": accuracy, "lowlabel": lowlabel}[args.what](args)


if __name__ == "__main__":
    main()
