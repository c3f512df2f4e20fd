"""The run report: ``metrics.parquet`` and a markdown page a person reads."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from tag_pipeline import lake
from tag_pipeline.methods import MethodBase, TapeMethod, method_spec, resolve
from tag_pipeline.methods.tape.config import TAPE_PUBLISHED

REPORT_STAGE_VERSION = 3  # 2: one-seed cells without "± 0.0000"; 3: metrics.parquet gains "inputs", GALLON names the features read
#: The report's artifact: its text is laid out here and by each method's report sections.
REPORT_STAGE = lake.Stage("report", REPORT_STAGE_VERSION, code=("tag_pipeline.report", "tag_pipeline.methods"))
METRICS_FILE = "metrics.parquet"
REPORT_FILE = "report.md"
MODEL_ORDER = ("mlp", "gcn", "sage", "revgat")
#: How the report writes model names (others: upper case).
MODEL_TITLES = {"mlp": "MLP", "gcn": "GCN", "sage": "SAGE", "revgat": "RevGAT"}
FEATURE_ORDER = ("TA", "E", "P", "TAPE")



def metrics_frame(dataset: str, runs: Sequence[Mapping]) -> pl.DataFrame:
    """Long table of accuracies: one row per (model, feature, lm, seed, split).

    Args:
        dataset: dataset name.
        runs: training and ensemble summaries (``model``, ``feature``, ``seed``,
            ``val_acc``, ``test_acc``, and ``lm``: ``"frozen"`` when absent).

    Returns:
        columns ``dataset`` utf8, ``model`` utf8, ``feature`` utf8 (TA, E, P, TAPE), ``lm`` utf8
        (``frozen`` or ``finetuned``: the encoder behind TA/E; P runs carry the mode of the
        ensemble they belong to), ``seed`` int64, ``split`` utf8 (val, test), ``accuracy`` float64,
        ``method`` utf8 (``tape`` when absent), ``infer_ms_per_node`` float64 (forward time per
        node in ms where the method measured it, else null), ``inputs`` utf8 (the features a
        method's variant really read, ``"TA+E"``, where its summary lists them in ``features``,
        else null). Runs of other methods carry their variant (``student``, ``gnn-teacher`` ...)
        in ``feature``.
    """
    rows = [
        {"dataset": dataset, "model": r["model"], "feature": r.get("feature", r.get("variant")),
         "lm": r.get("lm", "frozen"), "seed": int(r["seed"]), "split": split,
         "accuracy": float(r[f"{split}_acc"]), "method": r.get("method", "tape"),
         "infer_ms_per_node": r.get("infer_ms_per_node"),
         "inputs": "+".join(r["features"]) if isinstance(r.get("features"), (list, tuple)) else None}
        for r in runs
        for split in ("val", "test")
    ]
    schema = {"dataset": pl.Utf8, "model": pl.Utf8, "feature": pl.Utf8, "lm": pl.Utf8, "seed": pl.Int64,
              "split": pl.Utf8, "accuracy": pl.Float64, "method": pl.Utf8, "infer_ms_per_node": pl.Float64,
              "inputs": pl.Utf8}
    return pl.DataFrame(rows, schema=schema).sort("model", "feature", "lm", "seed", "split")


def summary_frame(metrics: pl.DataFrame) -> pl.DataFrame:
    """Mean and (sample) standard deviation over seeds per (model, feature, split[, lm])."""
    keys = ["model", "feature", "split"] + (["lm"] if "lm" in metrics.columns else [])
    return (
        metrics.group_by(*keys)
        .agg(
            pl.col("accuracy").mean().alias("mean"),
            pl.col("accuracy").std().fill_null(0.0).alias("std"),
            pl.len().alias("seeds"),
        )
        .sort(*keys)
    )


def _ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    return [v for v in order if v in values] + sorted(v for v in values if v not in order)


def mean_std_cell(mean: float, std: float, seeds: int) -> str:
    """``"0.8824 ± 0.0109"`` over several seeds; the accuracy alone for one (a std of one run is not 0)."""
    return f"{mean:.4f} ± {std:.4f}" if seeds > 1 else f"{mean:.4f}"


def accuracy_table(metrics: pl.DataFrame, split: str, dataset: str) -> str:
    """Markdown table: models x features, ``mean ± std`` over seeds (the accuracy alone where
    a cell has one seed: a std of one run is not 0), plus TAPE's h_TAPE."""
    summary = summary_frame(metrics).filter(pl.col("split") == split)
    cell = {(r["model"], r["feature"]): mean_std_cell(r["mean"], r["std"], r["seeds"]) for r in summary.iter_rows(named=True)}
    models = _ordered(summary["model"].unique().to_list(), MODEL_ORDER)
    features = _ordered(summary["feature"].unique().to_list(), FEATURE_ORDER)
    published = TAPE_PUBLISHED.get(dataset, {})
    head = ["model", *[f"h_{f}" if f != "TAPE" else "h_TAPE" for f in features]]
    if split == "test" and published:
        head.append("TAPE paper h_TAPE")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        row = [MODEL_TITLES.get(m, m.upper()), *[cell.get((m, f), "–") for f in features]]
        if split == "test" and published:
            row.append(f"{published[m]:.4f}" if m in published else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


LM_TITLES = {
    "frozen": "frozen LM (sentence encoder as is)",
    "finetuned": "fine-tuned LM (per seed, train nodes only)",
    "leading": "LEADING LM (trained end to end through the graph, per seed)",
}


def tape_accuracy_section(dataset: str, metrics: pl.DataFrame) -> list[str]:
    """TAPE's accuracy tables (models x features, test then validation, per encoder mode)."""
    seeds = sorted(metrics["seed"].unique().to_list())
    modes = _ordered(metrics["lm"].unique().to_list(), list(LM_TITLES)) if "lm" in metrics.columns else [None]
    out = [
        f"# TAPE on {dataset}: node classification accuracy",
        "",
        (f"Test accuracy, mean ± std over seeds {seeds}" if len(seeds) > 1 else f"Test accuracy, seed {seeds[0]} only (no std)")
        + " (best epoch by validation accuracy). "
        "h_TA, h_E, h_P: one GNN per feature; h_TAPE: their ensemble."
        + (" The last column is TAPE's published h_TAPE (He et al., ICLR 2024, Table 2; fine-tuned "
           "DeBERTa-base)." if TAPE_PUBLISHED.get(dataset) else ""),
        "",
    ]
    for split, title in (("test", "Test accuracy"), ("val", "Validation accuracy (the only figure used for any choice)")):
        for mode in modes:
            part = metrics if mode is None else metrics.filter(pl.col("lm") == mode)
            label = f"{title}, {LM_TITLES.get(mode, mode)}:" if len(modes) > 1 else f"{title}:"
            out += [label, "", accuracy_table(part, split, dataset), ""]
    return out


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean_std_cell(statistics.mean(values), std, len(values))


def variant_table(method: MethodBase, dataset: str, metrics: pl.DataFrame) -> list[str]:
    """A method's accuracy section by default: one row per (model, variant) of the method,
    test and validation accuracy, mean ± std over seeds, and its published number if any."""
    part = metrics.filter(pl.col("method") == method.name) if "method" in metrics.columns else metrics
    published = method.published(dataset)
    seeds = sorted(part["seed"].unique().to_list())
    out = [f"# {method.title} on {dataset}: node classification accuracy", "",
           f"Mean ± std over seeds {seeds} (best epoch by validation accuracy). {method.reference}", "",
           "| model | variant | test | val | published |", "|---|---|---|---|---|"]
    for (model, variant), rows in sorted(part.group_by("model", "feature"), key=lambda kv: kv[0]):
        test = rows.filter(pl.col("split") == "test")["accuracy"].to_list()
        val = rows.filter(pl.col("split") == "val")["accuracy"].to_list()
        pub = published.get(model)
        out.append(f"| {MODEL_TITLES.get(model, model)} | {variant} | {_cell(test)} | {_cell(val)} | "
                   f"{f'{pub:.4f}' if pub is not None else '–'} |")
    return out + [""]


def tape_gnn_section(dataset: str, metrics: pl.DataFrame, heading: str) -> list[str]:
    """``heading`` and TAPE's tables (:func:`tape_accuracy_section`) of the TAPE runs among
    another method's ``metrics`` (the GNNs it trained beside or on top of its own stage);
    nothing when there are none."""
    tape = metrics.filter(pl.col("method") == "tape") if "method" in metrics.columns else metrics.head(0)
    if tape.is_empty():
        return []
    return [heading, ""] + tape_accuracy_section(dataset, tape)[2:]


def tape_sections(method: MethodBase, dataset: str, metrics: pl.DataFrame) -> list[str]:
    """TAPE's accuracy part of the report: :func:`tape_accuracy_section` (its registered hook)."""
    return tape_accuracy_section(dataset, metrics)


def method_sections(method: MethodBase, dataset: str, metrics: pl.DataFrame, runs: Sequence[Mapping] = ()) -> list[str]:
    """The method's part of the report: its accuracy sections (its spec's ``accuracy_sections``,
    :class:`tag_pipeline.methods.MethodSpec`, else :func:`variant_table`), then its run sections
    (the spec's ``run_sections``, else none).

    Args:
        method: the run's method config.
        dataset: the dataset's name as the titles show it.
        metrics: :func:`metrics_frame` of this run's summaries.
        runs: those summaries (their ``path``).
    """
    spec = method_spec(method.name)
    accuracy = resolve(spec.accuracy_sections) if spec and spec.accuracy_sections else variant_table
    from_runs = resolve(spec.run_sections) if spec and spec.run_sections else None
    return accuracy(method, dataset, metrics) + (from_runs(method, runs) if from_runs else [])


def _llm_section(dataset: str, llm_stats: Mapping) -> list[str]:
    out = ["## LLM stage", ""]
    if "llm_top1_accuracy" in llm_stats:
        zs = TAPE_PUBLISHED.get(dataset, {}).get("llm")
        out.append(
            f"- LLM zero-shot top-1 accuracy (parsed answers): {llm_stats['llm_top1_accuracy']:.4f}"
            + (f" (TAPE: {zs:.4f})" if zs else "")
        )
    agreement = llm_stats.get("tape_preds_agreement")
    if agreement:
        out.append(
            f"- Top-1 agreement of our parser with TAPE's gpt_preds: {agreement['top1_agreement']:.4f} "
            f"over {agreement['n_compared']} nodes"
        )
    out += [f"- {k}: {llm_stats[k]}" for k in ("n_failed", "n_no_label") if k in llm_stats]
    out += _asking_lines(llm_stats.get("backend"))
    failed = llm_stats.get("failed_nodes")
    if failed:
        more = llm_stats.get("n_failed", len(failed)) - len(failed)
        out.append(
            f"- **Nodes with a failed LLM answer** (empty E text, P row all padding): "
            f"{', '.join(map(str, failed))}" + (f" and {more} more" if more > 0 else "")
        )
    return out + [""]


def _asking_lines(backend: Mapping | None) -> list[str]:
    """What asking a live LLM cost (the online/local backends' stats in the manifest): parse
    rate, re-asks, failures, tokens in and out, answers/s, and the local server."""
    if not isinstance(backend, Mapping) or not backend.get("nodes"):
        return []
    nodes, ok = int(backend["nodes"]), int(backend.get("ok", 0))
    out = [
        f"- Answers: {ok} of {nodes} nodes valid ({ok / nodes:.2%}), {backend.get('failed', 0)} failed "
        f"({backend.get('failed_invalid', 0)} invalid after re-asks); {backend.get('calls', 0)} requests, "
        f"{backend.get('reasks', 0)} re-asks, {backend.get('retries', 0)} retries; "
        f"{backend.get('cache_hits', 0)} nodes from the answer cache",
        f"- Tokens: {backend.get('prompt_tokens', 0):,} in, {backend.get('completion_tokens', 0):,} out; "
        f"{backend.get('wall_s', 0.0):.1f} s asking",
    ]
    if backend.get("answers_per_s"):
        out[-1] += (f", {backend['answers_per_s']:.3f} answers/s, "
                    f"{backend.get('completion_tokens_per_s') or 0:.1f} completion tokens/s")
    server = backend.get("server")
    if isinstance(server, Mapping):
        where = server.get("api_base") or (
            f"{server.get('servers', '?')} llama-cpp-python {server.get('version')} server(s) of "
            f"{server.get('threads', '?')} thread(s)" if server.get("started", True) else "no server (all cached)")
        out.append(f"- Local model: {Path(str(server.get('model_file', '?'))).name} "
                   f"(sha256 {str(server.get('model_sha256', '?'))[:12]}), {where}")
    return out


def failed_answer_nodes(responses: Path | str, limit: int = 20) -> list[int]:
    """Ids of the first ``limit`` nodes whose LLM answer failed, from a responses artifact.

    Such nodes train on an empty E text and an all-padding P row; the report names them.
    """
    df = pl.read_parquet(Path(responses) / "responses.parquet", columns=["node_id", "status"])
    return df.filter(pl.col("status") == "failed").sort("node_id")["node_id"].head(limit).to_list()


def render_report(
    dataset: str,
    metrics: pl.DataFrame,
    timings: Mapping[str, float],
    paths: Mapping[str, str],
    llm_stats: Mapping | None = None,
    missing_features: Sequence[str] = (),
    stop_after: str = "report",
    method: MethodBase | None = None,
    split_label: str | None = None,
    runs: Sequence[Mapping] = (),
) -> str:
    """The markdown report of one flow run.

    Args:
        dataset: dataset name.
        metrics: :func:`metrics_frame` output (empty when no GNN was trained).
        timings: ``{stage: seconds}`` wall time of each stage in this run.
        paths: ``{what: lake path}`` to list.
        llm_stats: the LLM stage's statistics (zero-shot accuracy, agreement).
        missing_features: features the dataset lacks (reported, not trained).
        stop_after: the last stage the run was asked to run.
        method: the run's method (title and accuracy tables); ``None`` = TAPE.
        split_label: the split when it is not the dataset's standard one (e.g. ``"low-label
            split: 20 train nodes per class, 500 val, 1,000 test"``): it joins the dataset's
            name in the titles, and the published columns (measured on the standard split)
            are left out.
        runs: the run summaries behind ``metrics`` (their ``path``), for the method's
            run sections (its spec's ``run_sections``).
    """
    method = method if method is not None else TapeMethod()
    # Published figures are looked up by the dataset's name: the split-qualified name has none.
    titled = dataset if split_label is None else f"{dataset} ({split_label})"
    if metrics.is_empty():
        out = [f"# {method.title} on {titled}: stopped after the {stop_after} stage", "",
               "No model was trained in this run, so there is no accuracy table.", ""]
    else:
        out = method_sections(method, titled, metrics, runs)
    if missing_features:
        out += [f"Features not available for this dataset: {', '.join(missing_features)}.", ""]
    if llm_stats:
        out += _llm_section(dataset, llm_stats)
    out += ["## Wall time per stage (this run; cache hits are near zero)", "", "| stage | seconds |", "|---|---|"]
    out += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    out += ["", "## Where the files are", ""]
    out += [f"- {k}: `{v}`" for k, v in paths.items()]
    return "\n".join(out) + "\n"


def run_input_name(run: Mapping) -> str:
    """Name of a training or ensemble run among a report's inputs: ``gcn-TA-s0``, with ``-ft``
    appended for runs on fine-tuned LM features (frozen and fine-tuned runs side by side)."""
    name = f"{run['model']}-{run.get('feature', run.get('variant'))}-s{run['seed']}"
    if run.get("method", "tape") != "tape":
        name = f"{run['method']}:{name}"
    return name + ("-ft" if run.get("lm", "frozen") == "finetuned" else "")


def materialize_report(
    dataset: str,
    runs: Sequence[Mapping],
    timings: Mapping[str, float],
    paths: Mapping[str, str],
    lake_root: Path,
    llm_stats: Mapping | None = None,
    missing_features: Sequence[str] = (),
    stop_after: str = "report",
    method: MethodBase | None = None,
    split_label: str | None = None,
) -> tuple[Path, str]:
    """Write ``metrics.parquet`` and ``report.md`` to ``<lake>/<dataset>/report/<key>``.

    The key hashes the runs' and inputs' artifact paths (and the method's name, for methods
    other than TAPE, whose keys predate the method seam), so the same results map to the same
    report; timings of a later (cached) run do not rewrite it. ``method`` (``None`` = TAPE)
    titles the report and lays out its accuracy tables; ``split_label`` names a split other
    than the dataset's standard one (see :func:`render_report`).

    Returns:
        (artifact directory, markdown text).
    """
    method = method if method is not None else TapeMethod()
    # (method's name last, and only for non-TAPE methods: TAPE's keys predate the method seam)
    key = REPORT_STAGE.key(sorted(str(r["path"]) for r in runs), sorted(paths.values()),
                           *([method.name] if method.name != "tape" else []))
    path = REPORT_STAGE.path(lake_root, dataset, key)
    metrics = metrics_frame(dataset, runs)
    markdown = render_report(
        dataset, metrics, timings, {**paths, "report": str(path)}, llm_stats, missing_features, stop_after, method,
        split_label, runs,
    )

    def write(tmp: Path) -> None:
        metrics.write_parquet(tmp / METRICS_FILE)
        (tmp / REPORT_FILE).write_text(markdown)

    def build() -> lake.Built:
        return lake.Built(write=write, inputs={run_input_name(r): str(r["path"]) for r in runs}, rows=metrics.height)

    # this run's markdown (its timings) whether the artifact was found or written now
    return REPORT_STAGE.materialize(path, build, read=lambda p: (p, markdown))
