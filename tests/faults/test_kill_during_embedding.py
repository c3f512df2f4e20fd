"""SIGKILL a process embedding node text, resume, and lose nothing.

The embedding runs in a child process (``python -c``) that is killed with ``kill -9``: once
after at least one shard is committed (mid-embedding), once while it is committing the final
artifact (a ``.tmp-*`` directory in the lake). The test process then resumes and must end
with the same bytes as an uninterrupted run, having embedded only the missing shards, and with
no temporary left in the lake.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tag_pipeline import lake as lake_mod
from tag_pipeline.features.shards import committed_shards, read_shard, shard_folder
from tag_pipeline.features.stage import materialize_text_feature
from tag_pipeline.features.store import read_feature

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# The child embeds TA with the test's settings. SLOW_S slows each shard down (after encoding,
# before committing) so that the kill lands mid-run; HANG_IN_COMMIT makes it stop for good
# inside write_artifact, after writing the feature files into its temporary directory.
CHILD = r"""
import os, sys, time
from pathlib import Path
import tag_pipeline.features.stage as stage
from tag_pipeline.config import LMConfig

slow = float(os.environ.get("SLOW_S", "0"))
real_encode = stage.encode_texts
def encode(*args, **kwargs):
    x = real_encode(*args, **kwargs)
    time.sleep(slow)
    return x
stage.encode_texts = encode

if os.environ.get("HANG_IN_COMMIT"):
    real_write = stage.write_feature
    def write_feature(directory, *args, **kwargs):
        real_write(directory, *args, **kwargs)
        (directory / "READY").write_text("")  # tell the parent: kill me now
        time.sleep(600)
    stage.write_feature = write_feature

graph, lake, shard_size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
stage.materialize_text_feature(graph, None, "TA", LMConfig(max_length=32), lake, shard_size=shard_size, progress=False)
print("FINISHED")
"""


def _start_child(graph: Path, lake: Path, shard_size: int, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(graph), str(lake), str(shard_size)],
        cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """Poll ``ready()`` every 10 ms; SIGKILL the child as soon as it is true."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"child exited ({proc.returncode}) before the kill:\n{proc.stdout.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("child never reached the kill point")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    out = proc.stdout.read().decode()
    proc.stdout.close()
    assert "FINISHED" not in out


def _artifact_path(reference, lake: Path) -> Path:
    return lake / reference.feature.relative_to(reference.lake)


def test_sigkill_mid_embedding_resumes_with_only_missing_shards(reference, fresh_lake, encoder_calls, kit):
    assert kit.LM.max_length == 32  # the child's LMConfig
    lake, graph = fresh_lake
    final = _artifact_path(reference, lake)
    shards = shard_folder(final)

    proc = _start_child(graph, lake, kit.SHARD, SLOW_S="0.4")
    _kill_when(proc, lambda: len(committed_shards(shards)) >= 1)

    committed = committed_shards(shards)
    assert 1 <= len(committed) < kit.NUM_SHARDS, committed
    assert not final.exists()  # nothing committed to the lake yet
    for i in committed:  # every shard committed before the kill is whole and verifies
        x, manifest = read_shard(shards, i)
        assert torch.equal(x, reference.x[manifest["start"]:manifest["stop"]])

    start = time.perf_counter()
    out = materialize_text_feature(graph, None, "TA", kit.LM, lake, shard_size=kit.SHARD, progress=False)
    resume_s = time.perf_counter() - start
    print(f"\nresume after SIGKILL with {len(committed)}/{kit.NUM_SHARDS} shards committed: {resume_s:.2f} s")

    assert out == final
    # only the missing shards were embedded: one encoder call of <= kit.SHARD texts each
    missing = kit.NUM_SHARDS - len(committed)
    assert len(encoder_calls) == missing, encoder_calls
    assert sum(encoder_calls) == kit.NUM_NODES - sum(min(kit.SHARD, kit.NUM_NODES - i * kit.SHARD) for i in committed)
    # identical to the uninterrupted run, bit for bit
    assert kit.feature_content(out) == reference.content
    assert torch.equal(read_feature(out, kit.NUM_NODES), reference.x)
    lake_mod.read_artifact(out)
    # the kill left no trace: no temporaries, shard folder removed once assembled
    assert kit.temp_leftovers(lake) == []
    assert not shards.exists() and not shards.parent.exists()
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]


def test_sigkill_while_committing_artifact_cleans_stale_tmp_and_resumes(reference, fresh_lake, encoder_calls, kit):
    lake, graph = fresh_lake
    final = _artifact_path(reference, lake)
    features_dir = final.parent

    def tmp_ready():
        return any((d / "READY").exists() for d in features_dir.glob(".tmp-*")) if features_dir.exists() else False

    proc = _start_child(graph, lake, kit.SHARD, HANG_IN_COMMIT="1")
    _kill_when(proc, tmp_ready)

    stale = list(features_dir.glob(f".tmp-{final.name}-*"))
    assert len(stale) == 1 and (stale[0] / "features.safetensors").exists()  # the killed writer's debris
    assert lake_mod.is_stale_temp(stale[0])
    assert not final.exists()
    assert committed_shards(shard_folder(final)) == list(range(kit.NUM_SHARDS))

    start = time.perf_counter()
    out = materialize_text_feature(graph, None, "TA", kit.LM, lake, shard_size=kit.SHARD, progress=False)
    resume_s = time.perf_counter() - start
    print(f"\nresume after SIGKILL during the commit: {resume_s:.2f} s")

    assert encoder_calls == []  # every shard was committed before the kill: nothing re-embedded
    assert kit.feature_content(out) == reference.content
    assert kit.temp_leftovers(lake) == []  # the next writer removed the dead writer's .tmp-* dir
    assert sorted(p.name for p in features_dir.iterdir()) == [final.name]


def test_live_writers_temporaries_are_left_alone(tmp_path):
    """The clean-up removes only temporaries whose writer is gone."""
    parent = tmp_path / "stage"
    parent.mkdir()
    mine = lake_mod.temp_path(parent / "k1")  # this (live) process
    mine.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    theirs = parent / mine.name.replace(f".{os.getpid()}-", f".{dead.pid}-")
    theirs.mkdir()
    foreign_new = parent / ".tmp-k1-0badc0de.123-abcdefgh"  # another host: judged by age
    foreign_new.mkdir()
    foreign_old = parent / ".tmp-k2-legacyname"
    foreign_old.mkdir()
    old = time.time() - lake_mod.STALE_TEMP_AGE_S - 60
    os.utime(foreign_old, (old, old))

    removed = lake_mod.remove_stale_temps(parent)
    assert sorted(p.name for p in removed) == sorted([theirs.name, foreign_old.name])
    assert mine.exists() and foreign_new.exists()
    assert not theirs.exists() and not foreign_old.exists()
