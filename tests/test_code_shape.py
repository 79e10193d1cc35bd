"""Code shape the project holds itself to: no function in the library, the loaders, the kernels or the
benchmarks nests its control flow (if / for / while / with / try) deeper than four levels; an ``elif``
chain is one level, as it reads."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = (ast.If, ast.For, ast.While, ast.With, ast.Try, ast.AsyncFor, ast.AsyncWith)
MAX_DEPTH = 4


def nesting(node: ast.AST, level: int) -> int:
    """The deepest block level inside ``node``, which sits at ``level`` (nested functions and classes are
    measured on their own; an ``elif`` sits at its ``if``'s level)."""
    deepest = level
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        is_elif = isinstance(node, ast.If) and node.orelse == [child] and isinstance(child, ast.If)
        deeper = isinstance(child, BLOCKS) and not is_elif
        deepest = max(deepest, nesting(child, level + 1 if deeper else level))
    return deepest


def deep_functions(text: str, name: str) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            depth = max([nesting(stmt, 1 if isinstance(stmt, BLOCKS) else 0) for stmt in node.body] or [0])
            if depth > MAX_DEPTH:
                out.append(f"{name}:{node.lineno} {node.name} ({depth} levels)")
    return out


def test_the_measure_counts_blocks_and_reads_elif_as_one_level():
    four = "def f(x):\n for a in x:\n  if a:\n   while a:\n    with a:\n     pass\n"
    five = "def f(x):\n for a in x:\n  if a:\n   while a:\n    with a:\n     try:\n      pass\n     finally:\n      pass\n"
    chain = "def f(x):\n for a in x:\n  if a:\n   pass\n  elif x:\n   pass\n  elif a < 1:\n   if x:\n    if a:\n     pass\n"
    assert deep_functions(four, "t") == []
    assert deep_functions(five, "t") == ["t:1 f (5 levels)"]
    assert deep_functions(chain, "t") == []  # for > elif > if > if: four
    assert deep_functions(chain.replace("     pass", "     for b in a:\n      pass"), "t") == ["t:1 f (5 levels)"]


@pytest.mark.parametrize("folder", ["tscl", "loaders", "kernels", "benchmarks"])
def test_no_function_nests_deeper_than_four_levels(folder):
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}/"
    deep = [hit for f in files for hit in deep_functions(f.read_text(), str(f.relative_to(ROOT)))]
    assert not deep, "functions nested deeper than four levels: " + "; ".join(deep)
