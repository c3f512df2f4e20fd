"""One writer per artifact: two processes that need the same missing artifact compute it once.

Two real processes embed the TA feature of the same 300-node Cora slice into the same lake at
the same moment (released together by a start file). The lake's per-key lock
(``tag_pipeline.lake.exclusive``) lets one embed while the other waits, then hands the second
the artifact the first committed. The encoder is the real MiniLM; each process counts its own
calls of it. A lock whose holder is SIGKILLed is free at once (``flock`` dies with its owner).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tag_pipeline import lake as lake_lib

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    import tag_pipeline.features.stage as stage
    from tag_pipeline.config import LMConfig

    graph, lake, go, out = map(Path, sys.argv[1:5])
    calls = []
    real_encode = stage.encode_texts

    def counting(texts, *args, **kwargs):  # the real encoder, counted
        calls.append(len(texts))
        return real_encode(texts, *args, **kwargs)

    stage.encode_texts = counting
    while not go.exists():
        time.sleep(0.005)
    t0 = time.monotonic()
    path = stage.materialize_text_feature(
        graph, None, "TA", LMConfig(max_length=32), lake, shard_size=64, progress=False
    )
    out.write_text(json.dumps({"path": str(path), "texts_encoded": sum(calls), "seconds": time.monotonic() - t0}))
    """
)


def test_two_processes_compute_a_missing_artifact_once(fresh_lake, reference, kit, tmp_path):
    lake, graph = fresh_lake
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    go = tmp_path / "go"
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT), "TAG_LOCK_DIR": str(tmp_path / "locks")}
    procs, outs = [], []
    for i in range(2):
        out = tmp_path / f"out{i}.json"
        outs.append(out)
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(graph), str(lake), str(go), str(out)],
            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    time.sleep(3.0)  # both have imported torch and the stage, and wait for the start file
    go.touch()
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    results = [json.loads(o.read_text()) for o in outs]

    assert results[0]["path"] == results[1]["path"]
    encoded = sorted(r["texts_encoded"] for r in results)
    assert encoded[0] == 0 and encoded[1] > 0, results  # one process embedded, the other did not
    waited = [i for i, log in enumerate(logs) if "waiting for another writer" in log]
    assert len(waited) == 1, logs  # the two really met: one found the lock taken and waited
    assert results[waited[0]]["texts_encoded"] == 0
    final = Path(results[0]["path"])
    assert kit.feature_content(final) == reference.content  # the same rows as an uncontended run
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]  # no shards, no temp left


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tag_pipeline import lake

    with lake.exclusive(Path(sys.argv[1])):
        Path(sys.argv[2]).touch()
        time.sleep(600)
    """
)


def test_a_killed_writer_does_not_block_the_next(tmp_path):
    artifact = tmp_path / "lake" / "cora" / "train" / "gcn-TA-s0-abc"
    held = tmp_path / "held"
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT), "TAG_LOCK_DIR": str(tmp_path / "locks")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(artifact), str(held)], cwd=PROJECT_ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not held.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the holder did not take the lock"
            time.sleep(0.02)
        from filelock import FileLock, Timeout

        os.environ["TAG_LOCK_DIR"] = env["TAG_LOCK_DIR"]
        try:
            with pytest.raises(Timeout):  # held by a live process
                FileLock(lake_lib.lock_path(artifact), thread_local=False).acquire(timeout=0.2)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            t0 = time.monotonic()
            with lake_lib.exclusive(artifact) as committed:
                waited = time.monotonic() - t0
                assert committed is False  # nothing was built: the caller builds
        finally:
            del os.environ["TAG_LOCK_DIR"]
        assert waited < 1.0
    finally:
        if proc.poll() is None:
            proc.kill()
