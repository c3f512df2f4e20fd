"""Full-batch GNN training at ogbn-arxiv scale on CPU: seconds per epoch and peak memory.

    python bench/arxiv_train.py                      # GCN, SAGE (edge_index and CSR), MLP
    python bench/arxiv_train.py --epochs 3 --variants gcn:edge_index
    python bench/arxiv_train.py --epochs 3 --variants revgat:edge_index,revgat-stored:edge_index

The real ogbn-arxiv graph (169,343 nodes, 1,166,243 edges, 2,315,598 after symmetrising)
from ``../shared/data``, official split. The input is a ``[N, 384]`` float32 matrix, the
shape of the TA/E features of all-MiniLM-L6-v2 (random here: the cost does not depend on the
values; ogbn-arxiv ships no text, and its E features take an hour to embed on 2 cores).

Each variant runs in a fresh child process, so its peak RSS (``ru_maxrss``) is its own:
graph + features + model + one epoch's activations. An epoch is what
:func:`tag_pipeline.train.train_node_classifier` does per epoch: a training forward and
backward pass, an Adam step, and an evaluation forward pass over all nodes. Ratios are of
variants measured in this one run. The last line is one JSON object.

Optional variants (not in the default run): ``revgat`` (3 layers: 2 reversible blocks of
2 groups x 2 GAT heads) and ``revgat-stored``, the same model with ``GroupAddRev``'s
reversibility switched off (activations stored as plain autograd does), to measure what
reversibility saves. Measured (``--epochs 2``, 2 threads, idle machine): RevGAT 24.1 s per
epoch at 5156 MB peak RSS, stored activations 21.8 s at 6620 MB (0.78x the memory, 1.1x the
time).
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

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

VARIANTS = ("gcn:edge_index", "gcn:csr", "sage:edge_index", "sage:csr", "mlp:none")
OPTIONAL_VARIANTS = ("revgat:edge_index", "revgat-stored:edge_index")


def _child(args) -> dict:
    import torch
    import torch.nn.functional as F

    from tag_pipeline.config import DatasetConfig, GNNConfig
    from tag_pipeline.datasets import load_dataset
    from tag_pipeline.models import build_model, graph_operator

    torch.set_num_threads(args.threads)
    model_name, adjacency = args.variant.split(":")
    stored = model_name == "revgat-stored"
    model_name = "revgat" if stored else model_name
    t0 = time.perf_counter()
    graph = load_dataset(DatasetConfig(name="ogbn-arxiv", root=args.root), [0])
    load_s = time.perf_counter() - t0
    n = graph.num_nodes
    y = torch.from_numpy(graph.labels)
    split = graph.splits[0]
    train_idx = torch.from_numpy(split.train)
    edge_index = torch.from_numpy(graph.edge_index)
    adjacency = "edge_index" if adjacency == "none" else adjacency
    adj = graph_operator(model_name, edge_index, n, adjacency)  # what GNNConfig.adjacency selects
    x = torch.randn(n, 384, generator=torch.Generator().manual_seed(0))
    cfg = GNNConfig()
    torch.manual_seed(0)
    model = build_model(
        model_name, 384, graph.num_classes, hidden=cfg.hidden, num_layers=cfg.layers_for(model_name),
        dropout=cfg.dropout, adjacency=adjacency,
    )
    if stored:
        from torch_geometric.nn import GroupAddRev

        for module in model.modules():
            if isinstance(module, GroupAddRev):
                module.disable = True
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    times = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(x, adj)[train_idx], y[train_idx])
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            model(x, adj)
        times.append(time.perf_counter() - start)
    steady = sorted(times[1:] or times)  # the first epoch builds caches (GCN normalisation)
    return {
        "variant": args.variant, "nodes": n, "edges": int(edge_index.shape[1]), "threads": args.threads,
        "load_s": round(load_s, 2), "first_epoch_s": round(times[0], 3),
        "s_per_epoch": round(steady[len(steady) // 2], 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(PROJECT_ROOT.parent / "shared" / "data"))
    ap.add_argument("--epochs", type=int, default=5, help="epochs per variant (median of all but the first)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {VARIANTS + OPTIONAL_VARIANTS}")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(_child(args)))
        return
    results = {}
    for variant in args.variants.split(","):
        out = subprocess.run(
            [sys.executable, __file__, "--variant", variant, "--root", args.root, "--epochs", str(args.epochs),
             "--threads", str(args.threads)],
            capture_output=True, text=True, check=False,
        )
        if out.returncode != 0:
            print(f"{variant}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"ogbn-arxiv full batch, [N, 384] input, hidden 128, {args.threads} threads, {args.epochs} epochs each")
    print(f"{'variant':<26}{'s/epoch':>9}{'1st epoch s':>13}{'peak RSS MB':>13}")
    for v, r in results.items():
        print(f"{v:<26}{r['s_per_epoch']:>9.3f}{r['first_epoch_s']:>13.3f}{r['peak_rss_mb']:>13.0f}")
    summary = {v.replace(":", "_").replace("-", "_"): {k: r[k] for k in ("s_per_epoch", "peak_rss_mb")}
               for v, r in results.items()}
    if "revgat:edge_index" in results and "revgat-stored:edge_index" in results:
        rev, plain = results["revgat:edge_index"], results["revgat-stored:edge_index"]
        summary["revgat_reversible_vs_stored"] = {
            "rss_ratio": round(rev["peak_rss_mb"] / plain["peak_rss_mb"], 2),
            "time_ratio": round(rev["s_per_epoch"] / plain["s_per_epoch"], 2),
        }
        print(f"RevGAT reversible vs stored activations: {summary['revgat_reversible_vs_stored']['rss_ratio']}x "
              f"the peak RSS, {summary['revgat_reversible_vs_stored']['time_ratio']}x the time per epoch")
    for model in ("gcn", "sage"):
        if f"{model}:edge_index" in results and f"{model}:csr" in results:
            a, b = results[f"{model}:edge_index"], results[f"{model}:csr"]
            ratio = {
                "speedup": round(a["s_per_epoch"] / b["s_per_epoch"], 2),
                "rss_ratio": round(b["peak_rss_mb"] / a["peak_rss_mb"], 2),
            }
            summary[f"{model}_csr_vs_edge_index"] = ratio
            print(f"{model.upper()} CSR vs edge_index: {ratio['speedup']}x faster per epoch, "
                  f"{ratio['rss_ratio']}x the peak RSS")
    gcn = results.get("gcn:edge_index")
    print(json.dumps({
        "gcn_peak_rss_mb": gcn and gcn["peak_rss_mb"], "gcn_s_per_epoch": gcn and gcn["s_per_epoch"],
        "threads": args.threads, "epochs": args.epochs, **summary,
    }))


if __name__ == "__main__":
    main()
