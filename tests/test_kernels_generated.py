"""The fused InfoNCE kernels against a float64 oracle on generated hard cases.

Every case draws shapes, ids, options (exclude_self, symmetric, a bank with both
``bank_same_id`` modes, the three reductions), a dtype (fp32, fp16, bf16), where the positives
are found (``tn.POSITIVES`` = "loop" or "separable"), a forced column split, a temperature from
0.01 to 10, and a distribution of the embeddings:

* ``random``     unit Gaussian rows;
* ``confident``  anchors and keys near their id's centre, small temperature: the positives hold
                 >= 99 % of each anchor's softmax, so ``p_ij - [j in P(i)] / npos_i`` cancels to a
                 few thousandths (a trained encoder; where the old separable backward failed);
* ``duplicate``  every key a near-duplicate of one vector: dq is a small difference of large terms;
* ``single``     one key (M = 1), or exclude_self with one other row: p = 1, the true dq is 0.

The kernel receives exactly the rows the oracle receives (unit rows rounded to the dtype,
``normalize=False``), so the comparison measures the kernel's arithmetic only.

Tolerance (a forward error bound of the kernel's arithmetic, from the dtype; also in
docs/kernels.md): with the oracle's probabilities ``P``, positives' weights ``Y = [j in P(i)] / npos_i``,
incoming row gradients ``g`` (``g'`` for the column losses when symmetric),
``dS = g (P - Y) (+ g' (P' - Y')^T)``, ``A_ij = |g_i| P_ij sigma_i (+ |g'_j| P'_ji sigma'_j)`` where
``sigma_i = (1 + sqrt(D) / 4) |q_i| max_j |k_j| / tau + |lse_i| + max_j |S_ij| + 1`` bounds the fp32
error of ``s_ij - lse_i`` in units of the fp32 roundoff, and ``u_r`` the roundoff of what ``dS`` is
rounded to before its product (bf16 2**-8, fp16 2**-11, fp32 2**-24), ``u_a = 2**-24``::

    |dq - dq64|_F   <= C / tau * ( u_r |(|dS| @ |K_all|)|_F + u_a |(A @ |K_all|)|_F )
    |dk - dk64|_F   <= C / tau * ( u_r |(|dS_keys|^T @ |Q|)|_F + u_a |(A_keys^T @ |Q|)|_F )
    |dtau - dtau64| <= C / tau * u_a * sum_ij ( A_ij |S_ij| + |dS_ij| (|S_ij| + sigma_i) )
    |loss_i - loss64_i| <= C * u_a * (sigma_i + mean_{p in P(i)} |S_ip|)   (reduced like the loss)

with ``C = 4``. A backward that rounds ``g p`` before subtracting the positives' ``g / npos``
(the separable path before this test existed) errs by ``u_r |g|`` per confident row instead of
``u_r |g| (1 - p)``: 40x the gradient's norm in bf16, far outside the bound.
"""
import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tscl.kernels import info_nce  # noqa: E402

from test_kernels import require_triton, tn  # noqa: E402  (fails, never skips silently, where Triton cannot run)


@pytest.fixture(autouse=True)
def _triton_required(monkeypatch):
    require_triton()
    monkeypatch.setattr(tn, "POISON_OUTPUTS", True)  # an element no program wrote is NaN, never stale memory


C_TOL = 4.0
U_ACC = 2.0 ** -24
U_ROUND = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}  # unit roundoff


