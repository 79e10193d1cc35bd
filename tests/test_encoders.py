"""Encoders: shapes, registry, channel masks, and a few contrastive training steps each."""
from __future__ import annotations

import pytest
import torch

from tscl.encoders import (
    ENCODERS,
    ProjectionHead,
    build_encoder,
    list_encoders,
    mask_channels,
    register_encoder,
    truncate_recent,
)
from tscl.kernels import info_nce



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small: one intra-op thread is as fast and does not stall when the
    machine is shared (OpenMP spin-waiting). Restored afterwards for other test files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# small configurations so the whole file runs in well under two minutes on two cores
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
TS_SMALL = {
    "cnn1d": {"widths": (16, 32, 32)},
    "resnet1d": {"width": 0.25},
    "xresnet1d18": {"width": 0.25},
    "xresnet1d34": {"width": 0.125},
    "xresnet1d50": {"width": 0.125},
    "xresnet1d101": {"width": 0.125, "pool": "avg"},
    "transformer1d": {"channel_names": LEADS, "patch_len": 50, "dim": 32, "depth": 2, "heads": 4},
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
    for name in TS_SMALL:
        assert name in names
    enc = build_encoder("cnn1d", 3)
    assert enc.embed_dim == 128


def test_encoders_declare_their_modality_and_defaults():
    from tscl.catalog import DEFAULT_ENCODER
    from tscl.encoders import encoder_defaults, encoder_modality

    assert encoder_defaults("resnet1d") == {"width": 0.25} and encoder_defaults("cnn1d") == {}
    assert encoder_defaults("resnet1d") is not encoder_defaults("resnet1d")  # a copy: callers cannot change it
    for modality, name in DEFAULT_ENCODER.items():
        assert encoder_modality(name) == modality
    assert {encoder_modality(n) for n in list_encoders()} == {"waveform", "ehr", "image", "tabular"}


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
    x2[0, 3] = float("nan")
    assert torch.allclose(enc(x2, mask), out, atol=1e-5)  # not even a NaN
    assert not torch.allclose(enc(x2), enc(x), atol=1e-3)  # ...but they do without the mask
    assert not torch.allclose(out, enc(x), atol=1e-5)  # the mask is not ignored


@pytest.mark.parametrize("name", sorted(TS_SMALL))
def test_ts_cnn_trains(name):
    enc = build_encoder(name, 12, **TS_SMALL[name])
    deep = name in ("xresnet1d34", "xresnet1d101")  # many small layers: a smaller batch keeps CPU time down
    x = torch.randn(8 if deep else 16, 12, 128 if deep else 256, generator=torch.Generator().manual_seed(0))
    assert_decreases(contrastive_losses(enc, lambda: noisy_views(x)))


def test_xresnet1d_architecture():
    enc = build_encoder("xresnet1d101", 12)
    assert enc.embed_dim == 2 * 2048  # bottleneck 512 * 4, avg + max pooling
    assert len(enc.blocks) == 3 + 4 + 23 + 3
    assert len(enc.stem) == 4 and enc.stem[0][0].kernel_size == (5,)
    assert build_encoder("xresnet1d18", 12, pool="avg").embed_dim == 512
    with pytest.raises(ValueError):
        build_encoder("xresnet1d18", 12, pool="sum")


# ---------------------------------------------------------------- transformer1d


def small_transformer(**kw):
    torch.manual_seed(0)
    return build_encoder("transformer1d", 12, **{**TS_SMALL["transformer1d"], **kw}).eval()


@pytest.mark.parametrize("pool", ["cls", "attention"])
@pytest.mark.parametrize("time_encoding", ["sinusoidal", "learned"])
def test_transformer_variable_leads_and_lengths(pool, time_encoding):
    enc = small_transformer(pool=pool, time_encoding=time_encoding)
    assert enc(torch.randn(2, 12, 1000)).shape == (2, 32)
    three = enc(torch.randn(2, 3, 730), channels=["II", "V1", "V5"])
    assert three.shape == (2, 32)
    # the lead names matter: the same signal under other names gives another embedding
    x = torch.randn(1, 3, 500)
    assert not torch.allclose(enc(x, channels=["I", "II", "III"]), enc(x, channels=["V1", "V2", "V3"]), atol=1e-4)
    # a 12-lead record restricted to 3 leads by the mask == the 3-lead record itself
    x12 = torch.randn(2, 12, 600)
    keep = [1, 6, 10]
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, keep] = True
    sub = enc(x12[:, keep], channels=[LEADS[i] for i in keep])
    if time_encoding == "sinusoidal":  # same tokens, same order up to permutation-invariant attention
        assert torch.allclose(enc(x12, mask), sub, atol=1e-5)


