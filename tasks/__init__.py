"""Thin Prefect task wrappers around the library's stage functions.

Every stage task retries, caches on its inputs and its own source (``INPUTS + TASK_SOURCE``)
and persists its (small) result, so a rerun with nothing changed is all cache hits and a
failed flow run resumes at the failed stage. The heavy data lives in the lake; tasks pass
artifact paths and summaries.
"""

from prefect.cache_policies import INPUTS, TASK_SOURCE

STAGE_TASK_OPTIONS = dict(
    retries=2,
    retry_delay_seconds=[2, 10],
    cache_policy=INPUTS + TASK_SOURCE,
    persist_result=True,
)
