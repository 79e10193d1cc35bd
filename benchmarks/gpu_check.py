"""The phases behind ``benchmarks/gpu_check.sh``: the fused InfoNCE kernel and GPU pretraining,
checked and timed in one device loan.

    python benchmarks/gpu_check.py PHASE --out DIR [--dry-run] [--deadline EPOCH_SECONDS]

PHASE is one of

``correctness``  the fused kernel against a float64 reference computed on the same device
                 (chunked over anchors, so it fits at real sizes), on inputs rounded once to
                 the tested dtype so that only accumulation differs: CLIP, NT-Xent,
                 multi-positive, MoCo (bank 65,536), PMQ (bank ids, positive and masked),
                 bf16 and fp32, both positive paths (``triton_info_nce.POSITIVES``), random
                 and confident distributions (positive probability >= 0.99).
``sync``         fused loss forward + backward under ``torch.cuda.set_sync_debug_mode("error")``
                 after a warm-up: any host synchronisation inside the call fails.
``bench``        fused vs eager reference vs ``torch.compile(reference)`` (bf16, fwd + bwd):
                 median time (CUDA events), peak memory, TFLOP/s against a bf16 matmul ceiling
                 measured on the same device.
``train``        SimCLR and PCLR on resnet1d, 12 x 1000, batch 1024, bf16 autocast, fused vs
                 eager loss in lockstep from the same initial weights and batches: steps/s,
                 GPU-busy fraction, the first 200 losses of both; and an fp32 eager loop.
``summary``      reads ``results.jsonl`` and writes ``summary.json``, ``summary.md`` (its first
                 line: device, driver, torch, Triton, CUDA) and PNGs (with matplotlib); prints
                 "compiles per kernel" and fails if a kernel launched more than one config
                 for one (dtype, D).

Every phase appends each result to ``DIR/results.jsonl`` the moment it is measured (one JSON
object per line, flushed), so a phase stopped by its deadline keeps what it did. ``--deadline``
is the phase's soft deadline: a measurement that would not finish before it is recorded as
skipped, with the reason. Run it through ``gpu_check.sh``, which builds the import root (the
checkout need not be installed), sets the deadlines and the hard time limit, and gives the exit
status. ``--dry-run``: CPU, tiny sizes, the kernels in the Triton interpreter.
``GPU_CHECK_INJECT=PHASE:fail`` or ``PHASE:hang`` makes a phase fail or hang after its first
record (the tests use it to check that failures and cuts are reported).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = "results.jsonl"
PHASES = ("correctness", "sync", "bench", "train")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
UNIT_ROUNDOFF = {"float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}
CONFIDENT = 0.99  # a "confident" case: every anchor puts at least this much probability on its positives


# ----------------------------------------------------------------------------- records and time
class Log:
    """Appends records to ``OUT/results.jsonl`` (one JSON line each, flushed before returning)."""

    def __init__(self, out: Path, phase: str):
        self.path, self.phase, self.count = out / RESULTS, phase, 0

    def __call__(self, record: dict, echo: bool = True) -> dict:
        record = {"phase": self.phase, **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if echo:
            shown = {k: (float(f"{v:.4g}") if isinstance(v, float) and math.isfinite(v) else v)
                     for k, v in record.items() if not isinstance(v, (list, dict))}
            print(json.dumps(shown), flush=True)
        self.count += 1
        if self.count == 1:
            _inject(self.phase)
        return record


def _inject(phase: str) -> None:
    """``GPU_CHECK_INJECT=phase:fail|hang``: fail or hang on purpose after the phase's first record."""
    for item in filter(None, os.environ.get("GPU_CHECK_INJECT", "").split(",")):
        name, _, what = item.partition(":")
        if name != phase:
            continue
        if what == "fail":
            raise RuntimeError(f"GPU_CHECK_INJECT={item}: the {phase} phase fails on purpose")
        if what == "hang":
            print(f"GPU_CHECK_INJECT={item}: the {phase} phase hangs on purpose", flush=True)
            time.sleep(3600)


class Budget:
    """A phase's soft deadline (absolute ``time.time()`` seconds; None: no limit)."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline if deadline is not None else math.inf

    def left(self) -> float:
        return self.deadline - time.time()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds

    def skip(self, seconds: float) -> str:
        return f"skipped (time budget: needs ~{seconds:.0f} s, {max(self.left(), 0):.0f} s left)"


def _device(args) -> torch.device:
    return torch.device("cpu" if args.dry_run else "cuda")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free_cuda(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    """What the summary's first line states: device, driver, torch, Triton and CUDA versions."""
    import numpy

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = dict(record="env", torch=torch.__version__, triton=triton_version, cuda=torch.version.cuda,
               numpy=numpy.__version__, python=platform.python_version(), date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               interpreter=os.environ.get("TRITON_INTERPRET") == "1",
               allow_tf32_matmul=torch.backends.cuda.matmul.allow_tf32, allow_tf32_cudnn=torch.backends.cudnn.allow_tf32)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=torch.cuda.get_device_name(device), driver=_driver_version(), sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}")
    else:
        env.update(device=f"cpu ({platform.machine()}, Triton interpreter)", driver="n/a")
    return env


def launch_log_record() -> dict:
    """The kernels' launch log (``triton_info_nce.launch_log()``): configs launched per (kind, dtype, BLOCK_D)."""
    try:
        from tscl.kernels import triton_info_nce as tn
    except Exception as err:  # noqa: BLE001 - reported, never raised: the phase's own result stands
        return dict(record="launch_log", unavailable=f"tscl.kernels.triton_info_nce does not import: {err}")
    if not hasattr(tn, "launch_log"):
        return dict(record="launch_log", unavailable="tscl.kernels.triton_info_nce has no launch_log()")
    entries = [dict(kind=kind, dtype=dtype, block_d=int(block_d), configs=sorted(map(str, configs)))
               for (kind, dtype, block_d), configs in sorted(tn.launch_log().items())]
    return dict(record="launch_log", entries=entries)


# ----------------------------------------------------------------------------- correctness
@dataclass(frozen=True)
class Case:
    """One call shape. ``variant``: clip (symmetric, diagonal), ntxent (q = k, pairs, exclude_self),
    multipos (random patient ids, two recordings each on average), moco (diagonal, keys without grad, bank of
    negatives), pmq / pmq-mask (patient ids in the bank: same-id entries positive / masked)."""

    name: str
    variant: str
    n: int
    d: int
    bank: int = 0
    dtype: str = "bfloat16"
    confident: bool = False
    split: int | None = None
    tau: float | None = None  # None: confident_tau() for confident cases, 0.07 for the others


def correctness_cases(dry: bool) -> list[Case]:
    """Confident bf16 first (where a 16-bit backward goes wrong), then the rest. The dry run takes
    the same cases at tiny sizes (odd ones too, so that partial tiles are crossed)."""
    cases = [Case("clip-confident", "clip", 8192, 128, confident=True),
             Case("ntxent-confident", "ntxent", 16384, 128, confident=True),
             Case("multipos-confident", "multipos", 8192, 128, confident=True),
             Case("moco-confident", "moco", 1024, 128, bank=65536, confident=True),
             Case("pmq-confident", "pmq", 1024, 128, bank=16384, confident=True),
             Case("pmq-mask", "pmq-mask", 1024, 128, bank=16384),
             Case("ntxent-d256", "ntxent", 8192, 256),
             Case("clip-fp32-confident", "clip", 4096, 128, dtype="float32", confident=True),
             Case("multipos-fp32", "multipos", 4096, 128, dtype="float32"),
             Case("moco-split8-confident", "moco", 1024, 128, bank=65536, confident=True, split=8)]
    return [_tiny(c) for c in cases] if dry else cases