def test_transformer_masked_channel_cannot_change_output():
    for pool in ("cls", "attention"):
        enc = small_transformer(pool=pool)
        x = torch.randn(3, 12, 500)
        mask = torch.ones(3, 12, dtype=torch.bool)
        mask[0, [2, 5]] = False
        mask[1, 0] = False
        out = enc(x, mask)
        x2 = x.clone()
        x2[0, [2, 5]] = 50 * torch.randn(2, 500)
        x2[1, 0] = float("nan")  # not even a NaN leaks through
        out2 = enc(x2, mask)
        assert torch.isfinite(out2).all()
        assert torch.allclose(out, out2, atol=1e-6)
        x3 = x.clone()
        x3[0, 3] += 1.0  # a present channel does change it
        assert not torch.allclose(enc(x3, mask)[0], out[0], atol=1e-5)
        assert torch.allclose(enc(x3, mask)[1:], out[1:], atol=1e-6)  # and only its own row
        # every channel missing: still finite (the [CLS] token stays)
        assert torch.isfinite(enc(x, torch.zeros(3, 12, dtype=torch.bool))).all()


def test_transformer_channel_errors():
    enc = small_transformer()
    with pytest.raises(ValueError, match="unknown channels"):
        enc(torch.randn(1, 2, 100), channels=["II", "Fp1"])
    with pytest.raises(ValueError, match="channels"):
        enc(torch.randn(1, 3, 100))
    with pytest.raises(ValueError):
        small_transformer(time_encoding="learned", max_patches=4)(torch.randn(1, 12, 1000))


# ---------------------------------------------------------------- EHR sequences


def test_truncate_recent_keeps_the_most_recent_events():
    pad = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1]]).bool()
    codes = torch.tensor([[1, 2, 3, 4, 5, 0], [6, 7, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 8, 9, 10, 11]])
    times = codes.float() * 10
    extra = torch.randn(4, 6, 2)
    m, c, t, e = truncate_recent(3, pad, codes, times, extra)
    assert m.shape == (4, 3) and c.shape == (4, 3) and e.shape == (4, 3, 2)
    assert c.tolist() == [[3, 4, 5], [6, 7, 0], [0, 0, 0], [9, 10, 11]]
    assert m.tolist() == [[True] * 3, [True, True, False], [False] * 3, [True] * 3]
    assert torch.equal(t, c.float() * 10)
    assert torch.equal(e[0], extra[0, 2:5]) and torch.equal(e[3], extra[3, 3:6]) and torch.all(e[1, 2] == 0)
    # shorter than max_len: same events, same length
    m2, c2 = truncate_recent(10, pad, codes)
    assert torch.equal(m2, torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [0] * 6, [1, 1, 1, 1, 0, 0]]).bool())
    assert c2[3].tolist() == [8, 9, 10, 11, 0, 0]


def ehr_batch(b=8, length=40, vocab=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, length + 1, (b,), generator=g)
    pad = torch.arange(length)[None] < lengths[:, None]
    codes = torch.where(pad, torch.randint(1, vocab, (b, length), generator=g), 0)
    values = torch.randn(b, length, generator=g)
    vmask = pad & (torch.rand(b, length, generator=g) < 0.5)
    values = torch.where(vmask, values, float("nan"))
    times = torch.cumsum(torch.rand(b, length, generator=g) * 48, dim=1)
    return codes, values, vmask, times


def test_ehr_shapes_and_masks():
    torch.manual_seed(0)
    enc = build_encoder("ehr_sequence", 30, dim=32, depth=2, max_len=64).eval()
    codes, values, vmask, times = ehr_batch()
    out = enc(codes, values, vmask, times)
    assert out.shape == (8, 32) and enc.embed_dim == 32 and torch.isfinite(out).all()
    # default value mask = finite values
    assert torch.allclose(enc(codes, values, None, times), out, atol=1e-6)
    # padding positions and unobserved values are never read
    pad = codes != 0
    v2 = torch.where(vmask, values, 1e3)
    t2 = torch.where(pad, times, -5.0)
    assert torch.allclose(enc(codes, v2, vmask, t2), out, atol=1e-5)
    # observed values, times and the prediction time do matter
    assert not torch.allclose(enc(codes, torch.where(vmask, values + 1, values), vmask, times), out, atol=1e-4)
    assert not torch.allclose(enc(codes, values, vmask, times, prediction_time=times.amax(1) + 1000), out, atol=1e-4)
    # an empty record still gives a finite embedding
    empty = enc(torch.zeros(2, 5, dtype=torch.long))
    assert torch.isfinite(empty).all()
    with pytest.raises(ValueError, match="code ids"):
        enc(torch.full((1, 3), 30))


