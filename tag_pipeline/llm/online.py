"""Online LLM backend: ask a chat-completions API for every node's ranked classes and explanation.

One request per distinct node text (TAPE, He et al., ICLR 2024, arXiv 2305.19523, Sec. 4.1: the
LLM ranks the categories and explains; here the answer is a typed object,
:func:`tag_pipeline.llm.schema.answer_model`), sent through litellm (any provider by model
string; ``api_base`` for OpenAI-compatible servers such as ``vllm serve`` or Ollama) and
validated by instructor, which re-asks with the validation error up to
:attr:`~tag_pipeline.llm.config.OnlineLLMConfig.max_reasks` times.

How the calls are made (one event loop, ``max_concurrency`` workers, one litellm HTTP client):

- **Cache first.** Every node's key (:func:`tag_pipeline.llm.cache.answer_key`: model, prompt
  version and hash, text sha256, generation parameters) is looked up before any request; equal
  texts share one request. Each answer is written to the cache the moment it is validated, so a
  killed run loses at most the ``max_concurrency`` requests in flight.
- **Client-side rate limits** with pyrate-limiter's token bucket (GCRA): ``rpm/60`` requests
  per second, with a bucket of ``burst_s`` seconds of the rate (default 0.5 s, at least one
  request) so that a client that fell behind for a moment (a busy event loop) catches up
  instead of losing that capacity for good. Any window of ``T`` seconds holds at most
  ``rpm*T/60 + max(1, round(rpm*burst_s/60))`` requests (600 RPM: at most 15 in any second,
  605 in any minute). Likewise ``tpm``, each request charged its estimated prompt tokens plus
  ``max_output_tokens`` (:func:`estimate_tokens`; a token limit has to be charged before the
  answer's length is known). Why a library limiter and not litellm's Router ``rpm``/``tpm``:
  the Router uses those numbers to choose among deployments and fails once all are over their
  limit; it does not pace the requests of one deployment. A token bucket does, at a constant
  small cost per request. Every HTTP request, re-asks and retries included, passes the limiter.
- **Retries** (tenacity) of 429, 408/409, 5xx, timeouts and connection errors, up to
  ``max_attempts`` tries per request: the wait is the server's ``retry-after-ms`` /
  ``Retry-After`` plus up to 25 % jitter when given (and then every worker holds off until
  then), else full-jitter exponential backoff ``U(0, min(backoff_max_s, backoff_base_s *
  2**(n-1)))``. litellm's and the OpenAI SDK's own retries are off, so every attempt is
  counted and rate-limited here.
- **Budget**: at most ``max_calls`` requests and ``max_total_tokens`` tokens per run (tokens of
  requests in flight are reserved at their estimate); once exhausted, the remaining nodes are
  recorded as failed with the reason, and nothing more is sent. Authentication, permission and
  unknown-model errors stop the run the same way.
- **Per-call overhead** matters: the client is one Python thread, and at 100 requests/s
  litellm with the OpenAI SDK (about 5 ms of CPU per request on a 2-core machine) and
  instructor (about 1 ms) use most of a core. What is ours to save is saved: the answer model
  is wrapped for instructor once per run (instructor otherwise builds a new pydantic class per
  call, about 1.5 ms), prompts and cache keys are computed once, cache writes are single SQLite
  commits (0.1 ms), litellm's message redaction (``turn_off_message_logging``, which
  deep-copies every request) stays off, and the objects alive when the run starts are frozen
  out of the garbage collector for its duration (``gc.freeze``; otherwise each full collection
  re-scans litellm's and torch's hundreds of thousands of objects, about 0.4 ms per request).
  litellm's one-time lazy imports (the OpenAI SDK's resources; its MCP tool handler on the
  first request with tools, over a second) are done before the first request is admitted, or
  the requests admitted during them would leave in one burst (:func:`_warm_up`).
  ``bench/llm_throughput.py`` measures the result.

Every node ends in the returned table: ``"ok"`` with its ranked class indices and explanation,
or ``"failed"`` with the reason (invalid after the re-asks, cut off, transport errors after the
retries, budget, authentication). Answers that stay invalid after the re-asks and cut-off
answers were paid for and are cached as failures (``reask_failed=True`` asks again); transport
and budget failures are not cached, so the next run asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import

import instructor  # noqa: E402
import litellm  # noqa: E402
# litellm's OpenAI path imports the SDK's resource modules on its first request (0.7 s here);
# importing them now keeps that stall out of a run, where requests that already passed the
# rate limiter would wait behind it and then leave in one burst.
import openai.resources  # noqa: E402, F401
import polars as pl  # noqa: E402
import pydantic  # noqa: E402
from instructor.core import (  # noqa: E402
    AsyncValidationError,
    IncompleteOutputException,
    InstructorRetryException,
    ResponseParsingError,
)
from pyrate_limiter import Duration, Limiter, Rate, StateBucket, TokenBucket  # noqa: E402
from tenacity import (  # noqa: E402
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)
from tqdm.auto import tqdm  # noqa: E402

from tag_pipeline.llm.cache import answer_key, get_answer, open_cache, put_answer  # noqa: E402
from tag_pipeline.llm.config import OnlineLLMConfig  # noqa: E402
from tag_pipeline.llm.prompts import build_messages, prompt_hash, prompt_version  # noqa: E402
from tag_pipeline.llm.schema import (  # noqa: E402
    ANSWER_MODEL_NAME,
    answer_model,
    labels_to_indices,
    validation_summary,
)
from tag_pipeline.llm.store import responses_from_records  # noqa: E402

SOURCE = "online:litellm"
"""``source`` of the rows this backend writes."""

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
"""HTTP statuses retried with backoff (as the OpenAI SDK does), besides timeouts and
connection errors."""

_PARSE_ERRORS = (
    pydantic.ValidationError,
    json.JSONDecodeError,
    ResponseParsingError,
    AsyncValidationError,
)
_FATAL_ERRORS = (litellm.AuthenticationError, litellm.PermissionDeniedError, litellm.NotFoundError)
_TRANSPORT_ERRORS = (litellm.Timeout, litellm.APIConnectionError)

litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banner per failed call
logger = logging.getLogger(__name__)


class BudgetExhausted(RuntimeError):
    """The run's call or token budget is spent; no further request is sent."""


