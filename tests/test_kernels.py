"""InfoNCE kernels: the PyTorch reference against brute force, the Triton kernel against the reference.

The Triton kernels run on CPU through Triton's interpreter (TRITON_INTERPRET=1, set before
Triton is imported) with 16 x 16 tiles, so the odd shapes below span several partial tiles.
"""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tscl.kernels import InfoNCEStats, info_nce, info_nce_rows_reference  # noqa: E402



def _triton_status():
    """``(kernel module, None)`` when the Triton kernels can run here, else ``(None, why)``."""
    try:
        import triton  # noqa: F401
    except ImportError as err:  # Triton is not installed on this platform
        return None, f"Triton is not importable: {err!r}"
    from tscl.kernels import triton_info_nce as kernels  # a broken kernel module must fail here, not skip

    if not (kernels._INTERPRET or torch.cuda.is_available()):
        return None, "triton_info_nce was imported before TRITON_INTERPRET=1 was set and no GPU is present"
    if kernels._INTERPRET:
        import triton.language as tl

        @triton.jit
        def _probe(O, n, B: tl.constexpr):
            acc = tl.zeros([B], tl.float32)
            for _ in range(0, n, B):
                acc += 1.0
            tl.store(O + tl.arange(0, B), acc)

        try:
            _probe[(1,)](torch.zeros(16), 20, 16)
        except Exception as err:  # Triton < 3.7's interpreter with NumPy >= 2.4
            import numpy

            return None, (f"Triton {triton.__version__}'s interpreter cannot run loops with NumPy {numpy.__version__} "
                          f"(the test extra pins numpy<2.4 for it): {err!r}")
    return kernels, None


tn, _PROBLEM = _triton_status()


def require_triton():
    """The kernel module; a test that needs it FAILS, naming the cause, where Triton is a dependency
    (Linux) but the kernels cannot run. Elsewhere it skips with the reason (listed by ``-ra``)."""
    if tn is None:
        if sys.platform.startswith("linux"):
            pytest.fail(f"the Triton kernels cannot run here: {_PROBLEM}", pytrace=False)
        pytest.skip(f"{_PROBLEM} (Triton is a dependency on Linux only)")
    return tn


@pytest.fixture
def _triton_required():
    require_triton()


needs_triton = pytest.mark.usefixtures("_triton_required")
DEVICE = "cuda" if torch.cuda.is_available() and tn is not None and not tn._INTERPRET else "cpu"


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    """Every kernel output starts as NaN / -1, so an element no program wrote is caught."""
    if tn is not None:
        monkeypatch.setattr(tn, "POISON_OUTPUTS", True)


# ----------------------------------------------------------------------------- helpers
def _unit(n, d, gen, dtype=torch.float32):
    return F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1).to(dtype)


def _rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


_TOL = {  # (loss atol, grad relative-norm error)
    torch.float32: (2e-5, 1e-4),
    torch.bfloat16: (2e-4, 3e-2),
    torch.float16: (2e-4, 5e-3),
}


def _case(backend, *, n=37, m=53, d=19, dtype=torch.float32, ids="random", n_ids=9, exclude_self=False,
          bank=0, bank_ids=False, bank_same_id="positive", symmetric=False, normalize=True,
          reduction="none", tau=0.1, learn_tau=True, scale=1.0, seed=0):
    """Run info_nce on seeded inputs; returns the output and every gradient."""
    gen = torch.Generator().manual_seed(seed)
    if exclude_self:
        m = n
    q = (scale * _unit(n, d, gen)).to(dtype).to(DEVICE).requires_grad_()
    k = (scale * _unit(m, d, gen)).to(dtype).to(DEVICE).requires_grad_()
    if ids == "random":
        q_ids = torch.randint(0, n_ids, (n,), generator=gen)
        k_ids = q_ids.clone() if exclude_self else torch.randint(0, n_ids, (m,), generator=gen)
        q_ids, k_ids = q_ids.to(DEVICE), k_ids.to(DEVICE)
    else:
        q_ids = k_ids = None
    bank_t = _unit(bank, d, gen).to(dtype).to(DEVICE).requires_grad_() if bank else None
    bids = torch.randint(0, n_ids, (bank,), generator=gen).to(DEVICE) if bank and bank_ids else None
    temperature = torch.tensor(tau, device=DEVICE, requires_grad=learn_tau) if learn_tau else tau
    out, stats = info_nce(q, k, q_ids, k_ids, temperature=temperature, symmetric=symmetric,
                          exclude_self=exclude_self, bank=bank_t, bank_ids=bids, bank_same_id=bank_same_id,
                          normalize=normalize, reduction=reduction, return_stats=True, backend=backend)
    weight = torch.randn(out.shape, generator=gen).to(DEVICE) if out.dim() else torch.tensor(1.0)
    (out * weight.to(out.device)).sum().backward()
    return {
        "out": out.detach(), "stats": stats, "dq": q.grad, "dk": k.grad,
        "dtau": temperature.grad if learn_tau else None,
        "bank_grad": bank_t.grad if bank else None,
    }


