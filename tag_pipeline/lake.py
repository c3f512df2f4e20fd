"""The data lake: lineage-addressed, atomically written, self-describing artifacts.

Every artifact is a directory ``<root>/<dataset>/<stage>/<key>/`` holding its files and a
``manifest.json`` (inputs, config, code version, row counts, sha256 of every file). The key is
a hash of everything that produced the artifact (the stage's config and the keys of its
inputs), so a different config lands in a different directory and nothing is overwritten in
place. An artifact is built in a hidden temporary sibling directory and renamed into place
only when complete: a reader never sees a half-written artifact, and a killed writer leaves
only a ``.tmp-*`` directory, which the next writer in that folder removes once its owner is
known to be gone (see :func:`remove_stale_temps`). A write that fails (disk full, permission
denied) raises an ``OSError`` whose message names the artifact and the reason, and commits
nothing.

(Layering and versioning after Kedro's data catalog; the manifest plays the part of
Prefect's asset metadata. Plain ``os.rename`` is used because neither Prefect nor fsspec
offers an atomic directory commit.)
"""

from __future__ import annotations

import contextlib
import contextvars
import errno as errno_module
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tag_pipeline import __version__

MANIFEST = "manifest.json"
TEMP_PREFIX = ".tmp-"
#: A temporary whose owner cannot be checked (another machine, an old name) is stale after this.
STALE_TEMP_AGE_S = 24 * 3600.0


class CorruptArtifactError(RuntimeError):
    """An artifact's files do not match its manifest (missing, truncated or altered)."""


class MissingArtifactError(FileNotFoundError):
    """A run that may only read a stage from the lake (see :func:`lookup_only`) found no
    committed, intact artifact for it."""


_LOOKUP_ONLY: contextvars.ContextVar[str | None] = contextvars.ContextVar("tag_lake_lookup_only", default=None)


@contextlib.contextmanager
def lookup_only(reason: str = "this run reads the stage from the lake"):
    """Within the block, :func:`find_artifact` raises :class:`MissingArtifactError` instead of
    returning ``None``, so a stage function returns an existing artifact or fails: it never
    computes or writes one.

    Per-stage runs (``start_at`` past a stage, e.g. deployment ``tag/train``) read their
    upstream artifacts this way; one switch here covers every stage's ``materialize_*``
    function, which all look their artifact up with :func:`find_artifact` before building.
    A context variable (not a global) keeps concurrent tasks and threads independent.

    Args:
        reason: said in the error, e.g. ``"start_at='train' reads features from the lake"``.
    """
    token = _LOOKUP_ONLY.set(reason)
    try:
        yield
    finally:
        _LOOKUP_ONLY.reset(token)


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


def _read_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


#: Where :func:`file_sha256` remembers digests: ``$TAG_HASH_CACHE`` or ``~/.cache/tag-pipeline/sha256``.
HASH_CACHE_ENV = "TAG_HASH_CACHE"
_hash_memo: tuple[int, Any] | None = None  # (pid, diskcache.Cache or None): one per process


def _memo():
    """This process's digest memo (a ``diskcache.Cache``), or ``None`` where it cannot be opened."""
    global _hash_memo
    if _hash_memo is not None and _hash_memo[0] == os.getpid():
        return _hash_memo[1]
    cache = None
    folder = os.environ.get(HASH_CACHE_ENV) or str(Path.home() / ".cache" / "tag-pipeline" / "sha256")
    if folder.lower() not in ("0", "off", "none"):
        try:
            import diskcache

            cache = diskcache.Cache(folder, size_limit=1 << 28, eviction_policy="least-recently-used")
        except Exception:  # read-only home, locked or damaged database: hash without memo
            cache = None
    _hash_memo = (os.getpid(), cache)
    return cache


#: Files smaller than this (1 MiB) are hashed every time: on a 2-core EPYC with SHA extensions
#: a memo lookup costs ~0.3 ms, as much as hashing ~100 KB (bench/verify_lake.py).
MEMO_MIN_BYTES = 1 << 20
#: A file's digest is remembered only once it has been unchanged this long (2 s, nanoseconds).
_SETTLED_NS = 2_000_000_000


