"""Generated faults through the installed CLI: the machinery every ``tests/test_mutations_*.py`` shares.

A test module builds a small, valid dataset of one source, derives mutated copies of it (each a
:class:`Case`: truncated, duplicated, reordered, re-encoded, retyped, re-zoned or re-spaced, files
dropped or made unreadable, bytes corrupted) from a seeded generator, and hands them to
:func:`run_cases`. That runs the installed ``tscl inspect`` from a folder outside the repository,
one process for many roots, and holds every case to the one rule (docs/faults.md):

- **refused**: the root's message is one line on stderr, ``tscl inspect: error: <file>: <problem>``,
  naming the mutated file; no traceback; the exit status is 2;
- **correct**: the dataset read equals an independent read of the mutated files (wfdb, pyedflib,
  polars, numpy, matplotlib called directly by the test: ``case.check``), and whatever the source left
  out is said on stderr in a ``tscl: note:`` line.

A case may demand one of the two (``expect``), or accept either. Outcomes are counted per source
and printed at the end of the session (``conftest.py``): ``mutations: wfdb 24 cases: 15 refused, 9 correct``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TSCL = shutil.which("tscl", path=str(Path(sys.executable).parent)) or shutil.which("tscl")
needs_cli = pytest.mark.skipif(TSCL is None, reason="the tscl console script is not installed (pip install -e .)")

RESULTS: dict[str, Counter] = {}  # source -> Counter(refused=..., correct=...)
NOT_RUN: dict[str, list[str]] = {}  # source -> mutations that cannot be made here, with the reason
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Case:
    """One mutated copy of a dataset and what may come of it."""

    name: str
    root: Path
    expect: str = "either"  # "refuse", "correct" or "either"
    names: str | None = None  # what a refusal must name (the mutated file, or the table)
    check: Callable[[dict], None] | None = None  # a successful read against an independent read of the files
    options: str | None = None  # --dataset-kwargs for this case
    note: str | None = None  # text the root's "tscl: note:" line must hold (what was left out)


_DEFAULT = object()


class Cases:
    """Builds the cases of one source: ``cases(name, expect, names, edit=fn, ...)`` copies the base dataset to
    ``where/<name>``, applies ``edit(root)`` and adds a :class:`Case` whose check is ``check(root, result)``."""

    def __init__(self, base: Path, where: Path, check: Callable[[Path, dict], None], options: str | None = None):
        self.base, self.where, self.check, self.options, self.cases = base, where, check, options, []

    def __call__(self, name: str, expect: str = "either", names: str | None = None, options=_DEFAULT,
                 note: str | None = None, edit: Callable[[Path], object] | None = None) -> Case:
        root = copy_of(self.base, self.where, name.replace(" ", "_"))
        if edit is not None:
            edit(root)
        self.cases.append(Case(name, root, expect, names, lambda result, root=root: self.check(root, result),
                               self.options if options is _DEFAULT else options, note))
        return self.cases[-1]


def same_items(result: dict, expected: dict, *, atol: float = 1e-5) -> None:
    """``expected``: record id -> (patient id, payload array); the read must hold exactly these items, each with
    its patient and its payload (the ``.npy`` beside the JSON), in any order."""
    index = result["index"]
    assert sorted(r["record_id"] for r in index) == sorted(expected), "record ids"
    x = payload(result)
    for i, row in enumerate(index):
        patient, value = expected[row["record_id"]]
        assert row["patient_id"] == patient, f"patient of {row['record_id']}: {row['patient_id']!r} != {patient!r}"
        np.testing.assert_allclose(x[i], value, rtol=1e-5, atol=atol, err_msg=row["record_id"])


def copy_of(base: Path, where: Path, name: str) -> Path:
    """A fresh copy of the dataset folder ``base`` at ``where/name`` (symlinks copied as links)."""
    dest = where / name
    shutil.copytree(base, dest, symlinks=True)
    return dest


def outside(tmp_path: Path) -> Path:
    assert REPO not in tmp_path.parents and tmp_path != REPO
    return tmp_path


def inspect(cwd: Path, source: str, roots: list[Path], options: str | None = None, extra=()) \
        -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``tscl inspect --dataset source --root R ... --out inspect.json --payload`` in ``cwd`` (its own cache)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TSCL_CACHE"] = str(cwd / "cache")
    out = cwd / f"inspect-{len(list(cwd.glob('inspect-*.json')))}.json"
    args = [TSCL, "inspect", "--dataset", source, *[a for r in roots for a in ("--root", str(r))], "--out", str(out),
            "--payload", *(["--dataset-kwargs", options] if options else []), *extra]
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in proc.stderr, f"{' '.join(args)}\n{proc.stderr[-4000:]}"
    results = json.loads(out.read_text()) if out.exists() else []
    return proc, results


def payload(result: dict) -> np.ndarray:
    """The payload array ``tscl inspect --payload`` wrote beside its JSON for a waveform or image root."""
    return np.load(result["payload_file"])


def _stderr_lines(proc) -> tuple[list[str], list[str]]:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("tscl inspect: error: ")]
    notes = [ln for ln in lines if ln.startswith("tscl: note: ")]
    other = [ln for ln in lines if ln not in errors and ln not in notes and not ln.startswith("tscl: warning: ")]
    assert not other, f"stderr lines that are neither one-line errors, notes nor warnings: {other[:5]}"
    return errors, notes


def _judge(source: str, case: Case, result: dict, notes: list[str]) -> str:
    where = f"{source} mutation {case.name!r} ({case.root})"
    if not result["ok"]:
        assert case.expect != "correct", f"{where}: refused, but should read correctly: {result['error']}"
        assert "\n" not in result["error"]
        if case.names:
            assert case.names in result["error"], f"{where}: the refusal does not name {case.names!r}: {result['error']}"
        return "refused"
    assert case.expect != "refuse", f"{where}: read without complaint ({result['describe']}), should be refused"
    if case.check is not None:
        try:
            case.check(result)
        except AssertionError as err:
            raise AssertionError(f"{where}: read differs from the independent read: {err}") from err
    if case.note:
        mine = [n for n in notes if n.startswith(f"tscl: note: {result['root']}: ")]
        assert mine and case.note in mine[0], f"{where}: no note saying {case.note!r} on stderr: {notes}"
    return "correct"


def run_cases(source: str, cases: list[Case], cwd: Path) -> dict[str, str]:
    """Every case through the installed CLI, one process per set of options; returns ``{case name: outcome}``
    and counts the outcomes under ``source`` for the session summary."""
    assert len({c.name for c in cases}) == len(cases) and len({c.root for c in cases}) == len(cases)
    outcomes = {}
    groups: dict[str | None, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.options, []).append(case)
    for options, group in groups.items():
        proc, results = inspect(cwd, source, [c.root for c in group], options)
        errors, notes = _stderr_lines(proc)
        assert len(results) == len(group), f"tscl inspect wrote {len(results)} results for {len(group)} roots\n" \
                                           f"{proc.stderr[-3000:]}"
        refused = sum(not r["ok"] for r in results)
        assert len(errors) == refused, f"{refused} roots refused but {len(errors)} error lines: {errors}"
        assert proc.returncode == (2 if refused else 0), (proc.returncode, proc.stderr[-2000:])
        for case, result in zip(group, results):
            assert Path(result["root"]) == case.root.resolve()
            outcomes[case.name] = _judge(source, case, result, notes)
    RESULTS.setdefault(source, Counter()).update(outcomes.values())
    return outcomes


def not_run(source: str, what: str) -> None:
    """Record a mutation that cannot be made on this machine (printed in the summary, never silent)."""
    NOT_RUN.setdefault(source, []).append(what)


def one_refusal(cwd: Path, source: str, root: Path, names: str, options: str | None = None) -> str:
    """A single root through ``tscl inspect``: exit status 2 and exactly one stderr line naming ``names``."""
    proc, results = inspect(cwd, source, [root], options)
    errors, _ = _stderr_lines(proc)
    assert proc.returncode == 2 and len(errors) == 1 and names in errors[0], (proc.returncode, proc.stderr)
    return errors[0]


def summary_lines() -> list[str]:
    lines = []
    for source in sorted(set(RESULTS) | set(NOT_RUN)):
        counts = RESULTS.get(source, Counter())
        line = (f"mutations: {source} {sum(counts.values())} cases: {counts.get('refused', 0)} refused, "
                f"{counts.get('correct', 0)} correct")
        if NOT_RUN.get(source):
            line += f" (not run here: {'; '.join(NOT_RUN[source])})"
        lines.append(line)
    return lines


def unreadable(path: Path, source: str) -> str:
    """Make ``path`` unreadable: without read permission (not as root, who reads anything: then the mutation
    is recorded as not run) — returns how, or "" when it could not be done."""
    if AS_ROOT:
        not_run(source, f"read permission removed from {path.name} (running as root, which reads any file)")
        return ""
    path.chmod(0)
    return "chmod 000"


def flip_bytes(path: Path, rng, count: int, head: int = 8, tail: int = 12) -> None:
    """Invert ``count`` bytes at seeded places inside ``path`` (not its first ``head`` or last ``tail`` bytes)."""
    data = bytearray(path.read_bytes())
    for i in rng.sample(range(head, len(data) - tail), count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def dir_in_place(path: Path) -> None:
    """Replace a file by a directory of the same name: unreadable as a file for every user, root included."""
    path.unlink()
    path.mkdir()
