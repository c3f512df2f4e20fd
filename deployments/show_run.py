"""Print the newest flow run of a deployment: its state, its markdown report and UI links.

Reads everything through the Prefect API (the server the main job started), so what it
prints is what the UI shows.

    python deployments/show_run.py --deployment tag/full

``scripts/main.sh`` does not start this script: ``deployments/prepare.py --run`` calls
:func:`show_run` in the process that ran the deployment, saving a Python start-up.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import PREFECT_UI_URL


def newest_run(client: SyncPrefectClient, deployment: str) -> FlowRun | None:
    """The deployment's flow run with the latest expected start, or ``None`` when it has none.

    Raises:
        prefect.exceptions.ObjectNotFound: no such deployment.
    """
    found = client.read_deployment_by_name(deployment)
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=1,
    )
    return runs[0] if runs else None


def show_run(client: SyncPrefectClient, run: FlowRun) -> int:
    """Print a flow run's markdown artifacts, state, task-run counts and UI links.

    Returns:
        int: 0 when the run is Completed, else 1.
    """
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), type=ArtifactFilterType(any_=["markdown"])
        )
    )
    task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    print()
    for artifact in artifacts:
        print(artifact.data)
    ui = PREFECT_UI_URL.value() or "http://127.0.0.1:4200"
    state = run.state.name if run.state else "unknown"
    print(f"Flow run {run.name} ({run.id}): {state}, {run.total_run_time.total_seconds():.1f} s")
    states = Counter(t.state.name if t.state else "unknown" for t in task_runs)
    print(f"Task runs: {len(task_runs)} ({', '.join(f'{n} {k}' for k, n in sorted(states.items()))})")
    print(f"Prefect UI: {ui}")
    print(f"This flow run: {ui}/runs/flow-run/{run.id}")
    return 0 if run.state and run.state.is_completed() else 1


def show_newest_run(client: SyncPrefectClient, deployment: str) -> int:
    """Print the newest flow run of ``deployment`` (``<flow name>/<deployment name>``): :func:`show_run`.

    Returns:
        int: 0 when the newest run is Completed, else 1 (also when there is no run).

    Raises:
        prefect.exceptions.ObjectNotFound: no such deployment.
    """
    run = newest_run(client, deployment)
    if run is None:
        print(f"no flow runs of {deployment}")
        return 1
    return show_run(client, run)


def main() -> int:
    """Command line: ``--deployment <flow>/<deployment>`` (default ``tag/full``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployment", default="tag/full", help="<flow name>/<deployment name>")
    args = parser.parse_args()
    with get_client(sync_client=True) as client:
        return show_newest_run(client, args.deployment)


if __name__ == "__main__":
    sys.exit(main())
