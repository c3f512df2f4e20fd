"""Tests for tag_pipeline.llm.online against a real local OpenAI-compatible HTTP server.

The server (``fake_openai_server.py`` beside this file) runs on 127.0.0.1 in a background
thread and answers Cora prompts with TAPE's recorded GPT-3.5 answers; nothing leaves the
machine. Every request goes through the real stack: instructor, litellm, the OpenAI SDK,
aiohttp. Needs the shared Cora data (skips without it).

Rate checks count the server's arrival times. Besides the client's documented burst
(``request_burst``: any window of ``T`` seconds holds at most ``rpm*T/60 + burst`` requests sent),
they allow for a request reaching the server's handler up to ``STAMP_DELAY_S`` after it passed
the client's limiter (the first requests open connections; the server shares the interpreter
with the client, so a handler may start late and stamp requests bunched together):
``ceil(rate * STAMP_DELAY_S) + 1`` more requests per window (see :func:`_slack`). A client
without a limiter sends the 120 requests of the main run within about a second, far above.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_openai_server import (  # noqa: E402
    SCRIPTED_RETRY_AFTER_S,
    CoraAnswers,
    FakeOpenAIServer,
    FaultPlan,
    calls_per_node,
    max_in_window,
    ok_calls_per_node,
    shared_data_dir,
)

from tag_pipeline.llm.cache import answer_key, open_cache  # noqa: E402
from tag_pipeline.llm.config import OnlineLLMConfig  # noqa: E402
from tag_pipeline.llm.online import (  # noqa: E402
    answer_nodes,
    generation_params,
    node_answer_key,
    request_burst,
)
from tag_pipeline.llm.parse import parse_ranked_labels  # noqa: E402
from tag_pipeline.llm.prompts import prompt_hash, prompt_version  # noqa: E402
from tag_pipeline.llm.store import validate_responses  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[2]
N_LOADED = 200
MAIN_NODES = list(range(120))
NO_CLASS = {65, 86}  # recorded answers that name no class (the failure path)
STAMP_DELAY_S = 0.2
FAULTS = {
    3: ["500"],
    17: ["500"],
    20: ["500", "500"],
    5: ["timeout"],
    8: ["malformed"],
    11: ["invalid"],
    13: ["429"],
}


@pytest.fixture(scope="module")
def answers() -> CoraAnswers:
    if not (shared_data_dir() / "cora" / "cora.zip").exists():
        pytest.skip(f"real datasets not found at {shared_data_dir()} (set TAG_SHARED_DATA)")
    return CoraAnswers.load(nodes=range(N_LOADED))


def _cfg(base_url: str, cache_dir: Path, **overrides) -> OnlineLLMConfig:
    values = dict(
        model="openai/gpt-3.5-turbo",
        api_base=base_url,
        api_key_env=None,
        rpm=3000,
        max_concurrency=16,
        timeout_s=1.5,
        max_attempts=4,
        backoff_base_s=0.05,
        backoff_max_s=0.5,
        cache_dir=cache_dir,
    )
    values.update(overrides)
    return OnlineLLMConfig(**values)


def _slack(per_second: float) -> int:
    """Requests a window may gain from late server time stamps, plus one for its boundary."""
    return math.ceil(per_second * STAMP_DELAY_S) + 1


def _nodes(answers: CoraAnswers, ids) -> list[tuple[int, str]]:
    return [(i, answers.texts[i]) for i in ids]


def _run(answers: CoraAnswers, ids, cfg: OnlineLLMConfig, dataset: str = "cora"):
    return answer_nodes(_nodes(answers, ids), dataset, answers.class_names, cfg, progress=False)


def _canonical(answers: CoraAnswers, ids) -> dict[int, int]:
    """Node id -> the node id the server attributes its text to (equal texts share one)."""
    return {i: answers.find_node(answers.texts[i]) for i in ids}


@pytest.fixture(scope="module")
def first_run(answers, tmp_path_factory):
    """120 Cora nodes at 3000 RPM; scripted 500s, timeout, 429, malformed and invalid answers."""
    server = FakeOpenAIServer(answers, rpm=3000, faults=FaultPlan(FAULTS), hang_s=3.0)
    base = server.start()
    cfg = _cfg(base, tmp_path_factory.mktemp("cache"))
    t0 = time.time()
    df, stats = _run(answers, MAIN_NODES, cfg)
    yield {"df": df, "stats": stats, "log": server.log, "server": server, "cfg": cfg, "t0": t0}
    server.stop()


def test_every_node_answered_or_failed_with_reason(first_run, answers):
    df, stats = first_run["df"], first_run["stats"]
    validate_responses(df, N_LOADED, len(answers.class_names), "online run")
    assert df["node_id"].to_list() == MAIN_NODES
    assert set(df["source"]) == {"online:litellm"} and set(df["prompt_version"]) == {"cora.v1"}
    failed = df.filter(pl.col("status") == "failed")
    assert set(failed["node_id"]) == NO_CLASS
    for reason in failed["error"]:
        assert reason.startswith("invalid answer after 3 attempts")
        assert "ranked_labels is empty" in reason
    ok = df.filter(pl.col("status") == "ok")
    for row in ok.iter_rows(named=True):  # the recorded answer's classes, in its order
        recorded = parse_ranked_labels(answers.contents[row["node_id"]], answers.class_names, k=5)
        assert row["ranked_labels"] == recorded, row["node_id"]
        assert row["explanation"] == answers.contents[row["node_id"]]
        assert json.loads(row["raw_text"])["explanation"] == row["explanation"]
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    assert (stats["ok"], stats["failed"], stats["failed_invalid"]) == (118, 2, 2)
    assert stats["cache_hits"] == 0 and stats["nodes"] == 120


def test_no_duplicate_answers_and_faults_are_retried(first_run, answers):
    log, stats = first_run["log"], first_run["stats"]
    canonical = _canonical(answers, MAIN_NODES)
    ok_calls = ok_calls_per_node(log)
    assert max(ok_calls.values()) == 1, "a node was answered twice"
    assert set(ok_calls) == {canonical[i] for i in MAIN_NODES} - NO_CLASS
    calls = calls_per_node(log)
    assert calls[3] == calls[17] == 2 and calls[20] == 3  # 500s retried
    assert calls[5] == 2 and calls[13] == 2  # timeout and 429 retried
    assert calls[8] == calls[11] == 2  # malformed / invalid answer: one re-ask fixed it
    assert calls[65] == calls[86] == 3  # no class: asked, re-asked twice, then failed
    assert stats["calls"] == len(log)
    assert stats["http_5xx"] == 4 and stats["timeouts"] == 1 and stats["http_429"] == 1
    assert stats["retries"] == 6 and stats["reasks"] == 2 + 2 * len(NO_CLASS)


def test_retry_after_is_honoured(first_run):
    times = sorted(e["t"] for e in first_run["log"] if e["node"] == 13)
    assert len(times) == 2
    # the server asked for SCRIPTED_RETRY_AFTER_S; its arrival stamps may lag by STAMP_DELAY_S
    assert times[1] - times[0] >= SCRIPTED_RETRY_AFTER_S - STAMP_DELAY_S


def test_rate_never_exceeds_limit(first_run):
    cfg, log = first_run["cfg"], first_run["log"]
    times = [e["t"] for e in log]
    per_s = cfg.rpm / 60
    slack = _slack(per_s)
    assert max_in_window(times, 1.0) <= per_s + request_burst(cfg) + slack
    span = max(times) - min(times)
    assert len(times) <= per_s * span + request_burst(cfg) + slack
    assert not [e for e in log if e["outcome"] == "rate_limited"]  # the server never had to 429


def test_second_run_is_all_cache_hits(first_run, answers):
    server = first_run["server"]
    n_before = len(server.log)
    df, stats = _run(answers, MAIN_NODES, first_run["cfg"])
    assert len(server.log) == n_before, "the second run sent requests"
    assert stats["calls"] == 0 and stats["cache_hits"] == len(MAIN_NODES)
    assert df.equals(first_run["df"])


def _rate_seen(times: list[float]) -> float:
    """Requests per second over a run's server time stamps (+1 s: short runs are not inflated)."""
    return len(times) / (max(times) - min(times) + 1.0)


