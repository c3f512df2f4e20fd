"""A local OpenAI-compatible chat server answering with TAPE's recorded GPT-3.5 Cora answers.

Test helper (not collected: no ``test_`` prefix). It serves ``POST /v1/chat/completions`` on
127.0.0.1 with aiohttp, in a background thread (:meth:`FakeOpenAIServer.start`) or as a process
(``python tests/llm/fake_openai_server.py --rpm 600``, which prints one JSON line
``{"base_url": ...}`` and serves until killed). For each request it

1. finds the node: the Cora node whose text (title + abstract, as loaded by
   :func:`tag_pipeline.datasets.cora.load_cora`) starts a line of a user message and is
   contained in it. Nodes with equal text map to the smallest node id;
2. enforces the rate limits, if set: a token bucket refilled at ``rpm/60`` requests per second
   holding at most ``burst_s`` seconds' worth (default 1 s, at least 1 request), likewise for
   ``tpm`` with tokens estimated as ``ceil(characters of the messages / 4) + max_tokens``.
   Over the limit: HTTP 429 with ``Retry-After`` (whole seconds) and ``retry-after-ms``
   (OpenAI's precise header); rejected requests consume nothing;
3. plays the node's scripted fault, if any (:class:`FaultPlan`): ``"500"``, ``"429"``, ``"401"``,
   ``"timeout"`` (sleeps ``hang_s``, past the client's timeout, then answers 504),
   ``"malformed"`` (a tool call whose arguments are cut-off JSON) or ``"invalid"`` (a class
   name that does not exist);
4. otherwise answers with the node's recorded answer in the structured form the client asked
   for: a forced tool call when the request has ``tools`` (instructor's TOOLS mode), else JSON
   message content (JSON mode), holding ``{"ranked_labels": [class names parsed from the
   recorded answer by tag_pipeline.llm.parse, at most the schema's maxItems],
   "explanation": <recorded answer>}``. A recorded answer that names no class gives
   ``"ranked_labels": []``, which fails validation on every re-ask, so the failure path runs.

Every request is logged (:attr:`FakeOpenAIServer.log`, or ``GET /_log`` of a process) with its
arrival time (``time.time()``, seconds), node, HTTP status, estimated tokens and outcome
(``"ok"`` = a valid answer was sent; ``"no_class"``, ``"invalid"``, ``"malformed"``, ``"429"``,
``"rate_limited"``, ``"500"``, ``"401"``, ``"timeout"``, ``"unknown"``), so tests count calls
per node and measure the rate.
Responses carry ``openai-processing-ms``: the server's own time for the request, in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:  # run as a script or imported from bench/
    sys.path.insert(0, str(PROJECT_ROOT))

from tag_pipeline.llm.parse import parse_ranked_labels  # noqa: E402

FAULTS = ("500", "429", "401", "timeout", "malformed", "invalid")
#: Retry-After of a scripted "429" fault, seconds: long enough that a client ignoring it
#: (backing off for tens of milliseconds) is told apart from one honouring it, even when
#: the server's time stamps lag under load.
SCRIPTED_RETRY_AFTER_S = 1.0
PREFIX = 48  # characters of a text's first line used to find it in a prompt


def shared_data_dir() -> Path:
    """``$TAG_SHARED_DATA`` or ``<project>/../shared/data``."""
    return Path(os.environ.get("TAG_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def estimate_tokens(messages: Sequence[Mapping[str, Any]], max_tokens: int) -> int:
    """Tokens a request is charged against a token limit: ``ceil(chars / 4) + max_tokens``."""
    chars = sum(len(m.get("content") or "") for m in messages if isinstance(m, Mapping))
    return math.ceil(chars / 4) + int(max_tokens or 0)


@dataclass
class CoraAnswers:
    """Cora node texts, class names and TAPE's recorded answers, indexed for prompt lookup."""

    texts: list[str]
    class_names: list[str]
    contents: list[str]
    ranked_names: list[list[str]]
    _by_prefix: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(
        cls, data_dir: Path | None = None, nodes: Iterable[int] | None = None
    ) -> "CoraAnswers":
        """Load ``<data_dir>/cora`` (default :func:`shared_data_dir`); answers of ``nodes`` only.

        Every node's text is indexed (so any prompt is attributed), but only the recorded
        answers of ``nodes`` (default: all 2,708) are read.
        """
        from tag_pipeline.datasets.cora import load_cora

        root = Path(data_dir or shared_data_dir()) / "cora"
        graph = load_cora(root, seeds=())
        keep = range(graph.num_nodes) if nodes is None else sorted(set(nodes))
        contents: dict[int, str] = {}
        ranked: dict[int, list[str]] = {}
        for i in keep:
            obj = json.loads((root / "gpt_responses" / "Cora" / f"{i}.json").read_text())
            contents[i] = obj["choices"][0]["message"]["content"]
            labels = parse_ranked_labels(contents[i], graph.class_names)
            ranked[i] = [graph.class_names[c] for c in labels]
        texts = [t.strip() for t in graph.text]
        self = cls(
            texts=texts,
            class_names=list(graph.class_names),
            contents=[contents.get(i, "") for i in range(graph.num_nodes)],
            ranked_names=[ranked.get(i, []) for i in range(graph.num_nodes)],
        )
        for i in keep:
            self._by_prefix.setdefault(self._prefix(texts[i]), []).append(i)
        return self

    @staticmethod
    def _prefix(text: str) -> str:
        return text.strip().split("\n", 1)[0].strip()[:PREFIX]

    def find_node(self, content: str) -> int | None:
        """The node whose whole text appears in ``content`` starting a line.

        The longest such text wins (a text may contain another); among equal texts, the
        smallest node id.
        """
        found: list[int] = []
        for line in content.split("\n"):
            for i in self._by_prefix.get(self._prefix(line), ()):
                if self.texts[i] in content:
                    found.append(i)
        return min(found, key=lambda i: (-len(self.texts[i]), i)) if found else None


