"""Probe evaluation with discrimination, calibration and regression metrics, patient-bootstrap CIs.

Every metric takes record weights ``w`` (all ones for the point estimate; a patient-level
bootstrap resample's counts otherwise, as in :mod:`tscl.probes.linear`), and multi-label
metrics are macro averages over labels with both classes present:

- AUROC: weighted Mann-Whitney statistic (:func:`~tscl.probes.linear.weighted_auroc`).
- AUPRC: average precision ``sum_k (R_k - R_{k-1}) P_k`` over score thresholds (weighted).
- Brier score: ``sum_i w_i (p_i - y_i)^2 / sum_i w_i``.
- Expected calibration error with ``B`` equal-width bins: ``sum_b (W_b / W) |ybar_b - pbar_b|``,
  ``W_b`` the weight in bin ``b``, ``ybar_b`` and ``pbar_b`` its weighted event rate and mean
  predicted probability.
- Regression: MAE ``sum w |y - yhat| / sum w`` and ``R^2 = 1 - sum w (y - yhat)^2 / sum w (y - ybar_w)^2``.

:func:`evaluate_probe` fits a probe chosen by name on the training rows, picks its
hyper-parameter on a patient-level validation split carved out of the training rows only
(the middle of the grid when there are fewer than 10 training patients), and scores the test
rows once, with 95 % CIs from the same patient-level bootstrap resamples for every encoder.
Labels a row cannot score (one class or fewer than k rows of a class in the test split,
untrainable: :mod:`tscl.probes.cells`; for regression a constant test target) are left out of its
averages and listed in ``left_out``; a row with none left is ``n/a`` with the reason. The
resamples are scored all at once in bounded chunks (:mod:`tscl.probes.bootstrap`: one sort per
label, then O(n) per resample); the single-weighting functions below are the definitions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import average_precision_score

from .cells import check_finite, fmt, label_problem
from .bootstrap import Resamples, classification_resampled, regression_resampled
from .models import PROBE_GRIDS, make_probe
from .protocol import check_names, choose_on_validation, paired_ci, percentile_ci, prepare_split

__all__ = ["weighted_auprc", "brier_score", "expected_calibration_error", "reliability_curve", "mae", "r2",
           "classification_metrics", "regression_metrics", "evaluate_probe", "EvalResult"]

CLASSIFICATION_METRICS = ("auroc", "auprc", "brier", "ece")
REGRESSION_METRICS = ("mae", "r2")


def weighted_auprc(y, p, w) -> float:
    y = np.asarray(y).astype(bool)
    if w[y].sum() <= 0 or w[~y].sum() <= 0:
        return float("nan")
    keep = w > 0
    return float(average_precision_score(y[keep], p[keep], sample_weight=w[keep]))


def brier_score(y, p, w) -> float:
    return float(np.sum(w * (p - y) ** 2) / np.sum(w))


def reliability_curve(y, p, w=None, n_bins: int = 10) -> dict:
    """Per equal-width bin: ``mean_pred``, ``event_rate``, ``weight`` (empty bins have weight 0, NaN rates)."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    w = np.ones_like(p) if w is None else np.asarray(w, dtype=np.float64)
    b = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    W = np.bincount(b, weights=w, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(b, weights=w * p, minlength=n_bins) / W
        rate = np.bincount(b, weights=w * y, minlength=n_bins) / W
    return {"mean_pred": mean_pred, "event_rate": rate, "weight": W,
            "edges": np.linspace(0, 1, n_bins + 1)}


def expected_calibration_error(y, p, w=None, n_bins: int = 10) -> float:
    c = reliability_curve(y, p, w, n_bins)
    W = c["weight"]
    ok = W > 0
    return float(np.sum(W[ok] / W.sum() * np.abs(c["event_rate"][ok] - c["mean_pred"][ok])))


def mae(y, yhat, w) -> float:
    return float(np.sum(w * np.abs(y - yhat)) / np.sum(w))


def r2(y, yhat, w) -> float:
    """NaN when the targets of the records with weight are all equal (R^2 is undefined there)."""
    y, w = np.asarray(y, dtype=np.float64), np.asarray(w, dtype=np.float64)
    if not (w > 0).any() or np.ptp(y[w > 0]) == 0:
        return float("nan")
    mean = np.sum(w * y) / np.sum(w)
    ss_tot = np.sum(w * (y - mean) ** 2)
    return float(1 - np.sum(w * (y - yhat) ** 2) / ss_tot) if ss_tot > 0 else float("nan")


def classification_metrics(Y, P, w=None) -> dict:
    """Macro AUROC, AUPRC, Brier, ECE over labels with both classes (under weights ``w``)."""
    w = np.ones(len(Y)) if w is None else w
    return {m: float(v[0]) for m, v in classification_resampled(Y, P, Resamples.from_weights(w)).items()}


def regression_metrics(Y, Yhat, w=None) -> dict:
    """MAE and R^2, averaged over target columns."""
    w = np.ones(len(Y)) if w is None else w
    return {m: float(v[0]) for m, v in regression_resampled(Y, Yhat, Resamples.from_weights(w)).items()}


def _predict(model, X, kind):
    return model.predict(X) if kind == "regression" else model.predict_proba(X)


def _score(Y, P, kind) -> float:
    if kind == "regression":
        return -regression_metrics(Y, P)["mae"]
    return classification_metrics(Y, P)["auroc"]


def _choose_params(name, X, Y, rows, patient_ids, kind, seed) -> dict:
    """Hyper-parameters of probe ``name`` chosen on a patient-level validation split inside ``rows``."""
    def score(params, fit_rows, val_rows):
        P = _predict(make_probe(name, **params).fit(X[fit_rows], Y[fit_rows]), X[val_rows], kind)
        return _score(Y[val_rows], P, kind)

    return choose_on_validation(PROBE_GRIDS[name], score, rows, patient_ids, seed)


@dataclass
class EvalResult:
    """Per-encoder metrics with CIs; ``predictions`` keeps the test predictions for plots."""

    labels: list
    kind: str
    probe: str
    rows: list = field(default_factory=list)
    split: dict = field(default_factory=dict)
    predictions: dict = field(default_factory=dict, repr=False)
    y_test: np.ndarray | None = field(default=None, repr=False)
    comparisons: list = field(default_factory=list)

    @property
    def metrics(self) -> tuple:
        return REGRESSION_METRICS if self.kind == "regression" else CLASSIFICATION_METRICS

    def to_json(self) -> str:
        return json.dumps({"labels": self.labels, "kind": self.kind, "probe": self.probe, "split": self.split,
                           "rows": self.rows, "comparisons": self.comparisons}, indent=2)

    def to_markdown(self) -> str:
        names = {"auroc": "AUROC", "auprc": "AUPRC", "brier": "Brier", "ece": "ECE", "mae": "MAE", "r2": "R²"}
        head = f"| encoder ({self.probe} probe) | " + " | ".join(names[m] + " [95 % CI]" for m in self.metrics) + " |"
        lines = [head, "|---" * (len(self.metrics) + 1) + "|"]
        no_ci = self.split.get("no_ci")
        for r in self.rows:
            cells = [fmt(r[m], r[f"{m}_ci"], r.get("n/a"), no_ci=no_ci) for m in self.metrics]
            lines.append(f"| {r['encoder']} | " + " | ".join(cells) + " |")
        if self.comparisons:
            lines += ["", "| comparison (paired patient bootstrap) | " + " | ".join(f"Δ {names[m]} [95 % CI]" for m in self.metrics)
                      + " |", "|---" * (len(self.metrics) + 1) + "|"]
            for c in self.comparisons:
                lines.append(f"| {c['encoder']} − {c['reference']} | " + " | ".join(
                    fmt(c[m], c[m + "_ci"], c.get("n/a"), signed=True, no_ci=no_ci) for m in self.metrics) + " |")
        left = {(lab, why) for r in self.rows if not r.get("n/a") for lab, why in (r.get("left_out") or {}).items()}
        notes = [f"- {lab} is left out of the averages: {why}" for lab, why in sorted(left)]
        notes += [f"- {r['encoder']}: {', '.join(r['untrainable_labels'])} untrainable (the training rows hold one "
                  "class): the prevalence prediction counts as AUROC 0.5" for r in self.rows
                  if r.get("untrainable_labels") and not r.get("n/a")]
        return "\n".join(lines + ([""] if notes else []) + notes)


def evaluate_probe(features: dict, Y, labels, patient_ids, split, *, kind: str = "binary", probe: str = "linear",
                   n_boot: int = 500, random_state: int = 0, reference: str | None = None,
                   predictors: dict | None = None, seed: int | None = None) -> EvalResult:
    """Fit probe ``probe`` per encoder on ``split[0]``, score ``split[1]`` with patient-bootstrap CIs.

    ``kind``: ``binary`` / ``multilabel`` (``Y [n, L]`` 0/1) or ``regression`` (``Y [n, L]``
    continuous; the probe is then ``ridge`` whatever ``probe`` says). ``reference`` names an encoder the
    others are compared with: differences of every metric with CIs from the same bootstrap resamples.
    ``predictors``: further rows from models trained on the rows themselves, called as
    ``predictor(Y, train_rows, test_rows, patient_ids, seed) -> P`` (see
    :class:`~tscl.probes.supervised.SupervisedBaseline`); scored on the same test side and resamples.
    ``seed`` is an alias of ``random_state``.
    """
    seed = random_state if seed is None else seed
    predictors = check_names(features, predictors)
    for name, X in features.items():
        check_finite(X, f"features {name!r}")
    Y = np.asarray(Y, dtype=np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    patient_ids = np.asarray(patient_ids)
    train, test = (np.asarray(s, dtype=np.int64) for s in split)
    W, summary = prepare_split(patient_ids, train, test, n_boot, seed)
    if summary["test_patients"] < 2:  # a patient-level bootstrap of one patient cannot vary
        summary["no_ci"] = f"{summary['test_patients']} test patient"
    if kind == "regression":
        probe = "ridge"
    elif probe == "ridge":
        raise ValueError("the ridge probe is for regression targets")
    result = EvalResult(labels=list(labels), kind=kind, probe=probe, y_test=Y[test], split=summary)
    metric_fn = regression_metrics if kind == "regression" else classification_metrics
    resampled = regression_resampled if kind == "regression" else classification_resampled
    boots = {}
    for name in [*features, *predictors]:
        P, params, untrainable = _fit_predict(name, features, predictors, probe, Y, train, test, patient_ids, kind,
                                              seed)
        keep, left_out, na = _scorable(Y[test], labels, untrainable, kind)
        Y_test, P_test = Y[test][:, keep], np.asarray(P)[:, keep]
        if not na:
            point = metric_fn(Y_test, P_test)
            boots[name] = resampled(Y_test, P_test, W)  # {metric: [n_boot]}, every resample at once
        else:
            point = {m: float("nan") for m in result.metrics}
            boots[name] = {m: np.full(len(W), np.nan) for m in result.metrics}
        row = {"encoder": name, "params": params, **point, "untrainable_labels": [labels[j] for j in untrainable],
               "n/a": na, "left_out": left_out if not na else {}}
        row.update({f"{m}_ci": percentile_ci(boots[name][m]) if "no_ci" not in summary
                    else [float("nan")] * 2 for m in point})
        result.rows.append(row)
        result.predictions[name] = P
    if reference in boots:
        ref = next(r for r in result.rows if r["encoder"] == reference)
        result.comparisons += [_comparison(row, ref, boots, result.metrics) for row in result.rows
                               if row["encoder"] != reference]
    return result


def _scorable(Y_test, labels, untrainable, kind) -> tuple[list, dict, str | None]:
    """The label columns a row's metrics average, ``{label: why}`` for those they cannot, and why the whole row
    is n/a (no label left, or every kept label untrainable: constant predictions), or None."""
    keep, left_out = [], {}
    for j, lab in enumerate(labels):
        if kind == "regression":
            why = None if len(Y_test) > 1 and np.ptp(Y_test[:, j]) > 0 else "constant target in the test split"
        else:
            why = label_problem(Y_test[:, j])
        if why is None:
            keep.append(j)
        else:
            left_out[lab] = why
    na = None
    if not keep:
        na = next(iter(left_out.values())) if len(labels) == 1 else \
            "no label can be scored: " + "; ".join(f"{k}: {v}" for k, v in left_out.items())
    elif kind != "regression" and set(keep) <= set(untrainable):
        na = "untrainable: the training rows hold one class"
    return keep, left_out, na


def _fit_predict(name, features, predictors, probe, Y, train, test, patient_ids, kind, seed):
    """``(P, params, untrainable)`` of encoder or predictor ``name`` trained on ``train``, predicting ``test``."""
    if name in predictors:
        P = np.asarray(predictors[name](Y, train, test, patient_ids, seed))
        info = dict(getattr(predictors[name], "last_info", {}))
        untrainable = info.pop("untrainable_labels", [])
        return P, {"model": "trained on the labels", **info}, untrainable
    X = np.asarray(features[name], dtype=np.float64)
    params = _choose_params(probe, X, Y, train, patient_ids, kind, seed)
    model = make_probe(probe, **params).fit(X[train], Y[train])
    return _predict(model, X[test], kind), params, getattr(model, "untrainable_", [])


def _comparison(row, ref, boots, metrics) -> dict:
    """Differences of every metric between ``row`` and ``ref``, with paired-bootstrap CIs."""
    comp = {"encoder": row["encoder"], "reference": ref["encoder"], "n/a": row.get("n/a") or ref.get("n/a")}
    for m in metrics:
        comp[m] = row[m] - ref[m]
        comp[f"{m}_ci"] = paired_ci(boots[row["encoder"]][m], boots[ref["encoder"]][m])
        if not np.isfinite(row[f"{m}_ci"][0]):  # no CI for the row (one test patient): none for the difference
            comp[f"{m}_ci"] = [float("nan")] * 2
    return comp
