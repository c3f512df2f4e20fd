"""Print the newest flow run of a deployment: its state, its markdown report and UI links.

Reads everything through the Prefect API (the server the main job started), so what it
prints is what the UI shows.

    python deployments/show_run.py --deployment tag/full
"""

from __future__ import annotations

import argparse
import sys

from prefect.client.orchestration import get_client
from collections import Counter

from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import PREFECT_UI_URL


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployment", default="tag/full", help="<flow name>/<deployment name>")
    args = parser.parse_args()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(args.deployment)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=1,
        )
        if not runs:
            print(f"no flow runs of {args.deployment}")
            return 1
        run = runs[0]
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


if __name__ == "__main__":
    sys.exit(main())
