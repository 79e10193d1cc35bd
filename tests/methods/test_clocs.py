"""CLOCS (tscl/methods/clocs.py): segments, single-lead instances, per-lead normalisation."""
import numpy as np
import polars as pl
import pytest
import torch

from tscl.encoders import build_encoder
from tscl.methods import build_method

from .conftest import PIDS, C, N, T, enc, ids_of, make_batch


def test_clocs_cmsc_segments_are_adjacent_and_disjoint(spy):
    x, batch = make_batch()
    m = build_method("clocs-cmsc", enc(), proj_dim=16)
    seg = m.segments(x)  # [N, 2, C, L]
    L = seg.shape[-1]
    assert L == T // 2
    for i in range(N):
        o = int(np.flatnonzero([torch.equal(seg[i, 0], x[i, :, s : s + L]) for s in range(T - 2 * L + 1)])[0])
        assert torch.equal(seg[i, 1], x[i, :, o + L : o + 2 * L])
    m(x, batch)
    (call,) = spy.calls
    qi, ki = ids_of(call)
    assert torch.equal(qi, PIDS) and torch.equal(ki, PIDS) and call["kw"]["symmetric"] is True


@pytest.mark.parametrize("mode,n_pairs", [("cmlc", 3), ("cmsmlc", 6)])
def test_clocs_cmlc_instances_are_single_leads_of_one_segment(spy, mode, n_pairs):
    x, batch = make_batch()
    m = build_method(f"clocs-{mode}", enc(), proj_dim=16, n_leads=3)
    seen = []
    m.encoder.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].detach(), inp[1])))
    m(x, batch)
    assert len(spy.calls) == n_pairs and all(torch.equal(ids_of(c)[0], PIDS) for c in spy.calls)
    leads = []
    for inp, mask in seen:
        assert mask.shape == (N, C) and (mask.sum(dim=1) == 1).all()
        lead = int(mask[0].nonzero())
        assert (mask.nonzero()[:, 1] == lead).all()
        leads.append(lead)
    n_views = 3 if mode == "cmlc" else 6
    assert len(seen) == n_views and len(set(leads)) == 3
    if mode == "cmlc":  # every view is the same segment (same time window) of its recording
        first = seen[0][0]
        for inp, _ in seen[1:]:
            assert torch.equal(inp, first)
    else:  # two segments, adjacent in time
        assert torch.equal(seen[0][0], seen[1][0]) and not torch.equal(seen[0][0], seen[3][0])


def test_clocs_with_a_single_lead_encoder_feeds_one_lead():
    x, batch = make_batch()
    m = build_method("clocs-cmlc", build_encoder("cnn1d", 1, widths=[8, 16]), proj_dim=16, n_leads=2)
    shapes = []
    m.encoder.register_forward_hook(lambda mod, inp, out: shapes.append(inp[0].shape))
    m(x, batch)
    assert shapes == [(N, 1, T // 2)] * 2


@pytest.mark.parametrize("mode", ["cmsc", "cmlc"])
def test_clocs_views_are_min_max_normalised_per_lead_after_augmentation(mode):
    """As the CLOCS code's normalize_frame: each lead of each view spans [0, 1] over its segment, the raw
    segment's shape kept; a gain augmentation applied before it leaves nothing; "none" feeds raw segments."""
    x, batch = make_batch()
    x = x * torch.linspace(0.1, 5, C).view(1, C, 1) + 3  # leads of very different gain and offset
    seen = {}
    for normalize, aug in [("minmax", "none"), ("minmax", "scale"), ("none", "none")]:
        m = build_method(f"clocs-{mode}", enc(), proj_dim=16, n_leads=2, normalize=normalize, augment=aug)
        inputs = []
        m.encoder.register_forward_hook(lambda mod, inp, out: inputs.append(inp[0].detach()))
        m.make_sampler(pl.DataFrame({"patient_id": [str(int(p)) for p in PIDS]}), seed=3)  # same segment draw
        m(x, batch)
        seen[normalize, aug] = inputs[0]
    v = seen["minmax", "none"]
    assert torch.allclose(v.amin(-1), torch.zeros(())) and torch.allclose(v.amax(-1), torch.ones(()), atol=1e-6)
    raw = seen["none", "none"]
    assert raw.amax() > 4  # the raw segments, not normalised
    lo, hi = raw.amin(-1, keepdim=True), raw.amax(-1, keepdim=True)
    assert torch.allclose(v, (raw - lo) / (hi - lo), atol=1e-5)
    assert torch.allclose(seen["minmax", "scale"], v, atol=1e-5)  # scaling first, normalising after: no trace
    with pytest.raises(ValueError, match="normalize must be one of"):
        build_method("clocs-cmlc", enc(), normalize="zscore")
    # min-max by default where positives cross leads, raw where both views share their leads
    defaults = [build_method(f"clocs-{m}", enc()).normalize for m in ("cmsc", "cmlc", "cmsmlc")]
    assert defaults == ["none", "minmax", "minmax"]
