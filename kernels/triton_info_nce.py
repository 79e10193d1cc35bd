"""Fused, tiled InfoNCE in Triton: forward and backward without the N x M similarity matrix.

Semantics are exactly those of :func:`tscl.kernels.reference.info_nce_rows_reference`.
For anchor i, with ``s_ij = <q_i, k_j> / tau`` over the denominator columns V(i) (keys, minus
the diagonal under ``exclude_self``, plus bank entries, minus same-id bank entries under
``mask_bank_same_id``) and the positives P(i) (matching ids)::

    l_i   = lse_i - possum_i / npos_i,      lse_i = logsumexp_{j in V(i)} s_ij,
                                            possum_i = sum_{p in P(i)} s_ip,  npos_i = |P(i)|
    l_i   = 0                               when npos_i == 0

Ids enter the kernels as dense int32 codes (:func:`_codes`: a sort of the key-side ids and a
``searchsorted`` of the anchors'), computed once per step in the forward and saved for the
backward.

Forward (one program per block of BLOCK_M anchors and per column split, grid axis 1): sweep
this split's share of the keys, then of the bank, in tiles of BLOCK_N columns; keep a running
max and rescaled sum (online log-sum-exp, base 2); the splits' partials are merged exactly in
PyTorch. The symmetric (CLIP) loss runs it a second time with the roles swapped (no bank). The
positives' logit sums are either found in the loop (small problems, ``POS_IN_LOOP``, its own
tile config ``fwd_loop``) or computed outside it from per-code key sums (separable, a
deterministic segment-sum kernel). (A column log-sum-exp folded into the row pass was built and
measured: its column reductions cross warps every tile, ~3x the row pass's instructions per
score element, more than the second pass costs; docs/kernels.md.)

Backward, with ``g_i`` the incoming gradient (0 where npos_i == 0),
``p_ij = exp(s_ij - lse_i)`` recomputed tile by tile and
``dS_ij = g_i (p_ij - [j in P(i)] / npos_i)`` (plus ``g'_j (p'_ji - [i in P'(j)] / npos'_j)`` for
the column losses when symmetric)::

    dq_i   = (1/tau) sum_{j in keys and bank} dS_ij k_j       (kernel over anchor blocks x column splits)
    dk_j   = (1/tau) sum_i dS_ij q_i                          (kernel over key blocks x anchor splits;
                                                               the bank gets no gradient)
    dtau   = -(1/tau) sum_i sum_j dS_ij s_ij                  (row partials from the dq kernel)

``dS`` is formed whole in fp32, positives' term included (an int32 code compare per element),
then multiplied by a power of two that brings the call's largest ``|g|`` into [2**13, 2**14),
rounded to the input dtype for the tensor-core product, and the scale is undone in fp32: the
same precision as FlashAttention's dS, without fp16 underflow. Every accumulator is fp32; the
split partials are summed in PyTorch (no atomics: the results reproduce bit for bit).

Tile configs come from a table measured ahead of time (``kernels/config_table.py``, made by
``benchmarks/aot_kernels.py --write-table``): one config per kernel, dtype and head dim, so no
call compiles a second one. ``TSCL_INFO_NCE_AUTOTUNE=1`` opts into runtime autotuning over the
measured spill-free configs instead.
"""
import functools
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import config_table

__all__ = ["info_nce_rows_triton", "chosen_config", "launch_log", "reset_launch_log", "KERNEL_KINDS"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Tests set this to fill every output with NaN / -1 before a launch, so an element that a
# kernel failed to write cannot pass for a correct one.
POISON_OUTPUTS = os.environ.get("TSCL_POISON_OUTPUTS") == "1"
# Opt-in runtime autotuning over the measured spill-free configs (the default is the static table).
AUTOTUNE = os.environ.get("TSCL_INFO_NCE_AUTOTUNE") == "1"

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
DS_EXPONENT = 14  # dS is scaled so that max |g| * scale lies in [2**13, 2**14): |dS| < 2**15


# ----------------------------------------------------------------------------- tile configs
KERNEL_KINDS = ("fwd", "fwd_loop", "dq", "dk", "segsum")
_INTERPRET_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
# The segment-sum kernel: BLOCK_M rows per step of one code's rows, BLOCK_N columns per program.
_SEGSUM_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 4, "num_stages": 1}
_TRITON = tuple(int(v) for v in triton.__version__.split(".")[:2])


def _version_key(version=_TRITON):
    """The measured Triton version whose table applies: 3.6 below 3.7, else 3.9 (3.7 and 3.8 unmeasured)."""
    return "3.6" if tuple(version) < (3, 7) else "3.9"


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def _arch_of(device=None):
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        return tuple(torch.cuda.get_device_capability(device))
    return (9, 0)


def _table_entry(kind, dtype, block_d, arch, version=None):
    """The measured row for (arch, Triton version, dtype, D): the arch's own table where one was
    measured, else sm_90's; D below 64 uses D = 64's row, above 512 D = 512's."""
    arch_key = f"sm_{arch[0]}{arch[1]}"
    archs = {key[0] for key in config_table.TABLE}
    if arch_key not in archs:
        arch_key = "sm_90"
    d_key = min(max(block_d, 64), 512)
    key = (arch_key, version or _version_key(), _dtype_name(dtype), d_key)
    return config_table.TABLE[key][kind]


def chosen_config(kind: str, *, dtype: torch.dtype, d: int, arch: Optional[tuple] = None) -> dict:
    """The tile config a launch of kernel ``kind`` uses for inputs of ``dtype`` and head dim ``d``.

    ``arch`` (compute capability, e.g. ``(9, 0)``) looks the static table up for that GPU; left
    out, it is the current CUDA device's, and under ``TRITON_INTERPRET=1`` the interpreter's small
    config (what a launch there runs). Returns ``{"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"}``.
    """
    if kind not in KERNEL_KINDS:
        raise ValueError(f"kind must be one of {KERNEL_KINDS}, got {kind!r}")
    if arch is None and _INTERPRET:
        return dict(_INTERPRET_CONFIG)
    if kind == "segsum":
        return dict(_SEGSUM_CONFIG)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        dtype = torch.float32
    bm, bn, warps, stages = _table_entry(kind, dtype, _block_d(d), tuple(arch) if arch else _arch_of())[:4]
    return {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages}


_LAUNCHES: dict = {}


def launch_log() -> dict:
    """``{(kind, dtype name, BLOCK_D): {config, ...}}``: the distinct configs launched so far in this
    process (every launch records itself, the interpreter's included)."""
    return {key: set(value) for key, value in _LAUNCHES.items()}


def reset_launch_log() -> None:
    _LAUNCHES.clear()