def _assert_matches(got, want, dtype):
    loss_tol, grad_tol = _TOL[dtype]
    assert torch.isfinite(got["out"]).all(), "non-finite loss"
    torch.testing.assert_close(got["out"].float(), want["out"].float(), rtol=loss_tol, atol=loss_tol)
    assert got["stats"] == want["stats"]
    for name in ("dq", "dk"):
        assert got[name] is not None and got[name].dtype == dtype, name
        assert torch.isfinite(got[name]).all(), f"non-finite {name}"
        assert _rel_err(got[name], want[name]) < grad_tol, (name, _rel_err(got[name], want[name]))
    if want["dtau"] is not None:
        torch.testing.assert_close(got["dtau"], want["dtau"], rtol=max(grad_tol, 1e-4), atol=1e-5)
    assert got["bank_grad"] is None and want["bank_grad"] is None, "the bank must receive no gradient"


# ----------------------------------------------------------------------------- reference
def _brute_force(q, k, q_ids, k_ids, tau, exclude_self, bank, bank_ids, mask_bank):
    """One anchor at a time, straight from the definition (float64)."""
    losses, counts = [], []
    for i in range(q.shape[0]):
        logits, positive = [], []
        for j in range(k.shape[0]):
            if exclude_self and i == j:
                continue
            logits.append(q[i] @ k[j] / tau)
            positive.append(bool(k_ids[j] == q_ids[i]))
        for b in range(0 if bank is None else bank.shape[0]):
            same = bank_ids is not None and bool(bank_ids[b] == q_ids[i])
            if same and mask_bank:
                continue
            logits.append(q[i] @ bank[b] / tau)
            positive.append(same)
        pos = [s for s, p in zip(logits, positive) if p]
        counts.append(len(pos))
        if not pos:
            losses.append(q.new_zeros(()))
            continue
        losses.append(torch.logsumexp(torch.stack(logits), 0) - torch.stack(pos).mean())
    return torch.stack(losses), torch.tensor(counts)


