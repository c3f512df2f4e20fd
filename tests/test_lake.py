"""Tests for tag_pipeline.lake: lineage keys, atomic commits, manifests and corruption checks."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from tag_pipeline import lake
from tag_pipeline.config import GNNConfig
from tag_pipeline.lake import (
    MANIFEST,
    CorruptArtifactError,
    artifact_dir,
    atomic_write_text,
    config_hash,
    files_digest,
    find_artifact,
    read_artifact,
    write_artifact,
)


def _commit(path, files: dict[str, bytes], **kw):
    """Commit an artifact holding ``files`` at ``path``; return the path."""
    kw.setdefault("stage", "toy")
    with write_artifact(path, **kw) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return path


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".tmp-"))


# --- config_hash ---------------------------------------------------------------------------


def test_config_hash_ignores_dict_key_order():
    a = {"lr": 0.01, "hidden": 128, "nested": {"x": 1, "y": [1, 2]}}
    b = {"nested": {"y": [1, 2], "x": 1}, "hidden": 128, "lr": 0.01}
    assert config_hash(a) == config_hash(b)
    assert config_hash(1, a, "seed") == config_hash(1, b, "seed")


def test_config_hash_is_sensitive_to_values_and_parts():
    base = config_hash({"lr": 0.01, "hidden": 128})
    assert base != config_hash({"lr": 0.02, "hidden": 128})
    assert base != config_hash({"lr": 0.01, "hidden": 64})
    assert base != config_hash({"lr": 0.01, "hidden": 128, "extra": None})
    # part boundaries and order count
    assert config_hash("a", "b") != config_hash("ab")
    assert config_hash("a", "b") != config_hash("b", "a")
    assert config_hash([1, 2]) != config_hash(1, 2)


def test_config_hash_length_and_hex():
    h = config_hash({"a": 1})
    assert len(h) == 16 and int(h, 16) >= 0
    long = config_hash({"a": 1}, length=40)
    assert len(long) == 40 and long.startswith(h)


def test_config_hash_of_pydantic_model_equals_its_json_dump():
    cfg = GNNConfig(hidden=32)
    assert config_hash(cfg) == config_hash(cfg.model_dump(mode="json"))
    assert config_hash(cfg) != config_hash(GNNConfig(hidden=33))


# --- write_artifact / read_artifact --------------------------------------------------------


def test_write_artifact_commits_files_and_manifest(tmp_path):
    path = artifact_dir(tmp_path, "toy", "stage", "k1")
    assert path == tmp_path / "toy" / "stage" / "k1"
    data = {"a.bin": b"hello world", "b.txt": b"x" * 1000}
    with write_artifact(
        path, stage="stage", config={"lr": 0.5}, inputs={"graph": "g/path"}, rows=7, extra={"note": "n"}
    ) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".tmp-k1-")
        assert not path.exists()  # nothing visible while the body runs
        for name, blob in data.items():
            (tmp / name).write_bytes(blob)
    assert path.is_dir()
    assert _leftovers(path.parent) == []
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["stage"] == "stage" and manifest["key"] == "k1"
    assert manifest["config"] == {"lr": 0.5}
    assert manifest["inputs"] == {"graph": "g/path"}
    assert manifest["rows"] == 7 and manifest["note"] == "n"
    assert set(manifest["files"]) == set(data)
    for name, blob in data.items():
        assert (path / name).read_bytes() == blob
        assert manifest["files"][name] == {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    art = read_artifact(path)
    assert art.path == path and art.manifest == manifest
    assert art.file("a.bin") == path / "a.bin"
    with pytest.raises(FileNotFoundError):
        art.file("nope.bin")


def test_write_artifact_leaves_nothing_when_body_raises(tmp_path):
    path = tmp_path / "toy" / "stage" / "k1"
    with pytest.raises(RuntimeError, match="boom"):
        with write_artifact(path, stage="stage") as tmp:
            (tmp / "half.bin").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert not path.exists()
    assert list(path.parent.iterdir()) == []  # no final dir, no .tmp-*
    assert find_artifact(path) is None


def test_second_write_does_not_clobber_committed_artifact(tmp_path):
    path = _commit(tmp_path / "ds" / "st" / "key", {"f.txt": b"first"})
    first_manifest = (path / MANIFEST).read_text()
    with write_artifact(path, stage="toy") as tmp:
        (tmp / "f.txt").write_bytes(b"second")
        (tmp / "g.txt").write_bytes(b"extra")
    assert (path / "f.txt").read_bytes() == b"first"
    assert not (path / "g.txt").exists()
    assert (path / MANIFEST).read_text() == first_manifest
    assert _leftovers(path.parent) == []
    read_artifact(path)  # still verifies


def test_read_artifact_detects_truncated_file(tmp_path):
    path = _commit(tmp_path / "a", {"data.bin": bytes(range(200)), "ok.bin": b"fine"})
    (path / "data.bin").write_bytes(bytes(range(100)))
    with pytest.raises(CorruptArtifactError, match=r"data\.bin.*truncated"):
        read_artifact(path)
    read_artifact(path, verify=False)  # the manifest itself is fine


def test_read_artifact_detects_altered_byte(tmp_path):
    blob = bytearray(b"0123456789" * 10)
    path = _commit(tmp_path / "a", {"data.bin": bytes(blob)})
    blob[42] ^= 0xFF
    (path / "data.bin").write_bytes(bytes(blob))  # same size, different content
    with pytest.raises(CorruptArtifactError, match=r"data\.bin.*sha256"):
        read_artifact(path)


def test_read_artifact_detects_missing_file_and_bad_manifest(tmp_path):
    path = _commit(tmp_path / "a", {"data.bin": b"abc"})
    (path / "data.bin").unlink()
    with pytest.raises(CorruptArtifactError, match=r"data\.bin.*missing"):
        read_artifact(path)
    other = _commit(tmp_path / "b", {"data.bin": b"abc"})
    (other / MANIFEST).write_text("{not json")
    with pytest.raises(CorruptArtifactError, match="manifest"):
        read_artifact(other)


def test_read_artifact_without_manifest_is_not_found(tmp_path):
    d = tmp_path / "plain"
    d.mkdir()
    (d / "data.bin").write_bytes(b"abc")
    with pytest.raises(FileNotFoundError, match=MANIFEST):
        read_artifact(d)
    with pytest.raises(FileNotFoundError):
        read_artifact(tmp_path / "absent")
    assert find_artifact(d) is None and find_artifact(tmp_path / "absent") is None
    assert (d / "data.bin").exists()  # not a committed artifact: left alone


def test_find_artifact_returns_valid_artifact(tmp_path):
    path = _commit(tmp_path / "ds" / "st" / "key", {"f.txt": b"abc"}, rows=3)
    art = find_artifact(path)
    assert art is not None and art.path == path and art.manifest["rows"] == 3


def test_find_artifact_moves_corrupt_artifact_aside(tmp_path):
    path = _commit(tmp_path / "ds" / "st" / "key", {"f.txt": b"abcdef"})
    (path / "f.txt").write_bytes(b"abc")
    assert find_artifact(path) is None
    assert not path.exists()
    moved = [p for p in path.parent.iterdir() if p.name.startswith("key.corrupt-")]
    assert len(moved) == 1
    assert (moved[0] / "f.txt").read_bytes() == b"abc"  # kept, not deleted
    # the key is free again: a rebuild commits normally
    _commit(path, {"f.txt": b"abcdef"})
    assert find_artifact(path) is not None


def test_find_artifact_twice_corrupt_in_same_second(tmp_path, monkeypatch):
    monkeypatch.setattr(lake.time, "time", lambda: 1_700_000_000.0)
    path = tmp_path / "ds" / "st" / "key"
    for _ in range(2):
        _commit(path, {"f.txt": b"abcdef"})
        (path / "f.txt").write_bytes(b"xyz")
        assert find_artifact(path) is None
    assert not path.exists()


# --- files_digest / atomic_write_text ------------------------------------------------------


def test_files_digest_tracks_content_not_location(tmp_path):
    src = tmp_path / "raw"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.txt").write_text("beta")
    d0 = files_digest([src])
    assert len(d0) == 16 and files_digest([src]) == d0

    moved = tmp_path / "elsewhere" / "raw_moved"
    moved.parent.mkdir()
    shutil.move(str(src), str(moved))
    assert files_digest([moved]) == d0  # moving does not invalidate

    (moved / "sub" / "b.txt").write_text("BETA")
    d1 = files_digest([moved])
    assert d1 != d0  # changing content does
    (moved / "sub" / "b.txt").write_text("beta")
    assert files_digest([moved]) == d0
    (moved / "sub" / "b.txt").rename(moved / "sub" / "c.txt")
    assert files_digest([moved]) != d0  # a renamed file inside the tree is a change


def test_files_digest_single_files_and_missing(tmp_path):
    f = tmp_path / "one" / "x.csv"
    f.parent.mkdir()
    f.write_text("1,2,3")
    d = files_digest([f])
    g = tmp_path / "two" / "x.csv"
    g.parent.mkdir()
    g.write_text("1,2,3")
    assert files_digest([g]) == d
    g.write_text("1,2,4")
    assert files_digest([g]) != d
    assert files_digest([f, g]) != files_digest([f])
    with pytest.raises(FileNotFoundError, match="missing"):
        files_digest([tmp_path / "missing.csv"])


def test_atomic_write_text_replaces_content(tmp_path):
    target = tmp_path / "deep" / "dir" / "state.json"
    atomic_write_text(target, "first")
    assert target.read_text() == "first"
    atomic_write_text(target, "second, longer content")
    assert target.read_text() == "second, longer content"
    atomic_write_text(target, "")
    assert target.read_text() == ""
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]  # no temp files left


# ------------------------------------------------------------------ remembered file digests


@pytest.fixture
def hash_memo(tmp_path, monkeypatch):
    """A fresh digest memo for this test, and a counter of the files actually read."""
    monkeypatch.setenv(lake.HASH_CACHE_ENV, str(tmp_path / "sha-memo"))
    monkeypatch.setattr(lake, "_hash_memo", None)
    monkeypatch.setattr(lake, "MEMO_MIN_BYTES", 0)  # small files stand in for large ones
    reads: list[str] = []
    real = lake._read_sha256

    def counting(path, *a, **k):
        reads.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(lake, "_read_sha256", counting)
    yield reads
    monkeypatch.setattr(lake, "_hash_memo", None)


def _age(path, seconds: float) -> None:
    """Set the file's mtime ``seconds`` into the past (ctime moves to now: the change itself)."""
    import os
    import time

    t = time.time() - seconds
    os.utime(path, (t, t))


