"""Precise invalidation: a change re-runs exactly the stages it affects.

The ``tag`` flow (online LLM against the local OpenAI-compatible server of ``tests/llm``) on
the first 40 Cora nodes. An encoder change re-embeds E but asks the LLM nothing; a prompt
change (the top-k the prompt asks for) asks every node again and rebuilds what depends on the
answers. The GNN side is covered by ``tests/flows/test_tag_flow.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "llm"))

from fake_openai_server import CoraAnswers, FakeOpenAIServer  # noqa: E402

from tag_pipeline.config import DatasetConfig, LLMConfig, LMConfig  # noqa: E402
from tag_pipeline.llm.config import OnlineLLMConfig  # noqa: E402

pytestmark = pytest.mark.slow
N = 40


def _names(lake: Path, stage: str) -> set[str]:
    return {p.name for p in (lake / "cora" / stage).iterdir()}


def test_encoder_change_keeps_answers_prompt_change_reasks(prefect_harness, shared_data, tmp_path, task_states):
    from flows.tag import tag

    server = FakeOpenAIServer(CoraAnswers.load(shared_data, nodes=range(N)))
    base = server.start()
    lake = tmp_path / "lake"

    def llm(top_k: int) -> LLMConfig:
        return LLMConfig(backend="online", online=OnlineLLMConfig(
            model="openai/gpt-3.5-turbo", api_base=base, api_key_env=None, rpm=6000, timeout_s=10,
            top_k=top_k, cache_dir=tmp_path / "llm-cache",
        ))

    def run(top_k: int, max_length: int):
        state = tag(
            dataset=DatasetConfig(root=shared_data, subset=N), features=["E", "P"], seeds=[0], llm=llm(top_k),
            lm=LMConfig(max_length=max_length), lake=str(lake), stop_after="features", return_state=True,
        )
        assert state.is_completed(), state.message
        return task_states(state.state_details.flow_run_id)

    try:
        run(top_k=5, max_length=32)
        asked = {e["node"] for e in server.log}
        assert asked == set(range(N))
        llm_v1, features_v1 = _names(lake, "llm"), _names(lake, "features")
        assert len(llm_v1) == 1 and len(features_v1) == 2

        server.reset_log()
        states = run(top_k=5, max_length=48)  # encoder change
        assert server.log == []  # the LLM is not asked
        assert states["query-llm-online"] == states["build-P-top5"] == "Cached"
        assert states["embed-E"] == "Completed"
        assert _names(lake, "llm") == llm_v1
        assert len(_names(lake, "features") - features_v1) == 1  # a new E only

        server.reset_log()
        states = run(top_k=3, max_length=48)  # prompt change
        assert {e["node"] for e in server.log} == set(range(N))  # every node asked again
        assert states["query-llm-online"] == states["embed-E"] == states["build-P-top5"] == "Completed"
        assert len(_names(lake, "llm") - llm_v1) == 1
        assert len(_names(lake, "features")) == 5  # E and P of the new answers beside the old
    finally:
        server.stop()
