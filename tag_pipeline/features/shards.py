"""Resumable feature computation: a matrix committed shard by shard, then assembled.

Embedding every node of a large graph takes minutes to hours; a run that is killed half way
should not start over. :func:`embed_in_shards` cuts the rows into shards of ``shard_size``
nodes and commits each one, as soon as it is computed, to a folder beside the artifact it
will become::

    <lake>/<dataset>/features/.shards/<feature>-<key>/
        shard-00000.safetensors   rows [0, shard_size) of the matrix (one tensor "x")
        shard-00000.json          its manifest: rows covered, shape, dtype, bytes, sha256,
                                  digest of the texts it embeds
        shard-00001.safetensors   ...

Each file is written atomically (temporary sibling, fsync, rename:
:func:`tag_pipeline.lake.atomic_write_bytes`), the tensor before its manifest, so a shard
counts as committed only once its manifest exists and verifies. A rerun checks every
committed shard (size, sha256, rows covered, texts digest) and computes only the missing or
corrupt ones; temporaries of killed writers are removed
(:func:`tag_pipeline.lake.remove_stale_temps`). When every shard is there the caller
assembles the final artifact (with :func:`tag_pipeline.lake.write_artifact`) and removes the
folder (:func:`remove_shards`).

The shard size is an execution detail, not lineage: it never enters an artifact's key. A
shard is reused only when it covers exactly the rows asked for, so changing the size between
a killed run and its resumption recomputes the shards that no longer line up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from tag_pipeline import __version__, lake

log = logging.getLogger(__name__)

#: Nodes per shard: small enough that a kill loses little work, large enough that the
#: per-shard overhead (a few files, an fsync) is negligible next to the encoder.
SHARD_SIZE = 512
#: Hidden folder, beside a stage's artifacts, holding one shard folder per artifact in progress.
SHARDS_DIR = ".shards"
SHARD_TENSOR = "x"


class CorruptShardError(lake.CorruptArtifactError):
    """A committed shard does not match its manifest (truncated, altered or unreadable)."""


@dataclass(frozen=True)
class ShardedMatrix:
    """The result of :func:`embed_in_shards`.

    Attributes:
        x: ``[N, dim]`` the assembled matrix, row ``i`` for text ``i``.
        computed: indices of the shards computed by this call.
        reused: indices of the shards found committed and valid.
        writers: ``host:pid`` of every process that embedded a shard of the result.
    """

    x: torch.Tensor
    computed: tuple[int, ...]
    reused: tuple[int, ...]
    writers: tuple[str, ...] = ()


def shard_folder(artifact_path: Path | str) -> Path:
    """``<stage dir>/.shards/<artifact name>``: where the shards of an artifact in progress live."""
    artifact_path = Path(artifact_path)
    return artifact_path.parent / SHARDS_DIR / artifact_path.name


def shard_ranges(num_rows: int, shard_size: int = SHARD_SIZE) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` half-open row ranges of ``shard_size`` rows (the last may be shorter).

    Raises:
        ValueError: ``shard_size < 1`` or ``num_rows < 0``.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    return [(s, min(s + shard_size, num_rows)) for s in range(0, num_rows, shard_size)]


def shard_paths(folder: Path | str, index: int) -> tuple[Path, Path]:
    """``(shard-NNNNN.safetensors, shard-NNNNN.json)`` of shard ``index`` in ``folder``."""
    folder = Path(folder)
    return folder / f"shard-{index:05d}.safetensors", folder / f"shard-{index:05d}.json"


def texts_digest(texts: Sequence[str | None]) -> str:
    """sha256 of a sequence of texts (``None`` counts as ``""``), length-prefixed so it is unambiguous."""
    h = hashlib.sha256()
    for t in texts:
        b = (t or "").encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def write_shard(folder: Path | str, index: int, x: torch.Tensor, *, start: int, stop: int, digest: str) -> Path:
    """Commit shard ``index`` (rows ``start:stop``) atomically: the tensor, then its manifest.

    Args:
        folder: the shard folder (see :func:`shard_folder`); must exist.
        index: shard number.
        x: ``[stop - start, dim]`` the shard's rows.
        start: first row covered.
        stop: one past the last row covered.
        digest: :func:`texts_digest` of the texts the rows embed.

    Returns:
        The shard's tensor file.

    Raises:
        ValueError: ``x`` does not have ``stop - start`` rows.
        OSError: a write failed (disk full, permission denied); the message names the file and
            the reason, and the shard is not committed.
    """
    if x.ndim < 1 or x.shape[0] != stop - start:
        raise ValueError(f"shard {index}: {tuple(x.shape)} rows for rows {start}:{stop}")
    tensor_path, manifest_path = shard_paths(folder, index)
    # no safetensors metadata: safetensors writes that map in hash-map order, which would make
    # equal shards differ in bytes from one process to the next; the manifest says it all
    data = save_safetensors({SHARD_TENSOR: x.contiguous()})
    lake.atomic_write_bytes(tensor_path, data)
    manifest = {
        "shard": index,
        "start": start,
        "stop": stop,
        "rows": stop - start,
        "shape": list(x.shape),
        "dtype": str(x.dtype).removeprefix("torch."),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "texts_sha256": digest,
        "writer": _writer(),  # which (worker) process embedded it
        "created_unix": time.time(),
        "code_version": __version__,
    }
    lake.atomic_write_bytes(manifest_path, json.dumps(manifest, indent=2).encode())
    return tensor_path


def read_shard(folder: Path | str, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a committed shard, verified against its manifest.

    Returns:
        ``(x, manifest)``.

    Raises:
        FileNotFoundError: the shard has no manifest (never committed).
        CorruptShardError: the manifest is unreadable, or the tensor file is missing, has
            another size or sha256, does not parse, or has the wrong number of rows (the
            message names the file).
    """
    tensor_path, manifest_path = shard_paths(folder, index)
    try:
        raw_manifest = manifest_path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{manifest_path}: shard {index} not committed") from None
    try:
        manifest = json.loads(raw_manifest)
        expected_bytes, expected_sha = int(manifest["bytes"]), str(manifest["sha256"])
        rows = int(manifest["rows"])
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptShardError(f"{manifest_path}: unreadable shard manifest ({e})") from e
    try:
        data = tensor_path.read_bytes()
    except FileNotFoundError:
        raise CorruptShardError(f"{tensor_path}: listed in {manifest_path.name} but missing") from None
    if len(data) != expected_bytes:
        raise CorruptShardError(f"{tensor_path}: {len(data)} bytes, manifest says {expected_bytes} (truncated?)")
    if hashlib.sha256(data).hexdigest() != expected_sha:
        raise CorruptShardError(f"{tensor_path}: sha256 differs from the manifest")
    try:
        x = load_safetensors(data)[SHARD_TENSOR]
    except (SafetensorError, KeyError, ValueError) as e:
        raise CorruptShardError(f"{tensor_path}: not a readable shard ({e})") from e
    if x.ndim < 1 or x.shape[0] != rows:
        raise CorruptShardError(f"{tensor_path}: {tuple(x.shape)} rows, manifest says {rows}")
    return x, manifest


