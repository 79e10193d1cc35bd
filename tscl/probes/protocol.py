"""The evaluation protocol every probe shares: patient-level splits checked in code, label
fractions that subsample patients, hyper-parameters chosen on the data's validation split or on
one carved out of the training side (:func:`choose_params`, which says which), and a patient-level
bootstrap of the test side drawn once and shared by every encoder, so comparisons between encoders
are paired (the CI of the difference on the same resamples).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .bootstrap import Resamples

__all__ = [
    "PatientLeakageError", "assert_no_patient_leakage", "PretrainingOverlapError", "pretrained_patients",
    "check_pretraining_overlap", "patient_split", "subsample_patients", "bootstrap_weights", "choose_params",
    "MIN_TUNING_PATIENTS", "stratified_patient_split", "check_names", "prepare_split", "percentile_ci", "paired_ci",
]


class PatientLeakageError(AssertionError, ValueError):
    """A patient has recordings on both sides of a split (a failed check of the protocol, and a refused input)."""


def assert_no_patient_leakage(patient_ids, *row_sets) -> None:
    """Raise :class:`PatientLeakageError` if any patient appears in two of ``row_sets``."""
    patient_ids = np.asarray(patient_ids)
    seen: dict = {}
    for side, rows in enumerate(row_sets):
        for p in np.unique(patient_ids[np.asarray(rows, dtype=np.int64)]):
            if p in seen and seen[p] != side:
                name = p.item() if isinstance(p, np.generic) else p
                raise PatientLeakageError(f"patient {name!r} is on both side {seen[p]} and side {side} of the split")
            seen[p] = side


class PretrainingOverlapError(ValueError):
    """The encoder under evaluation was pretrained on some of the probe's test patients."""


def pretrained_patients(run_dir) -> set[str] | None:
    """The patients a run folder's encoder was pretrained on (its ``patients.json``), or None if not recorded."""
    path = Path(run_dir) / "patients.json"
    return set(json.loads(path.read_text())["patients"]) if path.exists() else None


def check_pretraining_overlap(pretrained, test_patient_ids, *, allow: bool = False, what: str = "the encoder") -> list:
    """Refuse (:class:`PretrainingOverlapError`) when ``test_patient_ids`` share a patient with ``pretrained``
    (an iterable of patient ids, e.g. :func:`pretrained_patients`); ``allow`` returns the overlap instead."""
    if pretrained is None:
        return []
    overlap = sorted(set(map(str, np.unique(np.asarray(test_patient_ids).astype(str)))) & set(map(str, pretrained)))
    if overlap and not allow:
        raise PretrainingOverlapError(
            f"{what} was pretrained on {len(overlap)} of the probe's test patients (e.g. {overlap[:5]}); pretrain on "
            "the training split (tscl pretrain --split train) or pass --allow-test-overlap if you mean it")
    return overlap