def test_a_settled_unchanged_file_is_hashed_once(tmp_path, hash_memo):
    import time

    f = tmp_path / "x.parquet"
    f.write_bytes(b"a" * 1000)
    time.sleep(2.1)  # settled: last changed over 2 s ago
    digest = hashlib.sha256(b"a" * 1000).hexdigest()
    assert lake.file_sha256(f) == digest and lake.file_sha256(f) == digest
    assert hash_memo == [str(f)]  # the second call read nothing


def test_a_rewrite_of_the_same_size_is_hashed_again(tmp_path, hash_memo):
    import time

    f = tmp_path / "x.parquet"
    f.write_bytes(b"a" * 1000)
    time.sleep(2.1)
    assert lake.file_sha256(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    with open(f, "r+b") as h:  # in place, same size, then the old mtime put back
        h.write(b"b")
    _age(f, 3600)
    assert lake.file_sha256(f) == hashlib.sha256(b"b" + b"a" * 999).hexdigest()
    assert len(hash_memo) == 2


def test_a_file_changed_just_now_is_not_remembered(tmp_path, hash_memo):
    f = tmp_path / "x.parquet"
    f.write_bytes(b"a" * 1000)
    lake.file_sha256(f)
    lake.file_sha256(f)
    assert len(hash_memo) == 2  # within the racy window: read both times


def test_verification_finds_corruption_after_the_digest_was_remembered(tmp_path, hash_memo):
    import time

    path = _commit(tmp_path / "lake" / "toy" / "key", {"a.bin": b"x" * 4096})
    time.sleep(2.1)
    read_artifact(path)
    read_artifact(path)
    assert hash_memo.count(str(path / "a.bin")) == 1  # the warm check re-read nothing
    with open(path / "a.bin", "r+b") as h:
        h.write(b"y")
    with pytest.raises(CorruptArtifactError, match="sha256 differs"):
        read_artifact(path)


def test_hashing_works_without_a_memo(tmp_path, monkeypatch):
    monkeypatch.setenv(lake.HASH_CACHE_ENV, "off")
    monkeypatch.setattr(lake, "_hash_memo", None)
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    assert lake.file_sha256(f) == hashlib.sha256(b"abc").hexdigest()
    assert lake._memo() is None


def test_small_files_are_always_hashed(tmp_path, hash_memo, monkeypatch):
    import time

    monkeypatch.setattr(lake, "MEMO_MIN_BYTES", 1 << 20)
    f = tmp_path / "manifest-sized"
    f.write_bytes(b"a" * 1000)
    time.sleep(2.1)
    lake.file_sha256(f)
    lake.file_sha256(f)
    assert len(hash_memo) == 2  # a lookup would cost as much as the hash


def test_a_stage_with_a_folder_of_its_own_lives_and_says_its_stage_there(tmp_path):
    """Fine-tuned features (stage ``finetune``) live in, and are read like, ``features``."""
    stage = lake.Stage("demo-finetune", 1, folder="features")
    path = stage.path(tmp_path, "toy", stage.key("x"), prefix="TAft-s0-")
    assert path.parent == tmp_path / "toy" / "features"
    built = stage.materialize(path, lambda: lake.Built(write=lambda tmp: (tmp / "x.txt").write_text("x")))
    assert built == path and lake.read_artifact(path).manifest["stage"] == "features"