def test_ehr_long_records_keep_the_most_recent_events():
    torch.manual_seed(0)
    enc = build_encoder("ehr_sequence", 30, dim=32, depth=1, max_len=16).eval()
    codes, values, vmask, times = ehr_batch(b=3, length=40)
    codes[:, :] = torch.where(codes == 0, 5, codes)  # every row full: 40 events, 24 beyond max_len
    vmask = torch.isfinite(values)
    out = enc(codes, values, vmask, times)
    older = codes.clone()
    older[:, :23] = 7  # events older than the 16 kept (and older than the kept one's predecessor)
    assert torch.allclose(enc(older, values, vmask, times), out, atol=1e-6)
    recent = codes.clone()
    recent[:, -1] = torch.where(recent[:, -1] == 3, 4, 3)
    assert not torch.allclose(enc(recent, values, vmask, times), out, atol=1e-4)
    # the gap to the event before the window is kept (computed before truncation)
    shifted = times.clone()
    shifted[:, 23] -= 100.0
    assert not torch.allclose(enc(codes, values, vmask, shifted), out, atol=1e-4)


def test_ehr_trains():
    enc = build_encoder("ehr_sequence", 30, dim=32, depth=1, max_len=32)
    codes, values, vmask, times = ehr_batch(b=16, length=40)
    g = torch.Generator().manual_seed(2)

    def views():
        def one():
            return (codes, values + 0.1 * torch.randn(values.shape, generator=g), vmask, times * (1 + 0.05 * torch.rand(times.shape, generator=g)))

        return one(), one()

    assert_decreases(contrastive_losses(enc, views))


# ---------------------------------------------------------------- tabular


@pytest.mark.parametrize("kind", ["mlp", "ft_transformer"])
def test_tabular_shapes_and_missing(kind):
    torch.manual_seed(0)
    enc = build_encoder("tabular", 10, kind=kind, embed_dim=24).eval()
    x = torch.randn(5, 10)
    x[0, 3] = float("nan")
    x[2, [1, 4, 9]] = float("nan")
    out = enc(x)
    assert out.shape == (5, 24) and enc.embed_dim == 24 and torch.isfinite(out).all()
    observed = torch.isfinite(x)
    x2 = torch.where(observed, x, 123.0)
    assert torch.allclose(enc(x2, observed), out, atol=1e-6)  # missing values are never read
    assert not torch.allclose(enc(x2), out, atol=1e-4)  # once observed, they count
    with pytest.raises(ValueError):
        enc(torch.randn(5, 9))


@pytest.mark.parametrize("kind", ["mlp", "ft_transformer"])
def test_tabular_trains(kind):
    enc = build_encoder("tabular", 10, kind=kind, embed_dim=32, token_dim=16)
    x = torch.randn(32, 10, generator=torch.Generator().manual_seed(0))
    x[torch.rand(32, 10, generator=torch.Generator().manual_seed(1)) < 0.2] = float("nan")
    g = torch.Generator().manual_seed(2)
    views = lambda: ((x + 0.1 * torch.randn(x.shape, generator=g),), (x + 0.1 * torch.randn(x.shape, generator=g),))
    assert_decreases(contrastive_losses(enc, views))


# ---------------------------------------------------------------- images

IMG_SMALL = {
    "resnet2d18": {"width": 0.125, "small_input": True},
    "resnet2d50": {"width": 0.0625},
    "vit_small": {"patch": 8, "dim": 48, "depth": 2, "heads": 4},
}


def test_image_encoder_defaults():
    assert build_encoder("resnet2d18", 3).embed_dim == 512
    assert build_encoder("resnet2d50", 3).embed_dim == 2048
    vit = build_encoder("vit_small", 1)
    assert vit.embed_dim == 384 and len(vit.blocks) == 12 and vit.patch == 16


