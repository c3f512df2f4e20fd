"""Install the automation that marks zombie flow runs Crashed, so they can be retried.

A flow run whose process dies together with its worker (SIGKILL of the worker's process
group, a machine or container lost) stays ``Running`` in Prefect forever: nobody is left to
report its end, and ``prefect flow-run retry`` refuses a Running run. (When only the flow-run
process dies, its worker reports the run Crashed itself, at once.) Every flow run emits a
``prefect.flow-run.heartbeat`` event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds
(``scripts/env.sh`` sets 30, Prefect's minimum; ``prefect.yaml`` pins 30 for the runs of its
deployments, whatever the worker's environment); this module installs Prefect's documented
answer, an automation with a proactive event trigger: after a heartbeat of a flow run,
expect another heartbeat (or a terminal state event) of the same run within
``TAG_ZOMBIE_AFTER_S`` seconds, else change the run's state to ``Crashed``. Prefect docs,
"How to detect and respond to zombie flows":
https://docs.prefect.io/v3/advanced/detect-zombie-flows

A run is marked Crashed between ``TAG_ZOMBIE_AFTER_S - heartbeat`` and ``TAG_ZOMBIE_AFTER_S``
seconds after its process died (plus up to 5 s, the server's proactive evaluation period,
``PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY``). A run killed before its first heartbeat
reached the server is never detected: the trigger arms on a heartbeat. A run that beats
less often than the window (Prefect's default is 180 s) is marked Crashed while healthy.

    python deployments/automations.py                  # create, or update to match, or leave
    TAG_ZOMBIE_AFTER_S=120 python deployments/automations.py
    python deployments/automations.py --print          # show the automation as JSON, no API

``scripts/main.sh`` runs it after the server is healthy. It talks to the server named by
``PREFECT_API_URL`` (environment or Prefect profile; required, else Prefect would start a
throwaway in-process server).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from datetime import timedelta
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import get_current_settings

ZOMBIE_AUTOMATION_NAME = "tag-pipeline: crash zombie flow runs"
"""The automation's name: at most one automation of this name exists after an install."""

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
# A run that ends normally stops its heartbeats with one of these: no Crash for it.
TERMINAL_EVENTS = ("prefect.flow-run.Completed", "prefect.flow-run.Failed",
                   "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed")
# Nor for a run that rests without a process on purpose (suspended, waiting for a flow-level
# retry): not in the docs' example, which would crash such runs. Its next attempt re-arms.
RESTING_EVENTS = ("prefect.flow-run.Paused", "prefect.flow-run.Suspended",
                  "prefect.flow-run.AwaitingRetry")
DEFAULT_WINDOW_HEARTBEATS = 3  # the window is 3 heartbeats long unless TAG_ZOMBIE_AFTER_S says
LATE_HEARTBEAT_SLACK_S = 10  # a heartbeat may arrive this late (busy machine) without a Crash


def heartbeat_frequency_s() -> int | None:
    """Seconds between a flow run's heartbeats, as Prefect reads its settings.

    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (legacy name ``PREFECT_RUNNER_HEARTBEAT_FREQUENCY``);
    Prefect refuses values under 30 (its settings fail to load).

    Returns:
        int | None: the frequency in seconds, or ``None`` when heartbeats are off.
    """
    return get_current_settings().flows.heartbeat_frequency


