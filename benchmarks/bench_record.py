"""What a benchmark page records besides its numbers, and how its files are written.

:func:`start` notes the command, the code (git commit and uncommitted changes to the engine), the environment
and the clock; :func:`finish` adds the wall and CPU time of the run and the machine's load (the 2-core machine
is shared, so CPU seconds say what the run itself cost); :func:`write` puts ``<tag>.json``,
``<tag>_table.md`` and the figures in ``--out`` and, with ``--docs``, in the docs folder. :func:`delta`
prints a paired difference with its verdict (``better`` / ``worse`` when the 95 % CI excludes 0).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tscl.benchmarks.bench_real import code_state, record_header as header  # noqa: F401  (the benchmarks call bench_record.header)
from tscl.checkpoint import environment
from tscl.probes import EvalSpec, evaluate
from tscl.probes.cells import fmt

__all__ = ["start", "finish", "header", "write", "delta", "cell", "fmt_triple", "common_options", "evaluated"]


def common_options(p: argparse.ArgumentParser, sup_steps: int = 200) -> None:
    """The options every benchmark here takes besides its data: where it writes, its budget, its seed."""
    p.add_argument("--out", required=True)
    p.add_argument("--docs", default=None, help="also write the JSON, table and figure here (e.g. docs/benchmarks)")
    p.add_argument("--cache", default=None, help="the sources' cache folder (default: the per-user cache)")
    p.add_argument("--lr", type=float, default=3e-3, help="the pretraining learning rate")
    p.add_argument("--sup-steps", type=int, default=sup_steps, help="steps of the supervised-from-scratch row")
    p.add_argument("--bootstrap", type=int, default=1000, help="patient-level bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a tiny budget for tests (50 resamples, 4 supervised steps)")


def evaluated(spec: EvalSpec, out: Path, tag: str) -> dict:
    """:func:`tscl.probes.evaluate` of ``spec``, its report written to ``out/reports/<tag>``, as a JSON-able dict
    with its markdown and seconds. A report already there is reused when it was made from the same spec and is
    newer than every encoder run it read (so an interrupted benchmark resumes without re-evaluating); its
    seconds are then those noted beside it (``evaluated.json``), or None when it has no such note."""
    folder = out / "reports" / tag
    reused = _reusable(spec, folder)
    if reused is not None:
        print(f"[{out.name}] {tag}: reused the report in {folder}", flush=True)
        return reused
    t0 = time.time()
    report = evaluate(spec)
    report.write(folder)
    seconds = time.time() - t0
    (folder / "evaluated.json").write_text(json.dumps({"eval_s": seconds, "code": code_state()}, indent=1))
    print(f"[{out.name}] {tag}: evaluated in {seconds:.0f} s", flush=True)
    return {**json.loads(report.to_json()), "eval_s": seconds, "markdown": report.to_markdown()}


def _reusable(spec: EvalSpec, folder: Path) -> dict | None:
    """The stored report in ``folder`` as :func:`evaluated` returns it, or None unless its spec is ``spec`` and it
    is newer than the checkpoints of the encoder runs it evaluated."""
    path = folder / "report.json"
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    if stored.get("spec") != json.loads(json.dumps(spec.to_dict())):
        return None
    made = path.stat().st_mtime
    if any(f.stat().st_mtime > made for e in spec.encoders for f in Path(e).glob("*.safetensors")):
        return None
    note = folder / "evaluated.json"
    seconds = json.loads(note.read_text())["eval_s"] if note.is_file() else None
    text = (folder / "report.md").read_text().split("\n\n![")[0] if (folder / "report.md").is_file() else ""
    return {**stored, "eval_s": seconds, "markdown": text, "reused": str(folder)}


def start(script: str, argv: list) -> dict:
    """The record's provenance, and the clock started."""
    command = os.environ.get("TSCL_BENCH_COMMAND") or f"python benchmarks/{script} " + " ".join(argv)
    return {"command": command, "code": code_state(), "environment": environment(torch.device("cpu")),
            "_t0": time.time()}


def finish(record: dict) -> dict:
    """Wall and CPU seconds since :func:`start`, the load average at the end and the code then."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    record["wall_s"] = time.time() - record.pop("_t0")
    record["cpu_s"] = ru.ru_utime + ru.ru_stime
    record["load_average_at_end"] = list(os.getloadavg())
    record["code_at_end"] = code_state()
    return record


def write(tag: str, record: dict, markdown: list, out: Path, docs: str | None, figures=()) -> None:
    """``<tag>.json`` and ``<tag>_table.md`` (and the figures) in ``out`` and, with ``docs``, there too."""
    text = "\n".join(markdown) + "\n"
    blob = json.dumps(record, indent=1, default=_json)
    targets = [out] + ([Path(docs)] if docs else [])
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{tag}.json").write_text(blob)
        (folder / f"{tag}_table.md").write_text(text)
        for fig in figures:
            if Path(fig).parent.resolve() != folder.resolve():
                shutil.copyfile(fig, folder / Path(fig).name)
    print(text, file=sys.stdout)


def _json(v):
    return v.tolist() if isinstance(v, np.ndarray) else float(v) if isinstance(v, np.floating) else str(v)


def cell(row: dict, metric: str) -> str:
    """A row's value of ``metric`` with its CI, or ``n/a (why)``."""
    return fmt(row.get(metric), row.get(f"{metric}_ci"), row.get("n/a"))


def delta(c: dict | None, metric: str) -> str:
    """A comparison's ``metric`` difference with its paired CI and verdict; ``—`` without one."""
    if c is None:
        return "—"
    value, ci = c.get(metric), c.get(f"{metric}_ci")
    text = fmt(value, ci, c.get("n/a"), signed=True)
    if c.get("n/a") or ci is None or not np.all(np.isfinite(ci)):
        return text
    return f"{text} {'better' if ci[0] > 0 else 'worse' if ci[1] < 0 else 'not separated'}"


def fmt_triple(v) -> str:
    """``[value, low, high]`` as a signed cell with its CI; ``n/a`` for None."""
    return "n/a" if not v else fmt(v[0], v[1:], signed=True)
