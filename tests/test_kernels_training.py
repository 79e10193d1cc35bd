"""A short bf16 training run through the fused kernels (Triton's interpreter) tracks the float64 reference.

A linear encoder learns to pull two noisy views of 16 prototypes together (NT-Xent form: q = k =
both views, ids = prototype, exclude_self) at temperature 0.05, from a loss of 3.3 to 0.013 in
25 SGD steps; by the end the positive holds >= 95 % of every anchor's softmax (the confident
regime of a trained encoder). The same initial weights are trained twice: through the fused
kernels with bf16 embeddings, and through the PyTorch reference in float64. The fused loss curve
must stay within ``0.01 + 0.03 * loss`` of the reference's at every step (measured: within 1 %
of the loss, 0.032 at the largest loss), for either positive path.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tscl.kernels import info_nce  # noqa: E402

from test_kernels import require_triton, tn  # noqa: E402  (fails, never skips silently, where Triton cannot run)

STEPS, LR, TAU = 25, 2.0, 0.05


def _data(seed=0, prototypes=16, d_in=24):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(prototypes, d_in, generator=gen, dtype=torch.float64)
    views = centres.repeat(2, 1) + torch.randn(2 * prototypes, d_in, generator=gen, dtype=torch.float64)
    ids = torch.arange(prototypes).repeat(2)
    return views, ids


def _train(backend, dtype, x, ids, w0):
    w = w0.clone().to(torch.float64).requires_grad_()
    curve, positive_mass = [], []
    for _ in range(STEPS):
        z = F.normalize(x @ w, dim=-1).to(dtype)
        loss = info_nce(z, z, ids, ids, temperature=TAU, exclude_self=True, normalize=False, backend=backend)
        (grad,) = torch.autograd.grad(loss, (w,))
        with torch.no_grad():
            w -= LR * grad
            s = (z.double() @ z.double().T / TAU).fill_diagonal_(float("-inf"))
            positive_mass.append(float(torch.softmax(s, 1)[ids[:, None] == ids[None, :]].reshape(len(ids), -1)
                                       .sum(1).min()))
        curve.append(float(loss.detach()))
    return torch.tensor(curve), positive_mass


@pytest.mark.parametrize("path", ["separable", "loop"])
def test_bf16_training_curve_tracks_the_float64_reference(path, monkeypatch):
    require_triton()
    monkeypatch.setattr(tn, "POSITIVES", path)
    x, ids = _data()
    w0 = torch.randn(x.shape[1], 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) / 5
    want, mass = _train("reference", torch.float64, x, ids, w0)
    got, _ = _train("triton", torch.bfloat16, x, ids, w0)
    assert mass[-1] >= 0.95, f"the run never reached the confident regime (positive mass {mass[-1]:.3f})"
    assert want[-1] < 0.01 * want[0], "the reference run did not learn"
    gap = (got - want).abs()
    assert (gap <= 0.01 + 0.03 * want).all(), list(zip(got.tolist(), want.tolist()))
