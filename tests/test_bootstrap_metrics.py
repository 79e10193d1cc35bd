"""The rank-based, chunked bootstrap metrics equal scikit-learn and the dense definitions they replaced.

Generated inputs: random real weights, heavy ties (scores rounded to a few values), constant
scores, single-class labels, zero weights, patients with many records; chunk sizes forced down
to one resample so chunking is exercised."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from tscl.probes import bootstrap as bs
from tscl.probes.bootstrap import Resamples, classification_resampled, macro_auroc_resampled, regression_resampled
from tscl.probes.metrics import (accuracy, bootstrap_macro_auroc, brier_score, classification_metrics,
                                 expected_calibration_error, macro_auroc, mae, r2, weighted_auprc, weighted_auroc)
from tscl.probes.table import run_probe
from tscl.probes.protocol import bootstrap_weights

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def dense_auroc(y, scores, weights):
    """The O(n x distinct scores) formula the probes used before (kept here as the reference)."""
    y = np.asarray(y).astype(bool)
    values, inverse = np.unique(scores, return_inverse=True)
    onehot = np.zeros((len(scores), len(values)))
    onehot[np.arange(len(scores)), inverse] = 1.0
    neg_by_value = (weights * ~y) @ onehot
    credit = np.cumsum(neg_by_value, axis=1) - 0.5 * neg_by_value
    num = (weights[:, y] * credit[:, inverse[y]]).sum(axis=1)
    n_pos, n_neg = weights[:, y].sum(axis=1), (weights * ~y).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), num / (n_pos * n_neg), np.nan)


def loop_classification(Y, P, w):
    """The per-resample definition: one label at a time, scikit-learn's AP, labels lacking a class left out."""
    out = {m: [] for m in ("auroc", "auprc", "brier", "ece", "accuracy")}
    for j in range(Y.shape[1]):
        y, p = Y[:, j], P[:, j]
        if w[y == 1].sum() <= 0 or w[y == 0].sum() <= 0:
            continue
        out["auroc"].append(dense_auroc(y, p, w[None])[0])
        out["auprc"].append(weighted_auprc(y, p, w))
        out["brier"].append(brier_score(y, p, w))
        out["ece"].append(expected_calibration_error(y, p, w))
        out["accuracy"].append(accuracy(y, p, w))
    return {m: float(np.mean(v)) if v else float("nan") for m, v in out.items()}


@st.composite
def scored(draw, max_n=40):
    n = draw(st.integers(2, max_n))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    kind = draw(st.sampled_from(["ties", "continuous", "constant"]))
    s = {"ties": np.round(rng.normal(size=n) + y, 0) / 4, "continuous": rng.normal(size=n) + y,
         "constant": np.full(n, 0.3)}[kind]
    return y, s, rng


@SETTINGS
@given(scored(), st.integers(1, 5))
def test_auroc_equals_dense_formula_and_sklearn_under_real_weights(data, B):
    y, s, rng = data
    w = rng.random((B, len(y))) * (rng.random((B, len(y))) > 0.2)  # some zero weights
    got = weighted_auroc(y, s, w)
    np.testing.assert_allclose(got, dense_auroc(y, s, w), rtol=1e-12, atol=1e-12)
    for b in range(B):
        pos, neg = w[b][y == 1].sum(), w[b][y == 0].sum()
        if pos > 0 and neg > 0:
            assert got[b] == pytest.approx(roc_auc_score(y, s, sample_weight=w[b]), abs=1e-12)
        else:
            assert np.isnan(got[b])


@SETTINGS
@given(scored())
def test_auprc_equals_sklearn_average_precision(data):
    y, s, rng = data
    w = rng.random(len(y)) + 0.01
    got = classification_resampled(y[:, None], s[:, None], Resamples.from_weights(w))["auprc"][0]
    if y.min() == y.max():
        assert np.isnan(got)
    else:
        assert got == pytest.approx(average_precision_score(y, s, sample_weight=w), abs=1e-12)