class RunAborted(RuntimeError):
    """An error that every further request would repeat (authentication, unknown model)."""


# ----------------------------------------------------------------------------- accounting
@dataclass
class _NodeTally:
    """What one node's requests cost (summed over re-asks and retries)."""

    calls: int = 0
    responses: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_error: BaseException | None = None


_TALLY: contextvars.ContextVar[_NodeTally] = contextvars.ContextVar("tag_llm_node_tally")
_ENDPOINT: contextvars.ContextVar[str | None] = contextvars.ContextVar("tag_llm_endpoint", default=None)
_IN_RUN: contextvars.ContextVar[bool] = contextvars.ContextVar("tag_llm_in_run", default=False)


class _QuietInsideRuns(logging.Filter):
    """Drop instructor's per-failure error logs inside our runs: every failure is recorded."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _IN_RUN.get()


logging.getLogger("instructor.v2.retry").addFilter(_QuietInsideRuns())


@dataclass
class OnlineStats:
    """Counters of one run (returned as a dict by :func:`answer_nodes`)."""

    nodes: int = 0
    unique_texts: int = 0
    cache_hits: int = 0
    ok: int = 0
    failed: int = 0
    failed_invalid: int = 0
    calls: int = 0
    responses: int = 0
    reasks: int = 0
    retries: int = 0
    http_429: int = 0
    http_5xx: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    other_http_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    budget_exhausted: bool = False
    aborted: str | None = None
    http_s: float = 0.0
    provider_ms: float = 0.0
    provider_ms_calls: int = 0
    limiter_wait_s: float = 0.0
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["total_tokens"] = self.prompt_tokens + self.completion_tokens
        return out


# ------------------------------------------------------------------------------ helpers
def estimate_tokens(messages: Sequence[Mapping[str, Any]], max_output_tokens: int) -> int:
    """Tokens a request is charged against the token limit and budget before it is sent.

    ``ceil(characters of all message contents / 4) + max_output_tokens``: the usual rule of
    thumb of 4 characters per English token, plus the completion limit counted in full, since
    the answer's length is unknown when the request is charged. An over-estimate for most
    requests, so token limits and budgets hold.

    Args:
        messages (Sequence[Mapping[str, Any]]): chat messages.
        max_output_tokens (int): the request's completion limit.

    Returns:
        int: estimated tokens.
    """
    chars = 0
    for m in messages:
        content = m.get("content") if isinstance(m, Mapping) else None
        if isinstance(content, str):
            chars += len(content)
    return math.ceil(chars / 4) + int(max_output_tokens)


def _status_of(error: BaseException) -> int | None:
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) else None


def _retry_after_s(error: BaseException) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms``, else ``Retry-After``), if any.

    litellm re-raises provider errors with the provider's HTTP headers in
    ``litellm_response_headers`` (its own ``response`` carries none), so look there first.
    """
    candidates = (
        getattr(error, "litellm_response_headers", None),
        getattr(error, "headers", None),
        getattr(getattr(error, "response", None), "headers", None),
    )
    headers = next((h for h in candidates if h), None)
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
        seconds = headers.get("retry-after")
        if seconds is not None:
            return max(0.0, float(seconds))
    except (TypeError, ValueError):  # an HTTP date or garbage: fall back to backoff
        return None
    return None


