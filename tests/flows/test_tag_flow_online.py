"""The ``tag`` flow with the online LLM backend against a local OpenAI-compatible server."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "llm"))

from fake_openai_server import CoraAnswers, FakeOpenAIServer, FaultPlan, ok_calls_per_node  # noqa: E402

from tag_pipeline.config import DatasetConfig, LLMConfig, LMConfig  # noqa: E402
from tag_pipeline.llm.config import OnlineLLMConfig  # noqa: E402

pytestmark = pytest.mark.slow
N = 40


@pytest.fixture(scope="module")
def answers(shared_data) -> CoraAnswers:
    return CoraAnswers.load(shared_data, nodes=range(N))


def test_online_llm_stage_retries_a_transient_failure_from_the_cache(
    prefect_harness, shared_data, answers, tmp_path, task_runs
):
    from flows.tag import tag

    # Node 3's first request gets a 500; with one HTTP attempt the stage fails, the task
    # retries, and only node 3 is asked again.
    server = FakeOpenAIServer(answers, rpm=3000, faults=FaultPlan({3: ["500"]}))
    base = server.start()
    try:
        llm = LLMConfig(
            backend="online",
            online=OnlineLLMConfig(
                model="openai/gpt-3.5-turbo", api_base=base, api_key_env=None, rpm=3000,
                max_attempts=1, timeout_s=10, cache_dir=tmp_path / "llm-cache",
            ),
        )
        params = dict(dataset=DatasetConfig(root=shared_data, subset=N), seeds=[0], llm=llm,
                      lake=str(tmp_path / "lake"), stop_after="llm")
        state = tag(**params, return_state=True)
        assert state.is_completed(), state.message
        query = [t for t in task_runs(state.state_details.flow_run_id) if t.name == "query-llm-online"]
        assert len(query) == 1 and query[0].run_count == 2  # failed once, retried once

        log = list(server.log)
        per_node = ok_calls_per_node(log)
        assert max(per_node.values()) == 1  # no answer paid for twice
        assert sum(1 for e in log if e["node"] == 3) == 2

        responses_dir = Path(state.result()["markdown"].split("llm responses: `")[1].split("`")[0])
        df = pl.read_parquet(responses_dir / "responses.parquet")
        assert df.height == N and set(df["source"]) == {"online:litellm"}
        ok = df.filter(pl.col("status") == "ok")
        assert ok.height >= N - 2 and (ok["ranked_labels"].list.len() >= 1).all()
        failed = df.filter(pl.col("status") == "failed")
        assert failed["error"].is_not_null().all()

        # Same parameters again: the lake and Prefect's cache answer, the server sees nothing.
        before = len(server.log)
        state2 = tag(**params, return_state=True)
        assert state2.is_completed()
        assert len(server.log) == before
    finally:
        server.stop()


def test_e_feature_uses_the_explanation_of_structured_answers(shared_data, answers, tmp_path):
    from tag_pipeline.datasets import materialize_graph
    from tag_pipeline.features.stage import feature_texts
    from tag_pipeline.llm.stage import materialize_responses

    server = FakeOpenAIServer(answers)
    base = server.start()
    try:
        dataset = DatasetConfig(root=shared_data, subset=20)
        graph = materialize_graph(dataset, [0], tmp_path / "lake")
        llm = LLMConfig(backend="online", online=OnlineLLMConfig(
            model="openai/gpt-3.5-turbo", api_base=base, api_key_env=None, rpm=6000, cache_dir=tmp_path / "c"))
        responses = materialize_responses(graph, dataset, llm, tmp_path / "lake")
    finally:
        server.stop()
    df = pl.read_parquet(responses / "responses.parquet").sort("node_id")
    auto = feature_texts(graph, responses, "E", LMConfig().e_text)
    raw = feature_texts(graph, responses, "E", "raw")
    assert auto == [e or "" for e in df["explanation"]]
    assert all(r.lstrip().startswith("{") for r in raw if r)  # structured answers are JSON


def test_too_many_failed_answers_fail_the_stage_and_allowed_ones_are_named(
    prefect_harness, shared_data, answers, tmp_path, task_runs
):
    """A failed answer becomes an empty E text and an all-padding P row: above
    ``llm.max_failed_fraction`` the LLM stage fails (once: a retry cannot help) naming the
    count and the nodes; below it the run completes and the report names the nodes."""
    from flows.tag import tag
    from tag_pipeline.config import GNNConfig

    n = 20
    server = FakeOpenAIServer(answers, rpm=3000, faults=FaultPlan({5: ["invalid"] * 3, 7: ["invalid"] * 3}))
    base = server.start()
    try:
        def params(max_failed_fraction: float) -> dict:
            llm = LLMConfig(
                backend="online", max_failed_fraction=max_failed_fraction,
                online=OnlineLLMConfig(
                    model="openai/gpt-3.5-turbo", api_base=base, api_key_env=None, rpm=3000, max_reasks=0,
                    timeout_s=10, cache_dir=tmp_path / "llm-cache",
                ),
            )
            return dict(dataset=DatasetConfig(root=shared_data, subset=n), features=["P"], models=["mlp"],
                        seeds=[0], llm=llm, gnn=GNNConfig(epochs=2, patience=2), lake=str(tmp_path / "lake"))

        state = tag(**params(0.01), return_state=True)
        assert state.is_failed()
        message = str(state.result(raise_on_failure=False))
        assert "2 of 20 nodes (10.00%) have a failed LLM answer" in message, message
        assert "node 5:" in message and "node 7:" in message
        (query,) = [t for t in task_runs(state.state_details.flow_run_id) if t.name == "query-llm-online"]
        assert query.run_count == 1  # not retried

        asked = len(server.log)
        state = tag(**params(0.1), return_state=True)  # 10% allowed: the same answers, from the cache
        assert state.is_completed(), state.message
        assert len(server.log) == asked
        markdown = state.result()["markdown"]
        assert "**Nodes with a failed LLM answer** (empty E text, P row all padding): 5, 7" in markdown
    finally:
        server.stop()
