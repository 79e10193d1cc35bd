"""Batch samplers whose composition encodes who is positive for whom."""
from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PatientBatchSampler", "RankBatches", "encode_ids", "batch_count"]


def batch_count(n: int, size: int, smallest: int = 2, drop_last: bool = True) -> int:
    """Batches of ``size`` an epoch of ``n`` items yields. ``drop_last``: only full batches, so every batch of
    every epoch has the same number of negatives and the loss curve does not saw-tooth at epoch ends — unless
    ``n`` fills no batch, when the one batch is all ``n`` (if at least ``smallest``). Without ``drop_last`` a
    last, smaller batch is kept when it has at least ``smallest`` items."""
    full, rest = divmod(n, size)
    if drop_last and full:
        return full
    return full + (rest >= smallest)


def encode_ids(values) -> np.ndarray:
    """Map arbitrary ids (strings, ints) to dense int64 codes, first-seen order."""
    codes: dict = {}
    return np.array([codes.setdefault(v, len(codes)) for v in values], dtype=np.int64)


@dataclass
class PatientBatchSampler:
    """PCLR sampling: each batch holds ``patients_per_batch`` distinct patients with
    ``recordings_per_patient`` different recordings each (Diamant et al. 2022).

    Patients with fewer recordings than that cannot supply a positive pair. They are left
    out of pretraining explicitly: ``excluded_patients`` lists them and ``__post_init__``
    warns with their count, so nothing disappears unnoticed. Each epoch visits every
    eligible patient once, in a seeded random order (``set_epoch`` changes the order);
    recordings are drawn without replacement within a patient. The last, partial batch of an
    epoch is dropped (``drop_last``, :func:`batch_count`): every batch holds the same number of
    patients, so the loss does not jump at epoch ends; with fewer eligible patients than one
    batch, the one batch holds them all (at least two: one patient alone has no negatives).

    Data parallel (``world_size`` W > 1): each step draws one global batch of P·W patients
    and rank ``rank`` gets its slice of P patients, so ranks never share a patient within a
    step, every rank sees the same number of steps, and the order depends only on
    (seed, epoch). Without ``drop_last`` a final global batch is kept when it has at least
    max(2, W) patients, split as evenly as possible. W = 1 is the single-process sampler above.

    Iterating yields lists of row indices into ``patient_ids``; ``len`` is batches per epoch.
    """

    patient_ids: np.ndarray
    patients_per_batch: int = 32
    recordings_per_patient: int = 2
    seed: int = 0
    epoch: int = 0
    rank: int = 0
    world_size: int = 1
    drop_last: bool = True
    excluded_patients: list = field(default_factory=list, init=False)

    def __post_init__(self):
        if self.recordings_per_patient < 2:
            raise ValueError("recordings_per_patient must be >= 2 (a positive pair needs two recordings)")
        if self.patients_per_batch < 2:
            raise ValueError("patients_per_batch must be >= 2 (one patient alone has no negatives)")
        groups = defaultdict(list)
        for row, pid in enumerate(np.asarray(self.patient_ids)):
            groups[pid].append(row)
        self._groups = {p: np.array(r) for p, r in groups.items() if len(r) >= self.recordings_per_patient}
        self.excluded_patients = [p for p, r in groups.items() if len(r) < self.recordings_per_patient]
        if len(self._groups) < 2:
            raise ValueError(
                f"cannot build a batch: {len(self._groups)} patient(s) have >= {self.recordings_per_patient} "
                f"recordings ({len(groups)} patients in all); patient-aware pairing needs at least two"
            )
        if self.excluded_patients:
            warnings.warn(
                f"{len(self.excluded_patients)} of {len(groups)} patients have fewer than "
                f"{self.recordings_per_patient} recordings and are left out of patient-pair sampling",
                stacklevel=2,
            )
        self._patients = list(self._groups)

    @property
    def n_patients(self) -> int:
        return len(self._patients)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return batch_count(len(self._patients), self.patients_per_batch * self.world_size, max(2, self.world_size),
                           self.drop_last)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self._patients))
        size = self.patients_per_batch * self.world_size
        for step in range(len(self)):
            chunk = order[step * size : (step + 1) * size]
            batch = [rng.choice(self._groups[self._patients[i]], size=self.recordings_per_patient, replace=False).tolist()
                     for i in chunk]  # every rank draws the whole global batch, so all stay in step
            mine = np.array_split(np.arange(len(chunk)), self.world_size)[self.rank]
            yield [row for i in mine for row in batch[i]]


@dataclass
class RankBatches:
    """Rank ``rank``'s share of any batch sampler: at step s it gets batch s·W + r of ``sampler``.

    Batches of one epoch are disjoint, so ranks never share a row within a step; every rank
    gets ``len(sampler) // W`` steps (the last ``len % W`` batches are left out). Used for
    samplers that take no ``rank``/``world_size`` of their own."""

    sampler: object
    rank: int = 0
    world_size: int = 1

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) // self.world_size

    def __iter__(self):
        batches = iter(self.sampler)
        for _ in range(len(self)):
            group = [next(batches) for _ in range(self.world_size)]
            yield group[self.rank]
