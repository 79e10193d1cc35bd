"""No import cycle anywhere in the package, checked twice.

Statically: the graph of module-level imports between tscl's modules (``tscl/``, ``kernels/`` as
``tscl.kernels``, ``loaders/`` as ``tscl.loaders``, ``benchmarks/`` as ``tscl.benchmarks``) has no cycle.
Dynamically: each module is the *first* tscl module imported in a fresh interpreter (a child forked from one
that holds only the third-party libraries), so a cycle that works from one entry point and breaks from
another is found whichever module it starts from. The CLI's module imports nothing heavy at all.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"tscl": "tscl", "kernels": "tscl.kernels", "loaders": "tscl.loaders", "benchmarks": "tscl.benchmarks"}


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _module_level(tree: ast.Module):
    """Import statements that run when the module is imported (not those inside functions)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))


def graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """``module -> modules it imports at module level``, with the packages a target's import also runs (those
    that do not contain the importer)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _module_level(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                parts = target.split(".")
                for k in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
                    dep = ".".join(parts[:k])
                    if dep in mods and dep != name and not name.startswith(dep + "."):
                        edges[name].add(dep)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_module_import_graph_has_no_cycle():
    mods = modules()
    assert len(mods) > 60 and "tscl.cli" in mods and "tscl.kernels" in mods
    edges = graph(mods)
    assert "tscl.train" in edges["tscl.launch"] and "tscl.methods.clip" in edges["tscl.runs"]  # the scan sees edges
    assert cycles(edges) == []


def test_the_cycle_check_finds_a_cycle(tmp_path):
    for name, text in {"a.py": "from pkg import b\n", "b.py": "import pkg.c\n", "c.py": "def f():\n    import pkg.a\n",
                       "d.py": "from .a import x\n", "__init__.py": ""}.items():
        (tmp_path / name).write_text(text)
    mods = {f"pkg.{p.stem}" if p.stem != "__init__" else "pkg": p for p in tmp_path.glob("*.py")}
    edges = graph(mods)
    assert edges["pkg.c"] == set() and edges["pkg.d"] == {"pkg.a"}  # imports inside functions do not count
    assert cycles(edges) == []
    (tmp_path / "c.py").write_text("from . import a\n")
    assert cycles(graph(mods)) == [["pkg.a", "pkg.b", "pkg.c"]]


FIRST_IMPORT = r"""
import importlib, json, os, sys, traceback
for lib in ("numpy", "torch", "polars", "scipy", "sklearn", "matplotlib", "wfdb", "safetensors", "tqdm", "pyedflib",
            "PIL", "hypothesis"):
    try:
        importlib.import_module(lib)
    except ImportError:
        pass
assert not [m for m in sys.modules if m == "tscl" or m.startswith("tscl.")]
failures = {}
for name in json.loads(sys.argv[1]):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: this module is the first tscl module it imports
        os.close(r)
        try:
            importlib.import_module(name)
            message = ""
        except BaseException:
            message = traceback.format_exc(limit=-3)
        os.write(w, message.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        message = f.read()
    os.waitpid(pid, 0)
    if message:
        failures[name] = message
print(json.dumps(failures))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork (POSIX) to give each module a fresh start")
def test_every_module_imports_first_in_a_fresh_interpreter():
    import json

    # __main__ runs the CLI when imported; gpu_check is a script for a GPU machine's toolchain
    names = [m for m in modules() if m not in ("tscl.__main__", "tscl.benchmarks.gpu_check")]
    proc = subprocess.run([sys.executable, "-c", FIRST_IMPORT, json.dumps(names)], capture_output=True, text=True,
                          timeout=900, cwd=ROOT.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = json.loads(proc.stdout.splitlines()[-1])
    assert not failures, "\n".join(f"{k}:\n{v}" for k, v in failures.items())


def test_the_cli_parses_help_without_heavy_imports():
    code = ("import sys, time; t = time.process_time(); from tscl.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'numpy', 'polars', 'sklearn', 'triton', 'scipy') if m in sys.modules]\n"
            "print(heavy, time.process_time() - t, file=sys.stderr)")
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT.parent)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    heavy, cpu = proc.stderr.strip().rsplit("] ", 1)
    assert heavy + "]" == "[]", proc.stderr
    assert float(cpu) < 0.5  # CPU seconds of import + parse, so a busy machine does not make it fail
    whole = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert whole < 1.0, f"tscl --help took {whole:.2f} s of CPU, interpreter start included"
    assert "pretrain" in proc.stdout and "ptbxl" in proc.stdout
