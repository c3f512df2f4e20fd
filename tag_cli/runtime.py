"""What the ``tag`` commands that run a Prefect flow in this process share (``tag`` and
``tag predict``): the Prefect settings they start with and ``TAG_DEBUG``.

Both :mod:`tag_cli.main` and :mod:`tag_cli.predict` import it; it imports neither, so the
subcommands need not import each other.
"""

from __future__ import annotations

import os
from pathlib import Path

DEBUG_VAR = "TAG_DEBUG"
# The in-process ephemeral Prefect server must start within this many seconds; Prefect's
# default (20 s) is too short on a busy 2-core machine.
EPHEMERAL_STARTUP_TIMEOUT_S = "300"


def debug() -> bool:
    """Whether ``TAG_DEBUG`` asks for tracebacks (set and not ``0``, ``false`` or ``no``)."""
    return os.environ.get(DEBUG_VAR, "").strip().lower() not in ("", "0", "false", "no")


def prefect_defaults() -> None:
    """Set what a flow run in this process needs unless the environment already says otherwise:
    results persist under ``.prefect/results`` (absolute, from the working directory) and the
    ephemeral Prefect server gets :data:`EPHEMERAL_STARTUP_TIMEOUT_S` seconds to start."""
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(Path(".prefect/results").resolve()))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S)
