"""A real Prefect cluster for fault tests: server, process workers, CLI, flow runs.

``Stack`` starts ``prefect server start`` (SQLite in a temporary ``PREFECT_HOME``) and
``prefect worker start`` processes as the user would, each in its own session so that a
test can SIGKILL one with everything it started. Used by ``test_worker_and_server_faults.py``
(the project's deployments) and ``test_zombie_runs.py`` (the probe flow below).

``zombie_probe`` is a flow for the worker to run: it records its pid, appends one line per
step to a progress file, can be held between steps by a file, and resumes after the last
recorded step when retried.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
from prefect import flow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")
PROBE_ENTRYPOINT = "tests/faults/prefect_cluster.py:zombie_probe"  # relative to PROJECT_ROOT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str, every_s: float = 0.2):
    """Poll ``predicate`` every ``every_s`` seconds until it returns a truthy value.

    Returns:
        the first truthy value.

    Raises:
        TimeoutError: nothing truthy within ``timeout_s`` seconds (``what`` names the wait).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")


class Stack:
    """A Prefect server, the deployments of ``prefect.yaml`` and process workers.

    Args:
        home (Path): ``PREFECT_HOME`` of every process (database, logs ``<name>.log``).
        env (dict, optional): more environment for the server, the workers and the CLI
            (after the defaults; the caller's own ``PREFECT_*`` variables are dropped).
    """

    def __init__(self, home: Path, env: dict[str, str] | None = None):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.server: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        env_ = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env = env_ | {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "results"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "TAG_PROJECT_DIR": str(PROJECT_ROOT),
            "OMP_NUM_THREADS": "1",
        } | (env or {})

    @property
    def worker(self) -> subprocess.Popen | None:
        """The worker started last."""
        return self.workers[-1] if self.workers else None

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.home / f"{name}.log", "ab")
        return subprocess.Popen(
            [PREFECT, *args], env=self.env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def start_server(self, timeout_s: float = 180) -> None:
        self.server = self._spawn(
            "server", "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--analytics-off"
        )
        wait_until(self.healthy, timeout_s, "the Prefect server", every_s=0.5)

    def start_worker(self, pool: str = "tag-local", log: str = "worker") -> subprocess.Popen:
        """``prefect worker start --pool <pool> --type process``, logging to ``<log>.log``."""
        worker = self._spawn(log, "worker", "start", "--pool", pool, "--type", "process")
        self.workers.append(worker)
        return worker

    @staticmethod
    def _kill_tree(proc: subprocess.Popen | None) -> list[int]:
        """SIGKILL a process and every descendant (as a machine or container dying would)."""
        if proc is None or proc.poll() is not None:
            return []
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)
        return [p.pid for p in procs]

    def kill_worker(self, worker: subprocess.Popen | None = None) -> list[int]:
        """SIGKILL ``worker`` (default: the last started) and its flow-run processes: their pids."""
        return self._kill_tree(worker if worker is not None else self.worker)

    def kill_server(self) -> list[int]:
        return self._kill_tree(self.server)

    def cli(self, *args: str, timeout_s: float = 180) -> str:
        out = subprocess.run(
            [PREFECT, "--no-prompt", *args], env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True,
            timeout=timeout_s,
        )
        assert out.returncode == 0, f"prefect {' '.join(args)}: {out.stdout}\n{out.stderr}"
        return out.stdout

    def client(self):
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(api=self.url)

    def run(self, deployment: str, parameters: dict) -> str:
        """Create a flow run of ``deployment`` (``tag/full``); the worker picks it up."""
        with self.client() as c:
            dep = c.read_deployment_by_name(deployment)
            return str(c.create_flow_run_from_deployment(dep.id, parameters=parameters).id)

    def state(self, flow_run_id: str):
        with self.client() as c:
            return c.read_flow_run(flow_run_id).state

    def wait(self, flow_run_id: str, timeout_s: float = 420):
        """The flow run's final state (the server must be up)."""

        def final():
            s = self.state(flow_run_id)
            return s if s and s.is_final() else None

        return wait_until(final, timeout_s, f"flow run {flow_run_id} to finish", every_s=1.0)

    def retry(self, flow_run_id: str, timeout_s: float = 420):
        """``prefect flow-run retry``, then wait: ``(final state, seconds from retry to end)``."""
        start = time.monotonic()
        self.cli("flow-run", "retry", flow_run_id)
        state = self.wait(flow_run_id, timeout_s)
        return state, time.monotonic() - start

    def mark_crashed(self, flow_run_id: str) -> None:
        """What Prefect's zombie detection does to a run whose process died: state Crashed."""
        from prefect.states import Crashed

        with self.client() as c:
            c.set_flow_run_state(flow_run_id, Crashed(message="worker killed (test)"), force=True)

    def task_states(self, flow_run_id: str, timeout_s: float = 60) -> dict[str, str]:
        """``{task run name: state name}`` of the run's latest task runs, once all are final."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        def read():
            with self.client() as c:
                runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            latest: dict[str, object] = {}  # a killed attempt's task runs stay Running forever
            for r in sorted(runs, key=lambda r: r.created):
                latest[r.name] = r
            if latest and all(r.state and r.state.is_final() for r in latest.values()):
                return {name: r.state.name for name, r in latest.items()}
            return None

        return wait_until(read, timeout_s, f"task runs of {flow_run_id}", every_s=0.5)

    def deploy_probe(
        self, name: str, pool: str, workdir: Path, steps: int = 3, job_variables: dict | None = None
    ) -> str:
        """Deploy :func:`zombie_probe` from this checkout onto ``pool``: ``zombie-probe/<name>``.

        What ``prefect deploy`` would register for a flow in this directory, made through the
        API (no prefect.yaml is read or written). ``workdir`` and ``steps`` are the
        deployment's parameters; ``job_variables`` as in prefect.yaml (``{"env": {...}}``).
        """
        with self.client() as c:
            flow_id = c.create_flow_from_name(zombie_probe.name)
            c.create_deployment(
                flow_id=flow_id, name=name, work_pool_name=pool, entrypoint=PROBE_ENTRYPOINT,
                path=str(PROJECT_ROOT),
                pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_ROOT)}}],
                parameters={"workdir": str(workdir), "steps": steps}, enforce_parameter_schema=False,
                job_variables=job_variables,
            )
        return f"{zombie_probe.name}/{name}"

    def heartbeats(self, flow_run_id: str) -> list:
        """The ``prefect.flow-run.heartbeat`` events of a flow run the server stored, oldest first."""
        from prefect.events.filters import EventFilter, EventNameFilter, EventOrder, EventResourceFilter

        query = EventFilter(
            event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
            order=EventOrder.ASC,
        )
        with self.client() as c:
            return list(c.read_events(filter=query, limit=50).events)

    def close(self) -> None:
        for worker in self.workers:
            self.kill_worker(worker)
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self._kill_tree(self.server)


@flow(name="zombie-probe", persist_result=False)
def zombie_probe(workdir: str, steps: int = 3, step_s: float = 0.2) -> int:
    """Count to ``steps``, one line per step in ``<workdir>/progress``; resume when retried.

    Appends this process's pid to ``<workdir>/pids`` first. After each step it waits while
    ``<workdir>/hold`` exists (the test kills it there). A retried run starts after the last
    step in the progress file, so the file of a run killed and resumed reads ``0 1 ... steps-1``
    once each.

    Args:
        workdir (str): the folder of ``pids``, ``progress`` and ``hold``.
        steps (int): steps in all (default 3).
        step_s (float): seconds each step sleeps (default 0.2).

    Returns:
        int: the number of steps this attempt ran.
    """
    folder = Path(workdir)
    with (folder / "pids").open("a") as f:
        f.write(f"{os.getpid()}\n")
    progress = folder / "progress"
    done = len(progress.read_text().split()) if progress.exists() else 0
    for step in range(done, steps):
        time.sleep(step_s)
        with progress.open("a") as f:
            f.write(f"{step}\n")
        while (folder / "hold").exists():
            time.sleep(0.2)
    return steps - done