@pytest.mark.parametrize("exclude_self,bank,bank_ids,mask_bank", [
    (False, False, False, False), (True, False, False, False),
    (False, True, False, False), (False, True, True, False), (True, True, True, True),
])
def test_reference_matches_per_anchor_loop(exclude_self, bank, bank_ids, mask_bank):
    gen = torch.Generator().manual_seed(3)
    n, m, d, nb = 7, 7 if exclude_self else 9, 5, 6
    q64, k64 = _unit(n, d, gen, torch.float64), _unit(m, d, gen, torch.float64)
    q_ids = torch.tensor([0, 0, 1, 2, 2, 2, 5])  # several positives, and id 5 has none among keys
    k_ids = q_ids.clone() if exclude_self else torch.tensor([0, 1, 1, 2, 2, 3, 0, 4, 2])
    b64 = _unit(nb, d, gen, torch.float64) if bank else None
    bids = torch.tensor([1, 5, 7, 0, 5, 9]) if bank_ids else None
    tau64 = torch.tensor(0.2, dtype=torch.float64)

    leaves = [t.clone().requires_grad_() for t in (q64, k64, tau64)]
    want, want_n = _brute_force(*leaves[:2], q_ids, k_ids, leaves[2], exclude_self, b64, bids, mask_bank)
    want.sum().backward()
    got_leaves = [t.float().requires_grad_() for t in (q64, k64, tau64)]
    got, got_n = info_nce_rows_reference(got_leaves[0], got_leaves[1], q_ids, k_ids, got_leaves[2],
                                         exclude_self, b64, bids, mask_bank)
    got.sum().backward()

    assert torch.equal(got_n, want_n)
    if not (bank and bank_ids and not mask_bank):
        assert got_n[-1] == 0 and got[-1] == 0, "the anchor without positives has loss 0"
    assert (got_n > 1).any(), "the case must include multi-positive anchors"
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-5)
    for g, w in zip(got_leaves, leaves):
        torch.testing.assert_close(g.grad.double(), w.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw", [
    dict(q_ids=True, exclude_self=False, symmetric=True),
    dict(q_ids=True, exclude_self=True, bank=True),
    dict(q_ids=False, exclude_self=False, bank=True, bank_ids=True, bank_same_id="mask"),
])
def test_reference_gradcheck_float64(kw):
    """Float64 inputs stay float64 in the reference, so finite differences are tight."""
    gen = torch.Generator().manual_seed(5)
    n, d = 6, 4
    q = torch.randn(n, d, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(n, d, generator=gen, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 0, 1, 1, 2, 3]) if kw["q_ids"] else None
    bank = torch.randn(5, d, generator=gen, dtype=torch.float64) if kw.get("bank") else None
    bank_ids = torch.tensor([0, 3, 9, 1, 1]) if kw.get("bank_ids") else None

    def fn(q, k, tau):
        return info_nce(q, k, ids, ids, temperature=tau, symmetric=kw.get("symmetric", False),
                        exclude_self=kw["exclude_self"], bank=bank, bank_ids=bank_ids,
                        bank_same_id=kw.get("bank_same_id", "positive"), reduction="none",
                        backend="reference").double()

    assert torch.autograd.gradcheck(fn, (q, k, tau), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_reference_no_column_and_no_positive_rows_are_zero_not_nan():
    q = torch.randn(1, 8, requires_grad=True)
    ids = torch.zeros(1, dtype=torch.long)
    loss, stats = info_nce(q, q, ids, ids, temperature=0.1, exclude_self=True, return_stats=True, backend="reference")
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(q.grad).all()
    assert stats == InfoNCEStats(n_anchors=1, n_without_positive=1, mean_positives=0.0)


# ----------------------------------------------------------------------------- triton vs reference
_OPTION_CASES = {
    "ids-multi-positive": dict(),
    "diagonal-no-ids": dict(ids=None, m=37),
    "exclude-self": dict(exclude_self=True),
    "bank-all-negatives": dict(bank=29),
    "bank-ids-positive": dict(bank=29, bank_ids=True),
    "bank-ids-mask": dict(bank=29, bank_ids=True, bank_same_id="mask"),
    "exclude-self-bank-mask": dict(exclude_self=True, bank=21, bank_ids=True, bank_same_id="mask"),
    "symmetric-mean": dict(symmetric=True, reduction="mean"),
    "symmetric-none-no-ids": dict(symmetric=True, ids=None, m=37),
    "symmetric-exclude-self-bank": dict(symmetric=True, exclude_self=True, bank=13, bank_ids=True),
    "symmetric-sum-zero-positives": dict(symmetric=True, reduction="sum", n_ids=40),
    "sum-no-normalize": dict(reduction="sum", normalize=False, scale=1.7),
    "fixed-temperature": dict(learn_tau=False, reduction="mean"),
    "zero-positive-anchors": dict(n_ids=60),
}


@needs_triton
@pytest.mark.parametrize("name", list(_OPTION_CASES))
def test_triton_matches_reference_fp32(name):
    kw = _OPTION_CASES[name]
    got, want = _case("triton", **kw), _case("reference", **kw)
    _assert_matches(got, want, torch.float32)
    if name == "zero-positive-anchors":
        assert got["stats"].n_without_positive > 0
        assert got["stats"].mean_positives > 0


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["ids-multi-positive", "exclude-self", "bank-ids-positive", "symmetric-mean"])
def test_triton_matches_reference_half(dtype, name):
    kw = _OPTION_CASES[name]
    _assert_matches(_case("triton", dtype=dtype, **kw), _case("reference", dtype=dtype, **kw), dtype)


@needs_triton
@pytest.mark.parametrize("dtype,scale,normalize", [(torch.bfloat16, 1.0, True), (torch.float32, 4.0, False)])
def test_triton_stable_at_low_temperature(dtype, scale, normalize):
    """tau = 0.01: logits up to 100 (normalised) or 1600 (raw, scale 4); nothing may overflow."""
    kw = dict(dtype=dtype, tau=0.01, scale=scale, normalize=normalize, bank=19, exclude_self=True)
    got, want = _case("triton", **kw), _case("reference", **kw)
    assert torch.isfinite(want["out"]).all()
    _assert_matches(got, want, dtype)


