"""Local backend: a small GGUF model behind llama.cpp's OpenAI-compatible server, on this machine.

TAPE's LLM stage (He et al., ICLR 2024, arXiv 2305.19523, Sec. 4.1) with no API key and no GPU:
the stage starts ``python -m llama_cpp.server`` (llama-cpp-python) on 127.0.0.1 with a GGUF
model (:func:`model_file`: the packaged SmolLM2-135M-Instruct or Gemma-3-270M, or a file),
waits until it answers, and asks it about every node through the ``online`` backend
(:func:`tag_pipeline.llm.online.answer_nodes`: litellm + instructor, rate limit, retries,
re-asks, budget, answer cache, progress bar). The answer's JSON schema goes out as a forced
tool call, which the server compiles into a grammar, so the labels can only be the dataset's
class names and the explanation stops at ``explanation_max_chars``; a class the model repeats
is kept at its first rank (the grammar cannot forbid repeats, and a re-ask of a small model
tends to repeat again). With ``api_base`` set, a
server that is already running is used instead (llama.cpp's ``llama-server``, Ollama, ``vllm
serve``: the same API), and nothing is started.

Why our own process management (a ``subprocess.Popen`` and a health poll) rather than a
library: llama-cpp-python ships the server as a module to run, not as a managed service, and
the stage needs only start, wait for ``/v1/models``, and stop.

**Server settings that matter for throughput** (all measured in ``bench/llm_local.py``):
``logits_all=False`` (the server's default keeps the logits of every prompt token: about 49k
x prompt-length floats per request for nothing), one request at a time per server (the
Python server holds one model behind a lock), and ``servers`` processes side by side, each
with ``threads`` cores, requests spread over them by the client's workers.

**Keys.** Answers are cached (:func:`node_answer_key`) under the model file's sha256
(:func:`model_digest`), the prompt template's version and hash, and the parameters that shape
an answer (:func:`generation_params`); not under the port, the number of servers or threads,
which decide how fast answers come, not what they say (greedy decoding of one prompt at a
time). The lake key of the answer set (:func:`tag_pipeline.llm.stage.responses_path`) hashes
the same. The manifest records the server version and the model file's digest.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tag_pipeline.llm.config import LocalLLMConfig, OnlineLLMConfig

SOURCE = "local:llama.cpp"
"""``source`` of the rows this backend writes."""

SERVER_DISTRIBUTION = "llama-cpp-python"
SERVER_VERSION = "0.3.36"
"""The llama-cpp-python release ``scripts/setup_llama.sh`` builds (and this module is tested with)."""

INSTALL_HINT = "bash scripts/setup_llama.sh (builds llama-cpp-python[server] for this CPU, about 6 minutes once)"
"""What to run when the server is missing."""

_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


class LocalServerError(RuntimeError):
    """The local LLM server is not installed, did not start, or stopped answering."""


def require_server() -> str:
    """Check that llama-cpp-python's server can run here, without importing it.

    Returns:
        str: the installed llama-cpp-python version.

    Raises:
        LocalServerError: the package or one of its server extras is missing (the message
            gives the install command).
    """
    missing = [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise LocalServerError(
            f"llm.backend='local' needs llama-cpp-python's server (missing: {', '.join(missing)}); "
            f"install it with: {INSTALL_HINT}"
        )
    return importlib.metadata.version(SERVER_DISTRIBUTION)


def model_file(spec: str) -> Path:
    """The GGUF file of a model spec: ``"smollm2"``, ``"gemma3-270m"`` or a ``.gguf`` path.

    Raises:
        tag_pipeline.models.decoder.DecoderNotFoundError: the package is not installed (the
            message gives the install command) or the file does not exist.
    """
    from tag_pipeline.models.decoder import DecoderNotFoundError, locate_decoder

    loc = locate_decoder(spec)
    if loc.gguf_file is None:
        raise DecoderNotFoundError(f"llm.local.model={spec!r}: the local server needs a .gguf file, got the folder {loc.folder}")
    return loc.weights


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def model_digest(path: Path) -> str:
    """sha256 hex digest of a model file's bytes (once per process per file version; 94 MB: 0.3 s)."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def generation_params(cfg: LocalLLMConfig) -> dict[str, Any]:
    """The parameters of ``cfg`` that change an answer, as they enter the cache and lake keys.

    Servers, threads, ports, limits, timeouts, retries and ``max_reasks`` are left out: they
    decide how fast and whether an answer comes, not what it says. ``n_batch`` is in: it
    splits the prompt's evaluation, which may change float rounding.
    """
    return {
        "temperature": cfg.temperature,
        "max_output_tokens": cfg.max_output_tokens,
        "top_k": cfg.top_k,
        "mode": cfg.mode,
        "explanation_max_chars": cfg.explanation_max_chars,
        "n_ctx": cfg.n_ctx,
        "n_batch": cfg.n_batch,  # prompt tokens per forward pass: may change rounding
        "dedupe_labels": True,  # llama.cpp's grammar cannot express uniqueItems
    }


