"""Linear probes over frozen embeddings, evaluated the way risk models should be.

- Splits are by patient and checked in code (:func:`assert_no_patient_leakage`): no patient
  ever has recordings on both sides, also after label-fraction subsampling.
- Label fractions subsample *patients* of the training side, repeated with several seeds.
- The regularisation strength is chosen on a patient-level validation split carved out of
  the training side only; the test side is touched once.
- Macro AUROC comes with a 95 % CI from a patient-level bootstrap of the test side (whole
  patients are resampled, so recordings of one patient move together). Comparisons between
  encoders use the *same* bootstrap resamples (a paired CI of the difference).
- Labels that cannot be scored in a cell (one class or fewer than k rows of a class in the test
  split, untrainable in every fit: :mod:`tscl.probes.cells`) are left out of its macro average and
  named under the table; a cell with no label left prints ``n/a (why)``, never a number.

The protocol's pieces live in :mod:`tscl.probes.protocol` and the probe models in
:mod:`tscl.probes.models`; both are re-exported here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .cells import check_finite, fmt, label_problem, untrainable_problem
from .bootstrap import Resamples, macro_auroc_resampled
from .models import C_GRID, LinearProbe
from .protocol import (
    PatientLeakageError,
    PretrainingOverlapError,
    assert_no_patient_leakage,
    check_names,
    check_pretraining_overlap,
    choose_on_validation,
    paired_ci,
    patient_split,
    percentile_ci,
    prepare_split,
    pretrained_patients,
    subsample_patients,
)

__all__ = [
    "PatientLeakageError", "assert_no_patient_leakage", "patient_split", "subsample_patients",
    "PretrainingOverlapError", "pretrained_patients", "check_pretraining_overlap", "choose_on_validation",
    "LinearProbe", "weighted_auroc", "macro_auroc", "bootstrap_macro_auroc", "ProbeResult", "run_probe",
]


def weighted_auroc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC under record weights, for many weightings at once (ties count one half).

    ``y [n]`` binary, ``scores [n]``, ``weights [B, n]`` -> ``[B]`` AUROCs (NaN where a
    weighting leaves no positive or no negative). With all weights 1 this is the ordinary
    Mann-Whitney AUROC; bootstrap resamples are multinomial counts as weights. Rank-based: one
    sort, then O(n) per weighting (:mod:`tscl.probes.bootstrap`).
    """
    return macro_auroc_resampled(np.asarray(y)[:, None], [np.asarray(scores)[:, None]],
                                 Resamples.from_weights(weights))


def macro_auroc(Y: np.ndarray, P: np.ndarray, weights=None) -> np.ndarray:
    """Mean AUROC over labels (labels without both classes are left out): ``[B]`` or a scalar.

    ``weights``: record weights ``[B, n]`` or :class:`~tscl.probes.bootstrap.Resamples`; None: all ones."""
    Y, P = np.asarray(Y), np.asarray(P)
    resamples = _as_resamples(np.ones((1, len(Y))) if weights is None else weights)
    out = macro_auroc_resampled(Y, [P], resamples)
    return float(out[0]) if weights is None else out


def bootstrap_macro_auroc(Y, P_repeats, groups, n_boot: int = 1000, seed: int = 0, weights=None) -> np.ndarray:
    """``[n_boot]`` macro AUROCs, each averaged over the repeats' predictions ``P_repeats [R, n, L]``.

    ``weights``: the resamples (:class:`~tscl.probes.bootstrap.Resamples` or dense ``[B, n]``);
    None draws a patient-level bootstrap of ``groups``."""
    W = Resamples.patient_bootstrap(groups, n_boot, seed) if weights is None else _as_resamples(weights)
    return macro_auroc_resampled(Y, P_repeats, W)


def _as_resamples(weights) -> Resamples:
    return weights if isinstance(weights, Resamples) else Resamples.from_weights(weights)


def _choose_C(X, Y, rows, patient_ids, grid, seed) -> float:
    """Pick the logistic regression's C by validation macro AUROC."""
    def score(C, fit_rows, val_rows):
        P = LinearProbe(C=C).fit(X[fit_rows], Y[fit_rows]).predict_proba(X[val_rows])
        return macro_auroc(Y[val_rows], P)

    return choose_on_validation(grid, score, rows, patient_ids, seed)


