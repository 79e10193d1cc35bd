"""PCLR: patient contrastive learning of representations.

Diamant, Reinertsen, Song, Aguirre, Stultz, Batra. "Patient contrastive learning: a
performant, expressive, and practical approach to ECG modeling." PLoS Comput Biol 18(2),
e1009862 (2022).

Positives are two *different recordings of the same patient*; every other recording in the
batch is a negative. No signal augmentation by default: the pairing replaces it (``augment=``
adds one). With both
recordings of each of P patients stacked as ``z [2P, D]`` and patient ids as labels, the
loss is the NT-Xent of SimCLR over the 2P x 2P similarity matrix with the diagonal removed::

    l_i = -log  exp(cos(z_i, z_i+) / tau) / sum_{j != i} exp(cos(z_i, z_j) / tau)

averaged over all 2P anchors (the paper's code sums the two view directions, L_a + L_b;
this is the same up to a factor 2). tau = 0.1 as in the paper. With more than two
recordings per patient the anchor averages over its same-patient recordings (SupCon L_out).

``group`` (default ``"patient_id"``, the paper) names the index column whose shared value
makes two items positives. ``group="source"`` pairs two windows cut from one file: temporal
neighbours within a recording, up to the recording's length apart, and every other file in the
batch, the same patient's included, is a negative (on EEGMAT a subject's rest and arithmetic
recordings are then each other's negatives; docs/benchmarks/eegmat.md).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from tscl import kernels
from tscl.augment import build_augment, spec_modality
from tscl.augment_image import IMAGE_AUGMENT
from tscl.distributed import gather_embeddings
from tscl.encoders import ProjectionHead
from tscl.methods.base import Method
from tscl.samplers import PatientBatchSampler, encode_ids

__all__ = ["PCLR"]


class PCLR(Method):
    modalities = ("waveform", "ehr", "image")
    default_augment = {"image": IMAGE_AUGMENT}  # MICLe (Azizi et al. 2021) = pclr on images

    def __init__(self, encoder: nn.Module, proj_dim: int = 128, temperature: float = 0.1,
                 patients_per_batch: int = 64, recordings_per_patient: int = 2, augment=None,
                 group: str = "patient_id"):
        super().__init__()
        self.group = group
        self.encoder = encoder
        self.head = ProjectionHead(encoder.embed_dim, encoder.embed_dim, proj_dim)
        self.temperature = temperature
        self.patients_per_batch = patients_per_batch
        self.recordings_per_patient = recordings_per_patient
        # none by default on waveforms (the pairing replaces augmentation); on images MICLe augments both films
        self.augment = build_augment(augment, modality=spec_modality(augment))

    def _group_ids(self, index):
        if self.group not in index.columns:
            raise ValueError(f"pclr: group={self.group!r} is not a column of the dataset's index "
                             f"(columns: {', '.join(index.columns)})")
        return encode_ids(index[self.group].to_list())

    def make_sampler(self, index, seed: int = 0) -> PatientBatchSampler:
        self.augment.bind(index, seed)
        return PatientBatchSampler(
            self._group_ids(index),
            patients_per_batch=self.patients_per_batch,
            recordings_per_patient=self.recordings_per_patient,
            seed=seed,
        )

    def batch_extras(self, index) -> dict:
        """The positives' group codes when they are not the patients (``group``)."""
        if self.group == "patient_id":
            return {}
        return {"group_ids": torch.from_numpy(self._group_ids(index))}

    def forward(self, x: Tensor, batch: dict) -> Tensor:
        x = self.augment(x) if self.augment else x
        ids = batch["patient_ids"] if self.group == "patient_id" else batch["group_ids"]
        z, ids = gather_embeddings(self.head(self.encoder(x)), ids)  # global batch under DDP
        return kernels.info_nce(z, z, ids, ids, temperature=self.temperature, exclude_self=True)
