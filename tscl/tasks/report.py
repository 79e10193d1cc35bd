"""The downstream report: every task's probe, audit, label-efficiency and figure outputs in one folder."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

from .run import TaskRun, run_task

__all__ = ["write_report"]


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def write_report(names, root: str | Path, out: str | Path, *, run: str | Path | None = None,
                 cache_dir: str | Path | None = None, probe: str = "linear", fractions=(0.1, 0.5, 1.0),
                 n_boot: int = 500, seed: int = 0, supervised: bool = True, progress: bool = False,
                 allow_test_overlap: bool = False, results: dict | None = None) -> Path:
    """Run tasks ``names`` and write ``out/``: ``summary.md`` (probe and audit tables per task),
    ``report.json``, and per task ``<task>_label_efficiency.png`` (linear probe, macro AUROC with 95 % CI
    bands against the fraction of training patients), ``<task>_reliability.png`` and
    ``<task>_embedding_<encoder>.png`` (PCA map coloured by label and by patient). ``results``, when given, receives
    each task's objects: ``{name: {"task": TaskRun, "label_efficiency": ProbeResult | None}}``."""
    from tscl.plots import plot_embedding_map

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts, payload = ["# Downstream evaluation", ""], {}
    for name in names:
        tr = run_task(name, root, run=run, cache_dir=cache_dir, probe=probe, n_boot=n_boot, seed=seed,
                      supervised=supervised, progress=progress, allow_test_overlap=allow_test_overlap)
        d = tr.data
        eff, figures = (None, []) if d.kind == "regression" else _classification_figures(
            tr, name, out, probe, fractions, n_boot, seed)
        figures += [plot_embedding_map(z, _colours(d), d.patient_ids, out / f"{name}_embedding_{_slug(enc)}.png",
                                       title=f"{name}: {enc} (PCA)") for enc, z in tr.features.items()]
        parts += [tr.to_markdown(), ""]
        if eff is not None:
            parts += [f"Label efficiency (macro AUROC, linear probe; the supervised baseline is trained on the same "
                      f"label subsamples; {len(fractions)} fractions of the training patients, 3 subsamples below "
                      f"100 %):", "", eff.to_markdown(), ""]
        parts += [f"![{f.stem}]({f.name})" for f in figures] + [""]
        if results is not None:
            results[name] = {"task": tr, "label_efficiency": eff}
        payload[name] = json.loads(tr.to_json())
        if eff is not None:
            payload[name]["label_efficiency"] = json.loads(eff.to_json())
    (out / "summary.md").write_text("\n".join(parts))
    (out / "report.json").write_text(json.dumps(payload, indent=1, default=float))
    return out


def _classification_figures(tr: TaskRun, name, out: Path, probe, fractions, n_boot, seed):
    """The label-efficiency run (None when no label can be scored on the test side) and the
    label-efficiency and reliability figures of a classification task."""
    from tscl.plots import plot_label_efficiency, plot_reliability
    from tscl.probes import run_probe

    from tscl.probes.cells import MIN_CLASS_ROWS, label_problem

    d, eff, figures = tr.data, None, []
    if all(label_problem(d.Y[d.test, j]) for j in range(len(d.labels))):
        d.notes.append(f"label-efficiency curve not drawn: no label has {MIN_CLASS_ROWS} or more test rows of each "
                       "class")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            eff = run_probe(tr.features, d.Y.astype(int), d.labels, d.patient_ids, fractions=fractions,
                            repeats=3, n_boot=n_boot, seed=seed, split=(d.train, d.test),
                            predictors=tr.predictors,
                            reference="random-init" if "random-init" in tr.features else None)
        figures.append(plot_label_efficiency(eff.rows, out / f"{name}_label_efficiency.png",
                                             title=f"{name}: linear probe"))
    figures.append(plot_reliability(tr.result.y_test, dict(tr.result.predictions), out / f"{name}_reliability.png",
                                    title=f"{name}: reliability ({probe} probe)"))
    return eff, figures


def _colours(d) -> list:
    """Embedding-map colours: the set of positive labels per row, or the decade of a regression target."""
    if d.kind == "regression":
        return [f"{10 * int(v // 10)}s" for v in d.Y[:, 0]]
    return ["+".join(lab for lab, v in zip(d.labels, row) if v) or "none" for row in d.Y]
