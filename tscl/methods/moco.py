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

import copy

import torch
from torch import Tensor, nn

from tscl.augment import EHR_AUGMENT, build_augment
from tscl.augment_image import IMAGE_AUGMENT, spec_modality
from tscl.distributed import gather_embeddings
from tscl.encoders import ProjectionHead
from tscl.kernels import info_nce
from tscl.methods.base import Method
from tscl.methods.sampling import RecordBatchSampler

__all__ = ["MoCo", "momentum_update", "enqueue"]

MOCO_AUGMENT = "crop:len=0.8,scale,noise:snr=20,wander,dropout:p=0.1"


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, m: float) -> None:
    """θ_k ← m θ_k + (1 − m) θ_q for every parameter (buffers such as BN statistics are the key branch's own)."""
    for pk, pq in zip(key.parameters(), query.parameters()):
        pk.mul_(m).add_(pq.detach(), alpha=1 - m)


@torch.no_grad()
def enqueue(queue: Tensor, ptr: Tensor, filled: Tensor, keys: Tensor, queue_ids: Tensor | None = None,
            ids: Tensor | None = None) -> None:
    """Write ``keys [B, D]`` (and their ``ids [B]``) into the ring buffer ``queue [K, D]`` at ``ptr``.

    ``ptr ← (ptr + B) mod K`` and ``filled ← min(filled + B, K)``; until the first wrap the
    valid entries are ``queue[:filled]``. More than K keys: only the last K are kept."""
    size = queue.shape[0]
    if keys.shape[0] > size:
        keys = keys[-size:]
        ids = ids[-size:] if ids is not None else None
    b = keys.shape[0]
    rows = (int(ptr) + torch.arange(b, device=queue.device)) % size
    queue[rows] = keys.to(queue.dtype)
    if queue_ids is not None:
        queue_ids[rows] = ids.to(queue_ids.dtype)
    ptr.fill_((int(ptr) + b) % size)
    filled.fill_(min(int(filled) + b, size))


class MoCo(Method):
    modalities = ("waveform", "image", "ehr")
    default_augment = {"waveform": MOCO_AUGMENT, "ehr": EHR_AUGMENT, "image": IMAGE_AUGMENT}

    def __init__(self, encoder: nn.Module, proj_dim: int = 128, temperature: float = 0.2,
                 queue_size: int = 4096, momentum: float = 0.99, batch_size: int = 64, augment=MOCO_AUGMENT):
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(encoder.embed_dim, encoder.embed_dim, proj_dim)
        self.key_encoder, self.key_head = copy.deepcopy(encoder), copy.deepcopy(self.head)
        for p in [*self.key_encoder.parameters(), *self.key_head.parameters()]:
            p.requires_grad_(False)
        self.temperature, self.momentum, self.batch_size = temperature, momentum, batch_size
        self.augment = build_augment(augment, modality=spec_modality(augment))  # "rrc,flip": an image pipeline
        self.register_buffer("queue", nn.functional.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._pending: Tensor | None = None

    def make_sampler(self, index, seed: int = 0) -> RecordBatchSampler:
        self.augment.bind(index, seed)
        return RecordBatchSampler(len(index), batch_size=self.batch_size, seed=seed)

    def bank(self) -> Tensor | None:
        n = int(self.queue_filled)
        return self.queue[:n].clone() if n else None

    def forward(self, x: Tensor, batch: dict) -> Tensor:
        q = self.head(self.encoder(self.augment(x)))  # [N, D]
        with torch.no_grad():
            k = nn.functional.normalize(self.key_head(self.key_encoder(self.augment(x))).float(), dim=1)  # [N, D]
        (q, _), (k, _) = gather_embeddings(q), gather_embeddings(k)  # global batch, same row order
        self._pending = k
        return info_nce(q, k, temperature=self.temperature, bank=self.bank())

    @torch.no_grad()
    def after_step(self) -> None:
        momentum_update(self.key_encoder, self.encoder, self.momentum)
        momentum_update(self.key_head, self.head, self.momentum)
        if self._pending is not None:
            enqueue(self.queue, self.queue_ptr, self.queue_filled, self._pending)
            self._pending = None
