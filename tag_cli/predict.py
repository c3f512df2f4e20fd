"""``tag predict``: labels for new nodes from a trained run, in this process (the flow that
``tag/predict`` deploys).

    tag predict --nodes new.csv [--edges new_edges.csv] [--run PATH | --dataset cora --method gallon]

Bad input (a missing file or column, an empty text, an unknown edge endpoint, no such run)
prints one line ``tag predict: error: <file>: <what> at row N ...`` and exits 2; another
failure one line and 1. ``TAG_DEBUG=1`` prints the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from tag_cli.runtime import debug, prefect_defaults

PROG = "tag predict"
USAGE_ERROR = 2
RUN_ERROR = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ValueError(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``tag predict`` argument parser."""
    p = _Parser(prog=PROG, description="Classify new nodes with a trained run (GALLON student or GNN on TA).")
    p.add_argument("--nodes", required=True, help="Parquet/CSV with columns id and text (title + abstract)")
    p.add_argument("--edges", help="optional Parquet/CSV with src, dst: new ids or existing nodes' source ids")
    p.add_argument("--run", default="newest", help="a run's lake path, or 'newest' (default) for --dataset/--method")
    p.add_argument("--dataset", default="cora", help="dataset's lake name, for --run newest (default: cora)")
    p.add_argument("--method", default="gallon", choices=["gallon", "tape"],
                   help="for --run newest: the newest GALLON student, or the newest --model run on TA (tape)")
    p.add_argument("--model", default="gcn", help="GNN of a tape run, for --run newest (default: gcn)")
    p.add_argument("--lake", default="data/lake", help="lake root (default: data/lake)")
    return p


def main(argv: list[str]) -> int:
    """Run ``tag predict``; returns the exit status (0; 1 = the run failed; 2 = bad usage or input)."""
    try:
        args = build_parser().parse_args(argv)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    prefect_defaults()
    from tag_pipeline.datasets.base import DatasetError
    from tag_pipeline.lake import CorruptArtifactError, MissingArtifactError

    try:
        from flows.predict import predict

        predict(nodes=args.nodes, edges=args.edges, run=args.run, dataset=args.dataset, method=args.method,
                model=args.model, lake=args.lake)
    except Exception as exc:  # noqa: BLE001 - one line per failure
        if debug():
            traceback.print_exception(exc)
        bad_input = isinstance(exc, (DatasetError, MissingArtifactError, CorruptArtifactError, ValueError))
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return USAGE_ERROR if bad_input else RUN_ERROR
    return 0