def _is_retryable(error: BaseException) -> bool:
    if isinstance(error, (BudgetExhausted, RunAborted)):
        return False
    if isinstance(error, _TRANSPORT_ERRORS):
        return True
    return _status_of(error) in RETRY_STATUS


def _error_reason(error: BaseException) -> str:
    status = _status_of(error)
    kind = type(error).__name__
    text = " ".join(str(error).split())
    if len(text) > 240:
        text = text[:237] + "..."
    return f"{kind} (HTTP {status}): {text}" if status else f"{kind}: {text}"


def _rate(per_minute: float, burst: int) -> Rate:
    """A pyrate-limiter rate of ``per_minute`` units per minute (fractions allowed)."""
    if per_minute >= 1:
        return Rate(max(1, round(per_minute)), Duration.MINUTE, burst=burst)
    return Rate(1, max(1, round(60_000 / per_minute)), burst=burst)


def request_burst(cfg: OnlineLLMConfig) -> int:
    """Requests the client may send at once: ``max(1, round(rpm * burst_s / 60))``.

    Any window of ``T`` seconds then holds at most ``rpm * T / 60 + request_burst(cfg)``
    requests (600 RPM, ``burst_s=0.5``: at most 15 in any second and 605 in any minute).
    """
    return max(1, round(cfg.rpm * cfg.burst_s / 60))


def _limiter(rate: Rate) -> Limiter:
    # buffer_ms=0: wake exactly when the bucket allows (the default adds 50 ms per wait)
    return Limiter(StateBucket([rate], algorithm=TokenBucket()), buffer_ms=0)


def _api_key(cfg: OnlineLLMConfig) -> str | None:
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if key is None and cfg.api_base is not None:
        return "not-needed"  # local OpenAI-compatible servers accept any key
    return key


