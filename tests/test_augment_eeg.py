"""EEG augmentations (tscl/augment.py): band masking, per-electrode gain, polarity flip, and the bind-time check."""
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tscl import augment as A

FS, T = 100.0, 400  # rFFT bins every 0.25 Hz


def _sines(b: int, c: int, freqs) -> torch.Tensor:
    t = torch.arange(T, dtype=torch.float64) / FS
    x = sum(torch.sin(2 * torch.pi * f * t + f) for f in freqs)
    return x.repeat(b, c, 1).float()


@settings(max_examples=25, deadline=None)
@given(width=st.floats(0.5, 12.0), n=st.integers(1, 3), seed=st.integers(0, 2**31 - 1),
       low=st.floats(0.0, 10.0), high=st.floats(20.0, 80.0))
def test_band_mask_zeroes_bands_of_the_given_width_inside_the_range_and_keeps_the_rest(width, n, seed, low, high):
    x = torch.randn(6, 3, T, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    y = A.band_mask(x, g, width=width, n=n, low=low, high=high, fs=FS)
    assert y.shape == x.shape and y.dtype == x.dtype
    X, Y = torch.fft.rfft(x.double(), dim=-1), torch.fft.rfft(y.double(), dim=-1)
    freqs = torch.fft.rfftfreq(T, d=1 / FS)
    gone = Y.abs() < 1e-6 * X.abs().amax()  # [B, C, F]
    kept = ~gone
    assert torch.allclose(Y[kept], X[kept], atol=1e-4)  # the other bins pass unchanged
    assert (gone == gone[:, :1]).all()  # one band per sample, the same on every channel
    top = min(high, FS / 2)
    for b in range(len(x)):
        hit = freqs[gone[b, 0]]
        assert len(hit) >= 1 and hit.min() >= low - 1e-9 and hit.max() < top + 1e-9
        per_band = max(1, round(width / (FS / T)))
        assert len(hit) <= n * (per_band + 1)  # at most n bands of the width (one edge bin each)
        assert len(hit) >= per_band - 1  # at least one whole band


def test_band_mask_removes_a_sinusoid_in_the_band_and_draws_differ_per_sample_and_repeat_per_seed():
    x = _sines(64, 2, [10.0])
    y = A.band_mask(x, torch.Generator().manual_seed(1), width=4, low=1, high=40, fs=FS)
    removed = (y.pow(2).mean(dim=(1, 2)) < 1e-6).float().mean()  # the 10 Hz line falls in [s, s+4) for ~4/35
    assert 0 < removed < 0.5
    z = A.band_mask(x, torch.Generator().manual_seed(1), width=4, low=1, high=40, fs=FS)
    assert torch.equal(y, z)


@pytest.mark.parametrize("kw", [{"width": 0}, {"width": 60}, {"low": 45, "high": 48, "width": 4}])
def test_band_mask_refuses_a_band_that_does_not_fit(kw):
    with pytest.raises(ValueError, match="bandmask"):
        A.band_mask(torch.randn(2, 3, T), None, fs=FS, **kw)


@settings(max_examples=20, deadline=None)
@given(low=st.floats(0.1, 1.0), span=st.floats(1.0, 4.0), seed=st.integers(0, 2**31 - 1))
def test_channel_scale_gives_each_electrode_one_gain_in_range(low, span, seed):
    high = low * span
    x = torch.rand(8, 5, 50, generator=torch.Generator().manual_seed(seed)) + 0.5
    y = A.channel_scale(x, torch.Generator().manual_seed(seed), low=low, high=high)
    ratio = y / x
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio), rtol=1e-5)  # constant over time
    assert float(ratio.min()) >= low * (1 - 1e-5) and float(ratio.max()) <= high * (1 + 1e-5)
    if span > 1.5:
        assert ratio[..., 0].std(dim=1).min() > 0  # electrodes of one item get different gains


def test_channel_scale_refuses_a_non_positive_range():
    with pytest.raises(ValueError, match="channel_scale"):
        A.channel_scale(torch.ones(1, 2, 3), None, low=0.0, high=1.0)
    with pytest.raises(ValueError, match="channel_scale"):
        A.channel_scale(torch.ones(1, 2, 3), None, low=2.0, high=1.0)


def test_sign_flip_inverts_whole_items():
    x = torch.randn(200, 3, 20)
    y = A.sign_flip(x, torch.Generator().manual_seed(0), p=0.5)
    same, flipped = (y == x).all(dim=(1, 2)), (y == -x).all(dim=(1, 2))
    assert (same | flipped).all() and 0.3 < flipped.float().mean() < 0.7
    assert torch.equal(A.sign_flip(x, None, p=0.0), x) and torch.equal(A.sign_flip(x, None, p=1.0), -x)


def test_eeg_pipeline_parses_runs_and_is_checked_against_the_data_when_bound():
    aug = A.build_augment(A.EEG_AUGMENT, fs=FS, seed=0)
    assert {"bandmask", "dropout"} <= {n for n, _ in aug.ops}
    index = pl.DataFrame({"fs": [FS], "n_samples": [T], "n_channels": [19]})
    aug.bind(index, seed=0)
    x = torch.randn(4, 19, T)
    assert aug(x).shape[:2] == (4, 19)
    bad = A.build_augment("bandmask:width=35:low=20:high=60", fs=FS)  # 20 + 35 Hz > Nyquist at 100 Hz
    with pytest.raises(ValueError, match="bandmask"):
        bad.bind(index, seed=0)
    ok = A.build_augment("bandmask:width=35:low=20:high=60", fs=FS)
    ok.bind(index.with_columns(pl.lit(250.0).alias("fs")), seed=0)  # fits under min(60, 125) Hz


def test_cli_refuses_a_band_mask_above_nyquist_in_one_line(tmp_path, capsys):
    from tscl.cli import main

    data = tmp_path / "sim"
    assert main(["simulate", "--out", str(data), "--patients", "6", "--seed", "0", "--quiet"]) == 0
    capsys.readouterr()
    rc = main(["pretrain", "--data", str(data), "--method", "simclr", "--encoder", "cnn1d", "--epochs", "1", "--quiet",
               "--augment", "bandmask:width=45:low=10", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "bandmask" in err[0] and "width=45" in err[0]
