"""A committed artifact damaged on disk: detected, moved aside, rebuilt with identical content."""

from __future__ import annotations

import re
import shutil
import time

import pytest

from tag_pipeline import lake
from tag_pipeline.datasets import materialize_graph, open_graph
from tag_pipeline.features.stage import materialize_text_feature
from tag_pipeline.lake import CorruptArtifactError


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_byte(path):
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # same size, one bit different
    path.write_bytes(bytes(blob))


def garble(path):
    path.write_text("{ this is not json")


DAMAGE = {"truncated": (truncate, "truncated"), "bit flip": (flip_byte, "sha256"), "garbled": (garble, "manifest")}


def _moved_aside(path):
    return [p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.corrupt-")]


@pytest.mark.parametrize(("name", "damage"), [("features.safetensors", "truncated"), ("index.parquet", "bit flip")])
def test_corrupt_feature_artifact_is_rebuilt_identical(reference, fresh_lake, encoder_calls, kit, name, damage):
    lake_root, graph = fresh_lake
    art = lake_root / reference.feature.relative_to(reference.lake)
    shutil.copytree(reference.feature, art)
    hurt, what = DAMAGE[damage]
    hurt(art / name)

    with pytest.raises(CorruptArtifactError, match=rf"{re.escape(str(art / name))}.*{what}"):
        lake.read_artifact(art)

    start = time.perf_counter()
    out = materialize_text_feature(graph, None, "TA", kit.LM, lake_root, shard_size=kit.SHARD, progress=False)
    print(f"\nrebuild after {damage} {name}: {time.perf_counter() - start:.2f} s")
    assert out == art
    lake.read_artifact(out)
    assert kit.feature_content(out) == reference.content
    assert len(encoder_calls) == kit.NUM_SHARDS  # rebuilt from scratch, never trusted
    # the damaged copy is kept for inspection, not deleted and not read
    (aside,) = _moved_aside(art)
    with pytest.raises(CorruptArtifactError):
        lake.read_artifact(aside)
    assert kit.temp_leftovers(lake_root) == [] and not (art.parent / ".shards").exists()


@pytest.mark.parametrize(
    ("name", "damage"), [("nodes.parquet", "truncated"), ("splits.parquet", "bit flip"), ("manifest.json", "garbled")]
)
def test_corrupt_graph_artifact_is_rebuilt_identical(reference, fresh_lake, kit, name, damage):
    lake_root, graph = fresh_lake
    hurt, what = DAMAGE[damage]
    hurt(graph / name)
    with pytest.raises(CorruptArtifactError, match=rf"{re.escape(str(graph / name))}.*{what}"):
        lake.read_artifact(graph)
    with pytest.raises(CorruptArtifactError):
        open_graph(graph)  # a reader downstream is refused too, never handed damaged data

    start = time.perf_counter()
    out = materialize_graph(reference.dataset, kit.SEEDS, lake_root)
    print(f"\nrebuild after {damage} {name}: {time.perf_counter() - start:.2f} s")
    assert out == graph
    lake.read_artifact(out)
    assert kit.data_digests(out) == kit.data_digests(reference.graph)  # Parquet bytes identical
    assert len(_moved_aside(graph)) == 1
    assert kit.temp_leftovers(lake_root) == []
