"""Offline LLM backend: every node's ranked classes and explanation from a local model with vLLM.

The same prompts (:mod:`tag_pipeline.llm.prompts`), answer schema
(:func:`tag_pipeline.llm.schema.answer_model`), cache (:mod:`tag_pipeline.llm.cache`) and
response table (:mod:`tag_pipeline.llm.store`) as the online backend; only the engine differs.
Prompts are rendered with the model's chat template and generated in batches by
``vllm.LLM.chat`` (continuous batching inside each batch) with the answer's JSON schema
enforced by guided decoding (vLLM's structured outputs), so every finished answer is valid JSON
of the right shape. Constraints a grammar may not enforce (``uniqueItems``, say) are still
checked by the answer model; an answer that fails is generated again with the error appended
to the conversation, up to ``max_reasks`` rounds, then recorded as failed with the reason.
An answer cut off at ``max_tokens`` is recorded as failed too. Each batch's answers are written
to the cache as soon as the batch (and its re-asks) finishes.

vLLM is imported inside the functions that need it, so this module imports (and its logic is
testable with a stand-in engine) on machines without CUDA or the ``gpu`` extra.

(TAPE, He et al., ICLR 2024, arXiv 2305.19523, Sec. 4.1, queries GPT-3.5 online; a local
open model through vLLM is the offline counterpart the project offers.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import polars as pl
import pydantic

from tag_pipeline.llm.cache import answer_key, get_answer, open_cache, put_answer
from tag_pipeline.llm.config import OfflineLLMConfig
from tag_pipeline.llm.prompts import build_messages, prompt_hash, prompt_version
from tag_pipeline.llm.schema import answer_model, labels_to_indices, validation_summary
from tag_pipeline.llm.store import responses_from_records

SOURCE = "offline:vllm"
"""``source`` of the rows this backend writes."""


class ChatEngine(Protocol):
    """What :func:`answer_nodes_offline` needs of an engine: ``vllm.LLM.chat``'s signature.

    ``chat(conversations, sampling_params, use_tqdm=...)`` returns one output per conversation
    with ``.outputs[0].text``, ``.outputs[0].finish_reason``, ``.outputs[0].token_ids`` and
    ``.prompt_token_ids``.
    """

    def chat(
        self, messages: Any, sampling_params: Any = None, use_tqdm: bool = True
    ) -> list[Any]: ...


def node_answer_key(dataset: str, class_names: Sequence[str], cfg: OfflineLLMConfig) -> Callable[[str], str]:
    """``text -> key`` under which :func:`answer_nodes_offline` caches a node's answer for
    ``cfg`` (:func:`tag_pipeline.llm.cache.answer_key`); the LLM stage's fan-out plans with the
    same function."""
    version = prompt_version(dataset, cfg.template_version)
    p_hash = prompt_hash(dataset, list(class_names), cfg.template_version, k=cfg.top_k)
    params = generation_params(cfg)

    def key(text: str) -> str:
        return answer_key(
            backend="offline", model=cfg.model_path, prompt_version=version, prompt_hash=p_hash, text=text,
            params=params,
        )

    return key


def generation_params(cfg: OfflineLLMConfig) -> dict[str, Any]:
    """The parameters of ``cfg`` that change an answer, as they enter the cache key.

    Limits, budget, retries and ``max_reasks`` are left out: they decide whether an answer is
    obtained, not what it says (a failure cached under fewer re-asks is asked again with
    ``reask_failed=True``). The numerics and the context do change answers: ``dtype`` (the
    weights' arithmetic) and ``max_model_len`` (a shorter context cuts long prompts) enter
    when set away from their defaults (``"auto"``, ``None``), so default keys are as before.
    ``batch_size``, ``gpu_memory_utilization`` and ``tensor_parallel_size`` are how the batch
    is scheduled: greedy answers can differ in rare ties from float rounding across batch
    shapes, which the key does not follow (as for any GPU batch inference).
    """
    return {
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "seed": cfg.seed,
        "max_tokens": cfg.max_tokens,
        "top_k": cfg.top_k,
        "structured": "json_schema",
        **({"dtype": cfg.dtype} if cfg.dtype != "auto" else {}),
        **({"max_model_len": cfg.max_model_len} if cfg.max_model_len is not None else {}),
    }


def structured_sampling_params(cfg: OfflineLLMConfig, schema: dict[str, Any]) -> Any:
    """``vllm.SamplingParams`` that constrain decoding to the JSON ``schema``.

    Works across vLLM versions: recent ones take
    ``SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))`` (the
    ``guided_*`` fields were removed in v0.12); older ones
    ``SamplingParams(guided_decoding=GuidedDecodingParams(json=schema))``.

    Args:
        cfg (OfflineLLMConfig): sampling settings (``temperature``, ``top_p``, ``seed``,
            ``max_tokens``).
        schema (dict[str, Any]): the answer's JSON schema.

    Returns:
        vllm.SamplingParams: for one answer per prompt.

    Raises:
        ImportError: vLLM is not installed, or offers neither structured-output API.
    """
    import vllm.sampling_params as sp  # noqa: PLC0415  (vLLM is optional: imported on use)

    common = dict(
        n=1, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, max_tokens=cfg.max_tokens
    )
    if hasattr(sp, "StructuredOutputsParams"):
        structured = sp.StructuredOutputsParams(json=schema)
        return sp.SamplingParams(structured_outputs=structured, **common)
    if hasattr(sp, "GuidedDecodingParams"):
        return sp.SamplingParams(guided_decoding=sp.GuidedDecodingParams(json=schema), **common)
    raise ImportError("this vLLM has neither StructuredOutputsParams nor GuidedDecodingParams")


def load_engine(cfg: OfflineLLMConfig) -> ChatEngine:
    """Load ``cfg.model_path`` into a ``vllm.LLM`` (minutes for a large model).

    Raises:
        ImportError: vLLM is not installed (``pip install -e ".[gpu]"``, CUDA only).
    """
    from vllm import LLM  # noqa: PLC0415  (vLLM is optional: imported on use)

    kwargs: dict[str, Any] = dict(
        model=cfg.model_path,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        tensor_parallel_size=cfg.tensor_parallel_size,
        dtype=cfg.dtype,
        seed=cfg.seed,
    )
    if cfg.max_model_len is not None:
        kwargs["max_model_len"] = cfg.max_model_len
    return LLM(**kwargs)


def _reask_message(reason: str) -> dict[str, str]:
    return {
        "role": "user",
        "content": (
            f"That answer is not valid: {reason}. Answer again as the same JSON object, "
            "following the instructions above."
        ),
    }


def _read_output(
    output: Any, model: type[pydantic.BaseModel], class_names: Sequence[str]
) -> tuple[dict[str, Any] | None, str | None, str, int, int]:
    """Read one vLLM output.

    Returns ``(fields, error, text, prompt_tokens, completion_tokens)``: the ok record's
    answer fields, or ``None`` with the reason (``"cut off"`` or the validation summary).
    """
    completion = output.outputs[0]
    text = completion.text or ""
    prompt_tokens = len(getattr(output, "prompt_token_ids", None) or [])
    completion_tokens = len(getattr(completion, "token_ids", None) or [])
    if completion.finish_reason == "length":
        return None, "cut off", text, prompt_tokens, completion_tokens
    try:
        answer = model.model_validate_json(text)
    except pydantic.ValidationError as e:
        return None, validation_summary(e), text, prompt_tokens, completion_tokens
    fields = {
        "raw_text": text,
        "ranked_labels": labels_to_indices(answer.ranked_labels, class_names),
        "explanation": answer.explanation,
        "finish_reason": completion.finish_reason,
    }
    return fields, None, text, prompt_tokens, completion_tokens


def answer_nodes_offline(
    nodes: Sequence[tuple[int, str]],
    dataset: str,
    class_names: Sequence[str],
    cfg: OfflineLLMConfig,
    *,
    progress: bool = True,
    engine: ChatEngine | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Generate every node's ranked classes and explanation with vLLM, batch by batch.

    Args:
        nodes (Sequence[tuple[int, str]]): ``[(node_id, text), ...]``; equal texts are
            generated once.
        dataset (str): dataset name; picks the prompt template.
        class_names (Sequence[str]): the ``C`` class names in label order.
        cfg (OfflineLLMConfig): model, batching, sampling and cache settings.
        progress (bool, optional): vLLM's progress bar per batch. (default: ``True``)
        engine (ChatEngine, optional): a loaded ``vllm.LLM`` (or anything with its ``chat``);
            loaded from ``cfg`` only if some node is not cached. (default: ``None``)

    Returns:
        tuple[pl.DataFrame, dict]: one row per node sorted by ``node_id`` in
        :data:`tag_pipeline.llm.store.RESPONSE_SCHEMA` (``model = cfg.model_path``,
        ``source = "offline:vllm"``, ``raw_text`` the generated JSON, tokens summed over
        re-asks); and stats: ``nodes``, ``unique_texts``, ``cache_hits``, ``ok``, ``failed``,
        ``failed_invalid``, ``generated`` (prompts generated, re-asks included), ``reasks``,
        ``prompt_tokens``, ``completion_tokens``, ``total_tokens``, ``batches``, ``wall_s``.

    Raises:
        ImportError: an engine is needed and vLLM is not installed.
        ValueError: empty class names or an empty node text.
    """
    t_start = time.monotonic()
    names = list(class_names)
    version = prompt_version(dataset, cfg.template_version)
    key_of = node_answer_key(dataset, names, cfg)
    model = answer_model(names, cfg.top_k)

    groups: dict[str, list[int]] = {}
    texts: dict[str, str] = {}
    for node_id, text in nodes:
        key = key_of(text)
        groups.setdefault(key, []).append(int(node_id))
        texts.setdefault(key, text)

    stats: dict[str, Any] = dict(
        nodes=len(nodes), unique_texts=len(groups), cache_hits=0, generated=0, reasks=0,
        prompt_tokens=0, completion_tokens=0, batches=0,
    )
    results: dict[str, dict[str, Any]] = {}
    with open_cache(cfg.cache_dir) as cache:
        pending = []
        for key in groups:
            hit = get_answer(cache, key)
            if hit is not None and not (cfg.reask_failed and hit.get("status") == "failed"):
                results[key] = hit
                stats["cache_hits"] += len(groups[key])
            else:
                pending.append(key)
        if pending:
            engine = engine if engine is not None else load_engine(cfg)
            sampling = structured_sampling_params(cfg, model.model_json_schema())
        for start in range(0, len(pending), cfg.batch_size):
            batch = pending[start : start + cfg.batch_size]
            stats["batches"] += 1
            conversations = {
                key: build_messages(dataset, names, texts[key], cfg.template_version, k=cfg.top_k)
                for key in batch
            }
            used = {key: [0, 0, 0] for key in batch}  # attempts, prompt tokens, completion tokens
            todo = list(batch)
            for round_ in range(cfg.max_reasks + 1):
                outputs = engine.chat([conversations[k] for k in todo], sampling, use_tqdm=progress)
                stats["generated"] += len(todo)
                stats["reasks"] += len(todo) if round_ else 0
                retry = []
                for key, output in zip(todo, outputs, strict=True):
                    fields, error, text, p_tok, c_tok = _read_output(output, model, names)
                    u = used[key]
                    u[0] += 1
                    u[1] += p_tok
                    u[2] += c_tok
                    stats["prompt_tokens"] += p_tok
                    stats["completion_tokens"] += c_tok
                    record = {
                        "prompt_tokens": u[1] or None, "completion_tokens": u[2] or None,
                        "source": SOURCE, "prompt_version": version,
                    }
                    if fields is not None:
                        results[key] = {**record, "status": "ok", "error": None, **fields}
                    elif error == "cut off":
                        results[key] = {
                            **record, "status": "failed", "raw_text": None, "ranked_labels": [],
                            "explanation": "", "finish_reason": "length",
                            "error": f"answer cut off at max_tokens={cfg.max_tokens} "
                            "(finish_reason=length)",
                        }
                    elif round_ < cfg.max_reasks:
                        conversations[key] = [
                            *conversations[key],
                            {"role": "assistant", "content": text},
                            _reask_message(error or "invalid"),
                        ]
                        retry.append(key)
                    else:
                        results[key] = {
                            **record, "status": "failed", "raw_text": None, "ranked_labels": [],
                            "explanation": "",
                            "error": f"invalid answer after {u[0]} attempts: {error}",
                        }
                todo = retry
                if not todo:
                    break
            for key in batch:  # the batch is final: persist it before the next one
                put_answer(cache, key, results[key])

    rows = [
        {"node_id": node_id, "model": cfg.model_path, **results[key]}
        for key, node_ids in groups.items()
        for node_id in node_ids
    ]
    rows.sort(key=lambda r: r["node_id"])
    stats["ok"] = sum(1 for r in rows if r["status"] == "ok")
    stats["failed"] = len(rows) - stats["ok"]
    stats["failed_invalid"] = sum(
        1 for r in rows if r["status"] == "failed" and str(r["error"]).startswith("invalid answer")
    )
    stats["total_tokens"] = stats["prompt_tokens"] + stats["completion_tokens"]
    stats["wall_s"] = time.monotonic() - t_start
    return responses_from_records(rows), stats
