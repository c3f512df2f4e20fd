"""One table for several methods on one dataset and the same splits (the ``compare`` flow).

Each method's run summaries (:class:`~tag_pipeline.methods.base.RunSummary`) become rows of
accuracy mean ± std over seeds, beside the method's wall time in this comparison, the LLM
tokens behind its features and its inference time per node, measured here, one run after
another in one process, so the figures are comparable; published figures are listed beside
(LLMNodeBed and GLBench compare methods the same way: same splits, one table).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from tag_pipeline import lake
from tag_pipeline.methods import method_spec
from tag_pipeline.report import mean_std_cell

LEADERBOARD_STAGE_VERSION = 1
#: The comparison's artifact (lake folder and manifest stage ``compare``).
LEADERBOARD_STAGE = lake.Stage(
    "compare", LEADERBOARD_STAGE_VERSION,
    code=("tag_pipeline.leaderboard", "tag_pipeline.report", "tag_pipeline.inference", "tag_pipeline.methods.gallon"),
)
LEADERBOARD_FILE = "leaderboard.parquet"
LEADERBOARD_MD = "leaderboard.md"

#: Artifact stages whose inference the leaderboard times itself (tag_pipeline.inference).
TIMED_STAGES = frozenset({"train", "ensemble", "gallon"})

#: Published test accuracy on TAPE's 60/20/20 random splits: (source, method, model, accuracy).
PUBLISHED: dict[str, list[tuple[str, str, str, float]]] = {
    "cora": [
        ("TAPE, He et al. 2024, Table 2 (DeBERTa-base fine-tuned)", "TAPE h_TAPE", "GCN", 0.9119),
        ("TAPE, He et al. 2024, Table 2 (DeBERTa-base fine-tuned)", "TAPE h_TAPE", "SAGE", 0.9290),
        ("TAPE, He et al. 2024, Table 2 (DeBERTa-base fine-tuned)", "TAPE h_TAPE", "MLP", 0.8778),
        ("LLMNodeBed (Wu et al. 2025), Cora 60/20/20", "GCN on LLM embeddings", "GCN", 0.8815),
        ("LLMNodeBed (Wu et al. 2025), Cora 60/20/20", "SAGE on LLM embeddings", "SAGE", 0.8744),
        ("LLMNodeBed (Wu et al. 2025), Cora 60/20/20", "TAPE", "GCN", 0.8805),
        ("LLMNodeBed (Wu et al. 2025), Cora 60/20/20", "GLEM", "–", 0.8681),
        ("Dr.E, Liu et al. 2025 (Llama-2-7B)", "Dr.E", "LLM", 0.9132),
    ],
}


def llm_tokens(responses: str | Path | None) -> int | None:
    """Prompt + completion tokens of a responses artifact (the usage the backend reported;
    ``None`` when there are no responses or no usage was recorded)."""
    if not responses:
        return None
    df = pl.read_parquet(Path(responses) / "responses.parquet")
    cols = [c for c in ("prompt_tokens", "completion_tokens") if c in df.columns]
    if not cols:
        return None
    total = df.select(pl.sum_horizontal(*cols).sum()).item()
    return int(total) if total is not None else None


def headline_runs(result: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(variant, run)`` for each of one method's runs that the leaderboard shows: the
    method's own (a run without ``method`` counts as the method's) and, where the method's spec
    lists ``headline_variants`` (:class:`tag_pipeline.methods.MethodSpec`), of those variants only."""
    method = result["method"]
    spec = method_spec(method)
    wanted = spec.headline_variants if spec else ()
    for r in result["runs"]:
        variant = r.get("variant", r.get("feature"))
        if r.get("method", method) == method and (not wanted or variant in wanted):
            yield variant, r


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def leaderboard_frame(
    results: Sequence[Mapping[str, Any]],
    infer_ms: Mapping[str, float] | None = None,
) -> pl.DataFrame:
    """The leaderboard: one row per (method, model, variant) among the headline variants.

    Args:
        results: per method, ``{"method": name, "wall_s": seconds of its flow run here,
            "llm_tokens": int | None, "runs": [run summary dicts]}``.
        infer_ms: ``{artifact path: inference ms per node}`` measured side by side (preferred to
            a figure a summary carries from when its run was made).

    Returns:
        columns ``method``, ``model``, ``variant`` utf8; ``seeds`` int64; ``test_mean``,
        ``test_std``, ``val_mean`` float64 (accuracy in [0, 1]); ``wall_s`` float64 (seconds,
        the method's whole flow run in this comparison); ``llm_tokens`` int64 (null: none used
        or not recorded); ``infer_ms_per_node`` float64 (median over seeds), sorted by
        ``test_mean`` descending.
    """
    infer_ms = infer_ms or {}
    rows = []
    for res in results:
        method = res["method"]
        groups: dict[tuple[str, str], list[Mapping]] = {}
        for variant, r in headline_runs(res):
            groups.setdefault((r["model"], variant), []).append(r)
        for (model, variant), runs in groups.items():
            test_mean, test_std = _mean_std([float(r["test_acc"]) for r in runs])
            ms = [infer_ms.get(str(r["path"]), r.get("infer_ms_per_node")) for r in runs]
            ms = [m for m in ms if m is not None]
            rows.append({
                "method": method, "model": model, "variant": variant, "seeds": len(runs),
                "test_mean": test_mean, "test_std": test_std,
                "val_mean": statistics.mean(float(r["val_acc"]) for r in runs),
                "wall_s": float(res["wall_s"]), "llm_tokens": res.get("llm_tokens"),
                "infer_ms_per_node": statistics.median(ms) if ms else None,
            })
    schema = {"method": pl.Utf8, "model": pl.Utf8, "variant": pl.Utf8, "seeds": pl.Int64, "test_mean": pl.Float64,
              "test_std": pl.Float64, "val_mean": pl.Float64, "wall_s": pl.Float64, "llm_tokens": pl.Int64,
              "infer_ms_per_node": pl.Float64}
    return pl.DataFrame(rows, schema=schema).sort("test_mean", descending=True, maintain_order=True)