def committed_shards(folder: Path | str) -> list[int]:
    """Indices of the shards in ``folder`` that have a manifest (not verified)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(p.stem.removeprefix("shard-")) for p in folder.glob("shard-*.json"))


def _writer() -> str:
    """``host:pid`` of this process (at call time: a forked worker has its own pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def valid_shard(
    folder: Path | str, index: int, start: int, stop: int, digest: str
) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """Shard ``index`` and its manifest if it is committed, verifies, and covers rows
    ``start:stop`` of these texts (``digest``: :func:`texts_digest`); else ``None`` (missing,
    corrupt or stale: recompute it)."""
    try:
        x, m = read_shard(folder, index)
    except FileNotFoundError:
        return None
    except CorruptShardError as e:
        log.warning("recomputing a corrupt shard: %s", e)
        return None
    if (m.get("start"), m.get("stop"), m.get("texts_sha256")) != (start, stop, digest):
        log.warning("recomputing shard %d of %s: it covers other rows or texts", index, folder)
        return None
    return x, m


def embed_shard(
    texts: Sequence[str | None],
    encode: Callable[[Sequence[str | None]], torch.Tensor],
    folder: Path | str,
    index: int,
    *,
    shard_size: int = SHARD_SIZE,
) -> bool:
    """Compute and commit shard ``index`` alone, unless a valid one is committed.

    The unit of work a distributed run fans out (one task per shard, on any worker that sees
    the lake); :func:`embed_in_shards` then finds every shard committed and assembles them.
    Shards are written atomically, so two workers racing on one shard both leave a whole file.

    Args:
        texts: all ``N`` texts of the feature (the shard takes rows ``index * shard_size`` on).
        encode: as in :func:`embed_in_shards`.
        folder: the shard folder (created if needed).
        index: the shard, ``0 <= index < ceil(N / shard_size)``.
        shard_size: rows per shard; must match the assembling call.

    Returns:
        ``True`` if this call computed the shard, ``False`` if it was already committed.

    Raises:
        IndexError: no such shard.
        ValueError, OSError: as :func:`embed_in_shards`.
    """
    ranges = shard_ranges(len(texts), shard_size)
    if not 0 <= index < len(ranges):
        raise IndexError(f"shard {index} of {len(ranges)} ({len(texts)} rows, shard_size {shard_size})")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise lake.annotate_os_error(e, folder, "cannot create the shard folder") from e
    a, b = ranges[index]
    digest = texts_digest(texts[a:b])
    if valid_shard(folder, index, a, b, digest) is not None:
        return False
    x = encode(list(texts[a:b]))
    if x.ndim != 2 or x.shape[0] != b - a:
        raise ValueError(f"encode returned {tuple(x.shape)} for {b - a} texts (shard {index})")
    write_shard(folder, index, x, start=a, stop=b, digest=digest)
    return True


def embed_in_shards(
    texts: Sequence[str | None],
    encode: Callable[[Sequence[str | None]], torch.Tensor],
    folder: Path | str,
    *,
    shard_size: int = SHARD_SIZE,
    progress: bool = True,
    desc: str = "embedding",
) -> ShardedMatrix:
    """Compute ``encode(texts)`` shard by shard, committing each shard to ``folder``.

    Shards already committed (and verifying, for the same rows and texts) are read back
    instead of recomputed; a missing, corrupt or mismatched shard is recomputed and
    overwritten. Each shard is committed before the next is started, so a killed run loses at
    most the shard in progress.

    ``encode`` sees at most ``shard_size`` texts at a time. For a sentence encoder that sorts
    and pads texts per batch (sentence-transformers), rows can differ from one call on all
    texts by float rounding (measured: at most ~1e-7 on unit-norm MiniLM rows); a resumed run
    and an uninterrupted one with the same ``shard_size`` agree bit for bit.

    Args:
        texts: ``N`` texts (``None`` allowed if ``encode`` takes it).
        encode: maps a list of texts to ``[len, dim]``; called once per shard computed, and
            once with ``[]`` when ``N == 0`` (for the ``[0, dim]`` shape).
        folder: the shard folder (created if needed; see :func:`shard_folder`).
        shard_size: rows per shard. (default: :data:`SHARD_SIZE`)
        progress: draw a tqdm bar over nodes (starting at the rows already committed).
        desc: the bar's label.

    Returns:
        :class:`ShardedMatrix`: the ``[N, dim]`` matrix and which shards were computed/reused.

    Raises:
        ValueError: ``encode`` returned the wrong number of rows, or shards disagree on
            ``dim``/dtype.
        OSError: the folder or a shard could not be written (message names path and reason);
            the shards committed so far stay, so a rerun resumes from them.
    """
    folder = Path(folder)
    texts = list(texts)
    ranges = shard_ranges(len(texts), shard_size)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise lake.annotate_os_error(e, folder, "cannot create the shard folder") from e
    lake.remove_stale_temps(folder)
    try:
        return _embed_into(texts, encode, folder, ranges, progress, desc)
    except BaseException:
        if created:  # a run that failed before its first shard leaves no empty folder behind
            _remove_if_empty(folder)
        raise


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` (and its parent ``.shards``) if nothing but stale temporaries is in it."""
    try:
        lake.remove_stale_temps(folder)
        folder.rmdir()
        folder.parent.rmdir()
    except OSError:  # not empty: committed shards are the checkpoint, keep them
        pass


def _embed_into(texts, encode, folder: Path, ranges, progress: bool, desc: str) -> ShardedMatrix:
    """The body of :func:`embed_in_shards` once ``folder`` exists."""
    parts: dict[int, torch.Tensor] = {}
    me = _writer()
    writers = {me}
    digests = [texts_digest(texts[a:b]) for a, b in ranges]
    for i, (a, b) in enumerate(ranges):
        found = valid_shard(folder, i, a, b, digests[i])
        if found is not None:
            parts[i] = found[0]
            writers.add(found[1].get("writer", "unknown"))
    reused = tuple(sorted(parts))
    if reused:
        log.info("%s: resuming, %d of %d shards already committed", folder, len(reused), len(ranges))

    from tqdm.auto import tqdm

    computed = []
    done_rows = sum(ranges[i][1] - ranges[i][0] for i in reused)
    with tqdm(total=len(texts), initial=done_rows, unit="node", desc=desc, disable=not progress) as bar:
        for i, (a, b) in enumerate(ranges):
            if i in parts:
                continue
            x = encode(texts[a:b])
            if x.ndim != 2 or x.shape[0] != b - a:
                raise ValueError(f"encode returned {tuple(x.shape)} for {b - a} texts (shard {i})")
            write_shard(folder, i, x, start=a, stop=b, digest=digests[i])
            parts[i] = x
            computed.append(i)
            bar.update(b - a)

    if not computed:
        writers.discard(me)
    if not ranges:
        return ShardedMatrix(x=encode([]), computed=(), reused=())
    first = parts[0]
    for i, x in parts.items():
        if x.shape[1:] != first.shape[1:] or x.dtype != first.dtype:
            raise ValueError(
                f"{shard_paths(folder, i)[0]}: {tuple(x.shape)} {x.dtype}, shard 0 is {tuple(first.shape)} "
                f"{first.dtype}; remove {folder} and run again"
            )
    x = torch.cat([parts[i] for i in range(len(ranges))])
    return ShardedMatrix(x=x, computed=tuple(computed), reused=reused, writers=tuple(sorted(writers)))


def remove_shards(folder: Path | str) -> None:
    """Delete a shard folder once its artifact is committed (and ``.shards`` if left empty)."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:
        pass  # other artifacts in progress, or already gone