@SETTINGS
@given(st.integers(2, 30), st.integers(1, 40), st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_patient_bootstrap_metrics_equal_the_per_resample_loop(n_patients, n_boot, seed, L):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, n_patients, size=rng.integers(n_patients, 4 * n_patients + 1))
    n = len(groups)
    Y = rng.integers(0, 2, (n, L)).astype(float)
    P = np.clip(np.round(rng.random((n, L)) * 0.6 + 0.4 * Y, 1), 0, 1)  # ties, values on bin edges
    R = Resamples.patient_bootstrap(groups, n_boot, seed)
    W = bootstrap_weights(groups, n_boot, seed)
    np.testing.assert_array_equal(R.record_weights(), W)
    assert R.shape == W.shape and np.array_equal(np.stack(list(R)), W)
    got = classification_resampled(Y, P, R)
    ref = [loop_classification(Y, P, w) for w in W]
    for m in got:
        np.testing.assert_allclose(got[m], [r[m] for r in ref], rtol=1e-10, atol=1e-12, err_msg=m)
    Yr, Yhat = rng.normal(size=(n, L)), rng.normal(size=(n, L))
    reg = regression_resampled(Yr, Yhat, R)
    for b, w in enumerate(W):
        assert reg["mae"][b] == pytest.approx(np.mean([mae(Yr[:, j], Yhat[:, j], w) for j in range(L)]), rel=1e-10)
        # R^2 of a resample whose targets are all equal is NaN in both (the old formula returned round-off there)
        want = np.mean([r2(Yr[:, j], Yhat[:, j], w) for j in range(L)])
        assert np.isnan(want) == np.isnan(reg["r2"][b]) and (np.isnan(want) or reg["r2"][b] == pytest.approx(want, rel=1e-8))


@SETTINGS
@given(scored(), st.sampled_from(["threshold", "spread"]))
def test_accuracy_is_sklearns_at_the_threshold_one_half(data, where):
    y, s, rng = data
    # probabilities piled on the threshold itself (0.5 calls the negative class), or spread over [0, 1]
    p = np.clip(0.5 + s / 4, 0, 1) if where == "spread" else np.where(s > 0, 0.5, np.where(s < 0, 0.75, 0.25))
    w = rng.random(len(y)) * (rng.random(len(y)) > 0.3) + (np.arange(len(y)) == 0)  # zero weights, never all
    want = accuracy_score(y, (p > 0.5).astype(int), sample_weight=w)
    assert accuracy(y, p, w) == pytest.approx(want, abs=1e-12)
    got = classification_resampled(y[:, None], p[:, None], Resamples.from_weights(w))["accuracy"][0]
    if w[y == 1].sum() > 0 and w[y == 0].sum() > 0:  # as every metric here: only where the resample has both classes
        assert got == pytest.approx(want, abs=1e-12)
    else:
        assert np.isnan(got)


def test_accuracy_is_a_metric_a_table_asks_for_by_name():
    rng = np.random.default_rng(1)
    pids = np.arange(120).astype(str)
    y = rng.integers(0, 2, 120)
    X = y[:, None] * 1.5 + rng.normal(size=(120, 4))
    res = run_probe({"x": X}, y[:, None], ["y"], pids, fractions=(1.0,), n_boot=40, metrics=("auroc", "accuracy"))
    cell = res.cell("x", 1.0)
    assert 0.5 < cell["accuracy"] <= 1 and cell["accuracy_ci"][0] <= cell["accuracy"] <= cell["accuracy_ci"][1]
    assert "| x | " in res.to_markdown() and "accuracy [95 % CI]" in res.to_markdown()
    assert "accuracy" not in run_probe({"x": X}, y[:, None], ["y"], pids, fractions=(1.0,), n_boot=10).cell("x", 1.0)
    with pytest.raises(ValueError, match="metric 'accuracy' is not one of a regression task's"):
        run_probe({"x": X}, X[:, :1], ["v"], pids, fractions=(1.0,), n_boot=10, metrics=("mae", "accuracy"))


def test_draws_and_results_do_not_depend_on_the_chunking(monkeypatch):
    rng = np.random.default_rng(5)
    groups = rng.integers(0, 50, 300)
    Y = rng.integers(0, 2, (300, 2))
    P = [np.round(rng.random((300, 2)), 1) for _ in range(3)]
    one_draw = np.random.default_rng(9).multinomial(50, np.full(50, 1 / 50), size=37)
    R = Resamples.patient_bootstrap(groups, 37, 9)
    np.testing.assert_array_equal(R.counts, one_draw)
    assert R.counts.dtype == np.uint8  # one byte per patient and resample
    big = bootstrap_macro_auroc(Y, P, groups, n_boot=37, seed=9)
    monkeypatch.setattr(bs, "_DRAW_ROWS", 5)
    monkeypatch.setattr(bs, "CHUNK_BYTES", 1)  # one resample per chunk
    assert [len(C) for _, C in Resamples.patient_bootstrap(groups, 37, 9).chunks(10)] == [1] * 37
    np.testing.assert_array_equal(Resamples.patient_bootstrap(groups, 37, 9).counts, one_draw)
    np.testing.assert_allclose(bootstrap_macro_auroc(Y, P, groups, n_boot=37, seed=9), big, rtol=1e-13)
    # the mean over repeats of per-resample macro AUROCs, each from the dense reference
    W = one_draw[:, np.unique(groups, return_inverse=True)[1]].astype(float)
    ref = np.mean([np.nanmean([dense_auroc(Y[:, j], p[:, j], W) for j in range(2)], axis=0) for p in P], axis=0)
    np.testing.assert_allclose(big, ref, rtol=1e-13)