@needs_triton
@pytest.mark.parametrize("n,m,d", [(16, 16, 16), (1, 3, 7), (5, 40, 512), (33, 17, 64)])
def test_triton_shapes(n, m, d):
    kw = dict(n=n, m=m, d=d, n_ids=3, bank=5 if d < 512 else 0, bank_ids=True)
    _assert_matches(_case("triton", **kw), _case("reference", **kw), torch.float32)


@needs_triton
def test_triton_single_anchor_with_no_column():
    q = torch.randn(1, 20, requires_grad=True)
    t = torch.tensor(0.07, requires_grad=True)
    ids = torch.zeros(1, dtype=torch.long)
    loss, stats = info_nce(q, q, ids, ids, temperature=t, exclude_self=True, return_stats=True, backend="triton")
    loss.backward()
    assert loss.item() == 0 and stats.n_without_positive == 1
    assert torch.equal(q.grad, torch.zeros_like(q)) and t.grad.item() == 0


@needs_triton
def test_triton_rows_non_contiguous_and_mixed_dtypes():
    gen = torch.Generator().manual_seed(11)
    n, m, d = 21, 34, 24
    q_big = torch.randn(n, 2 * d, generator=gen)
    k_t = torch.randn(d, m, generator=gen).requires_grad_()
    q = q_big[:, ::2].requires_grad_()  # stride (2d, 2)
    k = k_t.t()                          # stride (1, m)
    bank = torch.randn(40, d, generator=gen)[::2]  # stride (2d, 1), fp32 bank with fp32 keys
    q_ids, k_ids = torch.randint(0, 5, (n,), generator=gen), torch.randint(0, 5, (m,), generator=gen)
    tau = torch.tensor(0.3)
    assert not q.is_contiguous() and not k.is_contiguous()
    results = []
    for fn in (tn.info_nce_rows_triton, info_nce_rows_reference):
        q.grad = k_t.grad = None
        loss, npos = fn(q, k, q_ids, k_ids, tau, False, bank, None, False)
        (loss * torch.linspace(-1, 2, n)).sum().backward()
        results.append((loss.detach(), npos, q.grad.clone(), k_t.grad.clone()))
    (lt, nt, gqt, gkt), (lr, nr, gqr, gkr) = results
    assert torch.equal(nt, nr)
    torch.testing.assert_close(lt, lr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gqt, gqr, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gkt, gkr, rtol=1e-4, atol=1e-5)

    # bf16 anchors with fp32 keys are promoted; gradients come back in each input's dtype
    qb = q.detach().bfloat16().requires_grad_()
    kf = k.detach().clone().requires_grad_()
    loss, _ = tn.info_nce_rows_triton(qb, kf, q_ids, k_ids, tau)
    loss.sum().backward()
    assert qb.grad.dtype == torch.bfloat16 and kf.grad.dtype == torch.float32


@needs_triton
def test_custom_op_opcheck_and_compile_without_graph_break():
    gen = torch.Generator().manual_seed(4)
    q = _unit(17, 16, gen).requires_grad_()
    k = _unit(17, 16, gen).requires_grad_()
    bank = _unit(6, 16, gen)
    ids = torch.randint(0, 5, (17,), generator=gen)
    tau = torch.tensor(0.1, requires_grad=True)
    for args in ((q, k, ids, ids, tau, 0.0, False, bank, None, False, True),
                 (q, k, ids, ids, None, 0.1, True, bank, ids[:6], True, False)):
        torch.library.opcheck(torch.ops.tscl.info_nce_rows.default, args,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))

    def step(q, k, tau):
        return info_nce(q, k, ids, ids, temperature=tau, bank=bank, symmetric=True, backend="triton")

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    want = step(q, k, tau)
    want_grads = torch.autograd.grad(want, (q, k, tau))
    got = compiled(q, k, tau)
    got_grads = torch.autograd.grad(got, (q, k, tau))
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


