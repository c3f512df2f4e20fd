"""Writes that fail (disk full, permission denied): a clear error, nothing half-committed.

ENOSPC is injected by patching the call that would hit the full disk (``os.replace`` of a
shard, ``save_file`` of the artifact's tensor, ``os.rename`` of the artifact's directory).
EACCES comes from a read-only directory: ``chmod 0555`` where that bites, and patched
``os`` calls where it does not (the tests run as root; see the ``read_only`` fixture).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time

import pytest

from tag_pipeline import lake
from tag_pipeline.config import LMConfig
from tag_pipeline.datasets import materialize_graph
from tag_pipeline.features.shards import committed_shards, read_shard, shard_folder, shard_paths
from tag_pipeline.features.stage import materialize_text_feature

NO_SPACE = "No space left on device (ENOSPC)"
DENIED = "Permission denied (EACCES)"
OTHER_LM = LMConfig(max_length=24)  # another key than the reference artifact's


def _with_previous_artifact(reference, lake_root):
    """Copy the reference TA artifact into ``lake_root``: the artifact that must survive."""
    prev = lake_root / reference.feature.relative_to(reference.lake)
    shutil.copytree(reference.feature, prev)
    return prev


def _entries(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_enospc_on_a_shard_keeps_committed_shards_and_resumes(reference, fresh_lake, encoder_calls, kit, monkeypatch):
    lake_root, graph = fresh_lake
    final = lake_root / reference.feature.relative_to(reference.lake)
    shards = shard_folder(final)
    target = shard_paths(shards, 2)[0]
    real_replace = os.replace
    disk_full = True

    def replace(src, dst, *a, **k):
        if disk_full and os.fspath(dst) == str(target):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError) as ei:
        materialize_text_feature(graph, None, "TA", kit.LM, lake_root, shard_size=kit.SHARD, progress=False)
    print(f"\n{ei.value}")
    assert ei.value.errno == errno.ENOSPC
    assert str(target) in str(ei.value) and NO_SPACE in str(ei.value)
    # lost: the shard being written, nothing else
    assert committed_shards(shards) == [0, 1]
    for i in (0, 1):
        read_shard(shards, i)
    assert not final.exists() and kit.temp_leftovers(lake_root) == []
    assert encoder_calls == [kit.SHARD] * 3

    disk_full = False
    encoder_calls.clear()
    start = time.perf_counter()
    out = materialize_text_feature(graph, None, "TA", kit.LM, lake_root, shard_size=kit.SHARD, progress=False)
    print(f"\nresume after ENOSPC on shard 2: {time.perf_counter() - start:.2f} s")
    assert encoder_calls == [kit.SHARD, kit.SHARD, kit.NUM_NODES - 4 * kit.SHARD]  # shards 2, 3, 4
    assert kit.feature_content(out) == reference.content
    assert kit.temp_leftovers(lake_root) == [] and not shards.exists()


# What safetensors 0.8 and polars 1.x really raise on a full disk (measured on a 64 KiB tmpfs):
# their own exception types, quoting Rust's io::Error, not OSError.
SAFETENSORS_ENOSPC = "Error while serializing: I/O error: No space left on device (os error 28)"
POLARS_ENOSPC = "parquet: File out of specification: underlying IO error: No space left on device (os error 28)"


@pytest.mark.parametrize("where", ["save_file", "save_file (SafetensorError)", "rename"])
def test_enospc_committing_the_artifact_leaves_previous_intact(
    reference, fresh_lake, encoder_calls, kit, monkeypatch, where
):
    lake_root, graph = fresh_lake
    prev = _with_previous_artifact(reference, lake_root)
    features_dir = prev.parent
    full = {"on": True}

    def no_space(*args, **kwargs):
        if where == "save_file (SafetensorError)":
            from safetensors import SafetensorError

            raise SafetensorError(SAFETENSORS_ENOSPC)
        raise OSError(errno.ENOSPC, "No space left on device")

    if where.startswith("save_file"):  # the disk fills while the tensor is written into the temporary dir
        import tag_pipeline.features.store as store

        real = store.save_file
        monkeypatch.setattr(store, "save_file", lambda *a, **k: no_space() if full["on"] else real(*a, **k))
    else:  # ... or at the very end, as the directory is renamed into place
        real = os.rename

        def rename(src, dst, *a, **k):
            if full["on"] and ".tmp-" in os.fspath(src):
                no_space()
            return real(src, dst, *a, **k)

        monkeypatch.setattr(os, "rename", rename)

    with pytest.raises(OSError) as ei:
        materialize_text_feature(graph, None, "TA", OTHER_LM, lake_root, shard_size=kit.SHARD, progress=False)
    err = str(ei.value)
    print(f"\n{err}")
    assert ei.value.errno == errno.ENOSPC and NO_SPACE in err and "artifact not committed" in err
    (in_progress,) = (features_dir / ".shards").iterdir()  # the shards of the artifact that failed
    new = features_dir / in_progress.name
    assert new != prev and str(new) in err
    # nothing half-written is committed, nothing temporary is left, the previous artifact is whole
    assert not new.exists() and kit.temp_leftovers(lake_root) == []
    assert _entries(features_dir) == [".shards", prev.name]
    lake.read_artifact(prev)
    assert kit.feature_content(prev) == reference.content
    # every shard is kept: the retry only assembles and commits
    assert committed_shards(shard_folder(new)) == list(range(kit.NUM_SHARDS))
    assert len(encoder_calls) == kit.NUM_SHARDS

    full["on"] = False
    encoder_calls.clear()
    start = time.perf_counter()
    out = materialize_text_feature(graph, None, "TA", OTHER_LM, lake_root, shard_size=kit.SHARD, progress=False)
    print(f"\nresume after ENOSPC in {where}: {time.perf_counter() - start:.2f} s")
    assert out == new and encoder_calls == []
    lake.read_artifact(out)
    assert _entries(features_dir) == sorted([prev.name, new.name])


def test_eacces_read_only_features_dir(reference, fresh_lake, encoder_calls, kit, read_only):
    lake_root, graph = fresh_lake
    prev = _with_previous_artifact(reference, lake_root)
    features_dir = prev.parent
    how = read_only(features_dir)
    print(f"\nread-only directory made by {how}")

    with pytest.raises(PermissionError) as ei:
        materialize_text_feature(graph, None, "TA", OTHER_LM, lake_root, shard_size=kit.SHARD, progress=False)
    err = str(ei.value)
    print(f"\n{err}")
    assert ei.value.errno == errno.EACCES and DENIED in err
    assert str(features_dir / ".shards") in err  # names the folder it could not create
    assert encoder_calls == []  # failed before embedding anything
    assert _entries(features_dir) == [prev.name]
    lake.read_artifact(prev)
    assert kit.feature_content(prev) == reference.content


def test_eacces_read_only_graph_dir(reference, fresh_lake, kit, read_only):
    lake_root, graph = fresh_lake
    read_only(graph.parent)
    with pytest.raises(PermissionError) as ei:
        materialize_graph(reference.dataset, [1], lake_root)  # another seed: another key
    err = str(ei.value)
    print(f"\n{err}")
    assert ei.value.errno == errno.EACCES and DENIED in err and "artifact not committed" in err
    assert str(graph.parent) in err
    assert _entries(graph.parent) == [graph.name]
    lake.read_artifact(graph)


def test_enospc_from_polars_writing_a_graph(reference, fresh_lake, kit, monkeypatch):
    """The graph stage on a full disk: polars' ComputeError becomes an OSError naming the artifact."""
    import polars as pl

    lake_root, graph = fresh_lake
    real = pl.DataFrame.write_parquet

    def write_parquet(self, file, *a, **k):
        if "splits" in str(file):  # the last of the graph's four files
            raise pl.exceptions.ComputeError(POLARS_ENOSPC)
        return real(self, file, *a, **k)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", write_parquet)
    with pytest.raises(OSError) as ei:
        materialize_graph(reference.dataset, [1], lake_root)
    err = str(ei.value)
    print(f"\n{err}")
    assert ei.value.errno == errno.ENOSPC and NO_SPACE in err and POLARS_ENOSPC in err
    assert isinstance(ei.value.__cause__, pl.exceptions.ComputeError)
    from tag_pipeline.datasets import graph_key

    new = graph.parent / graph_key(reference.dataset, [1])
    assert err.startswith(f"[Errno 28] {new}: artifact not committed")
    assert not new.exists() and _entries(graph.parent) == [graph.name]
    assert kit.temp_leftovers(lake_root) == []
    lake.read_artifact(graph)


