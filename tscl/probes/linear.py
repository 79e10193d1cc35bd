"""Linear probes over frozen embeddings, evaluated the way risk models should be.

- Splits are by patient and checked in code (:func:`assert_no_patient_leakage`): no patient
  ever has recordings on both sides, also after label-fraction subsampling.
- Label fractions subsample *patients* of the training side, repeated with several seeds.
- The regularisation strength is chosen on a patient-level validation split carved out of
  the training side only; the test side is touched once.
- Macro AUROC comes with a 95 % CI from a patient-level bootstrap of the test side (whole
  patients are resampled, so recordings of one patient move together). Comparisons between
  encoders use the *same* bootstrap resamples (a paired CI of the difference).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = [
    "PatientLeakageError", "assert_no_patient_leakage", "patient_split", "subsample_patients",
    "LinearProbe", "weighted_auroc", "macro_auroc", "bootstrap_macro_auroc", "ProbeResult", "run_probe",
]


class PatientLeakageError(AssertionError):
    """A patient has recordings on both sides of a split."""


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
    import json
    from pathlib import Path

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


class LinearProbe(BaseEstimator, ClassifierMixin):
    """One standardised logistic regression per label (multi-label, binary targets).

    ``fit(X [n, d], Y [n, L])``; ``predict_proba(X) -> [n, L]`` probabilities of the positive
    class. A label with a single class in the training rows cannot be learned: it predicts
    that class's prevalence and is listed in ``untrainable_``.
    """

    def __init__(self, C: float = 0.1, max_iter: int = 2000):
        self.C = C
        self.max_iter = max_iter

    def fit(self, X, Y):
        X, Y = np.asarray(X), np.asarray(Y)
        if Y.ndim == 1:
            Y = Y[:, None]
        self.models_, self.untrainable_ = [], []
        for j in range(Y.shape[1]):
            y = Y[:, j]
            if len(np.unique(y)) < 2:
                self.models_.append(float(y.mean()) if len(y) else 0.5)
                self.untrainable_.append(j)
                continue
            model = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter))
            self.models_.append(model.fit(X, y))
        return self

    def predict_proba(self, X):
        X = np.asarray(X)
        cols = [np.full(len(X), m) if isinstance(m, float) else m.predict_proba(X)[:, 1] for m in self.models_]
        return np.stack(cols, axis=1)


def weighted_auroc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC under record weights, for many weightings at once (ties count one half).

    ``y [n]`` binary, ``scores [n]``, ``weights [B, n]`` -> ``[B]`` AUROCs (NaN where a
    weighting leaves no positive or no negative). With all weights 1 this is the ordinary
    Mann-Whitney AUROC; bootstrap resamples are multinomial counts as weights.
    """
    y = np.asarray(y).astype(bool)
    values, inverse = np.unique(scores, return_inverse=True)
    onehot = np.zeros((len(scores), len(values)))
    onehot[np.arange(len(scores)), inverse] = 1.0
    neg_by_value = (weights * ~y) @ onehot  # [B, U] negative weight at each distinct score
    below = np.cumsum(neg_by_value, axis=1) - neg_by_value
    credit = below + 0.5 * neg_by_value  # [B, U]
    w_pos = weights[:, y]
    num = (w_pos * credit[:, inverse[y]]).sum(axis=1)
    n_pos, n_neg = w_pos.sum(axis=1), (weights * ~y).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), num / (n_pos * n_neg), np.nan)