def zombie_after_s(environ: Mapping[str, str] | None = None, heartbeat_s: int | None = None) -> int:
    """The trigger's window: seconds without a heartbeat after which a run is a zombie.

    Args:
        environ (Mapping[str, str], optional): where ``TAG_ZOMBIE_AFTER_S`` is read
            (default ``os.environ``).
        heartbeat_s (int, optional): heartbeat frequency in seconds (default: Prefect's
            setting, :func:`heartbeat_frequency_s`).

    Returns:
        int: ``TAG_ZOMBIE_AFTER_S``, default ``3 * heartbeat_s`` (90 s for 30 s heartbeats).

    Raises:
        ValueError: ``TAG_ZOMBIE_AFTER_S`` is not a whole number of seconds, or it is shorter
            than one heartbeat interval plus 10 s (every healthy run would be crashed
            between two heartbeats).
        RuntimeError: heartbeats are off (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` empty), so
            the automation could never fire.
    """
    environ = os.environ if environ is None else environ
    heartbeat_s = heartbeat_frequency_s() if heartbeat_s is None else heartbeat_s
    if heartbeat_s is None:
        raise RuntimeError(
            "flow run heartbeats are off (PREFECT_FLOWS_HEARTBEAT_FREQUENCY is empty): "
            "zombie runs could not be detected; set it to 30 or more (scripts/env.sh)"
        )
    raw = environ.get("TAG_ZOMBIE_AFTER_S", "").strip()
    if not raw:
        return DEFAULT_WINDOW_HEARTBEATS * heartbeat_s
    try:
        within_s = int(raw)
    except ValueError:
        raise ValueError(f"TAG_ZOMBIE_AFTER_S={raw!r}: expected a whole number of seconds") from None
    check_window(within_s, heartbeat_s)
    return within_s


def check_window(within_s: int, heartbeat_s: int) -> None:
    """Refuse a window that would crash healthy runs.

    Args:
        within_s (int): the trigger's window in seconds.
        heartbeat_s (int): the heartbeat frequency in seconds.

    Raises:
        ValueError: ``within_s < heartbeat_s + 10``.
    """
    if within_s < heartbeat_s + LATE_HEARTBEAT_SLACK_S:
        raise ValueError(
            f"a zombie window of {within_s} s is too short for heartbeats every {heartbeat_s} s: "
            f"healthy runs would be marked Crashed; use at least {heartbeat_s + LATE_HEARTBEAT_SLACK_S} s "
            f"(default {DEFAULT_WINDOW_HEARTBEATS} heartbeats, {DEFAULT_WINDOW_HEARTBEATS * heartbeat_s} s)"
        )


def zombie_automation(within_s: int, name: str = ZOMBIE_AUTOMATION_NAME) -> AutomationCore:
    """The automation: Crashed for a flow run whose heartbeats stopped ``within_s`` ago.

    Proactive event trigger, one bucket per flow run (``for_each prefect.resource.id``):
    after a ``prefect.flow-run.heartbeat``, expect another heartbeat or a terminal state
    event (Completed, Failed, Cancelled, Crashed) within ``within_s`` seconds; when none
    comes, the action ``change-flow-run-state`` sets the run Crashed with a message that
    says how to resume it. Beyond the docs' example, Paused, Suspended and AwaitingRetry
    also satisfy the trigger: a suspended run or one waiting out a flow-level retry delay
    has no process to beat, and is not a zombie.

    Args:
        within_s (int): the window in seconds (see :func:`zombie_after_s`).
        name (str): the automation's name (default :data:`ZOMBIE_AUTOMATION_NAME`).

    Returns:
        AutomationCore: the automation as the API takes it (not yet created).

    Raises:
        ValueError: ``within_s`` is not positive.
    """
    if within_s <= 0:
        raise ValueError(f"within_s={within_s}: the window must be a positive number of seconds")
    return AutomationCore(
        name=name,
        description=(
            f"Marks a flow run Crashed when no heartbeat of it arrived for {within_s} s (its "
            "process died with its worker or machine), so `prefect flow-run retry` can resume "
            "it. Installed by deployments/automations.py; "
            "https://docs.prefect.io/v3/advanced/detect-zombie-flows"
        ),
        enabled=True,
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            after={HEARTBEAT_EVENT},
            expect={HEARTBEAT_EVENT, *TERMINAL_EVENTS, *RESTING_EVENTS},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"No heartbeat for {within_s} s: the flow run's process died (zombie run, "
                    "marked by the automation '" + name + "'). "
                    "Resume it with `prefect flow-run retry <id>`."
                ),
            )
        ],
    )