@needs_triton
def test_poisoned_outputs_expose_a_skipped_tile(monkeypatch):
    """Drop the last program of every launch: the NaN poison must surface in loss, dq and dk."""
    q = _unit(37, 19, torch.Generator().manual_seed(0)).requires_grad_()
    k = _unit(37, 19, torch.Generator().manual_seed(1)).requires_grad_()
    ids = torch.arange(37)
    loss, npos = tn.info_nce_rows_triton(q, k, ids, ids, torch.tensor(0.1))
    assert torch.isfinite(loss).all() and (npos == 1).all()

    real_grid = tn._grid
    monkeypatch.setattr(tn, "_grid", lambda n, block, split=1: lambda meta: (real_grid(n, block)(meta)[0] - 1, split))
    loss, npos = tn.info_nce_rows_triton(q, k, ids, ids, torch.tensor(0.1))
    assert torch.isnan(loss[-5:]).all() and (npos[-5:] == -1).all() and torch.isfinite(loss[:32]).all()
    dq, dk = torch.autograd.grad(loss[:32].sum(), (q, k))
    assert torch.isnan(dq[-5:]).all() and torch.isnan(dk[-5:]).all()


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bad_inputs_raise_clear_errors(backend):
    if backend == "triton":
        require_triton()
    q, k = torch.randn(4, 8), torch.randn(4, 8)
    ids = torch.arange(4)
    with pytest.raises(ValueError, match="embedding dim"):
        info_nce(q, torch.randn(4, 6), backend=backend)
    with pytest.raises(ValueError, match="exclude_self needs"):
        info_nce(q, torch.randn(5, 8), ids, torch.arange(5), exclude_self=True, backend=backend)
    with pytest.raises(TypeError, match="integer tensor"):
        info_nce(q, k, ids.float(), ids.float(), backend=backend)
    with pytest.raises(ValueError, match="bank_ids given without a bank"):
        info_nce(q, k, ids, ids, bank_ids=ids, backend=backend)
    with pytest.raises(ValueError, match="bank must be"):
        info_nce(q, k, ids, ids, bank=torch.randn(3, 5), backend=backend)
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        info_nce(q, k, temperature=0.0, backend=backend)
    with pytest.raises(ValueError, match="needs N == M"):
        info_nce(q, torch.randn(3, 8), backend=backend)
    with pytest.raises(ValueError, match="reduction"):
        info_nce(q, k, reduction="max", backend=backend)


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="backend"):
        info_nce(torch.randn(3, 4), torch.randn(3, 4), backend="cuda")


def test_block_d():
    require_triton()
    assert tn._block_d(19) == 32 and tn._block_d(8) == 16 and tn._block_d(512) == 512


# ----------------------------------------------------------------------------- non-finite inputs
def _nonfinite_case(backend, where, value=float("nan"), normalize=False, reduction="none", seed=0):
    """Ids chosen so that the poisoned key / bank entry is, for every anchor, only a negative
    ("negatives", "bank"), only a positive ("positives"), or a masked bank entry ("bank-masked")."""
    gen = torch.Generator().manual_seed(seed)
    n, m, d, nb = 37, 41, 19, 23
    q, k, bank = _unit(n, d, gen), _unit(m, d, gen), _unit(nb, d, gen)
    q_ids = torch.randint(0, 5, (n,), generator=gen)
    k_ids = torch.randint(0, 5, (m,), generator=gen)
    bank_ids, mode = None, "positive"
    if where == "negatives":
        k_ids[7] = 99  # no anchor has id 99
        k[7, 3] = value
    elif where == "positives":
        q_ids.zero_()
        k_ids[7] = 0  # a positive of every anchor
        k[7, 3] = value
    elif where == "bank":
        bank[5, 0] = value
    elif where == "bank-positive":
        q_ids.zero_()
        bank_ids = torch.full((nb,), 3)
        bank_ids[5] = 0  # a bank positive of every anchor
        bank[5, 0] = value
    elif where == "bank-masked":
        bank_ids = torch.full((nb,), 99)
        bank_ids[5] = q_ids[0]  # masked for the anchors sharing q_ids[0], a negative for the others
        bank[5, 0] = value
        mode = "mask"
    elif where == "q":
        q[4, 2] = value
    elif where == "k":
        k[11, 0] = value
    else:
        raise ValueError(where)
    q, k = q.to(DEVICE).requires_grad_(), k.to(DEVICE).requires_grad_()
    ids = [t.to(DEVICE) if t is not None else None for t in (q_ids, k_ids, bank_ids)]
    tau = torch.tensor(0.2, device=DEVICE, requires_grad=True)
    out = info_nce(q, k, ids[0], ids[1], temperature=tau, bank=bank.to(DEVICE), bank_ids=ids[2],
                   bank_same_id=mode, normalize=normalize, reduction=reduction, backend=backend)
    weight = torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape).to(DEVICE)
    (out * weight).sum().backward()
    return out.detach(), q.grad, k.grad, tau.grad, q_ids


