"""Shared fixtures: the real datasets, the embedding model offline, one Prefect harness."""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports prefect, litellm or huggingface: no network at run time.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$TAG_SHARED_DATA`` or ``../shared/data`` beside the project."""
    return Path(os.environ.get("TAG_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "cora" / "cora.zip").exists():
        pytest.skip(f"real datasets not found at {path} (set TAG_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect test server (SQLite in a temp dir) for the session, results in a temp dir."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: storage}):
        with prefect_test_harness(server_startup_timeout=120):
            yield storage


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread; avoids thread oversubscription on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _final_task_runs(flow_run_id, timeout_s: float = 30.0) -> list:
    """The flow run's task runs once the API shows every one in a final state.

    Task-run states reach the server as events, asynchronously: right after a flow returns
    the API may still show a task as Running for a moment.
    """
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if all(r.state and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)


@pytest.fixture(scope="session")
def task_states():
    """``task_states(flow_run_id) -> {task run name: state name}`` once all are final."""

    def states(flow_run_id, timeout_s: float = 30.0) -> dict[str, str]:
        return {r.name: r.state.name for r in _final_task_runs(flow_run_id, timeout_s)}

    return states


@pytest.fixture(scope="session")
def task_runs():
    """``task_runs(flow_run_id) -> [TaskRun]`` once all are final (run counts, states)."""
    return _final_task_runs


@pytest.fixture(scope="session")
def flow_run_artifacts():
    """``flow_run_artifacts(flow_run_id, kind) -> [data, ...]``: the data of the flow run's
    Prefect artifacts of one type (``"markdown"``, ``"progress"``, ``"table"``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    def read(flow_run_id, kind: str) -> list:
        with get_client(sync_client=True) as client:
            arts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=[kind])
                )
            )
        return [a.data for a in arts]

    return read


@pytest.fixture(scope="session")
def other_value():
    """``other_value(cls, name, value, overrides) -> a different valid value`` of a config field.

    For the key-field tests (tests/test_key_fields.py, tests/methods/test_method_keys.py):
    ``overrides[(class name, field)]`` where the field's type alone gives none, else one from
    the type (the other literal, ``not``, +1, +0.05, another path or string)."""
    from typing import Literal, get_args, get_origin

    def other(cls, name: str, value, overrides: dict):
        if (cls.__name__, name) in overrides:
            return overrides[cls.__name__, name]
        ann = cls.model_fields[name].annotation
        args = [a for a in get_args(ann) if a is not type(None)]
        if get_origin(ann) is Literal:
            return next(a for a in get_args(ann) if a != value)
        if value is None and args:
            ann = args[0]
        if ann is bool or isinstance(value, bool):
            return not value
        if isinstance(value, int) or ann is int:
            return (value or 1) + 1
        if isinstance(value, float) or ann is float:
            return round(value + 0.05 if value is not None and value < 0.9 else 0.25, 4)
        if isinstance(value, Path) or ann is Path:
            return Path("elsewhere/x")
        if isinstance(value, str) or ann is str:
            return f"{value}-other"
        raise AssertionError(f"{cls.__name__}.{name}: give an override value")

    return other