def patient_split(patient_ids, test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a random patient-level split: ``(train_rows, test_rows)``."""
    patient_ids = np.asarray(patient_ids)
    patients = np.unique(patient_ids)
    if len(patients) < 2:
        raise ValueError(f"a patient-level split needs at least 2 patients, got {len(patients)}")
    rng = np.random.default_rng(seed)
    n_test = min(len(patients) - 1, max(1, int(round(test_fraction * len(patients)))))
    test_patients = rng.choice(patients, size=n_test, replace=False)
    is_test = np.isin(patient_ids, test_patients)
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    assert_no_patient_leakage(patient_ids, train, test)
    return train, test


def subsample_patients(rows, patient_ids, fraction: float, seed: int = 0, min_patients: int = 2) -> np.ndarray:
    """Keep all recordings of a random ``fraction`` of the patients in ``rows`` (at least ``min_patients``)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    rows = np.asarray(rows)
    patient_ids = np.asarray(patient_ids)
    patients = np.unique(patient_ids[rows])
    if fraction == 1:
        return rows
    n = min(len(patients), max(min_patients, int(round(fraction * len(patients)))))
    keep = np.random.default_rng(seed).choice(patients, size=n, replace=False)
    return rows[np.isin(patient_ids[rows], keep)]


def bootstrap_weights(groups, n_boot: int, seed: int) -> np.ndarray:
    """Patient-level bootstrap ``[n_boot, n]``: whole patients are resampled; a record's weight is its patient's count.

    Dense, for small data; the probes keep the draws as :class:`~tscl.probes.bootstrap.Resamples`
    (the same draws, one byte per patient and resample)."""
    return Resamples.patient_bootstrap(groups, n_boot, seed).record_weights()


MIN_TUNING_PATIENTS = 10  # patients a validation split (given, or carved out of training) needs to choose on


def choose_params(grid, predict, score, rows, patient_ids, seed: int, val_rows=None) -> tuple:
    """The entry of ``grid`` that scores best, and how it was chosen (a phrase for the report).

    ``predict(entry, fit_rows, pred_rows) -> P`` fits on ``fit_rows`` and predicts ``pred_rows``;
    ``score(pred_rows, P)`` scores the predictions (higher is better; NaN never wins). The test side is
    never touched. In order:

    - ``val_rows`` given (a validation split of the data, e.g. PTB-XL fold 9): fit on ``rows``, score there;
    - ``rows`` holding at least :data:`MIN_TUNING_PATIENTS` patients: a patient-level split of them, 25 %
      of the patients scoring, 75 % fitting (nested: only the training rows are used);
    - 3 to 9 patients: leave-one-patient-out over them, every patient predicted once by a fit on the
      others, scored on the pooled predictions;
    - fewer: no choice is possible and the middle of the grid is returned, saying so.
    """
    grid = list(grid)
    rows = np.asarray(rows)
    n_patients = len(np.unique(patient_ids[rows]))
    if len(grid) == 1:
        return grid[0], "fixed (one value)"
    if val_rows is not None:
        val_rows = np.asarray(val_rows)
        how = f"on the validation split ({len(val_rows)} rows of {len(np.unique(patient_ids[val_rows]))} patients)"
        return _best(grid, [score(val_rows, predict(e, rows, val_rows)) for e in grid]), how
    if n_patients >= MIN_TUNING_PATIENTS:
        fit_local, val_local = patient_split(patient_ids[rows], test_fraction=0.25, seed=seed)
        fit_rows, held = rows[fit_local], rows[val_local]
        how = f"nested: 25 % of the {n_patients} training patients held out"
        return _best(grid, [score(held, predict(e, fit_rows, held)) for e in grid]), how
    if n_patients >= 3:
        folds = [rows[patient_ids[rows] == p] for p in np.unique(patient_ids[rows])]
        order = np.concatenate(folds)
        scores = [score(order, np.concatenate([predict(e, rows[patient_ids[rows] != patient_ids[f[0]]], f)
                                               for f in folds])) for e in grid]
        return _best(grid, scores), f"nested: leave-one-patient-out over the {n_patients} training patients"
    return grid[len(grid) // 2], f"untuned: {n_patients} training patient(s) cannot choose; the middle of the grid"


def _best(grid, scores):
    return grid[int(np.argmax(np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf)))]


def stratified_patient_split(patient_ids, Y, test_fraction: float = 0.3, seed: int = 0, tries: int = 200):
    """A patient-level split whose both sides hold both classes of every binary label, when one exists
    among seeds ``seed .. seed + tries - 1``; else the split of ``seed``. Regression targets: ``seed``."""
    patient_ids = np.asarray(patient_ids)
    Y = np.asarray(Y)
    binary = np.isin(Y, (0, 1)).all()
    for s in range(seed, seed + (tries if binary else 1)):
        train, test = patient_split(patient_ids, test_fraction, s)
        if not binary or all(0 < Y[rows, j].sum() < len(rows) for rows in (train, test) for j in range(Y.shape[1])):
            return train, test
    return patient_split(patient_ids, test_fraction, seed)


def check_names(features: dict, predictors: dict | None) -> dict:
    """``predictors`` as a dict, refused when a name is both a feature set and a predictor."""
    predictors = dict(predictors or {})
    clash = set(predictors) & set(features)
    if clash:
        raise ValueError(f"names used both as features and as predictors: {sorted(clash)}")
    return predictors


def prepare_split(patient_ids, train, test, n_boot: int, seed: int) -> tuple[Resamples, dict]:
    """Check ``(train, test)`` for leakage; the test side's patient-level bootstrap resamples (drawn with
    ``seed + 1``, one draw shared by every encoder) and the split's summary."""
    assert_no_patient_leakage(patient_ids, train, test)
    W = Resamples.patient_bootstrap(patient_ids[test], n_boot, seed + 1)
    return W, {"train_patients": int(len(np.unique(patient_ids[train]))),
               "test_patients": int(len(np.unique(patient_ids[test]))),
               "train_records": int(len(train)), "test_records": int(len(test)), "bootstrap": n_boot}


def percentile_ci(values) -> list:
    """The 95 % percentile interval of the finite ``values`` (``[nan, nan]`` when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) else [np.nan] * 2


def paired_ci(boots, reference_boots) -> list:
    """CI of a difference from the same bootstrap resamples of two encoders (a paired comparison)."""
    return percentile_ci(np.asarray(boots, dtype=np.float64) - np.asarray(reference_boots, dtype=np.float64))
