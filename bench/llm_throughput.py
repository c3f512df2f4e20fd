"""Throughput of the online LLM backend against a local fake OpenAI server at a rate limit.

Runs :func:`tag_pipeline.llm.online.answer_nodes` over the first N Cora nodes (fresh temporary
cache) against ``tests/llm/fake_openai_server.py`` started as a separate process (so its CPU
does not compete with the client for one interpreter), which serves TAPE's recorded GPT-3.5
answers and enforces the same limit R with 429s (token bucket of 1 s of the rate). The client
is limited to R too; the question is how close to R it gets, and at what cost per call.

    python bench/llm_throughput.py --nodes 2708 --rpm 6000 [--tpm T] [--concurrency 64]
        [--latency 0.2 0.6] [--mode tools]

Prints human-readable lines, then as its last line one JSON object:

- ``fraction_of_limit``: requests the server received per minute over the client's whole run
  (``answer_nodes`` wall time, set-up and tail included) divided by R;
  ``fraction_of_limit_active`` is the same between the first and the last request's arrival
  (it may exceed 1 by the client's burst, ``rpm * burst_s / 60`` requests, over the span, plus
  the server's time-stamp jitter);
- ``http_429``: 429 answers the server sent (the client's limiter should make this 0);
- ``duplicate_calls``: valid answers sent beyond the first per node (a paid duplicate; must be
  0). Re-asks of invalid answers are not duplicates: the 21 Cora answers that name no class are
  re-asked ``max_reasks`` times and then recorded as failed (``failed`` = 21 for all nodes);
- ``overhead_ms_per_call``: mean over answered requests of the client-side time of one HTTP
  request (from just before ``litellm.acompletion`` to its return) minus the server's own time
  for it (its ``openai-processing-ms`` header, which includes the simulated model latency):
  litellm, the HTTP stack and waiting for the client's busy event loop;
- ``client_cpu_ms_per_call``: CPU time of the client process during the run per request (all
  of litellm, instructor, validation, limiter, cache writes), the cost that caps throughput on
  one interpreter;
- plus the run's stats and the server's request counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from tag_pipeline.datasets.cora import load_cora  # noqa: E402
from tag_pipeline.llm.config import OnlineLLMConfig  # noqa: E402
from tag_pipeline.llm.online import answer_nodes  # noqa: E402


def shared_data_dir() -> Path:
    return Path(os.environ.get("TAG_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def start_server(
    rpm: float, tpm: float | None, latency: tuple[float, float]
) -> tuple[subprocess.Popen, str]:
    """Start the fake server process; returns it and its base URL."""
    cmd = [
        sys.executable, str(PROJECT_ROOT / "tests" / "llm" / "fake_openai_server.py"),
        "--rpm", str(rpm), "--latency", str(latency[0]), str(latency[1]),
    ]
    if tpm:
        cmd += ["--tpm", str(tpm)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.kill()
        raise RuntimeError("fake server did not start")
    return proc, json.loads(line)["base_url"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2708)
    parser.add_argument("--rpm", type=float, required=True)
    parser.add_argument("--tpm", type=float, default=None)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, nargs=2, default=(0.2, 0.6), metavar=("LO", "HI"),
                        help="simulated model latency range, seconds (default: 0.2 0.6)")
    parser.add_argument("--mode", choices=("tools", "json"), default="tools")
    parser.add_argument("--model", default="openai/gpt-3.5-turbo",
                        help="litellm model string sent (default: openai/gpt-3.5-turbo)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()

    graph = load_cora(shared_data_dir() / "cora", seeds=())
    n = min(args.nodes, graph.num_nodes)
    nodes = [(i, graph.text[i]) for i in range(n)]
    proc, base_url = start_server(args.rpm, args.tpm, tuple(args.latency))
    try:
        with tempfile.TemporaryDirectory(prefix="llm-bench-cache-") as cache_dir:
            cfg = OnlineLLMConfig(
                model=args.model,
                api_base=base_url,
                api_key_env=None,
                rpm=args.rpm,
                tpm=args.tpm,
                max_concurrency=args.concurrency,
                timeout_s=30.0,
                mode=args.mode,
                cache_dir=Path(cache_dir),
            )
            print(f"{n} Cora nodes, limit {args.rpm:g} RPM"
                  + (f" / {args.tpm:g} TPM" if args.tpm else "")
                  + f", concurrency {args.concurrency}, "
                  f"latency {args.latency[0]}-{args.latency[1]} s, "
                  f"server {base_url}", flush=True)
            cpu0 = time.process_time()
            df, stats = answer_nodes(nodes, "cora", graph.class_names, cfg, progress=args.progress)
            cpu = time.process_time() - cpu0
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_log", timeout=30) as r:
            log = json.loads(r.read())
    finally:
        proc.terminate()
        proc.wait(10)

    times = sorted(e["t"] for e in log)
    calls = len(log)
    wall = stats["wall_s"]
    active = times[-1] - times[0] if len(times) > 1 else float("nan")
    ok_per_node = Counter(e["node"] for e in log if e["outcome"] == "ok")
    outcomes = Counter(e["outcome"] for e in log)
    answered = max(1, stats["provider_ms_calls"])
    result = {
        "nodes": n,
        "rpm_limit": args.rpm,
        "tpm_limit": args.tpm,
        "fraction_of_limit": round(calls / wall * 60.0 / args.rpm, 4),
        "fraction_of_limit_active": (
            round((calls - 1) / active * 60.0 / args.rpm, 4) if calls > 1 else None
        ),
        "calls_per_min": round(calls / wall * 60.0, 1),
        "http_429": sum(1 for e in log if e["status"] == 429),
        "duplicate_calls": sum(c - 1 for c in ok_per_node.values() if c > 1),
        "failed": stats["failed"],
        "failed_invalid": stats["failed_invalid"],
        "overhead_ms_per_call": round(
            (stats["http_s"] * 1000.0 - stats["provider_ms"]) / answered, 2
        ),
        "client_cpu_ms_per_call": round(cpu * 1000.0 / max(1, calls), 2),
        "server_requests": calls,
        "server_connections": len({e.get("conn") for e in log}),
        "server_outcomes": dict(outcomes),
        "client_calls": stats["calls"],
        "reasks": stats["reasks"],
        "retries": stats["retries"],
        "limiter_wait_s": round(stats["limiter_wait_s"], 1),
        "wall_s": round(wall, 2),
        "concurrency": args.concurrency,
        "latency_s": list(args.latency),
        "mode": args.mode,
        "model": args.model,
        "rows": df.height,
    }
    print(f"{calls} requests in {wall:.1f} s = {result['calls_per_min']:.0f}/min "
          f"({result['fraction_of_limit']:.3f} of the limit; {result['fraction_of_limit_active']} "
          f"between first and last request)")
    print(f"429s {result['http_429']}, duplicate answers {result['duplicate_calls']}, failed nodes "
          f"{result['failed']} (invalid after re-asks: {result['failed_invalid']})")
    print(f"client overhead {result['overhead_ms_per_call']} ms per call beyond the server's time; "
          f"client CPU {result['client_cpu_ms_per_call']} ms per call")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