@dataclass
class ProbeResult:
    """Every number of a probe run; ``rows`` are (encoder, fraction) cells, ``comparisons`` paired differences."""

    labels: list
    rows: list = field(default_factory=list)
    comparisons: list = field(default_factory=list)
    split: dict = field(default_factory=dict)

    def cell(self, encoder: str, fraction: float) -> dict:
        return next(r for r in self.rows if r["encoder"] == encoder and r["fraction"] == fraction)

    def to_json(self) -> str:
        return json.dumps({"labels": self.labels, "split": self.split, "rows": self.rows,
                           "comparisons": self.comparisons}, indent=2)

    def to_markdown(self) -> str:
        encoders = list(dict.fromkeys(r["encoder"] for r in self.rows))
        fractions = sorted({r["fraction"] for r in self.rows})
        head = "| encoder | " + " | ".join(f"{100 * f:g} % labels" for f in fractions) + " |"
        lines = [head, "|---" * (len(fractions) + 1) + "|"]
        no_ci = self.split.get("no_ci")
        for e in encoders:
            cells = [fmt(r["auroc"], (r["ci_low"], r["ci_high"]), r.get("n/a"), no_ci=no_ci)
                     for r in (self.cell(e, f) for f in fractions)]
            lines.append(f"| {e} | " + " | ".join(cells) + " |")
        if self.comparisons:
            lines += ["", "| comparison | labels | Δ macro AUROC [95 % CI] |", "|---|---|---|"]
            for c in self.comparisons:
                lines.append(f"| {c['encoder']} − {c['reference']} | {100 * c['fraction']:g} % | "
                             f"{fmt(c['delta'], (c['ci_low'], c['ci_high']), c.get('n/a'), signed=True, no_ci=no_ci)} |")
        return "\n".join(lines + _left_out_lines(self.rows, self.labels))


def _left_out_lines(rows: list, labels: list) -> list:
    """One line per label left out of the macro averages (and why), and per label no fit of a cell could learn."""
    left = {(lab, why) for r in rows for lab, why in (r.get("left_out") or {}).items()}
    untrained: dict = {}
    for r in rows:
        for lab, why in (r.get("untrainable") or {}).items():
            untrained.setdefault((lab, why), set()).add(r["fraction"])
    out = [f"- {lab} is left out of the macro AUROC: {why}" for lab, why in sorted(left)]
    out += [f"- {lab} at {', '.join(f'{100 * f:g} %' for f in sorted(fr))}: {why}; its prevalence prediction counts as "
            "AUROC 0.5" for (lab, why), fr in sorted(untrained.items())]
    return [""] + out if out else []


def run_probe(features: dict, Y, labels, patient_ids, *, fractions=(0.01, 0.1, 1.0), repeats: int = 3,
              test_fraction: float = 0.3, n_boot: int = 1000, C_grid=C_GRID, random_state: int = 0,
              reference: str | None = None, split: tuple | None = None, predictors: dict | None = None,
              seed: int | None = None) -> ProbeResult:
    """Probe every encoder's features on the same patient-level split and label subsamples.

    ``features`` maps encoder names to ``[n, d]`` arrays aligned with ``Y [n, L]`` and
    ``patient_ids [n]``. ``split`` may give ``(train_rows, test_rows)`` (e.g. PTB-XL folds);
    otherwise a random patient-level split is drawn. ``reference`` names the encoder the
    others are compared against (paired bootstrap of the macro-AUROC difference).
    ``predictors`` maps further names to models trained on the rows themselves, called as
    ``predictor(Y, train_rows, test_rows, patient_ids, seed) -> P [len(test_rows), L]`` (e.g.
    :class:`~tscl.probes.supervised.SupervisedBaseline`); they get the same label subsamples,
    test side and bootstrap resamples as the probes. ``seed`` is an alias of ``random_state``.
    """
    seed = random_state if seed is None else seed
    predictors = check_names(features, predictors)
    Y = np.asarray(Y)
    patient_ids = np.asarray(patient_ids)
    if Y.ndim != 2 or Y.shape[1] != len(labels):
        raise ValueError(f"Y must be [n, {len(labels)}], got {Y.shape}")
    for name, X in features.items():
        if len(X) != len(Y):
            raise ValueError(f"features {name!r} have {len(X)} rows for {len(Y)} labels")
        check_finite(X, f"features {name!r}")
    train, test = split if split is not None else patient_split(patient_ids, test_fraction, seed)
    W, summary = prepare_split(patient_ids, train, test, n_boot, seed)  # W shared by every encoder: paired CIs
    if summary["test_patients"] < 2:  # a patient-level bootstrap of one patient cannot vary
        summary["no_ci"] = f"{summary['test_patients']} test patient"
    result = ProbeResult(labels=list(labels), split=summary)
    names = [*features, *predictors]
    for fraction in fractions:
        subsets = [subsample_patients(train, patient_ids, fraction, seed=seed + 100 * r)
                   for r in range(1 if fraction == 1 else repeats)]
        for rows in subsets:
            assert_no_patient_leakage(patient_ids, rows, test)
        boots = {}
        for name in names:
            fits = [_fit_predict(name, features, predictors, Y, rows, test, patient_ids, C_grid, seed + r)
                    for r, rows in enumerate(subsets)]
            row, boots[name] = _cell(name, fraction, fits, subsets, Y[test], W, labels, patient_ids)
            if "no_ci" in summary:  # every resample is the one patient: the interval would be a point
                row["ci_low"] = row["ci_high"] = float("nan")
            result.rows.append(row)
        if reference in boots:
            result.comparisons += [_comparison(result, name, reference, fraction, boots)
                                   for name in names if name != reference]
    return result


