"""The probe table: every encoder at every label fraction on the same patient-level split, the same label
subsamples and the same bootstrap resamples; the one place a probe is fitted and a cell is scored.

- Splits are by patient and checked in code (:func:`~tscl.probes.protocol.assert_no_patient_leakage`): no
  patient ever has rows on two sides (training, validation, each test set), also after label-fraction
  subsampling, which keeps or drops whole patients (repeated with ``repeats`` seeds below 100 %).
- A probe's hyper-parameter is chosen without the test side (:func:`~tscl.probes.protocol.choose_params`:
  on the validation split when one is given, else nested by patient inside the training rows, and every
  row says which ran).
- A cell's metrics are averaged over the repeats' predictions; its 95 % CI comes from a patient-level
  bootstrap of the test set (whole patients resampled), drawn once per test set and shared by every row,
  so a comparison with the reference row is paired (the CI of the difference on the same resamples).
- Rows trained on the labels themselves (the supervised baseline, fine-tuning) are ``predictors``:
  ``predictor(Y, train_rows, pred_rows, patient_ids, seed) -> P [len(pred_rows), L]``; they get the same
  subsamples, test sets and resamples.
- External validation: ``external`` names further test sets (rows of another dataset, concatenated after
  this one's); every fit predicts them as well, and each is scored on its own resamples beside the
  internal test split.
- Cells that cannot be a measurement are ``n/a (why)`` (:mod:`tscl.probes.cells`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .bootstrap import Resamples, classification_resampled, macro_auroc_resampled, regression_resampled
from .cells import MIN_CLASS_ROWS, check_finite, fmt, label_problem, untrainable_problem
from .metrics import check_metrics, decision_metrics, is_decision_metric, metric_name
from .models import C_GRID, PROBE_GRIDS, make_probe
from .protocol import (assert_no_patient_leakage, check_names, choose_params, paired_ci, patient_split, percentile_ci,
                       subsample_patients)

__all__ = ["ProbeResult", "run_probe", "fit_predict", "score_predictions", "score_pooled", "infer_kind", "INTERNAL"]

INTERNAL = "internal"  # the name of the dataset's own test split among the test sets


def infer_kind(Y) -> str:
    """``regression`` unless every target is 0 or 1 (NaN aside); then ``binary`` (one column) or ``multilabel``."""
    Y = np.asarray(Y, dtype=np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    values = Y[np.isfinite(Y)]
    if not np.isin(values, (0.0, 1.0)).all():
        return "regression"
    return "binary" if Y.shape[1] == 1 else "multilabel"


@dataclass
class ProbeResult:
    """Every number of a probe table: ``rows`` are (encoder, fraction, test set) cells, ``comparisons`` their
    paired differences with the reference row, ``split`` the internal split's summary and ``tests`` every
    test set's (internal first). Each row holds its ``metrics`` (``auroc`` and ``auroc_ci``, ...) and, for
    the first metric, ``ci_low`` / ``ci_high`` (and ``delta`` in a comparison)."""

    labels: list
    rows: list = field(default_factory=list)
    comparisons: list = field(default_factory=list)
    split: dict = field(default_factory=dict)
    kind: str = "multilabel"
    probe: str = "linear"
    metrics: tuple = ("auroc",)
    tests: dict = field(default_factory=dict)
    predictions: dict = field(default_factory=dict, repr=False)  # {test: {encoder: P}} at the largest fraction

    @property
    def primary(self) -> str:
        return self.metrics[0]

    def cell(self, encoder: str, fraction: float, test: str = INTERNAL) -> dict:
        return next(r for r in self.rows if r["encoder"] == encoder and r["fraction"] == fraction
                    and r.get("test", INTERNAL) == test)

    def to_json(self) -> str:
        return json.dumps({"labels": self.labels, "kind": self.kind, "probe": self.probe, "metrics": list(self.metrics),
                           "split": self.split, "tests": self.tests, "rows": self.rows,
                           "comparisons": self.comparisons}, indent=2, default=_json_value)

    def to_markdown(self, metrics_table: bool = True) -> str:
        """The primary metric per encoder and fraction (each test set side by side) with the comparisons; with
        ``metrics_table`` and more than one metric, every metric at 100 % labels (that table alone when 100 % is the
        only fraction); the labels left out."""
        tests = list(self.tests) or [INTERNAL]
        fractions = {r["fraction"] for r in self.rows}
        full = metrics_table and len(self.metrics) > 1 and 1.0 in fractions
        lines = [] if full and fractions == {1.0} else self._efficiency(tests) + self._deltas(tests) + [""]
        lines = (lines + self._metrics_table(tests)) if full else lines[:-1]
        return "\n".join(lines + _left_out_lines(self.rows, self.labels, "macro AUROC" if self.metrics == ("auroc",)
                                                  else "averages"))

    def _encoders(self) -> list:
        return list(dict.fromkeys(r["encoder"] for r in self.rows))

    def _no_ci(self, test: str):
        return self.tests.get(test, self.split).get("no_ci")

    def _efficiency(self, tests: list) -> list:
        fractions = sorted({r["fraction"] for r in self.rows})
        cols = [(f, t) for f in fractions for t in tests]
        name = "" if self.primary == "auroc" else f"{metric_name(self.primary)}, "
        head = [f"{name}{100 * f:g} % labels" + (f" ({t})" if len(tests) > 1 else "") for f, t in cols]
        lines = ["| encoder | " + " | ".join(head) + " |", "|---" * (len(cols) + 1) + "|"]
        for e in self._encoders():
            cells = [self._fmt(self.cell(e, f, t), t) for f, t in cols]
            lines.append(f"| {e} | " + " | ".join(cells) + " |")
        return lines

    def _fmt(self, row: dict, test: str, metric: str | None = None) -> str:
        m = metric or self.primary
        return fmt(row[m], row[f"{m}_ci"], row.get("n/a"), no_ci=self._no_ci(test))

    def _deltas(self, tests: list) -> list:
        if not self.comparisons:
            return []
        test_col = len(tests) > 1
        what = "macro AUROC" if self.primary == "auroc" else metric_name(self.primary)
        lines = ["", "| comparison | labels | " + ("test | " if test_col else "") + f"Δ {what} [95 % CI] |",
                 "|---|---|---|" + ("---|" if test_col else "")]
        for c in self.comparisons:
            t = c.get("test", INTERNAL)
            cell = fmt(c["delta"], (c["ci_low"], c["ci_high"]), c.get("n/a"), signed=True, no_ci=self._no_ci(t))
            lines.append(f"| {c['encoder']} − {c['reference']} | {100 * c['fraction']:g} % | "
                         + (f"{t} | " if test_col else "") + f"{cell} |")
        return lines

    def _metrics_table(self, tests: list) -> list:
        names = [metric_name(m) + " [95 % CI]" for m in self.metrics]
        lines = []
        for t in tests:
            title = f" ({t})" if len(tests) > 1 else ""
            lines += [f"| encoder ({self.probe} probe, 100 % labels){title} | " + " | ".join(names) + " |",
                      "|---" * (len(names) + 1) + "|"]
            lines += [f"| {e} | " + " | ".join(self._fmt(self.cell(e, 1.0, t), t, m) for m in self.metrics) + " |"
                      for e in self._encoders()]
            comps = [c for c in self.comparisons if c["fraction"] == 1.0 and c.get("test", INTERNAL) == t]
            if comps:
                lines += ["", "| comparison (paired patient bootstrap) | " + " | ".join(f"Δ {n}" for n in names)
                          + " |", "|---" * (len(names) + 1) + "|"]
                lines += [f"| {c['encoder']} − {c['reference']} | " + " | ".join(
                    fmt(c[m], c[f"{m}_ci"], c.get("n/a"), signed=True, no_ci=self._no_ci(t)) for m in self.metrics)
                    + " |" for c in comps]
            lines.append("")
        return lines[:-1]


def _json_value(v):
    return v.tolist() if isinstance(v, np.ndarray) else float(v)


def _left_out_lines(rows: list, labels: list, averages: str = "macro AUROC") -> list:
    """One line per label left out of the averages (and why), and per label no fit of a cell could learn."""
    left = {(lab, why) for r in rows for lab, why in (r.get("left_out") or {}).items()}
    untrained: dict = {}
    for r in rows:
        for lab, why in (r.get("untrainable") or {}).items():
            untrained.setdefault((lab, why), set()).add(r["fraction"])
    out = [f"- {lab} is left out of the {averages}: {why}" for lab, why in sorted(left)]
    out += [f"- {lab} at {', '.join(f'{100 * f:g} %' for f in sorted(fr))}: {why}; its prevalence prediction counts as "
            "AUROC 0.5" for (lab, why), fr in sorted(untrained.items())]
    return [""] + out if out else []


# --- one fit ---------------------------------------------------------------------------------------------

def fit_predict(name: str, features: dict, predictors: dict, Y, rows, pred_rows, patient_ids, seed: int, *,
                probe: str = "linear", grid=None, kind: str = "multilabel", val_rows=None) -> tuple[np.ndarray, dict]:
    """Predictions for ``pred_rows`` of row ``name`` trained on ``rows``, and what the fit was: ``{"untrainable":
    label indices with one class in ``rows``, "params": the chosen hyper-parameters (or the predictor's
    info), "tuning": how they were chosen}``. ``name`` is a key of ``features`` (a probe ``probe`` fitted on
    the features, its hyper-parameter chosen from ``grid`` by :func:`~tscl.probes.protocol.choose_params`)
    or of ``predictors``."""
    rows, pred_rows = np.asarray(rows, dtype=np.int64), np.asarray(pred_rows, dtype=np.int64)
    single = [j for j in range(Y.shape[1]) if kind != "regression" and len(np.unique(Y[rows, j])) < 2]
    if name in predictors:
        P = np.asarray(predictors[name](Y, rows, pred_rows, patient_ids, seed))
        info = dict(getattr(predictors[name], "last_info", {}))
        info.pop("untrainable_labels", None)
        return P, {"untrainable": single, "params": {"model": "trained on the labels", **info}, "tuning": None}
    X = features[name]
    predict = _predictor(X, Y, probe, kind)
    params, how = choose_params(list(grid or PROBE_GRIDS[probe]), predict, _scorer(Y, kind), rows, patient_ids,
                                seed, val_rows)
    model = make_probe(probe, **params).fit(X[rows], Y[rows])
    P = model.predict(X[pred_rows]) if kind == "regression" else model.predict_proba(X[pred_rows])
    return P, {"untrainable": list(getattr(model, "untrainable_", single)), "params": params, "tuning": how}


def _predictor(X, Y, probe: str, kind: str):
    def predict(params, fit_rows, pred_rows):
        model = make_probe(probe, **params).fit(X[fit_rows], Y[fit_rows])
        return model.predict(X[pred_rows]) if kind == "regression" else model.predict_proba(X[pred_rows])
    return predict


def _scorer(Y, kind: str):
    """Validation score of predictions ``P`` of ``rows``: macro AUROC, or minus the MAE for regression."""
    def score(rows, P) -> float:
        if kind == "regression":
            return -float(np.mean(np.abs(Y[rows] - P)))
        return float(macro_auroc_resampled(Y[rows], [P], Resamples.from_weights(np.ones((1, len(rows)))))[0])
    return score


# --- one cell ----------------------------------------------------------------------------------------------

def _scorable(Y_test, labels, kind) -> tuple[list, dict]:
    """The label columns a cell's metrics average, and ``{label: why}`` for those the test set cannot score."""
    keep, left_out = [], {}
    for j, lab in enumerate(labels):
        if kind == "regression":
            why = (f"{len(Y_test)} test row{'s' if len(Y_test) != 1 else ''}, fewer than {MIN_CLASS_ROWS}"
                   if len(Y_test) < MIN_CLASS_ROWS else
                   None if np.ptp(Y_test[:, j]) > 0 else "constant target in the test split")
        else:
            why = label_problem(Y_test[:, j])
        if why is None:
            keep.append(j)
        else:
            left_out[lab] = why
    return keep, left_out


