"""Text for ``tag lake``: the plain data of :mod:`tag_pipeline.lakeview` as ``rich`` tables.

:mod:`tag_pipeline.lakeview` finds and computes (polars frames, dicts); this module only turns
its results into text ``width`` columns wide, without colour or markup, for
:mod:`tag_cli.lake` to print.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl
from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from tag_pipeline.lakeview import ABSENT, flatten


def human_bytes(n: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units)."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _fmt_time(t: dt.datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") if t is not None else "?"


def _table(columns: list[str], rows: Iterable[Iterable[Any]], right: Iterable[str] = ()):
    """A rich table with a header rule and no borders; cells are plain text (no markup)."""
    right = set(right)
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for c in columns:
        t.add_column(c, justify="right" if c in right else "left", overflow="fold")
    for r in rows:
        t.add_row(*(Text("" if v is None else str(v)) for v in r))
    return t


def _fields(pairs: Iterable[tuple[str, Any]], indent: int = 0):
    """``label: value`` lines whose long values wrap under themselves, not under the label."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for k, v in pairs:
        grid.add_row(Text(f"{k}:"), Text("" if v is None else str(v)))
    return Padding(grid, (0, 0, 0, indent)) if indent else grid


def _render(items: Iterable[Any], width: int) -> str:
    """Render strings (plain text) and rich renderables to text ``width`` columns wide."""
    con = Console(file=io.StringIO(), width=width, color_system=None, markup=False, highlight=False,
                  emoji=False, force_terminal=False)
    for item in items:
        con.print(Text(item) if isinstance(item, str) else item)
    return "\n".join(line.rstrip() for line in con.file.getvalue().splitlines()) + "\n"


def render_artifacts(df: pl.DataFrame, width: int = 120) -> str:
    """:func:`~tag_pipeline.lakeview.list_artifacts` as a text table (sizes in KiB/MiB, times in UTC) and a total line."""
    rows = [(r["dataset"], r["stage"], r["key"], r["rows"], human_bytes(r["bytes"]), _fmt_time(r["created"]),
             r["produced_by"]) for r in df.iter_rows(named=True)]
    plural = "" if df.height == 1 else "s"
    total = f"{df.height} artifact{plural}, {human_bytes(int(df['bytes'].sum()) if df.height else 0)}"
    if not rows:
        return _render([total], width)
    table = _table(["dataset", "stage", "key", "rows", "size", "created (UTC)", "produced by"], rows,
                   right=("rows", "size"))
    return _render([table, total], width)


def render_artifact(info: Mapping[str, Any], width: int = 120) -> str:
    """:func:`~tag_pipeline.lakeview.show_artifact` as text: identity, files, config, details, lineage up and down."""
    m = info["manifest"]
    out: list[Any] = [
        info["path"],
        _fields([
            ("stage", info["stage"]), ("key", info["key"]), ("created", f"{_fmt_time(info['created'])} UTC"),
            ("rows", m.get("rows")), ("size", f"{human_bytes(info['bytes'])} on disk"),
            ("code version", m.get("code_version", "?")), ("produced by", info["describe"]),
        ], indent=2),
        "", "files:",
        _table(["file", "size", "sha256"],
               [(k, human_bytes(v.get("bytes")), str(v.get("sha256", ""))[:16] + "…")
                for k, v in (m.get("files") or {}).items()], right=("size",)),
    ]
    cfg = flatten(m.get("config"))
    if cfg:
        out += ["", "config:", _fields([(k, json.dumps(v)) for k, v in cfg.items()], indent=2)]
    standard = {"stage", "key", "created_unix", "code_version", "config", "inputs", "rows", "files"}
    details = flatten({k: v for k, v in m.items() if k not in standard})
    if details:
        out += ["", "details:", _fields([(k, json.dumps(v)) for k, v in details.items()], indent=2)]
    for title, entries in (("lineage up (what it was built from)", info["up"]),
                           ("lineage down (what was built from it)", info["down"])):
        out.append("")
        if entries:
            out += [f"{title}:", _table(
                ["depth", "artifact", "as", "via"],
                [(e["depth"], f"{e['stage']}/{e['key']}", e["name"],
                  f"{Path(e['via']).parent.name}/{Path(e['via']).name}" if e["depth"] > 1 else "")
                 for e in entries], right=("depth",))]
        else:
            out.append(f"{title}: none")
    if info["external"]:
        out += ["", "inputs outside the lake:", _fields([(e["name"], e["value"]) for e in info["external"]], indent=2)]
    return _render(out, width)