@dataclass
class FaultPlan:
    """Scripted faults: ``by_node[i]`` = outcomes of node ``i``'s 1st, 2nd, ... requests.

    A request beyond its node's script is answered normally. Use :meth:`random` for faults
    at a rate.
    """

    by_node: dict[int, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for node, script in self.by_node.items():
            bad = [f for f in script if f not in FAULTS and f != "ok"]
            if bad:
                raise ValueError(f"node {node}: unknown faults {bad}; expected {FAULTS}")

    @classmethod
    def random(cls, nodes: Sequence[int], rates: Mapping[str, float], seed: int = 0) -> "FaultPlan":
        """Each node's first request fails with fault ``f`` with probability ``rates[f]``."""
        rng = random.Random(seed)
        plan: dict[int, list[str]] = {}
        for node in nodes:
            u, acc = rng.random(), 0.0
            for fault, rate in rates.items():
                acc += rate
                if u < acc:
                    plan[node] = [fault]
                    break
        return cls(plan)


class _Bucket:
    """Token bucket (GCRA form): ``rate`` units per second, at most ``burst`` units at once."""

    def __init__(self, per_minute: float, burst_s: float) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1.0, self.rate * burst_s)
        self.tat = 0.0  # theoretical arrival time: when the bucket is empty again

    def admit(self, now: float, units: float = 1.0) -> float:
        """0 if admitted (and charged), else seconds until it would be."""
        units = min(units, self.burst)
        tat = max(self.tat, now) + units / self.rate
        wait = tat - now - self.burst / self.rate
        if wait > 1e-9:
            return wait
        self.tat = tat
        return 0.0


