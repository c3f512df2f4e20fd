"""Import structure of the library and the CLI, read with ``ast`` (imports inside functions too).

1. The library stays a library: ``tag_pipeline`` never imports the orchestration or the CLI.
   ``flows`` and ``tasks`` wrap the library in Prefect and ``tag_cli`` is the command line; they
   import ``tag_pipeline``, never the other way round (CONVENTIONS.md, "Library first"). The scan
   also sees ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.
2. No import cycle among the modules of ``tag_pipeline``, nor among those of ``tag_cli``: a
   cycle is what a function-local import hides until someone moves it to the top of the file
   (see :func:`import_graph` for what counts as an edge).
3. Configs import nothing (CONVENTIONS.md, "Configs import nothing"): importing
   ``tag_pipeline.config`` or ``tag_pipeline.llm.config`` runs no module of ``tag_pipeline``
   but other config modules (and the packages' ``__init__`` files on the way to them).
"""

from __future__ import annotations

import ast
import itertools
from collections import deque
from collections.abc import Iterator
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


# ---------------------------------------------------------------------------------------
# 2. Import cycles

CLI = PROJECT_ROOT / "tag_cli"


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package at ``root`` (a package is its ``__init__``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` at any depth but the bodies of ``if TYPE_CHECKING:`` (never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _ancestors(name: str) -> list[str]:
    """``'a.b.c'`` -> ``['a', 'a.b']``."""
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def _within(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest module of the package that ``name`` names or lies in (``None``: not ours)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path) -> dict[str, dict[str, str]]:
    """The import graph of the package at ``root``: ``{module: {imported module: where}}``,
    ``where`` being ``"path:line"`` (with a note for an edge that no statement spells).

    Edges, for every import statement of a module ``M`` at any depth (inside functions too;
    not under ``if TYPE_CHECKING:``, which never runs), and for ``importlib.import_module`` /
    ``__import__`` with a literal absolute name; relative imports are resolved against ``M``'s
    package; only modules of this package count:

    - ``import P.a.b`` and ``from P.a.b import name``: ``M -> P.a.b`` (the module that runs and
      whose names are read).
    - ``from P.a import b`` where ``b`` is a submodule (a file or package): ``M -> P.a.b``; and
      ``M -> P.a`` too when another imported name is not a submodule (it is read from
      ``P.a``'s ``__init__``).
    - Importing anything under a package runs that package's ``__init__`` first: ``M -> P.a``
      for each package on the way down (``P.a`` for ``P.a.b``, and ``P.a`` itself for
      ``from P.a import b``) unless that package contains ``M``, because a module's own
      packages are always initialised before the module runs and it reads no name of theirs
      unless a statement says so (then it is an edge by the first two rules). So
      ``tag_pipeline/config.py`` importing ``tag_pipeline.methods.base`` runs
      ``methods/__init__.py`` (an edge), while ``methods/gallon.py`` importing the same module
      adds no edge to ``methods/__init__.py``.
    - A module importing itself or a package that contains it by name only (``import P``):
      no edge.
    """
    modules = package_modules(root)
    return {name: _module_edges(name, path, modules, root) for name, path in modules.items()}


def _module_edges(name: str, path: Path, modules: dict[str, Path], root: Path) -> dict[str, str]:
    """The edges of one module of :func:`import_graph`: ``{imported module: "path:line"}``."""
    where = path.relative_to(root.parent).as_posix()
    own = set(_ancestors(name)) | {name}  # the module and the packages that contain it
    edges: dict[str, str] = {}

    def edge(target: str, line: int, note: str = "") -> None:
        if target != name and target not in edges:
            edges[target] = f"{where}:{line}" + (f" ({note})" if note else "")

    def parents(target: str, line: int) -> None:
        for package in _ancestors(target):
            if package not in own and package in modules:
                edge(package, line, f"runs the package {package} of {target}")

    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    # in the order of the file, so that each edge names its first import
    for node in sorted(_runtime_nodes(tree), key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            value = node.args[0].value
            if called in ("import_module", "__import__") and isinstance(value, str) and not value.startswith("."):
                targets = [value]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = ".".join(p for p in (package, node.module) if p)
            else:
                base = node.module or ""
            module = _within(base, modules)
            if module is None:
                continue
            reads_names = False
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if alias.name != "*" and sub in modules:
                    edge(sub, node.lineno)
                    parents(sub, node.lineno)
                else:
                    reads_names = True
            if reads_names or module not in own:
                edge(module, node.lineno)
            parents(module, node.lineno)
            continue
        for target in targets:
            module = _within(target, modules)
            if module is None:
                continue
            if module not in own:
                edge(module, node.lineno)
            parents(module, node.lineno)
    return edges


def strongly_connected(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` with more than one module, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _shortest_path(graph: dict[str, dict[str, str]], start: str, goal: str, allowed: set[str]) -> list[str]:
    """Modules from ``start`` to ``goal`` (both included) by the fewest edges within ``allowed``."""
    before: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        if v == goal:
            break
        for w in sorted(graph[v]):
            if w in allowed and w not in before:
                before[w] = v
                queue.append(w)
    path = [goal]
    while before[path[-1]] is not None:
        path.append(before[path[-1]])
    return path[::-1]


def component_cycles(graph: dict[str, dict[str, str]], component: list[str]) -> list[list[str]]:
    """Cycles within a strongly connected ``component`` as chains ``[a, b, ..., a]``: the
    shortest cycle through each of its edges not yet on an earlier chain, so that together they
    show every edge that keeps these modules in a circle."""
    members = set(component)
    covered: set[tuple[str, str]] = set()
    chains = []
    for u in component:
        for v in sorted(graph[u]):
            if v in members and (u, v) not in covered:
                chain = [u, *_shortest_path(graph, v, u, members)]
                covered.update(itertools.pairwise(chain))
                chains.append(chain)
    return chains


def describe_cycles(graph: dict[str, dict[str, str]]) -> str:
    """Each circle (strongly connected component), then its cycles as ``a -> b -> a``, each
    followed by its edges with the import that makes each one."""
    lines = []
    for component in strongly_connected(graph):
        lines.append(f"{len(component)} modules in a circle: {', '.join(component)}")
        for chain in component_cycles(graph, component):
            lines.append("  " + " -> ".join(chain))
            lines += [f"      {u} -> {v}: {graph[u][v]}" for u, v in itertools.pairwise(chain)]
    return "\n".join(lines)


@pytest.mark.parametrize("root", [LIBRARY, CLI], ids=["tag_pipeline", "tag_cli"])
def test_no_import_cycles(root):
    graph = import_graph(root)
    assert len(graph) > 1
    cycles = strongly_connected(graph)
    assert not cycles, f"import cycles in {root.name} (break each chain at one edge):\n" + describe_cycles(graph)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path / "pkg"


def test_the_graph_resolves_relative_submodule_and_package_imports(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/config.py": "from pkg.sub.base import X\n",  # runs sub/__init__ on the way
        "pkg/top.py": "def f():\n    from .sub import leaf, NAME\n",  # a submodule and a name
        "pkg/lazy.py": "import importlib\nimportlib.import_module('pkg.sub.leaf')\n",
        "pkg/guarded.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import top\n",
        "pkg/sub/__init__.py": "from . import leaf\nNAME = 1\n",
        "pkg/sub/base.py": "",
        "pkg/sub/leaf.py": "from ..config import Y\nfrom pkg.sub import base\nimport pkg\n",
    })
    graph = import_graph(root)
    assert set(graph["pkg.config"]) == {"pkg.sub.base", "pkg.sub"}
    assert "runs the package pkg.sub" in graph["pkg.config"]["pkg.sub"]
    assert set(graph["pkg.top"]) == {"pkg.sub.leaf", "pkg.sub"}
    assert graph["pkg.top"]["pkg.sub.leaf"] == "pkg/top.py:2"
    assert set(graph["pkg.lazy"]) == {"pkg.sub", "pkg.sub.leaf"}
    assert graph["pkg.guarded"] == {}
    assert set(graph["pkg.sub"]) == {"pkg.sub.leaf"}
    # leaf's own package (pkg.sub) and the root are initialised before it: no edge to them
    assert set(graph["pkg.sub.leaf"]) == {"pkg.config", "pkg.sub.base"}
    assert strongly_connected(graph) == [["pkg.config", "pkg.sub", "pkg.sub.leaf"]]
    assert component_cycles(graph, strongly_connected(graph)[0]) == [
        ["pkg.config", "pkg.sub", "pkg.sub.leaf", "pkg.config"],
    ]
    text = describe_cycles(graph)
    assert "pkg.sub.leaf -> pkg.config: pkg/sub/leaf.py:1" in text