def _tiny(case: Case) -> Case:
    n = case.n // 256 + 7
    # in 16 dimensions the Gaussian estimate of confident_tau() does not hold, and a random bank
    # entry lands at cosine ~0.8 by chance: a lower temperature keeps p(positive) >= 0.99 for MoCo
    tau = (0.04 if case.variant == "moco" else 0.05) if case.confident else case.tau
    return replace(case, n=n + (n % 2 if case.variant == "ntxent" else 0), d=16 if case.d <= 128 else 32, tau=tau,
                   bank=case.bank // 2048 + 8 if case.bank else 0, split=min(case.split, 3) if case.split else None)


@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    q_ids: torch.Tensor | None
    k_ids: torch.Tensor | None
    bank: torch.Tensor | None
    bank_ids: torch.Tensor | None
    tau: float
    symmetric: bool
    exclude_self: bool
    mask_bank: bool
    k_grad: bool


POSITIVE_NOISE = 0.05  # a confident case's embeddings: unit centre + noise of this norm: same-id cosine ~0.9975


def confident_tau(d: int, cols: int, miss: float = 1e-3) -> float:
    """The temperature at which an anchor puts ``1 - miss`` of its probability on a positive at cosine
    ``c = 1 - POSITIVE_NOISE**2`` among ``cols`` random unit keys in ``d`` dimensions: their scores
    are ~N(0, 1 / (d tau^2)), so ``sum_j exp(s_j) ~ cols exp(1 / (2 d tau^2))`` and ``miss`` =
    that over ``exp(c / tau)``; the smaller root of the quadratic in 1/tau (0.05 where there is none)."""
    c = 1 - POSITIVE_NOISE**2
    disc = c * c - 2 * (math.log(cols) - math.log(miss)) / d
    return 1 / (d * (c - math.sqrt(disc))) if disc > 0 else 0.05


def case_inputs(case: Case, device: torch.device, seed: int = 0) -> Inputs:
    """Unit embeddings rounded once to the case's dtype. Confident cases put each anchor's
    positives at cosine ~0.9975 from it (one unit centre per id, noise of norm POSITIVE_NOISE) and
    take the temperature of :func:`confident_tau`, so the softmax puts ~99.9 % on the positives;
    the others draw independent random directions (tau 0.07)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype, n, d = DTYPES[case.dtype], case.n, case.d

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    def members(centres, ids):  # embeddings of the given ids: near their centre (confident) or anywhere
        x = centres[ids] + POSITIVE_NOISE * randn(len(ids), d) / math.sqrt(d) if case.confident else randn(len(ids), d)
        return F.normalize(x, dim=-1).to(dtype)

    v = case.variant
    groups = {"clip": n, "moco": n, "ntxent": n // 2}.get(v, max(2, n // 2))
    centres = F.normalize(randn(2 * groups + case.bank, d), dim=-1)
    if v in ("clip", "moco"):
        q_ids = k_ids = None
        idx = torch.arange(n, device=device)
        q, k = members(centres, idx), members(centres, idx)
    elif v == "ntxent":
        q_ids = k_ids = torch.arange(n, device=device) // 2
        q = k = members(centres, q_ids)
    else:  # multipos, pmq, pmq-mask: random patient ids, two recordings each on average
        q_ids = torch.randint(0, max(2, n // 2), (n,), generator=gen, device=device)
        k_ids = q_ids
        q, k = members(centres, q_ids), members(centres, k_ids)
    bank = bank_ids = None
    if case.bank:
        if v.startswith("pmq"):  # half the bank from the batch's patients, half from others
            bank_ids = torch.randint(0, 2 * groups, (case.bank,), generator=gen, device=device)
            bank = members(centres, bank_ids)
        else:
            bank = F.normalize(randn(case.bank, d), dim=-1).to(dtype)
    tau = case.tau or (confident_tau(d, n + case.bank) if case.confident else 0.07)
    return Inputs(q, k, q_ids, k_ids, bank, bank_ids, tau=tau,
                  symmetric=v == "clip", exclude_self=v == "ntxent", mask_bank=v == "pmq-mask", k_grad=v != "moco")


def in_float64(inp: Inputs) -> Inputs:
    """The same case in float64 (``info_nce`` then runs the reference in float64, with autograd)."""
    q = inp.q.double()
    return replace(inp, q=q, k=q if inp.exclude_self else inp.k.double(),
                   bank=inp.bank.double() if inp.bank is not None else None)


def fused_rows(inp: Inputs, weight: torch.Tensor, backend: str = "triton"):
    """Per-row losses and the gradients of ``sum(weight * rows)`` through ``tscl.kernels.info_nce``."""
    from tscl.kernels import info_nce

    q = inp.q.detach().clone().requires_grad_()
    k = q if inp.exclude_self else inp.k.detach().clone().requires_grad_(inp.k_grad)
    tau = torch.tensor(inp.tau, device=q.device, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
                       requires_grad=True)
    rows = info_nce(q, k, inp.q_ids, inp.k_ids, temperature=tau, symmetric=inp.symmetric,
                    exclude_self=inp.exclude_self, bank=inp.bank, bank_ids=inp.bank_ids,
                    bank_same_id="mask" if inp.mask_bank else "positive", normalize=False, reduction="none",
                    backend=backend)
    (rows * weight.to(rows.dtype)).sum().backward()
    dk = k.grad if inp.k_grad and not inp.exclude_self else None
    return rows.detach(), q.grad, dk, tau.grad


def _block(inp: Inputs, q, k, b, rows: slice, tau: float):
    """Scores, positives and valid columns of the anchors ``rows`` over keys then bank (float64)."""
    n0 = rows.start
    s = q[rows] @ k.T / tau
    ids_q = inp.q_ids[rows] if inp.q_ids is not None else torch.arange(n0, n0 + s.shape[0], device=q.device)
    ids_k = inp.k_ids if inp.k_ids is not None else torch.arange(k.shape[0], device=q.device)
    pos = ids_q[:, None] == ids_k[None, :]
    valid = torch.ones_like(pos)
    if inp.exclude_self:
        r = torch.arange(s.shape[0], device=q.device)
        valid[r, n0 + r] = False
        pos &= valid
    if b is None:
        return s, pos, valid
    sb = q[rows] @ b.T / tau
    bpos = (ids_q[:, None] == inp.bank_ids[None, :]) if inp.bank_ids is not None else torch.zeros_like(sb, dtype=torch.bool)
    bvalid = torch.ones_like(bpos)
    if inp.mask_bank:  # same-id bank entries leave the denominator and are no positives
        bvalid, bpos = ~bpos, torch.zeros_like(bpos)
    return torch.cat([s, sb], 1), torch.cat([pos, bpos], 1), torch.cat([valid, bvalid], 1)


def _softmax_terms(s, pos, valid, lse, g, npos=None):
    """``p``, ``dS = g (p - pos / npos)`` on valid columns (rows without a positive: g = 0), and ``|g| p``."""
    if npos is None:
        npos = pos.sum(1, keepdim=True).clamp_min(1).to(s.dtype)  # an int / int division would be float32
    p = torch.exp(s - lse).masked_fill(~valid, 0.0)
    return p, g * (p - pos / npos), g.abs() * p


def reference64(inp: Inputs, weight: torch.Tensor, chunk: int | None = None) -> dict:
    """The loss rows and the gradients of ``sum(weight * rows)`` in float64, computed by blocks of
    anchors (never the whole N x (M + B) matrix at once), with what the tolerances need: the sums
    of ``|dS|`` and of ``|g| p`` behind each gradient, the largest |score| and the positives' mass.

    Rows: ``l_i = lse_i - sum_P s_ip / npos_i``; ``dS_ij = g_i (p_ij - [j in P(i)] / npos_i)``;
    ``dq_i = sum_j dS_ij k_j / tau``, ``dk_j = sum_i dS_ij q_i / tau``, ``dtau = -sum dS_ij s_ij / tau``.
    Symmetric: column losses over the same scores (anchors k, keys q, no bank) in a second pass."""
    q, k = inp.q.double(), inp.k.double()
    b = inp.bank.double() if inp.bank is not None else None
    n, m, tau = q.shape[0], k.shape[0], inp.tau
    cols = m + (b.shape[0] if b is not None else 0)
    chunk = chunk or max(1, (1 << 26) // cols)
    w = weight.double()

    def zeros(*shape):
        return torch.zeros(*shape, dtype=torch.float64, device=q.device)

    out = dict(loss=zeros(n + (m if inp.symmetric else 0)), dq=zeros(n, q.shape[1]), dk=zeros(m, q.shape[1]),
               dtau=zeros(()), ppos=zeros(n), smax=0.0, cols=cols,
               **{f"{a}_{g}": zeros(size) for a in ("ds", "gp") for g, size in (("q", n), ("k", m), ("tau", ()))})
    col_lse, col_possum, col_npos = torch.full((m,), -math.inf, dtype=torch.float64, device=q.device), zeros(m), zeros(m)
    for r0 in range(0, n, chunk):
        rows = slice(r0, min(n, r0 + chunk))
        s, pos, valid = _block(inp, q, k, b, rows, tau)
        lse = torch.logsumexp(s.masked_fill(~valid, -math.inf), 1, keepdim=True)
        npos = pos.sum(1)
        has = npos > 0
        out["loss"][rows] = torch.where(has, lse[:, 0] - (s * pos).sum(1) / npos.clamp_min(1), 0.0)
        p, ds, gp = _softmax_terms(s, pos, valid, lse, torch.where(has, w[rows], 0.0)[:, None])
        out["ppos"][rows] = torch.where(has, (p * pos).sum(1), 1.0)
        _accumulate(out, q, k, b, rows, s, ds, gp, m, tau)
        out["smax"] = max(out["smax"], float(s.masked_fill(~valid, 0).abs().max()))
        if inp.symmetric:
            sk, posk, validk = s[:, :m], pos[:, :m], valid[:, :m]
            col_lse = torch.logaddexp(col_lse, torch.logsumexp(sk.masked_fill(~validk, -math.inf), 0))
            col_possum += (sk * posk).sum(0)
            col_npos += posk.sum(0)
    if inp.symmetric:
        has = col_npos > 0
        out["loss"][n:] = torch.where(has, col_lse - col_possum / col_npos.clamp_min(1), 0.0)
        g = torch.where(has, w[n:], 0.0)
        for r0 in range(0, n, chunk):  # the same scores again, now as columns: dS'_ji stored at [i, j]
            rows = slice(r0, min(n, r0 + chunk))
            s, pos, valid = _block(inp, q, k, None, rows, tau)
            p, ds, gp = _softmax_terms(s.T, pos.T, valid.T, col_lse[:, None], g[:, None],
                                        col_npos.clamp_min(1)[:, None])
            _accumulate(out, q, k, None, rows, s, ds.T, gp.T, m, tau)
    if inp.exclude_self:  # q and k are one tensor: its gradient is the sum
        for key in ("dq", "ds_q", "gp_q"):
            out[key] = out[key] + out[key.replace("q", "k")]
        out.update(dk=None, ds_k=None, gp_k=None)
    return out


def _accumulate(out, q, k, b, rows, s, ds, gp, m, tau):
    """Add one block's dS to dq (rows), dk and dtau, and |dS|, |g| p to the sums behind each."""
    out["dq"][rows] += ds[:, :m] @ k / tau
    if b is not None:
        out["dq"][rows] += ds[:, m:] @ b / tau
    out["dk"] += ds[:, :m].T @ q[rows] / tau
    out["dtau"] -= (ds * s).sum() / tau
    for name, a in (("ds", ds.abs()), ("gp", gp)):
        out[f"{name}_q"][rows] += a.sum(1) / tau
        out[f"{name}_k"] += a[:, :m].sum(0) / tau
        out[f"{name}_tau"] += (a * s.abs()).sum() / tau


def tolerances(case: Case, ref: dict) -> dict:
    """Error bounds from the dtype and the reference's own conditioning (docs/kernels.md, "GPU check").

    Scores and log-sum-exp in fp32 leave ``s - lse`` an absolute error of about
    ``e = 2 u32 (smax + ln cols + 1 + sqrt(cols / 32))`` (rounding of the scores and of the log-sum-exp,
    and the online sum's partials, one per tile of at least 32 columns, adding up like a random walk),
    i.e. each ``p`` a relative error ``e``, so ``dS = g (p - y)``
    errs by ``e |g| p``; a 16-bit ``dS`` is rounded once more (relative ``u`` of the dtype) and so is
    the stored gradient. A gradient may then be off by
    ``2 (e ||sum |g| p|| + u ||sum |dS| ||) / ||grad|| + 2u`` relative to its norm (both sums taken
    over the same terms as the gradient, e.g. ``sum_j |dS_ij| / tau`` for dq_i). Confident rows
    (``p`` near 1 on the positives) make ``||grad||`` small next to ``sum |g| p``: the bound grows
    exactly where fp32 itself loses digits, and no further. Loss rows: ``16 e`` absolute (the inputs
    are the same rounded values on both sides; a wrong mask or a lost tile moves a row by far more)."""
    u = UNIT_ROUNDOFF[case.dtype] if case.dtype != "float32" else 0.0
    cols = max(ref["cols"], 2)
    e = 2 * UNIT_ROUNDOFF["float32"] * (ref["smax"] + math.log(cols) + 1 + math.sqrt(cols / 32))

    def bound(grad, ds_sum, gp_sum):
        if grad is None:
            return None
        norm = float(grad.norm().clamp_min(1e-300))
        return 2 * (e * float(gp_sum.norm()) + u * float(ds_sum.norm())) / norm + 2 * u

    return dict(loss=16 * e, **{g: bound(ref["dtau"].reshape(1) if g == "dtau" else ref[g], ref[f"ds_{g[1:]}"],
                                        ref[f"gp_{g[1:]}"]) for g in ("dq", "dk", "dtau")})


def _rel(got, want) -> float | None:
    if got is None or want is None:
        return None
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm().clamp_min(1e-300))


