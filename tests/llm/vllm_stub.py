"""Stand-ins for what ``vllm.LLM.chat`` returns (``RequestOutput`` / ``CompletionOutput``), for
the offline backend's tests, which run without vLLM or a GPU."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Completion:
    """One generated completion: its text, why it stopped, its token ids."""

    text: str
    finish_reason: str = "stop"
    token_ids: list[int] = field(default_factory=lambda: [1] * 20)


@dataclass
class Output:
    """The completions of one prompt, and the prompt's token ids."""

    outputs: list[Completion]
    prompt_token_ids: list[int] = field(default_factory=lambda: [1] * 100)
