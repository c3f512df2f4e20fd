"""Looking into the lake: list its artifacts, follow one's lineage, see one node through every
stage, compare two runs, and plan (or apply) a garbage collection.

The lake (:mod:`tag_pipeline.lake`) holds one folder per artifact,
``<root>/<dataset>/<stage>/<key>/``, each with a ``manifest.json`` (stage, key,
``created_unix``, config, ``inputs``: ``{name: path}`` of the artifacts it was built from,
rows, and the size and sha256 of every file). Everything here reads manifests with
``lake.read_artifact(path, verify=False)``: listing never re-hashes a file. Lineage follows
the manifests' ``inputs`` (and any other string in a manifest that names an artifact of the
lake, plus the paths a report lists in its ``report.md``). A recorded path is matched to this
lake by its last three parts, ``<dataset>/<stage>/<key>``, so a lake written with a relative
``lake`` path, or moved since, still resolves.

Functions return plain data (polars frames, dicts) and print nothing; the ``tag lake`` command
line (:mod:`tag_cli.lake`) renders them as text tables (:mod:`tag_cli.lakeview_render`, with
``rich``). No Prefect here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tag_pipeline import lake
from tag_pipeline.report import FEATURE_ORDER, METRICS_FILE, MODEL_ORDER, REPORT_FILE

#: Display order of the stages (others follow, by name).
STAGE_ORDER = ("graph", "llm", "features", "train", "ensemble", "report")
#: Stages whose artifacts hold per-node predictions (``predictions.parquet``).
RUN_STAGES = ("train", "ensemble")
#: Infix of a corrupt artifact moved aside by :func:`tag_pipeline.lake.find_artifact`.
CORRUPT_MARK = ".corrupt-"
#: Value of a config key that one side of :func:`diff_runs` does not have.
ABSENT = "<absent>"
#: An unfinished (never committed) shard folder touched this recently is left alone by
#: :func:`gc_plan`: an embedding may be writing it (seconds).
ACTIVE_SHARDS_S = 3600.0

# --------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class _Art:
    """One committed artifact folder (``manifest.json`` present) and its manifest."""

    path: Path
    dataset: str
    stage: str  # the folder's name (the manifest says the same for artifacts we wrote)
    key: str
    manifest: dict | None  # None: unreadable manifest (see ``error``)
    error: str | None = None

    @property
    def id(self) -> tuple[str, str, str]:
        return (self.dataset, self.stage, self.key)

    @property
    def created(self) -> float:
        """``created_unix`` from the manifest; the manifest's mtime when unreadable."""
        if self.manifest and isinstance(self.manifest.get("created_unix"), (int, float)):
            return float(self.manifest["created_unix"])
        try:
            return (self.path / lake.MANIFEST).stat().st_mtime
        except OSError:
            return 0.0


def _stage_rank(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage), "") if stage in STAGE_ORDER else (len(STAGE_ORDER), stage)