# ----------------------------------------------------------------------------- the float64 oracle
def _direction(q, k, q_ids, k_ids, tau, exclude_self, bank=None, bank_ids=None, mask=False):
    """Logits, validity, positives' weights and per-row loss of one direction, all float64."""
    s = q @ k.T / tau
    valid = torch.ones_like(s, dtype=torch.bool)
    pos = q_ids[:, None] == k_ids[None, :]
    if exclude_self:
        valid &= ~torch.eye(*s.shape, dtype=torch.bool)
    if bank is not None:
        sb = q @ bank.T / tau
        bsame = (q_ids[:, None] == bank_ids[None, :]) if bank_ids is not None else torch.zeros_like(sb, dtype=torch.bool)
        s = torch.cat([s, sb], 1)
        valid = torch.cat([valid, ~bsame if mask else torch.ones_like(bsame)], 1)
        pos = torch.cat([pos, bsame & (not mask)], 1)
    pos &= valid
    npos = pos.sum(1)
    sm = s.masked_fill(~valid, float("-inf"))
    empty = ~valid.any(1)
    lse = torch.logsumexp(sm.masked_fill(empty[:, None], 0.0), 1)
    p = torch.exp(sm - lse[:, None]).masked_fill(~valid, 0.0)
    y = pos.double() / npos.clamp_min(1)[:, None]
    loss = torch.where(npos > 0, lse - (s.masked_fill(~pos, 0.0)).sum(1) / npos.clamp_min(1), torch.zeros_like(lse))
    return dict(s=s.masked_fill(~valid, 0.0), valid=valid, p=p, y=y, npos=npos, lse=lse, loss=loss)


def _reduce(losses, counts, reduction):
    out = []
    for loss, npos in zip(losses, counts):
        if reduction == "mean":
            out.append(loss.sum() / (npos > 0).sum().clamp_min(1))
        elif reduction == "sum":
            out.append(loss.sum())
    if reduction == "none":
        return torch.cat(losses)
    return out[0] if len(out) == 1 else 0.5 * (out[0] + out[1])


def oracle(c):
    """Loss, gradients and error bounds of case ``c`` in float64 (inputs: the rounded rows)."""
    q = c["q"].double().requires_grad_()
    k = c["k"].double().requires_grad_()  # its own leaf even when q is k: dq and dk apart, for the rounding
    tau = torch.tensor(c["tau"], dtype=torch.float64, requires_grad=True)
    bank = c["bank"].double() if c["bank"] is not None else None
    rows = _direction(q, k, c["q_ids"], c["k_ids"], tau, c["exclude_self"], bank, c["bank_ids"], c["mask"])
    dirs = [rows]
    if c["symmetric"]:
        dirs.append(_direction(k, q, c["k_ids"], c["q_ids"], tau, c["exclude_self"]))
    losses = [dr["loss"] for dr in dirs]
    out = _reduce(losses, [dr["npos"] for dr in dirs], c["reduction"])
    objective = (out * c["weight"].double()).sum()
    grads = torch.autograd.grad(objective, [q, tau, k] + losses)
    dq, dtau, dk = grads[:3]
    gs = [gr.detach() for gr in grads[3:]]

    m, d = k.shape[0], q.shape[1]
    qa, ka = q.detach().abs(), k.detach().abs()
    kall = torch.cat([ka, bank.abs()]) if bank is not None else ka
    t = float(c["tau"])

    def sigma(dr, a, b):
        return ((1 + math.sqrt(d) / 4) * a.norm(dim=1) * b.norm(dim=1).max() / t + dr["lse"].detach().abs()
                + dr["s"].detach().abs().amax(1) + 1)

    sig = sigma(rows, q.detach(), torch.cat([k.detach(), bank]) if bank is not None else k.detach())
    g = torch.where(rows["npos"] > 0, gs[0], torch.zeros_like(gs[0]))
    ds = g[:, None] * (rows["p"].detach() - rows["y"])
    amag = g.abs()[:, None] * rows["p"].detach() * sig[:, None]
    loss_err = sig + (rows["s"].detach().abs() * rows["y"]).sum(1)
    errs = [loss_err]
    if c["symmetric"]:
        cols = dirs[1]
        sig_c = sigma(cols, k.detach(), q.detach())
        gc = torch.where(cols["npos"] > 0, gs[1], torch.zeros_like(gs[1]))
        ds[:, :m] += (gc[:, None] * (cols["p"].detach() - cols["y"])).T
        amag[:, :m] += (gc.abs()[:, None] * cols["p"].detach() * sig_c[:, None]).T
        errs.append(sig_c + (cols["s"].detach().abs() * cols["y"]).sum(1))
    u_r = U_ROUND[c["dtype"]]
    s_all = rows["s"].detach().abs()
    bound = dict(
        dq=C_TOL / t * (u_r * (ds.abs() @ kall).norm() + U_ACC * (amag @ kall).norm()),
        dk=C_TOL / t * (u_r * (ds[:, :m].abs().T @ qa).norm() + U_ACC * (amag[:, :m].T @ qa).norm()),
        dtau=C_TOL / t * U_ACC * (amag * s_all + ds.abs() * (s_all + sig[:, None])).sum(),
    )
    # the results are rounded to the dtype once (dq and dk, and their sum when q is k): u |x| + one subnormal step
    u_out, tiny = U_ROUND[c["dtype"]], torch.finfo(c["dtype"]).smallest_normal * torch.finfo(c["dtype"]).eps
    for name, x in (("dq", dq), ("dk", dk)):
        bound[name] = bound[name] + u_out * x.norm() + tiny * x.numel() ** 0.5
    if c["same_qk"]:  # dq and dk land on one tensor
        bound["dq"] = bound["dk"] = bound["dq"] + bound["dk"] + u_out * (dq + dk).norm() + tiny * dq.numel() ** 0.5
        dq = dk = dq + dk
    loss_bound = C_TOL * U_ACC * torch.cat(errs)
    if c["reduction"] != "none":
        scale = [1.0 / max(int((dr["npos"] > 0).sum()), 1) if c["reduction"] == "mean" else 1.0 for dr in dirs]
        per = [e.sum() * s for e, s in zip(errs, scale)]
        loss_bound = C_TOL * U_ACC * (per[0] if len(per) == 1 else 0.5 * (per[0] + per[1]))
    return dict(out=out.detach(), dq=dq, dk=dk, dtau=dtau, npos=torch.cat([dr["npos"] for dr in dirs]),
                bound=bound, loss_bound=loss_bound, ppos=_positive_mass(rows))