def test_siblings_under_a_package_that_imports_them_are_no_cycle(tmp_path):
    """``methods/__init__`` imports ``methods/a``, which imports ``methods/base``: no cycle (the
    package is initialised before ``a`` runs, and ``a`` reads nothing from it)."""
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/m/__init__.py": "from pkg.m.a import A\nfrom pkg.m.base import B\n",
        "pkg/m/a.py": "from pkg.m.base import B\nfrom . import base\n",
        "pkg/m/base.py": "",
    })
    assert strongly_connected(import_graph(root)) == []
    (root / "m" / "a.py").write_text("from pkg.m import B\n")  # a name of the package's __init__
    assert strongly_connected(import_graph(root)) == [["pkg.m", "pkg.m.a"]]


# ---------------------------------------------------------------------------------------
# 3. Configs are leaves

LEAF_CONFIGS = ("tag_pipeline.config", "tag_pipeline.llm.config")


def is_config_module(name: str) -> bool:
    """A config module: ``config``, ``configs`` or ``*_config`` is a part of its dotted name
    (``tag_pipeline.config``, ``tag_pipeline.llm.config``, ``tag_pipeline.methods.gallon.config``,
    ``tag_pipeline.finetune_config``)."""
    return any(p in ("config", "configs") or p.endswith("_config") for p in name.split(".")[1:])