def test_failed_body_of_write_artifact_names_the_artifact(tmp_path):
    path = tmp_path / "ds" / "stage" / "key"
    with pytest.raises(OSError, match=re.escape(f"{path}: artifact not committed: {NO_SPACE}")) as ei:
        with lake.write_artifact(path, stage="toy") as tmp:
            (tmp / "a.bin").write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert ei.value.errno == errno.ENOSPC
    assert _entries(path.parent) == []


def test_os_error_of_library_errors():
    from safetensors import SafetensorError

    e = lake.os_error_of(SafetensorError(SAFETENSORS_ENOSPC))
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC and e.strerror == SAFETENSORS_ENOSPC
    assert isinstance(lake.os_error_of(SafetensorError("Error while serializing: I/O error: x (os error 13)")),
                      PermissionError)
    assert lake.os_error_of(ValueError("shapes differ")) is None
    plain = OSError(errno.EIO, "I/O error")
    assert lake.os_error_of(plain) is plain


def test_annotate_os_error_keeps_errno_and_type(tmp_path):
    e = lake.annotate_os_error(PermissionError(errno.EACCES, "Permission denied", "/x/y"), tmp_path, "not written")
    assert isinstance(e, PermissionError) and e.errno == errno.EACCES
    assert str(e).endswith(f"{tmp_path}: not written: {DENIED} (at /x/y)")
    assert lake.annotate_os_error(e, tmp_path / "other", "again") is e  # annotated once only
    plain = OSError("no errno")
    assert lake.annotate_os_error(plain, tmp_path, "x") is plain


def test_atomic_write_bytes_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    lake.atomic_write_bytes(target, b"old")
    real_write = os.write

    def short_then_full(fd, data):  # a partial write, then the disk is full
        if len(data) > 2:
            return real_write(fd, bytes(data[:2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError, match=re.escape(f"{target}: not written: {NO_SPACE}")):
        lake.atomic_write_bytes(target, b"new content")
    monkeypatch.setattr(os, "write", real_write)
    assert target.read_bytes() == b"old" and _entries(tmp_path) == ["f.bin"]
    lake.atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content" and _entries(tmp_path) == ["f.bin"]
