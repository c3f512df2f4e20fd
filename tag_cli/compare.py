"""``tag compare``: several methods on one dataset and the same seeds, one leaderboard, in this
process (the flow that ``tag/compare`` deploys).

    tag compare --methods '["tape","gallon"]' --config configs/cora.yaml --seeds '[4,5,6,7]'

``--methods`` is a JSON (or YAML) list of method names or method configs
(``'[{"name": "gallon", "teacher_models": ["gcn"]}]'``; default: TAPE and GALLON, as the
deployment); every other option is one of ``tag``'s (``tag --help``), with the same precedence
and the same one-line errors (exit 2). The leaderboard's markdown is printed on stdout at the
end, with its lake path (``<lake>/<dataset>/compare/<key>``). A failing run prints one line and exits 1.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

PROG = "tag compare"
DEFAULT_METHODS = ["tape", "gallon"]


def split_methods(argv: list[str]) -> tuple[list[Any], list[str]]:
    """Take ``--methods VALUE`` (or ``--methods=VALUE``) out of ``argv``.

    Returns:
        (the parsed list, or :data:`DEFAULT_METHODS`; the rest of ``argv`` for ``tag``'s parser).

    Raises:
        ValueError: no value, or a value that is not a YAML/JSON list.
    """
    rest, value = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--methods":
            if i + 1 >= len(argv):
                raise ValueError("--methods: expected a list such as '[\"tape\",\"gallon\"]'")
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--methods="):
            value, i = arg.split("=", 1)[1], i + 1
            continue
        rest.append(arg)
        i += 1
    if value is None:
        return list(DEFAULT_METHODS), rest
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ValueError(f"--methods: not a JSON/YAML list (got {value!r}): {exc}") from None
    if not isinstance(parsed, list) or not parsed:
        raise ValueError(f"--methods: expected a non-empty list of method names or configs (got {value!r})")
    return parsed, rest


def main(argv: list[str]) -> int:
    """Run ``tag compare``; returns the exit status (0; 1 = the run failed; 2 = bad usage)."""
    from tag_cli.main import USAGE_ERROR, RUN_ERROR, UsageError, _fail, _run_error_message, parse_config
    from tag_cli.runtime import prefect_defaults
    from tag_pipeline.methods import method_config

    from pydantic import ValidationError

    try:
        raw, rest = split_methods(argv)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    methods, problems = [], []
    for i, value in enumerate(raw):
        try:
            methods.append(method_config(value))
        except (ValidationError, ValueError) as exc:
            errors = exc.errors(include_url=False) if isinstance(exc, ValidationError) else [{"msg": str(exc)}]
            problems += [f"--methods[{i}]: {' '.join(str(e['msg']).split())} (got {value!r})" for e in errors]
    if problems:
        for problem in problems:
            print(f"{PROG}: error: {problem}", file=sys.stderr)
        return USAGE_ERROR
    try:
        cfg, own = parse_config(rest)
    except UsageError as exc:
        return _fail(exc.problems, USAGE_ERROR, exc)
    if own.print_config:
        print(cfg.model_dump_json(indent=2, exclude={"method"}))
        print("methods:", [m.model_dump(mode="json") for m in methods])
        return 0
    prefect_defaults()
    try:
        from flows.compare import compare

        board = compare(
            dataset=cfg.dataset, methods=methods, features=cfg.features, models=cfg.models, seeds=cfg.seeds,
            llm=cfg.llm, lm=cfg.lm, gnn=cfg.gnn, ensemble=cfg.ensemble, lake=str(cfg.lake),
        )
    except Exception as exc:  # noqa: BLE001 - any failure of the run is reported in one line
        return _fail([_run_error_message(exc)], RUN_ERROR, exc)
    print(board["markdown"])  # on stdout, for a pipe; the flow run logged it too
    print(f"leaderboard: {board['leaderboard']}")
    return 0
