"""The data lake: lineage-addressed, atomically written, self-describing artifacts.

Every artifact is a directory ``<root>/<dataset>/<stage>/<key>/`` holding its files and a
``manifest.json`` (inputs, config, code version, row counts, sha256 of every file). The key is
a hash of everything that produced the artifact (the stage's config and the keys of its
inputs), so a different config lands in a different directory and nothing is overwritten in
place. An artifact is built in a hidden temporary sibling directory and renamed into place
only when complete: a reader never sees a half-written artifact, and a killed writer leaves
only a ``.tmp-*`` directory that the next writer ignores.

(Layering and versioning after Kedro's data catalog; the manifest plays the part of
Prefect's asset metadata. Plain ``os.rename`` is used because neither Prefect nor fsspec
offers an atomic directory commit.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tag_pipeline import __version__

MANIFEST = "manifest.json"


class CorruptArtifactError(RuntimeError):
    """An artifact's files do not match its manifest (missing, truncated or altered)."""


def canonical_json(obj: Any) -> str:
    """Serialise ``obj`` deterministically (sorted keys, no whitespace) for hashing.

    Pydantic models are dumped in JSON mode; paths become strings.
    """
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest (``length`` characters) of the canonical JSON of ``parts``.

    Used as the lineage key of an artifact: pass the stage's config and the keys of the
    artifacts it reads.
    """
    h = hashlib.sha256()
    for part in parts:
        h.update(canonical_json(part).encode())
        h.update(b"\x00")
    return h.hexdigest()[:length]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A committed artifact directory and its parsed manifest."""

    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        """Path of one of the artifact's files; raises ``FileNotFoundError`` if not listed."""
        if name not in self.manifest["files"]:
            raise FileNotFoundError(f"{self.path}: artifact has no file {name!r}")
        return self.path / name


def artifact_dir(root: Path | str, dataset: str, stage: str, key: str) -> Path:
    """``<root>/<dataset>/<stage>/<key>``: where an artifact lives."""
    return Path(root) / dataset / stage / key


def read_artifact(path: Path | str, verify: bool = True) -> Artifact:
    """Open a committed artifact.

    Args:
        path: the artifact directory.
        verify: check every file's size and sha256 against the manifest.

    Raises:
        FileNotFoundError: ``path`` or its manifest does not exist.
        CorruptArtifactError: the manifest is unreadable or a file is missing or altered.
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.exists():
        raise FileNotFoundError(f"{path}: no {MANIFEST}; not a committed artifact")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptArtifactError(f"{mpath}: unreadable manifest ({e})") from e
    if verify:
        for name, meta in manifest.get("files", {}).items():
            f = path / name
            if not f.exists():
                raise CorruptArtifactError(f"{f}: listed in the manifest but missing")
            if f.stat().st_size != meta["bytes"]:
                raise CorruptArtifactError(
                    f"{f}: {f.stat().st_size} bytes, manifest says {meta['bytes']} (truncated?)"
                )
            if file_sha256(f) != meta["sha256"]:
                raise CorruptArtifactError(f"{f}: sha256 differs from the manifest")
    return Artifact(path=path, manifest=manifest)


def find_artifact(path: Path | str) -> Artifact | None:
    """The committed artifact at ``path`` if it exists and verifies, else ``None``.

    A corrupt artifact is moved aside (renamed ``<key>.corrupt-<time>-<random>``) so that it is
    rebuilt, never trusted and never silently deleted.
    """
    path = Path(path)
    if not (path / MANIFEST).exists():
        return None
    try:
        return read_artifact(path)
    except CorruptArtifactError:
        path.rename(path.with_name(f"{path.name}.corrupt-{int(time.time())}-{uuid.uuid4().hex[:8]}"))
        return None


@contextlib.contextmanager
def write_artifact(
    path: Path | str,
    *,
    stage: str,
    config: Any = None,
    inputs: Mapping[str, str] | None = None,
    rows: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Iterator[Path]:
    """Build an artifact in a temporary directory and commit it atomically on success.

    Usage::

        with write_artifact(dir, stage="graph", config=cfg, rows=n) as tmp:
            df.write_parquet(tmp / "nodes.parquet")

    On normal exit the manifest (stage, config, inputs, code version, rows, sha256 and size of
    every file) is written and the directory renamed to ``path``. On an exception the
    temporary directory is removed and nothing appears at ``path``. If another writer
    committed ``path`` first, this one's output is discarded (the key says they are equal).

    Args:
        path: the final artifact directory (usually from :func:`artifact_dir`).
        stage: stage name recorded in the manifest.
        config: the config that produced the artifact (pydantic model or JSON-able).
        inputs: ``{name: path}`` of the artifacts it was built from (its lineage).
        rows: row count of the main table, if any.
        extra: more JSON-able metadata.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a lake may be shared
    try:
        yield tmp
        files = {
            p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        manifest = {
            "stage": stage,
            "key": path.name,
            "created_unix": time.time(),
            "code_version": __version__,
            "config": json.loads(canonical_json(config)) if config is not None else None,
            "inputs": dict(inputs or {}),
            "rows": rows,
            "files": files,
            **(dict(extra) if extra else {}),
        }
        _write_text_fsync(tmp / MANIFEST, json.dumps(manifest, indent=2, default=str))
        try:
            os.rename(tmp, path)
        except OSError:
            if (path / MANIFEST).exists():  # committed by a concurrent writer
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_text_fsync(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write a small text file atomically (temporary sibling, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        _write_text_fsync(tmp, text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def files_digest(paths: list[Path | str], length: int = 16) -> str:
    """Digest of the contents of ``paths`` (directories are walked, files sorted by name).

    Goes into lineage keys in place of raw input paths, so moving the raw data does not
    invalidate the lake but changing it does.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    h = hashlib.sha256()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: input file not found")
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            h.update(file_sha256(f).encode())
    return h.hexdigest()[:length]
