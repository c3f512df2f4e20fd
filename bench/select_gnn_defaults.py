"""Choose the GNN defaults on validation accuracy (never on test).

Trains MLP, GCN and SAGE on TA, E and P for every seed and every configuration of a small
grid and forms h_TAPE per (model, seed). Two choices are printed: the best shared
configuration (mean validation accuracy of h_TAPE over models and seeds) and the best
configuration per model (its own mean validation accuracy over seeds), which the defaults
use. Test accuracy is printed for the record only.
Needs the graph, LLM and feature artifacts of a Cora run in the lake (run `tag` first).
With ``--lm finetuned`` TA and E are the per-seed fine-tuned LM features of the recipe given by
``--finetune-*`` (looked up in the lake, never trained here: run `tag --lm_modes '["finetuned"]'`
or ``bench/finetune_cora.py`` first).

    python bench/select_gnn_defaults.py [--lake data/lake] [--epochs 200] [--patience 50] \
        [--models mlp gcn sage] [--layers 2 3] [--dropouts 0 0.5] [--weight-decays 0 5e-4] \
        [--hiddens 128] [--no-tape-reference] \
        [--lm finetuned --finetune-max-length 256 --finetune-epochs 6 --finetune-trainable-layers 2]

The last line is one JSON object: the chosen configuration and its validation accuracy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from tag_pipeline import lake
from tag_pipeline.config import DatasetConfig, FinetuneConfig, GNNConfig, LLMConfig, LMConfig
from tag_pipeline.datasets import graph_key, open_graph
from tag_pipeline.ensemble import ensemble_logits
from tag_pipeline.features.stage import materialize_prediction_feature, materialize_text_feature
from tag_pipeline.features.store import read_feature
from tag_pipeline.finetune import materialize_finetuned_feature
from tag_pipeline.llm.stage import materialize_responses
from tag_pipeline.train import accuracy, train_node_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=Path("data/lake"))
    parser.add_argument("--root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=50)
    parser.add_argument("--models", nargs="+", default=["mlp", "gcn", "sage"])
    parser.add_argument("--layers", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--dropouts", nargs="+", type=float, default=[0.0, 0.5])
    parser.add_argument("--weight-decays", nargs="+", type=float, default=[0.0, 5e-4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3],
                        help="seeds to average over (the graph artifact of seeds 0-3 holds their splits)")
    parser.add_argument("--hiddens", nargs="+", type=int, default=[128])
    parser.add_argument("--no-tape-reference", action="store_true", help="leave out TAPE's 4-layer defaults")
    parser.add_argument("--lm", choices=["frozen", "finetuned"], default="frozen",
                        help="TA and E from the frozen encoder or from the per-seed fine-tuned one")
    parser.add_argument("--finetune-max-length", type=int, default=FinetuneConfig().max_length)
    parser.add_argument("--finetune-epochs", type=int, default=FinetuneConfig().epochs)
    parser.add_argument("--finetune-trainable-layers", type=int, default=None)
    args = parser.parse_args()
    models = tuple(args.models)

    seeds = args.seeds
    dataset = DatasetConfig(root=args.root)
    graph_path = lake.artifact_dir(args.lake, "cora", "graph", graph_key(dataset, [0, 1, 2, 3]))
    responses = materialize_responses(graph_path, dataset, LLMConfig(), args.lake)
    graph = open_graph(graph_path)
    if missing := sorted(set(seeds) - set(graph.splits)):
        raise SystemExit(f"{graph_path} has no split for seeds {missing} (it holds {sorted(graph.splits)})")
    xs_p = read_feature(materialize_prediction_feature(graph_path, responses, 5, args.lake), graph.num_nodes)
    # per-seed features: frozen TA and E are shared by every seed, fine-tuned ones are not
    if args.lm == "frozen":
        shared = {f: read_feature(materialize_text_feature(graph_path, responses if f == "E" else None, f,
                                                           LMConfig(), args.lake), graph.num_nodes)
                  for f in ("TA", "E")}
        xs_seed = {seed: shared | {"P": xs_p} for seed in seeds}
    else:
        ft = FinetuneConfig(max_length=args.finetune_max_length, epochs=args.finetune_epochs,
                            trainable_layers=args.finetune_trainable_layers)
        xs_seed = {}
        with lake.lookup_only("select_gnn_defaults reads fine-tuned features, it does not train them"):
            for seed in seeds:
                xs_seed[seed] = {"P": xs_p} | {
                    f: read_feature(materialize_finetuned_feature(graph_path, responses, f, seed, ft, args.lake),
                                    graph.num_nodes)
                    for f in ("TA", "E")
                }
    y, ei = torch.from_numpy(graph.labels), torch.from_numpy(graph.edge_index)

    # A small grid around the usual choices, plus TAPE's own defaults (4 layers, hidden 128,
    # dropout 0, no weight decay) for reference.
    grid = [
        GNNConfig(num_layers=L, hidden=h, dropout=d, weight_decay=wd, epochs=args.epochs, patience=args.patience)
        for L, h, d, wd in [
            *itertools.product(args.layers, args.hiddens, args.dropouts, args.weight_decays),
            *([] if args.no_tape_reference else [(4, 128, 0.0, 0.0)]),
        ]
    ]
    results = []
    for cfg in grid:
        start = time.perf_counter()
        val, test = {}, {}
        for model in models:
            vs, ts = [], []
            for seed in seeds:
                split = graph.splits[seed]
                logits = [
                    train_node_classifier(
                        model, xs_seed[seed][f], ei, y, split, cfg, seed=seed, num_classes=graph.num_classes,
                        topk=xs_p.shape[1] if f == "P" else None,
                    ).logits
                    for f in ("TA", "E", "P")
                ]
                h = ensemble_logits(logits)
                vs.append(accuracy(h, y, torch.from_numpy(split.val)))
                ts.append(accuracy(h, y, torch.from_numpy(split.test)))
            val[model], test[model] = sum(vs) / len(vs), sum(ts) / len(ts)
        mean_val = sum(val.values()) / len(val)
        row = {"num_layers": cfg.num_layers, "hidden": cfg.hidden, "dropout": cfg.dropout, "weight_decay": cfg.weight_decay,
               "mean_val": round(mean_val, 4), **{f"val_{m}": round(v, 4) for m, v in val.items()},
               **{f"test_{m}": round(v, 4) for m, v in test.items()}, "seconds": round(time.perf_counter() - start, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
    best = max(results, key=lambda r: r["mean_val"])
    print(f"best shared configuration (mean validation accuracy of h_TAPE over {', '.join(models)}):")
    print(json.dumps(best))
    per_model = {}
    for model in models:
        row = max(results, key=lambda r: r[f"val_{model}"])  # first of equals: grid order
        per_model[model] = {k: row[k] for k in ("num_layers", "hidden", "dropout", "weight_decay")} | {
            "val": row[f"val_{model}"], "test": row[f"test_{model}"]}
    print("best configuration per model (its own validation accuracy of h_TAPE):")
    print(json.dumps(per_model))


if __name__ == "__main__":
    main()