@contextlib.contextmanager
def kernel_path(positives: str, split: int | None):
    """Force the kernel's positive path and column split (``triton_info_nce.POSITIVES``/``FORCE_SPLIT``)."""
    from tscl.kernels import triton_info_nce as tn

    saved = (tn.POSITIVES, getattr(tn, "FORCE_SPLIT", None))
    tn.POSITIVES = positives
    if hasattr(tn, "FORCE_SPLIT"):
        tn.FORCE_SPLIT = split
    try:
        yield
    finally:
        tn.POSITIVES = saved[0]
        if hasattr(tn, "FORCE_SPLIT"):
            tn.FORCE_SPLIT = saved[1]


def check_case(case: Case, positives: str, device: torch.device) -> dict:
    inp = case_inputs(case, device)
    total = case.n + (case.n if inp.symmetric else 0)
    weight = torch.randn(total, generator=torch.Generator(device=device).manual_seed(1), device=device)
    with kernel_path(positives, case.split):
        got, dq, dk, dtau = fused_rows(inp, weight)
    _sync(device)
    ref = reference64(inp, weight)
    tol = tolerances(case, ref)
    err = dict(loss=float((got.double() - ref["loss"]).abs().max()), dq=_rel(dq, ref["dq"]),
               dk=_rel(dk, ref["dk"]), dtau=_rel(dtau.reshape(1), ref["dtau"].reshape(1)))
    finite = all(bool(torch.isfinite(t).all()) for t in (got, dq, dtau) if t is not None)
    ppos_min = float(ref["ppos"].min())
    within = {g: err[g] <= tol[g] for g in err if err[g] is not None}
    ok = finite and all(within.values()) and (ppos_min >= CONFIDENT or not case.confident)
    row = dict(record="case", **{**asdict(case), "tau": inp.tau}, positives=positives, ok=ok, finite=finite,
               ppos_min=ppos_min, ppos_median=float(ref["ppos"].median()), smax=ref["smax"])
    row.update({f"{g}_err": e for g, e in err.items()}, **{f"{g}_tol": t for g, t in tol.items()},
               loss_rel_err=_rel(got, ref["loss"]))
    if case.confident and ppos_min < CONFIDENT:
        row["why"] = f"not a confident case: min positive probability {ppos_min:.4f} < {CONFIDENT}"
    elif not ok:
        row["why"] = "; ".join([f"{g} error {err[g]:.3g} > {tol[g]:.3g}" for g, w in within.items() if not w]
                               + ([] if finite else ["non-finite output"]))
    return row