def _resampled(Y, preds: list, W: Resamples, kind: str, metrics) -> dict:
    """``{metric: [B]}`` averaged over the repeats' predictions ``preds``; AUROC through the macro-AUROC path.
    Decision metrics (multi-class) are not here: :func:`_decided` scores them on every class."""
    out = {}
    if "auroc" in metrics:
        out["auroc"] = macro_auroc_resampled(Y, preds, W)
    rest = [m for m in metrics if m != "auroc" and not is_decision_metric(m, kind)]
    if rest:
        fn = regression_resampled if kind == "regression" else classification_resampled
        per = [fn(Y, P, W) for P in preds]
        out.update({m: np.mean([p[m] for p in per], axis=0) for m in rest})
    return out


def _decided(Y, preds: list, W: Resamples, labels, metrics, kind: str) -> dict:
    """``{metric: [B]}`` of the decision metrics among ``metrics``, over every class (the argmax is taken over all
    of them, whether or not the test split can score a class's AUROC), averaged over the repeats."""
    wanted = [m for m in metrics if is_decision_metric(m, kind)]
    if not wanted:
        return {}
    per = [decision_metrics(Y, P, W, labels, wanted) for P in preds]
    return {m: np.mean([p[m] for p in per], axis=0) for m in wanted}


def score_predictions(name: str, Y_test, preds: list, W: Resamples, labels, *, kind: str = "multilabel",
                      metrics=("auroc",), untrainable=None, no_ci: bool = False) -> tuple[dict, dict]:
    """One cell: ``name``'s test predictions ``preds`` (one ``[n, L]`` per repeat) against ``Y_test [n, L]``.

    Returns the row (``metrics`` and their CIs, ``n/a`` with the reason when nothing can be scored or every
    scored label was untrainable in every fit, ``left_out``, ``untrainable``, ``per_label``) and the bootstrap
    values ``{metric: [B]}`` the comparisons need. ``untrainable``: per repeat, the label indices its fit
    could not learn."""
    untrainable = untrainable or [[] for _ in preds]
    keep, left_out = _scorable(Y_test, labels, kind)
    dead = {labels[j]: untrainable_problem(len(preds)) for j in keep if all(j in u for u in untrainable)}
    na = None
    if not keep:
        na = "; ".join(sorted(set(left_out.values()))) if len(labels) == 1 else \
            "no label can be scored: " + "; ".join(f"{k}: {v}" for k, v in left_out.items())
    elif kind != "regression" and len(dead) == len(keep):
        na = untrainable_problem(len(preds))
    kept = [np.asarray(P)[:, keep] for P in preds]
    ones = Resamples.from_weights(np.ones((1, len(Y_test))))
    points = [{**_resampled(Y_test[:, keep], [P], ones, kind, metrics),
               **_decided(Y_test, [np.asarray(full)], ones, labels, metrics, kind)} for P, full in zip(kept, preds)] \
        if not na else []
    boots = {**_resampled(Y_test[:, keep], kept, W, kind, metrics), **_decided(Y_test, preds, W, labels, metrics, kind)} \
        if not na else {m: np.full(len(W), np.nan) for m in metrics}
    row = {"encoder": name}
    for m in metrics:
        row[m] = float(np.mean([float(p[m][0]) for p in points])) if points else float("nan")
        row[f"{m}_ci"] = [float("nan")] * 2 if no_ci else percentile_ci(boots[m])
    primary = metrics[0]
    row.update({"ci_low": row[f"{primary}_ci"][0], "ci_high": row[f"{primary}_ci"][1], "n/a": na,
                "left_out": left_out if not na else {}, "untrainable": dead if not na else {},
                "std_over_repeats": float(np.std([float(p[primary][0]) for p in points])) if points else float("nan"),
                "repeats": len(preds), "per_label": _per_label(Y_test, kept, keep, labels, kind, ones)})
    return row, boots


