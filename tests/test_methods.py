"""The contrastive method family: batch composition, the ids/bank each method hands the
kernel, EMA/queue state, loss decrease, and one trainer epoch per method."""
import json
import math
import warnings

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file

import tscl.kernels
from tscl import augment as A
from tscl.encoders import build_encoder
from tscl.methods import METHODS, build_method
from tscl.methods.queue import enqueue
from tscl.methods.polywindow import cut_windows
from tscl.methods.sampling import RecordBatchSampler, TrialShuffleSampler

N, C, T = 8, 12, 400
PIDS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def enc():
    return build_encoder("cnn1d", C, widths=[8, 16])


def make_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, T, generator=g)
    return x, {"patient_ids": PIDS.clone(), "record_ids": torch.arange(N) + 100,
               "labels": torch.tensor([0, 1, 0, 1, 1, 1, 0, 2]), "tabular": torch.randn(N, 3, generator=g)}


class Spy:
    """Records every info_nce call (args and kwargs) and returns the real loss."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __call__(self, *args, **kw):
        out = self.real(*args, **kw)
        self.calls.append({"args": args, "kw": kw, "out": out})
        return out


@pytest.fixture
def spy(monkeypatch):
    """Every method calls ``kernels.info_nce`` at call time: one patch reaches them all."""
    s = Spy(tscl.kernels.info_nce)
    monkeypatch.setattr(tscl.kernels, "info_nce", s)
    return s


def ids_of(call):
    a = call["args"]
    return (a[2] if len(a) > 2 else call["kw"].get("q_ids")), (a[3] if len(a) > 3 else call["kw"].get("k_ids"))


# ---------------------------------------------------------------- augmentations
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


# ---------------------------------------------------------------- SimCLR / SupCon
def test_simclr_hands_two_views_with_record_ids(spy):
    x, batch = make_batch()
    build_method("simclr", enc(), proj_dim=16)(x, batch)
    (call,) = spy.calls
    q, k = call["args"][:2]
    qi, ki = ids_of(call)
    assert q is k and q.shape == (2 * N, 16) and call["kw"]["exclude_self"] is True
    # view i and i + N share the recording's global id (global so ranks cannot collide under DDP)
    assert torch.equal(qi, batch["record_ids"].repeat(2)) and torch.equal(qi, ki)


def test_supcon_ids_are_the_labels(spy):
    x, batch = make_batch()
    build_method("supcon", enc(), proj_dim=16)(x, batch)
    (call,) = spy.calls
    qi, _ = ids_of(call)
    assert torch.equal(qi, batch["labels"].repeat(2)) and call["kw"]["exclude_self"] is True


def test_supcon_batch_extras_from_label_columns():
    m = build_method("supcon", enc(), label="lvh,af")
    index = pl.DataFrame({"lvh": [0, 1, 0, None], "af": [1, 1, 1, 0]})
    labels = m.batch_extras(index)["labels"]
    assert labels[0] == labels[2] and len({int(v) for v in labels}) == 3
    with pytest.raises(ValueError, match="not in the cohort index"):
        build_method("supcon", enc(), label="nope").batch_extras(index)


# ---------------------------------------------------------------- MoCo
def test_moco_key_branch_gets_no_gradient_and_follows_the_ema(spy):
    x, batch = make_batch()
    m = build_method("moco", enc(), proj_dim=16, momentum=0.9, queue_size=20)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    key_before = [p.detach().clone() for p in [*m.key_encoder.parameters(), *m.key_head.parameters()]]
    loss = m(x, batch)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in [*m.key_encoder.parameters(), *m.key_head.parameters()])
    opt.step()
    online = [p.detach().clone() for p in [*m.encoder.parameters(), *m.head.parameters()]]
    m.after_step()
    for pk, k0, pq in zip([*m.key_encoder.parameters(), *m.key_head.parameters()], key_before, online):
        torch.testing.assert_close(pk, 0.9 * k0 + 0.1 * pq, rtol=0, atol=1e-6)
    assert spy.calls[0]["kw"]["bank"] is None  # empty queue at the first step
    m(x, batch)
    bank = spy.calls[1]["kw"]["bank"]
    assert bank.shape == (N, 16) and spy.calls[1]["kw"].get("bank_ids") is None
    state = m.state_dict()
    assert {"queue", "queue_ptr", "queue_filled"} <= set(state) and int(state["queue_ptr"]) == N


def test_queue_fifo_pointer_semantics():
    q, ptr, filled = torch.zeros(10, 2), torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.long)
    ids = torch.full((10,), -1)
    for step in range(3):
        keys = torch.arange(8.0).reshape(4, 2) + 100 * step
        enqueue(q, ptr, filled, keys, ids, torch.arange(4) + 10 * step)
    # step 0 -> rows 0..3, step 1 -> 4..7, step 2 -> 8, 9, then wraps to 0, 1
    assert int(ptr) == 2 and int(filled) == 10
    assert torch.equal(q[8:10], torch.tensor([[200.0, 201], [202, 203]]))
    assert torch.equal(q[0:2], torch.tensor([[204.0, 205], [206, 207]]))
    assert torch.equal(q[2:4], torch.tensor([[4.0, 5], [6, 7]]))
    assert ids.tolist() == [22, 23, 2, 3, 10, 11, 12, 13, 20, 21]


# ---------------------------------------------------------------- poly-window
def test_polywindow_windows_overlap_and_share_the_record_id(spy):
    x, batch = make_batch()
    m = build_method("polywindow", enc(), proj_dim=16, n_windows=3, window_len=200, stride=50)
    assert m.geometry(T) == (200, 50)
    w = cut_windows(x, 3, 200, 50, torch.Generator().manual_seed(1))  # [N, K, C, L]
    for i in range(N):
        start = int(np.flatnonzero([torch.equal(w[i, 0], x[i, :, o : o + 200]) for o in range(T - 299)])[0])
        for k in range(3):
            assert torch.equal(w[i, k], x[i, :, start + 50 * k : start + 50 * k + 200])
        assert torch.equal(w[i, 0, :, 50:], w[i, 1, :, :150])  # overlap = L - stride = 150
    m(x, batch)
    (call,) = spy.calls
    qi, ki = ids_of(call)
    assert torch.equal(qi, batch["record_ids"].repeat_interleave(3)) and call["kw"]["exclude_self"] is True
    m2 = build_method("polywindow", enc(), proj_dim=16, n_windows=3, window_len=200, stride=50, objective="mean")
    m2(x, batch)
    q, k = spy.calls[1]["args"][:2]
    qi, ki = ids_of(spy.calls[1])
    assert q.shape == (3 * N, 16) and k.shape == (N, 16) and torch.equal(ki, batch["record_ids"])
    torch.testing.assert_close(k, torch.nn.functional.normalize(q, dim=1).reshape(N, 3, 16).mean(1))


def test_polywindow_augments_each_window_without_cropping_it():
    """Default: nuisance ops drawn per window (no crop: the windows are the crops);
    augment="none" hands the encoder the raw windows."""
    x, batch = make_batch()
    seen = []

    def run(augment):
        m = build_method("polywindow", enc(), proj_dim=16, n_windows=3, window_len=200, stride=50,
                         **({} if augment is None else {"augment": augment}))
        m.make_sampler(pl.DataFrame({"fs": [100.0] * N}), seed=0)
        m.encoder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
        m(x, batch)
        return seen[-1]

    raw = run("none")
    windows = cut_windows(x, 3, 200, 50, torch.Generator().manual_seed(0)).reshape(3 * N, C, 200)
    assert torch.equal(raw, windows)
    aug = run(None)
    assert [name for name, _ in build_method("polywindow", enc()).augment.ops] == ["scale", "noise", "wander", "dropout"]
    assert aug.shape == raw.shape and not torch.allclose(aug, raw)
    # independent draws per window: two windows of one record that overlap are changed differently
    overlap_raw = raw[0, :, 50:], raw[1, :, :150]
    assert torch.equal(*overlap_raw)
    assert not torch.allclose(aug[0, :, 50:], aug[1, :, :150])


# ---------------------------------------------------------------- PMQ
def pmq_reference(q, k, bank, bank_ids, pids, tau, mode):
    """The PMQ loss written out with loops (per-anchor averaging of the patient term)."""
    q, k = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(k, dim=1)
    bank = torch.zeros(0, q.shape[1]) if bank is None else torch.nn.functional.normalize(bank, dim=1)
    bank_ids = torch.zeros(0, dtype=torch.long) if bank_ids is None else bank_ids
    inst, pat = [], []
    for i in range(len(q)):
        cols, same = [], []
        for j in range(len(k)):
            cols.append(float(q[i] @ k[j]) / tau)
            same.append(int(pids[j]) == int(pids[i]))
        n_batch = len(cols)
        for b in range(len(bank)):
            is_same = int(bank_ids[b]) == int(pids[i])
            if mode == "mask" and is_same:
                continue
            cols.append(float(q[i] @ bank[b]) / tau)
            same.append(is_same)
        log_d = math.log(sum(math.exp(s) for s in cols))
        inst.append(log_d - cols[i])
        pos = [s for s, p in zip(cols, same) if p]
        assert all(not p for p in same[n_batch:]) or mode == "positive"
        pat.append(log_d - sum(pos) / len(pos))
    if mode == "mask":
        return 2 * tau * sum(pat) / len(pat)
    return tau * (sum(inst) / len(inst) + sum(pat) / len(pat))


@pytest.mark.parametrize("mode", ["positive", "mask"])
def test_pmq_bank_carries_patient_ids_and_matches_the_hand_reference(spy, mode):
    x, batch = make_batch()
    m = build_method("pmq", enc(), proj_dim=16, queue_size=64, bank_same_id=mode, segments_per_record=2,
                     temperature=0.2, augment="none")
    m(x, batch)
    m.after_step()
    spy.calls.clear()
    batch2 = dict(batch, patient_ids=torch.tensor([0, 0, 5, 5, 2, 6, 7, 7]))  # patients 0 and 2 are in the queue
    loss = m(x, batch2)
    pids = batch2["patient_ids"].repeat_interleave(2)
    for call in spy.calls:
        if mode == "mask":
            assert call["kw"]["bank_same_id"] == "mask" and torch.equal(call["kw"]["bank_ids"], PIDS.repeat_interleave(2))
    pat = next(c for c in spy.calls if c["kw"].get("bank_ids") is not None)
    assert torch.equal(ids_of(pat)[0], pids)
    assert len(spy.calls) == (1 if mode == "mask" else 2)
    q, k = pat["args"][:2]
    ref = pmq_reference(q.detach(), k, pat["kw"]["bank"], pat["kw"]["bank_ids"], pids, 0.2, mode)
    assert loss.item() == pytest.approx(ref, rel=1e-4)


def test_trial_shuffle_batches_hold_several_recordings_of_one_patient():
    pids = np.repeat(np.arange(10), 4)
    s = TrialShuffleSampler(pids, batch_size=8, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 5 and sorted(sum(batches, [])) == list(range(40))
    assert all(np.bincount(pids[b]).max() >= 2 for b in batches)
    s.set_epoch(1)
    assert list(s) != batches
    r = RecordBatchSampler(10, batch_size=4, seed=0)
    assert len(r) == 3 and sorted(sum(list(r), [])) == list(range(10))
    assert len(RecordBatchSampler(9, batch_size=4)) == 2  # a last batch of one has no negatives


# ---------------------------------------------------------------- CLOCS
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


# ---------------------------------------------------------------- COMET
def test_comet_levels_and_a_missing_level_is_skipped_with_a_warning(spy):
    x, batch = make_batch()
    m = build_method("comet", enc(), proj_dim=16, samples_per_trial=2, observations_per_sample=4)
    assert m.weights == {"patient": 0.25, "trial": 0.25, "sample": 0.25, "observation": 0.25}
    m(x, batch)
    assert len(spy.calls) == 4
    sample, trial, patient, obs = spy.calls
    rec = batch["record_ids"]
    # unit levels: both views stacked, ids unique per unit (across ranks too): the positive is the other view
    assert torch.equal(ids_of(sample)[0], (rec[:, None] * 2 + torch.arange(2)).reshape(-1).repeat(2))
    assert torch.equal(ids_of(obs)[0], (rec[:, None] * 8 + torch.arange(8)).reshape(-1).repeat(2))
    for c in (sample, obs):
        q, k = c["args"][:2]
        assert torch.equal(q, k) and c["kw"]["exclude_self"] and not c["kw"].get("symmetric")
    # id levels: view 1 against view 2, own other view excluded, both directions
    assert torch.equal(ids_of(trial)[0], rec.repeat_interleave(2))
    assert torch.equal(ids_of(patient)[0], PIDS.repeat_interleave(2))
    for c in (trial, patient):
        q, k = c["args"][:2]
        assert q.shape == k.shape == (N * 2, 16) and not torch.equal(q, k)
        assert c["kw"]["exclude_self"] and c["kw"]["symmetric"]
        assert torch.equal(q, sample["args"][0][: N * 2]) and torch.equal(k, sample["args"][0][N * 2:])
    w = {lvl: 0.0 for lvl in ("sample", "trial", "observation")}
    spy.calls.clear()
    m2 = build_method("comet", enc(), proj_dim=16, weights={**w, "patient": 1.0})
    with pytest.warns(UserWarning, match="patient level is skipped"):
        loss = m2(x, {"record_ids": batch["record_ids"]})
    assert float(loss) == 0.0 and not spy.calls
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m2(x, batch)


def test_comet_id_level_matches_the_papers_pairing():
    """Trial level by hand: sample i of view 1 against every sample of view 2 but its own; positives are
    the other samples of its trial; averaged with the same over columns."""
    torch.manual_seed(0)
    z1, z2 = torch.nn.functional.normalize(torch.randn(6, 5), dim=1), torch.nn.functional.normalize(torch.randn(6, 5), dim=1)
    ids = torch.tensor([0, 0, 1, 1, 1, 2])  # sample 5 is alone in its trial: no positive, left out
    m = build_method("comet", enc(), proj_dim=16)
    got = m._id_nce(z1, z2, ids)
    s = z1 @ z2.T / 0.1

    def one_way(s):
        terms = []
        for i in range(6):
            pos = [j for j in range(6) if j != i and ids[j] == ids[i]]
            if pos:
                den = torch.logsumexp(torch.cat([s[i, :i], s[i, i + 1:]]), 0)
                terms.append(torch.stack([den - s[i, j] for j in pos]).mean())
        return torch.stack(terms).mean()

    assert torch.allclose(got, (one_way(s) + one_way(s.T)) / 2, atol=1e-5)


def test_comet_weight_presets_and_bad_settings():
    from tscl.methods.comet import PTB_WEIGHTS

    assert build_method("comet", enc(), weights="ptb").weights == PTB_WEIGHTS
    assert build_method("comet", enc(), weights={"trial": 0}).weights["trial"] == 0
    assert build_method("comet", enc(), weights={"trial": 0}).weights["patient"] == 0.25
    with pytest.raises(ValueError, match="preset"):
        build_method("comet", enc(), weights="adhd")
    with pytest.raises(ValueError, match="unknown COMET level"):
        build_method("comet", enc(), weights={"visit": 1.0})
    with pytest.raises(ValueError, match="samples_per_trial >= 2"):
        build_method("comet", enc(), samples_per_trial=1)
    build_method("comet", enc(), samples_per_trial=1, weights={"trial": 0})  # fine without the trial level


# ---------------------------------------------------------------- every method learns
SMALL = {"proj_dim": 16}
NO_AUG = {"simclr": "scale", "moco": "scale", "supcon": "scale", "comet": "scale", "pmq": "none"}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_decreases_on_a_fixed_batch(name):
    torch.manual_seed(0)
    x, batch = make_batch()
    kw = dict(SMALL)
    if name in NO_AUG:
        kw["augment"] = NO_AUG[name]
    if name in ("moco", "pmq"):
        kw.update(momentum=0.99, queue_size=64)
    if name in ("clocs-cmlc", "clocs-cmsmlc"):
        kw["leads"] = [1, 7, 9]
    if name == "clip":
        kw["b_channels"] = 3
    m = build_method(name, enc(), **kw)

    def evaluate():
        torch.manual_seed(123)
        if hasattr(m, "augment") and m.augment:
            m.augment._gens.clear()
        for attr in ("_gen",):
            if getattr(m, attr, None) is not None:
                setattr(m, attr, torch.Generator().manual_seed(7))
        filled = m.queue_filled.clone() if hasattr(m, "queue_filled") else None
        if filled is not None:
            m.queue_filled.zero_()
        with torch.no_grad():
            value = float(m(x, batch))
        if filled is not None:
            m.queue_filled.copy_(filled)
        return value

    before = evaluate()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(12):
        loss = m(x, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(m, "after_step"):
            m.after_step()  # EMA of the key branch
            if hasattr(m, "queue_filled"):  # one fixed batch: queued copies of its own keys are not negatives to learn from
                m.queue_filled.zero_()
    after = evaluate()
    assert math.isfinite(before) and after < before - 0.05 * abs(before), (name, before, after)


# ---------------------------------------------------------------- trainer and CLI
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from tscl.loaders import load_wfdb_cohort
    from tscl.simulate import CohortConfig, write_cohort

    root = tmp_path_factory.mktemp("methods_cohort")
    write_cohort(root / "cohort", CohortConfig(n_patients=12, seed=1, duration_s=5.0), progress=False)
    return root, load_wfdb_cohort(root / "cohort", cache_dir=root / "cache", progress=False)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_pretrain_epoch_per_method(cohort, tmp_path, name):
    from tscl.train import PretrainConfig, load_encoder, pretrain

    _, cache = cohort
    kw = {"proj_dim": 16, **({"patients_per_batch": 6} if name == "pclr" else {"batch_size": 16})}
    if name == "supcon":
        kw["label"] = "lvh,bbb"
    cfg = PretrainConfig(out_dir=str(tmp_path / name), method=name, encoder="cnn1d", encoder_kwargs={"widths": [8, 16]},
                         method_kwargs=kw, epochs=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = pretrain(cache, cfg)
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in s for s in lines) and all(math.isfinite(s.get("loss", s.get("mean_loss"))) for s in lines)
    state = load_file(run / "method.safetensors")
    if name in ("moco", "pmq"):
        assert int(state["queue_filled"]) > 0 and "queue" in state
    if name == "pmq":
        assert (state["queue_ids"][: int(state["queue_filled"])] >= 0).all()
    assert load_encoder(run).embed_dim == 16


def test_cli_pretrain_with_method_and_augment(cohort, tmp_path):
    from tscl.cli import main

    root, _ = cohort
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(root / "cohort"), "--out", str(out), "--method", "simclr", "--epochs", "1",
                 "--encoder", "cnn1d", "--encoder-kwargs", "widths=[8,16]", "--method-kwargs", "batch_size=16,proj_dim=16",
                 "--augment", "noise:snr=20,scale,crop:len=300", "--quiet"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method_kwargs"]["augment"] == "noise:snr=20,scale,crop:len=300"
