"""Fused, tiled InfoNCE in Triton: forward and backward without the N x M similarity matrix.

Semantics are exactly those of :func:`tscl.kernels.reference.info_nce_rows_reference`.
For anchor i, with ``s_ij = <q_i, k_j> / tau`` over the denominator columns V(i) (keys, minus
the diagonal under ``exclude_self``, plus bank entries, minus same-id bank entries under
``mask_bank_same_id``) and the positives P(i) (matching ids)::

    l_i   = lse_i - possum_i / npos_i,      lse_i = logsumexp_{j in V(i)} s_ij,
                                            possum_i = sum_{p in P(i)} s_ip,  npos_i = |P(i)|
    l_i   = 0                               when npos_i == 0

Forward (one program per block of BLOCK_M anchors): sweep the keys, then the bank, in tiles
of BLOCK_N columns; keep a running max ``m_i`` and rescaled sum ``l_i`` (online
log-sum-exp, base 2), the positives' logit sum and their count. Only ``lse [N]`` and
``npos [N]`` are saved for the backward.

Backward, with ``g_i`` the incoming gradient (0 where npos_i == 0),
``p_ij = exp(s_ij - lse_i)`` recomputed tile by tile and
``dS_ij = g_i (p_ij - [j in P(i)] / npos_i)``::

    dq_i   = (1/tau) sum_{j in keys and bank} dS_ij k_j       (kernel over anchor blocks)
    dk_j   = (1/tau) sum_i dS_ij q_i                          (kernel over key blocks;
                                                               the bank gets no gradient)
    dtau   = -(1/tau) sum_i sum_j dS_ij s_ij                  (row partials from the dq kernel)

since ``d s_ij / d tau = -s_ij / tau``. The symmetric (CLIP) loss adds the column losses
l'_j (anchors k, keys q, no bank): the forward runs twice with the roles swapped, while the
backward adds ``dS'_ij = g'_j (p'_ji - [i in P'(j)] / npos'_j)`` to the same recomputed tile,
so both directions share two backward kernels. Products run on the tensor cores in the
input dtype (fp32 inputs use full-precision ``ieee`` dots); every accumulator is float32.
"""
import functools
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["info_nce_rows_triton", "InfoNCERows"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Tests set this to fill every output with NaN / -1 before a launch, so an element that a
# kernel failed to write cannot pass for a correct one.
POISON_OUTPUTS = os.environ.get("TSCL_POISON_OUTPUTS") == "1"

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


# ----------------------------------------------------------------------------- block configs
def _configs(kind):
    if _INTERPRET:  # a single small config: fast, and several tiles even on tiny test shapes
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    shapes = {
        # (BLOCK_M, BLOCK_N): anchors x keys per tile for fwd/dq; keys x anchors for dk
        "fwd": [(128, 64), (128, 128), (64, 64), (64, 128), (128, 32), (64, 32), (32, 32)],
        "dq": [(128, 64), (64, 64), (64, 128), (128, 32), (64, 32), (32, 32)],
        "dk": [(64, 128), (64, 64), (128, 64), (32, 128), (32, 64), (32, 32)],
    }[kind]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn in shapes
        for w in (4, 8)
        for s in (2, 3)
    ]


def _prune(configs, named_args, **kwargs):
    """Keep tiles that compile for sm_90 without spilling (measured with
    ``benchmarks/aot_kernels.py``, table in docs/kernels.md):

    - the fp32 score tile per thread, BLOCK_M * BLOCK_N / (32 * warps), at most 32
      (64 spilled in every kernel at every D);
    - dq and dk also hold a [BLOCK_M, BLOCK_D] fp32 accumulator and several live score-sized
      tiles (s, p, dS): score + accumulator elements per thread at most 96, and BLOCK_N at
      most 64 (a 64 x 128 tile spilled on 4 and on 8 warps at D = 64), and at least 8 score
      elements per thread (32 x 32 on 8 warps was capped at 128 registers and spilled at
      D = 256). Where nothing fits (dq/dk at D = 512) the last config, 32 x 32 on 8 warps,
      runs: measured without spills there.
    - the resident operand tile within the earlier budget (BLOCK_M * BLOCK_D <= 128 * 128,
      64 * 256 past D = 128); fp32 inputs (``ieee`` dots on the CUDA cores) small tiles only.
    """
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 128))
    budget = 128 * 128 if block_d <= 128 else 64 * 256
    kind = kwargs.get("KIND", named_args.get("KIND"))

    def fits(c):
        bm, bn, threads = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], 32 * c.num_warps
        score, acc = bm * bn / threads, bm * block_d / threads
        if bm * block_d > budget or bn * block_d > 2 * budget or score > 32:
            return False
        return kind == "fwd" or (score + acc <= 96 and bn <= 64 and score >= 8)

    kept = [c for c in configs if fits(c)]
    q = named_args.get("Q")
    if q is not None and q.dtype == torch.float32:
        kept = [c for c in kept if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 32 * 64]
    return kept or configs[-1:]