def _positive_mass(rows):
    """Smallest softmax mass on the positives over anchors that have one."""
    mass = (rows["p"] * (rows["y"] > 0)).sum(1)
    has = rows["npos"] > 0
    return float(mass[has].min().detach()) if has.any() else float("nan")


# ----------------------------------------------------------------------------- cases
def make_case(*, n, m, d, dtype, dist, n_ids, ids, exclude_self, same_qk, bank, bank_ids, mask, symmetric,
              reduction, tau, seed, gscale=1.0):
    gen = torch.Generator().manual_seed(seed)
    m = n if exclude_self or ids == "diagonal" else m
    if ids == "diagonal":
        q_ids = k_ids = torch.arange(n)
    else:
        q_ids = torch.randint(0, n_ids, (n,), generator=gen)
        k_ids = q_ids.clone() if exclude_self else torch.randint(0, n_ids, (m,), generator=gen)
    bids = torch.randint(0, n_ids + 2, (bank,), generator=gen) if bank and bank_ids else None
    n_centres = int(max(q_ids.max(), k_ids.max(), bids.max() if bids is not None else 0)) + 1
    centres = torch.randn(n_centres, d, generator=gen, dtype=torch.float64)
    bank_t = torch.randn(bank, d, generator=gen, dtype=torch.float64) if bank else None
    if dist == "confident":
        noise = 0.02
        q = centres[q_ids] + noise * torch.randn(n, d, generator=gen, dtype=torch.float64)
        k = centres[k_ids] + noise * torch.randn(m, d, generator=gen, dtype=torch.float64)
        if bids is not None:  # a memory queue of earlier keys
            bank_t = centres[bids] + noise * torch.randn(bank, d, generator=gen, dtype=torch.float64)
    elif dist == "duplicate":
        v = torch.randn(1, d, generator=gen, dtype=torch.float64)
        q = torch.randn(n, d, generator=gen, dtype=torch.float64)
        k = v + 1e-3 * torch.randn(m, d, generator=gen, dtype=torch.float64)
    else:
        q = torch.randn(n, d, generator=gen, dtype=torch.float64)
        k = torch.randn(m, d, generator=gen, dtype=torch.float64)
    unit = lambda x: F.normalize(x, dim=-1).to(dtype)  # noqa: E731
    q = unit(q)
    k = q if same_qk and exclude_self else unit(k)
    bank_t = unit(bank_t) if bank else None
    total = (n + m if symmetric else n) if reduction == "none" else 1
    weight = gscale * (torch.rand(total, generator=gen, dtype=torch.float64) + 0.5)
    if reduction != "none":
        weight = weight.reshape(())
    return dict(q=q, k=k, q_ids=q_ids, k_ids=k_ids, bank=bank_t, bank_ids=bids, mask=mask, tau=tau, dtype=dtype,
                exclude_self=exclude_self, same_qk=same_qk and exclude_self, symmetric=symmetric,
                reduction=reduction, weight=weight)