def _fit_predict(name, features, predictors, Y, rows, test, patient_ids, C_grid, seed) -> tuple[np.ndarray, list]:
    """Test-side predictions of ``name`` trained on ``rows``, and the labels (indices) it could not learn."""
    if name in predictors:
        P = np.asarray(predictors[name](Y, rows, test, patient_ids, seed))
        return P, [j for j in range(Y.shape[1]) if len(np.unique(Y[rows, j])) < 2]
    X = np.asarray(features[name])
    probe = LinearProbe(C=_choose_C(X, Y, rows, patient_ids, list(C_grid), seed)).fit(X[rows], Y[rows])
    return probe.predict_proba(X[test]), list(probe.untrainable_)


def _scorable(fits, Y_test, labels) -> tuple[list, dict, dict]:
    """The labels a cell's macro AUROC averages (those the test split can score, the same in every cell),
    ``{label: why}`` for the others, and ``{label: why}`` for kept labels no fit could learn (their constant
    prevalence prediction counts as AUROC 0.5: what that label budget gives)."""
    test_problem = [label_problem(Y_test[:, j]) for j in range(len(labels))]
    keep = [j for j in range(len(labels)) if test_problem[j] is None]
    left_out = {labels[j]: test_problem[j] for j in range(len(labels)) if test_problem[j] is not None}
    untrainable = {labels[j]: untrainable_problem(len(fits)) for j in keep if all(j in u for _, u in fits)}
    return keep, left_out, untrainable


def _cell(name, fraction, fits, subsets, Y_test, W, labels, patient_ids) -> tuple[dict, np.ndarray]:
    """One (encoder, fraction) row over the repeats' predictions, and its bootstrap macro AUROCs; ``n/a`` with
    the reason when no label can be scored or every scored label was untrainable in every fit."""
    keep, left_out, untrainable = _scorable(fits, Y_test, labels)
    na = None
    if not keep:
        na = "; ".join(sorted(set(left_out.values()))) if len(labels) == 1 else \
            "no label can be scored: " + "; ".join(f"{k}: {v}" for k, v in left_out.items())
    elif len(untrainable) == len(keep):
        na = untrainable_problem(len(fits))
    preds = [P[:, keep] for P, _ in fits]
    point = [macro_auroc(Y_test[:, keep], P) for P in preds] if not na else [float("nan")]
    b = bootstrap_macro_auroc(Y_test[:, keep], preds, None, weights=W) if not na else np.full(len(W), np.nan)
    per_label = dict.fromkeys(labels, float("nan"))
    for i, j in enumerate(keep):
        per_label[labels[j]] = float(np.mean([macro_auroc(Y_test[:, [j]], P[:, [i]]) for P in preds]))
    ci_low, ci_high = percentile_ci(b)
    return {
        "encoder": name, "fraction": fraction, "auroc": float(np.mean(point)), "ci_low": ci_low, "ci_high": ci_high,
        "n/a": na, "left_out": left_out if not na else {}, "untrainable": untrainable if not na else {},
        "std_over_repeats": float(np.std(point)), "repeats": len(fits),
        "train_patients": int(np.mean([len(np.unique(patient_ids[rows])) for rows in subsets])),
        "untrainable_label_fits": sum(len(u) for _, u in fits),
        "per_label": per_label,
    }, b


def _comparison(result, name, reference, fraction, boots) -> dict:
    ci_low, ci_high = paired_ci(boots[name], boots[reference])
    if "no_ci" in result.split:
        ci_low = ci_high = float("nan")
    cell, ref = result.cell(name, fraction), result.cell(reference, fraction)
    na = cell.get("n/a") or ref.get("n/a")
    return {"encoder": name, "reference": reference, "fraction": fraction,
            "delta": float("nan") if na else cell["auroc"] - ref["auroc"],
            "ci_low": ci_low, "ci_high": ci_high, "n/a": na}
