"""The probe metrics under one set of record weights: their definitions, and the point estimates the tables print.

Every metric takes record weights ``w`` (all ones for the point estimate; a patient-level bootstrap
resample's counts otherwise), and multi-label metrics are macro averages over the labels with both
classes present:

- AUROC: weighted Mann-Whitney statistic, ties counting one half (:func:`weighted_auroc`).
- AUPRC: average precision ``sum_k (R_k - R_{k-1}) P_k`` over score thresholds (weighted).
- Brier score: ``sum_i w_i (p_i - y_i)^2 / sum_i w_i``.
- Accuracy at the threshold 0.5: ``sum_i w_i [(p_i > 0.5) = y_i] / sum_i w_i`` (MedMNIST's rule for binary
  tasks: a probability of exactly 0.5 calls the negative class). Not among a kind's default metrics (a
  probe's probabilities are rarely calibrated to that threshold); a table asks for it by name.
- Expected calibration error with ``B`` equal-width bins: ``sum_b (W_b / W) |ybar_b - pbar_b|``,
  ``W_b`` the weight in bin ``b``, ``ybar_b`` and ``pbar_b`` its weighted event rate and mean
  predicted probability.
- Regression: MAE ``sum w |y - yhat| / sum w`` and ``R^2 = 1 - sum w (y - yhat)^2 / sum w (y - ybar_w)^2``
  (NaN when the weighted targets are all equal).
- Multi-class (``kind="multiclass"``: one class per row, one 0/1 label column per class) also scores the
  decision at the argmax of the predictions: with ``TP_k``, ``FP_k``, ``FN_k`` the weighted counts of class
  ``k``, ``F1_k = 2 TP_k / (2 TP_k + FP_k + FN_k)``, sensitivity ``Se_k = TP_k / (TP_k + FN_k)``, positive
  predictivity ``PPV_k = TP_k / (TP_k + FP_k)`` (NaN where the denominator is 0) and accuracy (weight of the
  rows decided right over all). Metric names: ``f1`` (the mean of ``F1_k`` over the classes), ``f1:a+b+c``
  (the mean over the classes named: the CinC 2017 challenge score is ``f1:normal+af+other``), ``se:<class>``,
  ``ppv:<class>``, ``accuracy``.

The bootstrap computes them for every resample at once (:mod:`tscl.probes.bootstrap`: one sort per
label, then O(n) per resample); the single-weighting functions below are the definitions the tests
hold it to.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

from .bootstrap import (Resamples, _nanmean, _ratio, classification_resampled, decision_resampled,
                        macro_auroc_resampled, regression_resampled)

__all__ = ["weighted_auroc", "macro_auroc", "bootstrap_macro_auroc", "weighted_auprc", "brier_score",
           "expected_calibration_error", "reliability_curve", "mae", "r2", "classification_metrics",
           "regression_metrics", "accuracy", "CLASSIFICATION_METRICS", "REGRESSION_METRICS", "OPTIONAL_METRICS",
           "MULTICLASS_METRICS", "METRIC_NAMES", "metrics_for", "known_metrics", "check_metrics", "metric_name",
           "is_decision_metric", "decision_metrics"]

CLASSIFICATION_METRICS = ("auroc", "auprc", "brier", "ece")
REGRESSION_METRICS = ("mae", "r2")
OPTIONAL_METRICS = {"classification": ("accuracy",), "regression": ()}  # scored only when a table names them
MULTICLASS_METRICS = ("auroc", "f1", "accuracy")  # the defaults of kind="multiclass"
DECISION_METRICS = ("f1", "accuracy")  # multi-class: of the argmax decision; plus the per-class forms of PER_CLASS
PER_CLASS = {"f1": "F1", "se": "Se", "ppv": "+P"}  # "f1:a+b", "se:a", "ppv:a"
METRIC_NAMES = {"auroc": "AUROC", "auprc": "AUPRC", "brier": "Brier", "ece": "ECE", "mae": "MAE", "r2": "R²",
                "f1": "macro F1", "accuracy": "accuracy"}


def metrics_for(kind: str) -> tuple:
    """The metrics of a target kind: ``regression`` -> MAE, R²; ``binary`` / ``multilabel`` -> AUROC, AUPRC,
    Brier, ECE; ``multiclass`` -> macro AUROC, macro F1 and accuracy of the argmax decision."""
    return {"regression": REGRESSION_METRICS, "multiclass": MULTICLASS_METRICS}.get(kind, CLASSIFICATION_METRICS)


def known_metrics(kind: str) -> tuple:
    """Every plain metric name a cell of this kind can report: :func:`metrics_for`'s and the optional ones
    (binary and multi-label: accuracy at the threshold 0.5); multi-class adds the per-class forms
    (:func:`check_metrics`)."""
    if kind == "multiclass":
        return CLASSIFICATION_METRICS + DECISION_METRICS
    return metrics_for(kind) + OPTIONAL_METRICS["regression" if kind == "regression" else "classification"]


def is_decision_metric(metric: str, kind: str) -> bool:
    """Whether ``metric`` scores a multi-class argmax decision rather than the scores (binary and
    multi-label accuracy is scored at the threshold 0.5 with the other score metrics)."""
    if kind != "multiclass":
        return False
    return metric in DECISION_METRICS or metric.partition(":")[0] in PER_CLASS and ":" in metric


def check_metrics(metrics, kind: str, labels) -> tuple:
    """``metrics`` as a tuple, each one refused (``ValueError``, one line) unless ``kind`` has it; per-class
    metrics must name label columns (``se`` and ``ppv`` exactly one)."""
    allowed = known_metrics(kind)
    for m in metrics:
        name, colon, classes = m.partition(":")
        if m in allowed:
            continue
        if not (kind == "multiclass" and colon and name in PER_CLASS):
            extra = ", f1:<class>[+<class>...], se:<class>, ppv:<class>" if kind == "multiclass" else ""
            raise ValueError(f"metric {m!r} is not one of a {kind} task's: {', '.join(allowed)}{extra}")
        named = classes.split("+")
        unknown = [c for c in named if c not in labels]
        if unknown or (name != "f1" and len(named) != 1):
            raise ValueError(f"metric {m!r}: " + (f"{unknown[0]!r} is not a label ({', '.join(labels)})" if unknown
                                                  else f"{name} is of one class"))
    return tuple(metrics)


def metric_name(metric: str) -> str:
    """How a table heads ``metric``: ``AUROC``, ``F1 (normal+af+other)``, ``Se (aami_S)``."""
    name, colon, classes = metric.partition(":")
    return f"{PER_CLASS[name]} ({classes})" if colon and name in PER_CLASS else METRIC_NAMES.get(metric, metric)


def decision_metrics(Y, P, resamples: Resamples, labels, metrics) -> dict:
    """``{metric: [B]}`` for the decision metrics among ``metrics`` (see the module docstring) of one class per row
    (``Y [n, K]`` one-hot, ``labels`` its K column names) decided at the argmax of ``P [n, K]``."""
    c = decision_resampled(Y, P, resamples)
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    per = {"f1": _ratio(2 * tp, 2 * tp + fp + fn), "se": _ratio(tp, tp + fn), "ppv": _ratio(tp, tp + fp)}
    labels = list(labels)
    out = {}
    for m in metrics:
        name, colon, classes = m.partition(":")
        if m == "accuracy":
            out[m] = _ratio(c["correct"], c["total"])
        elif m == "f1" or (colon and name in PER_CLASS):
            cols = [labels.index(k) for k in classes.split("+")] if colon else list(range(len(labels)))
            out[m] = _nanmean(per[name][:, cols], axis=1)
    return out


def as_resamples(weights) -> Resamples:
    """``weights`` as :class:`Resamples` (dense ``[B, n]`` record weights are wrapped)."""
    return weights if isinstance(weights, Resamples) else Resamples.from_weights(weights)


def weighted_auroc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC under record weights, for many weightings at once (ties count one half).

    ``y [n]`` binary, ``scores [n]``, ``weights [B, n]`` -> ``[B]`` AUROCs (NaN where a
    weighting leaves no positive or no negative). With all weights 1 this is the ordinary
    Mann-Whitney AUROC; bootstrap resamples are multinomial counts as weights.
    """
    return macro_auroc_resampled(np.asarray(y)[:, None], [np.asarray(scores)[:, None]],
                                 Resamples.from_weights(weights))