def _per_label(Y_test, kept, keep, labels, kind, ones) -> dict:
    """The first metric of each kept label (AUROC, or MAE for regression), averaged over the repeats."""
    out = dict.fromkeys(labels, float("nan"))
    for i, j in enumerate(keep):
        if kind == "regression":
            out[labels[j]] = float(np.mean([np.mean(np.abs(Y_test[:, j] - P[:, i])) for P in kept]))
        else:
            out[labels[j]] = float(np.mean([macro_auroc_resampled(Y_test[:, [j]], [P[:, [i]]], ones)[0]
                                            for P in kept]))
    return out


def _comparison(row: dict, ref: dict, boots: dict, ref_boots: dict, metrics, no_ci: bool) -> dict:
    """``row`` minus ``ref`` for every metric, with the paired-bootstrap CI of the difference."""
    na = row.get("n/a") or ref.get("n/a")
    comp = {"encoder": row["encoder"], "reference": ref["encoder"], "fraction": row["fraction"],
            "test": row.get("test", INTERNAL), "n/a": na}
    for m in metrics:
        comp[m] = float("nan") if na else row[m] - ref[m]
        comp[f"{m}_ci"] = [float("nan")] * 2 if no_ci else paired_ci(boots[m], ref_boots[m])
    comp.update({"delta": comp[metrics[0]], "ci_low": comp[f"{metrics[0]}_ci"][0],
                 "ci_high": comp[f"{metrics[0]}_ci"][1]})
    return comp


