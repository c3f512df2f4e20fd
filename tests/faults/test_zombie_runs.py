"""Zombie flow runs: a run whose process died with its worker is marked Crashed, then retried.

A real Prefect server, the automation installed by ``python deployments/automations.py``
(Prefect's "Detect zombie flows" recipe, https://docs.prefect.io/v3/advanced/detect-zombie-flows),
two real process workers on two pools, and two runs of a small probe flow
(``prefect_cluster.zombie_probe``), "dead" and "alive", deployed with the job variables of
``prefect.yaml`` (the 30 s heartbeat; the workers themselves run with Prefect's default,
180 s). Both runs are held after their first step. The worker of "dead" is SIGKILLed with
its flow-run process, as a lost machine would be: nobody is left to report the run's end, so
only the heartbeat automation can mark it Crashed (a new worker on its pool does not).
"alive" keeps beating and must outlive the window. Then ``prefect flow-run retry`` resumes
"dead" to Completed on the new worker.

Killing only the flow-run process is not a zombie: its worker reports the run Crashed at once
("Process exited with status code: -9"), heartbeats or not.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prefect_cluster import PROJECT_ROOT, Stack, wait_until  # noqa: E402

HEARTBEAT_S = 30  # Prefect's minimum (and prefect.yaml's value)
WINDOW_S = 45  # TAG_ZOMBIE_AFTER_S here: a heartbeat interval + 15 s
# Crashed comes WINDOW_S after the last heartbeat plus: up to 5 s until the server's next
# proactive evaluation (PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY), ~1 s for the action
# service to set the state, and what a loaded 2-core machine adds to both (measured here:
# 0.4-1.9 s past the window in four runs).
SLACK_S = 15


def _load_automations():
    """``deployments/automations.py`` as a module (``deployments/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("tag_automations", PROJECT_ROOT / "deployments" / "automations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prefect_yaml_job_variables() -> dict[str, dict]:
    """``{deployment name: job variables}`` of ``prefect.yaml``."""
    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    return {d["name"]: d["work_pool"].get("job_variables") or {} for d in spec["deployments"]}


def test_zombie_window_defaults_and_refusals():
    automations = _load_automations()
    assert automations.zombie_after_s({}, heartbeat_s=30) == 90
    assert automations.zombie_after_s({"TAG_ZOMBIE_AFTER_S": "120"}, heartbeat_s=30) == 120
    with pytest.raises(ValueError, match="too short"):
        automations.zombie_after_s({"TAG_ZOMBIE_AFTER_S": "30"}, heartbeat_s=30)
    with pytest.raises(ValueError, match="whole number"):
        automations.zombie_after_s({"TAG_ZOMBIE_AFTER_S": "1.5m"}, heartbeat_s=30)
    trigger = automations.zombie_automation(90).trigger
    assert trigger.within == timedelta(seconds=90) and trigger.posture == "Proactive"
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed"} <= trigger.expect
    # every deployment's runs beat often enough for the default window, whatever the worker's
    # settings (Prefect's default, 180 s, would get healthy runs marked Crashed)
    for name, job_variables in _prefect_yaml_job_variables().items():
        heartbeat_s = job_variables.get("env", {}).get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY")
        assert heartbeat_s is not None, f"prefect.yaml: deployment {name} sets no heartbeat"
        automations.check_window(automations.zombie_after_s({}, heartbeat_s=30), int(heartbeat_s))


def _install(stack: Stack, window_s: int) -> str:
    """``python deployments/automations.py`` as scripts/main.sh runs it: its one line of output."""
    env = stack.env | {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S), "TAG_ZOMBIE_AFTER_S": str(window_s)}
    out = subprocess.run(
        [sys.executable, "deployments/automations.py"], env=env, cwd=PROJECT_ROOT, capture_output=True,
        text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _zombie_automations(stack: Stack) -> list:
    with stack.client() as c:
        return c.read_automations_by_name(_load_automations().ZOMBIE_AUTOMATION_NAME)


def _progress(workdir: Path) -> list[str]:
    path = workdir / "progress"
    return path.read_text().split() if path.exists() else []


@pytest.fixture
def stack(tmp_path):
    stack = Stack(tmp_path / "prefect-home")
    stack.home.mkdir()
    try:
        stack.start_server(timeout_s=240)
        yield stack
    finally:
        stack.close()


@pytest.mark.slow
def test_killed_run_is_marked_crashed_by_heartbeat_automation_then_retry_completes(stack, tmp_path):
    from prefect.client.schemas.actions import WorkPoolCreate

    workdirs = {"dead": tmp_path / "dead", "alive": tmp_path / "alive"}
    with stack.client() as c:
        for name in workdirs:
            c.create_work_pool(WorkPoolCreate(name=f"zombie-{name}", type="process"))
    workers = {name: stack.start_worker(f"zombie-{name}", log=f"worker-{name}") for name in workdirs}

    # the installer (while the workers start): created, then updated in place, never a copy
    assert "created" in _install(stack, WINDOW_S + 30)
    assert "updated" in _install(stack, WINDOW_S)
    (automation,) = _zombie_automations(stack)
    assert automation.enabled and automation.trigger.within == timedelta(seconds=WINDOW_S)

    job_variables = _prefect_yaml_job_variables()["full"]
    deployments = {}
    for name, workdir in workdirs.items():
        workdir.mkdir()
        (workdir / "hold").touch()
        deployments[name] = stack.deploy_probe(name, f"zombie-{name}", workdir, job_variables=job_variables)
    runs = {name: stack.run(deployments[name], {}) for name in workdirs}

    # both runs Running, held after step 0, their first heartbeat stored by the server
    for name, run in runs.items():
        wait_until(lambda: _progress(workdirs[name]) == ["0"], 240, f"run {name} to reach step 0", every_s=0.5)
        wait_until(lambda: stack.heartbeats(run), 60, f"the first heartbeat of run {name}", every_s=0.5)
        assert stack.state(run).is_running()

    # the machine of run "dead" is lost: worker and flow-run process, SIGKILL
    flow_pid = int((workdirs["dead"] / "pids").read_text().split()[0])
    assert flow_pid in {p.pid for p in psutil.Process(workers["dead"].pid).children(recursive=True)}
    killed_at = time.time()
    killed = stack.kill_worker(workers["dead"])
    assert flow_pid in killed and workers["dead"].pid in killed

    # the machine comes back while the run is still a zombie: a new worker does not rescue it
    stack.start_worker("zombie-dead", log="worker-dead-2")
    # a later install leaves the automation as it is (what every scripts/main.sh run does)
    assert "unchanged" in _install(stack, WINDOW_S)

    crashed = stack.wait(runs["dead"], timeout_s=WINDOW_S + 120)
    kill_to_crashed_s = crashed.timestamp.timestamp() - killed_at
    beats = stack.heartbeats(runs["dead"])
    last_beat_to_crashed_s = (crashed.timestamp - beats[-1].occurred).total_seconds()
    assert crashed.is_crashed(), crashed
    assert f"No heartbeat for {WINDOW_S} s" in (crashed.message or ""), crashed.message
    assert all(b.occurred.timestamp() <= killed_at for b in beats)  # nothing beat after the kill
    # the automation fired on the window, counted from the last heartbeat
    assert WINDOW_S - 2 <= last_beat_to_crashed_s <= WINDOW_S + SLACK_S, last_beat_to_crashed_s
    assert kill_to_crashed_s <= WINDOW_S + SLACK_S

    # the user retries the crashed run and it resumes where it was
    (workdirs["dead"] / "hold").unlink()
    state, retry_s = stack.retry(runs["dead"], timeout_s=240)
    assert state.is_completed(), state
    assert _progress(workdirs["dead"]) == ["0", "1", "2"]  # step 0 was not run again
    pids = (workdirs["dead"] / "pids").read_text().split()
    assert len(pids) == 2 and pids[0] != pids[1]

    # the healthy run outlives a window after its first heartbeat: its later beats kept it alive
    first_alive = stack.heartbeats(runs["alive"])[0].occurred.timestamp()
    wait_until(lambda: time.time() > first_alive + WINDOW_S + SLACK_S, WINDOW_S + SLACK_S, "a window of run alive")
    assert stack.state(runs["alive"]).is_running(), stack.state(runs["alive"])
    alive_beats = [b.occurred.timestamp() for b in stack.heartbeats(runs["alive"])]
    assert len(alive_beats) >= 2 and alive_beats[1] - alive_beats[0] < WINDOW_S, alive_beats
    (workdirs["alive"] / "hold").unlink()
    assert stack.wait(runs["alive"], timeout_s=120).is_completed()
    assert len(_zombie_automations(stack)) == 1
    print(
        f"\n[zombie] heartbeat {HEARTBEAT_S} s, window {WINDOW_S} s: SIGKILL -> Crashed {kill_to_crashed_s:.1f} s "
        f"(last heartbeat -> Crashed {last_beat_to_crashed_s:.1f} s); flow-run retry -> Completed {retry_s:.1f} s"
    )