class FakeOpenAIServer:
    """The server; see the module docstring.

    Args:
        answers (CoraAnswers): what to serve.
        rpm (float, optional): requests/min enforced with 429s. (default: ``None``, no limit)
        tpm (float, optional): tokens/min enforced with 429s. (default: ``None``)
        burst_s (float, optional): bucket size in seconds of the rate. (default: ``1.0``)
        latency_s (tuple[float, float], optional): uniform range of the simulated model time
            per answered request, seconds. (default: ``(0, 0)``)
        faults (FaultPlan, optional): scripted faults. (default: none)
        hang_s (float, optional): how long a ``"timeout"`` fault sleeps. (default: ``5.0``)
        model (str, optional): the ``model`` reported in responses.
        seed (int, optional): seed of the latency draws.
    """

    def __init__(
        self,
        answers: CoraAnswers,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        burst_s: float = 1.0,
        latency_s: tuple[float, float] = (0.0, 0.0),
        faults: FaultPlan | None = None,
        hang_s: float = 5.0,
        model: str = "gpt-3.5-turbo-0301",
        seed: int = 0,
    ) -> None:
        self.answers = answers
        self.rpm_bucket = _Bucket(rpm, burst_s) if rpm else None
        self.tpm_bucket = _Bucket(tpm, burst_s) if tpm else None
        self.latency_s = latency_s
        self.faults = faults or FaultPlan()
        self.hang_s = hang_s
        self.model = model
        self._rng = random.Random(seed)
        self._seen: Counter[int] = Counter()
        self._ids = itertools.count()
        self._log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.base_url: str | None = None

    # ----------------------------------------------------------------------------- the app
    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 2**20)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_log", self._get_log)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        models = [{"id": self.model, "object": "model"}]
        return web.json_response({"object": "list", "data": models})

    async def _get_log(self, request: web.Request) -> web.Response:
        return web.json_response(self.log)

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._log.append(entry)

    @property
    def log(self) -> list[dict[str, Any]]:
        """A copy of the request log (one dict per request, arrival order)."""
        with self._lock:
            return [dict(e) for e in self._log]

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()

    async def _chat(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        arrival = time.time()
        body = await request.json()
        messages = body.get("messages") or []
        user_text = "\n".join(
            m["content"]
            for m in messages
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)
        )
        node = self.answers.find_node(user_text)
        entry: dict[str, Any] = {
            "t": arrival,
            "node": -1 if node is None else node,
            "reask": len(messages) > 2,
            "conn": id(request.transport),
            "status": 200,
            "outcome": "ok",
        }
        self._record(entry)

        def reply(
            status: int, payload: Any, outcome: str, headers: Mapping[str, str] | None = None
        ) -> web.Response:
            entry["status"], entry["outcome"] = status, outcome
            ms = (time.perf_counter() - t0) * 1000.0
            hdrs = {"openai-processing-ms": f"{ms:.3f}", **(headers or {})}
            return web.json_response(payload, status=status, headers=hdrs)

        if node is None:
            error = _error("no Cora node text found in the prompt", "invalid_request_error")
            return reply(400, error, "unknown")

        now = time.monotonic()
        entry["tokens"] = estimate_tokens(messages, body.get("max_tokens") or 0)
        wait = self.rpm_bucket.admit(now) if self.rpm_bucket else 0.0
        if not wait and self.tpm_bucket:
            wait = self.tpm_bucket.admit(now, entry["tokens"])
            if wait and self.rpm_bucket:  # give back the request slot taken above
                self.rpm_bucket.tat -= 1.0 / self.rpm_bucket.rate
        if wait:
            return reply(429, _RATE_LIMITED, "rate_limited", _retry_after(wait))

        with self._lock:
            attempt = self._seen[node]
            self._seen[node] += 1
        script = self.faults.by_node.get(node, [])
        fault = script[attempt] if attempt < len(script) else "ok"
        entry["attempt"] = attempt
        if fault == "429":
            return reply(429, _RATE_LIMITED, "429", _retry_after(SCRIPTED_RETRY_AFTER_S))
        if fault == "401":
            return reply(401, _error("Incorrect API key provided", "invalid_request_error"), "401")
        if fault == "500":
            error = _error("The server had an error processing your request", "server_error")
            return reply(500, error, "500")
        if fault == "timeout":
            entry["outcome"] = "timeout"
            await asyncio.sleep(self.hang_s)
            return reply(504, _error("timed out", "server_error"), "timeout")

        lo, hi = self.latency_s
        if hi > 0:
            await asyncio.sleep(self._rng.uniform(lo, hi))
        payload, outcome = self._answer(node, body, messages, fault)
        return reply(200, payload, outcome)

    def _answer(
        self, node: int, body: Mapping[str, Any], messages: Sequence[Any], fault: str
    ) -> tuple[dict, str]:
        """The chat completion for ``node`` in the form the request asked for, and its outcome."""
        tools = body.get("tools") or []
        schema = tools[0]["function"].get("parameters", {}) if tools else {}
        max_items = schema.get("properties", {}).get("ranked_labels", {}).get("maxItems")
        names = self.answers.ranked_names[node][: max_items or None]
        answer = {"ranked_labels": names, "explanation": self.answers.contents[node]}
        outcome = "ok" if names else "no_class"
        if fault == "invalid":
            answer["ranked_labels"], outcome = ["Deep_Learning_Stuff"], "invalid"
        arguments = json.dumps(answer)
        if fault == "malformed":
            arguments, outcome = arguments[: len(arguments) // 2], "malformed"
        completion_tokens = math.ceil(len(arguments) / 4)
        prompt_tokens = estimate_tokens(messages, 0)
        if tools:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{next(self._ids)}",
                        "type": "function",
                        "function": {"name": tools[0]["function"]["name"], "arguments": arguments},
                    }
                ],
            }
        else:
            message = {"role": "assistant", "content": arguments}
        payload = {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return payload, outcome

    # ------------------------------------------------------------------------ lifecycle
    def start(self, port: int = 0) -> str:
        """Serve in a background thread on 127.0.0.1 (``port=0``: a free port).

        Returns:
            str: the base URL, ``http://127.0.0.1:<port>/v1``.
        """
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self.base_url = loop.run_until_complete(self._serve(port))
            except BaseException as e:  # surface start-up errors to the caller
                errors.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            pending = asyncio.all_tasks(loop)  # e.g. a "timeout" fault still sleeping
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai-server", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        assert self.base_url is not None
        return self.base_url

    async def _serve(self, port: int) -> str:
        self._runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        return f"http://127.0.0.1:{sockets[0].getsockname()[1]}/v1"

    def stop(self) -> None:
        """Stop the background server (idempotent)."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop = self._thread = None

    def __enter__(self) -> "FakeOpenAIServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


_RATE_LIMITED = _error("Rate limit reached; retry later", "requests")


def _retry_after(seconds: float) -> dict[str, str]:
    return {
        "retry-after": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, math.ceil(seconds * 1000))),
    }


# --------------------------------------------------------------------------- log analysis
def ok_calls_per_node(log: Iterable[Mapping[str, Any]]) -> Counter[int]:
    """Valid answers sent per node (``outcome == "ok"``); more than 1 is a paid duplicate."""
    return Counter(e["node"] for e in log if e["outcome"] == "ok")


def calls_per_node(log: Iterable[Mapping[str, Any]]) -> Counter[int]:
    """Requests per node, whatever their outcome."""
    return Counter(e["node"] for e in log)


def max_in_window(times: Sequence[float], window_s: float) -> int:
    """The most requests whose arrival times fall in any window of ``window_s`` seconds."""
    ts = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(ts):
        while ts[j] <= t - window_s:
            j += 1
        best = max(best, i - j + 1)
    return best


def by_node_times(log: Iterable[Mapping[str, Any]]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = defaultdict(list)
    for e in log:
        out[e["node"]].append(e["t"])
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI server serving TAPE's Cora answers.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rpm", type=float, default=None)
    parser.add_argument("--tpm", type=float, default=None)
    parser.add_argument("--burst-s", type=float, default=1.0)
    parser.add_argument("--latency", type=float, nargs=2, default=(0.0, 0.0), metavar=("LO", "HI"))
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(
        CoraAnswers.load(args.data),
        rpm=args.rpm,
        tpm=args.tpm,
        burst_s=args.burst_s,
        latency_s=tuple(args.latency),
    )

    async def serve() -> None:
        base_url = await server._serve(args.port)
        print(json.dumps({"base_url": base_url}), flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