def test_counts_widen_when_a_patient_is_drawn_more_than_255_times(monkeypatch):
    class Rigged:
        def multinomial(self, n, pvals, size):
            out = np.zeros((size, len(pvals)), dtype=np.int64)
            out[:, 0] = 300
            return out

    monkeypatch.setattr(bs.np.random, "default_rng", lambda seed: Rigged())
    R = Resamples.patient_bootstrap(np.arange(400), 3, 0)
    assert R.counts.dtype == np.uint16 and int(R.counts[:, 0].min()) == 300


def test_degenerate_inputs():
    y = np.array([0, 1, 0, 1])
    assert macro_auroc(y[:, None], np.full((4, 1), 0.5)) == 0.5  # constant scores: every pair a tie
    assert np.isnan(macro_auroc(np.zeros((4, 1)), np.arange(4.0)[:, None]))  # one class
    w = np.array([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 1, 1, 1]])  # the first two keep only one class
    got = weighted_auroc(y, np.arange(4.0), w)
    assert np.isnan(got[0]) and np.isnan(got[1]) and got[2] == 0.75  # 3 of the 4 pairs ordered
    metrics = classification_metrics(np.zeros((4, 1)), np.full((4, 1), 0.2))
    assert all(np.isnan(v) for v in metrics.values())
    reg = regression_resampled(np.full((5, 1), 3.0), np.arange(5.0)[:, None], Resamples.from_weights(np.ones(5)))
    assert np.isnan(reg["r2"][0]) and reg["mae"][0] == pytest.approx(np.mean(np.abs(3.0 - np.arange(5.0))))
    y3, w3 = np.array([[0.1], [0.7], [0.3]]), np.array([[0.0, 0.0, 3.0], [1.0, 0.0, 2.0]])  # one value drawn, two
    reg = regression_resampled(y3, np.zeros((3, 1)), Resamples.from_weights(w3))
    assert np.isnan(reg["r2"][0]) and np.isnan(r2(y3[:, 0], np.zeros(3), w3[0]))
    assert reg["r2"][1] == pytest.approx(r2(y3[:, 0], np.zeros(3), w3[1])) and np.isfinite(reg["r2"][1])
    with pytest.raises(ValueError, match="counts must be"):
        Resamples(np.ones((2, 3)), np.array([0, 3]))


def test_every_metric_of_a_cell_is_scored_on_every_resample_without_a_dense_weight_matrix():
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(80), 3)
    Y = rng.integers(0, 2, (len(pids), 2))
    X = Y @ rng.normal(size=(2, 6)) + rng.normal(size=(len(pids), 6))
    train, test = np.flatnonzero(pids < 50), np.flatnonzero(pids >= 50)
    res = run_probe({"x": X, "noise": rng.normal(size=X.shape)}, Y, ["a", "b"], pids, split=(train, test),
                    fractions=(1.0,), kind="multilabel", n_boot=200, reference="noise",
                    metrics=("auroc", "auprc", "brier", "ece"))
    row = next(r for r in res.rows if r["encoder"] == "x")
    assert row["auroc_ci"][0] < row["auroc"] < row["auroc_ci"][1]
    assert res.comparisons[0]["auroc_ci"][0] > 0
    W = Resamples.patient_bootstrap(pids[test], 200, 1)  # run_probe draws with seed + 1
    boots = [loop_classification(Y[test].astype(float), res.predictions["internal"]["x"], w) for w in W]
    assert row["auroc_ci"] == pytest.approx(list(np.percentile([b["auroc"] for b in boots], [2.5, 97.5])), abs=1e-12)


def test_macro_auroc_resampled_handles_many_records_per_value():
    # 20k records on 7 distinct scores: the tables are [7, patients], not [n, n]
    rng = np.random.default_rng(3)
    n = 20_000
    y = rng.integers(0, 2, n)
    s = rng.integers(0, 7, n) + y
    R = Resamples.patient_bootstrap(rng.integers(0, 5_000, n), 20, 1)
    got = macro_auroc_resampled(y[:, None], [s[:, None].astype(float)], R)
    np.testing.assert_allclose(got, dense_auroc(y, s, R.record_weights()), rtol=1e-12)