def macro_auroc(Y: np.ndarray, P: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean AUROC over labels (labels without both classes are left out): ``[B]`` or a scalar."""
    Y, P = np.asarray(Y), np.asarray(P)
    scalar = weights is None
    weights = np.ones((1, len(Y))) if weights is None else weights
    per_label = np.stack([weighted_auroc(Y[:, j], P[:, j], weights) for j in range(Y.shape[1])], axis=1)
    with np.errstate(invalid="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = np.nanmean(per_label, axis=1)
    return float(out[0]) if scalar else out


def _bootstrap_weights(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Patient-level bootstrap: resample whole patients; a record's weight is its patient's count."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    counts = np.random.default_rng(seed).multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)), size=n_boot)
    return counts[:, inverse].astype(np.float64)


def bootstrap_macro_auroc(Y, P_repeats, groups, n_boot: int = 1000, seed: int = 0, weights=None) -> np.ndarray:
    """``[n_boot]`` macro AUROCs, each averaged over the repeats' predictions ``P_repeats [R, n, L]``."""
    W = _bootstrap_weights(np.asarray(groups), n_boot, seed) if weights is None else weights
    return np.mean([macro_auroc(Y, P, W) for P in P_repeats], axis=0)


def choose_on_validation(grid, score, rows, patient_ids, seed):
    """The entry of ``grid`` whose ``score(entry, fit_rows, val_rows)`` is highest on a patient-level
    validation split carved out of ``rows`` (never the test side); NaN scores never win. With
    fewer than 10 patients there is no split to trust and the middle of the grid is returned."""
    if len(np.unique(patient_ids[rows])) < 10:
        return grid[len(grid) // 2]
    fit_local, val_local = patient_split(patient_ids[rows], test_fraction=0.25, seed=seed)
    fit_rows, val_rows = rows[fit_local], rows[val_local]
    scores = np.array([score(entry, fit_rows, val_rows) for entry in grid], dtype=float)
    return grid[int(np.argmax(np.nan_to_num(scores, nan=-np.inf)))]


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
        for e in encoders:
            cells = []
            for f in fractions:
                r = self.cell(e, f)
                cells.append(f"{r['auroc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
            lines.append(f"| {e} | " + " | ".join(cells) + " |")
        if self.comparisons:
            lines += ["", "| comparison | labels | Δ macro AUROC [95 % CI] |", "|---|---|---|"]
            for c in self.comparisons:
                lines.append(f"| {c['encoder']} − {c['reference']} | {100 * c['fraction']:g} % | "
                             f"{c['delta']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] |")
        return "\n".join(lines)


def run_probe(features: dict, Y, labels, patient_ids, *, fractions=(0.01, 0.1, 1.0), repeats: int = 3,
              test_fraction: float = 0.3, n_boot: int = 1000, C_grid=(0.01, 0.1, 1.0), seed: int = 0,
              reference: str | None = None, split: tuple | None = None, predictors: dict | None = None) -> ProbeResult:
    """Probe every encoder's features on the same patient-level split and label subsamples.

    ``features`` maps encoder names to ``[n, d]`` arrays aligned with ``Y [n, L]`` and
    ``patient_ids [n]``. ``split`` may give ``(train_rows, test_rows)`` (e.g. PTB-XL folds);
    otherwise a random patient-level split is drawn. ``reference`` names the encoder the
    others are compared against (paired bootstrap of the macro-AUROC difference).
    ``predictors`` maps further names to models trained on the rows themselves, called as
    ``predictor(Y, train_rows, test_rows, patient_ids, seed) -> P [len(test_rows), L]`` (e.g.
    :class:`~tscl.probes.supervised.SupervisedBaseline`); they get the same label subsamples,
    test side and bootstrap resamples as the probes.
    """
    predictors = dict(predictors or {})
    clash = set(predictors) & set(features)
    if clash:
        raise ValueError(f"names used both as features and as predictors: {sorted(clash)}")
    Y = np.asarray(Y)
    patient_ids = np.asarray(patient_ids)
    if Y.ndim != 2 or Y.shape[1] != len(labels):
        raise ValueError(f"Y must be [n, {len(labels)}], got {Y.shape}")
    for name, X in features.items():
        if len(X) != len(Y):
            raise ValueError(f"features {name!r} have {len(X)} rows for {len(Y)} labels")
    train, test = split if split is not None else patient_split(patient_ids, test_fraction, seed)
    assert_no_patient_leakage(patient_ids, train, test)
    W = _bootstrap_weights(patient_ids[test], n_boot, seed + 1)  # shared by every encoder: paired CIs
    result = ProbeResult(labels=list(labels), split={
        "train_patients": int(len(np.unique(patient_ids[train]))), "test_patients": int(len(np.unique(patient_ids[test]))),
        "train_records": int(len(train)), "test_records": int(len(test)), "bootstrap": n_boot})
    boots: dict = {}
    for fraction in fractions:
        n_rep = 1 if fraction == 1 else repeats
        for name in [*features, *predictors]:
            preds, point, n_pat, untrainable = [], [], [], 0
            for r in range(n_rep):
                rows = subsample_patients(train, patient_ids, fraction, seed=seed + 100 * r)
                assert_no_patient_leakage(patient_ids, rows, test)
                if name in predictors:
                    P = np.asarray(predictors[name](Y, rows, test, patient_ids, seed + r))
                    untrainable += sum(len(np.unique(Y[rows, j])) < 2 for j in range(Y.shape[1]))
                else:
                    X = np.asarray(features[name])
                    C = _choose_C(X, Y, rows, patient_ids, list(C_grid), seed + r)
                    probe = LinearProbe(C=C).fit(X[rows], Y[rows])
                    P = probe.predict_proba(X[test])
                    untrainable += len(probe.untrainable_)
                preds.append(P)
                point.append(macro_auroc(Y[test], P))
                n_pat.append(len(np.unique(patient_ids[rows])))
            b = np.mean([macro_auroc(Y[test], P, W) for P in preds], axis=0)
            boots[(name, fraction)] = b
            per_label = np.mean([[macro_auroc(Y[test][:, [j]], P[:, [j]]) for j in range(len(labels))] for P in preds], axis=0)
            result.rows.append({
                "encoder": name, "fraction": fraction, "auroc": float(np.mean(point)),
                "ci_low": float(np.nanpercentile(b, 2.5)), "ci_high": float(np.nanpercentile(b, 97.5)),
                "std_over_repeats": float(np.std(point)), "repeats": n_rep,
                "train_patients": int(np.mean(n_pat)), "untrainable_label_fits": untrainable,
                "per_label": {lab: float(v) for lab, v in zip(labels, per_label)},
            })
        if reference is not None and reference in {**features, **predictors}:
            for name in [*features, *predictors]:
                if name == reference:
                    continue
                d = boots[(name, fraction)] - boots[(reference, fraction)]
                result.comparisons.append({
                    "encoder": name, "reference": reference, "fraction": fraction,
                    "delta": result.cell(name, fraction)["auroc"] - result.cell(reference, fraction)["auroc"],
                    "ci_low": float(np.nanpercentile(d, 2.5)), "ci_high": float(np.nanpercentile(d, 97.5)),
                })
    return result
