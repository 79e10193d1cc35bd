"""SupCon: supervised contrastive learning (the L_out form).

Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan. "Supervised
contrastive learning." NeurIPS 2020 (arXiv 2004.11362).

Two augmented views of N labelled recordings give ``z [2N, D]``; anchor i's positives P(i)
are all other views with the same class label y, the rest of the batch are negatives::

    L_out = Σ_i  −1/|P(i)| Σ_{p∈P(i)} log  exp(z_i·z_p / τ) / Σ_{a≠i} exp(z_i·z_a / τ)

(averaged over anchors). Kernel terms: q = k = z, ids = class label, exclude_self.

The class comes from the cohort index: ``label`` names one column, or several (a list or a
comma-separated string), in which case the class is the tuple of their values (e.g. the
multi-hot pattern of conditions). Rows with a missing label get a class of their own, so
only their other view is a positive. The labels reach the batch through
:meth:`batch_extras` (the trainer adds ``batch["labels"]``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from tscl.augment import build_augment, spec_modality
from tscl.augment_image import IMAGE_AUGMENT
from tscl.encoders import ProjectionHead
from tscl.methods.base import Method
from tscl.methods.sampling import RecordBatchSampler
from tscl.methods.simclr import ECG_AUGMENT, two_view_nce

__all__ = ["SupCon", "class_ids"]


def class_ids(index, label) -> np.ndarray:
    """Dense int64 class ids ``[N]`` from one or several label columns of ``index``."""
    cols = [c.strip() for c in label.split(",")] if isinstance(label, str) else list(label)
    missing = [c for c in cols if c not in index.columns]
    if missing:
        raise ValueError(f"SupCon label column(s) {missing} not in the cohort index; columns: {index.columns}")
    rows = list(zip(*(index[c].to_list() for c in cols)))
    codes: dict = {}
    out = np.empty(len(rows), dtype=np.int64)
    n_missing = 0
    for i, r in enumerate(rows):
        if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in r):
            n_missing += 1
            out[i] = -n_missing  # a class of its own
        else:
            out[i] = codes.setdefault(r, len(codes))
    return out


class SupCon(Method):
    modalities = ("waveform", "image")
    default_augment = {"waveform": ECG_AUGMENT, "image": IMAGE_AUGMENT}

    def __init__(self, encoder: nn.Module, label="lvh", proj_dim: int = 128, temperature: float = 0.1,
                 batch_size: int = 64, augment=ECG_AUGMENT):
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(encoder.embed_dim, encoder.embed_dim, proj_dim)
        self.label, self.temperature, self.batch_size = label, temperature, batch_size
        self.augment = build_augment(augment, modality=spec_modality(augment))  # "rrc,flip": an image pipeline

    def batch_extras(self, index) -> dict:
        """Per-row tensors the trainer slices into each batch: ``{"labels": [N] int64}``."""
        return {"labels": torch.from_numpy(class_ids(index, self.label))}

    def make_sampler(self, index, seed: int = 0) -> RecordBatchSampler:
        self.augment.bind(index, seed)
        return RecordBatchSampler(len(index), batch_size=self.batch_size, seed=seed)

    def forward(self, x: Tensor, batch: dict) -> Tensor:
        if "labels" not in batch:
            raise KeyError("SupCon needs batch['labels'] (the trainer adds it from method.batch_extras(index))")
        return two_view_nce(self, x, batch["labels"])  # SimCLR's two views, ids = class labels
