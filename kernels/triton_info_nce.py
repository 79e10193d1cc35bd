"""Fused, tiled InfoNCE in Triton: forward and backward without the N x M similarity matrix.

Semantics are exactly those of :func:`tscl.kernels.reference.info_nce_rows_reference`.
For anchor i, with ``s_ij = <q_i, k_j> / tau`` over the denominator columns V(i) (keys, minus
the diagonal under ``exclude_self``, plus bank entries, minus same-id bank entries under
``mask_bank_same_id``) and the positives P(i) (matching ids)::

    l_i   = lse_i - possum_i / npos_i,      lse_i = logsumexp_{j in V(i)} s_ij,
                                            possum_i = sum_{p in P(i)} s_ip,  npos_i = |P(i)|
    l_i   = 0                               when npos_i == 0

Forward (one program per block of BLOCK_M anchors and per column split, grid axis 1): sweep
this split's share of the keys, then of the bank, in tiles of BLOCK_N columns; keep a running
max ``m_i`` and rescaled sum ``l_i`` (online log-sum-exp, base 2); the splits' partials are
merged exactly in PyTorch. Only ``lse [N]`` and ``npos [N]`` are saved for the backward.

What runs when (docs/kernels.md has the rules and the measurements):

* positives, separable (``N * (M + B) >= SEPARABLE_MIN``): ``possum_i`` and ``npos_i`` from
  per-id sums of the keys (and of the bank entries when they are positives) and id
  histograms, outside the loop (:func:`_positives`); the backward's positives' terms
  likewise (:func:`_positive_grads`, handed to the kernels as the initial accumulators
  ``DQ0``/``DK0``). The loop then masks only the last partial tile and, under exclude_self,
  the tiles crossing the diagonal.
* positives in the loop (smaller problems, ``POS_IN_LOOP``): an id compare per element,
  sums and counts per split.
* ``bank_same_id="mask"`` keeps a per-element id mask on every bank tile on both paths
  (``BANK_MODE=2``): subtracting masked columns from an online log-sum-exp is not safe.
* split-K (:func:`_split`): when the row programs do not fill the SMs, the columns are split
  over grid axis 1 (forward and dq; the dq partials are summed in PyTorch).

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

__all__ = ["info_nce_rows_triton"]

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


# Triton before 3.7 (3.6 measured) allocates dq's registers less tightly: at the 96-element budget with 3
# pipeline stages, 128 x 64 / 8 warps and 64 x 64 / 4 warps spilled 4 bytes at D = 128 (none on 3.9)
_OLD_TRITON = tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 7)


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
    - the forward with the positives in the loop (small problems): BLOCK_N at most 64 (64 x 128
      on 8 warps spilled at D = 128 once the id compares share the loop with the split range);
    - on Triton < 3.7, dq at the full 96-element budget with 3 or more stages (4 bytes spilled on 3.6);
    - the resident operand tile within the earlier budget (BLOCK_M * BLOCK_D <= 128 * 128,
      64 * 256 past D = 128); fp32 inputs (``ieee`` dots on the CUDA cores) small tiles only.
    """
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 128))
    budget = 128 * 128 if block_d <= 128 else 64 * 256
    kind = kwargs.get("KIND", named_args.get("KIND"))
    in_loop = bool(kwargs.get("POS_IN_LOOP", named_args.get("POS_IN_LOOP", True)))

    def fits(c):
        bm, bn, threads = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], 32 * c.num_warps
        score, acc = bm * bn / threads, bm * block_d / threads
        if bm * block_d > budget or bn * block_d > 2 * budget or score > 32:
            return False
        if kind == "fwd":  # in-loop positives: 64 x 128 on 8 warps spilled at D = 128
            return not (in_loop and bn > 64)
        if _OLD_TRITON and kind == "dq" and c.num_stages >= 3 and score + acc >= 96:
            return False
        return score + acc <= 96 and bn <= 64 and score >= 8

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
    key = ["D", "SIZE_KEY", "HAS_BANK", "EXCLUDE_SELF", "POS_IN_LOOP"] + ([] if kind == "dk" else ["BANK_MODE"])
    key += [] if kind == "fwd" else ["SYMMETRIC"]
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
def _tile_valid(rows, cols, n_cols, EXCLUDE_DIAG: tl.constexpr):
    """Columns of a tile in the denominator by position only: in range, and not the anchor
    itself under EXCLUDE_DIAG. A [len(rows), len(cols)] boolean."""
    valid = (cols[None, :] < n_cols) & (rows[:, None] >= 0)
    if EXCLUDE_DIAG:
        valid = valid & (rows[:, None] != cols[None, :])
    return valid


