"""The LLM stage's fan-out pieces in one process: shards, split limits and budgets, the cache
as the checkpoint. The distributed run is tested in ``tests/flows/test_llm_scale_out.py``."""

from __future__ import annotations

import json
import os
import sys
import socket
from pathlib import Path

import polars as pl
import pytest

from tag_pipeline import lake
from tag_pipeline.config import CustomDataConfig, DatasetConfig, LLMConfig
from tag_pipeline.datasets import materialize_graph, open_graph
from tag_pipeline.llm import offline, stage
from tag_pipeline.llm.cache import open_cache, put_answer
from tag_pipeline.llm.config import OfflineLLMConfig, OnlineLLMConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: not on sys.path
from vllm_stub import Completion, Output  # noqa: E402

# 10 nodes in shards of 4: nodes 5 and 9 repeat the texts of nodes 1 and 2 (shard 0)
TEXTS = [f"Paper {i}: on learning topic {i}" for i in range(10)]
TEXTS[5], TEXTS[9] = TEXTS[1], " " + TEXTS[2] + " "  # the cache key strips the text
UNIQUE = 8


@pytest.fixture
def graph(tmp_path) -> Path:
    nodes = "id,text,label\n" + "".join(f'n{i},"{t}",{"AI" if i % 2 else "ML"}\n' for i, t in enumerate(TEXTS))
    (tmp_path / "nodes.csv").write_text(nodes)
    (tmp_path / "edges.csv").write_text("src,dst\n" + "".join(f"n{i},n{i + 1}\n" for i in range(9)))
    (tmp_path / "classes.txt").write_text("AI\nML\n")
    files = {k: tmp_path / f for k, f in (("nodes", "nodes.csv"), ("edges", "edges.csv"), ("classes", "classes.txt"))}
    return materialize_graph(_dataset(files), [0], tmp_path / "lake")


def _dataset(files) -> DatasetConfig:
    return DatasetConfig(name="custom", custom=CustomDataConfig(**files))


def _online(tmp_path, **overrides) -> LLMConfig:
    return LLMConfig(backend="online", online=OnlineLLMConfig(
        model="openai/m", api_base="http://127.0.0.1:9/v1", api_key_env=None, cache_dir=tmp_path / "cache",
        **overrides,
    ))


def test_shard_ranges_and_texts_asked_by_the_shard_of_their_first_node():
    assert stage.llm_shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert stage.llm_shard_ranges(0, 4) == []
    with pytest.raises(ValueError):
        stage.llm_shard_ranges(10, 0)
    asked = [[i for i, _ in stage._shard_nodes(TEXTS, a, b)] for a, b in stage.llm_shard_ranges(10, 4)]
    assert asked == [[0, 1, 2, 3], [4, 6, 7], [8]]  # 5 and 9 repeat earlier texts


def test_split_llm_limits_divides_rates_and_keeps_the_keys(graph, tmp_path):
    llm = _online(tmp_path, rpm=600, tpm=90_000, max_concurrency=9)
    split = stage.split_llm_limits(llm, 4)
    assert (split.online.rpm, split.online.tpm, split.online.max_concurrency) == (150, 22_500, 2)
    assert stage.split_llm_limits(_online(tmp_path, max_concurrency=2), 4).online.max_concurrency == 1
    assert stage.split_llm_limits(llm, 1) is llm
    g = open_graph(graph)
    assert stage._live_key(graph, g, split) == stage._live_key(graph, g, llm)  # same lineage key
    assert stage._answer_key_fn(g, split)[0]("x") == stage._answer_key_fn(g, llm)[0]("x")  # same cache key
    off = LLMConfig(backend="offline", offline=OfflineLLMConfig(model_path="m", cache_dir=tmp_path / "c"))
    assert stage.split_llm_limits(off, 4) is off
    with pytest.raises(ValueError):
        stage.split_llm_limits(llm, 0)