def _bucket(x):
    """log2 size bucket: sizes up to 1024 share one, then one per power of two up to 2**17."""
    return min(max((max(int(x), 1) - 1).bit_length(), 10), 17)


def _size_key(n, m, b=0):
    """One int for the autotune key from the (N, M, bank) size buckets: the best tile depends
    on how many programs the grid has and how long each sweeps, not only on D. A multiple
    of 16, so that every key value gets the same integer specialisation."""
    return 16 * (_bucket(n) * 400 + _bucket(m) * 20 + (_bucket(b) if b else 0))


def _autotune(kind):
    key = ["D", "SIZE_KEY", "HAS_BANK", "EXCLUDE_SELF"] + ([] if kind == "fwd" else ["SYMMETRIC"])
    return triton.autotune(
        configs=_configs(kind),
        key=key,  # the tensors' dtypes are part of the key too
        prune_configs_by=None if _INTERPRET else {"early_config_prune": functools.partial(_prune, KIND=kind)},
    )


# ----------------------------------------------------------------------------- forward
@triton.jit
def _mma(a, b, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """``a @ b`` accumulated in float32 on the tensor cores.

    Triton's CPU interpreter multiplies bf16 operands as raw 16-bit integers, so there
    (UPCAST_DOT) the operands, already rounded to bf16, are widened to fp32 first.
    """
    if UPCAST_DOT:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision=PRECISION)
    return c


@triton.jit
def _load_tau(TAU):
    """The temperature; NaN unless finite and > 0 (checked here, not by a host read-back)."""
    tau = tl.load(TAU)
    return tl.where((tau > 0.0) & (tau < float("inf")), tau, float("nan"))


@triton.jit
def _load_rows(PTR, idx, ok, dims, D, stride_n, stride_d, IDX64: tl.constexpr):
    """Rows ``idx`` of a ``[*, D]`` matrix as a ``[len(idx), BLOCK_D]`` tile (zeros outside ``ok`` / ``D``).

    IDX64: offsets in int64 (a tensor whose extent reaches 2**31 elements)."""
    if IDX64:
        idx = idx.to(tl.int64)
    return tl.load(PTR + idx[:, None] * stride_n + dims[None, :] * stride_d,
                   mask=ok[:, None] & (dims[None, :] < D), other=0.0)


@triton.jit
def _key_tile(
    q, qid, rows, cols, scale, K, KID, n_cols, D, stride_kn, stride_kd,
    EXCLUDE_DIAG: tl.constexpr, USE_IDS: tl.constexpr, IDS_POSITIVE: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_D: tl.constexpr, IDX64: tl.constexpr,
):
    """Recompute one tile of keys ``cols`` against the anchor block.

    Returns ``col_ok`` (in range), the key tile ``k``, the base-2 logits ``s2`` (s * log2 e),
    ``valid`` (columns in the denominator V(i): in range, not the anchor itself under
    EXCLUDE_DIAG, and not a same-id key when ids mask instead of marking positives) and
    ``same`` (same id as the anchor; all false without ids).
    """
    col_ok = cols < n_cols
    k = _load_rows(K, cols, col_ok, tl.arange(0, BLOCK_D), D, stride_kn, stride_kd, IDX64)
    s2 = _mma(q, tl.trans(k), PRECISION, UPCAST_DOT) * scale
    valid = col_ok[None, :] & (rows[:, None] >= 0)
    if EXCLUDE_DIAG:
        valid = valid & (rows[:, None] != cols[None, :])
    same = valid ^ valid
    if USE_IDS:
        kid = tl.load(KID + cols, mask=col_ok, other=0)
        same = (qid[:, None] == kid[None, :]) & valid
        if not IDS_POSITIVE:
            valid = valid & (same == 0)
    return col_ok, k, s2, valid, same