def render_leaderboard(dataset: str, board: pl.DataFrame, seeds: Sequence[int], split_label: str | None = None) -> str:
    """Markdown: the leaderboard table, then the published figures on the same kind of split
    (left out when ``split_label`` names a split other than the dataset's standard one)."""
    split = split_label or "the dataset's standard split: TAPE's 60/20/20 random split per seed, OGB's time split for ogbn-arxiv"
    out = [
        f"# Leaderboard on {dataset}" + (f" ({split_label})" if split_label else "") + ": node classification", "",
        f"Test accuracy, mean ± std over seeds {list(seeds)}, every method on the same splits ({split}); "
        "every choice on validation. Wall time: the method's "
        "whole flow run in this comparison (stages found in the lake cost ~0). LLM tokens: prompt + "
        "completion tokens of the answers its features were built from. Inference: one full-batch "
        "forward pass per node, features in memory, measured side by side in one process.", "",
        "| method | model | predictor | test | val | wall s | LLM tokens | inference ms/node |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in board.iter_rows(named=True):
        tokens = f"{r['llm_tokens']:,}" if r["llm_tokens"] is not None else "–"
        ms = f"{r['infer_ms_per_node']:.5f}" if r["infer_ms_per_node"] is not None else "–"
        acc = mean_std_cell(r["test_mean"], r["test_std"], r["seeds"])
        out.append(f"| {r['method']} | {r['model']} | {r['variant']} | {acc} | {r['val_mean']:.4f} | "
                   f"{r['wall_s']:.1f} | {tokens} | {ms} |")
    published = PUBLISHED.get(dataset, []) if split_label is None else []
    if published:
        out += ["", "Published (other encoders and LLMs; for scale, not a like-for-like comparison):", "",
                "| source | method | model | test |", "|---|---|---|---|"]
        out += [f"| {s} | {m} | {model} | {acc:.4f} |" for s, m, model, acc in published]
    return "\n".join(out) + "\n"


def materialize_leaderboard(
    dataset: str,
    graph_path: str | Path,
    results: Sequence[Mapping[str, Any]],
    seeds: Sequence[int],
    lake_root: str | Path,
    timing_repeats: int = 20,
    split_label: str | None = None,
) -> tuple[Path, str, pl.DataFrame]:
    """Measure every headline run's inference time here, one after another on one thread,
    then build and write the leaderboard.

    Writes ``<lake>/<dataset>/compare/<key>`` (``leaderboard.parquet``, ``leaderboard.md``);
    the key hashes the runs' artifact paths and the wall times, so every comparison run is
    kept (wall times differ), never overwritten.

    Returns:
        (artifact directory, markdown, :func:`leaderboard_frame`).
    """
    from tag_pipeline.datasets import open_graph
    from tag_pipeline.hardware import torch_threads
    from tag_pipeline.inference import run_forward_ms_per_node
    from tag_pipeline.methods.gallon.stage import student_forward_ms_per_node

    timers = {"gallon": student_forward_ms_per_node}  # a method's own artifacts: the method times them

    graph = open_graph(Path(graph_path))
    infer_ms: dict[str, float] = {}
    with torch_threads(1):  # GALLON times its student and teachers on one thread too
        for res in results:
            for _, r in headline_runs(res):
                path = str(r["path"])
                if path not in infer_ms:
                    stage = lake.read_artifact(path, verify=False).manifest.get("stage")
                    if stage in TIMED_STAGES:  # others (glem, leading): the figure they carry, if any
                        infer_ms[path] = run_forward_ms_per_node(path, graph, timing_repeats, timers=timers)
    board = leaderboard_frame(results, infer_ms)
    markdown = render_leaderboard(dataset, board, seeds, split_label)
    key = LEADERBOARD_STAGE.key(
        sorted(str(r["path"]) for res in results for r in res["runs"]), [round(float(res["wall_s"]), 3) for res in results],
    )
    path = LEADERBOARD_STAGE.path(lake_root, dataset, key)

    def write(tmp: Path) -> None:
        board.write_parquet(tmp / LEADERBOARD_FILE)
        (tmp / LEADERBOARD_MD).write_text(markdown)

    def build() -> lake.Built:
        # every run behind the table is an input: its lineage, and what `tag lake gc` keeps
        runs = {f"{res['method']}:{r['model']}-{r.get('variant', r.get('feature'))}-s{r['seed']}-{r.get('lm', 'frozen')}":
                str(r["path"]) for res in results for r in res["runs"]}
        return lake.Built(write=write, config={"methods": [r["method"] for r in results]},
                          inputs={"graph": str(graph_path), **runs}, rows=board.height)

    return LEADERBOARD_STAGE.materialize(path, build, read=lambda p: (p, markdown, board))
