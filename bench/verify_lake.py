"""Time to verify every committed artifact of a lake, with the sha256 digest memo off and on.

A Prefect cache hit is only trusted while the lake artifact it names still verifies
(``tasks.LakeArtifactsIntact`` calls ``lake.read_artifact(path, verify=True)``), and the
stages' lineage keys hash raw inputs too. Without a memo, a warm run (every stage a cache hit)
re-hashed every byte of every artifact it reused, on every run, only to learn that nothing had
changed. :func:`tag_pipeline.lake.file_sha256` now remembers digests by file identity (device,
inode, size, mtime, ctime) in a ``diskcache`` under ``$TAG_HASH_CACHE``. This bench measures
what that buys on the artifacts of one lake (not on the raw inputs the lineage keys hash), in
one process:

- ``memo off``: ``TAG_HASH_CACHE=off``; every file is read and hashed;
- ``memo cold``: a fresh, empty memo folder; every file is hashed and its digest remembered
  (the first run after a build, or after the memo is cleared);
- ``memo warm``: the same memo again; a ``stat`` and a lookup per file, nothing is read.

Every artifact is a ``<lake>/<dataset>/<stage>/<key>/`` folder with a ``manifest.json``;
hidden folders (temporaries) and ``*.corrupt-*`` copies are left out. Before the timed passes
one untimed pass with the memo off reads every file once, so that all timed passes find the
files in the page cache (on a lake larger than memory, ``memo off`` is slower still).
Hashing runs in this process, one file at a time, on one thread.

    python bench/verify_lake.py [--lake data/lake] [--repeat 3]

Prints the CPU, the lake, a table of median wall and CPU seconds per mode with its ratio to
``memo off``, and as its last line one JSON object with the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from tag_pipeline import lake  # noqa: E402
from tag_pipeline.hardware import available_cores  # noqa: E402

#: Instruction-set flags worth naming in a benchmark's header (sha256 itself uses SHA-NI when present).
_FLAG_PATTERN = re.compile(r"^(avx2|avx512\w*|amx\w*|sha_ni)$")


@dataclass(frozen=True)
class LakeContents:
    """The committed artifacts of a lake and what verifying them reads."""

    artifacts: list[Path]
    files: int
    bytes: int
    skipped: list[Path]  # folders with a manifest that are not committed artifacts (corrupt copies)


@dataclass(frozen=True)
class Pass:
    """One verification pass: wall and process CPU seconds, artifacts that failed to verify."""

    wall_s: float
    cpu_s: float
    failed: int


def cpu_line() -> str:
    """``<model>; flags: <avx2, avx512*, amx*, sha_ni present>; <n> CPUs available`` (Linux, else platform)."""
    model, flags = "", []
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = sorted(f for f in value.split() if _FLAG_PATTERN.match(f))
            if model and flags:
                break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"{model}; flags: {', '.join(flags) or 'none of avx2/avx512*/amx*'}; {available_cores()} CPUs available"


def find_artifacts(root: Path) -> LakeContents:
    """Every ``<root>/<dataset>/<stage>/<key>`` holding a ``manifest.json``, with the files it lists."""
    artifacts, skipped, files, size = [], [], 0, 0
    for manifest in sorted(root.glob(f"*/*/*/{lake.MANIFEST}")):
        folder = manifest.parent
        if any(part.startswith(".") for part in folder.relative_to(root).parts):
            continue
        if ".corrupt-" in folder.name:
            skipped.append(folder)
            continue
        listed = json.loads(manifest.read_text()).get("files", {})
        artifacts.append(folder)
        files += len(listed)
        size += sum(int(meta["bytes"]) for meta in listed.values())
    return LakeContents(artifacts, files, size, skipped)


def use_memo(folder: str) -> None:
    """Point :func:`tag_pipeline.lake.file_sha256` at ``folder`` (``"off"``: no memo) from the next call on."""
    if lake._hash_memo is not None and lake._hash_memo[1] is not None:
        lake._hash_memo[1].close()
    os.environ[lake.HASH_CACHE_ENV] = folder
    lake._hash_memo = None


def verify_all(artifacts: list[Path]) -> Pass:
    """``lake.read_artifact(path, verify=True)`` over ``artifacts``, timed."""
    failed = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for path in artifacts:
        try:
            lake.read_artifact(path, verify=True)
        except (FileNotFoundError, lake.CorruptArtifactError):
            failed += 1
    return Pass(time.perf_counter() - wall, time.process_time() - cpu, failed)


def measure(artifacts: list[Path], repeat: int) -> dict[str, list[Pass]]:
    """``repeat`` passes per mode: memo off; memo cold (a fresh folder each time) then warm."""
    passes: dict[str, list[Pass]] = {"memo off": [], "memo cold": [], "memo warm": []}
    for _ in range(repeat):
        use_memo("off")
        passes["memo off"].append(verify_all(artifacts))
        folder = tempfile.mkdtemp(prefix="verify-lake-memo-")
        try:
            use_memo(folder)
            passes["memo cold"].append(verify_all(artifacts))
            passes["memo warm"].append(verify_all(artifacts))
        finally:
            use_memo("off")
            shutil.rmtree(folder, ignore_errors=True)
    return passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, default=Path("data/lake"), help="lake root (default: data/lake)")
    parser.add_argument("--repeat", type=int, default=3, help="passes per mode; medians are shown (default: 3)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    root = args.lake.resolve()
    contents = find_artifacts(root) if root.is_dir() else LakeContents([], 0, 0, [])
    if not contents.artifacts:
        sys.exit(f"no committed artifacts under {root}: make a lake first, e.g. "
                 f"`tag --config configs/tiny.yaml` (writes data/lake, about a minute), or pass --lake")

    load_before = os.getloadavg()[0]
    use_memo("off")
    primed = verify_all(contents.artifacts)  # untimed in the table: fills the page cache
    passes = measure(contents.artifacts, args.repeat)
    load_after = os.getloadavg()[0]
    failed = max(p.failed for ps in passes.values() for p in ps)

    stages: dict[str, int] = {}
    for path in contents.artifacts:
        stages[path.parent.name] = stages.get(path.parent.name, 0) + 1
    med = {mode: (statistics.median(p.wall_s for p in ps), statistics.median(p.cpu_s for p in ps))
           for mode, ps in passes.items()}
    off_wall = med["memo off"][0]
    mib = contents.bytes / 2**20

    print(f"CPU: {cpu_line()}; hashing on 1 thread (this process)")
    per_stage = ", ".join(f"{stage} {n}" for stage, n in sorted(stages.items()))
    print(f"lake {root}: {len(contents.artifacts)} artifacts ({per_stage}), "
          f"{contents.files} files, {contents.bytes:,} bytes ({mib:.1f} MiB)"
          + (f"; {len(contents.skipped)} corrupt copies left out" if contents.skipped else ""))
    print(f"{args.repeat} repeats, medians; page cache primed by one untimed pass ({primed.wall_s:.2f} s); "
          f"load average {load_before:.1f} -> {load_after:.1f}"
          + (f"; {failed} artifacts FAILED to verify" if failed else ""))
    print(f"{'mode':10s} {'wall s':>9s} {'CPU s':>9s} {'MiB/s':>9s} {'us/file':>9s} {'off / mode':>11s}")
    for mode, (wall, cpu) in med.items():
        print(f"{mode:10s} {wall:9.4f} {cpu:9.4f} {mib / wall:9.1f} {1e6 * wall / contents.files:9.0f} "
              f"{off_wall / wall:10.2f}x")
    print(json.dumps({
        "lake": str(root),
        "artifacts": len(contents.artifacts),
        "files": contents.files,
        "bytes": contents.bytes,
        "repeat": args.repeat,
        "off_s": round(med["memo off"][0], 4),
        "cold_s": round(med["memo cold"][0], 4),
        "warm_s": round(med["memo warm"][0], 4),
        "off_cpu_s": round(med["memo off"][1], 4),
        "warm_cpu_s": round(med["memo warm"][1], 4),
        "ratio_off_over_warm": round(off_wall / med["memo warm"][0], 2),
        "ratio_off_over_cold": round(off_wall / med["memo cold"][0], 3),
        "failed": failed,
        "cpu": cpu_line(),
        "threads": 1,
        "load_avg": [round(load_before, 2), round(load_after, 2)],
    }))


if __name__ == "__main__":
    main()
