"""CLIP as a two-tower model outside the trainer (any paired tensors), and retrieval recall."""
from __future__ import annotations

import pytest
import torch

from tscl.encoders import build_encoder
from tscl.methods.clip import CLIP, fit_pairs
from tscl.probes.retrieval import retrieval_recall


pytestmark = pytest.mark.usefixtures("one_thread")


def test_retrieval_recall_extremes():
    z = torch.nn.functional.normalize(torch.randn(50, 16), dim=-1)
    perfect = retrieval_recall(z, z, ks=(1, 5))
    assert perfect["a_to_b@1"] == 1.0 and perfect["b_to_a@5"] == 1.0
    assert perfect["chance@1"] == pytest.approx(1 / 50) and perfect["chance@5"] == pytest.approx(5 / 50)
    shuffled = retrieval_recall(z, z.roll(1, dims=0), ks=(1,))
    assert shuffled["a_to_b@1"] == 0.0 and shuffled["b_to_a@1"] == 0.0
    # all-equal embeddings: ties count against the pair, so recall@1 is 0, not 1
    assert retrieval_recall(torch.ones(10, 4), torch.ones(10, 4), ks=(1,))["a_to_b@1"] == 0.0
    # random embeddings sit near chance
    r = retrieval_recall(torch.randn(2000, 32), torch.randn(2000, 32), ks=(100,))
    assert abs(r["a_to_b@100"] - 0.05) < 0.03
    with pytest.raises(ValueError):
        retrieval_recall(torch.randn(5, 4), torch.randn(6, 4))


def paired(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, 6, generator=g)
    a = u @ torch.randn(6, 16, generator=g) + 0.1 * torch.randn(n, 16, generator=g)
    b = torch.tanh(u @ torch.randn(6, 10, generator=g)) + 0.1 * torch.randn(n, 10, generator=g)
    return a, b


def test_clip_pairs_learns_pairs_and_temperature():
    torch.manual_seed(0)
    a, b = paired()
    model = CLIP(build_encoder("tabular", 16, embed_dim=32, hidden_dim=64),
                 tower_b=build_encoder("tabular", 10, embed_dim=32, hidden_dim=64), proj_dim=32)
    tau0 = float(model.temperature.detach())
    assert tau0 == pytest.approx(0.07)
    # the temperature is learnable: the loss sends a gradient to it
    model.pair_loss([a[:32]], [b[:32]]).backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0
    model.zero_grad()
    model.eval()
    with torch.no_grad():
        before = retrieval_recall(model.embed_a(a), model.embed_b(b), ks=(1, 10))
    losses = fit_pairs(model, [a], [b], steps=80, batch_size=64, lr=3e-3)
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert float(model.temperature.detach()) != pytest.approx(tau0)
    model.eval()
    with torch.no_grad():
        after = retrieval_recall(model.embed_a(a), model.embed_b(b), ks=(1, 10))
    for key in ("a_to_b@10", "b_to_a@10"):
        assert after[key] > 5 * after["chance@10"] and after[key] > before[key] + 0.2


def test_clip_pairs_ecg_with_tabular():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    labs = torch.randn(32, 4, generator=g)
    t = torch.linspace(0, 1, 200)
    ecg = (labs[:, :1, None] * torch.sin(2 * torch.pi * (2 + labs[:, 1:2, None]) * t)).expand(-1, 12, -1).contiguous()
    model = CLIP(build_encoder("cnn1d", 12, widths=(16, 32)), tower_b=build_encoder("tabular", 4, embed_dim=32, hidden_dim=32),
                 proj_dim=16)
    assert model.embed_a(ecg).shape == (32, 16) and torch.allclose(model.embed_a(ecg).norm(dim=-1), torch.ones(32), atol=1e-5)
    losses = fit_pairs(model, [ecg], [labs], steps=30, batch_size=32, lr=3e-3)
    assert losses[-1] < 0.8 * losses[0], losses
