"""The LLM stage fanned out over a local Dask cluster of 2 worker processes.

The ``tag`` flow with ``scale_out.runner="dask"`` runs one ``llm-shard`` task per shard of
nodes in a subflow (``llm-shards``) against a local OpenAI-compatible server; the shard tasks
fill the answer cache, and ``query-llm`` then commits the responses from the cache alone.
Every distinct text must be asked exactly once, by worker processes only, and the committed
answers must equal those of the in-process stage.

226 nodes in shards of 64: 4 shards, and two texts of the last shard (nodes 222 and 225)
repeat texts of earlier shards (nodes 49 and 116), so the shards must not ask them again.
"""

from __future__ import annotations

import os
import socket
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "llm"))

from fake_openai_server import CoraAnswers, FakeOpenAIServer  # noqa: E402

from tag_pipeline.config import DatasetConfig, LLMConfig, ScaleOutConfig  # noqa: E402
from tag_pipeline.llm.config import OnlineLLMConfig  # noqa: E402

pytestmark = pytest.mark.slow
N, SHARD = 226, 64
RPM = 60_000.0  # global client limit (requests/min): each of the 2 shard workers gets half


@pytest.fixture(scope="module")
def answers(shared_data) -> CoraAnswers:
    return CoraAnswers.load(shared_data, nodes=range(N))


def _llm(base: str, cache: Path) -> LLMConfig:
    # max_reasks=0: a recorded answer naming no class (nodes 65, 86) fails once, so the
    # server sees exactly one request per distinct text
    return LLMConfig(backend="online", online=OnlineLLMConfig(
        model="openai/gpt-3.5-turbo", api_base=base, api_key_env=None, rpm=RPM, max_concurrency=8,
        max_reasks=0, timeout_s=30, cache_dir=cache,
    ))


def _answers(responses_dir: Path) -> pl.DataFrame:
    df = pl.read_parquet(responses_dir / "responses.parquet").sort("node_id")
    return df.select("node_id", "status", "ranked_labels", "explanation", "error")


def test_dask_fan_out_asks_each_text_once_and_equals_local(
    prefect_harness, shared_data, answers, tmp_path, task_states
):
    pytest.importorskip("prefect_dask")
    from flows.tag import tag
    from tag_pipeline import lake
    from tag_pipeline.datasets import materialize_graph
    from tag_pipeline.llm.stage import materialize_responses

    texts = answers.texts[:N]  # stripped, as the answer cache keys them
    first = {}
    for i, t in enumerate(texts):
        first.setdefault(t, i)
    unique = len(first)
    assert unique == N - 2  # the two repeated texts

    server = FakeOpenAIServer(answers)
    base = server.start()
    try:
        dataset = DatasetConfig(root=shared_data, subset=N)
        params = {
            "dataset": dataset, "seeds": [0], "llm": _llm(base, tmp_path / "cache"), "lake": str(tmp_path / "lake"),
            "scale_out": ScaleOutConfig(runner="dask", n_workers=2, llm_shard_size=SHARD), "stop_after": "llm",
        }
        state = tag(**params, return_state=True)
        assert state.is_completed(), state.message
        out = state.result()

        log = server.log
        assert len(log) == unique  # every distinct prompt asked once in total
        assert Counter(e["node"] for e in log) == Counter(set(first.values()))

        shards = out["fan_out"]["llm"]
        assert sorted(s["shard"] for s in shards) == [0, 1, 2, 3]
        assert sum(s["requests"] for s in shards) == unique and sum(s["texts"] for s in shards) == unique
        assert shards[-1]["nodes"] == N - 3 * SHARD and shards[-1]["texts"] == N - 3 * SHARD - 2
        workers = {s["worker"] for s in shards if s["requests"]}
        assert len(workers) >= 2, workers  # answers from more than one worker process
        assert f"{socket.gethostname()}:{os.getpid()}" not in workers  # none from the flow's process
        assert all(s["limits"] == {"rpm": RPM / 2, "tpm": None, "max_concurrency": 4} for s in shards)

        responses = Path(out["markdown"].split("llm responses: `")[1].split("`")[0])
        backend = lake.read_artifact(responses).manifest["stats"]["backend"]
        assert backend["calls"] == 0 and backend["cache_hits"] == N  # committed from the cache alone

        # The in-process stage (what query-llm runs with runner="local"), own cache and lake
        server.reset_log()
        local_lake = tmp_path / "local"
        graph = materialize_graph(dataset, [0], local_lake)
        local = materialize_responses(graph, dataset, _llm(base, tmp_path / "local-cache"), local_lake)
        assert len(server.log) == unique
        ours, ref = _answers(responses), _answers(local)
        assert ours.height == N and ours.equals(ref)
        assert ours.filter(pl.col("status") == "ok").height == N - 2  # nodes 65, 86 name no class

        # Same parameters again: nothing is asked, nothing fanned out.
        server.reset_log()
        state2 = tag(**params, return_state=True)
        assert state2.is_completed(), state2.message
        assert server.log == [] and state2.result()["fan_out"]["llm"] == []
    finally:
        server.stop()

    states = task_states(state.state_details.flow_run_id)
    assert states["query-llm-online"] == "Completed" and states["plan-llm-shards-online"] == "Completed"
