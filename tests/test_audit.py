import numpy as np
import pytest

from tscl.probes.audit import (
    alignment,
    audit_embeddings,
    audit_markdown,
    effective_rank,
    patient_reidentification,
    source_shortcut,
    uniformity,
)


def test_effective_rank_collapsed_isotropic_and_constant():
    rng = np.random.default_rng(0)
    line = rng.normal(size=(500, 1)) * rng.normal(size=(1, 32)) + 1e-6 * rng.normal(size=(500, 32))
    assert effective_rank(line) == pytest.approx(1.0, abs=0.01)
    iso = rng.normal(size=(20000, 8))
    assert effective_rank(iso) == pytest.approx(8.0, abs=0.1)
    two = np.zeros((400, 16))
    two[:, :2] = rng.normal(size=(400, 2)) * [1.0, 1.0]
    assert effective_rank(two) == pytest.approx(2.0, abs=0.2)
    assert effective_rank(np.ones((10, 4))) == 0.0


def test_alignment_and_uniformity_limits():
    rng = np.random.default_rng(1)
    pids = np.repeat(np.arange(50), 2)
    base = rng.normal(size=(50, 16))
    same = np.repeat(base, 2, axis=0)
    assert alignment(same, pids) == pytest.approx(0.0, abs=1e-12)
    anti = same.copy()
    anti[1::2] *= -1
    assert alignment(anti, pids) == pytest.approx(4.0)  # antipodal positives, alpha = 2
    assert np.isnan(alignment(same, np.arange(100)))  # no positive pair
    assert uniformity(np.ones((30, 5))) == pytest.approx(0.0, abs=1e-12)  # one point: exp(0)
    spread = uniformity(rng.normal(size=(2000, 64)))
    # uniform on S^63: cos ~ N(0, 1/64), so log E exp(-2 (2 - 2 cos)) = -4 + 8 / 64
    assert spread == pytest.approx(-4 + 8 / 64, abs=0.03)
    assert uniformity(rng.normal(size=(300, 64))  + [[5.0] * 64]) > spread + 1  # clustered: less uniform


def test_reidentification_identical_random_and_chance():
    rng = np.random.default_rng(2)
    counts = rng.integers(1, 5, size=80)
    pids = np.repeat(np.arange(80), counts)
    centres = rng.normal(size=(80, 32))
    same = centres[pids] + 0.0
    r = patient_reidentification(same, pids)
    assert r["rate"] == 1.0
    assert r["queries"] == int(counts[counts >= 2].sum())
    expected_chance = np.mean([(counts[p] - 1) / (len(pids) - 1) for p in pids if counts[p] >= 2])
    assert r["chance"] == pytest.approx(expected_chance)
    rates = [patient_reidentification(np.random.default_rng(s).normal(size=(len(pids), 32)), pids)["rate"]
             for s in range(20)]
    assert abs(np.mean(rates) - r["chance"]) < 0.03
    assert np.isnan(patient_reidentification(same, np.arange(len(pids)))["rate"])


def test_reidentification_excludes_the_query_itself():
    pids = np.array(["a", "a", "b", "b"])
    z = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.05], [0.05, 1.0]])  # each point's NN is the other patient
    assert patient_reidentification(z, pids)["rate"] == 0.0


def test_source_shortcut_detects_a_planted_source_and_not_a_random_one():
    rng = np.random.default_rng(3)
    pids = np.repeat(np.arange(120), 2)
    source = np.where(np.arange(120) % 2, "db_a", "db_b")[pids]
    z = rng.normal(size=(240, 16))
    planted = z.copy()
    planted[:, 0] += 3.0 * (source == "db_a")
    s = source_shortcut(planted, source, pids)
    assert s["auroc"] > 0.95 and s["balanced_accuracy"] > 0.85
    r = source_shortcut(z, source, pids)
    assert abs(r["auroc"] - 0.5) < 0.15
    one = source_shortcut(z, np.full(240, "only"), pids)
    assert np.isnan(one["auroc"]) and "single source" in one["note"]


def test_audit_embeddings_and_markdown():
    rng = np.random.default_rng(4)
    pids = np.repeat(np.arange(30), 3)
    z = rng.normal(size=(30, 8))[pids] + 0.05 * rng.normal(size=(90, 8))
    a = audit_embeddings(z, pids, source=np.where(pids < 15, "x", "y"))
    assert a["reid"]["rate"] > 0.9 and a["alignment"] < 0.1
    table = audit_markdown({"enc": a})
    assert "| enc |" in table and "source AUROC" in table


# --- probes beside the linear one, calibration and regression metrics ---------------------------------

from sklearn.metrics import average_precision_score, brier_score_loss  # noqa: E402

from tscl.probes import make_probe, run_probe  # noqa: E402
from tscl.probes.metrics import classification_metrics, expected_calibration_error, metrics_for, regression_metrics  # noqa: E402,E501
from tscl.probes.protocol import PatientLeakageError  # noqa: E402


def evaluate_probe(features, Y, labels, pids, split, kind=None, **kw):
    """One fraction (100 %), every metric of the kind: what the task tables print."""
    kind = kind or ("multilabel" if np.ndim(Y) == 2 and np.shape(Y)[1] > 1 else "binary")
    return run_probe(features, Y, labels, pids, split=split, fractions=(1.0,), kind=kind, metrics=metrics_for(kind),
                     **kw)


