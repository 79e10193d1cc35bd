import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tscl.probes import (
    assert_no_patient_leakage,
    bootstrap_macro_auroc,
    macro_auroc,
    patient_split,
    run_probe,
    subsample_patients,
)
from tscl.probes.metrics import weighted_auroc
from tscl.probes.protocol import PatientLeakageError


def _patients(n_patients=60, seed=0):
    rng = np.random.default_rng(seed)
    return np.repeat([f"p{i}" for i in range(n_patients)], rng.integers(1, 6, size=n_patients))


def test_patient_split_has_no_leakage_even_after_subsampling():
    pids = _patients()
    train, test = patient_split(pids, test_fraction=0.3, seed=4)
    assert set(pids[train]).isdisjoint(pids[test])
    assert len(train) + len(test) == len(pids)
    for fraction in (0.01, 0.1, 0.5, 1.0):
        for seed in range(3):
            sub = subsample_patients(train, pids, fraction, seed=seed)
            assert set(pids[sub]).isdisjoint(pids[test])
            # whole patients are kept: every recording of a kept patient is in the subsample
            kept = set(pids[sub])
            assert set(sub) == {r for r in train if pids[r] in kept}


def test_leakage_is_detected():
    pids = np.array(["a", "a", "b", "c"])
    with pytest.raises(PatientLeakageError, match="patient 'a'"):
        assert_no_patient_leakage(pids, [0, 2], [1, 3])
    assert_no_patient_leakage(pids, [0, 1], [2, 3])


def test_weighted_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=200)
    s = np.round(rng.normal(size=200) + y, 1)  # rounding makes ties
    assert weighted_auroc(y, s, np.ones((1, 200)))[0] == pytest.approx(roc_auc_score(y, s))
    w = rng.integers(0, 3, size=(1, 200)).astype(float)
    rep = np.repeat(np.arange(200), w[0].astype(int))
    assert weighted_auroc(y, s, w)[0] == pytest.approx(roc_auc_score(y[rep], s[rep]))


def test_bootstrap_ci_covers_true_auroc_at_about_nominal_rate():
    # scores ~ N(d * y, 1): true AUROC = Phi(d / sqrt 2); one record per patient
    from scipy.stats import norm

    d = 1.0
    truth = norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(0)
    covered, trials = 0, 60
    for t in range(trials):
        y = rng.integers(0, 2, size=150)
        s = rng.normal(d * y, 1.0)
        b = bootstrap_macro_auroc(y[:, None], [s[:, None]], np.arange(150), n_boot=400, seed=t)
        lo, hi = np.percentile(b, [2.5, 97.5])
        covered += lo <= truth <= hi
    assert 0.85 <= covered / trials <= 1.0


def test_probe_separates_informative_from_noise_features():
    rng = np.random.default_rng(0)
    pids = _patients(120, seed=2)
    n = len(pids)
    Y = rng.integers(0, 2, size=(n, 2))
    informative = Y @ rng.normal(size=(2, 8)) + 0.5 * rng.normal(size=(n, 8))
    noise = rng.normal(size=(n, 8))
    res = run_probe({"good": informative, "noise": noise}, Y, ["a", "b"], pids, fractions=(0.1, 1.0),
                    repeats=2, n_boot=200, reference="noise")
    assert res.cell("good", 1.0)["auroc"] > 0.9
    assert abs(res.cell("noise", 1.0)["auroc"] - 0.5) < 0.12
    cmp_ = [c for c in res.comparisons if c["fraction"] == 1.0][0]
    assert cmp_["ci_low"] > 0.2
    table = res.to_markdown()
    assert "good" in table and "10 % labels" in table and "good − noise" in table


def test_probe_rejects_misaligned_inputs():
    pids = _patients(20)
    Y = np.zeros((len(pids), 1))
    with pytest.raises(ValueError, match="rows"):
        run_probe({"x": np.zeros((len(pids) - 1, 3))}, Y, ["a"], pids)
    with pytest.raises(ValueError, match="label fraction"):
        subsample_patients(np.arange(len(pids)), pids, 0.0)
    assert np.isnan(macro_auroc(np.zeros((5, 1)), np.zeros((5, 1))))
