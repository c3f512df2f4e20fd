"""TAPE's LLM stage with a small local model (llama.cpp server, CPU): throughput and zero-shot accuracy.

Whole graph (default): the answers are committed to the lake through the LLM stage
(:func:`tag_pipeline.llm.stage.materialize_responses`, ``llm.backend: local``), with the model
file's digest, the server version and the prompt template in the manifest, and kept in the
answer cache, so the TAPE flow that follows reads them without asking again::

    python bench/llm_local.py --model smollm2                  # all 2,708 Cora nodes
    tag --config configs/cora.yaml --llm.backend local --llm.local.model smollm2   # TAPE's table

``--nodes N`` asks about the first N nodes only (answers go to the cache, nothing to the lake),
e.g. to measure a model whose full run does not fit the budget, or throughput on a fresh
cache (``--cache-dir``). One JSON line: CPU model and flags, servers and threads, answers/s,
completion tokens/s, parse rate (answers valid after at most one re-ask), re-asks, failures,
and the zero-shot top-1 accuracy against the labels (TAPE's recorded GPT-3.5 answers: 0.6769).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tag_pipeline.config import DatasetConfig, LLMConfig
from tag_pipeline.hardware import cpu_info
from tag_pipeline.llm.config import LocalLLMConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="'smollm2', 'gemma3-270m' or a .gguf path")
    parser.add_argument("--nodes", type=int, default=None, help="first N nodes only (cache, no lake)")
    parser.add_argument("--lake", type=Path, default=Path("data/lake"))
    parser.add_argument("--root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache-dir", type=Path, default=None, help="answer cache (default: the config's)")
    parser.add_argument("--servers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--template", default=None, help="prompt template version (default: the config's)")
    parser.add_argument("--explanation-max-chars", type=int, default=None)
    args = parser.parse_args()

    fields = {"model": args.model, "servers": args.servers, "threads": args.threads}
    if args.cache_dir is not None:
        fields["cache_dir"] = args.cache_dir
    if args.template is not None:
        fields["template_version"] = args.template
    if args.explanation_max_chars is not None:
        fields["explanation_max_chars"] = args.explanation_max_chars
    local = LocalLLMConfig(**fields)
    llm = LLMConfig(backend="local", local=local)
    dataset = DatasetConfig(root=args.root)
    out: dict = {"cpu": cpu_info().as_dict(), "model": args.model, "config": local.model_dump(mode="json")}
    t0 = time.monotonic()
    if args.nodes is None:
        from tag_pipeline.datasets import materialize_graph, open_graph
        from tag_pipeline.lake import read_artifact
        from tag_pipeline.llm.stage import materialize_responses

        graph_path = materialize_graph(dataset, [0, 1, 2, 3], args.lake)  # configs/cora.yaml's graph
        path = materialize_responses(graph_path, dataset, llm, args.lake)
        manifest = read_artifact(path, verify=False).manifest
        stats = manifest["stats"]
        backend = stats["backend"]
        n = int(manifest["rows"])
        out |= {"lake": str(path), "nodes": n, "zero_shot_top1": stats["llm_top1_accuracy"], "failed": stats["n_failed"]}
        labels = open_graph(graph_path).labels
    else:
        import polars as pl

        from tag_pipeline.datasets import load_dataset
        from tag_pipeline.llm.local import answer_nodes_local

        graph = load_dataset(dataset, [0])
        n = min(args.nodes, graph.num_nodes)
        df, backend = answer_nodes_local(list(enumerate(graph.text[:n])), graph.name, graph.class_names, local)
        labels = graph.labels[:n]
        top1 = [r[0] if len(r) else -1 for r in df["ranked_labels"].to_list()]
        out |= {"nodes": n, "zero_shot_top1": round(sum(int(a == b) for a, b in zip(top1, labels.tolist())) / n, 4),
                "failed": int(df.filter(pl.col("status") == "failed").height)}
    asked = backend.get("asked") or 0
    out |= {
        "asked": asked,
        "answers_per_s": backend.get("answers_per_s"),
        "completion_tokens_per_s": backend.get("completion_tokens_per_s"),
        "parse_rate": round(1 - out["failed"] / n, 4) if n else None,
        "reasks": backend.get("reasks"),
        "calls": backend.get("calls"),
        "prompt_tokens": backend.get("prompt_tokens"),
        "completion_tokens": backend.get("completion_tokens"),
        "server": backend.get("server"),
        "llm_wall_s": backend.get("wall_s"),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