# --- the table -------------------------------------------------------------------------------------------

def _test_sets(patient_ids, train, test, val, external, n_boot, seed) -> dict:
    """``{name: (rows, resamples, summary)}``: the internal test split first, then each external set; every
    side is checked patient-disjoint from the training and validation rows."""
    sets = {INTERNAL: np.asarray(test, dtype=np.int64),
            **{k: np.asarray(v, dtype=np.int64) for k, v in (external or {}).items()}}
    out = {}
    for name, rows in sets.items():
        assert_no_patient_leakage(patient_ids, train, rows, *([] if val is None else [val]))
        W = Resamples.patient_bootstrap(patient_ids[rows], n_boot, seed + 1)  # one draw shared by every row
        summary = {"train_patients": int(len(np.unique(patient_ids[train]))),
                   "test_patients": int(len(np.unique(patient_ids[rows]))), "train_records": int(len(train)),
                   "test_records": int(len(rows)), "bootstrap": n_boot}
        if val is not None:
            summary.update(val_patients=int(len(np.unique(patient_ids[val]))), val_records=int(len(val)))
        if summary["test_patients"] < 2:  # a patient-level bootstrap of one patient cannot vary
            summary["no_ci"] = f"{summary['test_patients']} test patient"
        out[name] = (rows, W, summary)
    return out


