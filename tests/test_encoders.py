"""Encoders: shapes, registry, channel masks, and a few contrastive training steps each."""
from __future__ import annotations

import pytest
import torch

from tscl.encoders import ENCODERS, ProjectionHead, build_encoder, list_encoders, mask_channels, register_encoder
from tscl.kernels import info_nce

torch.set_num_threads(2)

# small configurations so the whole file runs in well under two minutes on two cores
TS_SMALL = {
    "cnn1d": {"widths": (16, 32, 32)},
    "resnet1d": {"width": 0.25},
}


def contrastive_losses(encoder, make_views, steps: int = 8, lr: float = 3e-3, proj_dim: int = 32, seed: int = 0):
    """Train ``encoder`` + a projection head on two fixed views of a fixed batch (SimCLR
    NT-Xent through ``info_nce``) and return the loss at every step."""
    torch.manual_seed(seed)
    v1, v2 = make_views()  # each a tuple of forward arguments
    n = (v1[0] if isinstance(v1, tuple) else v1).shape[0]
    head = ProjectionHead(encoder.embed_dim, 64, proj_dim)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    ids = torch.arange(n).repeat(2)
    losses = []
    encoder.train()
    for _ in range(steps):
        z = head(torch.cat([encoder(*v1), encoder(*v2)]))
        loss = info_nce(z, z, ids, ids, temperature=0.2, exclude_self=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def assert_decreases(losses):
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < 0.9 * losses[0], f"loss did not decrease: {losses}"


def noisy_views(x, *extra, sigma=0.1):
    g = torch.Generator().manual_seed(1)
    return ((x + sigma * torch.randn(x.shape, generator=g), *extra), (x + sigma * torch.randn(x.shape, generator=g), *extra))


# ---------------------------------------------------------------- registry


def test_registry_lists_and_builds():
    names = list_encoders()
    assert names == sorted(names)
    for name in ("resnet1d", "cnn1d"):
        assert name in ENCODERS
    enc = build_encoder("cnn1d", 3)
    assert enc.embed_dim == 128


def test_unknown_encoder_names_the_known_ones():
    with pytest.raises(ValueError) as err:
        build_encoder("no_such_net", 12)
    msg = str(err.value)
    assert "no_such_net" in msg and "resnet1d" in msg and "cnn1d" in msg


def test_register_twice_is_an_error():
    @register_encoder("_tmp_test_encoder")
    class Tmp(torch.nn.Module):
        def __init__(self, in_channels):
            super().__init__()

    try:
        assert register_encoder("_tmp_test_encoder")(Tmp) is Tmp  # same object: fine
        with pytest.raises(ValueError):
            register_encoder("_tmp_test_encoder")(ProjectionHead)
    finally:
        ENCODERS.pop("_tmp_test_encoder")


def test_projection_head():
    head = ProjectionHead(320, 320, 128)
    assert head(torch.randn(5, 320)).shape == (5, 128)
    bn = ProjectionHead(16, 32, 8, batch_norm=True)
    assert bn(torch.randn(4, 16)).shape == (4, 8)


# ---------------------------------------------------------------- time-series CNNs


@pytest.mark.parametrize("name", sorted(TS_SMALL))
@pytest.mark.parametrize("length", [1000, 777])
def test_ts_cnn_shapes(name, length):
    enc = build_encoder(name, 12, **TS_SMALL[name]).eval()
    out = enc(torch.randn(3, 12, length))
    assert out.shape == (3, enc.embed_dim)


def test_resnet1d_defaults_follow_pclr():
    enc = build_encoder("resnet1d", 12)
    assert enc.embed_dim == 320
    assert [u.conv2.out_channels for u in enc.units] == [128, 196, 256, 320]
    assert enc.stem.kernel_size == (16,) and enc.stem.out_channels == 64
    half = build_encoder("resnet1d", 12, width=0.5)
    assert half.embed_dim == 160


def test_mask_channels_zero_and_rescale():
    x = torch.ones(2, 4, 5)
    m = torch.tensor([[True, True, False, False], [True, True, True, True]])
    y = mask_channels(x, m)
    assert torch.all(y[0, 2:] == 0) and torch.allclose(y[0, :2], torch.full((2, 5), 2.0))
    assert torch.equal(y[1], x[1])
    assert torch.equal(mask_channels(x, None), x)
    with pytest.raises(ValueError):
        mask_channels(x, torch.ones(2, 3, dtype=torch.bool))
    # a [C] mask broadcasts over the batch; an all-missing sample becomes zeros
    assert torch.all(mask_channels(x, torch.zeros(4, dtype=torch.bool)) == 0)


@pytest.mark.parametrize("name", sorted(TS_SMALL))
def test_ts_cnn_mask_is_used(name):
    enc = build_encoder(name, 12, **TS_SMALL[name]).eval()
    x = torch.randn(2, 12, 500)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, [3, 7]] = False
    out = enc(x, mask)
    x2 = x.clone()
    x2[:, [3, 7]] = 100 * torch.randn(2, 2, 500)
    assert torch.allclose(enc(x2, mask), out, atol=1e-5)  # masked values do not matter
    assert not torch.allclose(enc(x2), enc(x), atol=1e-3)  # ...but they do without the mask
    assert not torch.allclose(out, enc(x), atol=1e-5)  # the mask is not ignored


@pytest.mark.parametrize("name", sorted(TS_SMALL))
def test_ts_cnn_trains(name):
    enc = build_encoder(name, 12, **TS_SMALL[name])
    x = torch.randn(16, 12, 400, generator=torch.Generator().manual_seed(0))
    assert_decreases(contrastive_losses(enc, lambda: noisy_views(x)))
