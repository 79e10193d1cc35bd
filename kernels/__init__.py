"""One InfoNCE entry point for every tscl objective.

``info_nce(q, k, q_ids, k_ids, ...)`` computes the multi-positive, id-aware InfoNCE of
``kernels/reference.py`` (read its docstring for the exact formula). Methods differ only
in what they pass:

=====================  =================================================================
SimCLR / NT-Xent       q = k = both views stacked [2N, D], ids = sample index, exclude_self
CLIP / two-tower       q = tower A, k = tower B, no ids (pair i <-> i), symmetric=True
PCLR                   ids = patient id
Poly-window            ids = record id over K windows per record
SupCon                 ids = class label
MoCo                   bank = queue of momentum keys, no bank_ids (all negatives)
Patient memory queue   bank + bank_ids = patient ids; same-patient entries positive or masked
=====================  =================================================================

On CUDA tensors (with Triton installed) the call runs the fused Triton kernel, which never
stores the N x M similarity matrix; elsewhere it runs the PyTorch reference. Both give the
same numbers to floating-point tolerance.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from .reference import info_nce_rows_reference

__all__ = ["info_nce", "InfoNCEStats", "info_nce_rows_reference", "triton_available"]

_REDUCTIONS = ("mean", "sum", "none")
_BANK_SAME_ID = ("positive", "mask")


@dataclass(frozen=True)
class InfoNCEStats:
    """What the loss saw: how many anchors had positives and how many did not."""

    n_anchors: int
    n_without_positive: int
    mean_positives: float


def triton_available() -> bool:
    """True when the Triton kernels can run (Triton importable, and a GPU or the interpreter)."""
    try:
        from . import triton_info_nce  # noqa: F401
    except Exception:  # ImportError, or Triton present but unusable on this platform
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def _rows_backend(backend: str, q: Tensor):
    if backend == "reference":
        return info_nce_rows_reference
    if backend not in ("auto", "triton"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'reference', got {backend!r}")
    if backend == "auto" and not q.is_cuda:
        return info_nce_rows_reference
    try:
        from .triton_info_nce import info_nce_rows_triton
    except ImportError as err:
        if backend == "triton":
            raise RuntimeError(f"backend='triton' requested but the Triton kernel is unavailable: {err}") from err
        return info_nce_rows_reference
    return info_nce_rows_triton


def _check_ids(ids: Tensor | None, n: int, name: str, device) -> Tensor | None:
    if ids is None:
        return None
    if not isinstance(ids, Tensor):
        ids = torch.as_tensor(ids)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {ids.dtype}")
    if ids.shape != (n,):
        raise ValueError(f"{name} must have shape [{n}], got {list(ids.shape)}")
    return ids.to(device=device, dtype=torch.int64).contiguous()


def info_nce(
    q: Tensor,
    k: Tensor,
    q_ids: Tensor | None = None,
    k_ids: Tensor | None = None,
    *,
    temperature: float | Tensor = 0.1,
    symmetric: bool = False,
    exclude_self: bool = False,
    bank: Tensor | None = None,
    bank_ids: Tensor | None = None,
    bank_same_id: str = "positive",
    normalize: bool = True,
    reduction: str = "mean",
    return_stats: bool = False,
    backend: str = "auto",
):
    """Id-aware InfoNCE over anchors ``q [N,D]`` and keys ``k [M,D]``.

    Args:
        q_ids, k_ids: int ids ``[N]``, ``[M]``; key j is a positive of anchor i iff
            ``k_ids[j] == q_ids[i]``. Without ids the positives are the diagonal (N == M).
        temperature: float, or a 0-dim tensor that receives a gradient (learnable, CLIP).
        symmetric: average the row (q -> k) and column (k -> q) losses; the bank only
            enters the row direction.
        exclude_self: q and k are the same set; the diagonal is neither positive nor in
            the denominator (NT-Xent over 2N views).
        bank, bank_ids: extra keys ``[B,D]`` without gradient (MoCo queue, patient memory
            queue) and their ids ``[B]`` (None: every bank entry is a negative).
        bank_same_id: ``"positive"`` (same-id bank entries are extra positives) or
            ``"mask"`` (they are removed from the denominator: false-negative masking).
        normalize: L2-normalise q, k and bank first (cosine similarity).
        reduction: ``"mean"`` over anchors that have a positive, ``"sum"``, or ``"none"``
            (``[N]``, or ``[N+M]`` row-then-column losses when symmetric; anchors without
            positives hold 0).
        return_stats: also return an :class:`InfoNCEStats`.
        backend: ``"auto"`` (Triton on CUDA, reference elsewhere), ``"triton"``, ``"reference"``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if bank_same_id not in _BANK_SAME_ID:
        raise ValueError(f"bank_same_id must be one of {_BANK_SAME_ID}, got {bank_same_id!r}")
    if q.dim() != 2 or k.dim() != 2:
        raise ValueError(f"q and k must be 2-D [N,D] and [M,D], got {list(q.shape)} and {list(k.shape)}")
    n, d = q.shape
    m = k.shape[0]
    if k.shape[1] != d:
        raise ValueError(f"q and k must share the embedding dim, got {d} and {k.shape[1]}")
    if n == 0 or m == 0:
        raise ValueError(f"info_nce needs at least one anchor and one key, got N={n}, M={m}")
    if (q_ids is None) != (k_ids is None):
        raise ValueError("pass both q_ids and k_ids, or neither (diagonal positives)")
    if q_ids is None:
        if n != m:
            raise ValueError(f"without ids the positives are the diagonal, which needs N == M (got {n}, {m})")
        q_ids = torch.arange(n, device=q.device)
        k_ids = q_ids
    q_ids = _check_ids(q_ids, n, "q_ids", q.device)
    k_ids = _check_ids(k_ids, m, "k_ids", q.device)
    if exclude_self and n != m:
        raise ValueError(f"exclude_self needs q and k to be the same set (N == M), got {n}, {m}")
    if bank is not None:
        if bank.dim() != 2 or bank.shape[1] != d:
            raise ValueError(f"bank must be [B,{d}], got {list(bank.shape)}")
        bank_ids = _check_ids(bank_ids, bank.shape[0], "bank_ids", q.device)
        bank = bank.detach()
    elif bank_ids is not None:
        raise ValueError("bank_ids given without a bank")
    if not isinstance(temperature, Tensor):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        temperature = torch.tensor(float(temperature), device=q.device)
    elif temperature.numel() != 1:
        raise ValueError("temperature tensor must hold one value")
    temperature = temperature.reshape(())

    if normalize:
        q = torch.nn.functional.normalize(q, dim=-1)
        k = torch.nn.functional.normalize(k, dim=-1)
        if bank is not None:
            bank = torch.nn.functional.normalize(bank, dim=-1)

    rows = _rows_backend(backend, q)
    mask_bank = bank_same_id == "mask"
    if symmetric and rows is not info_nce_rows_reference:
        # the Triton kernel computes both directions at once and shares the backward's tiles
        loss, npos = rows(q, k, q_ids, k_ids, temperature, exclude_self, bank, bank_ids, mask_bank, symmetric=True)
        losses, counts = [loss[:n], loss[n:]], [npos[:n], npos[n:]]
    else:
        row_loss, row_npos = rows(q, k, q_ids, k_ids, temperature, exclude_self, bank, bank_ids, mask_bank)
        losses, counts = [row_loss], [row_npos]
        if symmetric:
            col_loss, col_npos = rows(k, q, k_ids, q_ids, temperature, exclude_self, None, None, False)
            losses.append(col_loss)
            counts.append(col_npos)

    reduced = []
    for loss, npos in zip(losses, counts):
        has_pos = npos > 0
        if reduction == "mean":
            reduced.append(loss.sum() / has_pos.sum().clamp_min(1))
        elif reduction == "sum":
            reduced.append(loss.sum())
    if reduction == "none":
        out = torch.cat(losses)
    else:
        out = reduced[0] if len(reduced) == 1 else 0.5 * (reduced[0] + reduced[1])
    if not return_stats:
        return out
    npos_all = torch.cat(counts)
    stats = InfoNCEStats(
        n_anchors=int(npos_all.numel()),
        n_without_positive=int((npos_all == 0).sum()),
        mean_positives=float(npos_all.float().mean()),
    )
    return out, stats
