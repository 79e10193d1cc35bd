"""The EEGMAT ablation (benchmarks/eeg_ablation.py): normalisations, band-power anchor, subject folds, and a
--quick run on a folder of other subjects' files (symlinked subset of the shared EEGMAT recordings)."""
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tscl.benchmarks import eeg_ablation as E
from tscl.probes import PatientLeakageError

EEGMAT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "physionet" / "eegmat"


def _data(seed: int, n_subjects: int = 4, per_rec: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    pids = np.repeat([f"S{i}" for i in range(n_subjects)], 2 * per_rec)
    rec = np.array([f"{p}_{1 + (j // per_rec)}" for p, j in zip(pids, np.tile(np.arange(2 * per_rec), n_subjects))])
    gain = rng.uniform(1, 50, size=(len(pids), 1, 1)) * np.where(np.char.endswith(rec, "_2"), 2.0, 1.0)[:, None, None]
    X = (rng.standard_normal((len(pids), 3, 64)) * gain + rng.normal(0, 5, (len(pids), 3, 1))).astype(np.float32)
    return {"X": X, "pids": pids, "rec": rec, "y": np.char.endswith(rec, "_2").astype(float), "fs": 32.0}


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_normalisations_standardise_over_what_they_name(seed):
    d = _data(seed)
    w = E.normalise(d, "window", None)
    assert np.allclose(w.mean(2), 0, atol=1e-4) and np.allclose(w.std(2), 1, atol=1e-3)
    for norm, key in (("recording", "rec"), ("subject", "pids")):
        z = E.normalise(d, norm, None)
        for g in np.unique(d[key]):
            rows = d[key] == g
            assert np.allclose(z[rows].mean(axis=(0, 2)), 0, atol=1e-4)
            assert np.allclose(z[rows].std(axis=(0, 2)), 1, atol=1e-3)
    # subject z-scoring keeps the rest/task power contrast within a subject; recording z-scoring erases it
    sub, rec = E.normalise(d, "subject", None), E.normalise(d, "recording", None)
    task = d["y"] == 1
    assert sub[task].std() > sub[~task].std()
    assert abs(rec[task].std() - rec[~task].std()) < 1e-3


def test_fixed_scaling_takes_its_scale_from_the_training_rows_only():
    d = _data(0)
    train = np.flatnonzero(np.isin(d["pids"], ["S0", "S1"]))
    f = E.normalise(d, "fixed", train)
    assert np.allclose(f * d["X"][train].std(), d["X"], rtol=1e-5, atol=1e-3)
    d2 = {**d, "X": d["X"].copy()}
    d2["X"][~np.isin(np.arange(len(d["X"])), train)] *= 1000  # test windows changed: the scale is not
    assert np.allclose(E.normalise(d2, "fixed", train)[train], f[train])
    with pytest.raises(ValueError, match="norm must be one of"):
        E.normalise(d, "median", train)


@settings(max_examples=10, deadline=None)
@given(band=st.integers(0, len(E.BANDS) - 1))
def test_band_power_features_peak_in_the_band_of_a_sinusoid(band):
    lo, hi = E.BANDS[band]
    fs, t = 100.0, np.arange(400) / 100.0
    x = np.sin(2 * np.pi * (lo + hi) / 2 * t)[None, None, :].repeat(2, 1).astype(np.float32)
    F = E.band_power_features(x, fs).reshape(1, 2, len(E.BANDS))
    assert (F.argmax(-1) == band).all()
    low = E.band_power_features(x[..., ::4], fs / 4)  # 25 Hz: only the bands below 12.5 Hz remain
    assert low.shape == (1, 2 * 3) and np.isfinite(low).all()


def test_subject_folds_put_each_subject_in_one_fold_and_fold_rows_refuse_leakage():
    pids = np.repeat([f"S{i:02d}" for i in range(11)], 5)
    folds = E.subject_folds(pids, 5, seed=3)
    for s in np.unique(pids):
        assert len(set(folds[pids == s])) == 1
    sizes = sorted(np.bincount([folds[pids == s][0] for s in np.unique(pids)]))
    assert sizes == [2, 2, 2, 2, 3]
    tr, te = E.fold_rows(pids, folds, 0)
    assert not set(pids[tr]) & set(pids[te]) and len(tr) + len(te) == len(pids)
    bad = folds.copy()
    bad[0] = (bad[1] + 1) % 5  # one window of a subject in another fold
    k = bad[0]
    with pytest.raises(PatientLeakageError):
        E.fold_rows(pids, bad, k)
    with pytest.raises(ValueError, match="cannot fill"):
        E.subject_folds(pids[:10], 5, seed=0)


def test_seed_groups_are_rows_that_differ_only_in_the_seed():
    base = {**E.BASE, "method": "pclr"}
    rows = [{"name": "a", "config": base}, {"name": "b", "config": {**base, "seed": 1}},
            {"name": "c", "config": {**base, "steps": 9, "seed": 1}}, {"name": "d", "config": {**base, "seed": 2}},
            {"name": "e", "config": {**base, "method": "bandpower"}}, {"name": "f", "config": {**base, "method": "bandpower"}}]
    assert [[r["name"] for r in g] for g in E.seed_groups(rows)] == [["a", "b", "d"]]


def test_config_key_tells_model_seeds_apart():
    import argparse

    args = argparse.Namespace(folds=5, seed=0, bootstrap=1000, fs=100.0, root=".")
    base = {**E.BASE, "method": "pclr"}
    keys = {E.config_key({**base, "seed": s}, args) for s in (0, 1, 2)}
    assert len(keys) == 3
    assert E.config_key(base, args) not in keys  # an explicit seed is a setting of its own
    assert E.config_key(base, argparse.Namespace(**{**vars(args), "seed": 1})) != E.config_key(base, args)
    assert E.config_key(base, args) == E.config_key(dict(reversed(base.items())), args)


def test_unknown_row_is_refused_in_one_line(tmp_path, capsys):
    assert E.main(["--root", str(tmp_path), "--out", str(tmp_path / "o"), "--only", "today,bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bogus" in err[0]


@pytest.mark.skipif(not EEGMAT.is_dir(), reason=f"shared EEGMAT recordings not at {EEGMAT}")
def test_quick_ablation_on_a_folder_of_other_subjects(tmp_path):
    root = tmp_path / "eegmat_other"
    root.mkdir()
    both = sorted({p.name[:9] for p in EEGMAT.glob("Subject*_1.edf")} & {p.name[:9] for p in EEGMAT.glob("Subject*_2.edf")})
    subjects = both[:4]
    for s in subjects:
        for k in (1, 2):
            (root / f"{s}_{k}.edf").symlink_to(EEGMAT / f"{s}_{k}.edf")
    out = tmp_path / "out"
    assert E.main(["--root", str(root), "--out", str(out), "--cache", str(tmp_path / "c"), "--quick"]) == 0
    res = json.loads((out / "eeg_ablation.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"today", "anchor/fixed", "recipe", "recipe/seed=1"}
    for name in ("today", "recipe", "recipe/seed=1"):
        r = rows[name]
        assert {x["encoder"] for x in r["rows"]} == {"pretrained", "random-init"}
        assert r["groups"] == len(subjects) and r["subjects"] == len(subjects)
        assert all(0 <= x["auroc"] <= 1 for x in r["rows"])
        assert [c["reference"] for c in r["comparisons"]] == ["random-init"]
        folds = r["folds"]
        assert set(folds) == set(subjects)
        for k in range(2):  # the hidden-subject rule, read back from each pretraining run
            run = out / "runs" / name.replace("/", "_") / f"fold{k}"
            seen = set(json.loads((run / "patients.json").read_text())["patients"])
            assert seen and not seen & {s for s, f in folds.items() if f == k}
    assert {x["encoder"] for x in rows["anchor/fixed"]["rows"]} == {"band power"}
    (seeds,) = res["seeds"]  # the recipe's two seeds, averaged
    assert seeds["rows"] == ["recipe", "recipe/seed=1"] and seeds["seeds"] == [0, 1]
    for n in ("pretrained", "random-init"):
        each = [next(x["auroc"] for x in rows[r]["rows"] if x["encoder"] == n) for r in seeds["rows"]]
        assert seeds[n]["auroc"] == pytest.approx(np.mean(each))
        assert seeds[n]["ci_low"] <= seeds[n]["ci_high"]
    assert seeds["delta"]["delta"] == pytest.approx(seeds["pretrained"]["auroc"] - seeds["random-init"]["auroc"])
    assert seeds["delta_per_seed"] == [next(c["delta"] for c in rows[r]["comparisons"]) for r in seeds["rows"]]
    assert (out / "eeg_ablation.png").stat().st_size > 0
    md = (out / "eeg_ablation.md").read_text()
    assert md.count("| today |") == 1 and "recording positives" in md
    # the rows are reused when nothing changed
    before = (out / "rows" / "today.json").stat().st_mtime_ns
    assert E.main(["--root", str(root), "--out", str(out), "--cache", str(tmp_path / "c"), "--quick",
                   "--only", "today"]) == 0
    assert (out / "rows" / "today.json").stat().st_mtime_ns == before


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as exit_:
        E.main(["--help"])
    assert exit_.value.code == 0 and "--bootstrap" in capsys.readouterr().out
