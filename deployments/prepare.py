"""Get the Prefect server ready for the main job: work pools, zombie automation, deployments.

One Python process for what ``scripts/main.sh`` used to start five for (two ``prefect
work-pool inspect``, ``deployments/automations.py``, ``prefect deploy --all``,
``deployments/show_run.py``); each of them paid Prefect's import, 2-3 s on a busy 2-core
machine. Against the server named by ``PREFECT_API_URL`` it

1. creates the process work pools that ``prefect.yaml`` names (and any ``--pool``) if missing;
2. installs or updates the zombie-run automation (:mod:`deployments.automations`, the
   automation's source of truth);
3. runs ``prefect --no-prompt deploy --all`` only when something it deploys changed: the
   sha256 of ``prefect.yaml``, ``flows/*.py`` and the config models' source
   (every ``config.py`` and ``*_config.py`` under ``tag_pipeline``, and the methods' registry:
   the deployments' parameter schema), the environment variables ``prefect.yaml`` templates (``{{ $TAG_PROJECT_DIR }}``),
   Prefect's and pydantic's versions and the API URL differ from the record of the last
   deploy (``$PREFECT_HOME/deploy-stamp.json``), or a deployment of that record is gone from
   the server (a wiped database) or was changed there since (a UI edit; what ``prefect
   deploy`` would have reverted);
4. with ``--run``, runs ``prefect deployment run <name> --watch`` in this same process (the
   Prefect CLI itself, so every option and message is Prefect's) and prints the flow run's
   report (:func:`deployments.show_run.show_run`).

It prints one line per thing it created or changed, and one short line per step it skipped,
saying why.

    python deployments/prepare.py                                  # steps 1-3
    python deployments/prepare.py --force-deploy                   # deploy even if nothing changed
    python deployments/prepare.py --run tag/full -- --param seeds='[0]'   # then run tag/full
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import httpx  # noqa: E402
import prefect  # noqa: E402
import pydantic  # noqa: E402
from prefect.client.orchestration import SyncPrefectClient, get_client  # noqa: E402
from prefect.client.schemas.actions import WorkPoolCreate  # noqa: E402
from prefect.client.schemas.filters import (  # noqa: E402
    DeploymentFilter,
    DeploymentFilterId,
    DeploymentFilterName,
    FlowFilter,
    FlowFilterId,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError  # noqa: E402
from prefect.settings import get_current_settings  # noqa: E402

from deployments.automations import (  # noqa: E402
    ZOMBIE_AUTOMATION_NAME,
    heartbeat_frequency_s,
    install_zombie_automation,
    zombie_after_s,
)
from deployments.show_run import newest_run, show_run  # noqa: E402

#: What ``prefect deploy --all`` turns into deployments, relative to the project: the spec,
#: the flows it loads (name, entrypoints) and the models of the flow's parameters (the
#: deployments' parameter schema). Tasks and the library run in the worker's flow-run
#: process, read from the checkout at run time: a change there needs no redeploy.
DEPLOY_SOURCES: tuple[str, ...] = ("prefect.yaml", "flows/*.py", "tag_pipeline/**/config.py", "tag_pipeline/**/*_config.py",
                                  "tag_pipeline/methods/*.py")
RECORD_NAME = "deploy-stamp.json"
"""The record of the last deploy, in ``$PREFECT_HOME``."""
#: What a deployment is, as ``prefect deploy`` sets it: the server's own bookkeeping (``updated``,
#: ``last_polled``, ``status``, ``paused``, schedules' ids) is left out of its fingerprint.
FINGERPRINT_FIELDS: frozenset[str] = frozenset({
    "name", "flow_id", "entrypoint", "path", "version", "description", "tags", "parameters",
    "parameter_openapi_schema", "enforce_parameter_schema", "job_variables", "pull_steps",
    "work_pool_name", "work_queue_name", "concurrency_limit",
})
_TEMPLATED_ENV = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")
PREFIX = "[prepare]"


class DeployError(RuntimeError):
    """``prefect deploy --all`` failed, or did not leave the deployments of ``prefect.yaml``."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def deploy_inputs(
    project_dir: Path,
    api_url: str,
    environ: Mapping[str, str] | None = None,
    versions: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Everything a deploy of ``prefect.yaml`` depends on, by name.

    Args:
        project_dir (Path): the checkout holding ``prefect.yaml``.
        api_url (str): the Prefect API the deployments go to.
        environ (Mapping[str, str], optional): where the ``{{ $NAME }}`` variables that
            ``prefect.yaml`` templates are read (default ``os.environ``).
        versions (Mapping[str, str], optional): package versions that shape a deployment
            (default: Prefect's and pydantic's installed versions).

    Returns:
        dict[str, str]: ``{relative path: sha256 of the file}`` for :data:`DEPLOY_SOURCES`,
        ``{"$NAME": value}`` for each templated variable (``""`` when unset),
        ``{"PREFECT_API_URL": api_url}`` and ``{"<package> version": version}``.

    Raises:
        FileNotFoundError: no ``prefect.yaml`` in ``project_dir``.
    """
    environ = os.environ if environ is None else environ
    if versions is None:
        versions = {"prefect": prefect.__version__, "pydantic": pydantic.VERSION}
    spec = (project_dir / "prefect.yaml").read_bytes()
    inputs: dict[str, str] = {}
    for pattern in DEPLOY_SOURCES:
        for path in sorted(project_dir.glob(pattern)):
            inputs[path.relative_to(project_dir).as_posix()] = _sha256(path.read_bytes())
    for name in sorted(set(_TEMPLATED_ENV.findall(spec.decode()))):
        inputs[f"${name}"] = environ.get(name, "")
    inputs["PREFECT_API_URL"] = api_url
    inputs.update({f"{package} version": version for package, version in versions.items()})
    return inputs


def stamp_of(inputs: Mapping[str, str]) -> str:
    """One sha256 over :func:`deploy_inputs` (order-independent)."""
    return _sha256(json.dumps(dict(inputs), sort_keys=True).encode())


def changed_inputs(before: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """Names of the inputs added, removed or changed between two :func:`deploy_inputs`, sorted."""
    return sorted(name for name in before.keys() | now.keys() if before.get(name) != now.get(name))


def deployment_fingerprint(deployment: Any) -> str:
    """sha256 of what ``prefect deploy`` set on a deployment (:data:`FINGERPRINT_FIELDS`).

    Args:
        deployment: a deployment read from the API (a pydantic model) or its ``model_dump``.

    Returns:
        str: the fingerprint; equal for two reads of an unchanged deployment, whatever the
        server updated in between (last poll, status, timestamps).
    """
    fields = deployment if isinstance(deployment, Mapping) else deployment.model_dump(mode="json")
    kept = {k: v for k, v in fields.items() if k in FINGERPRINT_FIELDS}
    return _sha256(json.dumps(kept, sort_keys=True, default=str).encode())


def redeploy_reason(record: Mapping[str, Any] | None, inputs: Mapping[str, str], on_server: Mapping[str, str]) -> str | None:
    """Why ``prefect.yaml`` must be deployed again, or ``None`` when the server has it as deployed.

    Args:
        record (Mapping, optional): the record of the last deploy (:func:`read_record`):
            ``{"inputs": {...}, "deployments": {label: {"id", "fingerprint"}}}``.
        inputs (Mapping[str, str]): :func:`deploy_inputs` now.
        on_server (Mapping[str, str]): ``{deployment id: fingerprint}`` of the record's
            deployments as the server has them now; an id missing here is gone.

    Returns:
        str | None: a short reason, or ``None``.
    """
    if not record or not record.get("deployments"):
        return f"no record of an earlier deploy ($PREFECT_HOME/{RECORD_NAME})"
    changed = changed_inputs(record.get("inputs", {}), inputs)
    if changed:
        return f"{', '.join(changed)} changed since the last deploy"
    gone = [label for label, d in record["deployments"].items() if d.get("id") not in on_server]
    if gone:
        return f"{', '.join(gone)} not on the server (its database was reset or the deployment deleted)"
    edited = [label for label, d in record["deployments"].items() if on_server[d["id"]] != d.get("fingerprint")]
    if edited:
        return f"{', '.join(edited)} changed on the server since the last deploy"
    return None


def read_record(path: Path) -> dict[str, Any] | None:
    """The record of the last deploy, or ``None`` when it is missing or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(path: Path, record: Mapping[str, Any]) -> None:
    """Write the record atomically (a temporary file renamed over the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def deployment_specs(project_dir: Path) -> list[dict[str, Any]]:
    """The ``deployments`` of ``prefect.yaml``: ``[{"name", "entrypoint", "work_pool"}]``."""
    spec = yaml.safe_load((project_dir / "prefect.yaml").read_text()) or {}
    return [
        {"name": d["name"], "entrypoint": d.get("entrypoint"), "work_pool": (d.get("work_pool") or {}).get("name")}
        for d in spec.get("deployments") or []
    ]


def ensure_work_pools(client: SyncPrefectClient, names: Sequence[str]) -> list[str]:
    """Create the process work pools among ``names`` that do not exist; return those created.

    A pool created meanwhile by someone else (a worker starting creates its own) counts as
    existing.
    """
    wanted = list(dict.fromkeys(names))
    existing = {p.name for p in client.read_work_pools(work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=wanted)))}
    created = []
    for name in wanted:
        if name in existing:
            continue
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            created.append(name)
        except ObjectAlreadyExists:
            pass
    return created


def server_fingerprints(client: SyncPrefectClient, ids: Sequence[str]) -> dict[str, str]:
    """``{id: fingerprint}`` of the deployments among ``ids`` that the server has."""
    valid = []
    for i in ids:  # a hand-edited record may hold anything: such an id is simply not found
        try:
            valid.append(UUID(str(i)))
        except ValueError:
            pass
    if not valid:
        return {}
    found = client.read_deployments(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=valid)))
    return {str(d.id): deployment_fingerprint(d) for d in found}


def read_deployed(client: SyncPrefectClient, specs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """The server's deployments of ``specs`` (after a deploy): ``{"flow/name": {"id", "fingerprint"}}``.

    A deployment is matched by name and entrypoint (the most recently updated one when an
    older flow of another name left one behind).

    Raises:
        DeployError: a deployment of ``specs`` is not on the server.
    """
    found = client.read_deployments(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[s["name"] for s in specs]))
    )
    flows = {f.id: f.name for f in client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=[d.flow_id for d in found])))}
    deployed: dict[str, dict[str, str]] = {}
    for spec in specs:
        matches = [d for d in found if d.name == spec["name"] and d.entrypoint == spec["entrypoint"]]
        if not matches:
            raise DeployError(f"deployment {spec['name']!r} ({spec['entrypoint']}) is not on the server after the deploy")
        newest = max(matches, key=lambda d: d.updated or d.created)
        label = f"{flows.get(newest.flow_id, '?')}/{newest.name}"
        deployed[label] = {"id": str(newest.id), "fingerprint": deployment_fingerprint(newest)}
    return deployed


def prefect_executable() -> str:
    """The ``prefect`` command beside this Python (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "prefect"
    return str(beside) if beside.exists() else (shutil.which("prefect") or "prefect")


def run_prefect_deploy(project_dir: Path, log_path: Path) -> int:
    """``prefect --no-prompt deploy --all`` in ``project_dir``, output to ``log_path``; its exit status."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        return subprocess.run(
            [prefect_executable(), "--no-prompt", "deploy", "--all"], cwd=project_dir, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        ).returncode


def prepare(
    client: SyncPrefectClient,
    project_dir: Path,
    prefect_home: Path,
    api_url: str,
    log_dir: Path,
    extra_pools: Sequence[str] = (),
    force_deploy: bool = False,
    say: Callable[[str], None] = print,
) -> None:
    """Work pools, zombie automation, deployments (steps 1-3 of the module docstring).

    Args:
        client (SyncPrefectClient): an open client of the server at ``api_url``.
        project_dir (Path): the checkout holding ``prefect.yaml``.
        prefect_home (Path): where the record of the last deploy lives.
        api_url (str): the API URL (part of the deploy inputs).
        log_dir (Path): where ``deploy.log`` goes.
        extra_pools (Sequence[str]): more process pools to ensure (the worker's).
        force_deploy (bool): deploy even when the record says nothing changed.
        say (Callable[[str], None]): where the lines go (default ``print``).

    Raises:
        ValueError, RuntimeError: bad zombie window or heartbeat settings
            (:func:`deployments.automations.zombie_after_s`).
        DeployError: the deploy failed (the message holds its log).
        httpx.HTTPError, PrefectHTTPStatusError: the API failed.
    """
    specs = deployment_specs(project_dir)
    pools = [s["work_pool"] for s in specs if s["work_pool"]] + list(extra_pools)
    in_place = []
    created = ensure_work_pools(client, pools)
    for name in created:
        say(f"{PREFIX} created process work pool {name}")
    if not created:
        in_place.append(f"work pools {', '.join(dict.fromkeys(pools))}")

    heartbeat_s = heartbeat_frequency_s()
    within_s = zombie_after_s(heartbeat_s=heartbeat_s)
    automation_id, done = install_zombie_automation(within_s, client)
    if done == "unchanged":
        in_place.append(f"zombie automation ({within_s} s without a heartbeat -> Crashed)")
    else:
        say(
            f"{PREFIX} zombie automation {ZOMBIE_AUTOMATION_NAME!r} {done} ({automation_id}): a flow run "
            f"without a heartbeat for {within_s} s is marked Crashed (heartbeats every {heartbeat_s} s)"
        )
    if in_place:
        say(f"{PREFIX} already in place, left alone: {'; '.join(in_place)}")

    record_path = prefect_home / RECORD_NAME
    inputs = deploy_inputs(project_dir, api_url)  # before the deploy: an edit during it redeploys next time
    record = read_record(record_path)
    ids = [d.get("id") for d in (record or {}).get("deployments", {}).values()]
    reason = "--force-deploy" if force_deploy else redeploy_reason(record, inputs, server_fingerprints(client, ids))
    if reason is None:
        when = record.get("deployed_at", "?")
        say(
            f"{PREFIX} not redeploying prefect.yaml: it, flows/*.py and the config models are unchanged since "
            f"its deploy of {when}, and its {len(record['deployments'])} deployments are intact on the server"
        )
        return
    log_path = log_dir / "deploy.log"
    say(f"{PREFIX} deploying prefect.yaml ({reason}; log: {log_path})")
    if run_prefect_deploy(project_dir, log_path) != 0:
        raise DeployError(f"prefect deploy --all failed:\n{log_path.read_text(errors='replace')}")
    deployed = read_deployed(client, specs)
    write_record(record_path, {
        "stamp": stamp_of(inputs), "inputs": inputs, "deployments": deployed,
        "deployed_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    })
    say(f"{PREFIX} deployed {', '.join(deployed)}")


def run_and_show(client: SyncPrefectClient, deployment: str, run_args: Sequence[str]) -> int:
    """``prefect deployment run <deployment> --watch <run_args>`` in this process, then its report.

    The Prefect CLI's own entry point runs the command (same options, output and exit
    status as the ``prefect`` command); the report is :func:`deployments.show_run.show_run`'s,
    printed whatever the run's outcome, unless the command created no flow run (bad
    options): then the previous run's report would mislead, and a line says so.

    Args:
        client (SyncPrefectClient): an open client of the server.
        deployment (str): ``<flow name>/<deployment name>``.
        run_args (Sequence[str]): more options of ``prefect deployment run``.

    Returns:
        int: the exit status of ``prefect deployment run`` (130 when interrupted).
    """
    from prefect.cli import app as prefect_cli

    before = newest_run(client, deployment)
    print(f"{PREFIX} prefect deployment run {deployment} --watch {' '.join(run_args)}".rstrip(), flush=True)
    argv = sys.argv
    sys.argv = ["prefect", "deployment", "run", deployment, "--watch", *run_args]
    try:
        prefect_cli()
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        print(f"\n{PREFIX} interrupted: the flow run goes on on the worker (`prefect flow-run cancel <id>` stops it)")
        return 130
    finally:
        sys.argv = argv
        sys.stdout.flush()
    try:
        run = newest_run(client, deployment)
        if run is None or (before is not None and run.id == before.id):
            print(f"{PREFIX} no new flow run of {deployment} was created: no report to show")
        else:
            show_run(client, run)
    except (httpx.HTTPError, PrefectHTTPStatusError, ObjectNotFound) as exc:  # the run's status decides
        print(f"{PREFIX} could not read the report of {deployment}: {exc}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; arguments after ``--`` go to ``prefect deployment run`` (with ``--run``).

    Returns:
        int: 0 ready; 1 the API or the deploy failed; 2 bad settings (zombie window,
        heartbeats off, no ``PREFECT_API_URL``); with ``--run``, the run's exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    own, run_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", action="append", default=[], help="another process work pool to create if missing")
    parser.add_argument("--force-deploy", action="store_true", help="deploy prefect.yaml even when nothing changed")
    parser.add_argument("--log-dir", type=Path, default=None, help="where deploy.log goes (default $PREFECT_HOME/logs)")
    parser.add_argument("--run", metavar="FLOW/DEPLOYMENT", help="then run it (--watch) and print its report")
    args = parser.parse_args(own)
    if run_args and not args.run:
        parser.error("arguments after -- go to `prefect deployment run`: give --run")

    settings = get_current_settings()
    api_url = settings.api.url
    if not api_url:
        print(f"{PREFIX} PREFECT_API_URL is not set: name the server to prepare (scripts/main.sh sets it)", file=sys.stderr)
        return 2
    prefect_home = Path(settings.home).expanduser()
    try:
        with get_client(sync_client=True) as client:
            try:
                prepare(
                    client, PROJECT_ROOT, prefect_home, api_url, args.log_dir or prefect_home / "logs",
                    extra_pools=args.pool, force_deploy=args.force_deploy,
                )
            except DeployError as exc:
                print(f"{PREFIX} {exc}", file=sys.stderr)
                return 1
            except (ValueError, RuntimeError) as exc:
                print(f"{PREFIX} {exc}", file=sys.stderr)
                return 2
            return run_and_show(client, args.run, run_args) if args.run else 0
    except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
        print(f"{PREFIX} the Prefect API at {api_url} failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
