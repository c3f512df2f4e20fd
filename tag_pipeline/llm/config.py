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
