"""Batch samplers used by the methods (row indices into the cohort index, like
:class:`tscl.samplers.PatientBatchSampler`): ``set_epoch``, ``len`` and iteration."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from tscl.samplers import batch_count

__all__ = ["RecordBatchSampler", "TrialShuffleSampler"]


@dataclass
class RecordBatchSampler:
    """Every recording once per epoch in a seeded random order, ``batch_size`` at a time.

    The last, partial batch is dropped (``drop_last``, :func:`~tscl.samplers.batch_count`): every
    batch has the same number of negatives; with fewer recordings than one batch, the one batch is
    all of them (at least two). Which recordings an epoch leaves out changes with the epoch."""

    n_records: int
    batch_size: int = 64
    seed: int = 0
    epoch: int = 0
    drop_last: bool = True

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return batch_count(self.n_records, self.batch_size, 2, self.drop_last)

    def __iter__(self):
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n_records)
        for step in range(len(self)):
            yield order[step * self.batch_size : (step + 1) * self.batch_size].tolist()


@dataclass
class TrialShuffleSampler:
    """PMQ / COMET "trial shuffle": recordings grouped by patient, so batches hold several
    recordings of the same patient.

    Per epoch: shuffle the patients, shuffle each patient's recordings, concatenate, cut into
    consecutive batches of ``batch_size``, then shuffle the order inside each batch (Sun et
    al. 2025, 3hiuwoo/PMQ; Wang et al. 2023, COMET). ``patient_ids [N]`` int codes. The last,
    partial batch is dropped as in :class:`RecordBatchSampler`.
    """

    patient_ids: np.ndarray
    batch_size: int = 64
    seed: int = 0
    epoch: int = 0
    drop_last: bool = True

    def __post_init__(self):
        groups = defaultdict(list)
        for row, pid in enumerate(np.asarray(self.patient_ids)):
            groups[pid].append(row)
        self._groups = [np.array(r) for r in groups.values()]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return batch_count(len(self.patient_ids), self.batch_size, 2, self.drop_last)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        rows = np.concatenate([rng.permutation(self._groups[p]) for p in rng.permutation(len(self._groups))])
        for step in range(len(self)):
            yield rng.permutation(rows[step * self.batch_size : (step + 1) * self.batch_size]).tolist()