def run_probe(features: dict, Y, labels, patient_ids, *, fractions=(0.01, 0.1, 1.0), repeats: int = 3,
              test_fraction: float = 0.3, n_boot: int = 1000, seed: int = 0, reference: str | None = None,
              split: tuple | None = None, val=None, external: dict | None = None, predictors: dict | None = None,
              kind: str | None = None, probe: str = "linear", grid=None, C_grid=None, metrics=None,
              random_state: int | None = None, pairs=None) -> ProbeResult:
    """Probe every encoder's features (and train every predictor) on the same patient-level split and label
    subsamples, and score every test set on its shared bootstrap resamples.

    ``features`` maps encoder names to ``[n, d]`` arrays aligned with ``Y [n, L]`` and ``patient_ids [n]``.
    ``split`` gives ``(train_rows, test_rows)`` (else a random patient-level split of ``test_fraction``);
    ``val`` rows choose the hyper-parameters (else they are chosen inside the training rows); ``external``
    maps the names of further test sets to their rows. ``fractions`` subsample the training patients
    (``repeats`` seeds below 100 %). ``reference`` names the row the others are compared with.
    ``pairs``: further ``(row, reference)`` paired comparisons (e.g. one pretrained encoder against another).
    ``predictors`` maps further names to models trained on the rows themselves (see the module docstring).
    ``kind``: ``binary`` / ``multilabel`` / ``regression`` (None: from ``Y``) or ``multiclass`` (one class per
    row, one label column per class: the probes fit one-vs-rest per class and the decision is the argmax);
    ``probe``: ``linear``, ``knn``, ``mlp`` (``ridge`` for regression, whatever is asked); ``grid``: its
    hyper-parameters to try (``C_grid``: strengths of the linear probe); ``metrics``: what each cell reports
    (default: macro AUROC, or MAE and R² for regression; binary and multi-label may add ``accuracy`` at the
    threshold 0.5; :mod:`tscl.probes.metrics` lists every name, e.g.
    ``f1:normal+af+other`` or ``se:aami_S`` for multi-class). ``random_state`` is an alias of ``seed``.
    """
    seed = seed if random_state is None else random_state
    predictors = check_names(features, predictors)
    Y = np.asarray(Y)
    Y = Y[:, None] if Y.ndim == 1 else Y
    patient_ids = np.asarray(patient_ids)
    if Y.shape[1] != len(labels):
        raise ValueError(f"Y must be [n, {len(labels)}], got {Y.shape}")
    kind = kind or infer_kind(Y)
    probe = "ridge" if kind == "regression" else probe
    if probe == "ridge" and kind != "regression":
        raise ValueError("the ridge probe is for regression targets")
    if C_grid is not None:
        grid = [{"C": c} for c in C_grid]
    elif probe == "linear" and grid is None:
        grid = [{"C": c} for c in C_GRID]
    metrics = check_metrics(metrics or (("mae", "r2") if kind == "regression" else ("auroc",)), kind, labels)
    if kind == "multiclass":
        _check_one_class_per_row(Y, labels)
    for name, X in features.items():
        if len(X) != len(Y):
            raise ValueError(f"features {name!r} have {len(X)} rows for {len(Y)} labels")
        check_finite(X, f"features {name!r}")
    train, test = split if split is not None else patient_split(patient_ids, test_fraction, seed)
    train = np.asarray(train, dtype=np.int64)
    val = None if val is None else np.asarray(val, dtype=np.int64)
    sets = _test_sets(patient_ids, train, test, val, external, n_boot, seed)
    result = ProbeResult(labels=list(labels), split=sets[INTERNAL][2], kind=kind, probe=probe, metrics=metrics,
                         tests={k: s for k, (_, _, s) in sets.items()})
    fit = {"probe": probe, "grid": grid, "kind": kind, "val_rows": val}
    pairs = _pairs([*features, *predictors], reference, pairs)
    for fraction in fractions:
        _fraction(result, features, predictors, Y, patient_ids, train, sets, fraction, repeats, seed, pairs, fit,
                  keep=fraction == max(fractions))
    return result


