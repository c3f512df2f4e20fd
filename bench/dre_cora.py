"""Dr.E on Cora (60/20/20, seed 0) through the tag flow: accuracy, the zero-shot baseline, cost.

    python bench/dre_cora.py                                   # full Cora, the method's defaults
    python bench/dre_cora.py --subset 120 --epochs 1           # a smoke run on the first 120 nodes
    python bench/dre_cora.py --decoder /models/Llama-2-7b-hf --epochs 20   # the paper's decoder (GPU machine)

It prints the CPU model and flags first (a figure from one machine is not a figure for
another), then Dr.E's, the zero-shot baseline's and the frozen-TA GCN's validation and test accuracy, the wall time
of each training epoch, of scoring and of the zero-shot pass (from the run's lake manifest), the
flow's wall time and this process's peak RSS (the tag flow runs its tasks in this process), and
a few nodes' chosen words (``tokens.parquet``). A rerun with the same arguments is a lake hit:
delete ``<lake>/cora/dre`` to measure again. The paper reports 0.9132 test accuracy on Cora
with Llama-2-7B (20 epochs); the default decoder here is SmolLM2-135M-Instruct on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="../shared/data", help="the shared datasets folder")
    p.add_argument("--lake", default="data/lake", help="lake root")
    p.add_argument("--subset", type=int, default=None, help="first N Cora nodes (default: all 2,708)")
    p.add_argument("--decoder", default="smollm2", help="'smollm2', a .gguf file or a local model folder")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="steps per epoch (default: all train nodes)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--views", type=int, default=3)
    p.add_argument("--codes-per-view", type=int, default=3)
    p.add_argument("--continuous", action="store_true", help="the ablation: no quantisation")
    p.add_argument("--commitment", choices=["euclidean", "cosine"], default="euclidean",
                   help="commitment loss: VQ-VAE's MSE (default) or 1 - cosine (the lever)")
    p.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot baseline")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the Dr.E stage")
    args = p.parse_args()

    from tag_pipeline.config import DatasetConfig
    from tag_pipeline.hardware import cpu_info
    from tag_pipeline.methods.dre.config import DreMethod

    cpu = cpu_info()
    print(f"CPU: {cpu.model}; flags: {', '.join(cpu.as_dict()['flags']) or 'none known'} ({cpu.source}); "
          f"{os.cpu_count()} logical CPUs")
    method = DreMethod(decoder=args.decoder, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                       views=args.views, codes_per_view=args.codes_per_view, quantise=not args.continuous,
                       commitment=args.commitment,
                       zero_shot=not args.no_zero_shot, threads=args.threads)
    print("method:", json.dumps(method.model_dump(mode="json")))

    from flows.tag import tag

    start = time.perf_counter()
    out = tag(dataset=DatasetConfig(name="cora", root=args.root, subset=args.subset), method=method, seeds=[0],
              features=["TA"], models=["gcn"], lake=args.lake)
    wall = time.perf_counter() - start
    rows = [r for r in out["runs"] if r.get("method") == "dre"]
    print()
    print("| predictor | val | test |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} ({r['model']}) | {r['val_acc']:.4f} | {r['test_acc']:.4f} |")
    for r in (r for r in out["runs"] if r.get("method") == "tape"):  # the baseline (method.gnns)
        print(f"| {r['model'].upper()} on frozen {r['feature']} (TAPE's stage) | {r['val_acc']:.4f} | {r['test_acc']:.4f} |")
    print("| Dr.E paper (Llama-2-7B) | | 0.9132 |")
    if rows:
        from tag_pipeline import lake

        art = lake.read_artifact(rows[0]["path"], verify=False)
        sec = art.manifest["seconds"]
        print()
        print(f"lake: {art.path}")
        steps = art.manifest.get("steps_per_epoch") or []
        print("epoch wall seconds:", ", ".join(f"{s:.1f}" for s in sec["epochs"]),
              f"({', '.join(map(str, steps))} steps of {method.batch_size} nodes; "
              f"{sum(sec['epochs']) / max(sum(steps), 1):.2f} s per step)")
        print(f"encode {sec['encode']:.1f} s, score val+test {sec['score']:.1f} s, "
              f"zero-shot {sec.get('zero_shot', float('nan')):.1f} s, decoder load {sec['load']:.1f} s")
        print("losses per epoch:", json.dumps(art.manifest["losses"]))
        print("codebook usage:", art.manifest["codebook_usage"])
        import polars as pl

        words = pl.read_parquet(art.path / "tokens.parquet").head(3)
        for w in words.iter_rows(named=True):
            print(f"node {w['node_id']} ({w['split']}):", " | ".join(
                f"{t}-hop: {' '.join(w[f'hop{t}'])}" for t in range(1, method.views + 1)))
    print()
    print(f"flow wall time {wall:.1f} s; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