def _config_text(cfg):
    return " ".join(f"{name}={cfg[name]}" for name in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"))


def _candidates(kind):
    """The search space of the measurement (``aot_kernels.py``) and of opt-in autotuning."""
    if kind == "segsum":
        return [triton.Config({"BLOCK_M": _SEGSUM_CONFIG["BLOCK_M"], "BLOCK_N": _SEGSUM_CONFIG["BLOCK_N"]},
                              num_warps=4, num_stages=1)]
    tiles = [(128, 128), (128, 64), (64, 128), (64, 64), (128, 32), (64, 32), (32, 64), (32, 32),
             (32, 16), (16, 32), (16, 16)]  # the small ones: fp32, whose ``ieee`` dots spill larger tiles
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn in tiles for w in (4, 8) for s in (2, 3) if bm * bn // (32 * w) <= 64]


def _prune(configs, named_args, **kwargs):
    """Opt-in autotuning: keep the configs the table measured spill-free for this kernel, dtype and
    head dim (every variant of the kernel compiled, see ``aot_kernels.py``), in their measured order."""
    kind = kwargs.get("KIND")
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 128))
    q = named_args.get("Q")
    dtype = q.dtype if q is not None else torch.bfloat16
    try:
        admitted = _table_entry(kind, dtype, block_d, _arch_of(getattr(q, "device", None)))[4]
    except KeyError:
        return configs[-1:]
    by_key = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages): c for c in configs}
    kept = [by_key[tuple(a)] for a in admitted if tuple(a) in by_key]
    return kept or configs[-1:]


def _autotuning():
    return AUTOTUNE and not _INTERPRET


@functools.lru_cache(maxsize=None)
def _autotuner(kind):
    kernel = {"fwd": _info_nce_fwd, "fwd_loop": _info_nce_fwd, "dq": _info_nce_bwd_dq, "dk": _info_nce_bwd_dk}[kind]
    key = ["D", "EXCLUDE_SELF", "HAS_BANK", "BANK_MODE", "POS_IN_LOOP", "SYMMETRIC"]
    key = [name for name in key if name in kernel.arg_names]
    return triton.autotune(configs=_candidates(kind), key=key,
                           prune_configs_by={"early_config_prune": functools.partial(_prune, KIND=kind)})(kernel)


def _launch(kind, kernel, rows, split, args, dtype, block_d, constexprs):
    """Launch ``kernel`` on a grid of ``cdiv(rows, BLOCK_M) x split`` with its static config (or the
    opt-in autotuner's pick), and record the config in the launch log."""
    if _autotuning() and kind != "segsum":
        tuner = _autotuner(kind)
        tuner[_grid(rows, "BLOCK_M", split)](*args, **constexprs)
        best = tuner.best_config
        cfg = dict(best.kwargs, num_warps=best.num_warps, num_stages=best.num_stages)
    else:
        cfg = chosen_config(kind, dtype=dtype, d=block_d)
        kernel[_grid(rows, "BLOCK_M", split)](*args, **constexprs, **cfg)
    _LAUNCHES.setdefault((kind, _dtype_name(dtype), block_d), set()).add(_config_text(cfg))
    return cfg


# ----------------------------------------------------------------------------- shared pieces
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
def _load_tau(TAU, tau_value, TAU_PTR: tl.constexpr):
    """The temperature: a device scalar (``TAU_PTR``, a learnable tensor) or a kernel argument (a
    Python float, checked by the caller); NaN unless finite and > 0 (no host read-back)."""
    if TAU_PTR:
        tau = tl.load(TAU).to(tl.float32)
    else:
        tau = tau_value
    return tl.where((tau > 0.0) & (tau < float("inf")), tau, float("nan"))


@triton.jit
def _load_rows(PTR, idx, ok, dims, D, stride_n, stride_d, IDX64: tl.constexpr, MASK_ROWS: tl.constexpr,
               EVEN_D: tl.constexpr):
    """Rows ``idx`` of a ``[*, D]`` matrix as a ``[len(idx), BLOCK_D]`` tile, zeros outside ``ok``
    (MASK_ROWS; off for tiles known to be inside) and past ``D`` (unless EVEN_D: D == BLOCK_D).

    IDX64: offsets in int64 (a tensor whose extent reaches 2**31 elements)."""
    if IDX64:
        idx = idx.to(tl.int64)
    ptrs = PTR + idx[:, None] * stride_n + dims[None, :] * stride_d
    if MASK_ROWS:
        if EVEN_D:
            x = tl.load(ptrs, mask=ok[:, None], other=0.0)
        else:
            x = tl.load(ptrs, mask=ok[:, None] & (dims[None, :] < D), other=0.0)
    else:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=dims[None, :] < D, other=0.0)
    return x


@triton.jit
def _load_vec(PTR, idx, ok, other, MASK: tl.constexpr):
    if MASK:
        x = tl.load(PTR + idx, mask=ok, other=other)
    else:
        x = tl.load(PTR + idx)
    return x


@triton.jit
def _tile_valid(rows, cols, n_rows, n_cols, EXCLUDE_DIAG: tl.constexpr):
    """Elements of a tile in the denominator by position only: row and column in range, and not
    the anchor itself under EXCLUDE_DIAG. A [len(rows), len(cols)] boolean."""
    valid = (cols[None, :] < n_cols) & (rows[:, None] < n_rows)
    if EXCLUDE_DIAG:
        valid = valid & (rows[:, None] != cols[None, :])
    return valid


@triton.jit
def _split_range(n_cols, BLOCK_N: tl.constexpr):
    """Column range ``[lo, hi)`` of this program's split (grid axis 1), in whole BLOCK_N tiles
    (empty, hi <= lo, for a split past the end)."""
    chunk = tl.cdiv(tl.cdiv(n_cols, tl.num_programs(1)), BLOCK_N) * BLOCK_N
    lo = tl.program_id(1) * chunk
    return lo, tl.minimum(n_cols, lo + chunk)