def run_triton(c, path, split, monkeypatch):
    monkeypatch.setattr(tn, "POSITIVES", path)
    monkeypatch.setattr(tn, "FORCE_SPLIT", split)
    q = c["q"].clone().requires_grad_()
    k = q if c["same_qk"] else c["k"].clone().requires_grad_()
    tau = torch.tensor(c["tau"], dtype=torch.float32, requires_grad=True)
    out, stats = info_nce(q, k, c["q_ids"], c["k_ids"], temperature=tau, symmetric=c["symmetric"],
                          exclude_self=c["exclude_self"], bank=c["bank"], bank_ids=c["bank_ids"],
                          bank_same_id="mask" if c["mask"] else "positive", normalize=False,
                          reduction=c["reduction"], return_stats=True, backend="triton")
    (out * c["weight"].to(out.dtype)).sum().backward()
    return dict(out=out.detach(), dq=q.grad, dk=q.grad if c["same_qk"] else k.grad, dtau=tau.grad, stats=stats)


def check(got, want, dtype):
    """Assert every quantity within its bound; returns the error / bound ratios."""
    ratios = {}
    assert got["dq"].dtype == dtype and got["dk"].dtype == dtype
    err = (got["out"].double() - want["out"]).abs()
    assert torch.isfinite(got["out"]).all(), "non-finite loss"
    ratios["loss"] = float((err / want["loss_bound"].clamp_min(1e-300)).max())
    for name in ("dq", "dk"):
        assert torch.isfinite(got[name]).all(), f"non-finite {name}"
        ratios[name] = float((got[name].double() - want[name]).norm() / max(want["bound"][name], 1e-300))
    ratios["dtau"] = abs(float(got["dtau"]) - float(want["dtau"])) / max(float(want["bound"]["dtau"]), 1e-300)
    bad = {k: v for k, v in ratios.items() if not v <= 1.0}
    assert not bad, f"error / bound above 1: {bad} (all: {ratios})"
    return ratios


def _stats_match(got, want):
    npos = want["npos"]
    assert got["stats"].n_anchors == npos.numel()
    assert got["stats"].n_without_positive == int((npos == 0).sum())


# ----------------------------------------------------------------------------- the confident cases
_CONFIDENT = {
    "one-positive": dict(ids="diagonal"),
    "symmetric-clip": dict(ids="diagonal", symmetric=True),
    "ntxent": dict(ids="ids", n_ids=24, exclude_self=True, same_qk=True),
    "pmq-bank-positive": dict(ids="ids", n_ids=12, bank=40, bank_ids=True),
}