def test_limiter_paces_a_binding_rate(answers, tmp_path):
    """At 1200 RPM (20/s) the limiter binds: any second holds at most 20 + burst requests.

    It must not throttle far below the limit either. What "far below" means depends on how
    fast this client gets requests out on this machine (a busy CI runner is slower), so the
    same 80-request run without a binding limit, just before, is the yardstick.
    """
    free = FakeOpenAIServer(answers)
    try:
        _run(answers, range(200, 280), _cfg(free.start(), tmp_path / "free", rpm=60_000))
        free_rate = _rate_seen([e["t"] for e in free.log])
    finally:
        free.stop()
    server = FakeOpenAIServer(answers, rpm=1200)
    cfg = _cfg(server.start(), tmp_path / "paced", rpm=1200)
    try:
        df, stats = _run(answers, range(120, 200), cfg)
        times = [e["t"] for e in server.log]
    finally:
        server.stop()
    assert stats["failed"] == 0 and stats["calls"] == len(times) == 80
    burst = request_burst(cfg)
    assert burst == 10
    slack = _slack(20)
    assert max_in_window(times, 1.0) <= 20 + burst + slack
    assert max_in_window(times, 2.0) <= 40 + burst + slack
    span = max(times) - min(times)
    assert len(times) <= 20 * span + burst + slack
    assert _rate_seen(times) >= 0.6 * min(20, free_rate), (
        f"the limiter throttled far below the limit: {_rate_seen(times):.1f} requests/s at a limit "
        f"of 20/s, while this client sent {free_rate:.1f}/s unlimited"
    )