@triton.jit
def _tile_plan(lo, hi, row0, EXCLUDE_DIAG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Which tiles of the sweep ``[lo, hi)`` need a position mask, so that the loop over the others
    carries no mask at all (as the Triton attention tutorial splits its off-band and on-band
    stages). Masked: the tiles crossing the diagonal band ``[row0, row0 + BLOCK_M)`` (EXCLUDE_DIAG)
    and the last partial tile. Returns ``(n_bulk, band_lo, band_hi, n_band, n_masked, full_hi)``:
    unmasked tile t starts at ``lo + t * BLOCK_N``, shifted past the band; masked tile t at
    ``band_lo + t * BLOCK_N`` for t < n_band, then the partial tile at ``full_hi``."""
    span = tl.maximum(hi - lo, 0)
    full_hi = lo + (span // BLOCK_N) * BLOCK_N
    band_lo = lo
    band_hi = lo
    if EXCLUDE_DIAG:
        band_lo = tl.minimum(tl.maximum((row0 // BLOCK_N) * BLOCK_N, lo), full_hi)
        band_hi = tl.minimum(tl.maximum(tl.cdiv(row0 + BLOCK_M, BLOCK_N) * BLOCK_N, lo), full_hi)
    n_band = (band_hi - band_lo) // BLOCK_N
    n_bulk = (full_hi - lo) // BLOCK_N - n_band
    n_masked = n_band + (full_hi < hi).to(tl.int32)
    return n_bulk, band_lo, band_hi, n_band, n_masked, full_hi


@triton.jit
def _bulk_start(t, lo, band_lo, band_hi, EXCLUDE_DIAG: tl.constexpr, BLOCK_N: tl.constexpr):
    start = lo + t * BLOCK_N
    if EXCLUDE_DIAG:
        start = start + (start >= band_lo).to(tl.int32) * (band_hi - band_lo)
    return start


@triton.jit
def _masked_start(t, band_lo, n_band, full_hi, BLOCK_N: tl.constexpr):
    in_band = (t < n_band).to(tl.int32)
    return in_band * (band_lo + t * BLOCK_N) + (1 - in_band) * full_hi


# ----------------------------------------------------------------------------- forward
@triton.jit
def _fwd_tile(
    start, q, qc, rows, m_i, l_i, pos_sum, pos_cnt, scale,
    K, KC, n_rows, n_cols, D, stride_kn, stride_kd,
    EXCLUDE_DIAG: tl.constexpr, IDS_MODE: tl.constexpr, MASKED: tl.constexpr,
    EVEN_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, IDX64: tl.constexpr,
):
    """Fold one tile of BLOCK_N columns into the running row statistics. Logits stay in dot-product units (``x = <q, k>``); ``x * scale`` is the logit in
    base 2 and is formed inside the exponentials' FMAs. Columns outside V(i) are -inf.
    IDS_MODE 0: no codes (positives handled outside); 1: positives found here (code compare per
    element: sums and counts); 2: same-code columns leave the denominator (bank_same_id="mask")."""
    cols = start + tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    k = _load_rows(K, cols, col_ok, tl.arange(0, BLOCK_D), D, stride_kn, stride_kd, IDX64, MASKED, EVEN_D)
    x = _mma(q, tl.trans(k), PRECISION, UPCAST_DOT)
    if MASKED:
        valid = _tile_valid(rows, cols, n_rows, n_cols, EXCLUDE_DIAG)
        x = tl.where(valid, x, float("-inf"))
    if IDS_MODE != 0:
        kc = _load_vec(KC, cols, col_ok, -1, MASKED)
        same = qc[:, None] == kc[None, :]
        if MASKED:
            same = same & valid
        if IDS_MODE == 1:
            pos_sum += tl.sum(tl.where(same, x, 0.0), axis=1)
            pos_cnt += tl.sum(same.to(tl.int32), axis=1)
        else:
            x = tl.where(same, float("-inf"), x)
    m_new = tl.maximum(m_i, tl.max(x, axis=1) * scale)
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no column so far
    l_i = l_i * tl.exp2(m_i - m_ref) + tl.sum(tl.exp2(x * scale - m_ref[:, None]), axis=1)
    return m_new, l_i, pos_sum, pos_cnt


@triton.jit
def _fwd_sweep(
    q, qc, rows, row0, m_i, l_i, pos_sum, pos_cnt, scale,
    K, KC, n_rows, n_cols, D, stride_kn, stride_kd,
    EXCLUDE_DIAG: tl.constexpr, IDS_MODE: tl.constexpr, EVEN_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, IDX64: tl.constexpr,
):
    """This split's share of one key set (the keys, or the bank): the tiles without a position mask
    first, in one loop, then the masked ones (:func:`_tile_plan`)."""
    lo, hi = _split_range(n_cols, BLOCK_N)
    n_bulk, band_lo, band_hi, n_band, n_masked, full_hi = _tile_plan(
        lo, hi, row0, EXCLUDE_DIAG, BLOCK_M, BLOCK_N)
    for t in range(0, n_bulk):
        start = _bulk_start(t, lo, band_lo, band_hi, EXCLUDE_DIAG, BLOCK_N)
        m_i, l_i, pos_sum, pos_cnt = _fwd_tile(
            start, q, qc, rows, m_i, l_i, pos_sum, pos_cnt, scale, K, KC, n_rows, n_cols, D, stride_kn,
            stride_kd, EXCLUDE_DIAG, IDS_MODE, False, EVEN_D, PRECISION, UPCAST_DOT,
            BLOCK_N, BLOCK_D, IDX64)
    for t in range(0, n_masked):
        start = _masked_start(t, band_lo, n_band, full_hi, BLOCK_N)
        m_i, l_i, pos_sum, pos_cnt = _fwd_tile(
            start, q, qc, rows, m_i, l_i, pos_sum, pos_cnt, scale, K, KC, n_rows, n_cols, D, stride_kn,
            stride_kd, EXCLUDE_DIAG, IDS_MODE, True, EVEN_D, PRECISION, UPCAST_DOT,
            BLOCK_N, BLOCK_D, IDX64)
    return m_i, l_i, pos_sum, pos_cnt


@triton.jit
def _info_nce_fwd(
    Q, K, BANK, QC, KC, BC, TAU, tau_value, PM, PL, PSUM, PCNT,
    N, M, B, D,
    stride_qn, stride_qd, stride_kn, stride_kd, stride_bn, stride_bd,
    EXCLUDE_SELF: tl.constexpr, HAS_BANK: tl.constexpr, BANK_MODE: tl.constexpr,
    POS_IN_LOOP: tl.constexpr, TAU_PTR: tl.constexpr, EVEN_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, IDX64: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial row statistics of split ``program_id(1)`` (its share of the keys and of the bank):
    running max ``PM`` (base 2) and rescaled exp-sum ``PL``, both ``[splits, N]``; with
    POS_IN_LOOP also the positives' logit sum ``PSUM`` (natural units) and count ``PCNT``."""
    row0 = tl.program_id(0) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    q = _load_rows(Q, rows, row_ok, dims, D, stride_qn, stride_qd, IDX64, True, EVEN_D)
    qc = tl.load(QC + rows, mask=row_ok, other=-2)
    scale = LOG2E / _load_tau(TAU, tau_value, TAU_PTR)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    pos_sum = tl.zeros([BLOCK_M], tl.float32)
    pos_cnt = tl.zeros([BLOCK_M], tl.int32)
    m_i, l_i, pos_sum, pos_cnt = _fwd_sweep(
        q, qc, rows, row0, m_i, l_i, pos_sum, pos_cnt, scale, K, KC, N, M, D, stride_kn, stride_kd,
        EXCLUDE_SELF, POS_IN_LOOP, EVEN_D, PRECISION, UPCAST_DOT, BLOCK_M, BLOCK_N, BLOCK_D, IDX64)
    if HAS_BANK:
        m_i, l_i, pos_sum, pos_cnt = _fwd_sweep(
            q, qc, rows, row0, m_i, l_i, pos_sum, pos_cnt, scale, BANK, BC, N, B, D, stride_bn, stride_bd,
            False, BANK_MODE, EVEN_D, PRECISION, UPCAST_DOT, BLOCK_M, BLOCK_N, BLOCK_D, IDX64)
    out = tl.program_id(1) * N + rows
    tl.store(PM + out, m_i, mask=row_ok)
    tl.store(PL + out, l_i, mask=row_ok)
    if POS_IN_LOOP:
        tl.store(PSUM + out, pos_sum * (scale * LN2), mask=row_ok)
        tl.store(PCNT + out, pos_cnt, mask=row_ok)


# ----------------------------------------------------------------------------- segment sums
@triton.jit
def _segment_sum_kernel(
    X, Y, ORDER, START, OUT, CNT, M, D, stride_xn, stride_xd, stride_yn, stride_yd,
    HAS_Y: tl.constexpr, IDX64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """``OUT[c] = sum of rows ORDER[START[c]:START[c+1]]`` of ``cat(X, Y)`` (rows >= M come from Y,
    or are left out without HAS_Y), accumulated in fp32 in that fixed order, and ``CNT[c]`` the
    number of rows summed: one program per code and BLOCK_N columns, no atomics."""
    code = tl.program_id(0)
    dims = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    lo = tl.load(START + code)
    hi = tl.load(START + code + 1)
    acc = tl.zeros([BLOCK_N], tl.float32)
    cnt = tl.zeros([BLOCK_M], tl.int32)
    for r0 in range(lo, hi, BLOCK_M):
        r = r0 + tl.arange(0, BLOCK_M)
        ok = r < hi
        idx = tl.load(ORDER + r, mask=ok, other=0)
        if IDX64:
            idx = idx.to(tl.int64)
        from_a = ok & (idx < M)
        cnt += from_a.to(tl.int32)
        x = tl.load(X + idx[:, None] * stride_xn + dims[None, :] * stride_xd,
                    mask=from_a[:, None] & (dims[None, :] < D), other=0.0).to(tl.float32)
        if HAS_Y:
            from_y = ok & (idx >= M)
            cnt += from_y.to(tl.int32)
            x += tl.load(Y + (idx - M)[:, None] * stride_yn + dims[None, :] * stride_yd,
                         mask=from_y[:, None] & (dims[None, :] < D), other=0.0).to(tl.float32)
        acc += tl.sum(x, axis=0)
    out = code * D
    if IDX64:
        out = out.to(tl.int64)
    tl.store(OUT + out + dims, acc, mask=dims < D)
    if tl.program_id(1) == 0:
        tl.store(CNT + code, tl.sum(cnt, axis=0))


def _segment_sum(a, b, order, start, u):
    """fp32 ``[u, D]`` sums of the rows of ``cat(a, b)`` grouped by code (``order``: row indices of the
    coded side sorted by code, ``start [u + 1]``: each code's first position in it; rows past ``a``
    are left out when ``b`` is None), read in the inputs' dtype, and the int32 row count per code."""
    d = a.shape[1]
    out = _new((u, d), torch.float32, a.device, float("nan"))
    cnt = _new((u,), torch.int32, a.device, -1)
    bt = b if b is not None else a
    cfg = chosen_config("segsum", dtype=a.dtype, d=d)
    grid = (u, triton.cdiv(d, cfg["BLOCK_N"]))
    _segment_sum_kernel[grid](a, bt, order, start, out, cnt, a.shape[0], d, *a.stride(), *bt.stride(),
                              HAS_Y=b is not None, IDX64=_idx64(a, b, extra=u * d), **cfg)
    _LAUNCHES.setdefault(("segsum", _dtype_name(a.dtype), _block_d(d)), set()).add(_config_text(cfg))
    return out, cnt


# ----------------------------------------------------------------------------- backward
@triton.jit
def _row_weights(LSE2, G, W, idx, ok, MASK: tl.constexpr):
    """Per-anchor backward inputs (made on the host, :func:`_weights`): lse in base 2, and g_i and
    w_i = g_i / npos_i (0 without positives), both already multiplied by the dS scale."""
    return (_load_vec(LSE2, idx, ok, 0.0, MASK), _load_vec(G, idx, ok, 0.0, MASK),
            _load_vec(W, idx, ok, 0.0, MASK))


@triton.jit
def _dq_tile(
    start, q, qc, rows, lse2, g, w, dq, dts, scale,
    K, KC, n_rows, n_cols, D, stride_kn, stride_kd, LSE_C, G_C, W_C,
    EXCLUDE_DIAG: tl.constexpr, IDS_MODE: tl.constexpr, SYMMETRIC: tl.constexpr, MASKED: tl.constexpr,
    EVEN_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, IDX64: tl.constexpr,
):
    """Accumulate sum_j dS_ij k_j and sum_j dS_ij <q_i, k_j> over one tile of BLOCK_N columns.

    dS is formed whole in fp32 (the positives' term included) before it is rounded to the input
    dtype for the product; ``g`` and ``w`` arrive multiplied by the dS scale. IDS_MODE 0: no
    positives among these columns; 1: the positives' term -[j in P(i)] w_i per element (code
    compare); 2: same-code columns leave the denominator (bank_same_id="mask"). SYMMETRIC adds
    the column loss's term g'_j (p'_ji - [i in P'(j)] / npos'_j), p'_ji = exp(s_ij - lse'_j): both
    losses share s_ij, so one recomputation serves both."""
    cols = start + tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    k = _load_rows(K, cols, col_ok, tl.arange(0, BLOCK_D), D, stride_kn, stride_kd, IDX64, MASKED, EVEN_D)
    x = _mma(q, tl.trans(k), PRECISION, UPCAST_DOT)
    x_in = x  # -inf outside V(i): for the probabilities
    if MASKED:
        valid = _tile_valid(rows, cols, n_rows, n_cols, EXCLUDE_DIAG)
        x_in = tl.where(valid, x, float("-inf"))
    if IDS_MODE != 0:
        same = qc[:, None] == _load_vec(KC, cols, col_ok, -1, MASKED)[None, :]
    if IDS_MODE == 2:
        x_in = tl.where(same, float("-inf"), x_in)
    ds = g[:, None] * tl.exp2(x_in * scale - lse2[:, None])
    if SYMMETRIC:  # keys sweep only
        lse2_c, g_c, w_c = _row_weights(LSE_C, G_C, W_C, cols, col_ok, MASKED)
        ds += g_c[None, :] * tl.exp2(x_in * scale - lse2_c[None, :])
        ds = tl.where(same, ds - (w[:, None] + w_c[None, :]), ds)
    elif IDS_MODE == 1:
        ds = tl.where(same, ds - w[:, None], ds)
    x_z = x  # 0 outside V(i): for the dtau partials (0 * -inf, or a masked NaN, must stay out)
    if MASKED:  # outside V(i) the positives' term must not enter either
        ds = tl.where(valid, ds, 0.0)
        x_z = tl.where(valid, x, 0.0)
    if IDS_MODE == 2:
        x_z = tl.where(same, 0.0, x_z)
    dq += _mma(ds.to(k.dtype), k, PRECISION, UPCAST_DOT)
    dts += tl.sum(ds * x_z, axis=1)
    return dq, dts


@triton.jit
def _dq_sweep(
    q, qc, rows, row0, lse2, g, w, dq, dts, scale,
    K, KC, n_rows, n_cols, D, stride_kn, stride_kd, LSE_C, G_C, W_C,
    EXCLUDE_DIAG: tl.constexpr, IDS_MODE: tl.constexpr, SYMMETRIC: tl.constexpr, EVEN_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, IDX64: tl.constexpr,
):
    """This split's share of one key set: the unmasked tiles in one loop, then the masked ones."""
    lo, hi = _split_range(n_cols, BLOCK_N)
    n_bulk, band_lo, band_hi, n_band, n_masked, full_hi = _tile_plan(
        lo, hi, row0, EXCLUDE_DIAG, BLOCK_M, BLOCK_N)
    for t in range(0, n_bulk):
        start = _bulk_start(t, lo, band_lo, band_hi, EXCLUDE_DIAG, BLOCK_N)
        dq, dts = _dq_tile(start, q, qc, rows, lse2, g, w, dq, dts, scale, K, KC, n_rows, n_cols, D,
                           stride_kn, stride_kd, LSE_C, G_C, W_C, EXCLUDE_DIAG, IDS_MODE, SYMMETRIC, False, EVEN_D,
                           PRECISION, UPCAST_DOT, BLOCK_N, BLOCK_D, IDX64)
    for t in range(0, n_masked):
        start = _masked_start(t, band_lo, n_band, full_hi, BLOCK_N)
        dq, dts = _dq_tile(start, q, qc, rows, lse2, g, w, dq, dts, scale, K, KC, n_rows, n_cols, D,
                           stride_kn, stride_kd, LSE_C, G_C, W_C, EXCLUDE_DIAG, IDS_MODE, SYMMETRIC, True, EVEN_D,
                           PRECISION, UPCAST_DOT, BLOCK_N, BLOCK_D, IDX64)
    return dq, dts


@triton.jit
def _info_nce_bwd_dq(
    Q, K, BANK, QC, KC, BC, TAU, tau_value, LSE, G, W, LSE_C, G_C, W_C, UNSCALE, DQ, DTS,
    N, M, B, D,
    stride_qn, stride_qd, stride_kn, stride_kd, stride_bn, stride_bd,
    EXCLUDE_SELF: tl.constexpr, HAS_BANK: tl.constexpr, BANK_MODE: tl.constexpr,
    SYMMETRIC: tl.constexpr, TAU_PTR: tl.constexpr, EVEN_D: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr, IDX64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dq and the dtau row partials of split ``program_id(1)``, written to ``DQ[split]`` and
    ``DTS[split]`` (``[splits, N, D]`` and ``[splits, N]``; with one split DQ is the result in the
    input dtype). ``*_C`` are the column losses' statistics (SYMMETRIC); ``UNSCALE`` undoes the
    power-of-two dS scale folded into ``G``/``W``."""
    row0 = tl.program_id(0) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    q = _load_rows(Q, rows, row_ok, dims, D, stride_qn, stride_qd, IDX64, True, EVEN_D)
    qc = tl.load(QC + rows, mask=row_ok, other=-2)
    lse2, g, w = _row_weights(LSE, G, W, rows, row_ok, True)
    inv_tau = 1.0 / _load_tau(TAU, tau_value, TAU_PTR)
    scale = LOG2E * inv_tau

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dts = tl.zeros([BLOCK_M], tl.float32)
    dq, dts = _dq_sweep(q, qc, rows, row0, lse2, g, w, dq, dts, scale, K, KC, N, M, D, stride_kn, stride_kd,
                        LSE_C, G_C, W_C, EXCLUDE_SELF, 1, SYMMETRIC, EVEN_D, PRECISION, UPCAST_DOT, BLOCK_M, BLOCK_N,
                        BLOCK_D, IDX64)
    if HAS_BANK:
        dq, dts = _dq_sweep(q, qc, rows, row0, lse2, g, w, dq, dts, scale, BANK, BC, N, B, D, stride_bn, stride_bd,
                            LSE_C, G_C, W_C, False, BANK_MODE, False, EVEN_D, PRECISION, UPCAST_DOT, BLOCK_M,
                            BLOCK_N, BLOCK_D, IDX64)
    split = tl.program_id(1)
    if IDX64:
        rows = rows.to(tl.int64)
        split = split.to(tl.int64)
    offs = rows[:, None] * D + dims[None, :]
    io = row_ok[:, None] & (dims[None, :] < D)
    unscale = inv_tau * tl.load(UNSCALE)
    tl.store(DQ + split * N * D + offs, (dq * unscale).to(DQ.dtype.element_ty), mask=io)
    tl.store(DTS + split * N + rows, dts * unscale, mask=row_ok)


@triton.jit
def _dk_tile(
    start, k, kc, cols, col0, lse2_c, g_c, w_c, dk, scale,
    Q, QC, LSE, G, W, n_keys, n_rows, D, stride_qn, stride_qd,
    EXCLUDE_SELF: tl.constexpr, SYMMETRIC: tl.constexpr, MASKED: tl.constexpr, EVEN_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    IDX64: tl.constexpr,
):
    """Accumulate sum_i dS_ij q_i over one tile of BLOCK_N anchors (the tile is [keys, anchors])."""
    rows = start + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    q = _load_rows(Q, rows, row_ok, tl.arange(0, BLOCK_D), D, stride_qn, stride_qd, IDX64, MASKED, EVEN_D)
    qc = _load_vec(QC, rows, row_ok, -2, MASKED)
    lse2, g, w = _row_weights(LSE, G, W, rows, row_ok, MASKED)
    x = _mma(k, tl.trans(q), PRECISION, UPCAST_DOT)
    if MASKED:
        valid = _tile_valid(cols, rows, n_keys, n_rows, EXCLUDE_SELF)
        x = tl.where(valid, x, float("-inf"))
    dst = g[None, :] * tl.exp2(x * scale - lse2[None, :])
    if SYMMETRIC:
        dst += g_c[:, None] * tl.exp2(x * scale - lse2_c[:, None])
        dst = tl.where(kc[:, None] == qc[None, :], dst - (w[None, :] + w_c[:, None]), dst)
    else:
        dst = tl.where(kc[:, None] == qc[None, :], dst - w[None, :], dst)
    if MASKED:  # outside V the positives' term must not enter either
        dst = tl.where(valid, dst, 0.0)
    return dk + _mma(dst.to(q.dtype), q, PRECISION, UPCAST_DOT)


@triton.jit
def _info_nce_bwd_dk(
    Q, K, QC, KC, TAU, tau_value, LSE, G, W, LSE_C, G_C, W_C, UNSCALE, DK,
    N, M, D,
    stride_qn, stride_qd, stride_kn, stride_kd,
    EXCLUDE_SELF: tl.constexpr, SYMMETRIC: tl.constexpr, TAU_PTR: tl.constexpr, EVEN_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dk of split ``program_id(1)``: one program per block of BLOCK_M keys, sweeping its share of the
    anchors BLOCK_N at a time (unmasked tiles first), written to ``DK[split]`` (``[splits, M, D]``
    fp32; with one split the result in the input dtype)."""
    col0 = tl.program_id(0) * BLOCK_M
    cols = col0 + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    col_ok = cols < M
    k = _load_rows(K, cols, col_ok, dims, D, stride_kn, stride_kd, IDX64, True, EVEN_D)
    kc = tl.load(KC + cols, mask=col_ok, other=-1)
    inv_tau = 1.0 / _load_tau(TAU, tau_value, TAU_PTR)
    scale = LOG2E * inv_tau
    lse2_c = inv_tau  # placeholders, unused unless SYMMETRIC
    g_c = inv_tau
    w_c = inv_tau
    if SYMMETRIC:
        lse2_c, g_c, w_c = _row_weights(LSE_C, G_C, W_C, cols, col_ok, True)

    dk = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, hi = _split_range(N, BLOCK_N)
    n_bulk, band_lo, band_hi, n_band, n_masked, full_hi = _tile_plan(
        lo, hi, col0, EXCLUDE_SELF, BLOCK_M, BLOCK_N)
    for t in range(0, n_bulk):
        start = _bulk_start(t, lo, band_lo, band_hi, EXCLUDE_SELF, BLOCK_N)
        dk = _dk_tile(start, k, kc, cols, col0, lse2_c, g_c, w_c, dk, scale, Q, QC, LSE, G, W, M, N, D,
                      stride_qn, stride_qd, EXCLUDE_SELF, SYMMETRIC, False, EVEN_D, PRECISION, UPCAST_DOT, BLOCK_N,
                      BLOCK_D, IDX64)
    for t in range(0, n_masked):
        start = _masked_start(t, band_lo, n_band, full_hi, BLOCK_N)
        dk = _dk_tile(start, k, kc, cols, col0, lse2_c, g_c, w_c, dk, scale, Q, QC, LSE, G, W, M, N, D,
                      stride_qn, stride_qd, EXCLUDE_SELF, SYMMETRIC, True, EVEN_D, PRECISION, UPCAST_DOT, BLOCK_N,
                      BLOCK_D, IDX64)
    split = tl.program_id(1)
    if IDX64:
        cols = cols.to(tl.int64)
        split = split.to(tl.int64)
    offs = cols[:, None] * D + dims[None, :]
    io = col_ok[:, None] & (dims[None, :] < D)
    tl.store(DK + split * M * D + offs, (dk * (inv_tau * tl.load(UNSCALE))).to(DK.dtype.element_ty), mask=io)


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


def _idx64(*tensors, extra=0):
    """int64 offsets when any operand's offsets could pass int32 (N * D near 2**31), or an output
    buffer's (``extra`` elements: the split partials ``[splits, rows, D]``, whatever the split)."""
    return any(_extent(t) > _INT32_LIMIT for t in tensors) or extra + 1024 * 1024 > _INT32_LIMIT


def _upcast(dtype):
    return _INTERPRET and dtype == torch.bfloat16


# ----------------------------------------------------------------------------- what runs when
# "auto": the forward's positives out of the loop (separable) from N * (M + B) >= SEPARABLE_MIN, in
# the loop below. "loop" / "separable" force one path (tests; TSCL_INFO_NCE_POSITIVES for experiments).
POSITIVES = os.environ.get("TSCL_INFO_NCE_POSITIVES", "auto")
SEPARABLE_MIN = 1 << 20
# Split-K: None picks the split count from the sizes and the SM count; an int forces it (tests).
FORCE_SPLIT: Optional[int] = int(os.environ["TSCL_INFO_NCE_SPLIT"]) if os.environ.get("TSCL_INFO_NCE_SPLIT") else None
SPLIT_MIN_COLS = 1024   # each split sweeps at least this many columns (keys + bank), or anchors (dk)
SPLIT_ROWS = 128        # rows per program assumed when counting row programs (the largest BLOCK_M)
SPLIT_PARTIAL_BYTES = 1 << 27  # cap on the fp32 partials [splits, rows, D] of the dq and dk kernels
_DEFAULT_SMS = 132      # H100 SXM; the device's own count is read on CUDA


def _separable(n, m, b):
    """True: the forward's positives from per-code sums outside the N x (M+B) loop; False: in the loop."""
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
    """Splits of the ``cols`` sweep for ``n`` rows (anchors over keys + bank; keys over anchors for
    dk): 1 when the row programs alone fill the SMs, else enough splits to fill them, each sweeping
    at least SPLIT_MIN_COLS columns, and the fp32 partials within SPLIT_PARTIAL_BYTES. A forced
    split (FORCE_SPLIT) is taken as is; the offsets switch to int64 if its partials need them."""
    if FORCE_SPLIT is not None:
        return max(1, int(FORCE_SPLIT))
    row_programs = triton.cdiv(n, SPLIT_ROWS)
    sms = _sms(device)
    if row_programs >= sms:
        return 1
    split = min(triton.cdiv(sms, row_programs), max(1, cols // SPLIT_MIN_COLS),
                max(1, SPLIT_PARTIAL_BYTES // (4 * n * _block_d(d))))
    return max(1, split)


def _tau_args(temperature):
    """``(tensor or placeholder, float value, TAU_PTR)``: a tensor temperature is read by the kernel on
    the device, a Python float travels as a kernel argument (no host-to-device copy per call)."""
    if isinstance(temperature, Tensor):
        return temperature.detach().reshape(()), 0.0, True
    return None, float(temperature), False


def _merge_lse(pm, pl):
    """Exact log-sum-exp over partials from per-partial (max, rescaled sum) in base 2 (dim 0); a row
    without any column gets 0, a NaN anywhere stays NaN."""
    mx = pm.max(dim=0).values
    ref = torch.where(mx == float("-inf"), torch.zeros_like(mx), mx)
    l = (pl * torch.exp2(pm - ref)).sum(dim=0) if pm.shape[0] > 1 else pl[0]
    lse = torch.where(l == 0, torch.zeros_like(l), ref + torch.log2(torch.where(l == 0, torch.ones_like(l), l)))
    return lse * _LN2


_LN2 = 0.6931471805599453


# ----------------------------------------------------------------------------- id codes
def _sorted_codes(ids):
    """Codes of ``ids`` in sorted order: ``(sorted ids, order, code of each sorted position)``; the
    sort is stable, so equal ids keep their order and everything built on it is deterministic."""
    srt, order = torch.sort(ids, stable=True)
    new = torch.ones_like(srt, dtype=torch.bool)
    new[1:] = srt[1:] != srt[:-1]
    return srt, order, torch.cumsum(new, 0) - 1


def _codes(q_ids, k_side):
    """Dense codes of the key-side ids (``k_side``: k_ids, then bank_ids when the bank has ids) and of
    the anchors' ids among them, without a host sync (no ``torch.unique``). Returns ``qc [N]``,
    ``kc [len(k_side)]`` (int32), the number of code rows ``u`` (len + 1; the last, ``u - 1``, is the
    code of anchors whose id no key has), and the key side's ``order`` and code ``start [u + 1]``."""
    srt, order, code_sorted = _sorted_codes(k_side)
    kc = torch.empty_like(code_sorted)
    kc[order] = code_sorted
    u = k_side.numel() + 1
    pos = torch.searchsorted(srt, q_ids).clamp_max(k_side.numel() - 1)
    qc = torch.where(srt[pos] == q_ids, code_sorted[pos], torch.full_like(pos, u - 1))
    start = torch.searchsorted(code_sorted, torch.arange(u + 1, device=k_side.device, dtype=code_sorted.dtype))
    return qc.to(torch.int32), kc.to(torch.int32), u, order, start.to(torch.int32)


# ----------------------------------------------------------------------------- forward
def _bank_args(q, bank, bc, mask_bank_same_id, pos_in_loop=True):
    """Bank operands and flags; BANK_MODE: 0 no codes in the bank sweep (no bank ids, or the forward's
    bank positives summed outside on the separable path), 1 bank positives found per element (the
    backward, and the in-loop forward), 2 same-id entries masked out of the denominator (a
    per-element compare on both passes)."""
    has_bank = bank is not None and bank.shape[0] > 0
    if not has_bank:
        return q, q, 0, (0, 0), dict(HAS_BANK=False, BANK_MODE=0)
    mode = 0 if bc is None else (2 if mask_bank_same_id else int(pos_in_loop))
    return bank, (bc if bc is not None else q.new_empty(0, dtype=torch.int32)), bank.shape[0], bank.stride(), \
        dict(HAS_BANK=True, BANK_MODE=mode)


def _separable_positives(a, b_keys, bank, ac, order, start, u, tau, diag):
    """Positives' logit sums and counts of anchors ``a`` (codes ``ac``) over the key side
    ``cat(b_keys, bank)`` from per-code key sums: sum_{j in P(i)} s_ij = <a_i, sum_{j: code_j = code_i}
    key_j> / tau, minus the diagonal under exclude_self (``diag``: rows whose own key is a positive)."""
    sums, cnt = _segment_sum(b_keys, bank, order, start, u)
    ac = ac.long()
    possum = (a * sums[ac]).sum(-1)
    npos = cnt[ac].long()
    if diag is not None:
        possum = possum - torch.where(diag, (a.float() * b_keys.float()).sum(-1), torch.zeros_like(possum))
        npos = npos - diag.long()
    return possum / tau, npos


def _forward_pass(q, k, qc, kc, bank, bc, mask_bank_same_id, tau_args, exclude_self, consts, positives):
    """One direction (anchors q, keys k, optional bank): launch the forward kernel, merge the splits'
    log-sum-exp, and take the positives' sums and counts from the loop or from ``positives()``."""
    n, d = q.shape
    m = k.shape[0]
    b = 0 if bank is None else bank.shape[0]
    pos_in_loop = not _separable(n, m, b)
    split = _split(n, m + b, d, q.device)
    bank_t, bids, b, bstride, flags = _bank_args(q, bank, bc, mask_bank_same_id, pos_in_loop)
    pm = _new((split, n), torch.float32, q.device, float("nan"))
    pl = _new((split, n), torch.float32, q.device, float("nan"))
    psum = _new((split, n), torch.float32, q.device, float("nan")) if pos_in_loop else pm
    pcnt = _new((split, n), torch.int32, q.device, -1) if pos_in_loop else pm
    tau_t, tau_v, tau_ptr = tau_args
    _launch("fwd_loop" if pos_in_loop else "fwd", _info_nce_fwd, n, split,
            (q, k, bank_t, qc, kc, bids, tau_t if tau_ptr else pm, tau_v, pm, pl, psum, pcnt,
             n, m, b, d, *q.stride(), *k.stride(), *bstride),
            q.dtype, _block_d(d),
            dict(POS_IN_LOOP=pos_in_loop, IDX64=_idx64(q, k, bank, extra=split * n), **consts, **flags))
    lse = _merge_lse(pm, pl)
    if pos_in_loop:
        return lse, psum.sum(0), pcnt.sum(0).long()
    return (lse, *positives())


def _forward(q, k, codes, u, order, start, temperature, exclude_self, bank, mask_bank_same_id, symmetric,
             allow_tf32=False):
    """Launch the forward kernel (twice when ``symmetric``: rows, then columns without the bank).

    Returns ``loss, npos, lse``, each ``[N]`` (or ``[N+M]``, rows then columns).
    """
    n, d = q.shape
    m = k.shape[0]
    qc, kc, bc = codes[:n], codes[n:n + m], codes[n + m:] if codes.numel() > n + m else None
    tau_args = _tau_args(temperature)
    tau = tau_args[0] if tau_args[2] else tau_args[1]
    consts = dict(EXCLUDE_SELF=exclude_self, PRECISION=_precision(q.dtype, allow_tf32), UPCAST_DOT=_upcast(q.dtype),
                  BLOCK_D=_block_d(d), EVEN_D=d == _block_d(d), TAU_PTR=tau_args[2])
    bank_pos = bc is not None and bank is not None and bank.shape[0] > 0 and not mask_bank_same_id
    diag = (qc == kc) if exclude_self else None

    def rows_positives():
        return _separable_positives(q, k, bank if bank_pos else None, qc, order, start, u, tau, diag)

    def cols_positives():  # anchors k among the codes of q: the q rows grouped by their code
        srt_q, order_q = torch.sort(qc, stable=True)
        start_q = torch.searchsorted(srt_q, torch.arange(u + 1, device=q.device, dtype=srt_q.dtype)).to(torch.int32)
        return _separable_positives(k, q, None, kc, order_q, start_q, u, tau, diag)

    parts = [_forward_pass(q, k, qc, kc, bank, bc, mask_bank_same_id, tau_args, exclude_self, consts,
                           rows_positives)]
    if symmetric:
        parts.append(_forward_pass(k, q, kc, qc, None, None, False, tau_args, exclude_self, consts, cols_positives))
    lse, possum, npos = (torch.cat(t) if len(t) > 1 else t[0] for t in zip(*parts))
    # npos == 0: no positive, loss 0 (npos < 0 only from a poisoned, unwritten count: stays NaN)
    loss = torch.where(npos == 0, torch.zeros_like(lse), lse - possum / npos.clamp_min(1))
    return loss, npos, lse


# ----------------------------------------------------------------------------- backward
def _weights(grad, lse, npos, scale):
    """One direction's backward inputs: ``lse * log2 e``, ``g`` (0 where the anchor has no positive)
    and ``w = g / npos``, both times ``scale``; fp32 ``[rows]`` each."""
    g = torch.where(npos > 0, grad.float(), torch.zeros((), device=grad.device))
    return (lse * _LOG2E).contiguous(), (g * scale).contiguous(), (g * scale / npos.clamp_min(1)).contiguous()


def _ds_scale(grad):
    """``(scale, 1 / scale)``, 0-dim fp32 device tensors: the power of two that brings the largest
    ``|g|`` into [2**13, 2**14), so ``|dS| < 2**15`` and fp16 neither overflows nor loses small
    ``g p`` to underflow (no host sync: the exponent stays on the device)."""
    _, exponent = torch.frexp(grad.float().abs().amax())
    e = (DS_EXPONENT - exponent).clamp(-100, 100).float()
    return torch.exp2(e), torch.exp2(-e)


_LOG2E = 1.4426950408889634


def _backward(grad, q, k, codes, temperature, lse, npos, exclude_self, bank, mask_bank_same_id, symmetric,
              need_dk=True, allow_tf32=False):
    """Launch the dq and dk kernels; returns ``dq [N,D], dk [M,D] (or [0]), dtau []``.

    ``grad``, ``lse`` and ``npos`` are laid out as :func:`_forward` returns them, ``codes`` is the
    forward's ``cat(qc, kc, bc)``; when ``symmetric`` both kernels add the column losses' terms to
    the same recomputed tiles.
    """
    n, d = q.shape
    m = k.shape[0]
    qc, kc, bc = codes[:n], codes[n:n + m], codes[n + m:] if codes.numel() > n + m else None
    scale, unscale = _ds_scale(grad)
    rows = _weights(grad[:n], lse[:n], npos[:n], scale)
    cols = _weights(grad[n:], lse[n:], npos[n:], scale) if symmetric else rows  # unused unless symmetric
    tau_t, tau_v, tau_ptr = _tau_args(temperature)
    tau_arg = tau_t if tau_ptr else unscale
    consts = dict(EXCLUDE_SELF=exclude_self, SYMMETRIC=symmetric, PRECISION=_precision(q.dtype, allow_tf32),
                  UPCAST_DOT=_upcast(q.dtype), BLOCK_D=_block_d(d), EVEN_D=d == _block_d(d), TAU_PTR=tau_ptr)
    b = 0 if bank is None else bank.shape[0]
    split = _split(n, m + b, d, q.device)
    bank_t, bids, b, bstride, flags = _bank_args(q, bank, bc, mask_bank_same_id)
    if split == 1:
        dq_out = _new((n, d), q.dtype, q.device, float("nan"))
    else:
        dq_out = _new((split, n, d), torch.float32, q.device, float("nan"))
    dts = _new((split, n), torch.float32, q.device, float("nan"))
    _launch("dq", _info_nce_bwd_dq, n, split,
            (q, k, bank_t, qc, kc, bids, tau_arg, tau_v, *rows, *cols, unscale, dq_out, dts,
             n, m, b, d, *q.stride(), *k.stride(), *bstride),
            q.dtype, _block_d(d), dict(IDX64=_idx64(q, k, bank, extra=split * n * d), **consts, **flags))
    dq = dq_out if split == 1 else dq_out.sum(0).to(q.dtype)
    if need_dk:
        split_k = _split(m, n, d, k.device)
        dk_out = _new((m, d), k.dtype, k.device, float("nan")) if split_k == 1 else \
            _new((split_k, m, d), torch.float32, k.device, float("nan"))
        _launch("dk", _info_nce_bwd_dk, m, split_k,
                (q, k, qc, kc, tau_arg, tau_v, *rows, *cols, unscale, dk_out,
                 n, m, d, *q.stride(), *k.stride()),
                q.dtype, _block_d(d), dict(IDX64=_idx64(q, k, extra=split_k * m * d), **consts))
        dk = dk_out if split_k == 1 else dk_out.sum(0).to(k.dtype)
    else:
        dk = k.new_empty(0)
    dtau = -dts.sum() / (tau_t.float() if tau_ptr else tau_v)
    if tau_ptr:
        dtau = dtau.to(temperature.dtype).reshape(temperature.shape)
    return dq, dk, dtau


# ----------------------------------------------------------------------------- autograd
def _codes_for(q_ids, k_ids, bank, bank_ids):
    """``cat(qc, kc, bc)`` int32 and the key side's order, code starts and code count."""
    has_bank_ids = bank is not None and bank.shape[0] > 0 and bank_ids is not None
    k_side = torch.cat([k_ids, bank_ids]) if has_bank_ids else k_ids
    qc, kc_all, u, order, start = _codes(q_ids, k_side)
    return torch.cat([qc, kc_all]), u, order, start


# the one autograd path: a torch.library custom op (torch >= 2.4), traced by torch.compile without a break
@torch.library.custom_op("tscl::info_nce_rows", mutates_args=())
def _info_nce_rows_op(
    q: Tensor, k: Tensor, q_ids: Tensor, k_ids: Tensor, temperature: Optional[Tensor], tau_value: float,
    exclude_self: bool, bank: Optional[Tensor], bank_ids: Optional[Tensor], mask_bank_same_id: bool,
    symmetric: bool, allow_tf32: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    codes, u, order, start = _codes_for(q_ids, k_ids, bank, bank_ids)
    tau = temperature if temperature is not None else tau_value
    loss, npos, lse = _forward(q, k, codes, u, order, start, tau, exclude_self, bank, mask_bank_same_id, symmetric,
                               allow_tf32)
    return loss, npos, lse, codes


@_info_nce_rows_op.register_fake
def _(q, k, q_ids, k_ids, temperature, tau_value, exclude_self, bank, bank_ids, mask_bank_same_id, symmetric,
      allow_tf32=False):
    total = q.shape[0] + k.shape[0] if symmetric else q.shape[0]
    n_codes = q.shape[0] + k.shape[0] + (bank.shape[0] if bank is not None and bank_ids is not None else 0)
    return (q.new_empty(total, dtype=torch.float32), q.new_empty(total, dtype=torch.int64),
            q.new_empty(total, dtype=torch.float32), q.new_empty(n_codes, dtype=torch.int32))


@torch.library.custom_op("tscl::info_nce_rows_backward", mutates_args=())
def _info_nce_rows_backward_op(
    grad: Tensor, q: Tensor, k: Tensor, codes: Tensor, temperature: Optional[Tensor], tau_value: float,
    lse: Tensor, npos: Tensor, exclude_self: bool, bank: Optional[Tensor], mask_bank_same_id: bool,
    symmetric: bool, need_dk: bool, allow_tf32: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    tau = temperature if temperature is not None else tau_value
    dq, dk, dtau = _backward(grad, q, k, codes, tau, lse, npos, exclude_self, bank, mask_bank_same_id, symmetric,
                             need_dk, allow_tf32)
    if temperature is None:
        dtau = q.new_zeros((), dtype=torch.float32)
    return dq, dk, dtau


@_info_nce_rows_backward_op.register_fake
def _(grad, q, k, codes, temperature, tau_value, lse, npos, exclude_self, bank, mask_bank_same_id,
      symmetric, need_dk, allow_tf32=False):
    dk = torch.empty_like(k) if need_dk else k.new_empty(0)
    dtau = torch.empty_like(temperature) if temperature is not None else q.new_empty((), dtype=torch.float32)
    return torch.empty_like(q), dk, dtau


def _setup_context(ctx, inputs, output):
    q, k, q_ids, k_ids, temperature, tau_value, exclude_self, bank, bank_ids, mask_bank, symmetric, *rest = inputs
    _, npos, lse, codes = output
    ctx.save_for_backward(q, k, codes, temperature, lse, npos, bank)
    ctx.flags = (tau_value, exclude_self, mask_bank, symmetric, bool(rest[0]) if rest else False)
    ctx.mark_non_differentiable(npos, lse, codes)


def _op_backward(ctx, grad_loss, grad_npos, grad_lse, grad_codes):
    q, k, codes, temperature, lse, npos, bank = ctx.saved_tensors
    tau_value, exclude_self, mask_bank, symmetric, allow_tf32 = ctx.flags
    dq, dk, dtau = _info_nce_rows_backward_op(
        grad_loss, q, k, codes, temperature, tau_value, lse, npos, exclude_self, bank, mask_bank, symmetric,
        ctx.needs_input_grad[1], allow_tf32)
    return (dq, dk if ctx.needs_input_grad[1] else None, None, None,
            dtau if temperature is not None else None, None, None, None, None, None, None, None)


_info_nce_rows_op.register_autograd(_op_backward, setup_context=_setup_context)


def info_nce_rows_triton(
    q: Tensor,
    k: Tensor,
    q_ids: Tensor,
    k_ids: Tensor,
    temperature,
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
    fp64 runs in fp32), any strides. ``temperature``: a 0-dim tensor on q's device (read there,
    learnable) or a Python float (a kernel argument, no host-to-device copy). ``allow_tf32``:
    TF32 products for fp32 inputs. ``symmetric=True`` also computes the column losses (anchors k,
    keys q, no bank) and returns ``[N+M]`` rows-then-columns, sharing the backward's recomputed
    tiles between both directions.
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
    bank_ids = bank_ids.to(torch.int64).contiguous() if bank_ids is not None and bank is not None else None
    if isinstance(temperature, Tensor):
        tau_t, tau_v = temperature.reshape(()), 0.0
    else:
        tau_t, tau_v = None, float(temperature)
    loss, npos, _, _ = _info_nce_rows_op(q, k, q_ids, k_ids, tau_t, tau_v, bool(exclude_self), bank, bank_ids,
                                         bool(mask_bank_same_id), bool(symmetric), bool(allow_tf32))
    return loss, npos
