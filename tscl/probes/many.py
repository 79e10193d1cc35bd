"""Several evaluations written as one report folder: ``tscl report`` (named tasks) and ``tscl mimic-probe`` (one task
per MIMIC-IV outcome) run :func:`tscl.probes.evaluate` once per specification through :func:`evaluate_many`."""
from __future__ import annotations

import json
from pathlib import Path

from .engine import EvalReport, EvalSpec, evaluate

__all__ = ["evaluate_many"]


def evaluate_many(specs: dict[str, EvalSpec], out: str | Path | None = None, *, key: str = "tasks",
                  json_name: str = "report.json") -> dict[str, EvalReport]:
    """:func:`~tscl.probes.evaluate` each of ``specs`` (``{name: EvalSpec}``); with ``out``, each report in
    ``out/<name>/`` (:meth:`EvalReport.write`), their tables in ``out/summary.md`` and every report in
    ``out/<json_name>`` as ``{key: {name: report}}``."""
    reports = {name: evaluate(spec) for name, spec in specs.items()}
    if out is not None:
        out = Path(out)
        parts = []
        for name, report in reports.items():
            report.write(out / name)
            parts.append(f"## [{name}]({name}/report.md)\n\n{report.result.to_markdown()}\n")
        (out / "summary.md").write_text("# Downstream evaluation\n\n" + "\n".join(parts))
        (out / json_name).write_text(json.dumps({key: {n: json.loads(r.to_json()) for n, r in reports.items()}},
                                                indent=1, default=str))
    return reports
