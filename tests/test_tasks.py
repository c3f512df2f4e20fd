"""The stage tasks' retry condition and the lineage part of their cache key (``tasks``)."""

from __future__ import annotations

import pytest

from tag_pipeline import lake
from tag_pipeline.datasets import DatasetError


@pytest.mark.parametrize(
    "error, retried",
    [
        (ValueError("bad value"), False),
        (TypeError("bad type"), False),
        (DatasetError("nodes.csv: row 3: empty text"), False),
        (lake.MissingArtifactError("no artifact"), False),
        (OSError(28, "No space left on device"), True),
        (RuntimeError("HTTP 500"), True),
        (TimeoutError("read timed out"), True),
    ],
)
def test_only_transient_failures_are_retried(error, retried):
    from prefect.states import Failed

    from tasks import worth_retrying

    assert worth_retrying(None, None, Failed(data=error)) is retried


def test_lineage_key_follows_the_library_key_and_never_falls_back():
    from tasks import Lineage

    seen = {"key": "a"}
    policy = Lineage(key_of=lambda inputs: seen["key"] + inputs["x"])
    k1 = policy.compute_key(None, {"x": "1"}, {})
    assert k1 == policy.compute_key(None, {"x": "1"}, {})
    seen["key"] = "b"  # an edited file changes the lake key: the cache key follows
    assert policy.compute_key(None, {"x": "1"}, {}) != k1

    def missing(inputs):
        raise FileNotFoundError("nodes.csv: input file not found")

    broken = Lineage(key_of=missing)
    a, b = broken.compute_key(None, {}, {}), broken.compute_key(None, {}, {})
    assert a and b and a != b  # a fresh key every time: nothing cached can be served