def reference_selfcheck(device: torch.device) -> dict:
    """The chunked float64 reference against autograd through ``info_nce_rows_reference`` (float64),
    every variant, with blocks of 5 anchors so that the chunk seams are crossed."""
    worst = 0.0
    for variant, bank in (("clip", 0), ("ntxent", 0), ("multipos", 0), ("moco", 24), ("pmq", 20), ("pmq-mask", 20)):
        for confident in (False, True):
            case = Case("selfcheck", variant, 18, 8, bank=bank, dtype="float32", confident=confident)
            inp = in_float64(case_inputs(case, device, seed=3))
            gen = torch.Generator(device=device).manual_seed(4)
            weight = torch.randn(case.n * (2 if inp.symmetric else 1), dtype=torch.float64, device=device, generator=gen)
            want, dq, dk, dtau = fused_rows(inp, weight, backend="reference")
            got = reference64(inp, weight, chunk=5)
            errs = [float((got["loss"] - want).abs().max()), _rel(got["dq"], dq), _rel(got["dk"], dk),
                    _rel(got["dtau"].reshape(1), dtau.reshape(1))]
            worst = max([worst] + [e for e in errs if e is not None])
    return dict(record="reference_selfcheck", max_err=worst, ok=worst < 1e-9)


def nan_in_bank(device: torch.device) -> dict:
    """A NaN only in the bank (MoCo's queue) must give a NaN loss, not a finite wrong number."""
    from tscl.kernels import info_nce, nonfinite_inputs

    inp = case_inputs(Case("nan", "moco", 24 if device.type == "cpu" else 512, 16 if device.type == "cpu" else 128,
                           bank=72 if device.type == "cpu" else 8192), device)
    inp.bank[inp.bank.shape[0] // 3, 0] = float("nan")
    loss = info_nce(inp.q, inp.k, temperature=0.07, bank=inp.bank, backend="triton")
    ok = bool(torch.isnan(loss)) and nonfinite_inputs(q=inp.q, k=inp.k, bank=inp.bank) == ["bank"]
    return dict(record="nan_in_bank", ok=ok)


def phase_correctness(args, log: Log, budget: Budget) -> int:
    device = _device(args)
    log(environment(device))
    failed = 0
    check = log(reference_selfcheck(device))
    failed += not check["ok"]
    for case in correctness_cases(args.dry_run):
        for positives in ("separable", "loop"):
            if not budget.allows(2):
                log(dict(record="case", name=case.name, positives=positives, status=budget.skip(2)))
                continue
            t0 = time.perf_counter()
            row = check_case(case, positives, device)
            row["seconds"] = time.perf_counter() - t0
            failed += not row["ok"]
            log(row)
            _free_cuda(device)
    row = log(nan_in_bank(device))
    failed += not row["ok"]
    return 1 if failed else 0


# ----------------------------------------------------------------------------- host syncs
@contextlib.contextmanager
def sync_debug(device: torch.device):
    """``torch.cuda.set_sync_debug_mode("error")`` around the block (CUDA only)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def sync_cases(dry: bool) -> list[tuple[Case, str]]:
    """(case, temperature): a float (what the methods pass) or a learnable CUDA tensor (CLIP)."""
    if dry:  # the code path only: on a CPU there is no CUDA synchronisation to catch
        return [(Case("clip", "clip", 16, 16), "tensor"), (Case("pmq-mask", "pmq-mask", 16, 16, bank=32), "float")]
    return [(Case("clip", "clip", 8192, 128), "tensor"), (Case("ntxent", "ntxent", 8192, 128), "float"),
            (Case("multipos", "multipos", 8192, 128), "float"), (Case("moco", "moco", 1024, 128, bank=65536), "float"),
            (Case("pmq", "pmq", 1024, 128, bank=16384), "float"),
            (Case("pmq-mask", "pmq-mask", 1024, 128, bank=16384), "float")]


def _loss_call(inp: Inputs, temperature):
    """One training call of the fused loss (mean reduction), forward and backward; returns the leaves."""
    from tscl.kernels import info_nce

    q = inp.q.detach().clone().requires_grad_()
    k = q if inp.exclude_self else inp.k.detach().clone().requires_grad_(inp.k_grad)
    loss = info_nce(q, k, inp.q_ids, inp.k_ids, temperature=temperature, symmetric=inp.symmetric,
                    exclude_self=inp.exclude_self, bank=inp.bank, bank_ids=inp.bank_ids,
                    bank_same_id="mask" if inp.mask_bank else "positive", backend="triton")
    loss.backward()
    return loss, q


def sync_check(case: Case, temp: str, positives: str, device: torch.device, warmup: int) -> dict:
    """One call shape: ``warmup`` calls, then one fwd+bwd with every host synchronisation an error."""
    inp = case_inputs(case, device)
    tau = torch.tensor(0.1, device=device, requires_grad=True) if temp == "tensor" else 0.1
    row = dict(record="sync", name=case.name, positives=positives, temperature=temp, n=case.n, bank=case.bank)
    with kernel_path(positives, None):
        for _ in range(warmup):  # compiles and first allocations may synchronise
            _loss_call(inp, tau)
        _sync(device)
        try:
            with sync_debug(device):
                loss, q = _loss_call(inp, tau)
        except RuntimeError as err:
            return dict(row, ok=False, status="host sync", error=str(err).splitlines()[0][:300])
    _sync(device)
    ok = bool(torch.isfinite(loss)) and bool(torch.isfinite(q.grad).all())
    status = ("no host sync" if device.type == "cuda" else
              "ran (not checked: set_sync_debug_mode sees CUDA synchronisations only)")
    return dict(row, ok=ok, status=status)


def phase_sync(args, log: Log, budget: Budget) -> int:
    device = _device(args)
    failed = 0
    for case, temp in sync_cases(args.dry_run):
        for positives in ("separable", "loop"):
            if not budget.allows(2):
                log(dict(record="sync", name=case.name, positives=positives, status=budget.skip(2)))
                continue
            row = log(sync_check(case, temp, positives, device, warmup=1 if args.dry_run else 2))
            failed += not row["ok"]
    return 1 if failed else 0


# ----------------------------------------------------------------------------- loss benchmark
EAGER_BYTES_PER_SCORE = 40  # the reference's live fp32/bool N x (M+B) tensors per direction, forward + backward
COMPILE_GUESS_S = 40.0      # the first torch.compile of a shape, before one has been measured


def _bench_module():
    from tscl.benchmarks import bench_info_nce

    return bench_info_nce


def bench_inputs(variant: str, n: int, d: int, bank: int, device: str):
    """``bench_info_nce.make_inputs`` plus two single-positive baselines of the same work:
    ``plain`` (q [N], k [N], diagonal, one direction; compare multipos) and ``plain-wide``
    (keys without grad [N + bank], no bank; compare moco)."""
    b = _bench_module()
    if variant not in ("plain", "plain-wide"):
        return b.make_inputs(variant, n, d, bank, torch.bfloat16, device)
    gen = torch.Generator(device=device).manual_seed(0)
    tau = torch.tensor(0.07, device=device, requires_grad=True)
    q = torch.randn(n, d, generator=gen, device=device, dtype=torch.bfloat16).requires_grad_()
    if variant == "plain":
        k = torch.randn(n, d, generator=gen, device=device, dtype=torch.bfloat16).requires_grad_()
        return (q, k, None, None), {}, [q, k, tau], tau
    k = torch.randn(n + bank, d, generator=gen, device=device, dtype=torch.bfloat16)
    ids = torch.arange(n + bank, device=device)
    return (q, k, ids[:n], ids), {}, [q, tau], tau


def bench_flops(variant: str, n: int, d: int, bank: int) -> float:
    if variant == "plain":
        return _bench_module().nominal_flops("multipos", n, d, 0)
    if variant == "plain-wide":
        return _bench_module().nominal_flops("moco", n, d, bank)
    return _bench_module().nominal_flops(variant, n, d, bank if variant == "moco" else 0)


def eager_bytes(variant: str, n: int, bank: int) -> float:
    cols = n + (bank if variant in ("moco", "plain-wide") else 0)
    return EAGER_BYTES_PER_SCORE * n * cols * (2 if variant == "clip" else 1)


def time_step(impl: str, variant: str, n: int, d: int, bank: int, args) -> dict:
    """Median fwd+bwd ms of one configuration, peak memory above its inputs, and (compiled) the
    seconds of the first call, which compiles."""
    b = _bench_module()
    cuda = args.device.startswith("cuda")
    row = dict(record="bench", impl=impl, variant=variant, N=n, D=d, bank=bank if variant in ("moco", "plain-wide") else 0)
    call_args = kw = leaves = tau = fn = run = None
    try:
        call_args, kw, leaves, tau = bench_inputs(variant, n, d, bank, args.device)
        fn = b.step_fn(impl, args.compile_backend)

        def run():
            for t in leaves:
                t.grad = None
            fn(call_args, kw, tau).backward()

        t0 = time.perf_counter()
        run()
        _sync(torch.device(args.device))
        row["first_call_s"] = time.perf_counter() - t0
        for _ in range(max(0, args.warmup - 1)):
            run()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        timer = b.Timer(args.device)
        times = [timer(run) for _ in range(args.reps)]
        ms = statistics.median(times)
        row.update(status="ok", ms=ms, ms_min=min(times), ms_max=max(times),
                   tflops=bench_flops(variant, n, d, bank) / (ms * 1e-3) / 1e12)
        row["frac_of_ceiling"] = row["tflops"] / args.ceiling
        if cuda:
            row["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    except torch.OutOfMemoryError:
        row.update(status="oom")
    except Exception as err:  # noqa: BLE001 - one failed configuration must not end the sweep
        row.update(status="error", error=f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}")
    finally:
        call_args = kw = leaves = tau = fn = run = None  # this configuration's tensors go before the next
        _free_cuda(torch.device(args.device))
    return row


def bench_grid(dry: bool) -> dict:
    """The configurations, (impl, variant, N, D), in the order they run, most wanted first (a cut
    keeps the head): every fused one, the compiles issue 27's goals need, the eager ones, the
    other compiles."""
    if dry:
        fused = [("fused", v, 32, 16) for v in ("clip", "ntxent", "multipos", "moco", "plain", "plain-wide")]
        compiled = [("compiled", v, 32, 16) for v in ("clip", "ntxent", "moco")]
        eager = [("eager", v, 32, 16) for v in ("clip", "moco")]
        return dict(bank=64, plan=fused + compiled + eager)
    sizes, main = [4096, 16384, 32768, 65536], ("clip", "ntxent", "multipos", "moco")
    fused = [("fused", v, n, d) for d in (128, 256) for v in main for n in sizes]
    fused += [("fused", "ntxent", 131072, 128)] + [("fused", v, n, 128) for v in ("plain", "plain-wide") for n in sizes]
    eager = [("eager", v, n, d) for d in (128, 256) for v in main for n in sizes]
    compiled = [("compiled", v, n, d) for v, n, d in (
        ("clip", 65536, 128), ("clip", 4096, 128), ("ntxent", 65536, 128), ("ntxent", 4096, 128),
        ("multipos", 16384, 128), ("moco", 16384, 128), ("ntxent", 32768, 128), ("clip", 16384, 128),
        ("multipos", 4096, 128), ("moco", 4096, 128), ("clip", 65536, 256), ("ntxent", 65536, 256))]
    return dict(bank=65536, plan=fused + compiled[:4] + eager + compiled[4:])


def _bench_skip(impl: str, variant: str, n: int, grid: dict, args, budget: Budget, compile_s: float) -> str | None:
    """Why a configuration is not run (None: run it)."""
    first_compile = next(c for c in grid["plan"] if c[0] == "compiled")
    if impl == "compiled" and args.dry_run and (impl, variant, n) != first_compile[:3]:
        return "skipped (CPU dry run: one torch.compile shows the path; each compile takes seconds)"
    if impl == "eager" and args.total_bytes and eager_bytes(variant, n, grid["bank"]) > args.total_bytes:
        need = eager_bytes(variant, n, grid["bank"]) / 2**30
        return (f"skipped (eager needs ~{need:.0f} GiB at {EAGER_BYTES_PER_SCORE} B per score: "
                f"more than the {args.total_bytes / 2**30:.0f} GiB device)")
    seconds = compile_s if impl == "compiled" else 3.0
    return None if budget.allows(seconds) else budget.skip(seconds)


def phase_bench(args, log: Log, budget: Budget) -> int:
    device = _device(args)
    grid = bench_grid(args.dry_run)
    b = _bench_module()
    args.device = str(device)
    args.reps, args.warmup = (1, 1) if args.dry_run else (10, 2)
    args.compile_backend = "aot_eager" if args.dry_run else "inductor"
    args.total_bytes = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
    args.ceiling = b.matmul_ceiling(args.device, 256 if args.dry_run else 8192, 3 if args.dry_run else 20)
    log(dict(record="ceiling", matmul_bf16_tflops=args.ceiling, size=256 if args.dry_run else 8192,
             bank=grid["bank"], reps=args.reps, warmup=args.warmup, compile_backend=args.compile_backend))
    failed, compile_s, seen_compile = 0, COMPILE_GUESS_S if not args.dry_run else 5.0, []
    for impl, variant, n, d in grid["plan"]:
        why = _bench_skip(impl, variant, n, grid, args, budget, compile_s)
        if why:
            log(dict(record="bench", impl=impl, variant=variant, N=n, D=d, status=why))
            continue
        row = log(time_step(impl, variant, n, d, grid["bank"], args))  # step_fn resets dynamo per compile
        failed += row["status"] == "error"
        if impl == "compiled" and "first_call_s" in row:
            seen_compile.append(row["first_call_s"])
            compile_s = max(5.0, 1.2 * max(seen_compile))
    return 1 if failed else 0


# ----------------------------------------------------------------------------- end-to-end
@contextlib.contextmanager
def loss_backend(backend: str):
    """Every ``tscl.kernels.info_nce`` call inside (the methods look it up at call time) uses ``backend``."""
    from tscl import kernels

    original = kernels.info_nce
    kernels.info_nce = functools.partial(original, backend=backend)
    try:
        yield
    finally:
        kernels.info_nce = original


@dataclass
class Run:
    method: torch.nn.Module
    opt: torch.optim.Optimizer
    params: list
    backend: str
    amp: bool


def build_run(method_name: str, backend: str, width: float, device: torch.device, amp: bool) -> Run:
    """The trainer's model and optimiser (``tscl pretrain``'s AdamW, weight decay and clipping), same
    initial weights for every call with the same arguments."""
    from tscl.encoders import build_encoder
    from tscl.methods import build_method

    torch.manual_seed(0)
    method = build_method(method_name, build_encoder("resnet1d", 12, width=width)).to(device).train()
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-2)
    return Run(method, opt, params, backend, amp)


def train_batch(method_name: str, step: int, batch: int, length: int, device: torch.device):
    """Synthetic batch ``step``: SimCLR gets batch/2 recordings (two views each), PCLR batch/2
    patients x 2 recordings (a patient's shared signal plus noise)."""
    gen = torch.Generator(device=device).manual_seed(10_000 + step)
    half = batch // 2
    if method_name == "simclr":
        x = torch.randn(half, 12, length, generator=gen, device=device)
        ids = torch.arange(half, device=device)
        return x, {"record_ids": ids, "patient_ids": ids}
    base = torch.randn(half, 12, length, generator=gen, device=device)
    x = base.repeat_interleave(2, 0) + 0.5 * torch.randn(batch, 12, length, generator=gen, device=device)
    return x, {"patient_ids": torch.arange(half, device=device).repeat_interleave(2),
               "record_ids": torch.arange(batch, device=device)}


def train_step(run: Run, x, batch: dict, step: int, device: torch.device) -> tuple[float, float]:
    """One step as ``tscl.train.pretrain`` takes it (autocast, backward, clip 1.0, AdamW, after_step,
    the loss read back); the same dropout draws for every run at a given step. Returns (loss, seconds)."""
    torch.manual_seed(step)
    t0 = time.perf_counter()
    with loss_backend(run.backend), torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.amp):
        loss = run.method(x, batch)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    run.opt.step()
    run.method.after_step()
    value = loss.item()
    return value, time.perf_counter() - t0


