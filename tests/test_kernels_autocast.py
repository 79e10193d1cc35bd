"""Cast at the call: under autocast the InfoNCE backends receive the autocast dtype, for
every method and for fp32 banks and momentum keys; outside autocast q and k are promoted
and the bank follows them; fp32 callers who allow TF32 get it.

CPU autocast with bf16 stands in for CUDA autocast: the entry point applies the same rule
for every device type, and the spy sits on whatever function it dispatches to (the
reference on CPU).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tscl.kernels as K  # noqa: E402
from tscl.kernels import api  # noqa: E402
from tscl.encoders import build_encoder  # noqa: E402

from test_kernels import require_triton, tn  # noqa: E402  (fails, never skips silently, where Triton cannot run)


@pytest.fixture
def _triton_required():
    require_triton()


needs_triton = pytest.mark.usefixtures("_triton_required")


class RowsSpy:
    """Wraps the entry point's dispatch: records the dtypes and flags each backend call receives."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __call__(self, backend, q):
        rows = self.real(backend, q)

        def spied(q, k, q_ids, k_ids, temperature, exclude_self, bank, bank_ids, mask_bank, **kw):
            self.calls.append(dict(q=q.dtype, k=k.dtype, bank=None if bank is None else bank.dtype, **kw))
            return rows(q, k, q_ids, k_ids, temperature, exclude_self, bank, bank_ids, mask_bank, **kw)

        return spied


@pytest.fixture
def spy(monkeypatch):
    s = RowsSpy(api._rows_backend)
    monkeypatch.setattr(api, "_rows_backend", s)
    return s


def _methods():
    try:
        from tscl.methods import METHODS
    except ImportError as err:  # the methods' samplers need polars
        pytest.skip(f"tscl.methods is not importable here: {err!r}")
    return METHODS


def _method_names():
    try:
        from tscl.methods import METHODS
    except ImportError:
        return ["simclr"]
    return sorted(METHODS)


def _batch(n=8, c=12, t=400):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, t, generator=g)
    return x, {"patient_ids": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), "record_ids": torch.arange(n) + 100,
               "labels": torch.tensor([0, 1, 0, 1, 1, 1, 0, 2])}


@pytest.mark.parametrize("name", _method_names())
def test_every_method_hands_bf16_to_the_kernel_under_autocast(spy, name):
    methods = _methods()
    kw = {"proj_dim": 16}
    if name in ("moco", "pmq"):
        kw["queue_size"] = 64
    if name in ("clocs-cmlc", "clocs-cmsmlc"):
        kw["leads"] = [1, 7, 9]
    if name == "clip":  # two towers: the tabular side takes 5 columns per row
        kw["b_channels"] = 5
    torch.manual_seed(0)
    method = methods[name](build_encoder("cnn1d", 12, widths=[8, 16]), **kw)
    if hasattr(method, "queue_filled"):  # a full fp32 queue: the bank must be cast, not promote q and k
        method.queue_filled.fill_(method.queue.shape[0])
        if hasattr(method, "queue_ids"):
            method.queue_ids.copy_(torch.arange(method.queue.shape[0]) % 4)
        assert method.queue.dtype == torch.float32
    x, batch = _batch()
    batch["tabular"] = torch.randn(x.shape[0], 5, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method(x, batch)
    loss.backward()
    assert spy.calls, f"{name} never reached the kernel"
    for call in spy.calls:
        assert call["q"] == call["k"] == torch.bfloat16, (name, call)
        assert call["bank"] in (None, torch.bfloat16), (name, call)
    if name in ("moco", "pmq"):
        assert all(c["bank"] == torch.bfloat16 for c in spy.calls)
    assert torch.isfinite(loss)
    grads = [p.grad for p in method.parameters() if p.requires_grad]
    assert any(g is not None for g in grads) and all(torch.isfinite(g).all() for g in grads if g is not None)


def test_outside_autocast_q_and_k_promote_and_the_bank_follows(spy):
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    bank = torch.randn(5, 8, generator=g)
    K.info_nce(q.bfloat16(), k.bfloat16(), bank=bank)  # fp32 queue with bf16 embeddings
    K.info_nce(q.bfloat16(), k, bank=bank.bfloat16())  # fp32 momentum keys
    K.info_nce(q.double(), k.double(), bank=bank.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float64 is never autocast (gradcheck)
        K.info_nce(q.double(), k.double())
    got = [(c["q"], c["k"], c["bank"]) for c in spy.calls]
    bf, f32, f64 = torch.bfloat16, torch.float32, torch.float64
    assert got == [(bf, bf, bf), (f32, f32, f32), (f64, f64, f64), (f64, f64, None)]


def test_reference_under_autocast_is_fp32_math_on_bf16_inputs():
    """The autocast result is the fp32 loss of the normalised inputs rounded to bf16 once."""
    g = torch.Generator().manual_seed(2)
    q, k, bank = torch.randn(12, 16, generator=g), torch.randn(12, 16, generator=g), torch.randn(7, 16, generator=g)
    ids = torch.arange(12) % 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = K.info_nce(q, k, ids, ids, bank=bank, reduction="none")
    rounded = [F.normalize(t, dim=-1).bfloat16().float() for t in (q, k, bank)]
    want = K.info_nce(*rounded[:2], ids, ids, bank=rounded[2], reduction="none", normalize=False)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@needs_triton
def test_triton_under_autocast_matches_the_reference(spy):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(21, 24, generator=g).requires_grad_()
    k = torch.randn(21, 24, generator=g).requires_grad_()
    bank = torch.randn(9, 24, generator=g)
    ids = torch.arange(21) % 5
    out, grads = [], []
    for backend in ("triton", "reference"):
        q.grad = k.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = K.info_nce(q, k, ids, ids, bank=bank, symmetric=True, backend=backend)
        loss.backward()
        out.append(loss.detach())
        grads.append((q.grad.clone(), k.grad.clone()))
    assert [c["q"] for c in spy.calls] == [torch.bfloat16] * 2
    torch.testing.assert_close(out[0], out[1], rtol=2e-4, atol=2e-4)
    for a, b in zip(*grads):
        assert a.dtype == torch.float32
        assert float((a - b).norm() / b.norm()) < 3e-2


@needs_triton
def test_fp32_callers_get_tf32_when_they_allow_it(spy):
    q, k = torch.randn(8, 16), torch.randn(8, 16)
    K.info_nce(q, k, backend="triton")
    K.info_nce(q, k, backend="triton", allow_tf32=True)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        K.info_nce(q, k, backend="triton")
        K.info_nce(q, k, backend="triton", allow_tf32=False)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert [c["allow_tf32"] for c in spy.calls] == [False, True, True, False]
    assert tn._precision(torch.float32, True) == "tf32" and tn._precision(torch.float32, False) == "ieee"
    assert tn._precision(torch.bfloat16, False) == "tf32"  # ignored by 16-bit dots