def node_answer_key(dataset: str, class_names: Sequence[str], cfg: OnlineLLMConfig) -> Callable[[str], str]:
    """``text -> key`` under which :func:`answer_nodes` caches a node's answer for ``cfg``
    (:func:`tag_pipeline.llm.cache.answer_key`: model, prompt version and hash, generation
    parameters, the endpoint ``api_base`` when set, text); the LLM stage's fan-out plans with
    the same function. The same model name behind two endpoints (a local ``vllm serve`` and a
    provider, say) may be two different models, so their answers are cached apart; with
    ``api_base`` unset (the provider's default endpoint) keys are those of earlier versions,
    so answers already paid for stay cached."""
    version = prompt_version(dataset, cfg.template_version)
    p_hash = prompt_hash(dataset, list(class_names), cfg.template_version, k=cfg.top_k)
    params = generation_params(cfg) | ({"api_base": cfg.api_base} if cfg.api_base else {})

    def key(text: str) -> str:
        return answer_key(
            backend="online", model=cfg.model, prompt_version=version, prompt_hash=p_hash, text=text, params=params
        )

    return key


def generation_params(cfg: OnlineLLMConfig) -> dict[str, Any]:
    """The parameters of ``cfg`` that change an answer, as they enter the cache key.

    Limits, budget, retries and ``max_reasks`` are left out: they decide whether an answer is
    obtained, not what it says (a failure cached under fewer re-asks is asked again with
    ``reask_failed=True``).
    """
    return {
        "temperature": cfg.temperature,
        "max_output_tokens": cfg.max_output_tokens,
        "top_k": cfg.top_k,
        "mode": cfg.mode,
    }