@needs_triton
@pytest.mark.parametrize("where", ["negatives", "positives", "bank", "bank-positive"])
def test_nan_input_is_never_hidden(where):
    """A NaN reaching any anchor's logits gives NaN in exactly the reference's rows, and the
    mean is NaN on both backends (a finite loss from NaN inputs would train on garbage)."""
    got, want = _nonfinite_case("triton", where), _nonfinite_case("reference", where)
    assert torch.isnan(want[0]).any()
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5, equal_nan=True)
    for g, w, name in zip(got[1:3], want[1:3], ("dq", "dk")):
        assert torch.equal(torch.isnan(g), torch.isnan(w)), name
        assert torch.isnan(g).any(), name
    assert torch.isnan(got[3]) and torch.isnan(want[3])
    for backend in ("triton", "reference"):
        assert torch.isnan(_nonfinite_case(backend, where, reduction="mean")[0])


@needs_triton
def test_nan_in_a_masked_bank_entry_stays_out_of_the_masked_rows():
    """bank_same_id="mask" removes the entry from those anchors' denominators, NaN included."""
    got, want = _nonfinite_case("triton", "bank-masked"), _nonfinite_case("reference", "bank-masked")
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5, equal_nan=True)
    masked = want[4] == want[4][0]
    assert torch.isfinite(got[0][masked]).all() and torch.isnan(got[0][~masked & (got[0] != 0)]).all()


@needs_triton
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("where,value,normalize", [
    ("q", float("inf"), True), ("k", float("-inf"), True), ("q", float("nan"), True),
    ("bank", float("inf"), True), ("k", float("inf"), False),
])
def test_inf_or_nan_anywhere_gives_nan_or_nonfinite_loss(backend, where, value, normalize):
    """Normalised (every method): an infinity becomes NaN in F.normalize, so the loss is NaN.
    Raw logits (normalize=False) with an infinity: the loss is not finite."""
    loss = _nonfinite_case(backend, where, value, normalize=normalize, reduction="mean")[0]
    if normalize:
        assert torch.isnan(loss)
    else:
        assert not torch.isfinite(loss)


@needs_triton
@pytest.mark.parametrize("fn", ["triton", "reference"])
@pytest.mark.parametrize("tau", [float("nan"), float("inf"), 0.0, -0.1])
def test_bad_temperature_tensor_inside_the_rows_gives_nan(fn, tau):
    """Where the entry point does not read the temperature back (CUDA, torch.compile), the
    rows themselves turn a non-finite or non-positive temperature into a NaN loss."""
    rows = tn.info_nce_rows_triton if fn == "triton" else info_nce_rows_reference
    q = _unit(9, 8, torch.Generator().manual_seed(0))
    ids = torch.arange(9) % 3
    loss, npos = rows(q, q, ids, ids, torch.tensor(tau), True)
    assert torch.isnan(loss).all() and (npos == 2).all()


def test_nonfinite_inputs_names_the_culprits():
    from tscl.kernels import nonfinite_inputs

    q, k, bank = torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4)
    assert nonfinite_inputs(q=q, k=k, bank=bank, bank_ids=torch.arange(5), temperature=0.1) == []
    bank[2, 1] = float("nan")
    k[0, 0] = float("-inf")
    assert nonfinite_inputs(q=q, k=k, bank=bank, temperature=torch.tensor(0.1)) == ["k", "bank"]
    assert nonfinite_inputs(q=q, bank=None, temperature=float("inf")) == ["temperature"]
    assert nonfinite_inputs(q=q.bfloat16(), k=k.half()) == ["k"]


# ----------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_argument_checks(backend):
    if backend == "triton":
        require_triton()
    q, k = torch.randn(4, 8), torch.randn(4, 8)
    ids = torch.arange(4)
    with pytest.raises(ValueError, match="exclude_self=True needs ids"):
        info_nce(q, k, exclude_self=True, backend=backend)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="finite and > 0"):
            info_nce(q, k, temperature=bad, backend=backend)
        with pytest.raises(ValueError, match="finite and > 0"):
            info_nce(q, k, temperature=torch.tensor(bad, requires_grad=True), backend=backend)
    with pytest.raises(TypeError, match="floating-point"):
        info_nce(q, k, temperature=torch.tensor(1), backend=backend)
    with pytest.raises(ValueError, match="one value"):
        info_nce(q, k, temperature=torch.ones(2), backend=backend)
    meta = torch.empty(4, 8, device="meta")
    with pytest.raises(ValueError, match="k is on meta"):
        info_nce(q, meta, backend=backend)
    with pytest.raises(ValueError, match="bank is on meta"):
        info_nce(q, k, ids, ids, bank=torch.empty(3, 8, device="meta"), backend=backend)


