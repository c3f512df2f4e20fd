"""The stack's part of the run report: which predictors each seed's stack chose, with their weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tag_pipeline.methods.base_config import MethodBase


def stack_run_sections(method: MethodBase, runs: Sequence[Mapping]) -> list[str]:
    """Per seed, the chosen predictors (``method:model:variant:lm``) and their weights, read from
    the stack artifacts' manifests; and a caution that the stack's validation accuracy was fit on."""
    from tag_pipeline import lake

    rows = [r for r in runs if r.get("method") == "stack" and r.get("path")]
    if not rows:
        return []
    out = ["", "## What each seed's stack chose", "",
           "Weights (selection counts over their sum) of the predictors the ensemble selection kept, "
           "fit on the seed's validation nodes: the stack's validation accuracy is optimistic, its test "
           "accuracy is not.", "", "| seed | predictors (weight) |", "|---|---|"]
    for r in sorted(rows, key=lambda r: r["seed"]):
        summary = lake.read_artifact(r["path"], verify=False).manifest["summaries"][0]
        chosen = sorted(summary.get("members", {}).items(), key=lambda kv: -kv[1])
        out.append(f"| {r['seed']} | {', '.join(f'{k} ({w:.2f})' for k, w in chosen)} |")
    return out
