"""``deployments/prepare.py``: when ``scripts/main.sh`` redeploys ``prefect.yaml``, and when not.

The deploy stamp must change exactly when something ``prefect deploy --all`` turns into a
deployment changes (``prefect.yaml``, ``flows/*.py``, the parameter models' source, the
variables ``prefect.yaml`` templates, the API URL, Prefect's version), and the record check
must send a redeploy when the server lost or changed a deployment. Pure functions on a
miniature project; one real-server test (slow) runs the script three times.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "tests" / "faults"))

from deployments import prepare  # noqa: E402

API = "http://127.0.0.1:4200/api"
VERSIONS = {"prefect": "3.9.1", "pydantic": "2.11.0"}
ENV = {"TAG_PROJECT_DIR": "/work/main", "HOME": "/root"}
MINI_YAML = """\
name: mini
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: "{{ $TAG_PROJECT_DIR }}"
deployments:
  - name: full
    entrypoint: flows/tag.py:tag
    work_pool: {name: tag-local}
"""
MINI_FILES = {
    "prefect.yaml": MINI_YAML,
    "flows/__init__.py": "",
    "flows/tag.py": "def tag(): ...\n",
    "tag_pipeline/config.py": "class GNNConfig: hidden = 128\n",
    "tag_pipeline/llm/config.py": "class OnlineLLMConfig: model = 'gpt-4o-mini'\n",
    "tag_pipeline/train.py": "def train(): ...\n",
    "tasks/train.py": "def train_gnn(): ...\n",
    "README.md": "# mini\n",
}


@pytest.fixture
def mini(tmp_path) -> Path:
    """A project with the files a deploy reads and some it does not."""
    for rel, text in MINI_FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def _inputs(project: Path, api: str = API, env=ENV, versions=VERSIONS) -> dict[str, str]:
    return prepare.deploy_inputs(project, api, env, versions)


def test_inputs_name_the_deployed_sources_and_templated_variables(mini):
    inputs = _inputs(mini)
    assert set(inputs) == {
        "prefect.yaml", "flows/__init__.py", "flows/tag.py", "tag_pipeline/config.py", "tag_pipeline/llm/config.py",
        "$TAG_PROJECT_DIR", "PREFECT_API_URL", "prefect version", "pydantic version",
    }
    assert inputs["$TAG_PROJECT_DIR"] == "/work/main"
    assert prepare.stamp_of(inputs) == prepare.stamp_of(_inputs(mini))


@pytest.mark.parametrize(
    "path, text",
    [
        ("tag_pipeline/train.py", "def train(): return 1\n"),  # library: read at run time
        ("tasks/train.py", "def train_gnn(): return 1\n"),
        ("README.md", "# changed\n"),
        ("tag_pipeline/notes.py", "x = 1\n"),  # a new library module
    ],
)
def test_stamp_ignores_what_a_deploy_does_not_read(mini, path, text):
    before = _inputs(mini)
    (mini / path).write_text(text)
    os.utime(mini / "flows" / "tag.py", (1, 1))  # an mtime alone is no change either
    assert prepare.stamp_of(_inputs(mini)) == prepare.stamp_of(before)
    assert prepare.changed_inputs(before, _inputs(mini)) == []


@pytest.mark.parametrize(
    "path, text",
    [
        ("prefect.yaml", MINI_YAML.replace("tag-local", "tag-gpu")),
        ("flows/tag.py", "def tag(seeds=[0]): ...\n"),
        ("flows/fanout.py", "def fan_out(): ...\n"),  # a new flow module
        ("tag_pipeline/config.py", "class GNNConfig: hidden = 256\n"),
        ("tag_pipeline/llm/config.py", "class OnlineLLMConfig: model = 'gpt-4.1'\n"),
    ],
)
def test_stamp_follows_every_deployed_source(mini, path, text):
    before = _inputs(mini)
    (mini / path).write_text(text)
    after = _inputs(mini)
    assert prepare.stamp_of(after) != prepare.stamp_of(before)
    assert prepare.changed_inputs(before, after) == [path]


def test_stamp_follows_api_url_templated_variables_and_prefect(mini):
    before = _inputs(mini)
    assert prepare.changed_inputs(before, _inputs(mini, api="http://127.0.0.1:4411/api")) == ["PREFECT_API_URL"]
    assert prepare.changed_inputs(before, _inputs(mini, env=ENV | {"TAG_PROJECT_DIR": "/tmp/w/main"})) == [
        "$TAG_PROJECT_DIR"
    ]
    assert prepare.changed_inputs(before, _inputs(mini, env=ENV | {"HOME": "/home/x"})) == []  # not templated
    assert prepare.changed_inputs(before, _inputs(mini, versions=VERSIONS | {"prefect": "3.10.0"})) == [
        "prefect version"
    ]
    assert prepare.stamp_of(_inputs(mini, api="http://127.0.0.1:4411/api")) != prepare.stamp_of(before)


def _model_modules(annotation, seen: set) -> set[str]:
    """Modules of the pydantic models inside a type annotation, recursively through fields."""
    modules = set()
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return modules
        seen.add(annotation)
        modules.add(annotation.__module__)
        for name, hint in typing.get_type_hints(annotation).items():
            if name in annotation.model_fields:
                modules |= _model_modules(hint, seen)
    for arg in typing.get_args(annotation):
        modules |= _model_modules(arg, seen)
    return modules


def test_real_project_stamp_covers_every_parameter_model_of_the_deployed_flow():
    """Moving a parameter model to a new module must not leave it out of the stamp."""
    from flows.tag import tag

    inputs = prepare.deploy_inputs(PROJECT_ROOT, API, {"TAG_PROJECT_DIR": str(PROJECT_ROOT)})
    assert {"prefect.yaml", "flows/tag.py", "$TAG_PROJECT_DIR"} <= set(inputs)
    hints = typing.get_type_hints(tag.fn)
    modules = set().union(*(_model_modules(hints[p], set()) for p in inspect.signature(tag.fn).parameters))
    assert modules, "the flow takes no pydantic models? then this test checks nothing"
    for module in modules:
        source = Path(sys.modules[module].__file__).resolve().relative_to(PROJECT_ROOT).as_posix()
        assert source in inputs, f"{module} defines a parameter model of tag but is not in the deploy stamp"


def _record(inputs, **deployments) -> dict:
    return {"inputs": inputs, "deployments": deployments, "deployed_at": "2025-01-01 00:00:00 UTC"}


def test_redeploy_reason(mini):
    inputs = _inputs(mini)
    record = _record(inputs, **{"tag/full": {"id": "a", "fingerprint": "fa"}, "tag/llm": {"id": "b", "fingerprint": "fb"}})
    assert prepare.redeploy_reason(record, inputs, {"a": "fa", "b": "fb"}) is None
    assert "no record" in prepare.redeploy_reason(None, inputs, {})
    assert "no record" in prepare.redeploy_reason(_record(inputs), inputs, {})
    assert prepare.redeploy_reason(record, inputs, {"a": "fa"}).startswith("tag/llm not on the server")
    assert prepare.redeploy_reason(record, inputs, {"a": "fa", "b": "edited"}).startswith(
        "tag/llm changed on the server"
    )
    (mini / "flows" / "tag.py").write_text("def tag(x=1): ...\n")
    assert prepare.redeploy_reason(record, _inputs(mini), {"a": "fa", "b": "fb"}) == (
        "flows/tag.py changed since the last deploy"
    )


def test_fingerprint_ignores_server_bookkeeping_not_what_deploy_sets():
    deployment = {
        "id": "a", "name": "full", "entrypoint": "flows/tag.py:tag", "parameters": {"seeds": [0, 1]},
        "updated": "2025-01-01T00:00:00Z", "last_polled": None, "status": "NOT_READY", "paused": False,
    }
    same = deployment | {"updated": "2025-02-02T00:00:00Z", "last_polled": "2025-02-02T00:00:00Z", "status": "READY"}
    assert prepare.deployment_fingerprint(same) == prepare.deployment_fingerprint(deployment)
    edited = deployment | {"parameters": {"seeds": [0]}}
    assert prepare.deployment_fingerprint(edited) != prepare.deployment_fingerprint(deployment)


def test_record_round_trip_and_unreadable_record(tmp_path):
    path = tmp_path / "home" / prepare.RECORD_NAME
    assert prepare.read_record(path) is None
    prepare.write_record(path, {"inputs": {"a": "1"}, "deployments": {}})
    assert prepare.read_record(path) == {"inputs": {"a": "1"}, "deployments": {}}
    assert [p.name for p in path.parent.iterdir()] == [prepare.RECORD_NAME]  # no temporary left
    path.write_text("{not json")
    assert prepare.read_record(path) is None


def test_arguments_after_double_dash_need_run():
    with pytest.raises(SystemExit) as exc:
        prepare.main(["--", "--param", "seeds=[0]"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_prepare_against_a_real_server_deploys_once_then_only_when_the_server_lost_a_deployment(tmp_path):
    """Runs of ``python deployments/prepare.py`` as ``scripts/main.sh`` starts it (no worker:
    the last one's flow run is refused by Prefect's CLI before it is created)."""
    from prefect_cluster import Stack

    stack = Stack(tmp_path / "prefect-home", env={"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"})
    stack.home.mkdir()

    def run(*args: str, status: int = 0) -> str:
        out = subprocess.run(
            [sys.executable, "deployments/prepare.py", "--pool", "tag-local", *args], env=stack.env,
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
        )
        assert out.returncode == status, out.stdout + out.stderr
        return out.stdout

    def server_state() -> tuple:
        with stack.client() as c:
            deployments = sorted(d.name for d in c.read_deployments())
            pools = sorted(p.name for p in c.read_work_pools())
            automations = [a.id for a in c.read_automations_by_name(prepare.ZOMBIE_AUTOMATION_NAME)]
        return deployments, pools, automations

    order = [s["name"] for s in prepare.deployment_specs(PROJECT_ROOT)]  # prefect.yaml's order
    names = sorted(order)
    try:
        stack.start_server(timeout_s=240)
        first = run()
        assert "created process work pool tag-local" in first and "created process work pool tag-gpu" in first
        assert "zombie automation" in first and " created (" in first
        assert "deploying prefect.yaml (no record of an earlier deploy" in first
        assert f"deployed {', '.join('tag/' + n for n in order)}" in first, first
        state = server_state()
        assert state[0] == names and state[1] == ["tag-gpu", "tag-local"] and len(state[2]) == 1

        second = run()
        assert "deploying prefect.yaml (" not in second and "created" not in second, second
        assert "not redeploying prefect.yaml" in second and "already in place, left alone: work pools" in second
        assert server_state() == state  # idempotent: nothing added, nothing replaced

        with stack.client() as c:  # as a wiped database would: the deployment is gone
            c.delete_deployment(c.read_deployment_by_name("tag/ensemble").id)
        third = run()
        assert "deploying prefect.yaml (tag/ensemble not on the server" in third, third
        assert server_state()[0] == names

        # --run: Prefect's own CLI in this process; a refused run shows no stale report
        refused = run("--run", "tag/full", "--", "--param", "no_such_parameter=1", status=1)
        assert "not found on the deployment" in refused and "no_such_parameter" in refused, refused
        assert "no new flow run of tag/full was created" in refused and "Flow run " not in refused, refused
    finally:
        stack.close()
