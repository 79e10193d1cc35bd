"""One InfoNCE entry point for every tscl objective (re-exported by ``tscl.kernels``).

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
same numbers to floating-point tolerance, and both return NaN when any of q, k, bank or
the temperature is not finite (:func:`nonfinite_inputs` names the culprit afterwards).

Precision ("cast at the call"): the embeddings are L2-normalised in the dtype they arrive
in (fp32 under autocast, where ``F.normalize`` runs in fp32); then q, k and the bank are
cast to one compute dtype, which is the autocast dtype when autocast is enabled for the
tensors' device type (bf16 under ``torch.autocast("cuda", dtype=torch.bfloat16)``, even for
fp32 queues and momentum keys), and ``promote_types(q.dtype, k.dtype)`` otherwise (the bank
follows q and k, it never promotes them). Both backends receive that dtype and accumulate
in fp32; the reference runs with autocast disabled so its products stay fp32 over the
rounded inputs, as the kernel's do. fp32 callers get TF32 tensor-core products when they
allow it (``allow_tf32=True``, or by default ``torch.backends.cuda.matmul.allow_tf32``),
exact fp32 (``ieee``) products otherwise. Float64 inputs are never autocast (gradcheck).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from .reference import info_nce_rows_reference

__all__ = ["info_nce", "InfoNCEStats", "info_nce_rows_reference", "nonfinite_inputs", "triton_available"]

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


def nonfinite_inputs(**tensors) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity, in argument order.

    For a trainer that has just seen a non-finite loss::

        bad = nonfinite_inputs(q=q, k=k, bank=bank, temperature=tau)   # e.g. ["bank"]

    ``None`` and non-floating tensors (ids) are skipped; Python floats are checked too.
    Each tensor costs one reduction and the call synchronises with the device, so call it
    after a non-finite loss, not every step.
    """
    bad = []
    for name, t in tensors.items():
        if t is None:
            continue
        if isinstance(t, (float, int)):
            if not math.isfinite(t):
                bad.append(name)
            continue
        if isinstance(t, Tensor) and (t.dtype.is_floating_point or t.dtype.is_complex):
            if t.numel() and not bool(torch.isfinite(t.detach()).all()):
                bad.append(name)
    return bad


def _compute_dtype(q: Tensor, k: Tensor) -> torch.dtype:
    """The dtype q, k and the bank are cast to at the call (see the module docstring)."""
    device_type = q.device.type
    if q.dtype == torch.float64 or k.dtype == torch.float64:
        return torch.float64
    if _autocast_enabled(device_type):
        return _autocast_dtype(device_type)
    return torch.promote_types(q.dtype, k.dtype)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device_type argument
        if device_type == "cuda":
            return torch.is_autocast_enabled()
        return device_type == "cpu" and torch.is_autocast_cpu_enabled()


def _autocast_dtype(device_type: str) -> torch.dtype:
    try:
        return torch.get_autocast_dtype(device_type)
    except (AttributeError, TypeError):  # torch < 2.4
        return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()


def _compiling() -> bool:
    fn = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(fn()) if fn is not None else False


def _check_temperature(temperature, device):
    """A Python float or a 0-dim float tensor on ``device``; must be finite and > 0.

    Python floats and CPU tensors are checked here and raise; a CUDA tensor (or any tensor
    under ``torch.compile``) is not read back, which would stall the host every step:
    a non-finite or non-positive value turns the loss into NaN on both backends instead.
    A float stays a float (the kernel takes it as an argument: no host-to-device copy per
    call), and so does a CPU tensor without gradient used with CUDA inputs; a CPU tensor that
    learns is copied without blocking (its gradient comes back to the CPU).
    """
    if not isinstance(temperature, Tensor):
        t = float(temperature)
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        return t
    if temperature.numel() != 1:
        raise ValueError("temperature tensor must hold one value")
    if not temperature.dtype.is_floating_point:
        raise TypeError(f"temperature must be a floating-point tensor, got {temperature.dtype}")
    temperature = temperature.reshape(())
    if temperature.device.type == "cpu" and not _compiling():
        t = float(temperature.detach())
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be finite and > 0, got {t}")
        if torch.device(device).type != "cpu":
            return temperature.to(device, non_blocking=True) if temperature.requires_grad else t
    return temperature


def _check_ids(ids: Tensor | None, n: int, name: str, device) -> Tensor | None:
    if ids is None:
        return None
    if not isinstance(ids, Tensor):
        ids = torch.as_tensor(ids)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {ids.dtype}")
    if ids.shape != (n,):
        raise ValueError(f"{name} must have shape [{n}], got {list(ids.shape)}")
    # a CPU id tensor for CUDA inputs is copied without blocking the host (no sync per call)
    return ids.to(device=device, dtype=torch.int64, non_blocking=True).contiguous()


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
    allow_tf32: bool | None = None,
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
        allow_tf32: fp32 compute dtype only: TF32 tensor-core products in the kernel (None:
            follow ``torch.backends.cuda.matmul.allow_tf32``). The reference ignores it.

    Raises ``ValueError`` for ``exclude_self=True`` without ids, a non-finite or
    non-positive temperature (floats and CPU tensors; see :func:`_check_temperature`),
    and k, bank or temperature on another device than q. Autocast: see the module docstring.
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
    if k.device != q.device:
        raise ValueError(f"k is on {k.device} but q is on {q.device}")
    if (q_ids is None) != (k_ids is None):
        raise ValueError("pass both q_ids and k_ids, or neither (diagonal positives)")
    if q_ids is None:
        if exclude_self:
            raise ValueError("exclude_self=True needs ids: without ids the only positive is the diagonal, "
                             "which exclude_self removes")
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
        if bank.device != q.device:
            raise ValueError(f"bank is on {bank.device} but q is on {q.device}")
        bank_ids = _check_ids(bank_ids, bank.shape[0], "bank_ids", q.device)
        bank = bank.detach()
    elif bank_ids is not None:
        raise ValueError("bank_ids given without a bank")
    if isinstance(temperature, Tensor) and temperature.device != q.device and temperature.device.type != "cpu":
        raise ValueError(f"temperature is on {temperature.device} but q is on {q.device}")
    temperature = _check_temperature(temperature, q.device)

    if normalize:
        q = torch.nn.functional.normalize(q, dim=-1)
        k = torch.nn.functional.normalize(k, dim=-1)
        if bank is not None:
            bank = torch.nn.functional.normalize(bank, dim=-1)

    # cast at the call: one compute dtype for q, k and the bank (module docstring)
    dtype = _compute_dtype(q, k)
    q, k = q.to(dtype), k.to(dtype)
    if bank is not None:
        bank = bank.to(dtype)
    if allow_tf32 is None:
        allow_tf32 = bool(torch.backends.cuda.matmul.allow_tf32)

    # both backends share one signature; symmetric returns rows then columns ([N+M]), and the
    # Triton kernel computes both directions at once, sharing the backward's recomputed tiles
    rows = _rows_backend(backend, q)
    loss, npos = rows(q, k, q_ids, k_ids, temperature, exclude_self, bank, bank_ids, bank_same_id == "mask",
                      symmetric=symmetric, allow_tf32=allow_tf32)
    losses, counts = ([loss[:n], loss[n:]], [npos[:n], npos[n:]]) if symmetric else ([loss], [npos])

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
