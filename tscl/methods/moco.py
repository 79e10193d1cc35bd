"""MoCo: momentum contrast with a queue of keys (v2 recipe).

He, Fan, Wu, Xie, Girshick. "Momentum contrast for unsupervised visual representation
learning." CVPR 2020 (arXiv 1911.05722); Chen, Fan, Girshick, He. "Improved baselines with
momentum contrastive learning." arXiv 2003.04297 (v2: MLP head, stronger augmentation).

Two augmented views of each of N recordings. The query branch (encoder f_q + head) gets
gradients; the key branch f_k is a copy updated only by an exponential moving average,

    θ_k ← m θ_k + (1 − m) θ_q          (after every optimiser step, no gradient)

A FIFO queue Q [K, D] holds the normalised keys of the last K/N batches. With
q = f_q(view1), k = f_k(view2), the loss of query i is

    l_i = −log  exp(q_i·k_i / τ) / ( exp(q_i·k_i / τ) + Σ_{j≠i} exp(q_i·k_j / τ) + Σ_{b∈Q} exp(q_i·b / τ) )

(the other in-batch keys are negatives too, as in the fused form; the original code uses
only the own key plus the queue). Kernel terms: q, k with diagonal positives, ``bank = Q``
without ids (every queue entry is a negative). The queue and its pointer are registered
buffers, so they are saved with the method's state_dict. Data parallel: queries (with their
gradient) and keys are gathered across ranks in the same rank order, so query i's positive is
still column i and every rank's keys are negatives of every query; the gathered keys are
enqueued, so all ranks hold the same queue. No shuffled BN (BN statistics stay per rank).
"""
from __future__ import annotations

from torch import Tensor, nn

from tscl import kernels
from tscl.augment import EHR_AUGMENT, build_augment, spec_modality
from tscl.augment_image import IMAGE_AUGMENT
from tscl.distributed import gather_embeddings
from tscl.encoders import ProjectionHead
from tscl.methods.base import Method
from tscl.methods.queue import encode_keys, key_copy, queue_bank, register_queue, update_key_branch
from tscl.methods.sampling import RecordBatchSampler
from tscl.methods.simclr import ECG_AUGMENT as MOCO_AUGMENT  # the v2 recipe's strong augmentation: SimCLR's

__all__ = ["MoCo"]


class MoCo(Method):
    modalities = ("waveform", "image", "ehr")
    default_augment = {"waveform": MOCO_AUGMENT, "ehr": EHR_AUGMENT, "image": IMAGE_AUGMENT}

    def __init__(self, encoder: nn.Module, proj_dim: int = 128, temperature: float = 0.2,
                 queue_size: int = 4096, momentum: float = 0.99, batch_size: int = 64, augment=MOCO_AUGMENT):
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(encoder.embed_dim, encoder.embed_dim, proj_dim)
        self.key_encoder, self.key_head = key_copy(encoder, self.head)
        self.temperature, self.momentum, self.batch_size = temperature, momentum, batch_size
        self.augment = build_augment(augment, modality=spec_modality(augment))  # "rrc,flip": an image pipeline
        register_queue(self, queue_size, proj_dim)  # buffers queue, queue_ptr, queue_filled
        self._pending: tuple[Tensor, None] | None = None

    def make_sampler(self, index, seed: int = 0) -> RecordBatchSampler:
        self.augment.bind(index, seed)
        return RecordBatchSampler(len(index), batch_size=self.batch_size, seed=seed)

    def bank(self) -> Tensor | None:
        return queue_bank(self)[0]

    def forward(self, x: Tensor, batch: dict) -> Tensor:
        q = self.head(self.encoder(self.augment(x)))  # [N, D]
        k = encode_keys(self, self.augment(x))  # [N, D], no gradient
        (q, _), (k, _) = gather_embeddings(q), gather_embeddings(k)  # global batch, same row order
        self._pending = (k, None)
        return kernels.info_nce(q, k, temperature=self.temperature, bank=self.bank())

    def after_step(self) -> None:
        update_key_branch(self)  # EMA of the key branch, then this step's keys enter the queue