def test_calibration_metrics_against_sklearn_and_known_cases():
    rng = np.random.default_rng(5)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    assert expected_calibration_error(y, p) < 0.02  # calibrated by construction
    over = np.clip(np.where(p > 0.5, p + 0.3, p - 0.3), 0, 1)
    assert expected_calibration_error(y, over) > 0.2
    m = classification_metrics(y[:, None], p[:, None])
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p))
    w = np.zeros(p.size)
    w[:100] = 2.0  # bootstrap-style weights: only the weighted rows count
    assert classification_metrics(y[:, None], p[:, None], w)["brier"] == pytest.approx(brier_score_loss(y[:100], p[:100]))


def _cohort(n_pat=80, per=3, d=12, seed=6):
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(n_pat), per)
    X = rng.normal(size=(n_pat * per, d))
    logit = 3 * X[:, 0] - 2 * X[:, 1]
    Y = (logit + rng.normal(size=len(X)) > 0).astype(int)[:, None]
    return X, Y, pids


@pytest.mark.parametrize("name", ["linear", "knn", "mlp"])
def test_probes_by_name_learn_a_separable_label(name):
    X, Y, pids = _cohort()
    from tscl.probes import patient_split

    split = patient_split(pids, 0.3, seed=0)
    res = evaluate_probe({"x": X, "noise": np.random.default_rng(0).normal(size=X.shape)}, Y, ["y"], pids, split,
                         probe=name, n_boot=100)
    good, noise = res.rows
    assert good["auroc"] > 0.85 and abs(noise["auroc"] - 0.5) < 0.2
    assert good["auroc_ci"][0] <= good["auroc"] <= good["auroc_ci"][1]
    assert 0 <= good["ece"] <= 1 and good["brier"] < noise["brier"]
    assert "AUPRC" in res.to_markdown()
    cmp = evaluate_probe({"x": X, "noise": np.random.default_rng(0).normal(size=X.shape)}, Y, ["y"], pids, split,
                         probe=name, n_boot=100, reference="noise").comparisons
    assert len(cmp) == 1 and cmp[0]["auroc"] > 0.2 and cmp[0]["auroc_ci"][0] > 0  # x beats noise, paired CI above 0
    with pytest.raises(ValueError):
        make_probe("svm")


def test_ridge_regression_and_leakage_check():
    rng = np.random.default_rng(7)
    X, _, pids = _cohort()
    age = 60 + 10 * X[:, 0] + rng.normal(size=len(X))
    from tscl.probes import patient_split

    split = patient_split(pids, 0.3, seed=1)
    res = evaluate_probe({"x": X}, age, ["age"], pids, split, kind="regression", n_boot=100)
    row = res.rows[0]
    assert res.probe == "ridge" and row["r2"] > 0.9 and row["mae"] < 1.5
    assert row["mae_ci"][0] <= row["mae"] <= row["mae_ci"][1]
    assert regression_metrics(age[:, None], np.full((len(age), 1), age.mean()))["r2"] == pytest.approx(0.0)
    train, test = split
    with pytest.raises(PatientLeakageError):
        evaluate_probe({"x": X}, age, ["age"], pids, (train, np.concatenate([test, train[:3]])), kind="regression")


def test_reliability_and_embedding_plots(tmp_path):
    from tscl.plots import plot_embedding_map, plot_reliability

    rng = np.random.default_rng(8)
    p = rng.uniform(size=200)
    out = plot_reliability((rng.uniform(size=200) < p).astype(int), {"a": p}, tmp_path / "rel.png")
    assert out.stat().st_size > 1000
    z = rng.normal(size=(60, 5))
    out = plot_embedding_map(z, np.arange(60) % 2, np.arange(60) // 3, tmp_path / "map.png")
    assert out.stat().st_size > 1000


@pytest.mark.parametrize("n_methods", [2, 11])
def test_label_efficiency_plot_styles_references_and_keeps_many_lines_apart(tmp_path, monkeypatch, n_methods):
    import tscl.plots as plots

    figs = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out: (figs.append(fig), save(fig, out))[1])
    names = [f"m{i}" for i in range(n_methods)] + ["random-init", "supervised (from scratch)"]
    rows = [{"encoder": n, "fraction": f, "auroc": 0.6 + 0.1 * f, "ci_low": 0.5, "ci_high": 0.9}
            for n in names for f in (0.01, 0.1, 1.0)]
    out = plots.plot_label_efficiency(rows, tmp_path / "eff.png", title="t")
    assert out.stat().st_size > 1000
    ax = figs[0].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == set(names)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "10", "100"]  # the measured fractions
    assert lines["random-init"].get_linestyle() == "--" and lines["supervised (from scratch)"].get_linestyle() == ":"
    colours = [lines[n].get_color() for n in names[:-2]]
    assert len(set(map(str, colours))) == n_methods  # no two methods share a colour
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figs[0]).get_renderer()
    inside = ax.get_legend().get_window_extent(renderer).x1 <= ax.get_window_extent(renderer).x1
    assert inside == (len(names) <= 5)  # many lines: the legend moves outside the axes
