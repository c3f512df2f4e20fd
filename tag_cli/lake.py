"""``tag lake``: look into the data lake without reading Parquet by hand.

    tag lake ls [--dataset D] [--stage S] [--artifact]   every artifact: size, date, what made it
    tag lake show PATH                                    one artifact: manifest, lineage up and down
    tag lake node DATASET ID [--graph PATH]               one node: text, label, splits, LLM answer,
                                                          every run's prediction
    tag lake diff RUN_A RUN_B                             config differences and accuracies
    tag lake gc [--keep-reports N] [--apply] [--artifact] what no current report needs (dry run
                                                          unless --apply)

``--lake`` (before or after the subcommand; default ``data/lake``) picks the lake. A bad
command line or bad input (unknown dataset, node id out of range, a path that is not an
artifact) prints one line ``tag lake: error: ...`` to stderr and returns 2; another failure
(a deletion refused, the Prefect API unreachable) one line and 1. ``TAG_DEBUG=1`` re-raises
instead, for a traceback. ``--artifact`` also publishes the table as a Prefect table artifact
(``tag-lake-ls`` / ``tag-lake-gc``; needs a Prefect API: a server or the ephemeral one).

The work is done by :mod:`tag_pipeline.lakeview` (plain data) and the text by
:mod:`tag_cli.lakeview_render`; this module only parses and prints.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

PROG = "tag lake"
DEBUG_VAR = "TAG_DEBUG"
USAGE_ERROR = 2  # exit status: bad command line or bad input
RUN_ERROR = 1  # exit status: anything else that failed
DEFAULT_LAKE = "data/lake"


class UsageError(Exception):
    """A bad command line (argparse's complaint, as one line)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the usage and exit
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``tag lake`` argument parser (subcommands ``ls``, ``show``, ``node``, ``diff``, ``gc``)."""
    parser = _Parser(prog=PROG, description="Inspect the data lake: list, show, one node, diff, garbage-collect.")
    parser.add_argument("--lake", default=DEFAULT_LAKE, help=f"lake root (default: {DEFAULT_LAKE})")
    # a parent parser per subcommand: argparse shares a parent's Action objects, and a shared
    # --lake would let one parser's default overwrite the value given to another
    common = _Parser(add_help=False)
    # SUPPRESS: a subcommand's --lake replaces the top-level one only when given
    common.add_argument("--lake", default=argparse.SUPPRESS, help=f"lake root (default: {DEFAULT_LAKE})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("ls", parents=[common], help="list the artifacts", description="List the lake's artifacts.")
    p.add_argument("--dataset", help="only this dataset")
    p.add_argument("--stage", help="only this stage (graph, llm, features, train, ensemble, report)")
    p.add_argument("--artifact", action="store_true", help="also publish the table as a Prefect table artifact")
    p.set_defaults(func=_ls)

    p = sub.add_parser("show", parents=[common], help="one artifact with its lineage",
                       description="Show one artifact: manifest, files, config, lineage up and down.")
    p.add_argument("path", metavar="PATH", help="an artifact folder <lake>/<dataset>/<stage>/<key>")
    p.set_defaults(func=_show)

    p = sub.add_parser("node", parents=[common], help="one node through every stage",
                       description="One node: text, label, splits, LLM answer and every run's prediction.")
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("node_id", metavar="ID", type=int)
    p.add_argument("--graph", help="graph artifact (default: the dataset's newest)")
    p.set_defaults(func=_node)

    p = sub.add_parser("diff", parents=[common], help="compare two runs or reports",
                       description="Config differences (dotted keys) and accuracies of two artifacts of a stage.")
    p.add_argument("a", metavar="RUN_A")
    p.add_argument("b", metavar="RUN_B")
    p.set_defaults(func=_diff)

    p = sub.add_parser("gc", parents=[common], help="what no current report needs (dry run)",
                       description="List (or with --apply delete) artifacts no current report reaches, "
                       "leftover shards, corrupt copies and stale temporaries.")
    p.add_argument("--keep-reports", type=int, default=1, metavar="N", help="reports kept per dataset (default 1)")
    p.add_argument("--apply", action="store_true", help="delete (default: only list)")
    p.add_argument("--artifact", action="store_true", help="also publish the plan as a Prefect table artifact")
    p.set_defaults(func=_gc)
    return parser


def _width() -> int:
    return max(100, shutil.get_terminal_size((140, 24)).columns)


def _publish(df, key: str, description: str) -> None:
    """Publish a polars frame as a Prefect table artifact (values made JSON-friendly)."""
    from prefect.artifacts import create_table_artifact

    rows = [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()} for r in df.iter_rows(named=True)]
    create_table_artifact(table=rows, key=key, description=description)
    print(f"published Prefect table artifact {key!r} ({len(rows)} rows)")


def _ls(args) -> None:
    from tag_cli import lakeview_render as render
    from tag_pipeline import lakeview

    df = lakeview.list_artifacts(args.lake, dataset=args.dataset, stage=args.stage)
    print(render.render_artifacts(df, width=_width()), end="")
    if args.artifact:
        what = " ".join(f"{k} {v}" for k, v in (("dataset", args.dataset), ("stage", args.stage)) if v)
        _publish(df, "tag-lake-ls", f"Artifacts of the lake {args.lake}" + (f" ({what})" if what else ""))


def _show(args) -> None:
    from tag_cli import lakeview_render as render
    from tag_pipeline import lakeview

    print(render.render_artifact(lakeview.show_artifact(_under_lake(args.path, args.lake)), width=_width()), end="")


def _node(args) -> None:
    from tag_cli import lakeview_render as render
    from tag_pipeline import lakeview

    graph = _under_lake(args.graph, args.lake) if args.graph else None
    view = lakeview.node_view(args.lake, args.dataset, args.node_id, graph=graph)
    print(render.render_node(view, width=_width()), end="")


def _diff(args) -> None:
    from tag_cli import lakeview_render as render
    from tag_pipeline import lakeview

    diff = lakeview.diff_runs(_under_lake(args.a, args.lake), _under_lake(args.b, args.lake))
    print(render.render_diff(diff, width=_width()), end="")


def _gc(args) -> None:
    from tag_cli import lakeview_render as render
    from tag_pipeline import lakeview

    plan = lakeview.gc_plan(args.lake, keep_reports=args.keep_reports)
    if args.artifact:
        _publish(plan, "tag-lake-gc", f"Garbage-collection plan of the lake {args.lake} "
                 f"(keep {args.keep_reports} report(s) per dataset){'; applied' if args.apply else '; dry run'}")
    freed = lakeview.apply_gc(plan) if args.apply else None
    print(render.render_gc_plan(plan, root=args.lake, width=_width(), applied=freed), end="")


def _under_lake(path: str, lake: str) -> str:
    """``path`` as given if it exists, else taken relative to the lake (``cora/train/<key>``)."""
    if os.path.lexists(path) or Path(path).is_absolute():
        return path
    candidate = Path(lake) / path
    return str(candidate) if os.path.lexists(candidate) else path


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str]) -> int:
    """Run ``tag lake`` with ``argv`` (the words after ``lake``); return the exit status.

    Returns:
        0 on success; 2 for a bad command line or bad input (``ValueError``, a missing path, a
        corrupt manifest); 1 for any other failure. Each failure prints one line to stderr.
    """
    from tag_pipeline.lake import CorruptArtifactError

    debug = os.environ.get(DEBUG_VAR, "") not in ("", "0")
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return USAGE_ERROR
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, CorruptArtifactError) as e:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return USAGE_ERROR
    except Exception as e:
        if debug:
            raise
        print(f"{PROG}: error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return RUN_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
