"""The library stays a library: ``tag_pipeline`` never imports the orchestration or the CLI.

``flows`` and ``tasks`` wrap the library in Prefect and ``tag_cli`` is the command line; they
import ``tag_pipeline``, never the other way round (CONVENTIONS.md, "Library first"). The scan
reads every ``tag_pipeline/**/*.py`` with ``ast``, so it sees imports inside functions too, and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LIBRARY = PROJECT_ROOT / "tag_pipeline"
FORBIDDEN = ("flows", "tasks", "tag_cli")


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, module)`` for every absolute import in ``tree``, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def boundary_violations(root: Path, forbidden: tuple[str, ...] = FORBIDDEN) -> list[str]:
    """``"path:line imports module"`` for each import under ``root`` of a ``forbidden`` package."""
    violations = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, module in _imported_modules(tree):
            if module.split(".")[0] in forbidden:
                violations.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    return violations


def test_library_never_imports_flows_tasks_or_the_cli():
    assert LIBRARY.is_dir()
    violations = boundary_violations(LIBRARY)
    assert not violations, "tag_pipeline must not import " + "/".join(FORBIDDEN) + ":\n" + "\n".join(violations)


@pytest.mark.parametrize(
    "source, line",
    [
        ("from flows.tag import tag\n", 1),
        ("import os\n\ndef f():\n    import tasks.data as d\n", 4),
        ("def g():\n    from tag_cli.main import main\n", 2),
        ("import importlib\nimportlib.import_module('flows.tag')\n", 2),
    ],
)
def test_the_scan_finds_imports_anywhere_in_a_module(tmp_path, source, line):
    package = tmp_path / "tag_pipeline"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "mod.py").write_text(source)
    (package / "ok.py").write_text("from tag_pipeline import lake\nimport flowsy\nfrom . import tasks\n")
    violations = boundary_violations(package)
    assert len(violations) == 1 and violations[0].startswith(f"tag_pipeline/sub/mod.py:{line} imports ")
