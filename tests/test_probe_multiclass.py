"""Multi-class probes (one class per row, decided at the argmax) and external validation on another source's task.

The decision metrics (F1 per class and their means, sensitivity, positive predictivity, accuracy) are held to
scikit-learn's definitions, on every weighting a patient-level bootstrap draws; a probe table scores them with
CIs; bad metric names and rows that are not one class are refused in one line; the supervised baseline trains
a softmax; ``EvalSpec.test_task`` tests on a task of another dataset whose label has another name.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from tscl.probes import EvalSpec, SupervisedBaseline, evaluate, run_probe
from tscl.probes.bootstrap import Resamples
from tscl.probes.metrics import check_metrics, decision_metrics, metric_name

torch.set_num_threads(1)
LABELS = ["n", "a", "o", "x"]
METRICS = ("f1", "f1:n+a+o", "accuracy", "se:a", "ppv:a", "f1:x")


def _sklearn(y, said, w, metric):
    """The metric by scikit-learn on labels ``y`` and decisions ``said`` under sample weights ``w``."""
    keep = w > 0
    y, said, w = y[keep], said[keep], w[keep]
    present = sorted(set(y) | set(said))  # a class neither present nor predicted has no F1 (left out of the means)
    if metric == "accuracy":
        return accuracy_score(y, said, sample_weight=w)
    name, _, classes = metric.partition(":")
    ks = [LABELS.index(c) for c in classes.split("+")] if classes else present
    if name == "f1":
        per = f1_score(y, said, labels=range(4), average=None, sample_weight=w, zero_division=np.nan)
        vals = [per[k] for k in ks if k in present]
        return np.mean(vals) if vals else np.nan
    k = ks[0]
    if name == "se":
        return recall_score(y, said, labels=[k], average=None, sample_weight=w, zero_division=np.nan)[0] \
            if k in y else np.nan
    return precision_score(y, said, labels=[k], average=None, sample_weight=w, zero_division=np.nan)[0] \
        if k in said else np.nan


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(0, 2**31 - 1), st.booleans())
def test_decision_metrics_equal_sklearn_under_every_bootstrap_weighting(n, seed, absent):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3 if absent else 4, n)  # with ``absent`` the class x never occurs (it may be predicted)
    P = rng.random((n, 4))
    P[rng.random(n) < 0.5, :] = 0.5  # ties: the first class of the tie is the decision, as np.argmax takes it
    Y = np.eye(4)[y]
    pids = rng.integers(0, max(1, n // 2), n)
    W = Resamples.patient_bootstrap(pids, 8, seed)
    got = decision_metrics(Y, P, W, LABELS, METRICS)
    dense = W.record_weights()
    said = np.argmax(P, axis=1)
    for m in METRICS:
        want = np.array([_sklearn(y, said, w, m) for w in dense])
        np.testing.assert_allclose(got[m], want, equal_nan=True, err_msg=m)


def test_metric_names_are_checked_and_named():
    assert check_metrics(METRICS, "multiclass", LABELS) == METRICS
    for bad, why in [("f1:n+zz", "'zz' is not a label"), ("se:n+a", "se is of one class"),
                     ("kappa", "is not one of a multiclass task's"), ("se:a", "is not one of a multilabel task's")]:
        with pytest.raises(ValueError, match=why):
            check_metrics((bad,), "multilabel" if bad == "se:a" else "multiclass", LABELS)
    assert metric_name("f1:n+a+o") == "F1 (n+a+o)" and metric_name("ppv:a") == "+P (a)"


def _classes(n_patients=120, seed=0, signal=2.0):
    """Four classes, per-patient features shifted along one axis per class; every patient has 2 rows."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(n_patients), 2).astype(str)
    y = np.repeat(rng.choice(4, n_patients, p=[0.55, 0.15, 0.25, 0.05]), 2)
    X = rng.normal(size=(len(y), 6))
    X[np.arange(len(y)), y] += signal
    return X, np.eye(4)[y], pids


def test_multiclass_probe_table_scores_the_argmax_with_cis_and_beats_noise():
    X, Y, pids = _classes()
    train, test = np.flatnonzero(pids.astype(int) < 80), np.flatnonzero(pids.astype(int) >= 80)
    noise = np.random.default_rng(1).normal(size=X.shape)
    res = run_probe({"real": X, "noise": noise}, Y, LABELS, pids, split=(train, test), fractions=(1.0,), n_boot=200,
                    kind="multiclass", metrics=("f1:n+a+o", "auroc", "accuracy", "se:a", "ppv:a"), reference="noise")
    real, noise_cell = res.cell("real", 1.0), res.cell("noise", 1.0)
    assert real["f1:n+a+o"] > 0.6 > noise_cell["f1:n+a+o"] and real["auroc"] > 0.85
    for m in ("f1:n+a+o", "accuracy", "se:a", "ppv:a"):
        lo, hi = real[f"{m}_ci"]
        assert lo <= real[m] <= hi
    comp = next(c for c in res.comparisons if c["encoder"] == "real")
    assert comp["ci_low"] > 0 and comp["delta"] == pytest.approx(real["f1:n+a+o"] - noise_cell["f1:n+a+o"])
    text = res.to_markdown()
    assert "F1 (n+a+o) [95 % CI]" in text and "Se (a) [95 % CI]" in text and "+P (a) [95 % CI]" in text