def test_plan_skips_cached_texts_and_splits_the_budget(graph, tmp_path):
    g = open_graph(graph)
    llm = _online(tmp_path, max_calls=40, max_total_tokens=100_000, rpm=1000)
    key, _ = stage._answer_key_fn(g, llm)
    with open_cache(tmp_path / "cache") as cache:  # shard 2's only text is answered already
        put_answer(cache, key(TEXTS[8]), {"status": "ok", "ranked_labels": [0], "explanation": "x"})
    plan = stage.plan_llm_fan_out(graph, llm, tmp_path / "lake", 4, workers=2)
    assert plan.shards == [0, 1] and plan.texts == UNIQUE - 1 and plan.reason is None
    assert plan.llm.online.rpm == 500 and plan.llm.online.max_calls == 40  # budgets go per shard
    calls = [b["max_calls"] for b in plan.budgets]
    assert calls == [40 * 4 // 7, 40 * 3 // 7] and sum(calls) <= 40
    tokens = [b["max_total_tokens"] for b in plan.budgets]
    assert sum(tokens) <= 100_000 and tokens[0] > tokens[1]  # 4 texts against 3

    # fewer calls than texts: not split; the stage spends the budget in one process
    small = stage.plan_llm_fan_out(graph, _online(tmp_path, max_calls=6), tmp_path / "lake", 4, workers=2)
    assert small.shards == [] and "max_calls=6 < 7" in small.reason
    replay = stage.plan_llm_fan_out(graph, LLMConfig(), tmp_path / "lake", 4, workers=2)
    assert replay.shards == [] and "replay" in replay.reason




class _Engine:
    """``vllm.LLM.chat`` stand-in: a valid answer that depends on the node text."""

    def __init__(self) -> None:
        self.prompts = 0

    def chat(self, messages, sampling_params=None, use_tqdm=True):
        self.prompts += len(messages)
        out = []
        for conversation in messages:
            text = next(t for t in TEXTS if t.strip() in conversation[-1]["content"]).strip()
            label = "AI" if int(text.split()[1].rstrip(":")) % 2 else "ML"
            out.append(Output([Completion(json.dumps({"ranked_labels": [label], "explanation": text}))]))
        return out


def test_offline_shards_fill_the_cache_and_the_stage_commits_from_it(graph, tmp_path, monkeypatch):
    engine, loads = _Engine(), []
    monkeypatch.setattr(offline, "load_engine", lambda cfg: loads.append(cfg.model_path) or engine)
    monkeypatch.setattr(offline, "structured_sampling_params", lambda cfg, schema: "sampling")
    monkeypatch.setattr(stage._SharedEngine, "_engine", None)
    monkeypatch.setattr(stage._SharedEngine, "_key", None)
    dataset = DatasetConfig()  # only replay reads it
    llm = LLMConfig(backend="offline", offline=OfflineLLMConfig(model_path="m", cache_dir=tmp_path / "cache"))
    lake_root = tmp_path / "lake"

    plan = stage.plan_llm_fan_out(graph, llm, lake_root, 4, workers=2)
    assert plan.shards == [0, 1, 2] and plan.budgets == [{}, {}, {}]
    stats = [
        stage.ask_llm_shard(graph, plan.llm, s, 4, budget=b) for s, b in zip(plan.shards, plan.budgets, strict=True)
    ]
    assert loads == ["m"]  # one engine for every shard of the process
    assert [s["requests"] for s in stats] == [4, 3, 1] and engine.prompts == UNIQUE
    assert {s["worker"] for s in stats} == {f"{socket.gethostname()}:{os.getpid()}"}
    again = stage.ask_llm_shard(graph, plan.llm, 1, 4)  # a retried shard asks nothing
    assert again["requests"] == 0 and again["cache_hits"] == 3
    with pytest.raises(IndexError):
        stage.ask_llm_shard(graph, plan.llm, 3, 4)
    assert stage.plan_llm_fan_out(graph, llm, lake_root, 4, 2).reason == "every answer is in the cache"

    path = stage.materialize_responses(graph, dataset, llm, lake_root)
    backend = lake.read_artifact(path).manifest["stats"]["backend"]
    assert backend["generated"] == 0 and backend["cache_hits"] == 10 and engine.prompts == UNIQUE
    assert stage.plan_llm_fan_out(graph, llm, lake_root, 4, 2).reason == "the responses are in the lake"

    # the same answers as the stage in one process (own cache and lake)
    one = LLMConfig(backend="offline", offline=OfflineLLMConfig(model_path="m", cache_dir=tmp_path / "c1"))
    graph1 = materialize_graph(_dataset({k: tmp_path / f for k, f in (
        ("nodes", "nodes.csv"), ("edges", "edges.csv"), ("classes", "classes.txt"))}), [0], tmp_path / "lake1")
    ref = stage.materialize_responses(graph1, dataset, one, tmp_path / "lake1")
    cols = ["node_id", "status", "ranked_labels", "explanation"]
    ours = pl.read_parquet(path / stage.RESPONSES_FILE).sort("node_id").select(cols)
    assert ours.equals(pl.read_parquet(ref / stage.RESPONSES_FILE).sort("node_id").select(cols))
    assert ours["explanation"][9] == TEXTS[2].strip()  # node 9 got node 2's answer
