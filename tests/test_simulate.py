import numpy as np
import polars as pl
import pytest
import wfdb

from tscl.loaders import load_wfdb_cohort, read_wfdb
from tscl.loaders.wfdb_write import write_wfdb
from tscl.simulate import LEADS, CohortConfig, simulate_patients, synthesize_ecg, write_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, CohortConfig(n_patients=40, seed=3), progress=False)
    return out


def test_cohort_structure(cohort):
    meta = pl.read_csv(cohort / "metadata.csv")
    visits = meta.group_by("patient_id").len()["len"]
    assert meta["patient_id"].n_unique() == 40
    assert visits.min() >= 2 and visits.max() <= 6
    for col in ("lvh", "bbb", "af", "tachy", "brady", "mace", "age", "sex", "visit_time", "lab_potassium"):
        assert col in meta.columns
    # visits of one patient are at different, increasing dates
    for _, g in meta.group_by("patient_id"):
        t = g["visit_time"].to_list()
        assert t == sorted(t) and len(set(t)) == len(t)
    rec = read_wfdb(cohort / meta["path"][0])
    assert rec.signal.shape == (12, 1000) and rec.fs == 100 and rec.channels == LEADS


def test_deterministic_by_seed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_cohort(a, CohortConfig(n_patients=5, seed=11), progress=False)
    write_cohort(b, CohortConfig(n_patients=5, seed=11), progress=False)
    assert (a / "metadata.csv").read_text() == (b / "metadata.csv").read_text()
    assert (a / "records" / "P00002_v1.dat").read_bytes() == (b / "records" / "P00002_v1.dat").read_bytes()
    c = tmp_path / "c"
    write_cohort(c, CohortConfig(n_patients=5, seed=12), progress=False)
    assert (a / "metadata.csv").read_text() != (c / "metadata.csv").read_text()


def test_limb_leads_obey_einthoven(cohort):
    meta = pl.read_csv(cohort / "metadata.csv")
    s = read_wfdb(cohort / meta["path"][3]).signal
    # III, aVR, aVL, aVF are derived from I and II (Einthoven, Goldberger), to 1 uV quantisation
    i, ii = s[0], s[1]
    for derived, expected in ((s[2], ii - i), (s[3], -(i + ii) / 2), (s[4], i - ii / 2), (s[5], ii - i / 2)):
        np.testing.assert_allclose(derived, expected, atol=2e-3)

def _qrs_width_ms(signal, fs):
    """Width of the mean QRS complex in lead V1: time above 20 % of its peak around R."""
    lead = signal[1] - np.median(signal[1])
    peak = np.abs(lead)
    return float((peak > 0.3 * peak.max()).sum() / fs * 1000)


def test_conditions_change_the_waveform_as_labelled():
    cfg = CohortConfig(n_patients=200, seed=5)
    patients = simulate_patients(cfg)
    rng = np.random.default_rng(0)

    def mean_feature(cond, value, fn):
        vals = []
        for p in patients:
            if p[cond] == value and not p["tachy"] and not p["brady"]:
                sig, af_now, _ = synthesize_ecg(p, 0, rng)
                vals.append(fn(sig, af_now))
        return np.mean(vals)

    voltage = lambda s, _: np.ptp(s[6:], axis=1).max()  # noqa: E731  (largest precordial peak-to-peak)
    assert mean_feature("lvh", 1, voltage) > 1.4 * mean_feature("lvh", 0, voltage)

    def rr_irregularity(s, _):
        lead = s[1] - np.median(s[1])
        thr = 0.5 * np.abs(lead).max()
        peaks = np.flatnonzero((np.abs(lead[1:-1]) > thr) & (np.abs(lead[1:-1]) >= np.abs(lead[:-2])) & (np.abs(lead[1:-1]) >= np.abs(lead[2:])))
        peaks = peaks[np.concatenate([[True], np.diff(peaks) > 20])]
        rr = np.diff(peaks)
        return np.std(rr) / np.mean(rr)

    assert mean_feature("af", 1, rr_irregularity) > 2 * mean_feature("af", 0, rr_irregularity)
    width = lambda s, _: _qrs_width_ms(s, 100.0)  # noqa: E731
    assert mean_feature("bbb", 1, width) > mean_feature("bbb", 0, width)


def test_fast_writer_round_trips_through_wfdb(tmp_path):
    sig = np.random.default_rng(0).normal(0, 0.5, size=(3, 250)).astype(np.float32)
    write_wfdb(tmp_path / "r", sig, 250.0, ["I", "II", "V1"])
    rec = wfdb.rdrecord(str(tmp_path / "r"))
    assert rec.fs == 250 and rec.sig_name == ["I", "II", "V1"] and rec.units == ["mV"] * 3
    np.testing.assert_allclose(rec.p_signal.T, sig, atol=0.5e-3 + 1e-6)
    with pytest.raises(ValueError, match="non-finite"):
        write_wfdb(tmp_path / "bad", np.array([[0.0, np.nan]]), 100.0, ["I"])
    with pytest.raises(ValueError, match="int16 range"):
        write_wfdb(tmp_path / "big", np.array([[0.0, 40.0]]), 100.0, ["I"])


def test_cohort_loads_through_the_public_loader(cohort):
    cache = load_wfdb_cohort(cohort, progress=False)
    meta = pl.read_csv(cohort / "metadata.csv")
    assert len(cache) == meta.height
    assert cache.index["patient_id"].to_list() == meta["patient_id"].to_list()
    assert cache.stack().shape == (meta.height, 12, 1000)
    np.testing.assert_array_equal(cache.index["lvh"].to_numpy(), meta["lvh"].to_numpy())