@needs_triton
def test_int64_offsets_are_chosen_past_int32_and_give_the_same_numbers(monkeypatch):
    """N * D near 2**31 needs int64 offsets; the int64 kernels must agree with the int32 ones
    (a real 2**31-element operand does not fit this machine, so the flag is forced)."""
    big = torch.empty(2**31 // 128 + 1, 128, device="meta")
    small = torch.empty(4096, 128, device="meta")
    assert tn._idx64(big) and not tn._idx64(small, small, None)
    # a forced split's partials [split, N, D] count too: 4096 x 128 x 5000 splits pass int32
    assert not tn._idx64(small, extra=8 * 4096 * 128) and tn._idx64(small, extra=5000 * 4096 * 128)
    want = _case("triton", bank=13, bank_ids=True, symmetric=True)
    monkeypatch.setattr(tn, "_idx64", lambda *tensors, **kw: True)
    got = _case("triton", bank=13, bank_ids=True, symmetric=True)
    for name in ("out", "dq", "dk", "dtau"):
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


# ----------------------------------------------------------------------------- separable positives, split-K
@pytest.fixture
def positives(monkeypatch):
    """Force where the positives are found: ``positives("separable")`` or ``positives("loop")``."""
    def force(path, split=None):
        monkeypatch.setattr(tn, "POSITIVES", path)
        monkeypatch.setattr(tn, "FORCE_SPLIT", split)
    return force


@needs_triton
@pytest.mark.parametrize("name", list(_OPTION_CASES))
def test_separable_positives_match_reference_fp32(name, positives):
    """Positives from per-id key sums and id histograms, outside the N x M loop: every option."""
    positives("separable")
    kw = _OPTION_CASES[name]
    _assert_matches(_case("triton", **kw), _case("reference", **kw), torch.float32)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["exclude-self", "bank-ids-positive", "symmetric-exclude-self-bank",
                                  "exclude-self-bank-mask"])
def test_separable_positives_match_reference_half(dtype, name, positives):
    positives("separable")
    kw = _OPTION_CASES[name]
    _assert_matches(_case("triton", dtype=dtype, **kw), _case("reference", dtype=dtype, **kw), dtype)


@needs_triton
@pytest.mark.parametrize("n,m,d", [(1, 3, 7), (33, 17, 64), (5, 40, 512)])
def test_separable_positives_odd_shapes(n, m, d, positives):
    positives("separable")
    kw = dict(n=n, m=m, d=d, n_ids=3, bank=5 if d < 512 else 0, bank_ids=True)
    _assert_matches(_case("triton", **kw), _case("reference", **kw), torch.float32)


@needs_triton
@pytest.mark.parametrize("path", ["separable", "loop"])
@pytest.mark.parametrize("split", [2, 3, 7])
@pytest.mark.parametrize("name,kw", [
    ("moco", dict(n=20, m=20, ids=None, bank=150)),
    ("pmq-positive", dict(n=24, m=24, bank=90, bank_ids=True, n_ids=6)),
    ("pmq-mask", dict(n=24, m=24, bank=90, bank_ids=True, bank_same_id="mask", n_ids=6)),
    ("ntxent-symmetric", dict(n=30, exclude_self=True, symmetric=True, bank=40, bank_ids=True, n_ids=8)),
])
def test_split_k_matches_reference(name, kw, split, path, positives):
    """Column splits (forced; 7 leaves some splits without a tile) merge exactly: the
    log-sum-exp from per-split (max, sum), dq and dtau from per-split partials."""
    positives(path, split)
    _assert_matches(_case("triton", **kw), _case("reference", **kw), torch.float32)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_split_k_half(dtype, positives):
    positives("separable", 4)
    kw = dict(n=19, m=19, ids=None, bank=130, dtype=dtype)
    _assert_matches(_case("triton", **kw), _case("reference", **kw), dtype)


@needs_triton
def test_split_k_nan_in_bank_reaches_every_row(positives):
    positives("separable", 3)
    got, want = _nonfinite_case("triton", "bank"), _nonfinite_case("reference", "bank")
    assert torch.isnan(got[0]).all() and torch.isnan(want[0]).all()
    for g, w in zip(got[1:3], want[1:3]):
        assert torch.equal(torch.isnan(g), torch.isnan(w))


