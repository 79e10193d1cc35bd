"""Poly-window contrastive learning: K overlapping windows of one record are mutual positives.

Yuan, Van Duyn, Yan, Huang, Vesal, Plis, Hu, Kwak, Xiao, Fedorov. "Poly-window contrastive
learning for ECG" (title abridged). IEEE BHI 2025, arXiv 2508.15225.

Each of N records ``x [N, C, T]`` is cut into K ≥ 2 windows of length L at stride s
(overlap L − s), starting at a random offset when (K−1)s + L < T. All N·K windows go
through the encoder in one pass, ``z [N·K, D]``; window (i, k) has record id i.

The paper maximises agreement of the K windows "via statistics"; its exact objective is
**unverified** here (the paper body was not available). Two readings are offered:

``objective="pairs"`` (default) — multi-positive InfoNCE over all K(K−1) window pairs::

    L = −1/(NK) Σ_{i,k} 1/(K−1) Σ_{k'≠k} log  exp(z_ik·z_ik' / τ) / Σ_{(j,l)≠(i,k)} exp(z_ik·z_jl / τ)

  kernel terms: q = k = z, ids = record id, exclude_self (same-record windows are never negatives).

``objective="mean"`` — each window against the mean window embedding of every record,
c_i = mean_k ẑ_ik (ẑ normalised)::

    L = −1/(NK) Σ_{i,k} log  exp(ẑ_ik·ĉ_i / τ) / Σ_j exp(ẑ_ik·ĉ_j / τ)

  kernel terms: q = z [NK], k = c [N], q_ids = record id per window, k_ids = record id.

Augmentation: by default every window gets ``WINDOW_AUGMENT``, SimCLR's ``ECG_AUGMENT``
without its crop (the windows are the crops): scaling, noise at 20 dB SNR, baseline wander and
lead dropout, drawn independently per window. The windows of one record share everything
that is constant within it — gain, noise level, baseline, which leads are present — so with
no augmentation the cheapest way to match them is that record fingerprint, not the waveform.
``augment="none"`` gives the augmentation-free reading of the method (measured results:
``docs/methods_notes.md``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from tscl import kernels
from tscl.augment import build_augment
from tscl.encoders import ProjectionHead
from tscl.distributed import gather_embeddings
from tscl.methods.base import Method
from tscl.methods.sampling import RecordBatchSampler
from tscl.methods.simclr import ECG_AUGMENT

__all__ = ["PolyWindow", "cut_windows", "WINDOW_AUGMENT"]

# SimCLR's ECG ops minus the crop (the windows are the crops)
WINDOW_AUGMENT = ",".join(op for op in ECG_AUGMENT.split(",") if not op.startswith("crop"))


def cut_windows(x: Tensor, n_windows: int, window_len: int, stride: int, generator=None) -> Tensor:
    """``x [N, C, T] -> [N, K, C, L]``: K windows at ``offset_i + k·stride`` (random offset per record)."""
    n, _, t = x.shape
    span = (n_windows - 1) * stride + window_len
    if span > t:
        raise ValueError(f"{n_windows} windows of {window_len} at stride {stride} span {span} > {t} samples")
    offset = torch.randint(0, t - span + 1, (n, 1, 1), generator=generator, device=x.device)
    starts = torch.arange(n_windows, device=x.device)[None, :, None] * stride
    idx = offset + starts + torch.arange(window_len, device=x.device)[None, None, :]  # [N, K, L]
    rows = torch.arange(n, device=x.device)[:, None, None]
    return x[rows, :, idx].permute(0, 1, 3, 2)  # advanced indexing puts [N, K, L] first: -> [N, K, C, L]


class PolyWindow(Method):
    generator_names = ("_gen",)

    def __init__(self, encoder: nn.Module, n_windows: int = 4, window_len: int | float = 0.5,
                 stride: int | float | None = None, objective: str = "pairs", proj_dim: int = 128,
                 temperature: float = 0.1, batch_size: int = 64, augment=WINDOW_AUGMENT):
        super().__init__()
        if n_windows < 2:
            raise ValueError("poly-window needs n_windows >= 2")
        if objective not in ("pairs", "mean"):
            raise ValueError(f"objective must be 'pairs' or 'mean', got {objective!r}")
        self.encoder = encoder
        self.head = ProjectionHead(encoder.embed_dim, encoder.embed_dim, proj_dim)
        self.n_windows, self.window_len, self.stride, self.objective = n_windows, window_len, stride, objective
        self.temperature, self.batch_size = temperature, batch_size
        self.augment = build_augment(augment)
        self._gen: torch.Generator | None = None

    def geometry(self, t: int) -> tuple[int, int]:
        """(window length, stride) in samples for records of ``t`` samples; the default stride
        spreads the K windows over the whole record."""
        length = int(self.window_len * t) if self.window_len <= 1 else int(self.window_len)
        if self.stride is None:
            stride = (t - length) // (self.n_windows - 1)
        else:
            stride = int(self.stride * length) if self.stride <= 1 else int(self.stride)
        return length, max(1, stride)

    def make_sampler(self, index, seed: int = 0) -> RecordBatchSampler:
        self.augment.bind(index, seed)
        self._gen = torch.Generator().manual_seed(seed)
        return RecordBatchSampler(len(index), batch_size=self.batch_size, seed=seed)

    def forward(self, x: Tensor, batch: dict) -> Tensor:
        n, c, t = x.shape
        length, stride = self.geometry(t)
        gen = self._gen if x.device.type == "cpu" else None
        w = cut_windows(x, self.n_windows, length, stride, gen).reshape(n * self.n_windows, c, length)
        if self.augment:
            w = self.augment(w)
        z = self.head(self.encoder(w))  # [N·K, D], window k of record i at row i·K + k
        rec = batch["record_ids"]  # [N]
        ids = rec.repeat_interleave(self.n_windows)  # [N·K]
        if self.objective == "pairs":
            z, ids = gather_embeddings(z, ids)
            return kernels.info_nce(z, z, ids, ids, temperature=self.temperature, exclude_self=True)
        zn = nn.functional.normalize(z.float(), dim=1)
        centre = zn.reshape(n, self.n_windows, -1).mean(dim=1)  # [N, D]
        zn, ids = gather_embeddings(zn, ids)
        centre, rec = gather_embeddings(centre, rec)
        return kernels.info_nce(zn, centre, ids, rec, temperature=self.temperature)