def render_node(view: Mapping[str, Any], width: int = 120) -> str:
    """:func:`~tag_pipeline.lakeview.node_view` as text: the node, its LLM answer(s) and every run's prediction."""
    head = [("label", f"{view['label']} {view['label_name']}"),
            ("split", ", ".join(f"seed {s}: {p or 'none'}" for s, p in view["splits"].items()) or "no seeds")]
    if view["title"] is not None:
        head += [("title", view["title"]), ("abstract", view["abstract"])]
    else:
        head.append(("text", view["text"] if view["text"] is not None else "(this dataset has no node text)"))
    out: list[Any] = [
        (f"{view['dataset']} node {view['node_id']} (source id {view['source_id']}), graph {view['graph']} "
         f"({view['num_nodes']} nodes)"),
        _fields(head, indent=2),
    ]
    for a in view["llm"]:
        pairs = [("status", a["status"] + (f" ({a['error']})" if a["error"] else "")
                  + (f", finish reason {a['finish_reason']}" if a.get("finish_reason") else "")),
                 ("ranked labels", ", ".join(a["ranked_labels"]) or "(none)")]
        if a["prompt"] is not None:
            pairs.append(("prompt", a["prompt_note"]))
            pairs += [(f"  [{msg['role']}]", msg["content"]) for msg in a["prompt"]]
        else:
            pairs.append(("prompt", a["prompt_note"]))
        pairs += [("explanation", a["explanation"]), ("raw text", a["raw_text"])]
        out += ["", f"LLM answer: {a['backend']} {a['model']} ({a['path']})", _fields(pairs, indent=2)]
    if not view["llm"]:
        out += ["", "LLM answer: none in the lake for this graph"]
    out.append("")
    if view["runs"]:
        out += [f"predictions of {len(view['runs'])} runs (prob: softmax of the stored scores at the prediction):",
                _table(["model", "feature", "lm", "seed", "split", "prediction", "prob", "correct", "artifact"],
                       [(r["model"], r["feature"], r["lm"], r["seed"], r["split"], r["pred_name"], f"{r['prob']:.3f}",
                         "yes" if r["correct"] else "no", f"{r['stage']}/{Path(r['path']).name}")
                        for r in view["runs"]], right=("seed", "prob"))]
    else:
        out.append("predictions: no training run in the lake for this graph")
    return _render(out, width)


def _json_or_absent(v: Any) -> str:
    return ABSENT if isinstance(v, str) and v == ABSENT else json.dumps(v)


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("–" if v is None else str(v))


def render_diff(diff: Mapping[str, Any], width: int = 120) -> str:
    """:func:`~tag_pipeline.lakeview.diff_runs` as text: config differences, differing inputs, accuracies side by side."""
    out: list[Any] = [_fields([("a", diff["a"]), ("b", diff["b"])]), ""]
    if diff["config"]:
        out += ["config differences:", _table(["key", "a", "b"], [
            (k, _json_or_absent(va), _json_or_absent(vb)) for k, (va, vb) in diff["config"].items()])]
    else:
        out.append("config: no difference")
    if diff["inputs"]:
        out.append(f"inputs naming other artifacts: {len(diff['inputs'])} ({', '.join(diff['inputs'])})")
    if diff["runs"]:
        rows = []
        for k, (va, vb) in diff["runs"].items():
            delta = f"{vb - va:+.4f}" if isinstance(va, float) and isinstance(vb, float) else ""
            rows.append((k, _num(va), _num(vb), delta))
        out += ["", "runs:", _table(["field", "a", "b", "b - a"], rows, right=("a", "b", "b - a"))]
    metrics = diff.get("metrics")
    if metrics is not None:
        keys = [k for k in ("model", "feature", "lm", "split") if k in metrics.columns]
        agg = (metrics.group_by(keys).agg(pl.col("accuracy_a").mean(), pl.col("accuracy_b").mean(),
                                          pl.col("seed").n_unique().alias("seeds"))
               .with_columns((pl.col("accuracy_b") - pl.col("accuracy_a")).alias("delta")))
        agg = agg.sort([pl.col("split") != "test", *[k for k in keys if k != "split"]]) if "split" in keys else agg.sort(keys)
        out += ["", "accuracy, mean over seeds:", _table(
            [*keys, "seeds", "a", "b", "b - a"],
            [(*(r[k] for k in keys), r["seeds"], _num(r["accuracy_a"]), _num(r["accuracy_b"]),
              f"{r['delta']:+.4f}" if r["delta"] is not None else "") for r in agg.iter_rows(named=True)],
            right=("seeds", "a", "b", "b - a"))]
    return _render(out, width)


def render_gc_plan(plan: pl.DataFrame, root: Path | str | None = None, width: int = 120,
                   applied: int | None = None) -> str:
    """:func:`~tag_pipeline.lakeview.gc_plan` as a text table (paths relative to ``root`` when given) and a total line:
    what ``--apply`` would free, or (``applied``: bytes) what it freed."""
    def rel(p: str) -> str:
        return os.path.relpath(p, root) if root is not None else p

    rows = [(r["kind"], rel(r["path"]), human_bytes(r["bytes"]), r["reason"]) for r in plan.iter_rows(named=True)]
    total = int(plan["bytes"].sum()) if plan.height else 0
    if applied is not None:
        tail = f"deleted {plan.height} entries, freed {human_bytes(applied)} ({applied} bytes)"
    elif plan.height:
        tail = (f"dry run: {plan.height} entries, {human_bytes(total)} ({total} bytes) would be freed; "
                "run again with --apply to delete them")
    else:
        tail = "nothing to collect"
    head = [f"lake: {root}"] if root is not None else []
    if not rows:
        return _render([*head, tail], width)
    return _render([*head, _table(["kind", "path", "size", "reason"], rows, right=("size",)), tail], width)
