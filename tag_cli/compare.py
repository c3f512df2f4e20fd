"""``tag compare``'s own option: several methods on one dataset and the same seeds, one
leaderboard, in this process (the flow that ``tag/compare`` deploys; :func:`tag_cli.main.main`
runs it, with ``tag``'s option parsing).

    tag compare --methods '["tape","gallon"]' --config configs/cora.yaml --seeds '[4,5,6,7]'

``--methods`` is a JSON (or YAML) list of method names or method configs
(``'[{"name": "gallon", "teacher_models": ["gcn"]}]'``; default: TAPE and GALLON, as the
deployment); every other option is one of ``tag``'s (``tag --help``), with the same precedence
and the same one-line errors (exit 2). The leaderboard's markdown is printed on stdout at the
end, with its lake path (``<lake>/<dataset>/compare/<key>``). A failing run prints one line and exits 1.
"""

from __future__ import annotations

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