@needs_triton
def test_split_k_and_separable_poison_exposes_a_skipped_program(monkeypatch, positives):
    """Drop the last split of every launch: its rows' partials stay NaN, so loss and dq do too."""
    positives("separable", 3)
    q = _unit(37, 19, torch.Generator().manual_seed(0)).requires_grad_()
    k = _unit(37, 19, torch.Generator().manual_seed(1)).requires_grad_()
    bank = _unit(50, 19, torch.Generator().manual_seed(2))
    ids = torch.arange(37)
    loss, npos = tn.info_nce_rows_triton(q, k, ids, ids, torch.tensor(0.1), bank=bank)
    assert torch.isfinite(loss).all() and (npos == 1).all()
    real_grid = tn._grid
    monkeypatch.setattr(tn, "_grid", lambda n, block, split=1: lambda meta: (real_grid(n, block)(meta)[0],
                                                                           max(split - 1, 1)))
    loss, _ = tn.info_nce_rows_triton(q, k, ids, ids, torch.tensor(0.1), bank=bank)
    assert torch.isnan(loss).all()
    monkeypatch.setattr(tn, "_grid", real_grid)
    loss, _ = tn.info_nce_rows_triton(q, k, ids, ids, torch.tensor(0.1), bank=bank)
    monkeypatch.setattr(tn, "_grid", lambda n, block, split=1: lambda meta: (real_grid(n, block)(meta)[0],
                                                                           max(split - 1, 1)))
    (dq,) = torch.autograd.grad(loss.sum(), (q,))
    assert torch.isnan(dq).all()


def test_split_count_rule():
    require_triton()
    cpu = torch.device("cpu")
    # MoCo: 256 anchors (2 row programs of 128) over 256 keys + a 65,536 queue: split to fill 132 SMs
    s = tn._split(256, 256 + 65536, 128, cpu)
    assert 32 <= s <= 66 and s * tn.triton.cdiv(256, 128) <= 2 * 132
    assert tn._split(65536, 65536, 128, cpu) == 1            # rows alone fill the SMs
    assert tn._split(256, 512, 128, cpu) == 1                 # too few columns to share
    assert tn._split(4096, 4096, 128, cpu) == 4               # 32 row programs, 4 x 1024 columns
    # the dq partials [split, N, D] fp32 stay within SPLIT_PARTIAL_BYTES
    s = tn._split(8, 10**7, 4096, cpu)
    assert s * 4 * 8 * 4096 <= tn.SPLIT_PARTIAL_BYTES and s >= 1


def test_separable_rule_and_codes():
    require_triton()
    assert tn._separable(1024, 1024, 0) and not tn._separable(37, 53, 29) and tn._separable(256, 256, 65536)
    q_ids = torch.tensor([5, -3, 7, 5, 10**12, 8])
    k_side = torch.tensor([7, 5, 5, 10**12, 2, -3, 7])
    qc, kc, u, order, start = tn._codes(q_ids, k_side)
    assert u == k_side.numel() + 1 and qc.dtype == kc.dtype == torch.int32
    for i in range(q_ids.numel()):
        same = (k_side == q_ids[i]).nonzero().flatten()
        if same.numel():
            assert (kc[same] == qc[i]).all()
            assert ((kc == qc[i]) == (k_side == q_ids[i])).all()
        else:
            assert qc[i] == u - 1  # id 8: no key has it
    # per-code sums and counts in the sorted order (no atomics): the rows of each id, in fp32
    values = torch.arange(k_side.numel() * 3, dtype=torch.float32).reshape(-1, 3).bfloat16()
    sums, counts = tn._segment_sum(values, None, order, start, u)
    assert counts[qc.long()].tolist() == [2, 1, 2, 2, 1, 0]
    for i in range(q_ids.numel()):
        want = values[k_side == q_ids[i]].float().sum(0)
        assert torch.equal(sums[qc[i].long()], want)
    # rows past the first operand come from the second (bank positives), or are left out without it
    first, rest = values[:4], values[4:]
    sums2, counts2 = tn._segment_sum(first, rest, order, start, u)
    assert torch.equal(sums2, sums) and torch.equal(counts2, counts)
    sums3, counts3 = tn._segment_sum(first, None, order, start, u)
    assert counts3[qc.long()].tolist() == [2, 0, 1, 2, 1, 0]
    assert torch.equal(sums3[qc[1].long()], torch.zeros(3))
