"""Probe and report tables never print a degenerate cell as a number with a CI, and refuse non-finite features.

Degenerate cells (one class in the test split, fewer than k = MIN_CLASS_ROWS rows of a class there,
a label untrainable in every fit) are ``n/a (why)`` in every table: ``tscl probe`` (ProbeResult), task
and report tables (the evaluation report, every fraction or 100 % alone) and bench_real's tables.
"""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tscl.probes import run_probe
from tscl.probes.cells import MIN_CLASS_ROWS, fmt, label_problem
from tscl.probes.metrics import metrics_for


def evaluate_probe(features, Y, labels, pids, split, kind=None, **kw):
    """One fraction (100 %), every metric of the kind: what the task tables print."""
    kind = kind or ("multilabel" if np.shape(Y)[1] > 1 else "binary")
    return run_probe(features, Y, labels, pids, split=split, fractions=(1.0,), kind=kind, metrics=metrics_for(kind),
                     **kw)

N_TRAIN, N_TEST = 40, 30  # one row per patient


def _data(test_positives: int, train_positives: int = 12, seed: int = 0, labels: int = 1):
    """Informative features, a first label with ``test_positives`` positive test rows and more labels with
    enough of each class; rows are patients, the first N_TRAIN train and the rest test."""
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_TEST
    Y = np.zeros((n, labels))
    Y[rng.choice(N_TRAIN, train_positives, replace=False), 0] = 1
    Y[N_TRAIN + rng.choice(N_TEST, test_positives, replace=False), 0] = 1
    for j in range(1, labels):
        Y[:, j] = rng.random(n) < 0.5
    X = np.concatenate([Y + 0.8 * rng.normal(size=Y.shape), rng.normal(size=(n, 3))], axis=1)
    pids = np.array([f"p{i}" for i in range(n)])
    return X, Y, pids, (np.arange(N_TRAIN), np.arange(N_TRAIN, n))


def _assert_no_number_with_a_ci(text: str) -> None:
    assert "nan" not in text.lower().replace("n/a", "")
    assert "0.500 [0.500, 0.500]" not in text


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 9))
def test_a_label_is_scored_only_with_k_rows_of_each_class_in_the_test_split(m):
    X, Y, pids, split = _data(test_positives=m)
    res = run_probe({"enc": X}, Y, ["y"], pids, fractions=(1.0,), n_boot=50, split=split)
    cell, text = res.rows[0], res.to_markdown()
    if m < MIN_CLASS_ROWS:  # the examples: one class gave "nan [nan, nan]", one positive "0.183 [0.181, 0.240]"
        why = "one class in the test split (no positive among 30 rows)" if m == 0 else \
            f"{m} positive row{'s' if m > 1 else ''} in the test split, fewer than {MIN_CLASS_ROWS}"
        assert cell["n/a"] == why and f"n/a ({why})" in text and np.isnan(cell["auroc"])
        _assert_no_number_with_a_ci(text)
    else:
        assert cell["n/a"] is None and cell["ci_low"] <= cell["auroc"] <= cell["ci_high"]
        assert f"{cell['auroc']:.3f} [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}]" in text
    ev = evaluate_probe({"enc": X}, Y, ["y"], pids, split, n_boot=50)
    ev_text = ev.to_markdown()
    assert (ev.rows[0]["n/a"] is not None) == (m < MIN_CLASS_ROWS)
    assert (ev_text.count("n/a (") == 4) == (m < MIN_CLASS_ROWS)  # AUROC, AUPRC, Brier, ECE
    _assert_no_number_with_a_ci(ev_text)


def test_untrainable_cells_are_na_not_half():
    """Every fit untrainable (the training rows hold one class) printed ".500 [.500, .500]"."""
    X, Y, pids, split = _data(test_positives=10, train_positives=0)
    res = run_probe({"enc": X, "random-init": X[:, ::-1].copy()}, Y, ["y"], pids, fractions=(0.1, 1.0), n_boot=50,
                    split=split, reference="random-init")
    text = res.to_markdown()
    assert all(r["n/a"] == "untrainable: the training rows hold one class in all 3 fits"
               for r in res.rows if r["fraction"] == 0.1)
    assert "n/a (untrainable: the training rows hold one class) |" in text  # the 100 % cells: one fit
    assert all(c["n/a"] for c in res.comparisons) and "Δ" in text
    _assert_no_number_with_a_ci(text)
    ev = evaluate_probe({"enc": X}, Y, ["y"], pids, split, n_boot=50)
    assert ev.rows[0]["n/a"] == "untrainable: the training rows hold one class"


def test_a_degenerate_label_leaves_the_macro_and_is_named_under_the_table():
    X, Y, pids, split = _data(test_positives=2, labels=3)
    both = run_probe({"enc": X}, Y, ["rare", "b", "c"], pids, fractions=(1.0,), n_boot=50, split=split)
    per_label = both.rows[0]["per_label"]
    assert both.rows[0]["n/a"] is None and np.isclose(both.rows[0]["auroc"], (per_label["b"] + per_label["c"]) / 2)
    assert both.rows[0]["left_out"] == {"rare": "2 positive rows in the test split, fewer than 5"}
    assert np.isnan(both.rows[0]["per_label"]["rare"])
    assert "- rare is left out of the macro AUROC: 2 positive rows in the test split, fewer than 5" \
        in both.to_markdown()
    ev = evaluate_probe({"enc": X}, Y, ["rare", "b", "c"], pids, split, n_boot=50)
    assert ev.rows[0]["left_out"] == {"rare": "2 positive rows in the test split, fewer than 5"}
    assert "- rare is left out of the averages: 2 positive rows" in ev.to_markdown()