def _busy(run: Run, method_name: str, steps: int, cfg: dict, device: torch.device) -> dict:
    """GPU-busy fraction (``profiling.gpu_busy``) over ``steps`` profiled steps (None on CPU; a
    profiler that fails is reported, and the phase's other results stand)."""
    if device.type != "cuda" or not steps:
        return dict(gpu_busy=None)
    from tscl.benchmarks.profiling import gpu_busy

    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    torch.cuda.synchronize()
    try:
        with torch.profiler.profile(activities=acts) as prof:
            for i in range(steps):
                train_step(run, *train_batch(method_name, 100_000 + i, cfg["batch"], cfg["length"], device), i, device)
        return dict(gpu_busy=gpu_busy(prof))
    except RuntimeError as err:
        return dict(gpu_busy=None, gpu_busy_error=f"{type(err).__name__}: {str(err)[:200]}")


def train_config(dry: bool) -> dict:
    if dry:
        return dict(width=0.25, batch=8, length=250, steps=3, warmup=1, profile=0, fp32_steps=2)
    return dict(width=1.0, batch=1024, length=1000, steps=200, warmup=10, profile=5, fp32_steps=30)


def lockstep(method_name: str, cfg: dict, steps: int, device: torch.device, log: Log, budget: Budget) -> dict:
    """Fused and eager runs of one method, step by step on the same batches; each step's losses logged."""
    amp = device.type == "cuda"
    runs = {impl: build_run(method_name, "triton" if impl == "fused" else "reference", cfg["width"], device, amp)
            for impl in ("fused", "eager")}
    losses, seconds = {i: [] for i in runs}, {i: [] for i in runs}
    for step in range(steps):
        pair = sum(s[-1] for s in seconds.values()) if step else 0.0
        if step and not budget.allows(1.5 * pair):
            log(dict(record="train_cut", method=method_name, step=step, status=budget.skip(1.5 * pair)))
            break
        x, batch = train_batch(method_name, step, cfg["batch"], cfg["length"], device)
        for impl, run in runs.items():
            value, dt = train_step(run, x, batch, step, device)
            losses[impl].append(value)
            seconds[impl].append(dt)
        log(dict(record="train_step", method=method_name, step=step, fused=losses["fused"][-1],
                 eager=losses["eager"][-1], fused_s=seconds["fused"][-1], eager_s=seconds["eager"][-1]),
            echo=step % 50 == 0 or step == steps - 1)
    return dict(runs=runs, losses=losses, seconds=seconds)


