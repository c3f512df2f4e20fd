"""GALLON's part of the run report: the student beside its teachers and a plain MLP, then TAPE's
tables of the GNNs it was distilled from."""

from __future__ import annotations

import polars as pl

from tag_pipeline.methods.base_config import MethodBase
from tag_pipeline.report import MODEL_TITLES, _cell, tape_accuracy_section

GALLON_VARIANTS = (
    ("student", "MLP student (distilled; no edges at inference)"),
    ("mlp", "plain MLP (same features, CE only)"),
    ("lm-teacher", "LM teacher (linear head on {lm} {inputs})"),
    ("gnn-teacher", "GNN teacher (h_TAPE, chosen on validation)"),
)


def _read(rows: pl.DataFrame, column: str) -> str:
    """The distinct values of ``column`` over the seeds' rows, ``/``-joined (``"?"`` if none)."""
    values = sorted({v for v in rows[column].to_list() if v})
    return "/".join(values) or "?"


def gallon_sections(method: MethodBase, dataset: str, metrics: pl.DataFrame) -> list[str]:
    """GALLON's report: the student beside its teachers and a plain MLP (test and validation
    accuracy, mean ± std over seeds), then TAPE's tables of the GNNs it was distilled from."""
    ours = metrics.filter(pl.col("method") == "gallon")
    seeds = sorted(ours["seed"].unique().to_list())
    out = [f"# GALLON on {dataset}: node classification accuracy", "",
           f"Mean ± std over seeds {seeds}; every choice (teacher, alpha, beta, T) on validation "
           f"accuracy. {method.reference}.", "",
           "| predictor | test | val | inference ms/node |", "|---|---|---|---|"]
    for variant, title in GALLON_VARIANTS:
        rows = ours.filter(pl.col("feature") == variant)
        if rows.is_empty():
            continue
        models = sorted(set(rows["model"].to_list()))
        if variant == "gnn-teacher":
            label = f"{title}: {', '.join(MODEL_TITLES.get(m, m) for m in models)}"
        else:  # the features the run really read (a TA-only dataset's LM teacher reads TA alone)
            lm = _read(rows, "lm").replace("finetuned", "fine-tuned")
            label = title.format(lm=lm, inputs=_read(rows, "inputs"))
        ms = rows["infer_ms_per_node"].drop_nulls()
        out.append(f"| {label} | {_cell(rows.filter(pl.col('split') == 'test')['accuracy'].to_list())} | "
                   f"{_cell(rows.filter(pl.col('split') == 'val')['accuracy'].to_list())} | "
                   f"{f'{ms.median():.5f}' if len(ms) else '–'} |")
    out += ["", "Inference ms/node: median over seeds of one full-batch forward pass divided by the "
            "nodes (features in memory, same process and threads); the GNN teacher's is the sum "
            "of its h_TAPE members' passes."]
    out += ["", "## The GNNs (TAPE's stages, the teachers)", ""]
    tape = metrics.filter(pl.col("method") == "tape")
    if not tape.is_empty():
        out += tape_accuracy_section(dataset, tape)[2:]
    return out