def installed_server_version() -> str | None:
    """The installed llama-cpp-python version, read from its metadata (nothing imported), or ``None``."""
    try:
        return importlib.metadata.version(SERVER_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def model_identity(cfg: LocalLLMConfig, path: Path | None = None) -> dict[str, str | None]:
    """What the keys know of the model and who runs it.

    ``model_sha256``: the GGUF file's digest (not its name or path); ``server``: the
    llama-cpp-python version that runs it (``llama-cpp-python==0.3.36``; another llama.cpp
    may decode differently), or, for a server already running, its ``api_base`` (which must
    serve that file: what else it runs is unknown here).

    ``path``: ``model_file(cfg.model)`` when the caller has it already (locating a packaged
    model can cost a second: Gemma's ``assemble()`` checks its file's sha256).

    Raises:
        DecoderNotFoundError: see :func:`model_file`.
    """
    server = cfg.api_base or f"{SERVER_DISTRIBUTION}=={installed_server_version()}"
    return {"model_sha256": model_digest(path or model_file(cfg.model)), "server": server}


def node_answer_key(
    dataset: str, class_names: Sequence[str], cfg: LocalLLMConfig, path: Path | None = None
) -> Callable[[str], str]:
    """``text -> key`` under which the local backend caches a node's answer.

    :func:`tag_pipeline.llm.cache.answer_key` with backend ``"local"``, the model file's
    sha256 and the server version as the model (:func:`model_identity`), the prompt
    template's version and hash, and :func:`generation_params`. A managed server's port,
    count and threads are not in it: the same file and llama.cpp answer the same wherever
    they run (greedy decoding of one prompt at a time; tests/llm/test_local.py compares 1 and
    2 threads). ``path``: see :func:`model_identity`.
    """
    from tag_pipeline.llm.cache import answer_key
    from tag_pipeline.llm.prompts import prompt_hash, prompt_version

    version = prompt_version(dataset, cfg.template_version)
    p_hash = prompt_hash(dataset, list(class_names), cfg.template_version, k=cfg.top_k)
    identity = model_identity(cfg, path)
    model = f"sha256:{identity['model_sha256']}@{identity['server']}"
    params = generation_params(cfg)

    def key(text: str) -> str:
        return answer_key(backend="local", model=model, prompt_version=version, prompt_hash=p_hash, text=text, params=params)

    return key


def client_config(cfg: LocalLLMConfig, api_base: str) -> OnlineLLMConfig:
    """The ``online`` client settings that ask the server at ``api_base`` for ``cfg``.

    ``max_concurrency`` defaults to 2 per server: one request generating, one waiting in the
    server's queue, so the server never idles between requests.
    """
    servers = 1 if cfg.api_base else server_count(cfg)
    return OnlineLLMConfig(
        model=f"openai/{cfg.served_model}",
        api_base=api_base,
        api_key_env=None,
        mode=cfg.mode,
        template_version=cfg.template_version,
        top_k=cfg.top_k,
        temperature=cfg.temperature,
        max_output_tokens=cfg.max_output_tokens,
        rpm=cfg.rpm,
        max_concurrency=cfg.max_concurrency or 2 * servers,
        timeout_s=cfg.timeout_s,
        max_attempts=cfg.max_attempts,
        max_reasks=cfg.max_reasks,
        max_calls=cfg.max_calls,
        cache_dir=cfg.cache_dir,
        reask_failed=cfg.reask_failed,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(model_path: Path, port: int, cfg: LocalLLMConfig, threads: int) -> list[str]:
    """The command line of one llama-cpp-python server (see the module docstring's settings)."""
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path), "--model_alias", cfg.served_model,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(cfg.n_ctx), "--n_batch", str(cfg.n_batch),
        "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--logits_all", "False", "--interrupt_requests", "False", "--verbose", "False",
    ]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def server_count(cfg: LocalLLMConfig) -> int:
    """``cfg.servers``, else one per core this process may use (divided by ``cfg.threads`` if set)."""
    if cfg.servers is not None:
        return cfg.servers
    return max(1, _cores() // (cfg.threads or 1))


def threads_per_server(cfg: LocalLLMConfig) -> int:
    """``cfg.threads``, else the cores this process may use divided by the servers (at least 1)."""
    if cfg.threads is not None:
        return cfg.threads
    return max(1, _cores() // server_count(cfg))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the server gets SIGTERM when the process that started it dies (even by SIGKILL), so
    a killed flow run leaves no server behind. Elsewhere nothing."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_until_ready(api_base: str, process: subprocess.Popen | None, timeout_s: float, log: Path | None = None) -> float:
    """Poll ``GET {api_base}/models`` until it answers 200; return the seconds waited.

    Raises:
        LocalServerError: the process exited, or no answer within ``timeout_s`` (the message
            holds the end of the server's log).
    """
    import httpx

    t0 = time.monotonic()
    while True:
        if process is not None and process.poll() is not None:
            raise LocalServerError(
                f"the local LLM server exited with code {process.returncode} before answering at {api_base}"
                + (f"; its log ({log}) ends:\n{_log_tail(log)}" if log else "")
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_base}/models", timeout=2.0).status_code == 200:
                return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise LocalServerError(
                f"the local LLM server at {api_base} did not answer within {timeout_s:g} s"
                + (f"; its log ({log}) ends:\n{_log_tail(log)}" if log else "")
            )
        time.sleep(0.2)


@contextlib.contextmanager
def llama_servers(cfg: LocalLLMConfig, model_path: Path) -> Iterator[list[str]]:
    """Start :func:`server_count` llama-cpp-python servers with ``model_path``; yield their API bases.

    Each listens on a free port of 127.0.0.1 with :func:`threads_per_server` threads, logs to
    a temporary file, and is stopped (SIGTERM, then SIGKILL after 10 s) when the block ends,
    whatever happens in it; on Linux also when the thread that started it dies, even by
    SIGKILL (``PR_SET_PDEATHSIG``), so a killed run leaves no server behind.

    Raises:
        LocalServerError: not installed (see :func:`require_server`), or a server did not
            start (its log's end is in the message).
    """
    require_server()
    threads = threads_per_server(cfg)
    processes: list[tuple[subprocess.Popen, Path]] = []
    log_dir = Path(tempfile.mkdtemp(prefix="tag-llama-server-"))
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    try:
        bases = []
        for i in range(server_count(cfg)):
            port = _free_port()
            log = log_dir / f"server{i}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    server_command(model_path, port, cfg, threads), stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=env, start_new_session=True, preexec_fn=_die_with_parent,
                )
            processes.append((process, log))
            bases.append(f"http://127.0.0.1:{port}/v1")
        for (process, log), base in zip(processes, bases, strict=True):
            wait_until_ready(base, process, cfg.startup_timeout_s, log)
        yield bases
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.terminate()
        for process, _ in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def answer_nodes_local(
    nodes: Sequence[tuple[int, str]],
    dataset: str,
    class_names: Sequence[str],
    cfg: LocalLLMConfig,
    *,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Ask a local GGUF model to rank the classes of every node and explain (TAPE's E and P).

    Looks every text up in the answer cache first; only when something is missing does it
    start the server(s) (or use ``cfg.api_base``), ask through
    :func:`tag_pipeline.llm.online.answer_nodes`, and stop them.

    Args:
        nodes (Sequence[tuple[int, str]]): ``[(node_id, text), ...]``; equal texts share one
            request.
        dataset (str): dataset name (picks the prompt template).
        class_names (Sequence[str]): the ``C`` class names in label order.
        cfg (LocalLLMConfig): model, servers, generation parameters, limits, cache folder.
        progress (bool, optional): show a tqdm progress bar. (default: ``True``)

    Returns:
        tuple[pl.DataFrame, dict]: the response table (one row per node, ``model =
        cfg.model``, ``source = "local:llama.cpp"``) and the online backend's stats plus
        ``server`` (``version``, ``model_file``, ``model_sha256``, ``servers``, ``threads``,
        ``api_base`` when external, ``startup_s``), ``asked`` (distinct texts not in the cache),
        ``answers_per_s`` (those per second of the asking, server start excluded) and
        ``completion_tokens_per_s``.

    Raises:
        LocalServerError: the server is not installed or did not start.
        DecoderNotFoundError: the model is not installed or not a file.
    """
    from tag_pipeline.llm.cache import get_answer, open_cache
    from tag_pipeline.llm.online import answer_nodes

    path = model_file(cfg.model)
    key_of = node_answer_key(dataset, class_names, cfg, path)
    with open_cache(cfg.cache_dir) as cache:
        keys = {key_of(text) for _, text in nodes}
        hits = {k: get_answer(cache, k) for k in keys}
    to_ask = sum(1 for h in hits.values() if h is None or (cfg.reask_failed and h.get("status") == "failed"))
    missing = to_ask > 0
    server: dict[str, Any] = {
        "model_file": str(path), "model_sha256": model_digest(path),
        "version": installed_server_version(),
    }
    kwargs = {
        "progress": progress, "key_of": key_of, "max_explanation_chars": cfg.explanation_max_chars,
        "dedupe_labels": True, "source": SOURCE,
    }
    if not missing or cfg.api_base is not None:
        base = cfg.api_base or "http://127.0.0.1:1/v1"  # nothing is sent when every answer is cached
        server |= {"api_base": cfg.api_base} if cfg.api_base else {"started": False}
        df, stats = answer_nodes(nodes, dataset, class_names, client_config(cfg, base), **kwargs)
    else:
        t0 = time.monotonic()
        with llama_servers(cfg, path) as bases:
            server |= {"servers": len(bases), "threads": threads_per_server(cfg), "startup_s": round(time.monotonic() - t0, 2)}
            df, stats = answer_nodes(nodes, dataset, class_names, client_config(cfg, bases[0]), api_bases=bases, **kwargs)
    import polars as pl

    df = df.with_columns(pl.lit(cfg.model).alias("model"))
    asked = to_ask if missing else 0
    seconds = float(stats.get("wall_s") or 0.0)
    stats |= {
        "server": server,
        "asked": asked,
        "answers_per_s": round(asked / seconds, 4) if asked and seconds else None,
        "completion_tokens_per_s": round(stats["completion_tokens"] / seconds, 2) if asked and seconds else None,
    }
    return df, stats