def phase_train(args, log: Log, budget: Budget) -> int:
    device = _device(args)
    cfg = train_config(args.dry_run)
    cfg["reserve"] = 4.0 if args.dry_run else 25.0  # the busy profiles and the fp32 loop after the loss curves
    log(dict(record="train_config", encoder="resnet1d", in_channels=12, amp="bf16" if device.type == "cuda" else "off (cpu)",
             **cfg))
    failed, fused_steps_per_s, methods = 0, None, ("simclr", "pclr")
    for i, method_name in enumerate(methods):  # each method gets an equal share of what is left
        share = Budget(time.time() + max(0.0, budget.left() - cfg["reserve"]) / (len(methods) - i))
        done = lockstep(method_name, cfg, cfg["steps"], device, log, share)
        fused, eager = done["losses"]["fused"], done["losses"]["eager"]
        steps = len(fused)
        diffs = [abs(a - b) for a, b in zip(fused, eager)]
        finite = all(math.isfinite(v) for v in fused + eager)
        row = dict(record="train", method=method_name, steps=steps, finite=finite,
                   max_abs_diff=max(diffs) if diffs else None, step0_abs_diff=diffs[0] if diffs else None,
                   first_loss=fused[0] if fused else None, last_fused=fused[-1] if fused else None,
                   last_eager=eager[-1] if eager else None)
        for impl in ("fused", "eager"):
            timed = done["seconds"][impl][cfg["warmup"]:] or done["seconds"][impl]
            row[f"{impl}_steps_per_s"] = 1.0 / statistics.median(timed) if timed else None
            busy = (_busy(done["runs"][impl], method_name, cfg["profile"], cfg, device)
                    if budget.allows(cfg["reserve"] / 2) else dict(gpu_busy=None, gpu_busy_error=budget.skip(5)))
            row.update({f"{impl}_{key}": value for key, value in busy.items()})
        # the first step sees identical weights and inputs: only the loss kernels differ there
        row["ok"] = finite and steps > 0 and row["step0_abs_diff"] <= 1e-3 * max(1.0, abs(row["first_loss"]))
        failed += not row["ok"]
        if method_name == "simclr":
            fused_steps_per_s = row["fused_steps_per_s"]
        log(row)
        del done
        _free_cuda(device)
    log(fp32_loop(cfg, device, budget, fused_steps_per_s))
    return 1 if failed else 0


