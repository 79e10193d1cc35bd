"""Batch samplers used by the methods (row indices into the cohort index, like
:class:`tscl.samplers.PatientBatchSampler`): ``set_epoch``, ``len`` and iteration."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

__all__ = ["RecordBatchSampler", "TrialShuffleSampler"]


@dataclass
class RecordBatchSampler:
    """Every recording once per epoch in a seeded random order, ``batch_size`` at a time.

    A last batch with fewer than two recordings is dropped (no negatives)."""

    n_records: int
    batch_size: int = 64
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(self.n_records, self.batch_size)
        return full + (rest >= 2)

    def __iter__(self):
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n_records)
        for start in range(0, self.n_records, self.batch_size):
            chunk = order[start : start + self.batch_size]
            if len(chunk) >= 2:
                yield chunk.tolist()


@dataclass
class TrialShuffleSampler:
    """PMQ / COMET "trial shuffle": recordings grouped by patient, so batches hold several
    recordings of the same patient.

    Per epoch: shuffle the patients, shuffle each patient's recordings, concatenate, cut into
    consecutive batches of ``batch_size``, then shuffle the order inside each batch (Sun et
    al. 2025, 3hiuwoo/PMQ; Wang et al. 2023, COMET). ``patient_ids [N]`` int codes.
    """

    patient_ids: np.ndarray
    batch_size: int = 64
    seed: int = 0
    epoch: int = 0

    def __post_init__(self):
        groups = defaultdict(list)
        for row, pid in enumerate(np.asarray(self.patient_ids)):
            groups[pid].append(row)
        self._groups = [np.array(r) for r in groups.values()]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(len(self.patient_ids), self.batch_size)
        return full + (rest >= 2)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        rows = np.concatenate([rng.permutation(self._groups[p]) for p in rng.permutation(len(self._groups))])
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            if len(chunk) >= 2:
                yield rng.permutation(chunk).tolist()
