"""PyTorch reference for the id-aware InfoNCE that every tscl objective uses.

This file defines the semantics; the fused Triton kernel in ``triton_info_nce.py`` must
match it to floating-point tolerance. It materialises the full N x (M+B) similarity matrix,
so it is meant for CPU, tests and small batches.

Row loss of anchor i (SupCon's L_out form)::

    s_ij   = <q_i, k_j> / tau                       (q, k L2-normalised when normalize=True)
    V(i)   = columns in the denominator: every key j (minus j == i when exclude_self),
             plus every bank entry b (minus same-id entries when bank_same_id == "mask")
    P(i)   = { j in V(i) : ids match }               (bank entries only when "positive")
    l_i    = logsumexp_{j in V(i)} s_ij  -  mean_{p in P(i)} s_ip

Anchors with an empty P(i) get l_i = 0 and are left out of the mean; their count is
reported in :class:`InfoNCEStats`, never turned into a NaN. A NaN or infinity in q, k or
the bank, or a temperature that is not finite and > 0, is never hidden: the affected rows
(hence any reduction over them) are NaN.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["info_nce_rows_reference"]


def info_nce_rows_reference(
    q: Tensor,
    k: Tensor,
    q_ids: Tensor,
    k_ids: Tensor,
    temperature: Tensor | float,
    exclude_self: bool = False,
    bank: Tensor | None = None,
    bank_ids: Tensor | None = None,
    mask_bank_same_id: bool = False,
    symmetric: bool = False,
    allow_tf32: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-anchor InfoNCE losses ``[N]`` (float32; float64 for float64 inputs) and positive counts ``[N]`` (int64).

    ``symmetric=True`` appends the column losses (anchors k, keys q, same ``exclude_self``,
    no bank): ``[N+M]``, rows then columns, as the Triton backend returns them.
    ``allow_tf32`` is accepted for the common signature and ignored. Autocast is switched
    off inside, so the products are fp32 over the inputs as given (the entry point has
    already cast them to the compute dtype).

    ``q [N,D]``, ``k [M,D]`` are already normalised (or deliberately not); ``q_ids [N]``,
    ``k_ids [M]`` are int64; ``temperature`` is a 0-dim float tensor (may require grad) or a float;
    ``bank [B,D]`` receives no gradient; ``bank_ids [B]`` or None (then every bank entry
    is a negative). Accumulation is in float32 for fp32/bf16/fp16 inputs (float64 stays
    float64, so the reference can be gradchecked).
    """
    with torch.autocast(q.device.type, enabled=False):
        loss, npos = _rows(q, k, q_ids, k_ids, temperature, exclude_self, bank, bank_ids, mask_bank_same_id)
        if not symmetric:
            return loss, npos
        col_loss, col_npos = _rows(k, q, k_ids, q_ids, temperature, exclude_self, None, None, False)
    return torch.cat([loss, col_loss]), torch.cat([npos, col_npos])


def _rows(q, k, q_ids, k_ids, temperature, exclude_self, bank, bank_ids, mask_bank_same_id):
    acc = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs (gradcheck)
    if isinstance(temperature, torch.Tensor):
        tau = temperature.to(acc)
        tau = torch.where((tau > 0) & torch.isfinite(tau), tau, torch.full_like(tau, float("nan")))
        inv_tau = 1.0 / tau
    else:  # a Python float, checked by the entry point: no tensor, no host-to-device copy
        tau = float(temperature)
        inv_tau = 1.0 / tau if tau > 0 and tau != float("inf") else float("nan")
    qf, kf = q.to(acc), k.to(acc)
    s = (qf @ kf.T) * inv_tau
    pos = q_ids[:, None] == k_ids[None, :]
    valid = torch.ones_like(pos)
    if exclude_self:
        eye = torch.eye(q.shape[0], k.shape[0], dtype=torch.bool, device=q.device)
        valid = ~eye
        pos = pos & valid
    if bank is not None and bank.shape[0] > 0:
        sb = (qf @ bank.detach().to(acc).T) * inv_tau
        if bank_ids is None:
            bpos = torch.zeros(q.shape[0], bank.shape[0], dtype=torch.bool, device=q.device)
        else:
            bpos = q_ids[:, None] == bank_ids[None, :]
        if mask_bank_same_id:
            bvalid, bpos = ~bpos, torch.zeros_like(bpos)
        else:
            bvalid = torch.ones_like(bpos)
        s = torch.cat([s, sb], dim=1)
        pos = torch.cat([pos, bpos], dim=1)
        valid = torch.cat([valid, bvalid], dim=1)
    # rows with no column at all (N = M = 1 with exclude_self) must not produce -inf/NaN
    empty_row = ~valid.any(dim=1, keepdim=True)
    lse = torch.logsumexp(s.masked_fill(~valid, float("-inf")).masked_fill(empty_row, 0.0), dim=1)
    npos = pos.sum(dim=1)
    pos_sum = torch.where(pos, s, torch.zeros_like(s)).sum(dim=1)
    has_pos = npos > 0
    loss = torch.where(has_pos, lse - pos_sum / npos.clamp_min(1), torch.zeros_like(lse))
    return loss, npos
