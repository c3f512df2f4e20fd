"""Dr.E's part of the run report: its accuracy table worded for Dr.E, the TAPE baseline beside it,
and a few test nodes' chosen words (the paper's case study).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from tag_pipeline import lake
from tag_pipeline.methods.dre.config import DreMethod
from tag_pipeline.methods.dre.stage import PREDICTIONS_FILE, TOKENS_FILE
from tag_pipeline.report import tape_gnn_section, variant_table


def words_section(run_path: str | Path, limit: int = 5) -> list[str]:
    """Markdown lines: the first ``limit`` test nodes of one Dr.E run (by node id), each with its
    label, Dr.E's prediction and its chosen words per view (``tokens.parquet``), then how many
    distinct words the run used.

    Args:
        run_path: the run's lake artifact (:func:`dre_path`).
        limit: rows shown.

    Raises:
        FileNotFoundError: the artifact lacks ``tokens.parquet`` or ``predictions.parquet``.
    """
    import polars as pl

    from tag_pipeline.datasets import open_graph

    run_path = Path(run_path)
    manifest = lake.read_artifact(run_path, verify=False).manifest
    names = open_graph(Path(manifest["inputs"]["graph"])).class_names
    words = pl.read_parquet(run_path / TOKENS_FILE)
    hops = [c for c in words.columns if c.startswith("hop") and not c.endswith("_ids")]
    preds = pl.read_parquet(run_path / PREDICTIONS_FILE, columns=["node_id", "label", "pred"])
    rows = words.join(preds, on="node_id").filter(pl.col("split") == "test").sort("node_id").head(limit)
    usage = manifest.get("codebook_usage")
    kind = "chosen codes" if usage else "nearest words of the continuous tokens"
    out = [f"## Words standing for a node's neighbourhood ({kind}, `{run_path.name}`)", "",
        "| node | label | Dr.E | " + " | ".join(f"{h[3:]}-hop words" for h in hops) + " |",
        "|---|---|---|" + "---|" * len(hops)]
    for r in rows.iter_rows(named=True):
        out.append(f"| {r['node_id']} | {names[r['label']]} | {names[r['pred']]} | "
                   + " | ".join(" ".join(r[h]) for h in hops) + " |")
    distinct = words.select(pl.concat_list(hops).explode().n_unique()).item()
    total = words.height * sum(len(words[h][0]) for h in hops)
    out += ["", f"{distinct:,} distinct words among the {total:,} of all {words.height:,} nodes "
            f"(`{run_path / TOKENS_FILE}`).", ""]
    return out


def dre_sections(method: DreMethod, dataset: str, metrics: pl.DataFrame) -> list[str]:
    """Dr.E's report: the default variant table (``llm``: Dr.E, ``llm-zero-shot``: the baseline),
    worded for Dr.E (accuracy at the epoch with the best validation accuracy, by constrained
    class-name scoring); then, when the run trained them (``gnns``), TAPE's tables of the GNNs
    on the same frozen TA feature."""
    out = [line.replace("(best epoch by validation accuracy)",
                        "(epoch with the best validation accuracy; the class whose name the decoder "
                        "finds likeliest)")
           for line in variant_table(method, dataset, metrics)] + [
        f"Decoder: `{method.decoder}`; {method.views} views x {method.codes_per_view} codes, "
        f"{'quantised into its words' if method.quantise else 'continuous (the ablation)'}; "
        f"{method.epochs} epoch(s). The chosen words per node: `tokens.parquet` in each run's folder.", ""]
    return out + tape_gnn_section(dataset, metrics,
                                  "## The baseline: TAPE's GNNs on the same frozen TA feature and splits")


def dre_run_sections(method: DreMethod, runs: Sequence[Mapping]) -> list[str]:
    """A few test nodes' chosen words (Dr.E's case study): from ``tokens.parquet`` and
    ``predictions.parquet`` of the Dr.E run with the lowest seed, ``method.report_nodes`` rows
    (:func:`words_section`)."""
    ours = sorted((r for r in runs if r.get("method") == "dre" and r.get("variant", r.get("feature")) == "dre"),
                  key=lambda r: int(r["seed"]))
    if not ours or not method.report_nodes:
        return []
    return words_section(Path(ours[0]["path"]), method.report_nodes)
