"""The task registry: what a named task loads, which columns are its labels, and how it is split.

Each :class:`Task` turns a data root into a :class:`TaskData`: waveforms ``[N, C, T]`` or tabular
features ``[N, d]``, targets ``Y [N, L]``, one patient id per row and a patient-disjoint
``(train, test)`` split.

Split rules:

- ``strat_fold``: PTB-XL's folds 1-8 train, 10 test (fold 9 is not used; hyper-parameters are
  chosen on a patient-level split inside the training folds). The folds are patient-disjoint.
- ``patient``: a random patient-level split (30 % of patients test). On the tiny public samples
  a random split easily puts a single class on the test side, so the split seed is the first
  of 0..199 for which both sides hold both classes of every label (a split stratified on
  patients' labels; rows still never cross sides). When no seed achieves it the seed-0
  split is kept and metrics of labels without both test classes are reported as n/a.
- ``split`` column (simulated cohorts): the source's own split, as pretraining reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from tscl.probes.linear import assert_no_patient_leakage, patient_split
from tscl.simulate import CONDITIONS

from . import eegmat, mimic, physionet, ptbxl, sim

__all__ = ["Task", "TaskData", "TASKS", "get_task", "stratified_patient_split"]


@dataclass
class TaskData:
    name: str
    kind: str  # binary | multilabel | regression
    modality: str  # waveform | tabular
    X: np.ndarray
    Y: np.ndarray
    labels: list
    patient_ids: np.ndarray
    train: np.ndarray
    test: np.ndarray
    source: np.ndarray | None = None
    notes: list = field(default_factory=list)
    standardise: bool = False

    def summary(self) -> str:
        pos = ""
        if self.kind != "regression":
            pos = ", positives train/test: " + "; ".join(
                f"{lab} {int(self.Y[self.train, j].sum())}/{int(self.Y[self.test, j].sum())}"
                for j, lab in enumerate(self.labels))
        return (f"{self.name}: {len(self.Y)} rows of {len(np.unique(self.patient_ids))} patients, "
                f"{self.modality} {tuple(self.X.shape[1:])}; train {len(self.train)} rows / "
                f"{len(np.unique(self.patient_ids[self.train]))} patients, test {len(self.test)} rows / "
                f"{len(np.unique(self.patient_ids[self.test]))} patients{pos}")


@dataclass
class Task:
    """``loader(root, cache_dir) -> (X, index)``: ``index`` has ``patient_id``, the label columns
    and what ``split`` needs; ``split(index, Y, seed) -> (train_rows, test_rows)``."""

    name: str
    loader: Callable
    labels: tuple
    split: Callable
    kind: str
    modality: str = "waveform"
    description: str = ""
    standardise: bool = False
    source_column: str | None = None
    in_channels: int | None = None  # what a run's encoder must take (checked before any data loads)
    fs: float | None = None  # the rate of the task's waveforms, Hz (None: whatever the data holds)

    def load(self, root: str | Path, cache_dir: str | Path, seed: int = 0) -> TaskData:
        X, index, notes = self.loader(Path(root), Path(cache_dir))
        Y = index.select(list(self.labels)).to_numpy().astype(np.float64)
        pids = np.asarray(index["patient_id"].cast(pl.Utf8).to_list())
        train, test = self.split(index, Y, seed)
        assert_no_patient_leakage(pids, train, test)
        source = (np.asarray(index[self.source_column].cast(pl.Utf8).fill_null("unknown").to_list())
                  if self.source_column else None)
        return TaskData(self.name, self.kind, self.modality, X, Y, list(self.labels), pids, np.asarray(train),
                        np.asarray(test), source, notes, self.standardise)


# --- split rules ----------------------------------------------------------------------------------------

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


def _patient_rule(index, Y, seed):
    return stratified_patient_split(index["patient_id"].cast(pl.Utf8).to_numpy(), Y, 0.3, seed)


def _split_column_rule(index, Y, seed):
    """The source's own ``split`` column: ``test`` rows against every other row (as pretraining reads it)."""
    side = index["split"].to_numpy()
    return np.flatnonzero(side != "test"), np.flatnonzero(side == "test")


def _sim_rule(index, Y, seed):
    """The cohort's ``split`` column where it has one (cohorts written by ``tscl simulate``), else a patient split."""
    return _split_column_rule(index, Y, seed) if "split" in index.columns else _patient_rule(index, Y, seed)


def _strat_fold_rule(index, Y, seed):
    fold = index["strat_fold"].to_numpy()
    return np.flatnonzero(fold <= 8), np.flatnonzero(fold == 10)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("sim-risk", sim.load, CONDITIONS, _sim_rule, "multilabel", in_channels=12,
         description="simulated cohort (tscl simulate/demo; --data is the cohort folder): the six risk labels, "
                     "multi-label, split by patient (the cohort's split column: test patients are never "
                     "pretrained on)"),
    Task("ptbxl-superclass", ptbxl.load, ("NORM", "MI", "STTC", "CD", "HYP"), _strat_fold_rule, "multilabel",
         description="PTB-XL diagnostic superclasses, multi-label; strat_fold 1-8 train, 10 test",
         source_column="device", in_channels=12, fs=100),
    Task("ptbxl-sex", ptbxl.load, ("female",), _strat_fold_rule, "binary",
         description="PTB-XL sex (female) from the ECG; strat_fold split", source_column="device", in_channels=12,
         fs=100),
    Task("ptbxl-age", ptbxl.load_age, ("age",), _strat_fold_rule, "regression",
         description="PTB-XL age (years), ridge regression; strat_fold split", source_column="device", in_channels=12,
         fs=100),
    Task("mitdb-beats", physionet.mitdb_beats, ("V",), _patient_rule, "binary",
         description="AAMI V vs N beats of MIT-BIH (+ SVDB when present), split by record/patient",
         source_column="database", in_channels=2, fs=360),
    Task("cpsc2021-af", physionet.cpsc2021, ("afib",), _patient_rule, "binary",
         description="CPSC 2021 AF vs normal-rhythm 10 s windows, split by patient", in_channels=2, fs=200),
    Task("eegmat-task", eegmat.load, ("task",), _patient_rule, "binary", standardise=True,
         description="EEGMAT rest vs mental arithmetic 10 s epochs, split by subject", in_channels=19, fs=500),
    Task("mimic-mortality", mimic.loader("mortality"), ("mortality",), _patient_rule, "binary", modality="tabular",
         description="MIMIC-IV demo in-hospital mortality at admission + 24 h, split by subject"),
    Task("mimic-readmission", mimic.loader("readmission"), ("readmission",), _patient_rule, "binary",
         modality="tabular",
         description="MIMIC-IV demo 30-day readmission (prediction at admission + 24 h), split by subject"),
]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]