def _same(existing: AutomationCore, desired: AutomationCore) -> bool:
    """Whether an automation read from the API already is ``desired`` (ids aside)."""
    return (
        existing.description == desired.description
        and existing.enabled == desired.enabled
        and existing.trigger.model_dump(exclude={"id"}) == desired.trigger.model_dump(exclude={"id"})
        and [a.model_dump() for a in existing.actions] == [a.model_dump() for a in desired.actions]
        and not existing.actions_on_trigger
        and not existing.actions_on_resolve
    )


def install_zombie_automation(
    within_s: int | None = None,
    client: SyncPrefectClient | None = None,
    name: str = ZOMBIE_AUTOMATION_NAME,
) -> tuple[UUID, str]:
    """Create the zombie automation, or bring the one of that name up to date.

    Idempotent: run it any number of times, one automation of that name remains (extra
    copies, say from a concurrent install, are deleted; the most recently updated is kept).

    Args:
        within_s (int, optional): the window in seconds (default :func:`zombie_after_s`).
        client (SyncPrefectClient, optional): an open client (default: one for
            ``PREFECT_API_URL``).
        name (str): the automation's name (default :data:`ZOMBIE_AUTOMATION_NAME`).

    Returns:
        tuple[UUID, str]: the automation's id and what was done: ``"created"``,
        ``"updated"`` or ``"unchanged"``.

    Raises:
        ValueError, RuntimeError: from :func:`zombie_after_s`.
        prefect.exceptions.PrefectHTTPStatusError: the API refused a request.
        httpx.HTTPError: the server could not be reached.
    """
    if within_s is None:
        within_s = zombie_after_s()
    desired = zombie_automation(within_s, name)
    if client is None:
        with get_client(sync_client=True) as own:
            return install_zombie_automation(within_s, own, name)
    existing = client.read_automations_by_name(name)  # most recently updated first
    if not existing:
        return client.create_automation(desired), "created"
    keep, *extra = existing
    for duplicate in extra:
        client.delete_automation(duplicate.id)
    if _same(keep, desired):
        return keep.id, "unchanged"
    client.update_automation(keep.id, desired)
    return keep.id, "updated"


def main(argv: list[str] | None = None) -> int:
    """Command line: install (default) or ``--print`` the automation.

    Returns:
        int: exit status: 0 done, 1 the API failed, 2 bad settings (window, heartbeats off,
        no ``PREFECT_API_URL``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--within-s", type=int, default=None,
        help="seconds without a heartbeat before Crashed (default: $TAG_ZOMBIE_AFTER_S, else 3 heartbeats)",
    )
    parser.add_argument("--print", action="store_true", help="print the automation as JSON, do not install")
    args = parser.parse_args(argv)
    try:
        heartbeat_s = heartbeat_frequency_s()
        if args.within_s is None:
            within_s = zombie_after_s(heartbeat_s=heartbeat_s)
        else:
            within_s = args.within_s
            if heartbeat_s is not None:
                check_window(within_s, heartbeat_s)
        if args.print:
            print(zombie_automation(within_s).model_dump_json(indent=2))
            return 0
        if not get_current_settings().api.url:
            raise RuntimeError(
                "PREFECT_API_URL is not set: name the server to install the automation on "
                "(scripts/main.sh sets it)"
            )
        automation_id, done = install_zombie_automation(within_s)
    except (ValueError, RuntimeError) as exc:
        print(f"[automations] {exc}", file=sys.stderr)
        return 2
    except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
        print(f"[automations] the Prefect API at {get_current_settings().api.url} failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"[automations] {ZOMBIE_AUTOMATION_NAME!r} {done} ({automation_id}): a flow run without a "
        f"heartbeat for {within_s} s is marked Crashed (heartbeats every {heartbeat_s} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
