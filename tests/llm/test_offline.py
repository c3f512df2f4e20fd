"""Tests for tag_pipeline.llm.offline.

The batching, re-ask, failure and cache logic runs everywhere against a stand-in engine with
``vllm.LLM.chat``'s signature. The vLLM tests skip themselves without vLLM and CUDA; the
generation test also needs a local instruction-tuned model in ``$TAG_VLLM_MODEL`` (no model hub
is reachable from the machines that run the tests).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import polars as pl
import pytest

from tag_pipeline.llm import offline
from tag_pipeline.llm.config import OfflineLLMConfig
from tag_pipeline.llm.schema import answer_model
from tag_pipeline.llm.store import validate_responses

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: not on sys.path
from vllm_stub import Completion, Output  # noqa: E402

CLASSES = ["Case_Based", "Neural_Networks", "Theory"]
TEXTS = {
    0: "Title good one. : backprop networks",
    1: "Title fixable. : a theory paper",
    2: "Title hopeless. : nothing to see",
    3: "Title long. : a very long answer",
    4: "Title good one. : backprop networks",  # same text as node 0: generated once
    5: "Title second good. : cases and retrieval",
}




class StubEngine:
    """Answers by the node text in the prompt, like a model would (``vllm.LLM.chat`` signature)."""

    def __init__(self) -> None:
        self.calls: list[list[list[dict]]] = []
        self.sampling = None

    def chat(self, messages, sampling_params=None, use_tqdm=True):
        self.calls.append([list(m) for m in messages])
        self.sampling = sampling_params
        return [self._answer(conversation) for conversation in messages]

    @staticmethod
    def _answer(conversation: list[dict]) -> Output:
        user = conversation[1]["content"]
        reasked = len(conversation) > 2
        if "good one" in user:
            body = {"ranked_labels": ["Neural_Networks", "Theory"], "explanation": "Backprop."}
        elif "second good" in user:
            body = {"ranked_labels": ["case based"], "explanation": "Retrieval of cases."}
        elif "fixable" in user:
            labels = ["Theory"] if reasked else ["Theory", "Theory"]
            body = {"ranked_labels": labels, "explanation": "Proofs."}
        elif "hopeless" in user:
            body = {"ranked_labels": [], "explanation": "None fits."}
        else:
            return Output([Completion('{"ranked_labels": ["Theory"], "expla', "length")])
        return Output([Completion(json.dumps(body))])


@pytest.fixture
def stub_sampling(monkeypatch):
    """Stand in for vllm.SamplingParams; record the schema the backend asks to enforce."""
    seen = {}

    def fake(cfg, schema):
        seen["schema"] = schema
        return ("sampling-params", cfg.max_tokens)

    monkeypatch.setattr(offline, "structured_sampling_params", fake)
    return seen


def _cfg(tmp_path, **overrides) -> OfflineLLMConfig:
    return OfflineLLMConfig(**{"model_path": "local/model", "batch_size": 3, "max_reasks": 1,
                               "cache_dir": tmp_path / "cache", **overrides})


def test_batches_reasks_and_failures(tmp_path, stub_sampling):
    engine = StubEngine()
    nodes = sorted(TEXTS.items())
    df, stats = offline.answer_nodes_offline(nodes, "cora", CLASSES, _cfg(tmp_path), engine=engine,
                                             progress=False)
    validate_responses(df, len(TEXTS), len(CLASSES), "offline run")
    assert stub_sampling["schema"] == answer_model(CLASSES, 3).model_json_schema()
    assert engine.sampling == ("sampling-params", 512)
    rows = {r["node_id"]: r for r in df.iter_rows(named=True)}
    assert rows[0]["ranked_labels"] == rows[4]["ranked_labels"] == [1, 2]
    assert rows[5]["ranked_labels"] == [0]  # "case based" normalised
    assert rows[1]["status"] == "ok" and rows[1]["ranked_labels"] == [2]
    assert rows[2]["status"] == "failed"
    assert rows[2]["error"].startswith("invalid answer after 2 attempts: ranked_labels")
    assert rows[3]["status"] == "failed" and "cut off at max_tokens=512" in rows[3]["error"]
    assert set(df["source"]) == {"offline:vllm"} and set(df["model"]) == {"local/model"}
    assert json.loads(rows[0]["raw_text"])["explanation"] == "Backprop."
    # 5 distinct texts in batches of 3: batch 1 (good, fixable, hopeless), its re-ask round
    # (fixable, hopeless), batch 2 (long, second good; a cut-off answer is not re-asked)
    assert [len(c) for c in engine.calls] == [3, 2, 2]
    reask = engine.calls[1][0]
    assert reask[-2]["role"] == "assistant" and reask[-1]["role"] == "user"
    assert "not valid" in reask[-1]["content"]
    assert stats["unique_texts"] == 5 and stats["batches"] == 2 and stats["reasks"] == 2
    assert (stats["ok"], stats["failed"], stats["failed_invalid"]) == (4, 2, 1)
    assert rows[1]["prompt_tokens"] == 200 and rows[1]["completion_tokens"] == 40  # both attempts


def test_second_run_is_served_from_cache(tmp_path, stub_sampling, monkeypatch):
    nodes = sorted(TEXTS.items())
    cfg = _cfg(tmp_path)
    df1, _ = offline.answer_nodes_offline(nodes, "cora", CLASSES, cfg, engine=StubEngine(),
                                          progress=False)

    def no_engine(cfg):
        raise AssertionError("the engine was loaded although every answer is cached")

    monkeypatch.setattr(offline, "load_engine", no_engine)
    df2, stats = offline.answer_nodes_offline(nodes, "cora", CLASSES, cfg, progress=False)
    assert stats["cache_hits"] == len(TEXTS) and stats["generated"] == 0
    assert df2.equals(df1)
    # reask_failed generates only the cached failures again
    engine = StubEngine()
    df3, stats = offline.answer_nodes_offline(nodes, "cora", CLASSES,
                                              cfg.model_copy(update={"reask_failed": True}),
                                              engine=engine, progress=False)
    assert stats["cache_hits"] == 4 and [len(c) for c in engine.calls] == [2, 1]
    assert df3.filter(pl.col("status") == "ok").height == 4


def _vllm_with_cuda():
    vllm = pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return vllm


@pytest.mark.gpu
def test_structured_sampling_params_with_vllm(tmp_path):
    _vllm_with_cuda()
    schema = answer_model(CLASSES, 3).model_json_schema()
    params = offline.structured_sampling_params(_cfg(tmp_path), schema)
    structured = getattr(params, "structured_outputs", None)
    structured = structured or getattr(params, "guided_decoding", None)
    assert structured is not None and structured.json == schema
    assert params.max_tokens == 512 and params.temperature == 0.0


@pytest.mark.gpu
def test_generation_with_a_local_model(tmp_path):
    _vllm_with_cuda()
    model_path = os.environ.get("TAG_VLLM_MODEL")
    if not model_path:
        pytest.skip("set TAG_VLLM_MODEL to a local instruction-tuned model to run vLLM")
    cfg = _cfg(tmp_path, model_path=model_path, gpu_memory_utilization=0.5, max_model_len=4096)
    nodes = [(0, TEXTS[0]), (1, TEXTS[5])]
    df, stats = offline.answer_nodes_offline(nodes, "cora", CLASSES, cfg, progress=False)
    validate_responses(df, 2, len(CLASSES), "vllm run")
    for row in df.iter_rows(named=True):
        assert row["status"] == "ok" or row["error"], row
    assert stats["generated"] >= 2