# ------------------------------------------------------------------------------- the run
class _Run:
    """State shared by the workers of one :func:`answer_nodes_async` call."""

    def __init__(self, cfg: OnlineLLMConfig, max_request_tokens: int, source: str = SOURCE) -> None:
        self.cfg = cfg
        self.source = source
        self.stats = OnlineStats()
        self.rpm = _limiter(_rate(cfg.rpm, request_burst(cfg)))
        self.tpm_burst = 0
        self.tpm: Limiter | None = None
        if cfg.tpm is not None:
            self.tpm_burst = max(1, round(cfg.tpm * cfg.burst_s / 60), max_request_tokens)
            self.tpm = _limiter(_rate(cfg.tpm, self.tpm_burst))
        self.pause_until = 0.0
        self.reserved_tokens = 0
        self.stop_reason: str | None = None
        self.fixed_kwargs: dict[str, Any] = {
            "timeout": cfg.timeout_s,
            "max_retries": 0,  # the OpenAI SDK's own retries: off, retried here
            "num_retries": 0,  # litellm's retries: off
        }
        if cfg.api_base is not None:
            self.fixed_kwargs["api_base"] = cfg.api_base
        key = _api_key(cfg)
        if key is not None:
            self.fixed_kwargs["api_key"] = key

    # -- budget
    def _check_budget(self, estimate: int) -> None:
        cfg, s = self.cfg, self.stats
        if self.stop_reason is not None:
            raise RunAborted(self.stop_reason)
        if cfg.max_calls is not None and s.calls >= cfg.max_calls:
            self._exhaust(f"budget exhausted: max_calls={cfg.max_calls} requests sent")
        if cfg.max_total_tokens is not None:
            spent = s.prompt_tokens + s.completion_tokens + self.reserved_tokens
            if spent + estimate > cfg.max_total_tokens:
                self._exhaust(
                    f"budget exhausted: max_total_tokens={cfg.max_total_tokens} "
                    f"({spent} used or reserved, next request needs about {estimate})"
                )

    def _exhaust(self, reason: str) -> None:
        self.stats.budget_exhausted = True
        self.stop_reason = self.stop_reason or reason
        raise BudgetExhausted(reason)

    # -- retries
    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        after = _retry_after_s(error) if error is not None else None
        if after is not None:
            delay = after + random.uniform(0, after / 4)
            self.pause_until = max(self.pause_until, time.monotonic() + after)
            return delay
        cfg = self.cfg
        ceiling = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** (state.attempt_number - 1))
        return random.uniform(0, ceiling)

    def _count_error(self, error: BaseException) -> None:
        s = self.stats
        status = _status_of(error)
        if status == 429:
            s.http_429 += 1
        elif isinstance(error, litellm.Timeout) or status in (408, 504):
            s.timeouts += 1
        elif status is not None and status >= 500:
            s.http_5xx += 1
        elif isinstance(error, litellm.APIConnectionError):
            s.connection_errors += 1
        else:
            s.other_http_errors += 1

    def _before_sleep(self, state: RetryCallState) -> None:
        self.stats.retries += 1

    # -- one HTTP request (what instructor calls)
    async def completion(self, **kwargs: Any) -> Any:
        """Send one chat completion through the limits, retries and budget; litellm signature."""
        kwargs.update(self.fixed_kwargs)
        endpoint = _ENDPOINT.get()
        if endpoint is not None:  # this worker's server (answer_nodes_async's api_bases)
            kwargs["api_base"] = endpoint
        tally = _TALLY.get()
        estimate = estimate_tokens(kwargs.get("messages") or [], self.cfg.max_output_tokens)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.cfg.max_attempts),
            retry=retry_if_exception(_is_retryable),
            wait=self._wait,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._send(kwargs, estimate, tally)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, kwargs: dict[str, Any], estimate: int, tally: _NodeTally) -> Any:
        s = self.stats
        self._check_budget(estimate)
        t_wait = time.monotonic()
        if self.pause_until > t_wait:
            await asyncio.sleep(self.pause_until - t_wait)
        if self.tpm is not None:
            await self.tpm.try_acquire_async("tokens", weight=min(estimate, self.tpm_burst))
        await self.rpm.try_acquire_async("requests")
        self._check_budget(estimate)  # the budget may have run out while waiting
        t0 = time.monotonic()
        s.limiter_wait_s += t0 - t_wait
        s.calls += 1
        tally.calls += 1
        self.reserved_tokens += estimate
        try:
            response = await litellm.acompletion(**kwargs)
        except Exception as e:
            self._count_error(e)
            tally.last_error = e
            if isinstance(e, _FATAL_ERRORS):
                self.stop_reason = self.stop_reason or f"run aborted: {_error_reason(e)}"
            raise
        finally:
            self.reserved_tokens -= estimate
        s.http_s += time.monotonic() - t0
        s.responses += 1
        tally.responses += 1
        usage = getattr(response, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        s.prompt_tokens += prompt
        s.completion_tokens += completion
        tally.prompt_tokens += prompt
        tally.completion_tokens += completion
        self._note_provider_time(response)
        return response

    def _note_provider_time(self, response: Any) -> None:
        hidden = getattr(response, "_hidden_params", None) or {}
        headers = hidden.get("additional_headers") or {}
        value = headers.get("llm_provider-openai-processing-ms")
        if value is not None:
            try:
                self.stats.provider_ms += float(value)
                self.stats.provider_ms_calls += 1
            except (TypeError, ValueError):
                pass


async def _warm_up(cfg: OnlineLLMConfig, schema: dict[str, Any]) -> None:
    """Let litellm do its one-time lazy set-up before any request is rate-limited.

    litellm imports modules on the first request that carries tools (its MCP tool handler,
    which pulls in the ``mcp`` package: 1.4 s here), in a worker thread, after the request has
    passed our limiter. Requests admitted meanwhile would then leave together, a burst above
    the limit. A mock completion (litellm's ``mock_response``: nothing is sent, nothing paid)
    with the same tools runs that set-up first; any error in it is left to the real requests.
    """
    kwargs: dict[str, Any] = {
        "model": cfg.model,
        "messages": [{"role": "user", "content": "warm-up"}],
        "mock_response": "{}",
    }
    if cfg.mode == "tools":
        function = {"name": ANSWER_MODEL_NAME, "parameters": schema}
        kwargs["tools"] = [{"type": "function", "function": function}]
    with contextlib.suppress(Exception):
        await litellm.acompletion(**kwargs)


def _raw_text(completion: Any, answer: pydantic.BaseModel) -> str:
    """The model's own JSON (tool-call arguments or message content), else the answer's JSON."""
    try:
        message = completion.choices[0].message
        calls = getattr(message, "tool_calls", None)
        if calls:
            return str(calls[0].function.arguments)
        if isinstance(message.content, str) and message.content.strip():
            return message.content
    except (AttributeError, IndexError, TypeError):
        pass
    return answer.model_dump_json()


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def _failure(reason: str, version: str, tally: _NodeTally, source: str = SOURCE) -> dict[str, Any]:
    return {
        "status": "failed",
        "error": reason,
        "raw_text": None,
        "ranked_labels": [],
        "explanation": "",
        "prompt_tokens": tally.prompt_tokens or None,
        "completion_tokens": tally.completion_tokens or None,
        "source": source,
        "prompt_version": version,
    }


async def _answer_one(
    run: _Run,
    client: instructor.AsyncInstructor,
    response_model: type[pydantic.BaseModel],
    messages: list[dict[str, str]],
    class_names: Sequence[str],
    version: str,
) -> tuple[dict[str, Any], bool]:
    """Ask for one text's answer, counting its requests. Returns ``(record, cacheable)``."""
    tally = _NodeTally()
    token = _TALLY.set(tally)
    try:
        return await _ask(run, client, response_model, messages, class_names, version, tally)
    finally:
        _TALLY.reset(token)
        run.stats.reasks += max(0, tally.responses - 1)


async def _ask(
    run: _Run,
    client: instructor.AsyncInstructor,
    response_model: type[pydantic.BaseModel],
    messages: list[dict[str, str]],
    class_names: Sequence[str],
    version: str,
    tally: _NodeTally,
) -> tuple[dict[str, Any], bool]:
    """One instructor call (re-asks included) turned into a record; see :func:`_answer_one`."""
    cfg = run.cfg
    try:
        answer, completion = await client.chat.completions.create_with_completion(
            model=cfg.model,
            messages=messages,
            response_model=response_model,
            max_retries=cfg.max_reasks,
            temperature=cfg.temperature,
            max_tokens=cfg.max_output_tokens,
        )
    except IncompleteOutputException:
        reason = (
            f"answer cut off at max_output_tokens={cfg.max_output_tokens} (finish_reason=length)"
        )
        return _failure(reason, version, tally, run.source), True
    except InstructorRetryException as e:
        cause = e.__cause__ or tally.last_error or e
        if isinstance(cause, _PARSE_ERRORS):
            reason = (
                f"invalid answer after {_attempts(tally.responses)}: {validation_summary(cause)}"
            )
            return _failure(reason, version, tally, run.source), True
        if isinstance(cause, (BudgetExhausted, RunAborted)):
            return _failure(str(cause), version, tally, run.source), False
        reason = f"request failed after {_attempts(tally.calls)}: {_error_reason(cause)}"
        return _failure(reason, version, tally, run.source), False
    except (BudgetExhausted, RunAborted) as e:
        return _failure(str(e), version, tally, run.source), False
    choice = completion.choices[0]
    record = {
        "status": "ok",
        "error": None,
        "raw_text": _raw_text(completion, answer),
        "ranked_labels": labels_to_indices(answer.ranked_labels, class_names),
        "explanation": answer.explanation,
        "finish_reason": getattr(choice, "finish_reason", None),
        "prompt_tokens": tally.prompt_tokens or None,
        "completion_tokens": tally.completion_tokens or None,
        "response_id": getattr(completion, "id", None),
        "created_unix": getattr(completion, "created", None),
        "source": run.source,
        "prompt_version": version,
    }
    return record, True


async def answer_nodes_async(
    nodes: Sequence[tuple[int, str]],
    dataset: str,
    class_names: Sequence[str],
    cfg: OnlineLLMConfig,
    *,
    progress: bool = True,
    key_of: Callable[[str], str] | None = None,
    max_explanation_chars: int | None = None,
    dedupe_labels: bool = False,
    api_bases: Sequence[str] | None = None,
    source: str = SOURCE,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Coroutine form of :func:`answer_nodes` (for callers already inside an event loop)."""
    t_start = time.monotonic()
    names = list(class_names)
    version = prompt_version(dataset, cfg.template_version)
    key_of = key_of or node_answer_key(dataset, names, cfg)
    model = answer_model(names, cfg.top_k, max_explanation_chars, dedupe_labels)
    # instructor wraps a plain model in a new pydantic class on every call; once is enough
    wrapped = instructor.openai_schema(model)

    # group nodes by cache key: equal texts are asked once
    groups: dict[str, list[int]] = {}
    texts: dict[str, str] = {}
    for node_id, text in nodes:
        key = key_of(text)
        groups.setdefault(key, []).append(int(node_id))
        texts.setdefault(key, text)

    results: dict[str, dict[str, Any]] = {}
    pending: list[str] = []
    cache = open_cache(cfg.cache_dir)
    try:
        for key in groups:
            hit = get_answer(cache, key)
            if hit is not None and not (cfg.reask_failed and hit.get("status") == "failed"):
                results[key] = hit
            else:
                pending.append(key)
        messages = {
            key: build_messages(dataset, names, texts[key], cfg.template_version, k=cfg.top_k)
            for key in pending
        }
        max_request = max(
            (estimate_tokens(m, cfg.max_output_tokens) for m in messages.values()), default=1
        )
        run = _Run(cfg, max_request, source)
        s = run.stats
        s.nodes, s.unique_texts = len(nodes), len(groups)
        s.cache_hits = sum(len(groups[k]) for k in results)
        client = instructor.from_litellm(
            run.completion,
            mode=instructor.Mode.TOOLS if cfg.mode == "tools" else instructor.Mode.JSON,
        )
        bar = tqdm(
            total=len(nodes), initial=s.cache_hits, desc=f"LLM {cfg.model}", unit="node",
            disable=not progress, mininterval=1.0, smoothing=0.1,
        )
        queue = iter(pending)

        async def worker(index: int) -> None:
            _IN_RUN.set(True)
            if api_bases:
                _ENDPOINT.set(api_bases[index % len(api_bases)])
            for key in queue:
                if run.stop_reason is not None:
                    record, cacheable = _failure(run.stop_reason, version, _NodeTally(), source), False
                else:
                    record, cacheable = await _answer_one(
                        run, client, wrapped, messages[key], names, version
                    )
                if cacheable:
                    put_answer(cache, key, record)
                results[key] = record
                bar.update(len(groups[key]))

        if pending:
            await _warm_up(cfg, model.model_json_schema())
        frozen = bool(pending) and gc.get_freeze_count() == 0  # never thaw a caller's freeze
        if frozen:
            gc.collect()
            gc.freeze()  # see the module docstring: full collections stop re-scanning libraries
        try:
            workers = min(cfg.max_concurrency, len(pending))
            await asyncio.gather(*(worker(i) for i in range(workers)))
        finally:
            if frozen:
                gc.unfreeze()
            bar.close()
    finally:
        cache.close()

    rows = []
    for key, node_ids in groups.items():
        record = results[key]
        for node_id in node_ids:
            rows.append({"node_id": node_id, "model": cfg.model, **record})
    rows.sort(key=lambda r: r["node_id"])
    s.aborted = run.stop_reason if not s.budget_exhausted else None
    s.ok = sum(1 for r in rows if r["status"] == "ok")
    s.failed = len(rows) - s.ok
    s.failed_invalid = sum(
        1 for r in rows if r["status"] == "failed" and str(r["error"]).startswith("invalid answer")
    )
    s.wall_s = time.monotonic() - t_start
    logger.info(
        "%s: %d nodes, %d from cache, %d requests, %d ok, %d failed, %d tokens, %.1f s",
        cfg.model, s.nodes, s.cache_hits, s.calls, s.ok, s.failed,
        s.prompt_tokens + s.completion_tokens, s.wall_s,
    )
    return responses_from_records(rows), s.as_dict()


def answer_nodes(
    nodes: Sequence[tuple[int, str]],
    dataset: str,
    class_names: Sequence[str],
    cfg: OnlineLLMConfig,
    *,
    progress: bool = True,
    key_of: Callable[[str], str] | None = None,
    max_explanation_chars: int | None = None,
    dedupe_labels: bool = False,
    api_bases: Sequence[str] | None = None,
    source: str = SOURCE,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Ask an online LLM to rank the classes of every node and explain, with cache and limits.

    See the module docstring for how requests are limited, retried, budgeted and cached.

    Args:
        nodes (Sequence[tuple[int, str]]): ``[(node_id, text), ...]``, e.g. the graph's node
            ids with their title + abstract. Nodes with equal text share one request.
        dataset (str): dataset name; picks the prompt template (``"cora"`` -> ``cora.v1.j2``,
            others -> ``generic.v1.j2``).
        class_names (Sequence[str]): the ``C`` class names in label order.
        cfg (OnlineLLMConfig): model, endpoint, limits, budget and cache folder.
        progress (bool, optional): show a tqdm progress bar (nodes answered, cache hits
            included). (default: ``True``)
        key_of (Callable[[str], str], optional): ``text -> answer cache key``; the local
            backend keys by the model file's digest instead of the endpoint. (default:
            :func:`node_answer_key` of ``cfg``)
        max_explanation_chars (int, optional): cap of the answer schema's explanation
            (:func:`~tag_pipeline.llm.schema.answer_model`); ``key_of`` must then key it.
            (default: ``None``)
        dedupe_labels (bool, optional): keep a repeated class at its first rank instead of
            re-asking (:func:`~tag_pipeline.llm.schema.answer_model`); ``key_of`` must then
            key it. (default: ``False``)
        api_bases (Sequence[str], optional): endpoints to spread the requests over, worker
            ``i`` sending to ``api_bases[i % len]`` (several local servers). (default: ``None``,
            ``cfg.api_base``)
        source (str, optional): the rows' ``source``. (default: ``"online:litellm"``)

    Returns:
        tuple[pl.DataFrame, dict]: the response table, one row per node sorted by
        ``node_id``, in :data:`tag_pipeline.llm.store.RESPONSE_SCHEMA` (``model = cfg.model``,
        ``source = "online:litellm"``, ``prompt_version`` e.g. ``"cora.v1"``,
        ``ranked_labels`` class indices, ``raw_text`` the model's JSON answer, tokens summed
        over the node's requests); and the run's stats: ``nodes``, ``unique_texts``,
        ``cache_hits`` (nodes served from the cache), ``ok``, ``failed``, ``failed_invalid``,
        ``calls`` (HTTP requests sent), ``responses``, ``reasks``, ``retries``, ``http_429``,
        ``http_5xx``, ``timeouts``, ``connection_errors``, ``other_http_errors``,
        ``prompt_tokens``, ``completion_tokens``, ``total_tokens``, ``budget_exhausted``,
        ``aborted`` (the reason, or ``None``), ``http_s`` (seconds spent in successful
        requests), ``provider_ms`` / ``provider_ms_calls`` (the server's own time from its
        ``openai-processing-ms`` header, where sent), ``limiter_wait_s`` and ``wall_s``.

    Raises:
        ValueError: empty class names or an empty node text.
        FileNotFoundError: no prompt template for ``cfg.template_version``.
        RuntimeError: called from a running event loop (use :func:`answer_nodes_async`).
    """
    return asyncio.run(answer_nodes_async(
        nodes, dataset, class_names, cfg, progress=progress, key_of=key_of,
        max_explanation_chars=max_explanation_chars, dedupe_labels=dedupe_labels,
        api_bases=api_bases, source=source,
    ))
