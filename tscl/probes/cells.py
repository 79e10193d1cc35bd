"""Cells a results table must not print as numbers, and the one way every table prints a cell.

A probe's AUROC (and its bootstrap CI) is not computed for a label, and the label is left out of
every macro average of the table, when the test split cannot score it:

- **one class** in the test split: the AUROC is undefined;
- **fewer than** :data:`MIN_CLASS_ROWS` (k = 5) **rows of the rarer class** in the test split. With
  m test rows of the rarer class, the patient-level bootstrap draws a resample without any of them
  with probability of about e^-m (about 0.7 % of the resamples at m = 5, 37 % at m = 1); those
  resamples are dropped from the percentile interval, which is then computed on the lucky ones,
  and the AUROC itself moves in steps of 1/m of the other class's ranks. Below five the interval
  stops being a confidence interval: one positive gave ``0.183 [0.181, 0.240]``.
- a regression target with **fewer than k test rows** (or a constant one): two test rows gave an R²
  of ``-65.1 [-65.1, -65.1]``, the resamples that draw one patient twice having no variance.

A label no fit of a cell could learn (its training rows hold one class) is predicted by its
prevalence, a constant whose AUROC is 0.5: that is what the label budget of the cell gives, so it
stays in the macro average and is named under the table. When every scored label of a cell is
untrainable in every fit, the cell measures nothing about the encoder (every encoder gets 0.5) and
is ``n/a (untrainable: ...)``. A cell with no label left prints ``n/a (why)``; with fewer than two
test patients the patient-level bootstrap cannot vary, so the value is printed without a CI
("no CI: ..."). Non-finite embeddings are refused before any fit, naming the file and the rows
(:func:`check_finite`).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["MIN_CLASS_ROWS", "label_problem", "check_finite", "fmt", "untrainable_problem"]

MIN_CLASS_ROWS = 5  # k: rows of the rarer class a label needs in the test split to be scored


def label_problem(y_test) -> str | None:
    """Why binary label ``y_test`` (the test split's 0/1 values) cannot be scored, or None when it can."""
    y = np.asarray(y_test, dtype=np.float64)
    pos = int(np.sum(y == 1))
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return f"one class in the test split ({'no positive' if pos == 0 else 'no negative'} among {len(y)} rows)"
    rarer, name = (pos, "positive") if pos <= neg else (neg, "negative")
    if rarer < MIN_CLASS_ROWS:
        return f"{rarer} {name} row{'s' if rarer > 1 else ''} in the test split, fewer than {MIN_CLASS_ROWS}"
    return None


def untrainable_problem(repeats: int) -> str:
    """Why a label no fit of a cell could learn is not scored (its predictions are constant: AUROC 0.5)."""
    return "untrainable: the training rows hold one class" + (f" in all {repeats} fits" if repeats > 1 else "")


def check_finite(X, what: str, record_ids=None) -> None:
    """Refuse (``ValueError``, one line) features ``X [n, ...]`` with NaN or inf, naming ``what`` (a file or a
    feature set), how many rows and which (their record ids when given)."""
    X = np.asarray(X)
    if X.dtype.kind not in "fc" or not len(X):
        return
    bad = np.flatnonzero(~np.isfinite(X.reshape(len(X), -1)).all(axis=1))
    if not len(bad):
        return
    shown = bad[:5].tolist()
    ids = f" (record ids {[str(record_ids[i]) for i in shown]})" if record_ids is not None else ""
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise ValueError(f"{what}: {len(bad)} of {len(X)} rows hold NaN or inf: rows {shown}{more}{ids}; re-embed with "
                     "a finite encoder or drop those rows")


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float, np.floating)) and math.isfinite(v)


def fmt(value, ci=None, na: str | None = None, signed: bool = False, no_ci: str | None = None) -> str:
    """One table cell: ``0.812 [0.750, 0.870]``; ``n/a (why)`` for a refused cell; ``0.812 (no CI: why)``
    when only the interval is undefined."""
    if na:
        return f"n/a ({na})"
    if not _finite(value):
        return "n/a"
    spec = "+.3f" if signed else ".3f"
    if ci is None or not all(_finite(c) for c in ci):
        return f"{value:{spec}} (no CI{': ' + no_ci if no_ci else ''})"
    return f"{value:{spec}} [{ci[0]:{spec}}, {ci[1]:{spec}}]"
