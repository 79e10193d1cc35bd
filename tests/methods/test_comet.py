"""COMET (tscl/methods/comet.py): the four levels, their ids and weights."""
import warnings

import pytest
import torch

from tscl.methods import build_method

from .conftest import PIDS, N, enc, ids_of, make_batch


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