def fp32_loop(cfg: dict, device: torch.device, budget: Budget, fused_steps_per_s: float | None) -> dict:
    """SimCLR as a plain PyTorch loop would run it: fp32, the eager reference loss."""
    run = build_run("simclr", "reference", cfg["width"], device, amp=False)
    seconds = []
    for step in range(cfg["fp32_steps"]):
        if seconds and not budget.allows(2 * seconds[-1]):
            break
        seconds.append(train_step(run, *train_batch("simclr", step, cfg["batch"], cfg["length"], device), step, device)[1])
    timed = seconds[min(5, len(seconds) - 1):] if seconds else []
    steps_per_s = 1.0 / statistics.median(timed) if timed else None
    ratio = fused_steps_per_s / steps_per_s if fused_steps_per_s and steps_per_s else None
    return dict(record="train_fp32", method="simclr", steps=len(seconds), steps_per_s=steps_per_s,
                fused_bf16_over_fp32_eager=ratio)


# ----------------------------------------------------------------------------- summary
def read_results(out: Path) -> list[dict]:
    path = out / RESULTS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: the rest still counts
            continue
    return rows


def compile_counts(rows: list[dict]) -> tuple[list[dict], str | None]:
    """Union of every phase's launch log: distinct configs per (kind, dtype, BLOCK_D)."""
    logs = [r for r in rows if r.get("record") == "launch_log"]
    seen: dict[tuple, set] = {}
    for r in logs:
        for e in r.get("entries", []):
            seen.setdefault((e["kind"], e["dtype"], e["block_d"]), set()).update(e["configs"])
    missing = next((r["unavailable"] for r in logs if "unavailable" in r), None)
    if not logs:
        missing = "no phase wrote a launch log"
    counts = [dict(kind=k, dtype=dt, block_d=bd, count=len(c), configs=sorted(c)) for (k, dt, bd), c in sorted(seen.items())]
    return counts, missing


def _fmt(v, spec=".3g"):
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def env_line(env: dict) -> str:
    return (f"# gpu_check: {env.get('device')} · driver {env.get('driver')} · torch {env.get('torch')} · "
            f"Triton {env.get('triton')} · CUDA {env.get('cuda')} · {env.get('date')}")