def test_multiclass_refuses_rows_that_are_not_one_class():
    X, Y, pids = _classes(40)
    Y[3] = [1, 1, 0, 0]
    with pytest.raises(ValueError, match="exactly one of n, a, o, x set per row; row 3 has 2"):
        run_probe({"e": X}, Y, LABELS, pids, fractions=(1.0,), n_boot=10, kind="multiclass")


def test_supervised_multiclass_trains_a_softmax():
    rng = np.random.default_rng(0)
    n = 150
    y = rng.integers(0, 3, n)
    t = np.arange(128) / 64
    X = (0.3 * rng.standard_normal((n, 1, 128)) + np.sin(2 * np.pi * (2 + 3 * y[:, None, None]) * t)).astype(np.float32)
    pids = np.arange(n).astype(str)
    base = SupervisedBaseline(X, "multiclass", "cnn1d", {"widths": [8, 16]}, max_steps=120)
    P = base(np.eye(3)[y], np.arange(100), np.arange(100, n), pids, seed=0)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
    assert (P.argmax(axis=1) == y[100:]).mean() > 0.8


def test_external_validation_on_another_task_with_another_label_name(tmp_path):
    """Trained on one CinC-2017-like folder's ``af`` column, tested on another folder's ``class=A`` on the rows the
    external task names: the labels are matched in order, and the external rows are the other task's."""
    from test_source_cinc2017 import CLASSES, ecg, make_training2017, write_record

    from tscl.tasks import TASKS, register_task

    a = make_training2017(tmp_path / "a", per_class=20, seed=0)
    (tmp_path / "b").mkdir()
    rng = np.random.default_rng(1)
    b = {f"A{50001 + i}": CLASSES[i % 4] for i in range(48)}  # other records (patients) than a's
    for name, cls in b.items():
        write_record(tmp_path / "b", name, ecg(cls, 10, rng))
    (tmp_path / "b" / "REFERENCE.csv").write_text("".join(f"{k},{v}\n" for k, v in b.items()))
    register_task("test-af-by-class", "cinc2017", ("class=A",), "binary", rows={"class": ["N", "A"]},
                  test_splits=("train", "val", "test"))
    try:
        opts = {"fs": 100, "length_s": 8}
        spec = EvalSpec(task="cinc2017-af", root=tmp_path / "a", dataset_kwargs=opts, test_task="test-af-by-class",
                        test_root=tmp_path / "b", test_dataset_kwargs=opts, fractions=(1.0,), n_boot=50,
                        cache=tmp_path / "cache")
        report = evaluate(spec)
    finally:
        TASKS.pop("test-af-by-class")
    assert report.data["rows"] == sum(v in ("N", "A") for v in a.values())  # cinc2017-af: N and A records only
    external = report.data["external"]
    assert external["rows"] == sum(v in ("N", "A") for v in b.values())  # every N and A record of b, nothing else
    assert any("external labels: class=A for af (task test-af-by-class)" in n for n in report.notes)
    assert {r["test"] for r in report.rows} == {"internal", "external"}
    with pytest.raises(ValueError, match="has 4 label"):
        evaluate(EvalSpec(task="cinc2017-af", root=tmp_path / "a", dataset_kwargs=opts, test_task="cinc2017-rhythm",
                          test_root=tmp_path / "b", test_dataset_kwargs=opts, fractions=(1.0,), n_boot=10,
                          cache=tmp_path / "cache"))
    with pytest.raises(ValueError, match="test_task 'ptbxl-afib' is defined on source 'ptbxl', not 'cinc2017'"):
        evaluate(EvalSpec(task="cinc2017-af", root=tmp_path / "a", test_task="ptbxl-afib", test_dataset="cinc2017",
                          test_root=tmp_path / "b"))
    assert len(a) == 80


def test_pairs_add_paired_comparisons_between_any_two_rows():
    X, Y, pids = _classes(80, seed=2)
    rng = np.random.default_rng(3)
    feats = {"strong": X, "weak": X + 3 * rng.normal(size=X.shape), "noise": rng.normal(size=X.shape)}
    split = (np.flatnonzero(pids.astype(int) < 50), np.flatnonzero(pids.astype(int) >= 50))
    res = run_probe(feats, Y, LABELS, pids, split=split, fractions=(0.5, 1.0), repeats=2, n_boot=100,
                    kind="multiclass", reference="noise", pairs=[("strong", "weak")])
    for f in (0.5, 1.0):
        pair = [c for c in res.comparisons if (c["encoder"], c["reference"], c["fraction"]) == ("strong", "weak", f)]
        assert len(pair) == 1
        assert pair[0]["delta"] == pytest.approx(res.cell("strong", f)["auroc"] - res.cell("weak", f)["auroc"])
        assert pair[0]["ci_low"] <= pair[0]["delta"] <= pair[0]["ci_high"]
    assert sum(c["reference"] == "noise" for c in res.comparisons) == 4  # 2 rows x 2 fractions, as without pairs
    assert "| strong − weak | 100 % |" in res.to_markdown()
    with pytest.raises(ValueError, match="'nope' is not a row; rows: strong, weak, noise"):
        run_probe(feats, Y, LABELS, pids, split=split, fractions=(1.0,), n_boot=10, kind="multiclass",
                  pairs=[("strong", "nope")])
