"""Augmentations (tscl/augment.py): the CLI spec grammar, seeding, and what each waveform and EHR op does."""
import pytest
import torch

from tscl import augment as A

C, T = 12, 400


def test_build_augment_parses_the_cli_spec_and_is_seeded():
    aug = A.build_augment("noise:snr=20,scale:low=0.5,high=2,wander,crop:len=300", fs=100, seed=3)
    assert [n for n, _ in aug.ops] == ["noise", "scale", "wander", "crop"]
    assert aug.ops[0][1] == {"snr": 20} and aug.ops[1][1] == {"low": 0.5, "high": 2}
    x = torch.randn(4, C, T)
    y1 = aug(x)
    y2 = A.build_augment("noise:snr=20,scale:low=0.5,high=2,wander,crop:len=300", fs=100, seed=3)(x)
    assert y1.shape == (4, C, 300) and torch.equal(y1, y2)
    assert not A.build_augment("none") and torch.equal(A.build_augment(None)(x), x)
    with pytest.raises(ValueError, match="unknown augmentation"):
        A.build_augment("wobble")


def test_waveform_augmentations_do_what_they_say():
    g = torch.Generator().manual_seed(0)
    x = (1.5 + torch.sin(torch.linspace(0, 60, T))).repeat(16, C, 1)
    noisy = A.gaussian_noise(x, g, snr=10)
    snr = 10 * torch.log10(x.pow(2).mean() / (noisy - x).pow(2).mean())
    assert abs(float(snr) - 10) < 0.5
    s = A.amplitude_scale(x, g, low=2, high=3) / x
    assert float(s.min()) >= 2 - 1e-5 and float(s.max()) <= 3 + 1e-5
    m = A.time_mask(x, g, frac=0.25)
    assert ((m == 0).all(dim=1).sum(dim=1) >= int(0.25 * T)).all()
    d = A.lead_dropout(x, g, p=0.99)
    assert ((d.abs().sum(dim=2) > 0).sum(dim=1) >= 1).all()
    assert A.bandpass_jitter(x, g, fs=100).shape == x.shape
    assert A.baseline_wander(x, g).shape == A.powerline(x, g).shape == A.time_shift(x, g).shape == x.shape


def test_ehr_augmentations_keep_the_event_structure():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(2, 50, (4, 20))
    values, times = torch.randn(4, 20), torch.arange(20.0).repeat(4, 1)
    mask = torch.ones(4, 20, dtype=torch.bool)
    mask[:, 15:] = False
    _, _, _, m = A.event_dropout(codes, values, times, mask, g, p=0.5)
    assert not (m & ~mask).any() and m.any(dim=1).all() and m.sum() < mask.sum()
    c2, *_ = A.code_mask(codes, values, times, mask, g, p=0.5, mask_code=1)
    assert (c2[~mask] == codes[~mask]).all() and (c2 == 1).any()
    _, v2, t2, _ = A.numeric_noise(*A.time_jitter(codes, values, times, mask, g, std=0.5), g, std=0.1)
    assert (t2[~mask] == times[~mask]).all() and not torch.equal(t2, times) and not torch.equal(v2, values)


SMALL = {"proj_dim": 16}
NO_AUG = {"simclr": "scale", "moco": "scale", "supcon": "scale", "comet": "scale", "pmq": "none"}
