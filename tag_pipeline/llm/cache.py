"""The persistent LLM answer cache: no answer is paid for twice.

A :class:`diskcache.Cache` (SQLite in WAL mode under a folder; safe for several threads and
processes at once) maps a key computed by :func:`answer_key` from everything that determines an
answer (backend, model, prompt template version and prompt hash, the node text's sha256, and the
generation parameters) to one answer record. Backends write each answer as soon as it arrives,
so a killed run loses at most the requests in flight. Eviction is off: paid answers are never
dropped to save space (a Cora run takes about 10 MB).

The record is a plain ``dict`` holding the columns of
:data:`tag_pipeline.llm.store.RESPONSE_SCHEMA` that belong to the answer rather than to a node
(``status``, ``error``, ``raw_text``, ``ranked_labels``, ``explanation``, ``finish_reason``,
token counts, ``response_id``, ``created_unix``, ``source``, ``prompt_version``); the node id is
added when the record becomes a row, so nodes with equal text share one answer.

(Cache on purpose, keyed on (model, prompt template version, node text hash, parameters): the
project's conventions, rule 6.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import diskcache

CACHE_FORMAT = 1
"""Version of the key and record layout; part of every key."""

RECORD_FIELDS = (
    "status",
    "error",
    "raw_text",
    "ranked_labels",
    "explanation",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "response_id",
    "created_unix",
    "source",
    "prompt_version",
)
"""Keys of a cached answer record (response-table columns without ``node_id`` and ``model``)."""


def text_sha256(text: str) -> str:
    """sha256 hex digest of a node's text as sent (UTF-8 of the stripped text)."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


def answer_key(
    *,
    backend: str,
    model: str,
    prompt_version: str,
    prompt_hash: str,
    text: str,
    params: Mapping[str, Any],
) -> str:
    """Cache key of one answer.

    Args:
        backend (str): ``"online"`` or ``"offline"`` (the same weights decode differently
            behind an API and under guided decoding).
        model (str): the model string or path, e.g. ``"gpt-4o-mini"``.
        prompt_version (str): e.g. ``"cora.v1"``
            (:func:`tag_pipeline.llm.prompts.prompt_version`).
        prompt_hash (str): :func:`tag_pipeline.llm.prompts.prompt_hash` (covers the template
            wording, dataset name, class names and ``k``).
        text (str): the node's text (hashed, stripped).
        params (Mapping[str, Any]): JSON-able generation parameters that change the answer
            (temperature, max tokens, structured-output mode, ...).

    Returns:
        str: 64 hex characters, the sha256 of the canonical JSON of all of the above plus
        :data:`CACHE_FORMAT`.
    """
    payload = {
        "format": CACHE_FORMAT,
        "backend": backend,
        "model": model,
        "prompt_version": prompt_version,
        "prompt_hash": prompt_hash,
        "text_sha256": text_sha256(text),
        "params": dict(params),
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def open_cache(directory: Path | str) -> diskcache.Cache:
    """Open (creating if needed) the answer cache in ``directory``.

    Args:
        directory (Path | str): the cache folder (e.g. ``data/llm_cache``).

    Returns:
        diskcache.Cache: with eviction disabled. Close it (or use it as a context manager)
        when done.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    return diskcache.Cache(str(path), eviction_policy="none", size_limit=2**50)


def get_answer(cache: diskcache.Cache, key: str) -> dict[str, Any] | None:
    """The cached record for ``key``, or ``None`` (also for an unreadable entry)."""
    try:
        value = cache.get(key, default=None, retry=True)
    except Exception:  # an entry written by an incompatible version: treat as a miss
        return None
    return dict(value) if isinstance(value, Mapping) else None


def put_answer(cache: diskcache.Cache, key: str, record: Mapping[str, Any]) -> None:
    """Store one answer record durably (committed before this returns).

    Args:
        cache (diskcache.Cache): from :func:`open_cache`.
        key (str): from :func:`answer_key`.
        record (Mapping[str, Any]): the answer; keys outside :data:`RECORD_FIELDS` are dropped.
    """
    cache.set(key, {f: record.get(f) for f in RECORD_FIELDS}, retry=True)
