"""A stage's version cannot be forgotten: its code changes, its version (or a recorded choice) does too.

Every lake stage is a :class:`tag_pipeline.lake.Stage` declared at module level, naming the
modules whose code computes its artifact (``code``). :meth:`Stage.code_digest` digests that
code with docstrings, comments and layout removed. ``tests/stage_versions.json`` records, per
stage, the version and the digest. This test fails when a stage's code digest moved while its
version did not: the change may alter results that old artifacts hold under the same key.

What to do when it fails:

- the change alters what the stage computes: bump the stage's version (its keys move, old
  artifacts are not reused), then re-record;
- the change cannot alter any artifact (a refactor, a new error message): re-record without a
  bump and say why in the commit message.

Re-record with ``.venv/bin/python tests/test_stage_versions.py --record``. The digest is of
Python's syntax tree, whose dump can differ between Python versions, so the record names the
Python it was made with and another Python skips the comparison (CI runs the recorded one).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import pytest

import tag_pipeline
from tag_pipeline.lake import Stage

RECORD = Path(__file__).with_name("stage_versions.json")
#: Stages the library must declare (one per artifact kind in the lake).
EXPECTED = {
    "graph", "llm", "features", "finetune", "train", "ensemble", "gallon", "glem", "leading", "dre", "predict",
    "report", "compare",
}


def library_stages() -> dict[str, Stage]:
    """Every ``Stage`` bound at module level in ``tag_pipeline`` (all modules imported)."""
    found: dict[str, Stage] = {}
    for info in pkgutil.walk_packages(tag_pipeline.__path__, prefix="tag_pipeline."):
        try:
            module = importlib.import_module(info.name)
        except ImportError as e:  # an optional extra (vllm) the module imports lazily is fine
            if "vllm" in str(e):
                continue
            raise
        for value in vars(module).values():
            if isinstance(value, Stage):
                known = found.setdefault(value.name, value)
                assert known == value, f"stage {value.name!r} declared twice, differently: {known} vs {value}"
    return found


def _python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def record() -> dict:
    return {
        "python": _python(),
        "stages": {name: {"version": s.version, "code": sorted(s.code), "digest": s.code_digest()}
                   for name, s in sorted(library_stages().items())},
    }


def test_every_stage_is_declared_with_its_code():
    stages = library_stages()
    assert EXPECTED <= set(stages), f"stages without a lake.Stage: {sorted(EXPECTED - set(stages))}"
    for name, stage in stages.items():
        assert stage.code, f"stage {name!r} names no code modules"
        stage.code_digest()  # every module exists


def test_no_stage_changed_its_code_without_a_version_decision():
    recorded = json.loads(RECORD.read_text())
    if recorded["python"] != _python():
        pytest.skip(f"digests recorded with Python {recorded['python']}, this is {_python()}")
    now = record()["stages"]
    assert set(now) == set(recorded["stages"]), (
        f"stages added or removed ({sorted(set(now) ^ set(recorded['stages']))}): re-record {RECORD.name}"
    )
    stale = [n for n in now if now[n]["digest"] != recorded["stages"][n]["digest"]
             and now[n]["version"] == recorded["stages"][n]["version"]]
    assert not stale, (
        f"the code of stage(s) {stale} changed while their version did not: bump the version if results can "
        f"change (old artifacts would be served under the same key), or re-record if they cannot "
        f"(python tests/test_stage_versions.py --record), and say which in the commit message"
    )
    unrecorded = [n for n in now if (now[n]["version"], now[n]["code"]) != (
        recorded["stages"][n]["version"], recorded["stages"][n]["code"])]
    assert not unrecorded, f"stage(s) {unrecorded} have a new version or code list: re-record {RECORD.name}"


def test_the_digest_ignores_docs_and_moves_with_code(tmp_path, monkeypatch):
    pkg = tmp_path / "toy_stage_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "maths.py").write_text('"""Doc."""\n\ndef f(x):\n    """Adds one."""\n    return x + 1  # one\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    stage = Stage("toy", 1, code=("toy_stage_pkg.maths",))
    before = stage.code_digest()
    (pkg / "maths.py").write_text('"""Other doc."""\n\n\ndef f(x):\n    """Adds 1 to x."""\n    # a comment\n    return x + 1\n')
    assert stage.code_digest() == before
    (pkg / "maths.py").write_text('def f(x):\n    return x + 2\n')
    assert stage.code_digest() != before
    assert Stage("toy", 1, code=("toy_stage_pkg",)).code_digest() != before  # a package: all its modules


if __name__ == "__main__":
    if sys.argv[1:] == ["--record"]:
        RECORD.write_text(json.dumps(record(), indent=2) + "\n")
        print(f"recorded {RECORD}")
    else:
        print(json.dumps(record(), indent=2))