@triton.jit
def _fwd_sweep(
    q, qid, rows, m_i, l_i, pos_sum, pos_cnt, scale,
    K, KID, n_cols, D, stride_kn, stride_kd,
    EXCLUDE_DIAG: tl.constexpr, USE_IDS: tl.constexpr, IDS_POSITIVE: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    IDX64: tl.constexpr,
):
    """Fold one key set (the keys, or the bank) into the running row statistics.

    ``s2`` is the logit in base 2 (s * log2 e); columns outside V(i) are -inf.
    """
    for start in range(0, n_cols, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok, k, s2, valid, same = _key_tile(q, qid, rows, cols, scale, K, KID, n_cols, D, stride_kn, stride_kd,
                                               EXCLUDE_DIAG, USE_IDS, IDS_POSITIVE, PRECISION, UPCAST_DOT, BLOCK_D,
                                               IDX64)
        if USE_IDS and IDS_POSITIVE:
            pos_sum += tl.sum(tl.where(same, s2, 0.0), axis=1)
            pos_cnt += tl.sum(same.to(tl.int32), axis=1)
        s2 = tl.where(valid, s2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s2, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no column so far
        l_i = l_i * tl.exp2(m_i - m_ref) + tl.sum(tl.exp2(s2 - m_ref[:, None]), axis=1)
        m_i = m_new
    return m_i, l_i, pos_sum, pos_cnt


@_autotune("fwd")
@triton.jit
def _info_nce_fwd(
    Q, K, BANK, QID, KID, BID, TAU, LOSS, NPOS, LSE,
    N, M, B, D, SIZE_KEY,
    stride_qn, stride_qd, stride_kn, stride_kd, stride_bn, stride_bd,
    EXCLUDE_SELF: tl.constexpr, HAS_BANK: tl.constexpr, BANK_IDS: tl.constexpr,
    BANK_POSITIVE: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    q = _load_rows(Q, rows, row_ok, dims, D, stride_qn, stride_qd, IDX64)
    qid = tl.load(QID + rows, mask=row_ok, other=0)
    scale = LOG2E / _load_tau(TAU)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    pos_sum = tl.zeros([BLOCK_M], tl.float32)
    pos_cnt = tl.zeros([BLOCK_M], tl.int32)
    m_i, l_i, pos_sum, pos_cnt = _fwd_sweep(
        q, qid, rows, m_i, l_i, pos_sum, pos_cnt, scale, K, KID, M, D, stride_kn, stride_kd,
        EXCLUDE_SELF, True, True, PRECISION, UPCAST_DOT, BLOCK_N, BLOCK_D, IDX64)
    if HAS_BANK:
        m_i, l_i, pos_sum, pos_cnt = _fwd_sweep(
            q, qid, rows, m_i, l_i, pos_sum, pos_cnt, scale, BANK, BID, B, D, stride_bn, stride_bd,
            False, BANK_IDS, BANK_POSITIVE, PRECISION, UPCAST_DOT, BLOCK_N, BLOCK_D, IDX64)

    # no column at all: l_i == 0 exactly, lse := 0. A NaN anywhere in the row leaves l_i NaN,
    # which must reach the loss (an ``l_i > 0`` test would take NaN for "no column").
    lse = tl.where(l_i == 0.0, 0.0, m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i))) * LN2
    mean_pos = pos_sum * LN2 / tl.maximum(pos_cnt, 1).to(tl.float32)
    loss = tl.where(pos_cnt > 0, lse - mean_pos, 0.0)
    tl.store(LOSS + rows, loss, mask=row_ok)
    tl.store(NPOS + rows, pos_cnt.to(tl.int64), mask=row_ok)
    tl.store(LSE + rows, lse, mask=row_ok)


# ----------------------------------------------------------------------------- backward
@triton.jit
def _row_weights(LSE, NPOS, GRAD, idx, ok):
    """Per-anchor backward inputs: lse in base 2, g_i (0 without positives), g_i / npos_i."""
    lse2 = tl.load(LSE + idx, mask=ok, other=0.0) * LOG2E
    npos = tl.load(NPOS + idx, mask=ok, other=0).to(tl.int32)
    g = tl.where(npos > 0, tl.load(GRAD + idx, mask=ok, other=0.0), 0.0)
    return lse2, g, g / tl.maximum(npos, 1).to(tl.float32)


@triton.jit
def _dq_sweep(
    q, qid, rows, lse2, g, w, dq, dts, scale,
    K, KID, n_cols, D, stride_kn, stride_kd, LSE_C, NPOS_C, GRAD_C,
    EXCLUDE_DIAG: tl.constexpr, USE_IDS: tl.constexpr, IDS_POSITIVE: tl.constexpr, SYMMETRIC: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    IDX64: tl.constexpr,
):
    """Accumulate sum_j dS_ij k_j and sum_j dS_ij s2_ij over one key set.

    SYMMETRIC adds the column loss's term g'_j (p'_ji - [i in P'(j)] / npos'_j), where
    p'_ji = exp(s_ij - lse'_j): both losses share s_ij, so one recomputation serves both.
    """
    for start in range(0, n_cols, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok, k, s2, valid, same = _key_tile(q, qid, rows, cols, scale, K, KID, n_cols, D, stride_kn, stride_kd,
                                               EXCLUDE_DIAG, USE_IDS, IDS_POSITIVE, PRECISION, UPCAST_DOT, BLOCK_D,
                                               IDX64)
        ds = tl.zeros_like(s2)
        if USE_IDS and IDS_POSITIVE:
            ds = tl.where(same, -w[:, None], 0.0)
        s2_in = tl.where(valid, s2, float("-inf"))
        ds += g[:, None] * tl.exp2(s2_in - lse2[:, None])
        if SYMMETRIC:  # keys sweep only, where USE_IDS and IDS_POSITIVE hold
            lse2_c, g_c, w_c = _row_weights(LSE_C, NPOS_C, GRAD_C, cols, col_ok)
            ds += g_c[None, :] * tl.exp2(s2_in - lse2_c[None, :]) - tl.where(same, w_c[None, :], 0.0)
        dq += _mma(ds.to(k.dtype), k, PRECISION, UPCAST_DOT)
        dts += tl.sum(ds * tl.where(valid, s2, 0.0), axis=1)
    return dq, dts


@_autotune("dq")
@triton.jit
def _info_nce_bwd_dq(
    Q, K, BANK, QID, KID, BID, TAU, LSE, NPOS, GRAD, LSE_C, NPOS_C, GRAD_C, DQ, DTS,
    N, M, B, D, SIZE_KEY,
    stride_qn, stride_qd, stride_kn, stride_kd, stride_bn, stride_bd,
    EXCLUDE_SELF: tl.constexpr, HAS_BANK: tl.constexpr, BANK_IDS: tl.constexpr,
    BANK_POSITIVE: tl.constexpr, SYMMETRIC: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    IDX64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dq and the dtau row partials; ``*_C`` are the column losses' statistics (SYMMETRIC)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    q = _load_rows(Q, rows, row_ok, dims, D, stride_qn, stride_qd, IDX64)
    qid = tl.load(QID + rows, mask=row_ok, other=0)
    lse2, g, w = _row_weights(LSE, NPOS, GRAD, rows, row_ok)
    inv_tau = 1.0 / _load_tau(TAU)
    scale = LOG2E * inv_tau

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dts = tl.zeros([BLOCK_M], tl.float32)
    dq, dts = _dq_sweep(q, qid, rows, lse2, g, w, dq, dts, scale, K, KID, M, D, stride_kn, stride_kd,
                        LSE_C, NPOS_C, GRAD_C, EXCLUDE_SELF, True, True, SYMMETRIC,
                        PRECISION, UPCAST_DOT, BLOCK_N, BLOCK_D, IDX64)
    if HAS_BANK:
        dq, dts = _dq_sweep(q, qid, rows, lse2, g, w, dq, dts, scale, BANK, BID, B, D, stride_bn, stride_bd,
                            LSE_C, NPOS_C, GRAD_C, False, BANK_IDS, BANK_POSITIVE, False,
                            PRECISION, UPCAST_DOT, BLOCK_N, BLOCK_D, IDX64)
    dq = dq * inv_tau
    if IDX64:
        rows = rows.to(tl.int64)
    tl.store(DQ + rows[:, None] * D + dims[None, :], dq.to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (dims[None, :] < D))
    tl.store(DTS + rows, dts * LN2, mask=row_ok)


@_autotune("dk")
@triton.jit
def _info_nce_bwd_dk(
    Q, K, QID, KID, TAU, LSE, NPOS, GRAD, LSE_C, NPOS_C, GRAD_C, DK,
    N, M, D, SIZE_KEY,
    stride_qn, stride_qd, stride_kn, stride_kd,
    EXCLUDE_SELF: tl.constexpr, HAS_BANK: tl.constexpr, SYMMETRIC: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dk: one program per block of BLOCK_M keys, sweeping the anchors BLOCK_N at a time."""
    cols = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    col_ok = cols < M
    k = _load_rows(K, cols, col_ok, dims, D, stride_kn, stride_kd, IDX64)
    kid = tl.load(KID + cols, mask=col_ok, other=0)
    if SYMMETRIC:
        lse2_c, g_c, w_c = _row_weights(LSE_C, NPOS_C, GRAD_C, cols, col_ok)
    inv_tau = 1.0 / _load_tau(TAU)
    scale = LOG2E * inv_tau

    dk = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        q = _load_rows(Q, rows, row_ok, dims, D, stride_qn, stride_qd, IDX64)
        qid = tl.load(QID + rows, mask=row_ok, other=0)
        lse2, g, w = _row_weights(LSE, NPOS, GRAD, rows, row_ok)
        s2t = _mma(k, tl.trans(q), PRECISION, UPCAST_DOT) * scale  # [keys, anchors]
        valid = row_ok[None, :] & col_ok[:, None]
        if EXCLUDE_SELF:
            valid = valid & (rows[None, :] != cols[:, None])
        same = (kid[:, None] == qid[None, :]) & valid
        s2t = tl.where(valid, s2t, float("-inf"))
        dst = g[None, :] * tl.exp2(s2t - lse2[None, :]) - tl.where(same, w[None, :], 0.0)
        if SYMMETRIC:
            dst += g_c[:, None] * tl.exp2(s2t - lse2_c[:, None]) - tl.where(same, w_c[:, None], 0.0)
        dk += _mma(dst.to(q.dtype), q, PRECISION, UPCAST_DOT)
    dk = dk * inv_tau
    if IDX64:
        cols = cols.to(tl.int64)
    tl.store(DK + cols[:, None] * D + dims[None, :], dk.to(DK.dtype.element_ty),
             mask=col_ok[:, None] & (dims[None, :] < D))


# ----------------------------------------------------------------------------- launchers
def _grid(n, block):
    """Launch grid: one program per ``block``-sized slice of ``n`` rows."""
    return lambda meta: (triton.cdiv(n, meta[block]),)


def _new(shape, dtype, device, fill):
    if POISON_OUTPUTS:
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _block_d(d):
    return max(16, triton.next_power_of_2(d))


def _precision(dtype, allow_tf32=False):
    """``tl.dot`` input precision: exact fp32 (``ieee``) unless the caller allows TF32;
    16-bit inputs ignore it."""
    return "tf32" if allow_tf32 or dtype != torch.float32 else "ieee"


_INT32_LIMIT = 2**31 - 1


def _extent(t, pad_rows=256, pad_cols=1024):
    """Largest element offset a kernel may form for ``t`` (padded for masked lanes past the edge)."""
    if t is None or t.dim() != 2:
        return 0
    (r, c), (sr, sc) = t.shape, t.stride()
    return (r + pad_rows) * abs(sr) + (c + pad_cols) * abs(sc)


def _idx64(*tensors):
    """int64 offsets when any operand's offsets could pass int32 (N * D near 2**31)."""
    return any(_extent(t) > _INT32_LIMIT for t in tensors)


def _upcast(dtype):
    return _INTERPRET and dtype == torch.bfloat16


def _bank_args(q, bank, bank_ids, mask_bank_same_id):
    has_bank = bank is not None and bank.shape[0] > 0
    if not has_bank:
        return q, q, 0, (0, 0), dict(HAS_BANK=False, BANK_IDS=False, BANK_POSITIVE=True)
    bids = bank_ids if bank_ids is not None else q.new_empty(0, dtype=torch.int64)
    flags = dict(HAS_BANK=True, BANK_IDS=bank_ids is not None, BANK_POSITIVE=not mask_bank_same_id)
    return bank, bids, bank.shape[0], bank.stride(), flags


def _tau(temperature, device):
    return temperature.detach().to(device=device, dtype=torch.float32).reshape(())


def _forward(q, k, q_ids, k_ids, temperature, exclude_self, bank, bank_ids, mask_bank_same_id, symmetric,
             allow_tf32=False):
    """Launch the forward kernel (twice when ``symmetric``: rows, then columns without the bank).

    Returns ``loss, npos, lse``, each ``[N]`` (or ``[N+M]``, rows then columns).
    """
    n, d = q.shape
    m = k.shape[0]
    total = n + m if symmetric else n
    loss = _new((total,), torch.float32, q.device, float("nan"))
    npos = _new((total,), torch.int64, q.device, -1)
    lse = _new((total,), torch.float32, q.device, float("nan"))
    tau = _tau(temperature, q.device)
    consts = dict(EXCLUDE_SELF=exclude_self, PRECISION=_precision(q.dtype, allow_tf32), UPCAST_DOT=_upcast(q.dtype),
                  BLOCK_D=_block_d(d), IDX64=_idx64(q, k, bank))
    bank_t, bids, b, bstride, flags = _bank_args(q, bank, bank_ids, mask_bank_same_id)
    _info_nce_fwd[_grid(n, "BLOCK_M")](
        q, k, bank_t, q_ids, k_ids, bids, tau, loss[:n], npos[:n], lse[:n],
        n, m, b, d, _size_key(n, m, b), *q.stride(), *k.stride(), *bstride, **consts, **flags,
    )
    if symmetric:
        _, _, _, _, flags = _bank_args(k, None, None, False)
        _info_nce_fwd[_grid(m, "BLOCK_M")](
            k, q, k, k_ids, q_ids, k_ids, tau, loss[n:], npos[n:], lse[n:],
            m, n, 0, d, _size_key(m, n), *k.stride(), *q.stride(), 0, 0, **consts, **flags,
        )
    return loss, npos, lse


def _backward(grad, q, k, q_ids, k_ids, temperature, lse, npos, exclude_self, bank, bank_ids,
              mask_bank_same_id, symmetric, need_dk=True, allow_tf32=False):
    """Launch the dq and dk kernels; returns ``dq [N,D], dk [M,D] (or [0]), dtau []``.

    ``grad``, ``lse`` and ``npos`` are laid out as :func:`_forward` returns them; when
    ``symmetric`` both kernels add the column losses' terms to the same recomputed tiles.
    """
    n, d = q.shape
    m = k.shape[0]
    grad = grad.float().contiguous()  # a reduction's gradient arrives expanded (stride 0)
    rows = (lse[:n], npos[:n], grad[:n])
    cols = (lse[n:], npos[n:], grad[n:]) if symmetric else rows  # unused unless symmetric
    tau = _tau(temperature, q.device)
    consts = dict(EXCLUDE_SELF=exclude_self, SYMMETRIC=symmetric, PRECISION=_precision(q.dtype, allow_tf32),
                  UPCAST_DOT=_upcast(q.dtype), BLOCK_D=_block_d(d), IDX64=_idx64(q, k, bank))
    dq = _new((n, d), q.dtype, q.device, float("nan"))
    dts = _new((n,), torch.float32, q.device, float("nan"))
    bank_t, bids, b, bstride, flags = _bank_args(q, bank, bank_ids, mask_bank_same_id)
    _info_nce_bwd_dq[_grid(n, "BLOCK_M")](
        q, k, bank_t, q_ids, k_ids, bids, tau, *rows, *cols, dq, dts,
        n, m, b, d, _size_key(n, m, b), *q.stride(), *k.stride(), *bstride, **consts, **flags,
    )
    if need_dk:
        dk = _new((m, d), k.dtype, k.device, float("nan"))
        _info_nce_bwd_dk[_grid(m, "BLOCK_M")](
            q, k, q_ids, k_ids, tau, *rows, *cols, dk,
            n, m, d, _size_key(m, n), *q.stride(), *k.stride(), HAS_BANK=flags["HAS_BANK"], **consts,
        )
    else:
        dk = k.new_empty(0)
    dtau = (-dts.sum() / tau).to(temperature.dtype).reshape(temperature.shape)
    return dq, dk, dtau


# ----------------------------------------------------------------------------- autograd
class InfoNCERows(torch.autograd.Function):
    """Autograd wrapper over the launchers (used where ``torch.library.custom_op`` is absent)."""

    @staticmethod
    def forward(ctx, q, k, q_ids, k_ids, temperature, exclude_self, bank, bank_ids, mask_bank_same_id,
                symmetric, allow_tf32=False):
        loss, npos, lse = _forward(q, k, q_ids, k_ids, temperature, exclude_self, bank, bank_ids,
                                   mask_bank_same_id, symmetric, allow_tf32)
        ctx.save_for_backward(q, k, q_ids, k_ids, temperature, lse, npos, bank, bank_ids)
        ctx.flags = (exclude_self, mask_bank_same_id, symmetric, allow_tf32)
        ctx.mark_non_differentiable(npos)
        return loss, npos

    @staticmethod
    def backward(ctx, grad_loss, grad_npos):
        q, k, q_ids, k_ids, temperature, lse, npos, bank, bank_ids = ctx.saved_tensors
        exclude_self, mask_bank, symmetric, allow_tf32 = ctx.flags
        dq, dk, dtau = _backward(grad_loss, q, k, q_ids, k_ids, temperature, lse, npos, exclude_self, bank,
                                 bank_ids, mask_bank, symmetric, need_dk=ctx.needs_input_grad[1],
                                 allow_tf32=allow_tf32)
        needs = ctx.needs_input_grad
        return (dq if needs[0] else None, dk if needs[1] else None, None, None,
                dtau if needs[4] else None, None, None, None, None, None, None)


_HAS_CUSTOM_OP = hasattr(torch, "library") and hasattr(torch.library, "custom_op")

if _HAS_CUSTOM_OP:

    @torch.library.custom_op("tscl::info_nce_rows", mutates_args=())
    def _info_nce_rows_op(
        q: Tensor, k: Tensor, q_ids: Tensor, k_ids: Tensor, temperature: Tensor, exclude_self: bool,
        bank: Optional[Tensor], bank_ids: Optional[Tensor], mask_bank_same_id: bool, symmetric: bool,
        allow_tf32: bool = False,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        return _forward(q, k, q_ids, k_ids, temperature, exclude_self, bank, bank_ids, mask_bank_same_id,
                        symmetric, allow_tf32)

    @_info_nce_rows_op.register_fake
    def _(q, k, q_ids, k_ids, temperature, exclude_self, bank, bank_ids, mask_bank_same_id, symmetric,
          allow_tf32=False):
        total = q.shape[0] + k.shape[0] if symmetric else q.shape[0]
        return (q.new_empty(total, dtype=torch.float32), q.new_empty(total, dtype=torch.int64),
                q.new_empty(total, dtype=torch.float32))

    @torch.library.custom_op("tscl::info_nce_rows_backward", mutates_args=())
    def _info_nce_rows_backward_op(
        grad: Tensor, q: Tensor, k: Tensor, q_ids: Tensor, k_ids: Tensor, temperature: Tensor,
        lse: Tensor, npos: Tensor, exclude_self: bool, bank: Optional[Tensor],
        bank_ids: Optional[Tensor], mask_bank_same_id: bool, symmetric: bool, need_dk: bool,
        allow_tf32: bool = False,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        return _backward(grad, q, k, q_ids, k_ids, temperature, lse, npos, exclude_self, bank, bank_ids,
                         mask_bank_same_id, symmetric, need_dk, allow_tf32)

    @_info_nce_rows_backward_op.register_fake
    def _(grad, q, k, q_ids, k_ids, temperature, lse, npos, exclude_self, bank, bank_ids,
          mask_bank_same_id, symmetric, need_dk, allow_tf32=False):
        dk = torch.empty_like(k) if need_dk else k.new_empty(0)
        return torch.empty_like(q), dk, torch.empty_like(temperature)

    def _setup_context(ctx, inputs, output):
        q, k, q_ids, k_ids, temperature, exclude_self, bank, bank_ids, mask_bank, symmetric, *rest = inputs
        _, npos, lse = output
        ctx.save_for_backward(q, k, q_ids, k_ids, temperature, lse, npos, bank, bank_ids)
        ctx.flags = (exclude_self, mask_bank, symmetric, bool(rest[0]) if rest else False)
        ctx.mark_non_differentiable(npos, lse)

    def _op_backward(ctx, grad_loss, grad_npos, grad_lse):
        q, k, q_ids, k_ids, temperature, lse, npos, bank, bank_ids = ctx.saved_tensors
        exclude_self, mask_bank, symmetric, allow_tf32 = ctx.flags
        dq, dk, dtau = _info_nce_rows_backward_op(
            grad_loss, q, k, q_ids, k_ids, temperature, lse, npos, exclude_self, bank, bank_ids,
            mask_bank, symmetric, ctx.needs_input_grad[1], allow_tf32)
        return (dq, dk if ctx.needs_input_grad[1] else None, None, None, dtau, None, None, None, None, None, None)

    _info_nce_rows_op.register_autograd(_op_backward, setup_context=_setup_context)


def info_nce_rows_triton(
    q: Tensor,
    k: Tensor,
    q_ids: Tensor,
    k_ids: Tensor,
    temperature: Tensor,
    exclude_self: bool = False,
    bank: Optional[Tensor] = None,
    bank_ids: Optional[Tensor] = None,
    mask_bank_same_id: bool = False,
    symmetric: bool = False,
    use_custom_op: bool = True,
    allow_tf32: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Per-anchor InfoNCE losses ``[N]`` (float32) and positive counts ``[N]`` (int64).

    Same arguments and results as :func:`info_nce_rows_reference`; ``q`` and ``k`` may be
    fp32, bf16 or fp16 (q and k are promoted to a common dtype, the bank is cast to it;
    fp64 runs in fp32), any strides. ``allow_tf32``: TF32 products for fp32 inputs.
    ``symmetric=True`` also computes the column losses (anchors k, keys q, no bank) and
    returns ``[N+M]`` rows-then-columns, sharing the backward's recomputed tiles between
    both directions.
    ``use_custom_op=False`` runs the plain :class:`InfoNCERows` autograd.Function instead of
    the ``tscl::info_nce_rows`` operator that ``torch.compile`` traces without a break.
    """
    if not (q.is_cuda or _INTERPRET):
        raise RuntimeError("the Triton InfoNCE kernel needs CUDA tensors (or TRITON_INTERPRET=1)")
    dtype = torch.promote_types(q.dtype, k.dtype)
    if bank is not None:
        bank = bank.detach()
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        dtype = torch.float32
    q, k = q.to(dtype), k.to(dtype)
    bank = bank.to(dtype) if bank is not None else None
    q_ids = q_ids.to(torch.int64).contiguous()
    k_ids = k_ids.to(torch.int64).contiguous()
    bank_ids = bank_ids.to(torch.int64).contiguous() if bank_ids is not None else None
    if not isinstance(temperature, Tensor):
        temperature = torch.tensor(float(temperature), device=q.device)
    if use_custom_op and _HAS_CUSTOM_OP:
        loss, npos, _ = _info_nce_rows_op(q, k, q_ids, k_ids, temperature, bool(exclude_self), bank,
                                          bank_ids, bool(mask_bank_same_id), bool(symmetric), bool(allow_tf32))
        return loss, npos
    return InfoNCERows.apply(q, k, q_ids, k_ids, temperature, bool(exclude_self), bank, bank_ids,
                             bool(mask_bank_same_id), bool(symmetric), bool(allow_tf32))
