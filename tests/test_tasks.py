"""The stage tasks' retry condition and the lineage part of their cache key (``tasks``)."""

from __future__ import annotations

from pathlib import Path

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


def test_stage_lineage_key_is_the_lake_path_the_stage_would_use_and_never_falls_back(tmp_path):
    from types import SimpleNamespace

    from tasks import StageLineage

    stage = lake.Stage("demo-lineage", 1)
    seen = {"part": "a"}
    built = []

    def stage_fn(x: str) -> Path:
        def build():
            built.append(x)
            return lake.Built(write=lambda tmp: (tmp / "x.txt").write_text(x))

        return stage.materialize(stage.path(tmp_path, "toy", stage.key(seen["part"], x)), build)

    policy = StageLineage()
    ctx = SimpleNamespace(task=SimpleNamespace(fn=stage_fn))
    k1 = policy.compute_key(ctx, {"x": "1"}, {})
    assert k1 == policy.compute_key(ctx, {"x": "1"}, {})
    assert k1 != policy.compute_key(ctx, {"x": "2"}, {})
    assert built == [] and not (tmp_path / "toy").exists()  # locating builds and writes nothing
    stage_fn("1")  # the artifact exists now: the key is that of its path, unchanged
    assert policy.compute_key(ctx, {"x": "1"}, {}) == k1 and built == ["1"]
    seen["part"] = "b"  # an edited input file changes the lake key: the cache key follows
    assert policy.compute_key(ctx, {"x": "1"}, {}) != k1

    def missing(x: str):
        raise FileNotFoundError("nodes.csv: input file not found")

    broken = SimpleNamespace(task=SimpleNamespace(fn=missing))
    a, b = policy.compute_key(broken, {"x": "1"}, {}), policy.compute_key(broken, {"x": "1"}, {})
    assert a and b and a != b  # a fresh key every time: nothing cached can be served
    no_stage = SimpleNamespace(task=SimpleNamespace(fn=lambda x: x))
    assert policy.compute_key(no_stage, {"x": "1"}, {}) is None  # no stage reached: no part of the key