def macro_auroc(Y: np.ndarray, P: np.ndarray, weights=None) -> np.ndarray:
    """Mean AUROC over labels (labels without both classes are left out): ``[B]`` or a scalar.

    ``weights``: record weights ``[B, n]`` or :class:`~tscl.probes.bootstrap.Resamples`; None: all ones."""
    Y, P = np.asarray(Y), np.asarray(P)
    out = macro_auroc_resampled(Y, [P], as_resamples(np.ones((1, len(Y))) if weights is None else weights))
    return float(out[0]) if weights is None else out


def bootstrap_macro_auroc(Y, P_repeats, groups, n_boot: int = 1000, seed: int = 0, weights=None) -> np.ndarray:
    """``[n_boot]`` macro AUROCs, each averaged over the repeats' predictions ``P_repeats [R, n, L]``.

    ``weights``: the resamples (:class:`~tscl.probes.bootstrap.Resamples` or dense ``[B, n]``);
    None draws a patient-level bootstrap of ``groups``."""
    W = Resamples.patient_bootstrap(groups, n_boot, seed) if weights is None else as_resamples(weights)
    return macro_auroc_resampled(Y, P_repeats, W)


def weighted_auprc(y, p, w) -> float:
    y = np.asarray(y).astype(bool)
    if w[y].sum() <= 0 or w[~y].sum() <= 0:
        return float("nan")
    keep = w > 0
    return float(average_precision_score(y[keep], p[keep], sample_weight=w[keep]))


