"""The supervised-from-scratch baseline: it learns, never reads the test side, and sits beside the probes."""
import numpy as np
import pytest
import torch

from tscl.probes import SupervisedBaseline, run_probe
from tscl.probes.metrics import macro_auroc
from tscl.probes.protocol import patient_split

torch.set_num_threads(1)
ENC = {"encoder": "cnn1d", "encoder_kwargs": {"widths": [8, 16]}}


def _waveforms(n_patients=40, per=3, seed=0):
    """Label 0: a 5 Hz tone on channel 0; label 1: its amplitude doubled on channel 1 (patient-level)."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(n_patients), per)
    Y = rng.integers(0, 2, size=(n_patients, 2))[pids].astype(float)
    t = np.arange(128) / 64
    X = 0.3 * rng.standard_normal((len(pids), 2, 128)).astype(np.float32)
    X[:, 0] += (Y[:, 0, None] * np.sin(2 * np.pi * 5 * t + rng.uniform(0, 6, (len(pids), 1)))).astype(np.float32)
    X[:, 1] *= (1 + Y[:, 1, None]).astype(np.float32)
    return X, Y, pids


def test_learns_the_labels_and_not_shuffled_ones():
    X, Y, pids = _waveforms()
    train, test = patient_split(pids, 0.3, 0)
    base = SupervisedBaseline(X, "multilabel", **ENC, max_steps=150)
    P = base(Y, train, test, pids, seed=0)
    assert P.shape == (len(test), 2) and np.all((P >= 0) & (P <= 1))
    assert macro_auroc(Y[test], P) > 0.9
    assert base.last_info["validation_rows"] > 0 and 1 <= base.last_info["best_step"] <= base.last_info["steps"]
    shuffled = Y[np.random.default_rng(1).permutation(len(Y))]
    P_null = SupervisedBaseline(X, "multilabel", **ENC, max_steps=150)(shuffled, train, test, pids, seed=0)
    assert macro_auroc(Y[test], P_null) < 0.8


def test_never_reads_test_labels_and_validation_stays_inside_the_training_patients():
    X, Y, pids = _waveforms()
    train, test = patient_split(pids, 0.3, 0)
    Y_hidden = Y.copy()
    Y_hidden[test] = np.nan  # any use of a test label in training would make the loss NaN (and raise)
    a = SupervisedBaseline(X, "multilabel", **ENC, max_steps=40)(Y_hidden, train, test, pids, seed=3)
    b = SupervisedBaseline(X, "multilabel", **ENC, max_steps=40)(Y, train, test, pids, seed=3)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    few = train[np.isin(pids[train], np.unique(pids[train])[:5])]
    base = SupervisedBaseline(X, "multilabel", **ENC, max_steps=10)
    base(Y, few, test, pids, seed=0)
    assert base.last_info["validation_rows"] == 0  # < 10 patients: no split to trust, last weights used


def test_same_fit_is_memoised_and_another_seed_is_not(monkeypatch):
    X, Y, pids = _waveforms(20)
    train, test = patient_split(pids, 0.3, 0)
    base = SupervisedBaseline(X, "binary", **ENC, max_steps=5)
    calls = []
    real = base._fit_predict
    monkeypatch.setattr(base, "_fit_predict", lambda *a: calls.append(1) or real(*a))
    p1 = base(Y[:, :1], train, test, pids, seed=0)
    p2 = base(Y[:, :1].astype(int), train, test, pids, seed=0)  # same targets as ints: same fit
    base(Y[:, :1], train, test, pids, seed=1)
    np.testing.assert_array_equal(p1, p2)
    assert len(calls) == 2


def test_regression_and_tabular_with_missing_values():
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(60), 2)
    F = rng.standard_normal((120, 6))
    y = 3 * F[:, 0] - 2 * F[:, 1] + 50 + 0.1 * rng.standard_normal(120)
    F[rng.random(F.shape) < 0.1] = np.nan  # missing values are the encoder's missing tokens, not errors
    F[:, 0] = np.where(np.isnan(F[:, 0]), 0.0, F[:, 0])
    train, test = patient_split(pids, 0.3, 0)
    base = SupervisedBaseline(F, "regression", max_steps=300, lr=3e-3)
    assert base.encoder == "tabular"
    pred = base(y, train, test, pids, seed=0)[:, 0]
    r2 = 1 - np.sum((y[test] - pred) ** 2) / np.sum((y[test] - y[test].mean()) ** 2)
    assert r2 > 0.5, r2


def test_bad_inputs():
    X, Y, pids = _waveforms(12)
    with pytest.raises(ValueError, match="kind"):
        SupervisedBaseline(X, "survival")
    with pytest.raises(ValueError, match="shape"):
        SupervisedBaseline(X[:, 0, 0], "binary")
    base = SupervisedBaseline(X, "multilabel", **ENC, max_steps=2)
    with pytest.raises(ValueError, match="at least 2"):
        base(Y, np.array([0]), np.arange(10, 20), pids)
    Y_bad = Y.copy()
    Y_bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        base(Y_bad, np.arange(0, 20), np.arange(20, 36), pids)


def test_sits_beside_the_probes_on_the_same_rows():
    X, Y, pids = _waveforms()
    feats = {"summary": np.stack([X[:, 0].std(1), X[:, 1].std(1)], 1), "noise": np.random.default_rng(0).random((len(Y), 4))}
    base = SupervisedBaseline(X, "multilabel", **ENC, max_steps=60)
    seen = []
    real = base.__call__

    def spy(Y_, rows, test, p, seed):
        seen.append((set(rows.tolist()), set(test.tolist())))
        return real(Y_, rows, test, p, seed)

    res = run_probe(feats, Y, ["a", "b"], pids, fractions=(0.5, 1.0), repeats=2, n_boot=50,
                    predictors={"supervised": spy}, reference="noise")
    encoders = {r["encoder"] for r in res.rows}
    assert encoders == {"summary", "noise", "supervised"}
    assert len(seen) == 3  # 2 subsamples at 50 %, 1 at 100 %
    train_all = seen[-1][0]
    assert all(rows <= train_all and not rows & test for rows, test in seen)
    assert any(c["encoder"] == "supervised" and c["reference"] == "noise" for c in res.comparisons)
    ev = run_probe(feats, Y, ["a", "b"], pids, split=patient_split(pids, 0.3, 0), fractions=(1.0,), kind="multilabel",
                   n_boot=50, predictors={"supervised": base})
    row = next(r for r in ev.rows if r["encoder"] == "supervised")
    assert row["params"][0]["model"] == "trained on the labels" and row["auroc"] > 0.8
    with pytest.raises(ValueError, match="both as features and as predictors"):
        run_probe(feats, Y, ["a", "b"], pids, predictors={"noise": base})
