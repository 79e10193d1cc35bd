"""Every module imports the installed names (``tscl.loaders``, ``tscl.kernels``), never the repository folders.

From the repository root ``import loaders`` happens to resolve (pytest puts the root on sys.path), so
an installed ``tscl`` would fail where the tests pass; this test reads the sources instead of relying
on the import path, and the installed CLI is also exercised from outside the repository by
tests/test_cli_installed.py.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("tscl", "kernels", "loaders", "benchmarks", "tests")
TOP_LEVEL = {"loaders", "kernels", "benchmarks"}


def _bad_imports(path: Path) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] in TOP_LEVEL]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in TOP_LEVEL:
                bad.append(node.module)
    return bad


def test_no_module_imports_the_repository_folders_by_their_folder_name():
    files = [p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 40  # the scan saw the package
    offenders = {str(p.relative_to(ROOT)): b for p in files if (b := _bad_imports(p))}
    assert not offenders, f"import through tscl.loaders / tscl.kernels / tscl.benchmarks instead: {offenders}"


def test_the_scan_catches_a_folder_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("from loaders.meds import scan_meds\nimport kernels\nfrom .x import y\n")
    assert _bad_imports(bad) == ["loaders.meds", "kernels"]