@triton.jit
def _needs_mask(start, row0, n_cols, EXCLUDE_DIAG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """True for the tiles that need a position mask: the last (partial) tile, and under
    EXCLUDE_DIAG the tiles that cross the diagonal of the row block starting at ``row0``."""
    edge = start + BLOCK_N > n_cols
    if EXCLUDE_DIAG:
        edge = edge | ((start < row0 + BLOCK_M) & (row0 < start + BLOCK_N))
    return edge


@triton.jit
def _split_range(n_cols, BLOCK_N: tl.constexpr):
    """Column range ``[lo, hi)`` of this program's split (grid axis 1), in whole BLOCK_N tiles."""
    chunk = tl.cdiv(tl.cdiv(n_cols, tl.num_programs(1)), BLOCK_N) * BLOCK_N
    lo = tl.program_id(1) * chunk
    return lo, tl.minimum(n_cols, lo + chunk)


@triton.jit
def _fwd_sweep(
    q, qid, rows, row0, m_i, l_i, pos_sum, pos_cnt, scale,
    K, KID, n_cols, D, stride_kn, stride_kd,
    EXCLUDE_DIAG: tl.constexpr, IDS_MODE: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, IDX64: tl.constexpr,
):
    """Fold this split's share of one key set (the keys, or the bank) into the running row statistics.

    ``s2`` is the logit in base 2 (s * log2 e); columns outside V(i) are -inf.
    IDS_MODE 0: no ids in the loop (positives handled outside), position masks only on the
    tiles that need them; 1: positives found in the loop (id compare per element); 2: same-id
    columns leave the denominator (bank_same_id="mask"), a per-element mask on every tile.
    """
    lo, hi = _split_range(n_cols, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < n_cols
        k = _load_rows(K, cols, col_ok, tl.arange(0, BLOCK_D), D, stride_kn, stride_kd, IDX64)
        s2 = _mma(q, tl.trans(k), PRECISION, UPCAST_DOT) * scale
        if IDS_MODE == 0:
            if _needs_mask(start, row0, n_cols, EXCLUDE_DIAG, BLOCK_M, BLOCK_N):
                s2 = tl.where(_tile_valid(rows, cols, n_cols, EXCLUDE_DIAG), s2, float("-inf"))
        else:
            valid = _tile_valid(rows, cols, n_cols, EXCLUDE_DIAG)
            kid = tl.load(KID + cols, mask=col_ok, other=0)
            same = (qid[:, None] == kid[None, :]) & valid
            if IDS_MODE == 1:
                pos_sum += tl.sum(tl.where(same, s2, 0.0), axis=1)
                pos_cnt += tl.sum(same.to(tl.int32), axis=1)
            else:
                valid = valid & (same == 0)
            s2 = tl.where(valid, s2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s2, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no column so far
        l_i = l_i * tl.exp2(m_i - m_ref) + tl.sum(tl.exp2(s2 - m_ref[:, None]), axis=1)
        m_i = m_new
    return m_i, l_i, pos_sum, pos_cnt


@_autotune("fwd")
@triton.jit
def _info_nce_fwd(
    Q, K, BANK, QID, KID, BID, TAU, PM, PL, PSUM, PCNT,
    N, M, B, D, SIZE_KEY,
    stride_qn, stride_qd, stride_kn, stride_kd, stride_bn, stride_bd,
    EXCLUDE_SELF: tl.constexpr, HAS_BANK: tl.constexpr, BANK_MODE: tl.constexpr,
    POS_IN_LOOP: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    IDX64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial row statistics of split ``program_id(1)`` (its share of the keys and of the bank):
    running max ``PM`` (base 2) and rescaled exp-sum ``PL``, both ``[splits, N]``; with
    POS_IN_LOOP also the positives' logit sum ``PSUM`` (natural units) and count ``PCNT``."""
    row0 = tl.program_id(0) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
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
        q, qid, rows, row0, m_i, l_i, pos_sum, pos_cnt, scale, K, KID, M, D, stride_kn, stride_kd,
        EXCLUDE_SELF, POS_IN_LOOP, PRECISION, UPCAST_DOT, BLOCK_M, BLOCK_N, BLOCK_D, IDX64)
    if HAS_BANK:
        m_i, l_i, pos_sum, pos_cnt = _fwd_sweep(
            q, qid, rows, row0, m_i, l_i, pos_sum, pos_cnt, scale, BANK, BID, B, D, stride_bn, stride_bd,
            False, BANK_MODE, PRECISION, UPCAST_DOT, BLOCK_M, BLOCK_N, BLOCK_D, IDX64)
    out = tl.program_id(1) * N + rows
    tl.store(PM + out, m_i, mask=row_ok)
    tl.store(PL + out, l_i, mask=row_ok)
    if POS_IN_LOOP:
        tl.store(PSUM + out, pos_sum * LN2, mask=row_ok)
        tl.store(PCNT + out, pos_cnt, mask=row_ok)


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
    q, qid, rows, row0, lse2, g, w, dq, dts, scale,
    K, KID, n_cols, D, stride_kn, stride_kd, LSE_C, NPOS_C, GRAD_C,
    EXCLUDE_DIAG: tl.constexpr, IDS_MODE: tl.constexpr, SYMMETRIC: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, IDX64: tl.constexpr,
):
    """Accumulate sum_j dS_ij k_j and sum_j dS_ij s2_ij over this split's share of one key set.

    IDS_MODE as in :func:`_fwd_sweep` (0: the positives' term -[j in P(i)]/npos_i is added
    outside the kernel). SYMMETRIC adds the column loss's term g'_j (p'_ji - [i in P'(j)] / npos'_j),
    where p'_ji = exp(s_ij - lse'_j): both losses share s_ij, so one recomputation serves both.
    """
    lo, hi = _split_range(n_cols, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < n_cols
        k = _load_rows(K, cols, col_ok, tl.arange(0, BLOCK_D), D, stride_kn, stride_kd, IDX64)
        s2 = _mma(q, tl.trans(k), PRECISION, UPCAST_DOT) * scale
        s2_in = s2  # -inf outside V(i): for the probabilities
        s2_z = s2   # 0 outside V(i): for the dtau partials (a masked NaN must stay out)
        ds = tl.zeros_like(s2)
        if IDS_MODE == 0:
            if _needs_mask(start, row0, n_cols, EXCLUDE_DIAG, BLOCK_M, BLOCK_N):
                valid = _tile_valid(rows, cols, n_cols, EXCLUDE_DIAG)
                s2_in = tl.where(valid, s2, float("-inf"))
                s2_z = tl.where(valid, s2, 0.0)
        else:
            valid = _tile_valid(rows, cols, n_cols, EXCLUDE_DIAG)
            kid = tl.load(KID + cols, mask=col_ok, other=0)
            same = (qid[:, None] == kid[None, :]) & valid
            if IDS_MODE == 1:
                ds = tl.where(same, -w[:, None], 0.0)
            else:
                valid = valid & (same == 0)
            s2_in = tl.where(valid, s2, float("-inf"))
            s2_z = tl.where(valid, s2, 0.0)
        ds += g[:, None] * tl.exp2(s2_in - lse2[:, None])
        if SYMMETRIC:  # keys sweep only
            lse2_c, g_c, w_c = _row_weights(LSE_C, NPOS_C, GRAD_C, cols, col_ok)
            ds += g_c[None, :] * tl.exp2(s2_in - lse2_c[None, :])
            if IDS_MODE == 1:
                ds -= tl.where(same, w_c[None, :], 0.0)
        dq += _mma(ds.to(k.dtype), k, PRECISION, UPCAST_DOT)
        dts += tl.sum(ds * s2_z, axis=1)
    return dq, dts


@_autotune("dq")
@triton.jit
def _info_nce_bwd_dq(
    Q, K, BANK, QID, KID, BID, TAU, LSE, NPOS, GRAD, LSE_C, NPOS_C, GRAD_C, DQ0, DQ, DTS,
    N, M, B, D, SIZE_KEY,
    stride_qn, stride_qd, stride_kn, stride_kd, stride_bn, stride_bd,
    EXCLUDE_SELF: tl.constexpr, HAS_BANK: tl.constexpr, BANK_MODE: tl.constexpr,
    SYMMETRIC: tl.constexpr, POS_IN_LOOP: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr, IDX64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dq and the dtau row partials of split ``program_id(1)``, written to ``DQ[split]`` and
    ``DTS[split]`` (``[splits, N, D]`` and ``[splits, N]``; with one split DQ is the result in the
    input dtype). ``*_C`` are the column losses' statistics (SYMMETRIC). Without POS_IN_LOOP the
    positives' term arrives as ``DQ0 [N, D]`` (fp32, before the 1/tau), added by split 0."""
    row0 = tl.program_id(0) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    q = _load_rows(Q, rows, row_ok, dims, D, stride_qn, stride_qd, IDX64)
    qid = tl.load(QID + rows, mask=row_ok, other=0)
    lse2, g, w = _row_weights(LSE, NPOS, GRAD, rows, row_ok)
    inv_tau = 1.0 / _load_tau(TAU)
    scale = LOG2E * inv_tau

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dts = tl.zeros([BLOCK_M], tl.float32)
    dq, dts = _dq_sweep(q, qid, rows, row0, lse2, g, w, dq, dts, scale, K, KID, M, D, stride_kn, stride_kd,
                        LSE_C, NPOS_C, GRAD_C, EXCLUDE_SELF, POS_IN_LOOP, SYMMETRIC,
                        PRECISION, UPCAST_DOT, BLOCK_M, BLOCK_N, BLOCK_D, IDX64)
    if HAS_BANK:
        dq, dts = _dq_sweep(q, qid, rows, row0, lse2, g, w, dq, dts, scale, BANK, BID, B, D, stride_bn, stride_bd,
                            LSE_C, NPOS_C, GRAD_C, False, BANK_MODE, False,
                            PRECISION, UPCAST_DOT, BLOCK_M, BLOCK_N, BLOCK_D, IDX64)
    split = tl.program_id(1)
    if IDX64:
        rows = rows.to(tl.int64)
        split = split.to(tl.int64)
    offs = rows[:, None] * D + dims[None, :]
    io = row_ok[:, None] & (dims[None, :] < D)
    if not POS_IN_LOOP:
        dq += tl.where(split == 0, tl.load(DQ0 + offs, mask=io, other=0.0), 0.0)
    dq = dq * inv_tau
    tl.store(DQ + split * N * D + offs, dq.to(DQ.dtype.element_ty), mask=io)
    tl.store(DTS + split * N + rows, dts * LN2, mask=row_ok)


@_autotune("dk")
@triton.jit
def _info_nce_bwd_dk(
    Q, K, QID, KID, TAU, LSE, NPOS, GRAD, LSE_C, NPOS_C, GRAD_C, DK0, DK,
    N, M, D, SIZE_KEY,
    stride_qn, stride_qd, stride_kn, stride_kd,
    EXCLUDE_SELF: tl.constexpr, HAS_BANK: tl.constexpr, SYMMETRIC: tl.constexpr, POS_IN_LOOP: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dk: one program per block of BLOCK_M keys, sweeping the anchors BLOCK_N at a time.
    Without POS_IN_LOOP the positives' term arrives as ``DK0 [M, D]`` (fp32, before the 1/tau)
    and only the anchor-edge and diagonal tiles are masked."""
    col0 = tl.program_id(0) * BLOCK_M
    cols = col0 + tl.arange(0, BLOCK_M)
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
        lse2, g, w = _row_weights(LSE, NPOS, GRAD, rows, row_ok)
        s2t = _mma(k, tl.trans(q), PRECISION, UPCAST_DOT) * scale  # [keys, anchors]
        if POS_IN_LOOP:
            qid = tl.load(QID + rows, mask=row_ok, other=0)
            valid = _tile_valid(cols, rows, N, EXCLUDE_SELF) & col_ok[:, None]
            same = (kid[:, None] == qid[None, :]) & valid
            s2t = tl.where(valid, s2t, float("-inf"))
            dst = g[None, :] * tl.exp2(s2t - lse2[None, :]) - tl.where(same, w[None, :], 0.0)
            if SYMMETRIC:
                dst += g_c[:, None] * tl.exp2(s2t - lse2_c[:, None]) - tl.where(same, w_c[:, None], 0.0)
        else:
            if _needs_mask(start, col0, N, EXCLUDE_SELF, BLOCK_M, BLOCK_N):
                s2t = tl.where(_tile_valid(cols, rows, N, EXCLUDE_SELF), s2t, float("-inf"))
            dst = g[None, :] * tl.exp2(s2t - lse2[None, :])
            if SYMMETRIC:
                dst += g_c[:, None] * tl.exp2(s2t - lse2_c[:, None])
        dk += _mma(dst.to(q.dtype), q, PRECISION, UPCAST_DOT)
    if IDX64:
        cols = cols.to(tl.int64)
    offs = cols[:, None] * D + dims[None, :]
    io = col_ok[:, None] & (dims[None, :] < D)
    if not POS_IN_LOOP:
        dk += tl.load(DK0 + offs, mask=io, other=0.0)
    dk = dk * inv_tau
    tl.store(DK + offs, dk.to(DK.dtype.element_ty), mask=io)


# ----------------------------------------------------------------------------- launchers
def _grid(n, block, split=1):
    """Launch grid: one program per ``block``-sized slice of ``n`` rows, times ``split`` column splits."""
    return lambda meta: (triton.cdiv(n, meta[block]), split)


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


# ----------------------------------------------------------------------------- what runs when
# "auto": positives out of the loop (separable) from N * (M + B) >= SEPARABLE_MIN, in the loop below.
# "loop" / "separable" force one path (tests; TSCL_INFO_NCE_POSITIVES for experiments).
POSITIVES = os.environ.get("TSCL_INFO_NCE_POSITIVES", "auto")
SEPARABLE_MIN = 1 << 20
# Split-K: None picks the column split count from the sizes and the SM count; an int forces it (tests).
FORCE_SPLIT: Optional[int] = int(os.environ["TSCL_INFO_NCE_SPLIT"]) if os.environ.get("TSCL_INFO_NCE_SPLIT") else None
SPLIT_MIN_COLS = 1024   # each split sweeps at least this many columns (keys + bank)
SPLIT_ROWS = 128        # rows per program assumed when counting row programs (the largest BLOCK_M)
SPLIT_PARTIAL_BYTES = 1 << 27  # cap on the dq kernel's fp32 partials [splits, N, D]
_DEFAULT_SMS = 132      # H100 SXM; the device's own count is read on CUDA


def _separable(n, m, b):
    """True: positives from per-id sums outside the N x (M+B) loop; False: found in the loop."""
    if POSITIVES not in ("auto", "loop", "separable"):
        raise ValueError(f"POSITIVES must be 'auto', 'loop' or 'separable', got {POSITIVES!r}")
    if POSITIVES != "auto":
        return POSITIVES == "separable"
    return n * (m + b) >= SEPARABLE_MIN


@functools.lru_cache(maxsize=None)
def _sm_count(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _sms(device):
    if device.type == "cuda":
        return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return _DEFAULT_SMS


def _split(n, cols, d, device):
    """Column splits for an anchor count ``n`` over ``cols`` columns (keys + bank): 1 when the
    row programs alone fill the SMs, else enough splits to fill them, each sweeping at least
    SPLIT_MIN_COLS columns, and the dq partials within SPLIT_PARTIAL_BYTES."""
    if FORCE_SPLIT is not None:
        return max(1, int(FORCE_SPLIT))
    row_programs = triton.cdiv(n, SPLIT_ROWS)
    sms = _sms(device)
    if row_programs >= sms:
        return 1
    split = min(triton.cdiv(sms, row_programs), max(1, cols // SPLIT_MIN_COLS),
                max(1, SPLIT_PARTIAL_BYTES // (4 * n * _block_d(d))))
    return max(1, split)


def _bank_args(q, bank, bank_ids, mask_bank_same_id, pos_in_loop):
    """Bank operands and flags; BANK_MODE: 0 no ids in the bank sweep (no bank ids, or bank
    positives summed outside), 1 bank positives found in the loop, 2 same-id entries masked."""
    has_bank = bank is not None and bank.shape[0] > 0
    if not has_bank:
        return q, q, 0, (0, 0), dict(HAS_BANK=False, BANK_MODE=0)
    bids = bank_ids if bank_ids is not None else q.new_empty(0, dtype=torch.int64)
    mode = 0 if bank_ids is None else (2 if mask_bank_same_id else int(pos_in_loop))
    return bank, bids, bank.shape[0], bank.stride(), dict(HAS_BANK=True, BANK_MODE=mode)


def _tau(temperature, device):
    return temperature.detach().to(device=device, dtype=torch.float32).reshape(())


def _merge_lse(pm, pl):
    """Exact log-sum-exp over column splits from per-split (max, rescaled sum) in base 2; a row
    without any column gets 0, a NaN anywhere stays NaN."""
    mx = pm.max(dim=0).values
    ref = torch.where(mx == float("-inf"), torch.zeros_like(mx), mx)
    l = (pl * torch.exp2(pm - ref)).sum(dim=0) if pm.shape[0] > 1 else pl[0]
    lse = torch.where(l == 0, torch.zeros_like(l), ref + torch.log2(torch.where(l == 0, torch.ones_like(l), l)))
    return lse * _LN2


_LN2 = 0.6931471805599453


def _codes(q_ids, k_side):
    """Dense codes of the key-side ids (``k_side``: k_ids, then bank_ids where bank positives are
    summed) and of the anchors' ids among them, without a host sync (no ``torch.unique``):
    returns ``qc [N]``, ``kc [len(k_side)]`` and the number of code rows ``u`` (len + 1; the
    last row collects anchors whose id no key has, and stays zero)."""
    srt, perm = torch.sort(k_side)
    new = torch.ones_like(srt, dtype=torch.bool)
    new[1:] = srt[1:] != srt[:-1]
    code_sorted = torch.cumsum(new, 0) - 1
    kc = torch.empty_like(code_sorted)
    kc[perm] = code_sorted
    u = k_side.numel() + 1
    pos = torch.searchsorted(srt, q_ids).clamp_max(k_side.numel() - 1)
    qc = torch.where(srt[pos] == q_ids, code_sorted[pos], torch.full_like(pos, u - 1))
    return qc, kc, u


def _segment_sum(values, codes, u):
    out = values.new_zeros((u,) + values.shape[1:])
    return out.index_add_(0, codes, values)


def _positives(q, k, q_ids, k_ids, tau, exclude_self, bank, bank_ids, mask_bank_same_id):
    """Positives' logit sum and count per anchor from per-id sums of keys (separable path):
    sum_{j in P(i)} s_ij = <q_i, sum_{j: id_j = id_i} k_j> / tau, minus the diagonal under
    exclude_self, plus the same-id bank entries when they are positives."""
    bank_pos = bank is not None and bank.shape[0] > 0 and bank_ids is not None and not mask_bank_same_id
    m = k.shape[0]
    k_side = torch.cat([k_ids, bank_ids]) if bank_pos else k_ids
    qc, kc, u = _codes(q_ids, k_side)
    kf = k.float()
    keys = torch.cat([kf, bank.float()]) if bank_pos else kf
    sums = _segment_sum(keys, kc, u)[qc]
    cnt = _segment_sum(torch.ones_like(kc), kc, u)[qc]
    qf = q.float()
    if exclude_self:
        diag = q_ids == k_ids[: q.shape[0]] if m == q.shape[0] else torch.zeros_like(q_ids, dtype=torch.bool)
        sums = sums - torch.where(diag[:, None], kf, torch.zeros_like(kf))
        cnt = cnt - diag.long()
    return (qf * sums).sum(-1) / tau, cnt


def _forward_pass(q, k, q_ids, k_ids, tau, exclude_self, bank, bank_ids, mask_bank_same_id, consts):
    """One direction (anchors q, keys k, optional bank): ``lse [N]``, ``possum [N]``, ``npos [N]``."""
    n, d = q.shape
    m = k.shape[0]
    b = 0 if bank is None else bank.shape[0]
    pos_in_loop = not _separable(n, m, b)
    split = _split(n, m + b, d, q.device)
    bank_t, bids, b, bstride, flags = _bank_args(q, bank, bank_ids, mask_bank_same_id, pos_in_loop)
    pm = _new((split, n), torch.float32, q.device, float("nan"))
    pl = _new((split, n), torch.float32, q.device, float("nan"))
    psum = _new((split, n), torch.float32, q.device, float("nan")) if pos_in_loop else pm
    pcnt = _new((split, n), torch.int32, q.device, -1) if pos_in_loop else pm
    _info_nce_fwd[_grid(n, "BLOCK_M", split)](
        q, k, bank_t, q_ids, k_ids, bids, tau, pm, pl, psum, pcnt,
        n, m, b, d, _size_key(n, m, b), *q.stride(), *k.stride(), *bstride,
        POS_IN_LOOP=pos_in_loop, **consts, **flags,
    )
    lse = _merge_lse(pm, pl)
    if pos_in_loop:
        possum, npos = psum.sum(0), pcnt.sum(0).long()
    else:
        possum, npos = _positives(q, k, q_ids, k_ids, tau, exclude_self, bank, bank_ids, mask_bank_same_id)
    return lse, possum, npos


def _forward(q, k, q_ids, k_ids, temperature, exclude_self, bank, bank_ids, mask_bank_same_id, symmetric,
             allow_tf32=False):
    """Launch the forward kernel (twice when ``symmetric``: rows, then columns without the bank).

    Returns ``loss, npos, lse``, each ``[N]`` (or ``[N+M]``, rows then columns).
    """
    d = q.shape[1]
    tau = _tau(temperature, q.device)
    consts = dict(EXCLUDE_SELF=exclude_self, PRECISION=_precision(q.dtype, allow_tf32), UPCAST_DOT=_upcast(q.dtype),
                  BLOCK_D=_block_d(d), IDX64=_idx64(q, k, bank))
    parts = [_forward_pass(q, k, q_ids, k_ids, tau, exclude_self, bank, bank_ids, mask_bank_same_id, consts)]
    if symmetric:
        parts.append(_forward_pass(k, q, k_ids, q_ids, tau, exclude_self, None, None, False, consts))
    lse, possum, npos = (torch.cat(t) if len(t) > 1 else t[0] for t in zip(*parts))
    # npos == 0: no positive, loss 0 (npos < 0 only from a poisoned, unwritten count: stays NaN)
    loss = torch.where(npos == 0, torch.zeros_like(lse), lse - possum / npos.clamp_min(1))
    return loss, npos, lse


def _positive_grads(q, k, q_ids, k_ids, g, gc, npos, npos_c, exclude_self, bank, bank_ids, mask_bank_same_id,
                    need_dk):
    """The positives' terms of dq and dk (separable path), fp32 and before the 1/tau:
    dq0_i = -[ w_i sum_{j in P(i)} k_j + sum_{j: i in P'(j)} w'_j k_j ],
    dk0_j = -[ sum_{i: j in P(i)} w_i q_i + w'_j sum_{i in P'(j)} q_i ],
    with w = g / npos (rows) and w' = g' / npos' (columns, symmetric; ``gc`` None otherwise),
    all from per-id sums. Also returns the positives' share of the dtau partials,
    sum_i <q_i, dq0_i> / ... (the caller divides by tau)."""
    n = q.shape[0]
    m = k.shape[0]
    bank_pos = bank is not None and bank.shape[0] > 0 and bank_ids is not None and not mask_bank_same_id
    qf, kf = q.float(), k.float()
    k_side = torch.cat([k_ids, bank_ids]) if bank_pos else k_ids
    qc, kc_all, u = _codes(q_ids, k_side)
    kc = kc_all[:m]
    w = torch.where(npos > 0, g / npos.clamp_min(1), torch.zeros_like(g))
    keys = torch.cat([kf, bank.float()]) if bank_pos else kf
    diag = None
    if exclude_self and n == m:
        diag = (q_ids == k_ids)[:, None]
    zero_k, zero_q = torch.zeros_like(kf), torch.zeros_like(qf)
    own = _segment_sum(keys, kc_all, u)[qc]
    if diag is not None:
        own = own - torch.where(diag, kf, zero_k)
    dq0 = w[:, None] * own
    dk0 = None
    if need_dk:
        dk0 = _segment_sum(w[:, None] * qf, qc, u)[kc]
        if diag is not None:
            dk0 = dk0 - torch.where(diag, w[:, None] * qf, zero_q)
    if gc is not None:
        wc = torch.where(npos_c > 0, gc / npos_c.clamp_min(1), torch.zeros_like(gc))
        cross = _segment_sum(wc[:, None] * kf, kc, u)[qc]
        if diag is not None:
            cross = cross - torch.where(diag, wc[:, None] * kf, zero_k)
        dq0 = dq0 + cross
        if need_dk:
            qs = _segment_sum(qf, qc, u)[kc]
            if diag is not None:
                qs = qs - torch.where(diag, qf, zero_q)
            dk0 = dk0 + wc[:, None] * qs
    dq0 = -dq0
    dts = (qf * dq0).sum()
    return dq0.contiguous(), (-dk0).contiguous() if need_dk else None, dts


def _backward(grad, q, k, q_ids, k_ids, temperature, lse, npos, exclude_self, bank, bank_ids,
              mask_bank_same_id, symmetric, need_dk=True, allow_tf32=False):
    """Launch the dq and dk kernels; returns ``dq [N,D], dk [M,D] (or [0]), dtau []``.

    ``grad``, ``lse`` and ``npos`` are laid out as :func:`_forward` returns them; when
    ``symmetric`` both kernels add the column losses' terms to the same recomputed tiles.
    The path (positives in the loop or separable) and the split count follow the same rules
    as the forward's.
    """
    n, d = q.shape
    m = k.shape[0]
    b = 0 if bank is None else bank.shape[0]
    grad = grad.float().contiguous()  # a reduction's gradient arrives expanded (stride 0)
    rows = (lse[:n], npos[:n], grad[:n])
    cols = (lse[n:], npos[n:], grad[n:]) if symmetric else rows  # unused unless symmetric
    tau = _tau(temperature, q.device)
    pos_in_loop = not _separable(n, m, b)
    if symmetric and pos_in_loop != (not _separable(m, n, 0)):
        pos_in_loop = True  # both directions share the tiles: one path for both
    consts = dict(EXCLUDE_SELF=exclude_self, SYMMETRIC=symmetric, PRECISION=_precision(q.dtype, allow_tf32),
                  UPCAST_DOT=_upcast(q.dtype), BLOCK_D=_block_d(d), IDX64=_idx64(q, k, bank),
                  POS_IN_LOOP=pos_in_loop)
    dts_pos = None
    dq0 = dk0 = q  # unused with positives in the loop
    if not pos_in_loop:
        g = torch.where(rows[1] > 0, rows[2], torch.zeros_like(rows[2]))
        gc = torch.where(cols[1] > 0, cols[2], torch.zeros_like(cols[2])) if symmetric else None
        dq0, dk0, dts_pos = _positive_grads(q, k, q_ids, k_ids, g, gc, rows[1], cols[1] if symmetric else None,
                                            exclude_self, bank, bank_ids, mask_bank_same_id, need_dk)
    split = _split(n, m + b, d, q.device)
    bank_t, bids, b, bstride, flags = _bank_args(q, bank, bank_ids, mask_bank_same_id, pos_in_loop)
    if split == 1:
        dq = _new((n, d), q.dtype, q.device, float("nan"))
        dq_out = dq
    else:
        dq_out = _new((split, n, d), torch.float32, q.device, float("nan"))
    dts = _new((split, n), torch.float32, q.device, float("nan"))
    _info_nce_bwd_dq[_grid(n, "BLOCK_M", split)](
        q, k, bank_t, q_ids, k_ids, bids, tau, *rows, *cols, dq0, dq_out, dts,
        n, m, b, d, _size_key(n, m, b), *q.stride(), *k.stride(), *bstride, **consts, **flags,
    )
    if split > 1:
        dq = dq_out.sum(0).to(q.dtype)
    if need_dk:
        dk = _new((m, d), k.dtype, k.device, float("nan"))
        _info_nce_bwd_dk[_grid(m, "BLOCK_M")](
            q, k, q_ids, k_ids, tau, *rows, *cols, dk0, dk,
            n, m, d, _size_key(m, n), *q.stride(), *k.stride(), HAS_BANK=flags["HAS_BANK"], **consts,
        )
    else:
        dk = k.new_empty(0)
    dts_sum = dts.sum()
    if dts_pos is not None:
        dts_sum = dts_sum + dts_pos / tau
    dtau = (-dts_sum / tau).to(temperature.dtype).reshape(temperature.shape)
    return dq, dk, dtau


# ----------------------------------------------------------------------------- autograd
# the one autograd path: a torch.library custom op (torch >= 2.4), traced by torch.compile without a break
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
    allow_tf32: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Per-anchor InfoNCE losses ``[N]`` (float32) and positive counts ``[N]`` (int64).

    Same arguments and results as :func:`info_nce_rows_reference`; ``q`` and ``k`` may be
    fp32, bf16 or fp16 (q and k are promoted to a common dtype, the bank is cast to it;
    fp64 runs in fp32), any strides. ``allow_tf32``: TF32 products for fp32 inputs.
    ``symmetric=True`` also computes the column losses (anchors k, keys q, no bank) and
    returns ``[N+M]`` rows-then-columns, sharing the backward's recomputed tiles between
    both directions.
    It runs as the ``tscl::info_nce_rows`` operator, which ``torch.compile`` traces without a break.
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
    loss, npos, _ = _info_nce_rows_op(q, k, q_ids, k_ids, temperature, bool(exclude_self), bank,
                                      bank_ids, bool(mask_bank_same_id), bool(symmetric), bool(allow_tf32))
    return loss, npos