def _pairs(names: list, reference: str | None, extra) -> list:
    """The ``(row, reference)`` comparisons: every row with ``reference`` (when it is a row), then ``extra``, each
    pair once; a name in ``extra`` that is not a row is refused."""
    out = [(n, reference) for n in names if n != reference] if reference in names else []
    for a, b in extra or ():
        if a not in names or b not in names:
            raise ValueError(f"pair ({a!r}, {b!r}): {a if a not in names else b!r} is not a row; rows: "
                             f"{', '.join(names)}")
        if (a, b) not in out and a != b:
            out.append((a, b))
    return out


def _check_one_class_per_row(Y, labels) -> None:
    """A multi-class target holds exactly one 1 per row across its label columns."""
    counts = np.nansum(np.asarray(Y, dtype=np.float64) == 1, axis=1)
    bad = np.flatnonzero(counts != 1)
    if len(bad):
        raise ValueError(f"kind multiclass needs exactly one of {', '.join(labels)} set per row; row {bad[0]} has "
                         f"{int(counts[bad[0]])} ({len(bad)} such rows)")


def _fraction(result, features, predictors, Y, patient_ids, train, sets, fraction, repeats, seed, pairs, fit,
              keep: bool):
    """The cells (and comparisons) of one label fraction: every row fitted on the same subsamples."""
    subsets = [subsample_patients(train, patient_ids, fraction, seed=seed + 100 * r)
               for r in range(1 if fraction == 1 else repeats)]
    for rows in subsets:
        for test_rows, _, _ in sets.values():
            assert_no_patient_leakage(patient_ids, rows, test_rows)
    pred_rows = np.concatenate([rows for rows, _, _ in sets.values()])
    bounds = np.cumsum([0] + [len(rows) for rows, _, _ in sets.values()])
    boots: dict = {}
    for name in [*features, *predictors]:
        fits = [fit_predict(name, features, predictors, Y, rows, pred_rows, patient_ids, seed + r, **fit)
                for r, rows in enumerate(subsets)]
        for k, (test, (rows, W, summary)) in enumerate(sets.items()):
            preds = [P[bounds[k]:bounds[k + 1]] for P, _ in fits]
            row, boots[name, test] = score_predictions(name, Y[rows], preds, W, result.labels, kind=result.kind,
                                                       metrics=result.metrics, no_ci="no_ci" in summary,
                                                       untrainable=[info["untrainable"] for _, info in fits])
            row = {"encoder": name, "fraction": fraction, "test": test, **row,
                   "train_patients": int(np.mean([len(np.unique(patient_ids[s])) for s in subsets])),
                   "untrainable_label_fits": sum(len(info["untrainable"]) for _, info in fits),
                   "params": [info["params"] for _, info in fits], "tuning": fits[0][1]["tuning"]}
            result.rows.append(row)
            if keep:  # the first repeat's predictions at the largest fraction, for the reliability plot
                result.predictions.setdefault(test, {})[name] = preds[0]
    for test, (_, _, summary) in sets.items():
        result.comparisons += [_comparison(result.cell(n, fraction, test), result.cell(ref, fraction, test),
                                           boots[n, test], boots[ref, test], result.metrics, "no_ci" in summary)
                               for n, ref in pairs]