def bench_table(bench: list[dict]) -> list[str]:
    ok = {(r["impl"], r["variant"], r["N"], r["D"]): r for r in bench if r.get("status") == "ok"}
    keys = sorted({(r["variant"], r["D"], r["N"]) for r in bench if r["impl"] == "fused"})
    lines = ["| variant | D | N | fused ms | eager ms | compiled ms | compiled / fused | fused TFLOP/s (of ceiling) "
             "| fused MiB | compiled MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for variant, d, n in keys:
        cells = []
        for impl in ("fused", "eager", "compiled"):
            r = ok.get((impl, variant, n, d))
            other = next((x for x in bench if (x["impl"], x["variant"], x["N"], x["D"]) == (impl, variant, n, d)), None)
            cells.append(_fmt(r["ms"]) if r else (other or {}).get("status", "-").split(" (")[0])
        f, c = ok.get(("fused", variant, n, d)), ok.get(("compiled", variant, n, d))
        ratio = _fmt(c["ms"] / f["ms"]) if f and c else "-"
        tfl = f"{f['tflops']:.0f} ({100 * f['frac_of_ceiling']:.0f} %)" if f else "-"
        lines.append(f"| {variant} | {d} | {n} | {' | '.join(cells)} | {ratio} | {tfl} | "
                     f"{_fmt(f.get('peak_mib') if f else None, '.0f')} | {_fmt(c.get('peak_mib') if c else None, '.0f')} |")
    return lines


def goals(bench: list[dict], train_rows: list[dict]) -> list[tuple[str, str, str]]:
    """Issue 27's acceptance goals, each from this run's measurements: (goal, measured, met)."""
    ok = {(r["impl"], r["variant"], r["N"], r["D"]): r for r in bench if r.get("status") == "ok"}

    def ms(impl, variant, n, d=128):
        r = ok.get((impl, variant, n, d))
        return r["ms"] if r else None

    out = []

    def goal(text, value, met, shown):
        out.append((text, shown if value is not None else "not measured", "-" if value is None else ("yes" if met else "no")))

    clip = ms("fused", "clip", 65536)
    goal("CLIP N=65,536 D=128 fwd+bwd <= 10 ms", clip, clip is not None and clip <= 10, f"{_fmt(clip)} ms")
    comp = ms("compiled", "clip", 65536)
    ratio = comp / clip if clip and comp else None
    goal("CLIP N=65,536: >= 4x torch.compile", ratio, ratio is not None and ratio >= 4, f"{_fmt(ratio)}x")
    mem = ok.get(("fused", "clip", 65536, 128), {}).get("peak_mib")
    goal("CLIP N=65,536: <= 100 MB extra memory", mem, mem is not None and mem * 2**20 <= 100e6, f"{_fmt(mem, '.0f')} MiB")
    nt = ms("fused", "ntxent", 131072)
    goal("NT-Xent 2N, N=65,536 (131,072 rows) <= 45 ms", nt, nt is not None and nt <= 45, f"{_fmt(nt)} ms")
    for variant, plain, n in (("multipos", "plain", 65536), ("moco", "plain-wide", 65536)):
        a, p = ms("fused", variant, n), ms("fused", plain, n)
        r = a / p if a and p else None
        goal(f"{variant} <= 1.25x {plain} (N={n:,}, D=128)", r, r is not None and r <= 1.25, f"{_fmt(r)}x")
    f4, c4 = ms("fused", "clip", 4096), ms("compiled", "clip", 4096)
    r4 = c4 / f4 if f4 and c4 else None
    goal("CLIP N=4,096: no slower than torch.compile", r4, r4 is not None and r4 >= 1, f"compiled/fused {_fmt(r4)}x")
    fp32 = next((r for r in train_rows if r.get("record") == "train_fp32"), {})
    e2e = fp32.get("fused_bf16_over_fp32_eager")
    goal("end-to-end >= 3x the eager fp32 loop (SimCLR)", e2e, e2e is not None and e2e >= 3, f"{_fmt(e2e)}x")
    return out


def plot_train(steps: list[dict], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r["method"] for r in steps})
    if not methods:
        return False
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 3.6), squeeze=False)
    for ax, method in zip(axes[0], methods):
        rows = sorted((r for r in steps if r["method"] == method), key=lambda r: r["step"])
        xs = [r["step"] for r in rows]
        ax.plot(xs, [r["fused"] for r in rows], label="fused (Triton)", lw=1.2)
        ax.plot(xs, [r["eager"] for r in rows], label="eager reference", lw=1.0, ls="--")
        diff = max((abs(r["fused"] - r["eager"]) for r in rows), default=float("nan"))
        ax.set_title(f"{method}: max |fused - eager| = {diff:.3g}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def phase_summary(args, log: Log, budget: Budget) -> int:
    rows = read_results(args.out)
    env = next((r for r in rows if r.get("record") == "env"), None) or environment(_device(args))
    phases = [r for r in rows if r.get("record") == "phase"]
    counts, missing = compile_counts(rows)
    by = {name: [r for r in rows if r.get("phase") == name] for name in PHASES}
    bench = [r for r in by["bench"] if r.get("record") == "bench"]
    train_rows = by["train"]
    ceiling = next((r["matmul_bf16_tflops"] for r in by["bench"] if r.get("record") == "ceiling"), None)
    over = [c for c in counts if c["count"] > 1]
    compiles_ok = missing is None and bool(counts) and not over
    phases_ok = bool(phases) and all(p["status"] == "ok" for p in phases)
    md = [env_line(env), "",
          f"verdict: {'PASS' if phases_ok and compiles_ok else 'FAIL'}; "
          f"{sum(p.get('seconds', 0) for p in phases)} s in phases; dry run: {args.dry_run}", "",
          "## Phases", "", "| phase | status | seconds | deadline s | records |", "|---|---|---|---|---|"]
    md += [f"| {p['name']} | {p['status']} | {p.get('seconds')} | {p.get('budget_s')} | "
           f"{sum(1 for r in rows if r.get('phase') == p['name'])} |" for p in phases]
    md += ["", "## Compiles per kernel", ""]
    md += ([f"unavailable: {missing}"] if missing else
           ["| kernel | dtype | BLOCK_D | configs launched | configs |", "|---|---|---|---|---|"] +
           [f"| {c['kind']} | {c['dtype']} | {c['block_d']} | {c['count']} | {'; '.join(c['configs'])} |" for c in counts])
    cases = [r for r in by["correctness"] if r.get("record") == "case"]
    md += ["", "## Correctness: fused vs float64 reference (loss: max abs error per row, and relative norm; "
           "gradients: relative norm error; tolerances from docs/kernels.md)", "",
           "| case | path | N | bank | D | dtype | p(pos) min | loss err / tol | loss rel | dq err / tol | dk err / tol "
           "| dtau err / tol | ok |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in cases:
        if "ok" not in r:
            md.append(f"| {r['name']} | {r['positives']} | | | | | | {r.get('status')} | | | | | - |")
            continue
        errs = " | ".join(f"{_fmt(r.get(g + '_err'))} / {_fmt(r.get(g + '_tol'))}" for g in ("loss", "dq", "dk", "dtau"))
        errs = errs.replace(" | ", f" | {_fmt(r.get('loss_rel_err'))} | ", 1)
        md.append(f"| {r['name']} | {r['positives']} | {r['n']} | {r['bank']} | {r['d']} | {r['dtype']} | "
                  f"{r['ppos_min']:.4f} | {errs} | {'yes' if r['ok'] else 'NO: ' + r.get('why', '')} |")
    md += [f"- {r['record']}: {'ok' if r.get('ok') else 'FAILED'} {_fmt(r.get('max_err'))}"
           for r in by["correctness"] if r.get("record") in ("reference_selfcheck", "nan_in_bank")]
    syncs = [r for r in by["sync"] if r.get("record") == "sync"]
    md += ["", "## Host syncs per call (fused fwd+bwd under set_sync_debug_mode('error'))", "",
           "| case | path | temperature | result |", "|---|---|---|---|"]
    md += [f"| {r['name']} | {r['positives']} | {r.get('temperature', '-')} | {r.get('status')} "
           f"{r.get('error', '')} |" for r in syncs]
    md += ["", f"## Loss benchmark: bf16, fwd+bwd, median; bf16 matmul ceiling {_fmt(ceiling, '.0f')} TFLOP/s", ""]
    md += bench_table(bench)
    skipped = sorted({r["status"] for r in bench if r.get("status", "ok") not in ("ok", "oom", "error")})
    md += [f"- {s}" for s in skipped]
    md += ["", "## Goals (issue 27), from this run", "", "| goal | measured | met |", "|---|---|---|"]
    md += [f"| {g} | {m} | {met} |" for g, m, met in goals(bench, train_rows)]
    cfg = next((r for r in train_rows if r.get("record") == "train_config"), {})
    md += ["", f"## End-to-end: resnet1d (width {cfg.get('width')}) 12 x {cfg.get('length')}, batch {cfg.get('batch')}, "
           f"autocast {cfg.get('amp')}, fused vs eager loss in lockstep", "",
           "| method | steps | fused steps/s | eager steps/s | fused GPU-busy | eager GPU-busy | max abs loss diff "
           "| step-0 diff | ok |", "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['method']} | {r['steps']} | {_fmt(r['fused_steps_per_s'])} | {_fmt(r['eager_steps_per_s'])} | "
           f"{_fmt(r['fused_gpu_busy'])} | {_fmt(r['eager_gpu_busy'])} | {_fmt(r['max_abs_diff'])} | "
           f"{_fmt(r['step0_abs_diff'])} | {'yes' if r['ok'] else 'NO'} |"
           for r in train_rows if r.get("record") == "train"]
    md += [f"- fp32 eager SimCLR loop: {_fmt(r['steps_per_s'])} steps/s over {r['steps']} steps; fused bf16 / fp32 "
           f"eager = {_fmt(r['fused_bf16_over_fp32_eager'])}x" for r in train_rows if r.get("record") == "train_fp32"]
    pngs = []
    if _bench_png(bench, ceiling, args.out / "bench.png"):
        pngs.append("bench.png")
    if plot_train([r for r in train_rows if r.get("record") == "train_step"], args.out / "train_losses.png"):
        pngs.append("train_losses.png")
    md += ["", "Figures: " + (", ".join(pngs) if pngs else "none (matplotlib missing or nothing measured)")]
    (args.out / "summary.md").write_text("\n".join(md) + "\n")
    summary = dict(env=env, ok=phases_ok and compiles_ok, phases=phases, compiles_per_kernel=counts,
                   compiles_unavailable=missing, correctness=by["correctness"], sync=syncs, matmul_ceiling_tflops=ceiling,
                   bench=bench, goals=goals(bench, train_rows), train=[r for r in train_rows if r.get("record") != "train_step"],
                   train_losses=[r for r in train_rows if r.get("record") == "train_step"])
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(md), flush=True)
    print("compiles per kernel:" + ("" if counts else f" {missing or 'none launched'}"))
    for c in counts:
        print(f"  {c['kind']:>4} {c['dtype']:>8} D={c['block_d']:<4} {c['count']}  {'; '.join(c['configs'])}")
    if missing and counts:
        print(f"  (incomplete: {missing})")
    if over:
        print(f"FAIL: {len(over)} kernel(s) launched more than one config for one (dtype, D)")
    return 0 if compiles_ok else 1


def _bench_png(bench: list[dict], ceiling, path: Path) -> bool:
    if not any(r.get("status") == "ok" for r in bench):
        return False
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    _bench_module().plot(bench, ceiling, path)
    return True


# ----------------------------------------------------------------------------- command line
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        self.exit(2, f"gpu_check.py: error: {message}\n")


def _on_term(signum, frame):
    raise SystemExit(128 + signum)  # finally-blocks run: the launch log is written before the process ends


def main(argv=None) -> int:
    p = _Parser(description=__doc__.split("\n")[0])
    p.add_argument("phase", choices=(*PHASES, "summary"))
    p.add_argument("--out", type=Path, required=True, help="output folder (results.jsonl is appended to)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, Triton interpreter")
    p.add_argument("--deadline", type=float, default=None, help="soft deadline, seconds since the epoch")
    args = p.parse_args(argv)
    if not args.out.is_dir():
        p.error(f"--out {args.out}: not a folder")
    if args.phase != "summary" and not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device: run with --dry-run on a CPU")
    if args.phase != "summary" and args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        p.error("--dry-run needs TRITON_INTERPRET=1 in the environment before Python starts (gpu_check.sh sets it)")
    if args.phase != "summary":
        signal.signal(signal.SIGTERM, _on_term)
    log = Log(args.out, args.phase)
    run = dict(correctness=phase_correctness, sync=phase_sync, bench=phase_bench, train=phase_train,
               summary=phase_summary)[args.phase]
    try:
        return run(args, log, Budget(args.deadline))
    except Exception as err:
        log(dict(record="error", error=f"{type(err).__name__}: {err}"))
        raise
    finally:
        if args.phase != "summary":
            log(launch_log_record(), echo=False)


if __name__ == "__main__":
    sys.exit(main())
