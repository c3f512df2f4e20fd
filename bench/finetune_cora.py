"""Time the LM fine-tuning stage (TAPE Sec. 4.2) on Cora: seconds per epoch, validation accuracy.

Fine-tunes the encoder (all-MiniLM-L6-v2 by default) per seed and feature through
:func:`tag_pipeline.finetune.materialize_finetuned_feature`, so the artifacts land in the lake
(an existing artifact is reused, not retrained). Prints each epoch's train loss, validation
accuracy and wall time, then one JSON line per (feature, seed). Test accuracy of the LM's own
logits is printed for the record only; nothing is chosen on it.

    python bench/finetune_cora.py --seeds 0 --features TA --max-length 128 --epochs 4 \
        [--trainable-layers K] [--lake data/lake] [--root ../shared/data] [--subset N] [--threads 2]

E needs the LLM stage's replayed answers (committed to the lake here if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from tag_pipeline.config import DatasetConfig, LLMConfig
from tag_pipeline.datasets import materialize_graph, open_graph
from tag_pipeline.finetune import FinetuneConfig, materialize_finetuned_feature, read_lm_logits
from tag_pipeline.lake import read_artifact
from tag_pipeline.train import accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=Path("data/lake"))
    parser.add_argument("--root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--subset", type=int, default=None, help="first N nodes only (default: all 2708)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--features", nargs="+", default=["TA"], choices=["TA", "E"])
    parser.add_argument("--max-length", type=int, default=FinetuneConfig().max_length)
    parser.add_argument("--epochs", type=int, default=FinetuneConfig().epochs)
    parser.add_argument("--lr", type=float, default=FinetuneConfig().lr)
    parser.add_argument("--batch-size", type=int, default=FinetuneConfig().batch_size)
    parser.add_argument("--trainable-layers", type=int, default=None,
                        help="fine-tune only the top k layers (default: all, TAPE)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    cfg = FinetuneConfig(
        max_length=args.max_length, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        threads=args.threads, device=args.device, trainable_layers=args.trainable_layers,
    )
    dataset = DatasetConfig(root=args.root, subset=args.subset)
    graph_path = materialize_graph(dataset, args.seeds, args.lake)
    graph = open_graph(graph_path)
    responses = None
    if "E" in args.features:
        from tag_pipeline.llm.stage import materialize_responses

        responses = materialize_responses(graph_path, dataset, LLMConfig(), args.lake)
    y = torch.from_numpy(graph.labels)
    print(f"cora: {graph.num_nodes} nodes; {cfg.model}, max_length {cfg.max_length}, "
          f"{torch.get_num_threads() if cfg.threads is None else cfg.threads} torch threads", flush=True)
    for feature in args.features:
        for seed in args.seeds:
            start = time.perf_counter()
            path = materialize_finetuned_feature(graph_path, responses, feature, seed, cfg, args.lake)
            m = read_artifact(path).manifest
            for h in m["history"]:
                print(f"{feature} seed {seed} epoch {h['epoch']}: {h['seconds']:.1f} s, "
                      f"train loss {h['train_loss']:.4f}, val acc {h['val_acc']:.4f}", flush=True)
            test = accuracy(read_lm_logits(path), y, torch.from_numpy(graph.splits[seed].test))
            print(json.dumps({
                "feature": feature, "seed": seed, "nodes": graph.num_nodes,
                "train_nodes": int(graph.splits[seed].train.size), "max_length": cfg.max_length,
                "epochs": cfg.epochs, "trainable_layers": cfg.trainable_layers, "seconds": round(m["seconds"], 1),
                "seconds_per_epoch": [round(h["seconds"], 1) for h in m["history"]],
                "val_acc_per_epoch": [round(h["val_acc"], 4) for h in m["history"]],
                "best_epoch": m["best_epoch"], "val_acc": round(m["val_acc"], 4),
                "train_acc": round(m["train_acc"], 4), "test_acc_record_only": round(test, 4),
                "reused": time.perf_counter() - start < 0.5 * m["seconds"], "artifact": str(path),
            }), flush=True)


if __name__ == "__main__":
    main()
