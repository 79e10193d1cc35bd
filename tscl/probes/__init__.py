"""Downstream probes over frozen embeddings: patient-level splits, label fractions, bootstrap CIs."""
from .linear import (
    LinearProbe,
    PatientLeakageError,
    PretrainingOverlapError,
    ProbeResult,
    assert_no_patient_leakage,
    bootstrap_macro_auroc,
    check_pretraining_overlap,
    macro_auroc,
    patient_split,
    pretrained_patients,
    run_probe,
    subsample_patients,
)
from .evaluate import EvalResult, classification_metrics, evaluate_probe, expected_calibration_error, regression_metrics
from .models import C_GRID, KNNProbe, MLPProbe, PerLabel, RidgeProbe, make_probe
from .supervised import SupervisedBaseline
from .audit import audit_embeddings, audit_markdown, effective_rank, patient_reidentification, source_shortcut

__all__ = [
    "LinearProbe", "ProbeResult", "assert_no_patient_leakage", "bootstrap_macro_auroc", "macro_auroc",
    "patient_split", "run_probe", "subsample_patients", "PatientLeakageError", "PretrainingOverlapError",
    "check_pretraining_overlap", "pretrained_patients", "PerLabel", "C_GRID",
    "EvalResult", "classification_metrics", "evaluate_probe", "expected_calibration_error", "regression_metrics",
    "KNNProbe", "MLPProbe", "RidgeProbe", "make_probe", "SupervisedBaseline",
    "audit_embeddings", "audit_markdown", "effective_rank", "patient_reidentification", "source_shortcut",
]
