"""labkit's layers import downward only (docs: /work/shared/guides/architecture.md, issue 21).

The import graph is drawn from the source with ``ast`` (no module is imported): every
``import`` / ``from ... import`` of a labkit module, at module level or inside a function,
with ``from pkg import name`` resolved to the submodule ``pkg.name`` when there is one and to
the package's ``__init__`` (its re-exports) otherwise. A function-level import is an edge too:
hiding an import in a function does not change which floor a piece stands on. For cycles, an
import of ``a.b.c`` from outside package ``a.b`` also runs ``a/b/__init__.py``, so it counts as
an edge to ``a.b`` as well: that is the cycle a lazy ``__getattr__`` in an ``__init__`` hides.

Run as a script to print the counts: ``python tests/test_layers.py [path/to/labkit]``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "labkit"

# Floor of each package or module; a module takes the floor of its longest listed prefix.
LAYERS: dict[str, int] = {
    "labkit": 0,  # the package root: __version__ only
    "labkit.errors": 0,
    "labkit.io": 0,
    "labkit.config": 0,  # typed keys, allowed values, validation: everyone may read them
    "labkit.models": 1,
    "labkit.data": 1,
    "labkit.tracking": 1,  # receives plain dicts of numbers; writes run files and their figures
    "labkit.engine": 2,
    "labkit.analysis": 3,  # per-run measurements that plug into the engine as callbacks
    "labkit.run": 3,  # the run builder
    "labkit.training": 3,  # train.py's command, through the stage runner
    "labkit.runner": 3,  # the one stage runner
    "labkit.run_folder": 3,  # run folders, statuses and checkpoint weights (read by the report)
    "labkit.provenance": 1,  # where a run came from: a record beside tracking's files
    "labkit.distill": 4,  # the commands
    "labkit.explain": 4,
    "labkit.evaluation": 4,
    "labkit.cli": 4,
    "labkit.report": 5,  # reads many runs' folders: the top
}

# (importer, imported) pairs that go up a floor on purpose; at most 3, each with its reason.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name a (possibly relative) ``from ... import`` reads from."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the labkit modules it imports anywhere in its source."""
    files = module_files(package)
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, is_package, node)
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source
                           for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def with_parent_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` plus an edge to each package whose ``__init__`` an import runs first: the
    target's enclosing packages, except those that enclose the importer too (already running)."""
    full = {}
    for module, targets in graph.items():
        own = {".".join(module.split(".")[:end]) for end in range(1, module.count(".") + 2)}
        full[module] = set(targets)
        for target in targets:
            parts = target.split(".")
            full[module].update(p for p in (".".join(parts[:end]) for end in range(1, len(parts)))
                                if p in graph and p not in own)
    return full


def floor(module: str) -> int:
    """The floor of ``module``: that of its longest prefix in :data:`LAYERS`."""
    parts = module.split(".")
    if module == "labkit":
        return LAYERS["labkit"]
    for end in range(len(parts), 1, -1):  # "labkit" alone is the root, not a catch-all
        if ".".join(parts[:end]) in LAYERS:
            return LAYERS[".".join(parts[:end])]
    raise KeyError(f"{module} has no floor in LAYERS: add its package")


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every (importer, imported) pair where the imported module stands on a higher floor."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if floor(b) > floor(a))


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def module_getattrs(package: Path = PACKAGE) -> list[str]:
    """Modules that define a module-level ``__getattr__`` (lazy attributes hide import cycles)."""
    return sorted(name for name, path in module_files(package).items()
                  if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__"
                         for n in ast.parse(path.read_text()).body))


def test_every_module_has_a_floor():
    for module in module_files():
        floor(module)


def test_no_import_cycle():
    assert import_cycles(with_parent_packages(import_graph())) == []


def test_imports_go_downward_except_the_allowed_few():
    assert len(ALLOWED_UPWARD) <= 3
    assert set(upward_imports(import_graph())) <= set(ALLOWED_UPWARD)


def test_no_module_level_getattr():
    assert module_getattrs() == []


def test_the_graph_sees_function_level_relative_and_package_imports(tmp_path):
    pkg = tmp_path / "labkit"
    (pkg / "report").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from labkit.report import mod\n")
    (pkg / "report" / "__init__.py").write_text("from .mod import X\n")
    (pkg / "report" / "mod.py").write_text("from labkit import errors\nX = 1\n")
    graph = import_graph(pkg)
    assert graph == {"labkit": set(), "labkit.errors": {"labkit.report.mod"},
                     "labkit.report": {"labkit.report.mod"}, "labkit.report.mod": {"labkit.errors"}}
    assert upward_imports(graph) == [("labkit.errors", "labkit.report.mod")]
    full = with_parent_packages(graph)  # importing labkit.report.mod runs labkit/report/__init__.py
    assert full["labkit.errors"] == {"labkit.report", "labkit.report.mod"}
    assert full["labkit.report.mod"] == {"labkit.errors"}
    assert import_cycles(full) == [["labkit.errors", "labkit.report", "labkit.report.mod"]]


def report(package: Path = PACKAGE) -> None:
    """Print the upward imports and the cycles of ``package``."""
    graph = import_graph(package)
    up, cycles = upward_imports(graph), import_cycles(with_parent_packages(graph))
    print(f"{len(up)} upward imports, {len(cycles)} import cycles "
          f"({sum(len(c) for c in cycles)} modules in them), module __getattr__: {module_getattrs(package)}")
    for a, b in up:
        print(f"  up  {a} ({floor(a)}) -> {b} ({floor(b)})")
    for cycle in cycles:
        print(f"  cycle  {' '.join(cycle)}")


if __name__ == "__main__":
    report(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE)