def non_config_imports(graph: dict[str, dict[str, str]], start: str) -> list[str]:
    """Every module that importing ``start`` runs that is neither a config module nor a package
    ``__init__`` that only leads to config modules, each as the chain of imports that runs it."""
    packages = {m for m in graph if any(other.startswith(m + ".") for other in graph)}
    before: dict[str, str | None] = {start: None}
    queue = deque([start])
    found = []
    while queue:
        v = queue.popleft()
        if v != start and not is_config_module(v) and v not in packages:
            chain = [v]
            while before[chain[-1]] is not None:
                chain.append(before[chain[-1]])
            found.append(" -> ".join(f"{m} ({graph[u][m]})" if u else m for u, m in zip([None, *chain[::-1]], chain[::-1])))
            continue  # its own imports are its problem, not the config's
        for w in sorted(graph[v]):
            if w not in before:
                before[w] = v
                queue.append(w)
    return found


@pytest.mark.parametrize("config", LEAF_CONFIGS)
def test_configs_import_only_configs(config):
    graph = import_graph(LIBRARY)
    assert config in graph
    found = non_config_imports(graph, config)
    assert not found, f"importing {config} runs modules that are not configs:\n" + "\n".join(found)


def test_the_config_check_follows_package_inits(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/config.py": "from pkg.m.a_config import A\nfrom pkg.llm.config import L\n",
        "pkg/m/__init__.py": "from pkg.m.a import run\n",  # the package init runs the method
        "pkg/m/a.py": "",
        "pkg/m/a_config.py": "",
        "pkg/llm/__init__.py": "",
        "pkg/llm/config.py": "",
    })
    assert non_config_imports(import_graph(root), "pkg.config") == [
        "pkg.config -> pkg.m (pkg/config.py:1 (runs the package pkg.m of pkg.m.a_config)) -> pkg.m.a (pkg/m/__init__.py:1)"
    ]
    (root / "m" / "__init__.py").write_text("")
    assert non_config_imports(import_graph(root), "pkg.config") == []


def test_the_library_renders_no_text_tables():
    """``tag lake``'s tables are the CLI's (``tag_cli.lakeview_render``); the library returns data."""
    violations = boundary_violations(LIBRARY, forbidden=("rich",))
    assert not violations, "tag_pipeline must not import rich:\n" + "\n".join(violations)
