"""Downstream probes over frozen embeddings: patient-level splits, label fractions, bootstrap CIs."""
from .linear import (
    LinearProbe,
    ProbeResult,
    assert_no_patient_leakage,
    bootstrap_macro_auroc,
    macro_auroc,
    patient_split,
    run_probe,
    subsample_patients,
)
from .evaluate import EvalResult, classification_metrics, evaluate_probe, expected_calibration_error, regression_metrics
from .models import KNNProbe, MLPProbe, RidgeProbe, make_probe
from .supervised import SupervisedBaseline
from .audit import audit_embeddings, audit_markdown, effective_rank, patient_reidentification, source_shortcut

__all__ = [
    "LinearProbe", "ProbeResult", "assert_no_patient_leakage", "bootstrap_macro_auroc", "macro_auroc",
    "patient_split", "run_probe", "subsample_patients",
    "EvalResult", "classification_metrics", "evaluate_probe", "expected_calibration_error", "regression_metrics",
    "KNNProbe", "MLPProbe", "RidgeProbe", "make_probe", "SupervisedBaseline",
    "audit_embeddings", "audit_markdown", "effective_rank", "patient_reidentification", "source_shortcut",
]
