"""No function in labkit/ is longer than a screen: 60 lines from its first decorator to its end."""

from __future__ import annotations

import ast

from .conftest import ROOT

MAX_LINES = 60


def function_spans(path) -> list[tuple[str, int, int]]:
    """(qualified name, first line, number of lines) of every function and method in ``path``."""
    spans = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = f"{prefix}{getattr(child, 'name', '')}"
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                spans.append((name, first, child.end_lineno - first + 1))
            visit(child, f"{name}." if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef
                                                  | ast.ClassDef) else prefix)

    visit(ast.parse(path.read_text()), "")
    return spans


def test_no_function_in_labkit_is_longer_than_60_lines():
    files = sorted((ROOT / "labkit").rglob("*.py"))
    assert len(files) > 50
    long = [f"{path.relative_to(ROOT)}:{line} {name} ({lines} lines)"
            for path in files for name, line, lines in function_spans(path) if lines > MAX_LINES]
    assert not long, "\n".join(long)


def test_the_measure_counts_decorators_and_nested_functions(tmp_path):
    source = tmp_path / "example.py"
    source.write_text("class A:\n    @property\n    def f(self):\n        def g():\n            pass\n"
                      "        return 1\n")
    assert function_spans(source) == [("A.f", 2, 5), ("A.f.g", 4, 2)]
