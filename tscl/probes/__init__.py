"""The evaluation engine: probes over frozen embeddings and models trained on the labels, with patient-level
splits, label fractions, patient-bootstrap CIs and paired comparisons, and one report format.

- :func:`evaluate` (:mod:`.engine`) — the entry point every evaluation command calls: an
  :class:`EvalSpec` (data or task, encoders, rows, fractions, external test set) in, an
  :class:`EvalReport` (markdown, JSON, figures) out.
- :func:`run_probe` (:mod:`.table`) — the same table on arrays: features, labels, patient ids, a split.
- :mod:`.protocol` (splits, leakage checks, hyper-parameter choice), :mod:`.bootstrap` (resamples and
  every metric over them), :mod:`.metrics` (the metrics' definitions), :mod:`.cells` (cells that are
  not numbers), :mod:`.models` (linear / kNN / MLP / ridge probes), :mod:`.supervised` (the supervised
  baseline and fine-tuning), :mod:`.audit` (the representation audit).
"""
from .protocol import (
    PatientLeakageError,
    PretrainingOverlapError,
    assert_no_patient_leakage,
    check_pretraining_overlap,
    choose_params,
    patient_split,
    pretrained_patients,
    stratified_patient_split,
    subsample_patients,
)
from .metrics import (
    bootstrap_macro_auroc,
    classification_metrics,
    expected_calibration_error,
    macro_auroc,
    regression_metrics,
    weighted_auroc,
)
from .models import C_GRID, PROBE_GRIDS, KNNProbe, LinearProbe, MLPProbe, PerLabel, RidgeProbe, make_probe
from .table import ProbeResult, fit_predict, run_probe, score_pooled, score_predictions
from .supervised import SupervisedBaseline
from .audit import audit_embeddings, audit_markdown, effective_rank, patient_reidentification, source_shortcut
from .engine import EvalReport, EvalSpec, evaluate

__all__ = [
    "evaluate", "EvalSpec", "EvalReport", "run_probe", "ProbeResult", "fit_predict", "score_predictions", "score_pooled",
    "LinearProbe", "KNNProbe", "MLPProbe", "RidgeProbe", "PerLabel", "make_probe", "C_GRID", "PROBE_GRIDS",
    "assert_no_patient_leakage", "patient_split", "stratified_patient_split", "subsample_patients", "choose_params",
    "PatientLeakageError", "PretrainingOverlapError", "check_pretraining_overlap", "pretrained_patients",
    "bootstrap_macro_auroc", "macro_auroc", "weighted_auroc", "classification_metrics", "regression_metrics",
    "expected_calibration_error", "SupervisedBaseline",
    "audit_embeddings", "audit_markdown", "effective_rank", "patient_reidentification", "source_shortcut",
]
