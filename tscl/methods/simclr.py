"""SimCLR: contrastive learning of visual representations from two augmented views.

Chen, Kornblith, Norouzi, Hinton. "A simple framework for contrastive learning of visual
representations." ICML 2020 (arXiv 2002.05709).

Each of N recordings is augmented twice; both views are encoded and projected to
``z [2N, D]``. View i's only positive is the other view of the same recording, every other
view in the batch (2N − 2 of them) is a negative. NT-Xent over the 2N × 2N cosine
similarity matrix with the diagonal removed::

    l_i = −log  exp(cos(z_i, z_i⁺) / τ) / Σ_{j ≠ i} exp(cos(z_i, z_j) / τ),   L = mean_i l_i

In kernel terms: q = k = z, ids = recording index (repeated for the two views), exclude_self.
"""
from __future__ import annotations

from torch import Tensor, nn

from tscl import kernels
from tscl.augment import EHR_AUGMENT, build_augment, spec_modality
from tscl.augment_image import IMAGE_AUGMENT
from tscl.payloads import cat_payloads
from tscl.encoders import ProjectionHead
from tscl.distributed import gather_embeddings
from tscl.methods.base import Method
from tscl.methods.sampling import RecordBatchSampler

__all__ = ["SimCLR", "ECG_AUGMENT", "two_view_nce"]

ECG_AUGMENT = "crop:len=0.8,scale,noise:snr=20,wander,dropout:p=0.1"


def two_view_nce(method: Method, x, ids: Tensor) -> Tensor:
    """NT-Xent over two augmented views of each item (SimCLR, SupCon): ``x`` the items' payload,
    ``ids [N]`` the id of each item, given to both its views. The views ``[2N, ...]`` go through
    ``method.encoder`` and ``method.head`` in one pass; under DDP the embeddings and ids are
    gathered across ranks before the loss."""
    views = cat_payloads([method.augment(x), method.augment(x)])  # [2N, ...]: two views of each item
    z, ids = gather_embeddings(method.head(method.encoder(views)), ids.repeat(2))  # [2N, D], [2N]
    return kernels.info_nce(z, z, ids, ids, temperature=method.temperature, exclude_self=True)


class SimCLR(Method):
    modalities = ("waveform", "image", "ehr")
    default_augment = {"waveform": ECG_AUGMENT, "ehr": EHR_AUGMENT, "image": IMAGE_AUGMENT}

    def __init__(self, encoder: nn.Module, proj_dim: int = 128, temperature: float = 0.1,
                 batch_size: int = 64, augment=ECG_AUGMENT):
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(encoder.embed_dim, encoder.embed_dim, proj_dim)
        self.temperature, self.batch_size = temperature, batch_size
        self.augment = build_augment(augment, modality=spec_modality(augment))  # "rrc,flip": an image pipeline

    def make_sampler(self, index, seed: int = 0) -> RecordBatchSampler:
        self.augment.bind(index, seed)
        return RecordBatchSampler(len(index), batch_size=self.batch_size, seed=seed)

    def forward(self, x: Tensor, batch: dict) -> Tensor:
        return two_view_nce(self, x, batch["record_ids"])  # view i and i + N share their (global) record id