def _stat_identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, remembered by the file's identity.

    The digest is memoised (a ``diskcache`` under ``$TAG_HASH_CACHE``, default
    ``~/.cache/tag-pipeline/sha256``; ``TAG_HASH_CACHE=off`` disables it) by device, inode,
    size, modification time and *change* time, in nanoseconds. Any write to the file changes
    its mtime and ctime, and ctime cannot be set back by a program (``os.utime`` moves mtime
    only, and moves ctime forward), so a remembered digest is used only for the very bytes it
    was computed from; renaming a committed artifact's folder keeps its files' identities. This
    lets a warm run verify the artifacts it reuses without re-reading them: on full Cora (14 MB)
    4.6x faster than hashing (bench/verify_lake.py); an ogbn-arxiv lake holds hundreds of MB,
    which hashing re-reads on every cache check (about 1 s per 370 MB from the page cache here,
    far more from a cold disk). Files under :data:`MEMO_MIN_BYTES` are always hashed: for them
    a lookup costs as much as the hash. Hand-written because neither Prefect nor fsspec
    memoises content hashes.
    A digest is remembered only for a file unchanged for 2 s when hashed (as git treats "racy"
    index entries), so even a same-size rewrite within one coarse clock tick (or one second,
    on file systems with 1 s timestamps) is hashed again.

    Args:
        path: the file.
        chunk: bytes per read (1 MiB).

    Returns:
        64 lower-case hex characters.

    Raises:
        OSError: the file cannot be read (``FileNotFoundError`` if it is missing).
    """
    st = os.stat(path)
    if st.st_size < MEMO_MIN_BYTES:  # hashing it costs less than a memo lookup
        return _read_sha256(path, chunk)
    memo = _memo()
    ident = _stat_identity(st)
    if memo is not None:
        try:
            known = memo.get(ident)
        except Exception:
            known = None
        if known is not None:
            return known
    digest = _read_sha256(path, chunk)
    # Remember only a file last changed well before now ("racy git"): a write within the same
    # clock tick as the one hashed here could otherwise keep the identity and a stale digest.
    settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _SETTLED_NS
    if memo is not None and settled and _stat_identity(os.stat(path)) == ident:
        try:
            memo.set(ident, digest)
        except Exception:
            pass
    return digest


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

    Raises:
        MissingArtifactError: inside :func:`lookup_only`, instead of returning ``None``.
    """
    path = Path(path)
    found = None
    if (path / MANIFEST).exists():
        try:
            found = read_artifact(path)
        except CorruptArtifactError:
            path.rename(path.with_name(f"{path.name}.corrupt-{int(time.time())}-{uuid.uuid4().hex[:8]}"))
    reason = _LOOKUP_ONLY.get()
    if found is None and reason is not None:
        raise MissingArtifactError(
            f"{path}: no intact {path.parent.name} artifact for this configuration, and {reason}; "
            f"run that stage first (deployment tag/full, or start_at={path.parent.name!r} or earlier)"
        )
    return found


#: Environment variable naming the folder of the per-artifact lock files (default: the system's
#: temporary folder, ``<tmp>/tag-pipeline-locks``).
LOCK_DIR_ENV = "TAG_LOCK_DIR"


def lock_path(path: Path | str) -> Path:
    """The lock file of an artifact: ``$TAG_LOCK_DIR/<sha256 of its resolved path>.lock``.

    Kept out of the lake, so that a failed build leaves nothing there and listings of the
    lake see artifacts only. Every process on one machine that resolves the same artifact
    path gets the same lock; for a lake shared by several machines, point ``TAG_LOCK_DIR`` at
    a folder on the shared file system (where it supports ``flock``).
    """
    folder = Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "tag-pipeline-locks")
    digest = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]
    return folder / f"{digest}.lock"