@pytest.mark.parametrize("name", sorted(IMG_SMALL))
def test_image_encoder_shapes(name):
    torch.manual_seed(0)
    enc = build_encoder(name, 3, **IMG_SMALL[name]).eval()
    for hw in [(64, 64), (40, 52)]:
        out = enc(torch.randn(2, 3, *hw))
        assert out.shape == (2, enc.embed_dim) and torch.isfinite(out).all()
    assert build_encoder(name, 1, **IMG_SMALL[name]).eval()(torch.randn(2, 1, 32, 32)).shape[0] == 2


@pytest.mark.parametrize("name", sorted(IMG_SMALL))
def test_image_encoder_trains(name):
    enc = build_encoder(name, 1, **IMG_SMALL[name])
    x = torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert_decreases(contrastive_losses(enc, lambda: noisy_views(x)))


# ---------------------------------------------------------------- image loader


def write_png(path, arr):
    import matplotlib.image as mpimg

    mpimg.imsave(path, arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1)


def test_image_loader_reads_npy_and_png(tmp_path):
    import numpy as np

    from tscl.loaders.images import load_image_table, read_image

    (tmp_path / "img").mkdir()
    np.save(tmp_path / "img" / "a.npy", np.random.rand(16, 20).astype(np.float32))
    np.save(tmp_path / "img" / "b.npy", np.random.rand(3, 16, 20))
    write_png(tmp_path / "img" / "c.png", np.random.rand(16, 20, 3))
    (tmp_path / "labels.csv").write_text("path,patient_id,effusion,age\nimg/a.npy,007,1,61\nimg/b.npy,007,0,61\nimg/c.png,12,1,40\n")
    table = load_image_table(tmp_path)
    assert len(table) == 3 and table.label_columns == ("effusion", "age")
    assert table.index["patient_id"].to_list() == ["007", "007", "12"]  # ids stay strings
    a, c = table[0], table[2]
    assert a["image"].shape == (1, 16, 20) and a["image"].dtype == np.float32
    assert c["image"].shape == (3, 16, 20) and 0 <= c["image"].min() and c["image"].max() <= 1  # RGBA -> RGB
    assert a["labels"] == {"effusion": 1, "age": 61} and c["patient_id"] == "12"
    images, pids = table.stack([1, 2])
    assert images.shape == (2, 3, 16, 20) and pids == ["007", "12"]
    assert read_image(tmp_path / "img" / "c.png", drop_alpha=False).shape == (4, 16, 20)
    only = load_image_table(tmp_path, label_columns=["age"])
    assert only.index.columns == ["path", "patient_id", "age"]


def test_image_loader_errors_name_the_file(tmp_path):
    import numpy as np

    from tscl.loaders.images import load_image_table, read_image
    from tscl.loaders.recording import LoaderError

    np.save(tmp_path / "ok.npy", np.zeros((4, 4)))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "broken.npy").write_bytes(b"garbage")
    np.save(tmp_path / "nan.npy", np.full((4, 4), np.nan))
    np.save(tmp_path / "flat.npy", np.zeros(5))
    for name in ("broken.png", "broken.npy", "nan.npy", "flat.npy", "absent.npy", "ok.jpg"):
        with pytest.raises(LoaderError) as err:
            read_image(tmp_path / name)
        assert name in str(err.value)

    (tmp_path / "nocol.csv").write_text("file,patient_id\nok.npy,1\n")
    with pytest.raises(LoaderError, match=r"nocol\.csv.*missing column.*'path'"):
        load_image_table(tmp_path, "nocol.csv")
    (tmp_path / "nolabel.csv").write_text("path,patient_id\nok.npy,1\n")
    with pytest.raises(LoaderError, match="missing column.*'mace'"):
        load_image_table(tmp_path, "nolabel.csv", label_columns=["mace"])
    (tmp_path / "absent.csv").write_text("path,patient_id\nok.npy,1\nmissing_one.npy,2\n")
    with pytest.raises(LoaderError, match=r"missing_one\.npy.*not found"):
        load_image_table(tmp_path, "absent.csv")
    (tmp_path / "corrupt.csv").write_text("path,patient_id\nok.npy,1\nbroken.npy,2\n")
    table = load_image_table(tmp_path, "corrupt.csv")  # exists, so indexing succeeds...
    with pytest.raises(LoaderError, match=r"broken\.npy"):
        table[1]  # ...and reading names the file
    with pytest.raises(LoaderError, match=r"broken\.npy"):
        load_image_table(tmp_path, "corrupt.csv", read_all=True)
    with pytest.raises(LoaderError, match=r"nope\.csv"):
        load_image_table(tmp_path, "nope.csv")
