"""Thin Prefect task wrappers around the library's stage functions.

Every stage task retries, caches on its inputs and its own source and persists its (small)
result, so a rerun with nothing changed is all cache hits and a failed flow run resumes at
the failed stage. The heavy data lives in the lake; tasks pass artifact paths and summaries.

A cached result is only trusted while the lake artifacts it names are intact
(:class:`LakeArtifactsIntact`): delete or damage ``data/lake/cora/features/...`` and the next
run rebuilds it instead of handing a dead path downstream; and only for the library code that
wrote it (:class:`LibrarySource`): after an upgrade of ``tag_pipeline`` every stage task runs
again, and each finds its artifact in the lake when its lineage key is unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

import tag_pipeline
from tag_pipeline import lake
from tag_pipeline.datasets.base import DatasetError


@lru_cache(maxsize=1)
def library_fingerprint() -> str:
    """SHA-256 (16 hex digits) of every ``.py`` file of the installed ``tag_pipeline`` package,
    with its relative path; read once per process (a worker starts one per flow run)."""
    root = Path(tag_pipeline.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@dataclass
class LibrarySource(CachePolicy):
    """Prefect cache policy keyed by :func:`library_fingerprint`.

    Prefect's ``TASK_SOURCE`` hashes the task function only; our tasks are thin wrappers, and
    what they compute (and where its artifact lives: lineage keys are library code) is in
    ``tag_pipeline``. Without this, a library upgrade that changes a result or a key would
    still get the old run's cached path. With it, the first run after an upgrade runs every
    stage task; a stage whose lineage key did not change finds its artifact in the lake and
    returns at once, so the cost is the tasks' bookkeeping, not recomputation.
    """

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str | None:
        return library_fingerprint()


@dataclass
class StageLineage(CachePolicy):
    """Prefect cache policy keyed by the lake path of the artifact the task will produce.

    The single source of truth for "already computed" is the lake's lineage key: it hashes the
    contents of what an artifact was built from (raw dataset files, recorded LLM answers, the
    rendered prompt template, the encoder's weight files, the config, the numerics path).
    ``INPUTS`` sees a dataset config holding *paths*, so after an edit of the nodes file (or of
    a template, or of the weights at a model path) it alone would hand back the old result.

    The key is not computed a second time here: the task's own function runs under
    :func:`tag_pipeline.lake.locate` until it reaches its stage's
    :meth:`~tag_pipeline.lake.Stage.materialize`, which reports the artifact path it was given
    and stops (nothing is looked up, built or written). So a task's cache key changes exactly
    when its artifact's lake key does, by construction; the digests behind that key are
    memoised by file identity (:func:`tag_pipeline.lake.file_sha256`), so computing it on a
    warm run re-reads nothing. If the function raises first (a missing file, say) the key is
    unique, so nothing cached is served and the task itself runs and reports the error;
    Prefect would otherwise drop this part of the key and fall back to ``INPUTS`` alone.
    """

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str | None:
        fn = getattr(getattr(task_ctx, "task", None), "fn", None)
        if fn is None:
            return None
        try:
            path = lake.locate(fn, **inputs)
        except Exception:
            return f"lineage-unavailable-{uuid.uuid4().hex}"
        return None if path is None else lake.config_hash(str(path))


def _lake_paths(value: Any, root: str) -> Iterator[Path]:
    """Every string inside ``value`` (a path, or dicts/lists of them) that lies under ``root``."""
    if isinstance(value, str):
        if root and Path(value).is_relative_to(root):
            yield Path(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _lake_paths(v, root)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _lake_paths(v, root)


def _intact(path: Path) -> bool:
    try:
        lake.read_artifact(path, verify=True)
    except (FileNotFoundError, lake.CorruptArtifactError):
        return False
    return True


@dataclass
class LakeArtifactsIntact(CachePolicy):
    """Prefect cache policy: ``base``'s key, unless the cached result points at lake artifacts
    that are gone or fail their manifest check; then a fresh key, so the task runs again.

    Prefect's own policies key on inputs and code only; they cannot know that a cached
    ``.../features/TA-<key>`` was deleted or truncated since. Here the cached record (a path
    or a summary dict with a ``path``) is read and each artifact it names under the task's
    ``lake`` input is verified (sizes and sha256, as every lake reader does). A task that
    runs again finds its artifact missing or moves the corrupt one aside and rebuilds it;
    the record under the fresh key is a one-off, and later runs hit ``base``'s key again,
    whose record names the same (now rebuilt) path: artifact paths are fixed by lineage.
    """

    base: CachePolicy = field(default_factory=lambda: INPUTS - "build" + TASK_SOURCE + LibrarySource())

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str | None:
        key = self.base.compute_key(task_ctx=task_ctx, inputs=inputs, flow_parameters=flow_parameters, **kwargs)
        store = getattr(task_ctx, "result_store", None)
        if key is None or store is None:
            return key
        try:
            if not store.exists(key):
                return key
            cached = store.read(key).result
        except Exception:  # an unreadable record: Prefect treats it as a miss itself
            return key
        root = str(inputs.get("lake") or "")
        if any(not _intact(p) for p in _lake_paths(cached, root)):
            return f"{key}-rebuild-{uuid.uuid4().hex}"
        return key


#: Failures a retry cannot fix: bad input files, a stage a lookup-only run expects in the lake,
#: bad values and types (a ``ValueError`` or ``TypeError`` says the input or the code is wrong,
#: and fails the same way the next time).
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (lake.MissingArtifactError, DatasetError, ValueError, TypeError)


def worth_retrying(task, task_run, state) -> bool:
    """``retry_condition_fn`` of the stage tasks: retry transient failures only."""
    return not isinstance(state.result(raise_on_failure=False), PERMANENT_ERRORS)


def _stage_policy() -> CachePolicy:
    """Every stage task's cache policy: its inputs, its source, the library's code and the lake
    path of its artifact (:class:`StageLineage`), trusted only while that artifact verifies."""
    return LakeArtifactsIntact(base=INPUTS - "build" + TASK_SOURCE + LibrarySource() + StageLineage())


STAGE_TASK_OPTIONS = dict(
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=worth_retrying,
    cache_policy=_stage_policy(),
    persist_result=True,
)


def stage_task_options(**overrides: Any) -> dict[str, Any]:
    """:data:`STAGE_TASK_OPTIONS` with some options overridden (e.g. more retries for the LLM)."""
    return STAGE_TASK_OPTIONS | overrides


def reading(build: bool, stage: str):
    """Context for a stage task: compute (``build``) or only read the lake (:func:`lake.lookup_only`)."""
    if build:
        return contextlib.nullcontext()
    return lake.lookup_only(f"this run (start_at past {stage!r}) only reads {stage} from the lake")
