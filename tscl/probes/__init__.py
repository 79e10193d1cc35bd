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

__all__ = [
    "LinearProbe", "ProbeResult", "assert_no_patient_leakage", "bootstrap_macro_auroc", "macro_auroc",
    "patient_split", "run_probe", "subsample_patients",
]