@pytest.mark.parametrize("path", ["loop", "separable"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("name", list(_CONFIDENT))
def test_confident_softmax_gradients_within_the_dtype_bound(name, dtype, path, monkeypatch):
    """The positives hold >= 99 % of every anchor's softmax (a trained encoder): dq, dk, dtau
    still within the bound, on both paths. Mean reduction, 48 anchors: g = 1/48, so fp16 ``dS``
    would underflow without scaling."""
    kw = dict(n=48, m=48, d=32, dtype=dtype, dist="confident", n_ids=48, ids="diagonal", exclude_self=False,
              same_qk=False, bank=0, bank_ids=False, mask=False, symmetric=False, reduction="mean", tau=0.05,
              seed=7)
    kw.update(_CONFIDENT[name])
    c = make_case(**kw)
    want = oracle(c)
    assert want["ppos"] >= 0.99, want["ppos"]
    got = run_triton(c, path, None, monkeypatch)
    check(got, want, dtype)


@pytest.mark.parametrize("path", ["loop", "separable"])
@pytest.mark.parametrize("gscale", [1e-4, 1e3])
def test_fp16_gradients_neither_underflow_nor_overflow(gscale, path, monkeypatch):
    """A loss weighted by 1e-4 (as a mean over 10**4 anchors weighs each): most ``g p_ij`` lie below
    fp16's smallest subnormal (6e-8) while dq itself is a normal fp16 number, so an unscaled fp16
    ``dS`` loses them (error / bound 2.8 before the scaling); weighted by 1e3, ``dS`` must not
    overflow. The kernels scale ``dS`` by a power of two before rounding it and undo it in fp32."""
    c = make_case(n=40, m=40, d=16, dtype=torch.float16, dist="random", n_ids=40, ids="diagonal", exclude_self=False,
                  same_qk=False, bank=24, bank_ids=False, mask=False, symmetric=True, reduction="mean", tau=0.02,
                  seed=3, gscale=gscale)
    want = oracle(c)
    got = run_triton(c, path, None, monkeypatch)
    check(got, want, torch.float16)


# ----------------------------------------------------------------------------- generated cases
@st.composite
def cases(draw):
    dist = draw(st.sampled_from(["random", "confident", "duplicate", "single"]))
    exclude_self = draw(st.booleans())
    n = draw(st.integers(1, 40))
    m = draw(st.integers(1, 40))
    ids = draw(st.sampled_from(["ids", "diagonal"])) if not exclude_self else "ids"
    if dist == "single":
        if exclude_self:
            n = 2
        else:
            m, ids = 1, "ids"
    if ids == "diagonal":
        m = n
    bank = draw(st.sampled_from([0, 0, draw(st.integers(1, 40))]))
    tau = draw(st.sampled_from([0.01, 0.03, 0.1, 0.5, 2.0, 10.0]))
    if dist == "confident":
        tau = draw(st.sampled_from([0.01, 0.03, 0.05]))
    return dict(
        n=n, m=m, d=draw(st.sampled_from([1, 7, 16, 33, 64])), dtype=draw(st.sampled_from(
            [torch.float32, torch.bfloat16, torch.float16])),
        dist=dist, n_ids=draw(st.integers(1, max(1, n))), ids=ids, exclude_self=exclude_self,
        same_qk=draw(st.booleans()), bank=bank, bank_ids=draw(st.booleans()), mask=draw(st.booleans()),
        symmetric=draw(st.booleans()), reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        tau=tau, seed=draw(st.integers(0, 2**16)), gscale=draw(st.sampled_from([1.0, 1.0, 1e-6, 1e3])),
    ), draw(st.sampled_from(["loop", "separable"])), draw(st.sampled_from([None, None, 2, 3, 5]))


@settings(max_examples=int(os.environ.get("TSCL_KERNEL_EXAMPLES", "120")), deadline=None, derandomize=True,
          database=None, suppress_health_check=list(HealthCheck))
@given(cases())
def test_generated_cases_within_the_dtype_bound(drawn):
    kw, path, split = drawn
    c = make_case(**kw)
    want = oracle(c)
    with pytest.MonkeyPatch.context() as mp:
        got = run_triton(c, path, split, mp)
    _stats_match(got, want)
    check(got, want, kw["dtype"])


def confident_table():
    """The confident cases' relative dq/dk errors against the oracle and error / bound, per path and
    dtype (docs/kernels.md): ``python tests/test_kernels_generated.py``."""
    for name, extra in _CONFIDENT.items():
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for path in ("loop", "separable"):
                kw = dict(n=48, m=48, d=32, dtype=dtype, dist="confident", n_ids=48, ids="diagonal",
                          exclude_self=False, same_qk=False, bank=0, bank_ids=False, mask=False, symmetric=False,
                          reduction="mean", tau=0.05, seed=7)
                kw.update(extra)
                c = make_case(**kw)
                want = oracle(c)
                with pytest.MonkeyPatch.context() as mp:
                    got = run_triton(c, path, None, mp)
                err = {n: float((got[n].double() - want[n]).norm()) for n in ("dq", "dk")}
                print(f"{name:18} {tn._dtype_name(dtype):9} {path:9} positive mass >= {want['ppos']:.6f}  "
                      f"rel dq {err['dq'] / float(want['dq'].norm()):.3g} dk {err['dk'] / float(want['dk'].norm()):.3g}"
                      f"  error/bound dq {err['dq'] / float(want['bound']['dq']):.3g} "
                      f"dk {err['dk'] / float(want['bound']['dk']):.3g}", flush=True)


if __name__ == "__main__":
    confident_table()