def brier_score(y, p, w) -> float:
    return float(np.sum(w * (p - y) ** 2) / np.sum(w))


def accuracy(y, p, w) -> float:
    """``sum w [(p > 0.5) = y] / sum w``: the share of records (by weight) called right at the threshold 0.5."""
    y, p, w = (np.asarray(a, dtype=np.float64) for a in (y, p, w))
    return float(np.sum(w * ((p > 0.5) == (y > 0.5))) / np.sum(w))


def reliability_curve(y, p, w=None, n_bins: int = 10) -> dict:
    """Per equal-width bin: ``mean_pred``, ``event_rate``, ``weight`` (empty bins have weight 0, NaN rates)."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    w = np.ones_like(p) if w is None else np.asarray(w, dtype=np.float64)
    b = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    W = np.bincount(b, weights=w, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(b, weights=w * p, minlength=n_bins) / W
        rate = np.bincount(b, weights=w * y, minlength=n_bins) / W
    return {"mean_pred": mean_pred, "event_rate": rate, "weight": W, "edges": np.linspace(0, 1, n_bins + 1)}


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
    """Macro AUROC, AUPRC, Brier, ECE and accuracy over labels with both classes (under weights ``w``)."""
    w = np.ones(len(Y)) if w is None else w
    return {m: float(v[0]) for m, v in classification_resampled(Y, P, Resamples.from_weights(w)).items()}


def regression_metrics(Y, Yhat, w=None) -> dict:
    """MAE and R^2, averaged over target columns."""
    w = np.ones(len(Y)) if w is None else w
    return {m: float(v[0]) for m, v in regression_resampled(Y, Yhat, Resamples.from_weights(w)).items()}