def score_pooled(Y, preds: dict, groups, *, n_boot: int = 1000, seed: int = 1, references=("random-init",),
                 labels=None, kind: str = "multilabel", metrics=("auroc",)) -> dict:
    """Rows scored on predictions made elsewhere, e.g. pooled out-of-fold predictions of a cross-validation:
    ``preds`` maps row names to ``[n, L]`` predictions of ``Y [n, L]``, ``groups`` the patients of the rows.

    Every row is scored on the same patient-level bootstrap (``n_boot`` resamples of ``groups`` drawn with
    ``seed``) as :func:`score_predictions` scores a cell, and each row is compared with each of ``references``
    present (each pair once). Returns ``{"rows", "comparisons", "groups", "records"}``."""
    Y = np.asarray(Y)
    Y = Y[:, None] if Y.ndim == 1 else Y
    groups = np.asarray(groups)
    labels = list(labels) if labels is not None else [str(j) for j in range(Y.shape[1])]
    W = Resamples.patient_bootstrap(groups, n_boot, seed)
    no_ci = len(np.unique(groups)) < 2
    rows, boots = {}, {}
    for name, P in preds.items():
        row, boots[name] = score_predictions(name, Y, [np.asarray(P).reshape(len(Y), -1)], W, labels, kind=kind,
                                             metrics=metrics, no_ci=no_ci)
        rows[name] = {**row, "fraction": 1.0}
    refs = [r for r in references if r in preds]
    comparisons = [_comparison(rows[n], rows[ref], boots[n], boots[ref], metrics, no_ci)
                   for i, ref in enumerate(refs) for n in preds if n != ref and n not in refs[:i]]
    return {"rows": list(rows.values()), "comparisons": comparisons, "groups": int(len(np.unique(groups))),
            "records": int(len(Y))}