def test_a_label_untrainable_in_every_fit_counts_as_half_and_is_named():
    """Its constant prevalence prediction is what that label budget gives: kept at 0.5, and said so."""
    X, Y, pids, split = _data(test_positives=10, labels=2)
    Y[:N_TRAIN, 0] = 0
    res = run_probe({"enc": X}, Y, ["never", "b"], pids, fractions=(1.0,), n_boot=50, split=split)
    row = res.rows[0]
    assert row["n/a"] is None and row["per_label"]["never"] == 0.5
    assert np.isclose(row["auroc"], (0.5 + row["per_label"]["b"]) / 2)
    assert "- never at 100 %: untrainable: the training rows hold one class; its prevalence prediction counts as " \
           "AUROC 0.5" in res.to_markdown()
    ev = evaluate_probe({"enc": X}, Y, ["never", "b"], pids, split, n_boot=50)
    assert ev.rows[0]["n/a"] is None and "- never at 100 %: untrainable: the training rows hold one class" in \
        ev.to_markdown()


def test_one_test_patient_gives_a_value_without_a_ci():
    X, Y, _, (train, _) = _data(test_positives=15)
    pids = np.array([f"p{i}" for i in range(N_TRAIN)] + ["one"] * N_TEST)
    text = run_probe({"enc": X}, Y, ["y"], pids, fractions=(1.0,), n_boot=50, split=(train, np.arange(N_TRAIN, 70))
                     ).to_markdown()
    assert "(no CI: 1 test patient)" in text and "[" not in text.splitlines()[2]


def test_non_finite_features_are_refused_naming_the_rows():
    X, Y, pids, split = _data(test_positives=10)
    X[[3, 50]] = np.nan
    X[7, 1] = np.inf
    for fn in (lambda: run_probe({"enc": X}, Y, ["y"], pids, fractions=(1.0,), n_boot=10, split=split),
               lambda: evaluate_probe({"enc": X}, Y, ["y"], pids, split, n_boot=10)):
        with pytest.raises(ValueError, match=r"^features 'enc': 3 of 70 rows hold NaN or inf: rows \[3, 7, 50\]"):
            fn()


def test_tscl_probe_refuses_an_embeddings_file_with_nan_rows_naming_it(tmp_path, monkeypatch, capsys):
    from tscl.cli import main
    from tscl.simulate import CohortConfig, write_cohort

    write_cohort(tmp_path / "cohort", CohortConfig(n_patients=8), progress=False)
    monkeypatch.chdir(tmp_path)
    from tscl.datasets import open_dataset

    ids = open_dataset("wfdb", "cohort", progress=False).index["record_id"].to_list()
    feats = np.ones((len(ids), 4), np.float32)
    feats[[1, 4]] = np.nan
    np.savez("emb.npz", features=feats, record_id=np.array(ids))
    capsys.readouterr()
    assert main(["probe", "--data", "cohort", "--embeddings", "emb.npz", "--labels", "lvh", "--out", "p", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"tscl probe: error: emb.npz: features: 2 of {len(ids)} rows hold NaN or inf: rows [1, 4] (record ids "
                   f"{[ids[1], ids[4]]}); re-embed with a finite encoder or drop those rows")
    np.savez("cut.npz", features=feats)
    assert main(["probe", "--data", "cohort", "--embeddings", "cut.npz", "--labels", "lvh", "--out", "p"]) == 2
    assert "cut.npz: no 'record_id' array" in capsys.readouterr().err


def test_every_table_prints_na_with_the_reason():
    """The evaluation report's and bench_real's tables go through the same cells."""
    from tscl.benchmarks import bench_real
    from tscl.probes import EvalReport, EvalSpec
    from tscl.probes.table import score_pooled

    X, Y, pids, split = _data(test_positives=1)
    result = run_probe({"enc": X}, Y, ["mortality"], pids, fractions=(1.0,), n_boot=20, split=split)
    report = EvalReport(EvalSpec(task="mimic-mortality"), result, {"dataset": "mimic-iv", "root": "x", "summary": "s"})
    text = report.to_markdown()
    assert "n/a (1 positive row in the test split, fewer than 5)" in text
    _assert_no_number_with_a_ci(text)
    pooled = score_pooled(Y[split[1]], {"random-init": X[split[1], :1], "simclr": X[split[1], 1:2]}, pids[split[1]],
                          n_boot=20, seed=1, references=("random-init",))
    table = bench_real.markdown_pooled("eegmat", pooled)
    assert table.count("n/a (1 positive row in the test split, fewer than 5)") == 3  # two rows and the difference
    _assert_no_number_with_a_ci(table)
    ok = score_pooled(Y[split[1]] * 0 + (np.arange(N_TEST) % 2)[:, None], {"a": X[split[1], :1]}, pids[split[1]],
                      n_boot=20, seed=1)
    assert ok["rows"][0]["ci_low"] <= ok["rows"][0]["auroc"] <= ok["rows"][0]["ci_high"]
    assert json.loads(json.dumps(pooled, default=float))["rows"][0]["n/a"].startswith("1 positive")


def test_label_problem_and_cell_format():
    assert label_problem([1, 1, 1]) == "one class in the test split (no negative among 3 rows)"
    assert label_problem([0] * 10 + [1] * 5) is None
    assert label_problem([1] * 10 + [0] * 4) == "4 negative rows in the test split, fewer than 5"
    assert fmt(0.81234, (0.7, 0.9)) == "0.812 [0.700, 0.900]"
    assert fmt(0.05, (-0.01, 0.1), signed=True) == "+0.050 [-0.010, +0.100]"
    assert fmt(float("nan"), (0.1, 0.2), "why") == "n/a (why)"
    assert fmt(0.5, (float("nan"), float("nan")), no_ci="1 test patient") == "0.500 (no CI: 1 test patient)"