@contextlib.contextmanager
def exclusive(path: Path | str, wait_message: bool = True) -> Iterator[bool]:
    """Hold the lock of one lake key while its artifact is built: one writer per artifact.

    Two runs (flow runs, workers, the ``tag`` command and a benchmark) that need the same
    missing artifact at once would otherwise both compute it; the atomic commit keeps the lake
    whole, but the work (an LLM stage paid per token, an hour of embedding) is done twice. The
    lock is a ``filelock.FileLock`` on the artifact's lock file (``flock``: released by
    the operating system when its holder dies, so a killed writer never blocks the next),
    located by :func:`lock_path`.
    A second writer waits, then finds the artifact the first one committed.

    Usage::

        if lake.find_artifact(path) is not None:
            return path
        with lake.exclusive(path) as committed:
            if committed:          # another writer finished it while we waited
                return path
            ...build and write_artifact(path, ...)

    Args:
        path: the artifact directory the caller is about to build.
        wait_message: print one line when another writer holds the lock.

    Yields:
        ``True`` when the artifact is committed and intact by the time the lock is held
        (another writer made it), else ``False``: build it.

    Raises:
        OSError: the lock file cannot be created (unwritable lock folder, disk full); the message
            names the artifact and the reason.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    lock_file = lock_path(path)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_file, thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if wait_message:
                print(f"[lake] waiting for another writer of {path}")
            lock.acquire()
    except OSError as e:
        raise annotate_os_error(e, path, "artifact not committed (lock)") from e
    try:
        yield find_artifact(path) is not None
    finally:
        lock.release()


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

    Raises:
        OSError: the artifact could not be written (disk full, permission denied...): the
            message names ``path`` and the reason (``No space left on device (ENOSPC)``), the
            errno is kept (so EACCES is a ``PermissionError``), and nothing is committed. A
            library's wrapped I/O error (safetensors, polars) is raised as such an ``OSError``
            too (see :func:`os_error_of`). Stale temporaries of killed writers in the same
            folder are removed first (:func:`remove_stale_temps`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.name}-{temp_owner_tag()}-", dir=path.parent))
    except OSError as e:
        raise annotate_os_error(e, path, "artifact not committed") from e
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a lake may be shared
        yield tmp
        files = {}
        for p in sorted(tmp.iterdir()):
            if p.is_file():
                _fsync_file(p)
                files[p.name] = {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
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
        else:
            fsync_dir(path.parent)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        os_error = os_error_of(e)
        if os_error is None:
            raise
        raise annotate_os_error(os_error, path, "artifact not committed") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_error_of(e: BaseException) -> OSError | None:
    """``e`` if it is an ``OSError``; an ``OSError`` for a library's wrapped I/O error; else ``None``.

    Writers implemented in Rust report a full disk not as ``OSError`` but as their own
    exception quoting Rust's ``std::io::Error``, e.g. safetensors' ``SafetensorError("Error
    while serializing: I/O error: No space left on device (os error 28)")`` or polars'
    ``ComputeError("... underlying IO error: No space left on device (os error 28)")``. Those
    become ``OSError(28, <their message>)`` so callers see one kind of error for disk trouble.
    """
    if isinstance(e, OSError):
        return e
    m = _RUST_OS_ERROR.search(str(e))
    return OSError(int(m[1]), str(e)) if m else None


def annotate_os_error(e: OSError, path: Path | str, what: str) -> OSError:
    """An ``OSError`` like ``e`` whose message names ``path`` and the errno reason.

    ``OSError(errno.ENOSPC, ...)`` from deep inside a writer often names no file (or only a
    temporary one). The result keeps ``e``'s errno, so it is the same ``OSError`` subclass
    (``PermissionError`` for EACCES...), and reads e.g. ``"<path>: artifact not committed: No
    space left on device (ENOSPC) (at <file>)"`` (the ``at`` part when ``e`` named a file). An
    error already annotated, or without an errno, is returned unchanged.

    Args:
        e: the error caught.
        path: what could not be written (the artifact or file the caller was committing).
        what: what that means, e.g. ``"artifact not committed"``.
    """
    if getattr(e, "lake_annotated", False) or e.errno is None:
        return e
    reason = os.strerror(e.errno)
    name = errno_module.errorcode.get(e.errno, str(e.errno))
    msg = f"{path}: {what}: {reason} ({name})"
    if e.filename is not None and str(e.filename) != str(path):
        msg += f" (at {e.filename})"
    if e.strerror and e.strerror != reason:
        msg += f" [{e.strerror}]"
    err = OSError(e.errno, msg)
    err.lake_annotated = True  # type: ignore[attr-defined]
    return err


def _host_tag() -> str:
    """8 hex digits naming this machine and pid namespace (who can check a pid's liveness)."""
    try:
        ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        ns = ""
    return hashlib.sha256(f"{socket.gethostname()}|{ns}".encode()).hexdigest()[:8]


_HOST_TAG = _host_tag()
_TEMP_OWNER = re.compile(r"-(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)-[A-Za-z0-9_]+$")


def temp_owner_tag() -> str:
    """``<host>.<pid>``: put in temporary names so a later writer can tell a dead owner's."""
    return f"{_HOST_TAG}.{os.getpid()}"


def temp_path(path: Path | str) -> Path:
    """A fresh temporary sibling of ``path``: ``.tmp-<name>-<host>.<pid>-<random>``."""
    path = Path(path)
    return path.with_name(f"{TEMP_PREFIX}{path.name}-{temp_owner_tag()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    try:  # a killed, not yet reaped child is a zombie: its writing is over
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_stale_temp(path: Path | str, max_age_s: float = STALE_TEMP_AGE_S, now: float | None = None) -> bool:
    """Whether a ``.tmp-*`` file or directory was left by a writer that is gone.

    Its name carries the writer's ``<host>.<pid>`` (:func:`temp_owner_tag`): on the same
    host (and pid namespace) it is stale when that process no longer runs. A name written
    elsewhere, or without an owner, is stale when untouched for ``max_age_s`` seconds.
    """
    path = Path(path)
    if not path.name.startswith(TEMP_PREFIX):
        return False
    m = _TEMP_OWNER.search(path.name)
    if m and m["host"] == _HOST_TAG:
        return not _pid_alive(int(m["pid"]))
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > max_age_s


def remove_stale_temps(parent: Path | str, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove the ``.tmp-*`` entries of ``parent`` left by killed writers (see :func:`is_stale_temp`).

    Called by every writer before it starts, so a killed run's debris lasts only until the next
    write in that folder. Temporaries of live writers are left alone.

    Returns:
        The paths removed.
    """
    parent = Path(parent)
    removed = []
    try:
        entries = list(os.scandir(parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name.startswith(TEMP_PREFIX) and is_stale_temp(entry.path, max_age_s):
            p = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def fsync_dir(path: Path | str) -> None:
    """fsync a directory so that renames into it survive a power cut (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary sibling, fsync, rename, fsync the folder.

    A reader sees the old file or the whole new one; a killed writer leaves only a
    ``.tmp-*`` sibling (removed by :func:`remove_stale_temps`).

    Raises:
        OSError: the write failed (e.g. ENOSPC, EACCES); the message names ``path`` and the
            reason, and no temporary file is left.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise annotate_os_error(e, path, "not written") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


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


# --- the one find-or-build mechanism of every stage ----------------------------------------

_LOCATING: contextvars.ContextVar[bool] = contextvars.ContextVar("tag_lake_locating", default=False)


class Located(BaseException):
    """Raised by :meth:`Stage.materialize` inside :func:`locate`: carries the artifact's path.

    A ``BaseException`` so that a stage function's ``except Exception`` cannot swallow it.
    """

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


def locate(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Path | None:
    """The lake path of the artifact ``fn(*args, **kwargs)`` would find or build, without either.

    ``fn`` (a stage function, or a Prefect task's function that calls one) runs until its
    first :meth:`Stage.materialize`, which stops it by raising :class:`Located` before looking
    anything up: nothing is read from the artifact, built or written. This is how a stage
    task's Prefect cache key is derived from the very key the lake uses (``tasks``), instead
    of a second computation of it beside the first.

    Returns:
        The artifact folder, or ``None`` when ``fn`` returned without reaching a stage.

    Raises:
        Whatever ``fn`` raises before it reaches its stage (a missing input file, say).
    """
    token = _LOCATING.set(True)
    try:
        fn(*args, **kwargs)
    except Located as found:
        return found.path
    finally:
        _LOCATING.reset(token)
    return None


@dataclass(frozen=True)
class Built:
    """What a stage's build step hands :meth:`Stage.materialize` to commit.

    Attributes:
        write: writes the artifact's files into the temporary folder it is given (called
            inside :func:`write_artifact`, so a failure commits nothing).
        config: the config recorded in the manifest (pydantic model or JSON-able).
        inputs: ``{name: path}`` of the artifacts (or raw files) it was built from.
        rows: row count of the main table, if any.
        extra: more JSON-able manifest fields (e.g. ``summary``).
    """

    write: Callable[[Path], None]
    config: Any = None
    inputs: Mapping[str, str] | None = None
    rows: int | None = None
    extra: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Stage:
    """One artifact-producing step of the pipeline: its name, version, key and find-or-build.

    Every stage of the library (graph, LLM answers, features, training, ensemble, each method,
    prediction, report, leaderboard) declares one module-level ``Stage`` and goes through
    :meth:`materialize`, which is the lake's only find-or-build: look the artifact up
    (verified), else take the writer lock (:func:`exclusive`), look again (another writer may
    have committed it meanwhile), build, commit atomically (:func:`write_artifact`), and
    return ``read(path)`` of the committed artifact, so a lake hit and a fresh build return
    the very same value. The key is :meth:`key` (the version first, then the parts that
    decide the result); the Prefect cache key of the stage's task is a hash of the artifact
    path this object gives (``tasks.stage_task_options``), so the two keys agree by
    construction.

    ``code`` names the modules whose code computes the artifact; ``tests/test_stage_versions.py``
    digests them (docstrings and comments aside) and fails when they change while
    ``version`` did not, so a change of results cannot keep an old key by oversight.

    Args:
        name: the stage's name (unique in the library), and its lake folder
            (``<lake>/<dataset>/<folder>/...``) and manifest ``stage`` unless ``folder`` says
            otherwise.
        version: bumped whenever what the stage computes changes (its keys move).
        code: dotted module names whose code decides the artifact's contents.
        folder: lake folder and manifest ``stage`` when they differ from ``name`` (fine-tuned
            features live beside the frozen ones in ``features``, and are read like them).
    """

    name: str
    version: int
    code: tuple[str, ...] = ()
    folder: str | None = None

    def key(self, *parts: Any, length: int = 16) -> str:
        """Lineage key: :func:`config_hash` of the version and ``parts`` (16 hex digits)."""
        return config_hash(self.version, *parts, length=length)

    def path(self, lake_root: Path | str, dataset: str, key: str, prefix: str = "") -> Path:
        """``<lake_root>/<dataset>/<folder>/<prefix><key>``: where the artifact of ``key`` lives."""
        return artifact_dir(lake_root, dataset, self.folder or self.name, f"{prefix}{key}")

    def materialize(
        self,
        path: Path | str,
        build: Callable[[], Built],
        read: Callable[[Path], Any] | None = None,
    ) -> Any:
        """The artifact at ``path``: found in the lake, or built and committed once.

        Args:
            path: the artifact folder (from :meth:`path`).
            build: computes the artifact and returns a :class:`Built`; called only when the
                artifact is missing, under the writer lock.
            read: maps the committed artifact's folder to the return value (default: the
                folder itself), the same for a hit and a build.

        Returns:
            ``read(path)``.

        Raises:
            MissingArtifactError: inside :func:`lookup_only` when the artifact is missing.
            OSError: the lock or the artifact cannot be written (see :func:`write_artifact`).
            Whatever ``build`` raises (nothing is committed then).
        """
        path = Path(path)
        if _LOCATING.get():
            raise Located(path)
        read = read or (lambda p: p)
        if find_artifact(path) is not None:
            return read(path)
        with exclusive(path) as committed:
            if not committed:
                built = build()
                with write_artifact(
                    path, stage=self.folder or self.name, config=built.config, inputs=built.inputs, rows=built.rows,
                    extra=built.extra,
                ) as tmp:
                    built.write(tmp)
        return read(path)

    def code_digest(self) -> str:
        """sha256 (16 hex digits) of the code of :attr:`code`'s modules, docstrings and comments aside.

        Each module (every ``.py`` of a package) is parsed and its syntax tree dumped without
        line numbers and with docstrings removed, so reformatting, comments and docs leave the
        digest alone and any change of what the code does moves it. Read by
        ``tests/test_stage_versions.py``, never by a key (a key must not move on a refactor).

        Raises:
            ModuleNotFoundError: a name in :attr:`code` is not an importable module.
        """
        import ast
        import importlib.util

        h = hashlib.sha256()
        for name in sorted(self.code):
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin is None:
                raise ModuleNotFoundError(f"stage {self.name!r}: code module {name!r} not found")
            origin = Path(spec.origin)
            files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
            for f in files:
                tree = ast.parse(f.read_text(), filename=str(f))
                for node in ast.walk(tree):
                    body = getattr(node, "body", None)
                    if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                            and body and isinstance(body[0], ast.Expr)
                            and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                        node.body = body[1:] or [ast.Pass()]
                rel = f.relative_to(origin.parent) if origin.name == "__init__.py" else Path(f.name)
                h.update(f"{name}/{rel.as_posix()}".encode() + b"\0" + ast.dump(tree).encode() + b"\0")
        return h.hexdigest()[:16]


def dataset_of(path: Path | str) -> str:
    """The dataset of an artifact folder ``<lake>/<dataset>/<folder>/<key>`` (its grandparent's name)."""
    return Path(path).parents[1].name