def _visible_dirs(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` whose name does not start with a dot, sorted by name."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except FileNotFoundError:
        return []


def _check_root(root: Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no lake here (the folder does not exist)")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder, so not a lake root")
    return root


def _datasets(root: Path) -> list[str]:
    return [p.name for p in _visible_dirs(root)]


def _is_artifact_dir(p: Path) -> bool:
    return p.is_dir() and not p.name.startswith(".") and CORRUPT_MARK not in p.name and (p / lake.MANIFEST).is_file()


def _read(path: Path, dataset: str, stage: str) -> _Art:
    try:
        manifest = lake.read_artifact(path, verify=False).manifest
        if not isinstance(manifest, dict):
            raise lake.CorruptArtifactError(f"{path / lake.MANIFEST}: not a JSON object")
        return _Art(path, dataset, stage, path.name, manifest)
    except (lake.CorruptArtifactError, OSError) as e:
        return _Art(path, dataset, stage, path.name, None, error=str(e))


class _Index:
    """Every committed artifact of a lake (or of some of its datasets), manifests read once."""

    def __init__(self, root: Path | str, datasets: Iterable[str] | None = None):
        self.root = _check_root(Path(root))
        names = _datasets(self.root) if datasets is None else list(datasets)
        self.arts: dict[tuple[str, str, str], _Art] = {}
        for ds in names:
            for stage_dir in _visible_dirs(self.root / ds):
                for p in _visible_dirs(stage_dir):
                    if _is_artifact_dir(p):
                        art = _read(p, ds, stage_dir.name)
                        self.arts[art.id] = art
        self._refs: dict[tuple, tuple[list, list]] = {}
        self._down: dict[tuple, list] | None = None

    def resolve(self, value: Any) -> tuple[str, str, str] | None:
        """The artifact of this lake a recorded path names (by its last three parts), or None."""
        if not isinstance(value, str) or not value:
            return None
        parts = Path(value).parts
        if len(parts) < 3:
            return None
        key = (parts[-3], parts[-2], parts[-1])
        return key if key in self.arts else None

    def refs(self, art: _Art) -> tuple[list[tuple[str, tuple]], list[tuple[str, str]]]:
        """``(lake refs [(name, id)], external inputs [(name, value)])`` of one artifact.

        Lake refs: every ``inputs`` value that names an artifact of this lake (under its input
        name), every other string of the manifest that does (under its dotted field name), and
        for a report every path listed in its ``report.md`` (``report.md: <what>``).
        External: ``inputs`` entries that name no artifact here (raw files, TAPE's answers).
        """
        if art.id in self._refs:
            return self._refs[art.id]
        refs: list[tuple[str, tuple]] = []
        external: list[tuple[str, str]] = []
        seen: set[tuple] = {art.id}
        m = art.manifest or {}
        inputs = m.get("inputs") if isinstance(m.get("inputs"), dict) else {}
        for name, value in inputs.items():
            ref = self.resolve(value)
            if ref is not None:
                refs.append((str(name), ref))
                seen.add(ref)
            else:
                external.append((str(name), str(value)))
        for name, value in _strings(m, skip=("inputs", "files")):
            ref = self.resolve(value)
            if ref is not None and ref not in seen:
                refs.append((name, ref))
                seen.add(ref)
        if art.stage == "report":
            for name, value in _report_md_paths(art.path):
                ref = self.resolve(value)
                if ref is not None and ref not in seen:
                    refs.append((f"{REPORT_FILE}: {name}", ref))
                    seen.add(ref)
        self._refs[art.id] = (refs, external)
        return refs, external

    def up(self, start: tuple) -> list[dict]:
        """Artifacts ``start`` was built from, transitively (breadth first, each once)."""
        out, seen, queue = [], {start}, deque([(start, 0)])
        while queue:
            cur, depth = queue.popleft()
            for name, ref in self.refs(self.arts[cur])[0]:
                if ref not in seen:
                    seen.add(ref)
                    out.append(self._entry(ref, name, cur, depth + 1))
                    queue.append((ref, depth + 1))
        return out

    def closure(self, start: tuple) -> set[tuple]:
        """``start`` and every artifact it reaches upwards."""
        return {start} | {(e["dataset"], e["stage"], e["key"]) for e in self.up(start)}

    def down(self, start: tuple) -> list[dict]:
        """Committed artifacts built from ``start``, transitively (breadth first, each once)."""
        if self._down is None:
            self._down = {}
            for art in self.arts.values():
                for name, ref in self.refs(art)[0]:
                    self._down.setdefault(ref, []).append((name, art.id))
        out, seen, queue = [], {start}, deque([(start, 0)])
        while queue:
            cur, depth = queue.popleft()
            for name, child in sorted(self._down.get(cur, []), key=lambda t: (_stage_rank(t[1][1]), t[1])):
                if child not in seen:
                    seen.add(child)
                    out.append(self._entry(child, name, cur, depth + 1))
                    queue.append((child, depth + 1))
        return out

    def _entry(self, ref: tuple, name: str, via: tuple, depth: int) -> dict:
        art = self.arts[ref]
        return {
            "depth": depth, "name": name, "dataset": art.dataset, "stage": art.stage, "key": art.key,
            "path": str(art.path), "via": str(self.arts[via].path),
        }


def _strings(obj: Any, prefix: str = "", skip: tuple[str, ...] = ()) -> Iterable[tuple[str, str]]:
    """``(dotted field, value)`` of every string inside a JSON value (lists indexed ``[i]``)."""
    if isinstance(obj, str):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k in skip:
                continue
            yield from _strings(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{prefix}[{i}]")


_MD_PATH = re.compile(r"^- (?P<name>[^`\n]+?): `(?P<path>[^`\n]+)`\s*$", re.MULTILINE)


def _report_md_paths(path: Path) -> list[tuple[str, str]]:
    """``[(what, path)]`` of the ``- what: `path``` lines of a report's ``report.md``."""
    try:
        text = (path / REPORT_FILE).read_text(errors="replace")
    except OSError:
        return []
    return [(m["name"].strip(), m["path"]) for m in _MD_PATH.finditer(text)]


def _tree_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (links not followed)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0
    if not path.is_dir() or path.is_symlink():
        return st.st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def _utc(t: float | None) -> dt.datetime | None:
    return None if t is None else dt.datetime.fromtimestamp(t, tz=dt.timezone.utc)


# ---------------------------------------------------------------------------- ls


def _run_name(name: str) -> tuple[str, str, str] | None:
    """``gcn-TA-s0[-ft]`` (a report's input name) -> (model, feature, seed)."""
    m = re.fullmatch(r"(?P<model>.+)-(?P<feature>[^-]+)-s(?P<seed>\d+)(?:-ft)?", name)
    return (m["model"], m["feature"], m["seed"]) if m else None


def _uniq(values: Iterable) -> str:
    return ",".join(str(v) for v in sorted(set(values), key=lambda v: (str(type(v)), v)))


def describe(manifest: Mapping[str, Any] | None, stage: str | None = None) -> str:
    """One line saying what produced an artifact, from its manifest alone.

    graph: dataset, subset and seeds; llm: backend and model; features: feature and encoder
    (``TA all-MiniLM-L6-v2 max_length 128``, ``P top-5``, ``TA fine-tuned ... s0``); train:
    model, feature, seed (``on fine-tuned TA`` when its feature artifact is a fine-tuned one);
    ensemble: model, member features, seed, mode; report: the runs it tabulates.

    Args:
        manifest: the parsed ``manifest.json`` (``None``: unreadable).
        stage: the stage (default: the manifest's ``stage``).

    Returns:
        str: a short description (``""`` for an unknown stage).
    """
    if manifest is None:
        return "unreadable manifest"
    stage = stage or manifest.get("stage", "")
    cfg = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    inputs = manifest.get("inputs") if isinstance(manifest.get("inputs"), dict) else {}
    summary = manifest.get("summary") if isinstance(manifest.get("summary"), dict) else {}
    try:
        if stage == "graph":
            out = str(cfg.get("name", "?"))
            if cfg.get("subset") is not None:
                out += f" subset {cfg['subset']}"
            if manifest.get("seeds") is not None:
                out += f", seeds {_uniq(manifest['seeds'])}"
            return out
        if stage == "llm":
            backend = cfg.get("backend", "?")
            if backend == "online":
                on = cfg.get("online") or {}
                return f"online {on.get('model', '?')}" + (f" at {on['api_base']}" if on.get("api_base") else "")
            if backend == "offline":
                return f"offline {(cfg.get('offline') or {}).get('model_path', '?')}"
            if backend == "local":
                loc = cfg.get("local") or {}
                server = ((manifest.get("stats") or {}).get("backend") or {}).get("server") or {}
                digest = f" (sha256 {server['model_sha256'][:12]})" if server.get("model_sha256") else ""
                return f"local {loc.get('model', '?')}{digest}" + (f" at {loc['api_base']}" if loc.get("api_base") else "")
            return f"{backend} {cfg.get('model', '?')}"
        if stage == "features":
            feature = manifest.get("feature", "?")
            if manifest.get("lm") == "finetuned":
                return f"{feature} fine-tuned {cfg.get('model', '?')}, seed {manifest.get('seed', '?')}"
            if feature == "P":
                return f"P top-{manifest.get('top_k', cfg.get('top_k', '?'))}"
            return f"{feature} {cfg.get('model', '?')} max_length {cfg.get('max_length', '?')}"
        if stage == "train":
            feature = summary.get("feature", "?")
            ft = Path(str(inputs.get("features", ""))).name.startswith(f"{feature}ft-")
            return f"{summary.get('model', '?')} on {'fine-tuned ' if ft else ''}{feature}, seed {summary.get('seed', '?')}"
        if stage == "ensemble":
            feats = "+".join(summary.get("features") or sorted(inputs))
            return (f"{summary.get('model', '?')} TAPE ({feats}), seed {summary.get('seed', '?')}, "
                    f"mode {cfg.get('mode', summary.get('mode', '?'))}")
        if stage == "report":
            runs = [r for r in (_run_name(n) for n in inputs) if r]
            if not runs:
                return "no runs (the flow stopped before training)"
            return (f"{len(runs)} runs: models {_uniq(r[0] for r in runs)}, features "
                    f"{_uniq(r[1] for r in runs)}, seeds {_uniq(int(r[2]) for r in runs)}")
    except (TypeError, AttributeError) as e:  # a hand-edited manifest of an odd shape
        return f"unrecognised manifest ({e})"
    return ""


ARTIFACT_SCHEMA = {
    "dataset": pl.Utf8, "stage": pl.Utf8, "key": pl.Utf8, "path": pl.Utf8, "bytes": pl.Int64,
    "created": pl.Datetime("us", "UTC"), "rows": pl.Int64, "produced_by": pl.Utf8,
}


def list_artifacts(root: Path | str, dataset: str | None = None, stage: str | None = None) -> pl.DataFrame:
    """Every committed artifact of the lake, one row each.

    Moved-aside corrupt copies (``<key>.corrupt-*``), temporaries (``.tmp-*``) and dot-folders
    (``.shards``) are not artifacts and are not listed (see :func:`gc_plan`).
    Manifests are read without verifying any file.

    Args:
        root: the lake root (``data/lake``).
        dataset: only this dataset (a folder under ``root``).
        stage: only this stage (``graph``, ``llm``, ``features``, ``train``, ``ensemble``,
            ``report``).

    Returns:
        pl.DataFrame: columns ``dataset`` utf8, ``stage`` utf8, ``key`` utf8, ``path`` utf8
        (``<root>/<dataset>/<stage>/<key>``), ``bytes`` int64 (all files in the folder, on
        disk, manifest included), ``created`` datetime[us, UTC] (the manifest's
        ``created_unix``), ``rows`` int64 (nullable: the manifest's row count), ``produced_by``
        utf8 (:func:`describe`); sorted by dataset, stage (pipeline order), creation time.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``dataset`` or ``stage`` is not in the lake (the message lists what is).
    """
    root = _check_root(Path(root))
    present = _datasets(root)
    if dataset is not None and dataset not in present:
        raise ValueError(f"{root}: no dataset {dataset!r} in this lake (datasets: {', '.join(present) or 'none'})")
    names = [dataset] if dataset is not None else present
    if stage is not None:
        stages = sorted({p.name for ds in names for p in _visible_dirs(root / ds)}, key=_stage_rank)
        if stage not in stages:
            where = f"dataset {dataset!r}" if dataset else "this lake"
            raise ValueError(f"{root}: no stage {stage!r} in {where} (stages: {', '.join(stages) or 'none'})")
    index = _Index(root, names)
    rows = []
    for art in sorted(index.arts.values(), key=lambda a: (a.dataset, _stage_rank(a.stage), a.created, a.key)):
        if stage is not None and art.stage != stage:
            continue
        m = art.manifest or {}
        n = m.get("rows")
        rows.append({
            "dataset": art.dataset, "stage": art.stage, "key": art.key, "path": str(art.path),
            "bytes": _tree_bytes(art.path), "created": _utc(art.created),
            "rows": int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None,
            "produced_by": describe(art.manifest, art.stage) if art.manifest is not None
            else f"unreadable manifest: {art.error}",
        })
    return pl.DataFrame(rows, schema=ARTIFACT_SCHEMA)


# -------------------------------------------------------------------------- show


def _not_an_artifact(path: Path) -> Exception:
    """The clearest error for a path that is not a committed artifact folder."""
    if not path.exists():
        return FileNotFoundError(f"{path}: no such file or folder")
    if CORRUPT_MARK in path.name:
        return ValueError(
            f"{path}: a corrupt copy of artifact {path.name.split(CORRUPT_MARK)[0]!r}, moved aside when its "
            "files failed the manifest check; not a committed artifact ('tag lake gc' lists it)"
        )
    if path.name.startswith(lake.TEMP_PREFIX):
        return ValueError(f"{path}: the temporary folder of an unfinished write, not a committed artifact")
    if path.is_file():
        return ValueError(f"{path}: a file, not an artifact folder (an artifact is a folder with {lake.MANIFEST})")
    children = _visible_dirs(path)
    arts = [c for c in children if _is_artifact_dir(c)]
    if arts:
        return ValueError(
            f"{path}: a stage folder holding {len(arts)} artifacts, not an artifact; pass one of them, "
            f"e.g. {arts[0]}"
        )
    if any(_is_artifact_dir(a) for c in children for a in _visible_dirs(c)):
        return ValueError(f"{path}: a dataset folder of the lake, not an artifact; pass <stage>/<key> under it")
    if any(_is_artifact_dir(a) for c in children for s in _visible_dirs(c) for a in _visible_dirs(s)):
        return ValueError(f"{path}: the lake root, not an artifact; pass <dataset>/<stage>/<key> under it")
    return ValueError(f"{path}: no {lake.MANIFEST}, so not a committed lake artifact")


def _open_artifact(path: Path | str) -> tuple[_Index, _Art]:
    """Index of the lake an artifact lives in (``path/../../..``) and the artifact itself."""
    path = Path(path)
    if not _is_artifact_dir(path):
        raise _not_an_artifact(path)
    lake.read_artifact(path, verify=False)  # CorruptArtifactError for an unreadable manifest
    if len(path.parts) < 3:
        path = path.absolute()
    if len(path.parents) < 3:
        raise ValueError(f"{path}: not laid out as <lake>/<dataset>/<stage>/<key>")
    index = _Index(path.parents[2])
    found = index.arts.get((path.parents[1].name, path.parent.name, path.name))
    if found is None or found.manifest is None:
        raise ValueError(f"{path}: not laid out as <lake>/<dataset>/<stage>/<key>")
    return index, found


def show_artifact(path: Path | str) -> dict:
    """One artifact: its manifest and its lineage up and down.

    The lake root is taken to be three folders above ``path``
    (``<root>/<dataset>/<stage>/<key>``).

    Args:
        path: an artifact folder.

    Returns:
        dict with ``path`` (str), ``dataset``, ``stage``, ``key``, ``created`` (UTC datetime),
        ``bytes`` (int, on disk), ``describe`` (:func:`describe`), ``manifest`` (the parsed
        ``manifest.json``); ``up``: the artifacts it was built from, transitively, and ``down``:
        the committed artifacts built from it, transitively, each a list of dicts ``depth``
        (1 = named directly), ``name`` (the input name under which ``via`` records it), ``via``
        (path of the artifact naming it, or named by it), ``dataset``, ``stage``, ``key``,
        ``path``; ``external``: ``[{"name", "value"}]`` inputs outside the lake (raw files).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not an artifact folder (a stage or dataset folder, a corrupt
            copy, a temporary, a file...); the message says which.
        CorruptArtifactError: its ``manifest.json`` is unreadable.
    """
    index, art = _open_artifact(path)
    _refs, external = index.refs(art)
    return {
        "path": str(art.path), "dataset": art.dataset, "stage": art.stage, "key": art.key,
        "created": _utc(art.created), "bytes": _tree_bytes(art.path), "describe": describe(art.manifest, art.stage),
        "manifest": art.manifest, "up": index.up(art.id), "down": index.down(art.id),
        "external": [{"name": n, "value": v} for n, v in external],
    }


# -------------------------------------------------------------------------- node


def _split_text(text: str | None) -> tuple[str | None, str | None]:
    """``(title, abstract)`` of a ``"Title : Abstract"`` text (TAPE's layout), else ``(None, None)``."""
    if not text or " : " not in text:
        return None, None
    title, abstract = text.split(" : ", 1)
    return title.strip(), abstract.strip()


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def _graph_of_run(index: _Index, art: _Art, depth: int = 0) -> tuple | None:
    """The graph artifact a training run (or, through its members, an ensemble) was trained on."""
    inputs = (art.manifest or {}).get("inputs") or {}
    if art.stage == "train":
        return index.resolve(inputs.get("graph"))
    if art.stage == "ensemble" and depth == 0:
        for value in inputs.values():
            ref = index.resolve(value)
            if ref is not None and index.arts[ref].manifest is not None:
                return _graph_of_run(index, index.arts[ref], depth + 1)
    return None


def node_view(root: Path | str, dataset: str, node_id: int, graph: Path | str | None = None) -> dict:
    """One node seen through every stage: text, label, splits, LLM answer(s), every run's prediction.

    LLM answers and runs are taken from every artifact of the dataset built on a graph with the
    same content (nodes, edges, classes; :func:`tag_pipeline.datasets.graph_content_key`) as
    ``graph``: node ids mean the same node there, whatever seeds the graph artifact holds.

    Args:
        root: the lake root.
        dataset: a dataset of the lake (``cora``).
        node_id: the node (``0 .. N-1``, the dataset's canonical order).
        graph: a graph artifact folder; default the newest graph artifact of ``dataset``.

    Returns:
        dict with ``dataset``, ``node_id``, ``graph`` (path), ``num_nodes``, ``source_id``
        (the id in the raw data), ``text`` (title + abstract as stored; ``None`` for datasets
        without text), ``title`` / ``abstract`` (split at the first ``" : "``, else ``None``),
        ``label`` (int) and ``label_name``, ``splits`` (``{seed: "train" | "val" | "test" |
        None}`` for the graph's seeds), ``class_names``;
        ``llm``: one dict per LLM artifact (``path``, ``backend``, ``model``, ``status``,
        ``error``, ``raw_text``, ``explanation``, ``ranked_labels`` (class names, most likely
        first), ``ranked_ids``, ``source``, ``prompt_version``, ``prompt``: the chat messages
        ``[{"role", "content"}]`` rendered with :mod:`tag_pipeline.llm.prompts` for live
        backends, ``None`` for replayed answers, and ``prompt_note`` saying why);
        ``runs``: one dict per training or ensemble artifact (``path``, ``stage``, ``model``,
        ``feature``, ``seed``, ``lm`` (``frozen`` / ``finetuned``), ``split`` (the node's part
        in that run), ``pred`` (int), ``pred_name``, ``prob`` (float in ``[0, 1]``: softmax of
        the stored logits at ``pred``; for a ``probs`` ensemble the stored averaged
        probability), ``correct`` (bool), ``created`` (UTC datetime)), in model, feature,
        seed, creation order.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: unknown ``dataset``; no graph artifact; ``graph`` is not a graph artifact
            of that dataset; ``node_id`` out of range (the message names it and the node count).
    """
    from tag_pipeline.datasets import graph_content_key  # imports torch: only here
    from tag_pipeline.train import PREDICTIONS_FILE

    root = _check_root(Path(root))
    present = _datasets(root)
    if dataset not in present:
        raise ValueError(f"{root}: no dataset {dataset!r} in this lake (datasets: {', '.join(present) or 'none'})")
    index = _Index(root, [dataset])
    graphs = sorted((a for a in index.arts.values() if a.stage == "graph" and a.manifest), key=lambda a: a.created)
    if graph is None:
        if not graphs:
            raise ValueError(f"{root / dataset}: no graph artifact (run the graph stage first)")
        gart = graphs[-1]
    else:
        gpath = Path(graph)
        if not _is_artifact_dir(gpath):
            raise _not_an_artifact(gpath)
        ref = index.resolve(str(gpath))
        if ref is None or ref[1] != "graph" or index.arts[ref].manifest is None:
            raise ValueError(f"{gpath}: not a graph artifact of dataset {dataset!r} in {root}")
        gart = index.arts[ref]
    nodes = pl.read_parquet(gart.path / "nodes.parquet")
    n = nodes.height
    if isinstance(node_id, bool) or not isinstance(node_id, (int, np.integer)):
        raise ValueError(f"node id must be an integer, got {node_id!r}")
    node_id = int(node_id)
    if not 0 <= node_id < n:
        raise ValueError(f"node id {node_id} out of range: {gart.path} has {n} nodes (ids 0..{n - 1})")
    row = nodes.filter(pl.col("node_id") == node_id).row(0, named=True)
    class_names = pl.read_parquet(gart.path / "classes.parquet").sort("label")["name"].to_list()

    def name_of(c: int) -> str:
        return class_names[c] if 0 <= c < len(class_names) else f"<class {c}>"

    splits_df = pl.read_parquet(gart.path / "splits.parquet")
    seeds = sorted(set(splits_df["seed"].unique().to_list()) | set(gart.manifest.get("seeds") or []))
    mine = dict(splits_df.filter(pl.col("node_id") == node_id).select("seed", "split").iter_rows())
    title, abstract = _split_text(row["text"])

    content_keys: dict[tuple, str | None] = {}

    def content(ref: tuple | None) -> str | None:
        if ref is None:
            return None
        if ref not in content_keys:
            try:
                content_keys[ref] = graph_content_key(index.arts[ref].path)
            except (OSError, lake.CorruptArtifactError):
                content_keys[ref] = None
        return content_keys[ref]

    same = content(gart.id)
    llm = []
    for art in sorted(index.arts.values(), key=lambda a: a.created):
        if art.stage != "llm" or art.manifest is None:
            continue
        if content(index.resolve((art.manifest.get("inputs") or {}).get("graph"))) != same:
            continue
        llm += _llm_answers(art, dataset, node_id, row["text"], name_of, class_names)
    runs = []
    for art in index.arts.values():
        if art.stage not in RUN_STAGES or art.manifest is None or content(_graph_of_run(index, art)) != same:
            continue
        f = art.path / PREDICTIONS_FILE
        if not f.exists():
            continue
        pred_row = pl.scan_parquet(f).filter(pl.col("node_id") == node_id).collect()
        if pred_row.height == 0:
            continue
        p = pred_row.row(0, named=True)
        scores = np.asarray(p["logits"], dtype=np.float64)
        summary = art.manifest.get("summary") or {}
        mode = (art.manifest.get("config") or {}).get("mode") if art.stage == "ensemble" else None
        prob = scores[p["pred"]] if mode == "probs" else _softmax(scores)[p["pred"]]
        runs.append({
            "path": str(art.path), "stage": art.stage, "model": summary.get("model"),
            "feature": summary.get("feature"), "seed": summary.get("seed"), "lm": _lm_of(index, art),
            "split": p["split"] or None, "pred": int(p["pred"]), "pred_name": name_of(int(p["pred"])),
            "prob": float(prob), "correct": int(p["pred"]) == int(p["label"]), "created": _utc(art.created),
        })
    def order(r: dict):
        m, f = r["model"] or "", r["feature"] or ""
        return (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), m,
                FEATURE_ORDER.index(f) if f in FEATURE_ORDER else len(FEATURE_ORDER), f,
                r["seed"] if r["seed"] is not None else -1, r["lm"], r["created"], r["path"])

    return {
        "dataset": dataset, "node_id": node_id, "graph": str(gart.path), "num_nodes": n,
        "source_id": row.get("source_id"), "text": row["text"], "title": title, "abstract": abstract,
        "label": int(row["label"]), "label_name": name_of(int(row["label"])), "class_names": class_names,
        "splits": {int(s): mine.get(s) for s in seeds}, "llm": llm, "runs": sorted(runs, key=order),
    }


def _lm_of(index: _Index, art: _Art) -> str:
    """``finetuned`` when a run (or an ensemble's first member) trained on fine-tuned LM features."""
    inputs = (art.manifest or {}).get("inputs") or {}
    if art.stage == "ensemble":
        members = [index.resolve(v) for v in inputs.values()]
        members = [index.arts[m] for m in members if m is not None]
        return "finetuned" if any(_lm_of(index, m) == "finetuned" for m in members) else "frozen"
    ref = index.resolve(inputs.get("features"))
    if ref is not None and (index.arts[ref].manifest or {}).get("lm") == "finetuned":
        return "finetuned"
    return "frozen"


def _llm_answers(art: _Art, dataset: str, node_id: int, text: str | None, name_of, class_names) -> list[dict]:
    """The rows of one LLM artifact's ``responses.parquet`` for a node, with their prompt."""
    from tag_pipeline.llm.prompts import build_messages

    f = art.path / "responses.parquet"
    if not f.exists():
        return []
    cfg = art.manifest.get("config") or {}
    backend = cfg.get("backend", "?")
    out = []
    for r in pl.scan_parquet(f).filter(pl.col("node_id") == node_id).collect().iter_rows(named=True):
        prompt, note = None, None
        if backend in ("online", "offline", "local"):
            c = cfg.get(backend) or {}
            try:
                prompt = build_messages(dataset, class_names, text or "", c.get("template_version", "v1"), k=c.get("top_k"))
                note = f"rendered with template version {c.get('template_version', 'v1')}, k={c.get('top_k')}"
            except (ValueError, FileNotFoundError) as e:
                note = f"cannot render the prompt: {e}"
        else:
            src = str(r.get("source") or "").removeprefix("replay:")
            note = (f"TAPE's recorded answer ({src}); it was asked with TAPE's own prompt, "
                    "which is not recorded with it, so none is rendered here")
        ranked = [int(c) for c in (r.get("ranked_labels") or [])]
        out.append({
            "path": str(art.path), "backend": backend, "model": r.get("model"), "status": r.get("status"),
            "error": r.get("error"), "raw_text": r.get("raw_text"), "explanation": r.get("explanation"),
            "ranked_ids": ranked, "ranked_labels": [name_of(c) for c in ranked], "source": r.get("source"),
            "prompt_version": r.get("prompt_version"), "finish_reason": r.get("finish_reason"),
            "prompt": prompt, "prompt_note": note,
        })
    return out


# -------------------------------------------------------------------------- diff


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{dotted key: leaf}`` (lists are leaves; ``None`` config -> ``{}``)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj} if prefix else {}


def _effective_config(index: _Index, art: _Art) -> dict[str, Any]:
    """The artifact's own config (dotted keys) plus its lineage's, as ``<stage>.<key>``.

    Where several upstream artifacts of one stage hold different values for a key (TA and P
    features, say), the value is the sorted list of the distinct values.
    """
    own = flatten((art.manifest or {}).get("config"))
    upstream: dict[str, set] = {}
    for e in index.up(art.id):
        up = index.arts[(e["dataset"], e["stage"], e["key"])]
        for k, v in flatten((up.manifest or {}).get("config")).items():
            upstream.setdefault(f"{up.stage}.{k}", set()).add(json.dumps(v, sort_keys=True))
    for k, vals in upstream.items():
        decoded = [json.loads(v) for v in sorted(vals)]
        own.setdefault(k, decoded[0] if len(decoded) == 1 else decoded)
    return own


_SUMMARY_KEYS = ("model", "feature", "seed", "features", "mode", "best_epoch", "epochs_run", "train_acc",
                 "val_acc", "test_acc")
_METRIC_KEYS = ["model", "feature", "lm", "seed", "split"]


def diff_runs(a: Path | str, b: Path | str) -> dict:
    """What differs between two artifacts of the same stage, and how their accuracies compare.

    Meant for training runs, ensembles and reports (any two artifacts of one stage work for
    the config part).

    Args:
        a, b: artifact folders (a training run and an ensemble may be compared).

    Returns:
        dict with ``a``, ``b`` (paths), ``stages`` (``(stage a, stage b)``), ``config``:
        ``{dotted key: (value a, value b)}`` for the keys that differ only (own config keys as
        is, e.g. ``hidden``; keys of upstream artifacts' configs as ``<stage>.<key>``, e.g.
        ``train.hidden`` for reports; :data:`ABSENT` where one side has no such key);
        ``inputs``: ``{input name: (path a, path b)}`` for inputs naming different artifacts;
        ``runs`` (training/ensemble runs): ``{field: (a, b)}`` of the manifest summaries
        (model, feature, seed, ``val_acc``, ``test_acc``...), else ``None``; ``metrics``
        (reports): a pl.DataFrame of the two ``metrics.parquet`` side by side (``model``,
        ``feature``, ``lm``, ``seed``, ``split``, ``accuracy_a``, ``accuracy_b`` float64,
        nullable where one report lacks the row, ``delta`` = b - a), else ``None``.

    Raises:
        FileNotFoundError, ValueError, CorruptArtifactError: as :func:`show_artifact` for
            either path; ValueError also for artifacts of different stages.
    """
    ia, A = _open_artifact(a)
    ib, B = _open_artifact(b)
    if A.stage != B.stage and not {A.stage, B.stage} <= set(RUN_STAGES):
        raise ValueError(f"cannot compare a {A.stage} artifact ({A.path}) with a {B.stage} artifact ({B.path})")
    ca, cb = _effective_config(ia, A), _effective_config(ib, B)
    config = {k: (ca.get(k, ABSENT), cb.get(k, ABSENT)) for k in sorted(set(ca) | set(cb))
              if ca.get(k, ABSENT) != cb.get(k, ABSENT)}
    in_a, in_b = A.manifest.get("inputs") or {}, B.manifest.get("inputs") or {}
    inputs = {}
    for name in sorted(set(in_a) | set(in_b)):
        va, vb = in_a.get(name), in_b.get(name)
        ra, rb = ia.resolve(va), ib.resolve(vb)
        if (ra or va) != (rb or vb):
            inputs[name] = (va if va is not None else ABSENT, vb if vb is not None else ABSENT)
    runs = metrics = None
    if A.stage in RUN_STAGES and B.stage in RUN_STAGES:
        sa, sb = A.manifest.get("summary") or {}, B.manifest.get("summary") or {}
        runs = {k: (sa.get(k), sb.get(k)) for k in _SUMMARY_KEYS if k in sa or k in sb}
    elif A.stage == "report":
        ma, mb = (_read_metrics(x.path) for x in (A, B))
        keys = [k for k in _METRIC_KEYS if k in ma.columns and k in mb.columns]
        metrics = (
            ma.select(*keys, pl.col("accuracy").alias("accuracy_a"))
            .join(mb.select(*keys, pl.col("accuracy").alias("accuracy_b")), on=keys, how="full", coalesce=True)
            .with_columns((pl.col("accuracy_b") - pl.col("accuracy_a")).alias("delta"))
            .sort(keys)
        )
    return {"a": str(A.path), "b": str(B.path), "stages": (A.stage, B.stage), "config": config,
            "inputs": inputs, "runs": runs, "metrics": metrics}


def _read_metrics(path: Path) -> pl.DataFrame:
    f = path / METRICS_FILE
    if not f.exists():
        raise FileNotFoundError(f"{f}: the report has no metrics table")
    return pl.read_parquet(f)


# ---------------------------------------------------------------------------- gc

GC_SCHEMA = {"path": pl.Utf8, "kind": pl.Utf8, "bytes": pl.Int64, "reason": pl.Utf8, "dataset": pl.Utf8,
             "stage": pl.Utf8}
#: Kinds of :func:`gc_plan` rows.
GC_KINDS = ("artifact", "shards", "corrupt", "temp")


def _lock_held(lock_file: Path) -> bool:
    """Whether another process holds the ``flock`` of an existing lake lock file (never creates one)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: cannot tell
        return False
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _newest_mtime(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for p in folder.iterdir():
        try:
            times.append(p.lstat().st_mtime)
        except FileNotFoundError:
            pass
    return max(times)


#: Stages whose artifacts are a user's outputs, never collected: leaderboards (``tag/compare``)
#: and predictions for new nodes (``tag/predict``); what they were built from is kept with them.
KEPT_OUTPUT_STAGES = frozenset({"compare", "predict"})


def gc_plan(root: Path | str, keep_reports: int = 1, *, active_s: float = ACTIVE_SHARDS_S) -> pl.DataFrame:
    """What a garbage collection of the lake would delete, and why. Deletes nothing.

    *Current* reports are the newest ``keep_reports`` report artifacts of each dataset (by
    ``created_unix``; a report reused by a later run keeps its first date). What they reach is
    kept: their lineage closure through the manifests' ``inputs``, any other string of a
    manifest naming an artifact of the lake, and the artifact paths a report lists under
    "Where the files are" in its ``report.md`` (the graph, LLM answers and features even of a
    run that stopped before training). Leaderboards and predictions for new nodes
    (:data:`KEPT_OUTPUT_STAGES`) are always kept, with what they reach (the run a prediction
    came from). Candidates:

    - ``artifact``: a committed artifact no current report reaches (older reports included),
      committed before the dataset's newest report: a later one may belong to a run still in
      progress, whose report comes last. A dataset without any report is left alone: nothing
      says what is current there.
    - ``shards``: a folder ``<stage>/.shards/<name>`` whose artifact ``<stage>/<name>`` is
      committed (left over after the commit), or, in a dataset with a report, never committed
      (the unfinished embedding of a run no current report comes from), unless its lake lock is
      held or it changed in the last ``active_s`` seconds (a writer may be at work).
    - ``corrupt``: a copy moved aside as ``<key>.corrupt-*`` after failing its manifest check.
    - ``temp``: a ``.tmp-*`` file or folder whose writer is gone (:func:`lake.is_stale_temp`),
      at the root, dataset, stage and shard levels.

    Other dot-folders are never listed.

    Args:
        root: the lake root.
        keep_reports: reports kept per dataset, newest first (>= 1).
        active_s: see ``shards`` above (default :data:`ACTIVE_SHARDS_S`, one hour).

    Returns:
        pl.DataFrame: ``path`` utf8, ``kind`` utf8 (:data:`GC_KINDS`), ``bytes`` int64 (on
        disk), ``reason`` utf8, ``dataset`` utf8, ``stage`` utf8 (nullable at the root
        level); sorted by dataset, stage, kind, path.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``keep_reports < 1``.
    """
    from tag_pipeline.features.shards import SHARDS_DIR

    if isinstance(keep_reports, bool) or not isinstance(keep_reports, int) or keep_reports < 1:
        raise ValueError(f"keep_reports must be an integer >= 1, got {keep_reports!r}")
    index = _Index(root)
    root = index.root
    rows: list[dict] = []

    def add(path: Path, kind: str, reason: str, dataset: str | None, stage: str | None) -> None:
        rows.append({"path": str(path), "kind": kind, "bytes": _tree_bytes(path), "reason": reason,
                     "dataset": dataset, "stage": stage})

    def temps(folder: Path, dataset: str | None, stage: str | None) -> None:
        try:
            entries = sorted(folder.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return
        for p in entries:
            if p.name.startswith(lake.TEMP_PREFIX) and lake.is_stale_temp(p):
                add(p, "temp", "temporary of a write whose process is gone", dataset, stage)

    temps(root, None, None)
    now = time.time()
    for ds in _datasets(root):
        temps(root / ds, ds, None)
        arts = [a for a in index.arts.values() if a.dataset == ds]
        reports = sorted((a for a in arts if a.stage == "report"), key=lambda a: a.created, reverse=True)
        current, older = reports[:keep_reports], reports[keep_reports:]
        reached: set[tuple] = set()
        for r in current + [a for a in arts if a.stage in KEPT_OUTPUT_STAGES]:
            reached |= index.closure(r.id)
        reached_by_older: dict[tuple, str] = {}
        for r in older:
            for ref in index.closure(r.id):
                reached_by_older.setdefault(ref, r.key)
        if reports:
            newest = ", ".join(r.key for r in current)
            for art in sorted(arts, key=lambda a: (_stage_rank(a.stage), a.key)):
                if art.id in reached or (art.stage != "report" and art.created > reports[0].created):
                    continue  # reached, or maybe a run in progress whose report is yet to come
                if art.stage == "report":
                    why = f"report not among the newest {keep_reports} of {ds} (current: {newest})"
                elif art.id in reached_by_older:
                    why = f"only older reports reach it (e.g. report {reached_by_older[art.id]})"
                else:
                    why = "no report reaches it"
                if art.manifest is None:
                    why = f"unreadable manifest; {why}"
                add(art.path, "artifact", why, ds, art.stage)
        for stage_dir in _visible_dirs(root / ds):
            stage = stage_dir.name
            temps(stage_dir, ds, stage)
            for p in sorted(stage_dir.iterdir()):
                if p.is_dir() and not p.name.startswith(".") and CORRUPT_MARK in p.name:
                    stamp = p.name.split(CORRUPT_MARK, 1)[1].split("-", 1)[0]
                    when = _utc(float(stamp)).strftime("%Y-%m-%d %H:%M UTC") if stamp.isdigit() else "?"
                    add(p, "corrupt", f"corrupt copy of {p.name.split(CORRUPT_MARK)[0]} moved aside ({when})", ds, stage)
            shards = stage_dir / SHARDS_DIR
            temps(shards, ds, stage)
            for folder in _visible_dirs(shards):
                if (stage_dir / folder.name / lake.MANIFEST).is_file():
                    add(folder, "shards", f"left over: artifact {folder.name} is committed", ds, stage)
                elif reports and _unfinished_and_idle(folder, stage_dir, now, active_s):
                    add(folder, "shards", f"unfinished: artifact {folder.name} was never committed and no "
                        "current report needs it", ds, stage)
                else:
                    temps(folder, ds, stage)
    rows.sort(key=lambda r: (r["dataset"] or "", _stage_rank(r["stage"] or ""), GC_KINDS.index(r["kind"]), r["path"]))
    return pl.DataFrame(rows, schema=GC_SCHEMA)


def _unfinished_and_idle(folder: Path, stage_dir: Path, now: float, active_s: float) -> bool:
    """Whether no writer seems to work on a shard folder: its artifact's lake lock is free, it
    has not changed for ``active_s`` seconds, and it holds no live writer's temporary."""
    lock = lake.lock_path(stage_dir / folder.name)
    if _lock_held(lock) or now - _newest_mtime(folder) < active_s:
        return False
    return not any(p.name.startswith(lake.TEMP_PREFIX) and not lake.is_stale_temp(p) for p in folder.iterdir())


def apply_gc(plan: pl.DataFrame) -> int:
    """Delete what a :func:`gc_plan` lists.

    Each folder is first renamed to a ``.tmp-*`` sibling (with this process's owner tag), then
    removed: a deletion cut short leaves a stale temporary, never a half artifact under its
    key. A ``temp`` row is checked again (its writer must still be gone); a path already gone
    counts 0 bytes.

    Args:
        plan: :func:`gc_plan`'s frame (at least ``path``, ``kind``).

    Returns:
        int: bytes freed (sizes on disk just before deletion).

    Raises:
        ValueError: ``plan`` lacks a ``path`` or ``kind`` column, or has an unknown kind.
        OSError: a deletion failed (permission denied...); the message names the path.
    """
    missing = [c for c in ("path", "kind") if c not in plan.columns]
    if missing:
        raise ValueError(f"not a gc plan: missing columns {missing} (have {plan.columns})")
    freed = 0
    for row in plan.iter_rows(named=True):
        path, kind = Path(row["path"]), row["kind"]
        if kind not in GC_KINDS:
            raise ValueError(f"gc plan row {row['path']}: unknown kind {kind!r} (expected one of {GC_KINDS})")
        if not os.path.lexists(path):
            continue
        if kind == "temp" and not lake.is_stale_temp(path):
            continue
        size = _tree_bytes(path)
        try:
            if path.is_dir() and not path.is_symlink():
                doomed = path if kind == "temp" else lake.temp_path(path)
                if doomed != path:
                    os.rename(path, doomed)
                shutil.rmtree(doomed)
                if kind == "shards":
                    try:
                        path.parent.rmdir()  # the .shards folder, once empty
                    except OSError:
                        pass
            else:
                path.unlink()
        except OSError as e:
            raise lake.annotate_os_error(e, path, "not deleted") from e
        freed += size
    return freed
