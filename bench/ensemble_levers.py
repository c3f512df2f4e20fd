"""Cheap accuracy levers on h_TAPE, measured on a real run's logits (issue 6, item 4).

For MLP, GCN and SAGE and every seed of the newest report in the lake that covers them all
(TA, E and P), it compares, on the same trained models:

- each single feature (TA, E, P);
- h_TAPE as TAPE does it: the mean of the logits; and the mean of the softmax probabilities;
- ensemble weights chosen on validation accuracy (grid step 0.1 on the simplex; logits, probs);
- Correct & Smooth (Huang et al., ICLR 2021; PyG) on the probs average, and on the ensemble of
  the four above with the best validation accuracy; C&S hyper-parameters chosen on validation,
  training labels only as known labels.

Every choice uses validation labels only; test accuracy is reported, never used. Nothing is
trained or cached: it only reads the logits of the training artifacts.

    python bench/ensemble_levers.py [--lake data/lake] [--dataset cora] [--threads 1] \
        [--lm frozen|finetuned] [--models mlp gcn sage revgat]

Prints a table (mean ± sample std over seeds; Δ = paired test difference vs TAPE's logits
average) and, as the last line, one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tag_pipeline import lake
from tag_pipeline.datasets import graph_content_key, open_graph, read_splits
from levers import correct_and_smooth, fit_ensemble_weights, tune_correct_and_smooth, weighted_ensemble
from tag_pipeline.ensemble import ensemble_logits
from tag_pipeline.report import MODEL_TITLES
from tag_pipeline.train import accuracy, read_logits

MODELS = ("mlp", "gcn", "sage")
FEATURES = ("TA", "E", "P")
SEEDS = (0, 1, 2, 3)
ENSEMBLES = ("TAPE_logits_avg", "probs_avg", "val_weights_logits", "val_weights_probs")
METHODS = (*FEATURES, *ENSEMBLES, "cs_probs_avg", "cs_best_val_ensemble")
LABELS = {
    "TA": "h_TA", "E": "h_E", "P": "h_P",
    "TAPE_logits_avg": "h_TAPE: logits avg (TAPE)", "probs_avg": "h_TAPE: probs avg",
    "val_weights_logits": "val-weighted logits", "val_weights_probs": "val-weighted probs",
    "cs_probs_avg": "C&S on probs avg", "cs_best_val_ensemble": "C&S on best-val ensemble",
}


def newest_covering_report(
    lake_root: Path, dataset: str, models: tuple[str, ...] = MODELS, suffix: str = ""
) -> tuple[Path, dict[str, str]]:
    """The most recent report artifact whose ``inputs`` cover models x FEATURES x SEEDS
    (``suffix`` ``"-ft"``: the runs on fine-tuned LM features)."""
    needed = {f"{m}-{f}-s{s}{suffix}" for m in models for f in FEATURES for s in SEEDS}
    reports = []
    for mpath in (lake_root / dataset / "report").glob("*/manifest.json"):
        manifest = json.loads(mpath.read_text())
        created = manifest.get("created_unix", manifest.get("created", 0.0))
        if needed <= set(manifest.get("inputs") or {}):
            reports.append((float(created), mpath.parent, manifest["inputs"]))
    if not reports:
        raise SystemExit(f"no report under {lake_root / dataset / 'report'} covers {sorted(needed)}")
    _, path, inputs = max(reports, key=lambda r: r[0])
    return path, inputs


def resolve(lake_root: Path, dataset: str, stage: str, recorded: str) -> Path:
    """An artifact path recorded in a manifest, found under ``lake_root`` by its key."""
    path = Path(recorded)
    return path if path.is_absolute() and path.exists() else lake_root / dataset / stage / path.name


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value), as the pipeline's report does."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def evaluate_seed(outs: dict[str, torch.Tensor], y: torch.Tensor, split, edge_index: torch.Tensor) -> dict:
    """Scores of every method for one (model, seed), and the choices made on validation."""
    train, val, test = (torch.from_numpy(split.part(p)) for p in ("train", "val", "test"))
    n = y.shape[0]
    members = [outs[f] for f in FEATURES]
    scores: dict[str, torch.Tensor] = {f: outs[f] for f in FEATURES}
    scores["TAPE_logits_avg"] = ensemble_logits(members, "logits")
    scores["probs_avg"] = ensemble_logits(members, "probs")
    w_logits = fit_ensemble_weights(members, y, val, mode="logits")
    w_probs = fit_ensemble_weights(members, y, val, mode="probs")
    scores["val_weights_logits"] = weighted_ensemble(members, w_logits, mode="logits")
    scores["val_weights_probs"] = weighted_ensemble(members, w_probs, mode="probs")

    # the ensemble with the best validation accuracy (ties: the earliest in ENSEMBLES)
    val_hits = {e: int((scores[e][val].argmax(-1) == y[val]).sum()) for e in ENSEMBLES}
    best_ens = max(ENSEMBLES, key=lambda e: (val_hits[e], -ENSEMBLES.index(e)))
    best_probs = scores[best_ens] if "probs" in best_ens else scores[best_ens].softmax(-1)

    choices = {"weights_logits": list(w_logits), "weights_probs": list(w_probs), "best_val_ensemble": best_ens}
    for name, probs in (("cs_probs_avg", scores["probs_avg"]), ("cs_best_val_ensemble", best_probs)):
        params, cs_val = tune_correct_and_smooth(probs, y, train, val, edge_index, n)
        scores[name] = correct_and_smooth(probs, y, train, edge_index, n, **params)
        choices[name] = dict(params, val_acc=cs_val)
    accs = {m: {"val": accuracy(scores[m], y, val), "test": accuracy(scores[m], y, test)} for m in METHODS}
    return {"acc": accs, "choices": choices}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=Path("data/lake"))
    parser.add_argument("--dataset", default="cora")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: small sparse ops on busy cores)")
    parser.add_argument("--lm", choices=["frozen", "finetuned"], default="frozen",
                        help="the runs on frozen or on fine-tuned LM features (TA, E)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    models = tuple(args.models)
    suffix = "-ft" if args.lm == "finetuned" else ""
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    report_path, inputs = newest_covering_report(args.lake, args.dataset, models, suffix)
    runs = {
        (m, f, s): resolve(args.lake, args.dataset, "train", inputs[f"{m}-{f}-s{s}{suffix}"])
        for m in models for f in FEATURES for s in SEEDS
    }
    # A training run is reused by any seed set whose graph has the same content and the same
    # split for its seed, so the runs may name different graph artifacts: they must agree on
    # content, and the graph read here must hold every seed's split.
    graphs = {
        resolve(args.lake, args.dataset, "graph", lake.read_artifact(p).manifest["inputs"]["graph"])
        for p in runs.values()  # read_artifact verifies the files
    }
    contents = {graph_content_key(g) for g in graphs}
    if len(contents) != 1:
        raise SystemExit(f"training runs use graphs of different content: {sorted(map(str, graphs))}")
    graph_path = next((g for g in sorted(graphs) if set(SEEDS) <= set(read_splits(g))), None)
    if graph_path is None:
        raise SystemExit(f"no graph artifact of these runs holds the splits of seeds {list(SEEDS)}")
    graph = open_graph(graph_path)
    y = torch.from_numpy(graph.labels).long()
    edge_index = torch.from_numpy(graph.edge_index).long()

    per_seed: dict[str, dict[int, dict]] = {m: {} for m in models}
    for m in models:
        for s in SEEDS:
            outs = {f: read_logits(runs[(m, f, s)]) for f in FEATURES}
            per_seed[m][s] = evaluate_seed(outs, y, graph.splits[s], edge_index)
    seconds = time.perf_counter() - t0

    results: dict[str, dict[str, dict]] = {}
    for m in models:
        results[m] = {}
        tape = [per_seed[m][s]["acc"]["TAPE_logits_avg"]["test"] for s in SEEDS]
        for meth in METHODS:
            val = [per_seed[m][s]["acc"][meth]["val"] for s in SEEDS]
            test = [per_seed[m][s]["acc"][meth]["test"] for s in SEEDS]
            delta = [t - b for t, b in zip(test, tape)]
            (vm, vs), (tm, ts), (dm, ds) = mean_std(val), mean_std(test), mean_std(delta)
            results[m][meth] = {
                "val_mean": vm, "val_std": vs, "test_mean": tm, "test_std": ts,
                "delta_test_vs_tape_mean": dm, "delta_test_vs_tape_std": ds,
                "val": val, "test": test,
                "test_wins_ties_losses_vs_tape": [sum(d > 1e-9 for d in delta), sum(abs(d) <= 1e-9 for d in delta),
                                                  sum(d < -1e-9 for d in delta)],
            }

    n_test = len(graph.splits[SEEDS[0]].test)
    print(f"# Ensemble levers on {args.dataset}: report {report_path}, graph {graph_path}")
    print(f"# seeds {list(SEEDS)}; mean ± sample std over seeds; Δtest = paired test difference vs TAPE's "
          f"logits average; W/T/L = seeds better/equal/worse on test. 1 test node = {1 / n_test:.4f}.")
    print("# val of val-weighted and C&S rows is the selection score itself (optimistic).")
    header = f"| {'model':6} | {'method':26} | {'val':15} | {'test':15} | {'Δtest vs TAPE':17} | W/T/L |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for m in models:
        for meth in METHODS:
            r = results[m][meth]
            wtl = "/".join(map(str, r["test_wins_ties_losses_vs_tape"]))
            print(f"| {MODEL_TITLES.get(m, m.upper()):6} | {LABELS[meth]:26} | {r['val_mean']:.4f} ± {r['val_std']:.4f} | "
                  f"{r['test_mean']:.4f} ± {r['test_std']:.4f} | {r['delta_test_vs_tape_mean']:+.4f} ± "
                  f"{r['delta_test_vs_tape_std']:.4f} | {wtl:5} |")
    print()
    print("# choices made on validation (weights in the order TA, E, P)")
    for m in models:
        for s in SEEDS:
            c = per_seed[m][s]["choices"]
            cs = {k: c[k] for k in ("cs_probs_avg", "cs_best_val_ensemble")}
            fmt = {k: (f"L={v['num_correction_layers']} a1={v['correction_alpha']} a2={v['smoothing_alpha']} "
                       f"{'auto' if v['autoscale'] else 'scale=' + str(v['scale'])}") for k, v in cs.items()}
            print(f"{MODEL_TITLES.get(m, m.upper()):6} s{s}: w_logits={c['weights_logits']} w_probs={c['weights_probs']} "
                  f"best-val ensemble={c['best_val_ensemble']}; C&S(probs avg): {fmt['cs_probs_avg']}; "
                  f"C&S(best): {fmt['cs_best_val_ensemble']}")
    print(f"# {seconds:.1f} s")
    print(json.dumps({
        "bench": "ensemble_levers", "dataset": args.dataset, "lm": args.lm, "report": str(report_path), "graph": str(graph_path),
        "seeds": list(SEEDS), "std": "sample (ddof=1) over seeds", "results": results,
        "choices": {m: {str(s): per_seed[m][s]["choices"] for s in SEEDS} for m in models},
        "seconds": round(seconds, 2),
    }))


if __name__ == "__main__":
    main()
