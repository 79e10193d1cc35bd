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
from .audit import audit_embeddings, audit_markdown, effective_rank, patient_reidentification, source_shortcut

__all__ = [
    "LinearProbe", "ProbeResult", "assert_no_patient_leakage", "bootstrap_macro_auroc", "macro_auroc",
    "patient_split", "run_probe", "subsample_patients",
    "audit_embeddings", "audit_markdown", "effective_rank", "patient_reidentification", "source_shortcut",
]