def test_tpm_limit_paces_tokens(answers, tmp_path):
    tpm = 600_000  # about 10 requests/s of ~1000 estimated tokens
    server = FakeOpenAIServer(answers, tpm=tpm)
    cfg = _cfg(server.start(), tmp_path, rpm=60_000, tpm=tpm)
    try:
        df, stats = _run(answers, range(150, 180), cfg)
        log = server.log
    finally:
        server.stop()
    assert stats["failed"] == 0 and stats["http_429"] == 0
    ts = sorted((e["t"], e["tokens"]) for e in log)
    biggest = max(tok for _, tok in ts)
    burst = max(tpm * cfg.burst_s / 60, biggest)
    worst, j, acc = 0, 0, 0
    for t, tok in ts:  # most estimated tokens in any 1-second window
        acc += tok
        while ts[j][0] <= t - 1.0:
            acc -= ts[j][1]
            j += 1
        worst = max(worst, acc)
    assert worst <= tpm / 60 + burst + _slack(tpm / 60 / biggest) * biggest


def test_killed_run_resumes_without_reasking_finished_nodes(answers, tmp_path):
    ids = list(range(60))
    server = FakeOpenAIServer(answers, rpm=1200)
    cfg = _cfg(server.start(), tmp_path / "cache", rpm=1200, max_concurrency=4)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({
        "cfg": cfg.model_dump(mode="json"),
        "nodes": _nodes(answers, ids),
        "classes": answers.class_names,
    }))
    runner = tmp_path / "runner.py"
    runner.write_text(
        "import json, os, sys\n"
        "os.environ.setdefault('LITELLM_LOCAL_MODEL_COST_MAP', 'True')\n"
        f"sys.path.insert(0, {str(PROJECT_ROOT)!r})\n"
        "from tag_pipeline.llm.config import OnlineLLMConfig\n"
        "from tag_pipeline.llm.online import answer_nodes\n"
        "spec = json.load(open(sys.argv[1]))\n"
        "answer_nodes([tuple(n) for n in spec['nodes']], 'cora', spec['classes'],\n"
        "             OnlineLLMConfig.model_validate(spec['cfg']), progress=False)\n"
    )
    key_of = node_answer_key("cora", answers.class_names, cfg)
    keys = {i: key_of(answers.texts[i]) for i in ids}
    stderr = open(tmp_path / "runner.err", "wb")  # a file: a full pipe would stall the runner
    proc = subprocess.Popen([sys.executable, str(runner), str(spec)], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        with open_cache(cfg.cache_dir) as cache:
            deadline = time.time() + 90
            while len(cache) < 15:
                if proc.poll() is not None:
                    err = (tmp_path / "runner.err").read_text()[-2000:]
                    pytest.fail(f"the runner ended before it was killed: {err}")
                assert time.time() < deadline, "runner made no progress"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            finished = {i for i in ids if keys[i] in cache}
        first_log = server.log
        server.reset_log()
        assert 15 <= len(finished) < len(ids)

        df, stats = _run(answers, ids, cfg)
        resumed_log = server.log
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr.close()
        server.stop()
    assert stats["cache_hits"] == len(finished)
    assert not {e["node"] for e in resumed_log} & finished, "a finished node was asked again"
    assert df["node_id"].to_list() == ids and set(df["status"]) == {"ok"}
    # only requests in flight at the kill were paid twice
    twice = set(ok_calls_per_node(first_log)) & set(ok_calls_per_node(resumed_log))
    assert len(twice) <= cfg.max_concurrency


def test_call_budget_stops_the_run_and_is_not_cached(answers, tmp_path):
    ids = list(range(120, 150))
    server = FakeOpenAIServer(answers)
    cfg = _cfg(server.start(), tmp_path, max_calls=10, max_concurrency=4)
    try:
        df, stats = _run(answers, ids, cfg)
        assert len(server.log) == 10 and stats["calls"] == 10 and stats["budget_exhausted"]
        failed = df.filter(pl.col("status") == "failed")
        assert failed.height == 20
        assert all(e.startswith("budget exhausted: max_calls=10") for e in failed["error"])
        # budget failures are not cached: without the budget, only the 20 others are asked
        df2, stats2 = _run(answers, ids, cfg.model_copy(update={"max_calls": None}))
        assert stats2["cache_hits"] == 10 and stats2["calls"] == 20 and stats2["failed"] == 0
        assert len(server.log) == 30 and max(ok_calls_per_node(server.log).values()) == 1
    finally:
        server.stop()


def test_token_budget_is_never_exceeded(answers, tmp_path):
    server = FakeOpenAIServer(answers)
    cfg = _cfg(server.start(), tmp_path, max_total_tokens=5000, max_concurrency=3)
    try:
        df, stats = _run(answers, range(120, 150), cfg)
    finally:
        server.stop()
    assert stats["budget_exhausted"] and 0 < stats["calls"] < 30
    assert stats["total_tokens"] <= 5000
    reasons = df.filter(pl.col("status") == "failed")["error"]
    assert reasons.len() == 30 - stats["ok"]
    assert all("max_total_tokens=5000" in r for r in reasons)


def test_transport_failures_are_recorded_and_not_cached(answers, tmp_path):
    plan = FaultPlan({0: ["500", "500", "500"], 1: ["401"]})
    server = FakeOpenAIServer(answers, faults=plan)
    cfg = _cfg(server.start(), tmp_path, max_attempts=3, max_concurrency=1)
    try:
        df, stats = _run(answers, [0], cfg)
        (reason,) = df["error"].to_list()
        assert reason.startswith("request failed after 3 attempts") and "HTTP 500" in reason
        assert stats["http_5xx"] == 3 and stats["retries"] == 2

        # an authentication error stops the run: one request, every node failed with the reason
        df, stats = _run(answers, [1, 2, 3, 4], cfg)
        assert calls_per_node(server.log)[1] == 1 and not calls_per_node(server.log)[2]
        assert set(df["status"]) == {"failed"} and stats["aborted"].startswith("run aborted")
        assert all("HTTP 401" in e for e in df["error"])

        # neither was cached: the next run asks again and succeeds
        df, stats = _run(answers, [0, 1, 2, 3, 4], cfg)
        assert set(df["status"]) == {"ok"} and stats["cache_hits"] == 0
    finally:
        server.stop()


def test_json_mode_and_generic_prompt(answers, tmp_path):
    server = FakeOpenAIServer(answers)
    cfg = _cfg(server.start(), tmp_path, mode="json")
    try:
        df, stats = _run(answers, range(20), cfg, dataset="my_papers")
    finally:
        server.stop()
    assert set(df["status"]) == {"ok"} and set(df["prompt_version"]) == {"generic.v1"}
    recorded = [
        parse_ranked_labels(answers.contents[i], answers.class_names, k=5) for i in range(20)
    ]
    assert df["ranked_labels"].to_list() == recorded


def test_answer_cache_key_includes_the_endpoint():
    """The same model name behind two endpoints is cached apart; no endpoint keeps the old key."""
    classes = ["a", "b", "c"]
    local = OnlineLLMConfig(model="openai/qwen", api_base="http://127.0.0.1:8000/v1", api_key_env=None)
    other = local.model_copy(update={"api_base": "http://127.0.0.1:9000/v1"})
    default = local.model_copy(update={"api_base": None})
    keys = [node_answer_key("cora", classes, c)("some text") for c in (local, other, default)]
    assert len(set(keys)) == 3
    before = answer_key(  # the key every earlier version used for a provider's default endpoint
        backend="online", model=default.model, prompt_version=prompt_version("cora"),
        prompt_hash=prompt_hash("cora", classes, k=default.top_k), text="some text",
        params=generation_params(default),
    )
    assert keys[2] == before
