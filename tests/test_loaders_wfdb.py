"""WFDB reading, the metadata-driven cohort cache, and errors on bad input."""
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import wfdb

from tscl.loaders import (LoaderError, WaveformCache, apply_nan_policy, build_cache, check_wfdb_header,
                          load_wfdb_cohort, read_wfdb)
from tscl.loaders import wfdb_dir
from tscl.loaders.recording import Recording
from tscl.loaders.wfdb_dir import parse_wfdb_header

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

LEADS = ["I", "II", "V1"]


def write_record(folder: Path, name: str, n: int = 500, fs: int = 250, leads=LEADS, seed: int = 0, fmt="16",
                 signal=None) -> np.ndarray:
    """Write a WFDB record ``folder/name`` and return the physical signal wfdb reads back, [C,T]."""
    rng = np.random.default_rng(seed)
    sig = rng.normal(size=(n, len(leads))) if signal is None else signal
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), p_signal=sig, fmt=[fmt] * len(leads),
                write_dir=str(folder))
    return wfdb.rdrecord(str(folder / name)).p_signal.T


def write_cohort(folder: Path, n_records: int = 4) -> pl.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_records):
        write_record(folder, f"r{i}", seed=i)
    table = pl.DataFrame({
        "patient_id": [f"p{i // 2}" for i in range(n_records)],
        "record_id": [f"r{i}" for i in range(n_records)],
        "visit_time": [f"2020-01-0{i + 1} 10:00:00" for i in range(n_records)],
        "label": [i % 2 for i in range(n_records)],
    })
    table.write_csv(folder / "metadata.csv")
    return table


# --- reading one record -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["16", "212", "80", "24"])
def test_round_trip_matches_rdrecord(tmp_path, fmt):
    expected = write_record(tmp_path, "rt", n=731, fs=360, leads=["MLII", "V5", "avr"], fmt=fmt)
    rec = read_wfdb(tmp_path / "rt", patient_id="p1", labels={"y": 1})
    assert rec.signal.dtype == np.float32 and rec.signal.shape == (3, 731)
    np.testing.assert_allclose(rec.signal, expected, rtol=1e-6, atol=1e-6)
    assert rec.fs == 360.0
    assert rec.channels == ("MLII", "V5", "aVR")
    assert rec.units == ("mV", "mV", "mV")
    assert rec.patient_id == "p1" and rec.record_id == "rt" and rec.labels == {"y": 1}


def test_channel_selection_and_missing_channel(tmp_path):
    expected = write_record(tmp_path, "sel")
    rec = read_wfdb(tmp_path / "sel", channels=["V1", "I"])
    assert rec.channels == ("V1", "I")
    np.testing.assert_allclose(rec.signal, expected[[2, 0]], rtol=1e-6, atol=1e-6)
    with pytest.raises(LoaderError, match=r"sel\.hea.*missing channel.*V6"):
        read_wfdb(tmp_path / "sel", channels=["I", "V6"])


def test_microvolts_are_converted_to_millivolts(tmp_path):
    sig = np.random.default_rng(1).normal(size=(200, 2)) * 1000
    wfdb.wrsamp("uv", fs=100, units=["uV", "uV"], sig_name=["I", "II"], p_signal=sig, fmt=["16", "16"],
                write_dir=str(tmp_path))
    ref = wfdb.rdrecord(str(tmp_path / "uv")).p_signal.T
    rec = read_wfdb(tmp_path / "uv")
    assert rec.units == ("mV", "mV")
    np.testing.assert_allclose(rec.signal, ref / 1000, rtol=1e-5, atol=1e-6)


# --- NaN policies ------------------------------------------------------------------------------

def test_nan_policies(tmp_path):
    sig = np.random.default_rng(2).normal(size=(400, 3))
    sig[100:103, 1] = np.nan  # short gap
    write_record(tmp_path, "gap", signal=sig)
    with pytest.raises(LoaderError, match=r"gap\.hea.*3 non-finite.*'II'.*sample 100"):
        read_wfdb(tmp_path / "gap")
    kept = read_wfdb(tmp_path / "gap", allow_nan=True)
    assert np.isnan(kept.signal).sum() == 3 and kept.quality["nan_samples"] == 3
    filled = read_wfdb(tmp_path / "gap", nan_policy="interpolate", max_gap_s=0.02)  # 5 samples at 250 Hz
    assert np.isfinite(filled.signal).all() and filled.quality["interpolated"] == 3
    a, b = filled.signal[1, 99], filled.signal[1, 103]
    np.testing.assert_allclose(filled.signal[1, 100:103], a + (b - a) * np.arange(1, 4) / 4, rtol=1e-5)
    with pytest.raises(LoaderError, match=r"gap\.hea.*gap of 3 invalid samples"):
        read_wfdb(tmp_path / "gap", nan_policy="interpolate", max_gap_s=0.004)
    with pytest.raises(ValueError, match="nan_policy"):
        apply_nan_policy(sig.astype(np.float32), "ignore", "x")


# --- cohort cache --------------------------------------------------------------------------------

def test_cohort_cache_build_reuse_and_rebuild(tmp_path, monkeypatch):
    root = tmp_path / "cohort"
    write_cohort(root)
    cache = load_wfdb_cohort(root, cache_dir=tmp_path / "cache", progress=False)
    assert isinstance(cache, WaveformCache) and len(cache) == 4
    assert cache.index.columns[:9] == ["patient_id", "record_id", "fs", "n_channels", "n_samples", "offset",
                                       "channels", "visit_time", "source"]
    assert cache.label_columns == ["label"]
    assert cache.index["patient_id"].to_list() == ["p0", "p0", "p1", "p1"]
    assert cache.index["label"].to_list() == [0, 1, 0, 1]
    assert cache.stack().shape == (4, 3, 500) and cache[2].dtype == np.float32
    np.testing.assert_allclose(cache[3], wfdb.rdrecord(str(root / "r3")).p_signal.T, rtol=1e-6, atol=1e-6)
    fingerprint = cache.fingerprint

    def no_parse(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(wfdb, "rdrecord", no_parse)
    monkeypatch.setattr(wfdb, "rdheader", no_parse)
    monkeypatch.setattr(wfdb_dir, "parse_wfdb_header", no_parse)
    again = load_wfdb_cohort(root, cache_dir=tmp_path / "cache", progress=False)
    assert again.fingerprint == fingerprint and len(again) == 4
    monkeypatch.undo()

    write_record(root, "r1", seed=99)  # a record file changes -> rebuild
    rebuilt = load_wfdb_cohort(root, cache_dir=tmp_path / "cache", progress=False)
    assert rebuilt.fingerprint != fingerprint
    np.testing.assert_allclose(rebuilt[1], wfdb.rdrecord(str(root / "r1")).p_signal.T, rtol=1e-6, atol=1e-6)


def test_cohort_parallel_build_equals_serial(tmp_path):
    root = tmp_path / "cohort"
    write_cohort(root, n_records=6)
    serial = load_wfdb_cohort(root, cache_dir=tmp_path / "a", progress=False)
    parallel = load_wfdb_cohort(root, cache_dir=tmp_path / "b", progress=False, workers=2)
    np.testing.assert_array_equal(serial.stack(), parallel.stack())
    assert serial.index.drop("source").equals(parallel.index.drop("source"))


def test_build_cache_round_trip(tmp_path):
    recs = [Recording(np.full((2, 5 + i), i, np.float32), 100.0, ("I", "II"), f"p{i}", f"r{i}", labels={"y": i})
            for i in range(3)]
    cache = build_cache(recs, tmp_path / "c", fingerprint="abc", report={"skipped": []})
    assert cache.fingerprint == "abc" and cache.report == {"skipped": []}
    assert [cache[i].shape for i in range(3)] == [(2, 5), (2, 6), (2, 7)]
    assert float(cache[2][1, -1]) == 2.0
    with pytest.raises(ValueError, match="differ in shape"):
        cache.stack()


# --- bad input: every error names the file -------------------------------------------------------

def test_missing_metadata_column(tmp_path):
    root = tmp_path / "cohort"
    write_cohort(root).drop("patient_id").write_csv(root / "metadata.csv")
    with pytest.raises(LoaderError, match=r"metadata\.csv.*missing required column.*patient_id"):
        load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)


def test_record_with_different_lead_count(tmp_path):
    root = tmp_path / "cohort"
    write_cohort(root)
    write_record(root, "r2", leads=["I", "II"])
    with pytest.raises(LoaderError, match=r"r2\.hea.*has 2 channels.*cohort has 3"):
        load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    cache = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False, on_error="skip")
    assert cache.index["record_id"].to_list() == ["r0", "r1", "r3"]
    assert [Path(s["path"]).name for s in cache.report["skipped"]] == ["r2.hea"]


def test_nan_in_a_cohort_signal(tmp_path):
    root = tmp_path / "cohort"
    write_cohort(root)
    sig = np.random.default_rng(3).normal(size=(500, 3))
    sig[250, 0] = np.nan
    write_record(root, "r3", signal=sig)
    with pytest.raises(LoaderError, match=r"r3\.hea.*non-finite"):
        load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    dropped = load_wfdb_cohort(root, cache_dir=tmp_path / "d", progress=False, nan_policy="drop")
    assert len(dropped) == 3 and [Path(d["path"]).name for d in dropped.report["dropped_nan"]] == ["r3.hea"]
    filled = load_wfdb_cohort(root, cache_dir=tmp_path / "e", progress=False, nan_policy="interpolate")
    assert len(filled) == 4 and np.isfinite(filled[3]).all()
    assert filled.index["nan_samples"].to_list() == [0, 0, 0, 1]


def test_missing_header_listed_in_metadata(tmp_path):
    root = tmp_path / "cohort"
    write_cohort(root)
    (root / "r1.hea").unlink()
    with pytest.raises(LoaderError, match=r"r1\.hea.*listed in metadata\.csv \(line 3, record_id 'r1'\) but not "
                                          r"found; 1 of 4 listed record\(s\) missing"):
        load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    kept = load_wfdb_cohort(root, cache_dir=tmp_path / "d", progress=False, on_error="skip")  # an explicit choice
    assert kept.index["record_id"].to_list() == ["r0", "r2", "r3"]
    assert [Path(s["path"]).name for s in kept.report["skipped"]] == ["r1.hea"] and kept.report["rows_in_table"] == 4


def test_truncated_dat(tmp_path):
    write_record(tmp_path, "cut")
    data = (tmp_path / "cut.dat").read_bytes()
    (tmp_path / "cut.dat").write_bytes(data[: len(data) // 2])
    with pytest.raises(LoaderError, match=r"cut\.dat.*truncated"):
        read_wfdb(tmp_path / "cut")


def test_missing_dat(tmp_path):
    write_record(tmp_path, "nodat")
    (tmp_path / "nodat.dat").unlink()
    with pytest.raises(LoaderError, match=r"nodat\.dat.*not found"):
        read_wfdb(tmp_path / "nodat")


def _edit_header(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def test_header_signal_count_disagrees_with_signal_lines(tmp_path):
    write_record(tmp_path, "cnt")
    _edit_header(tmp_path / "cnt.hea", lambda ls: [ls[0].replace("cnt 3 ", "cnt 2 ", 1), *ls[1:]])
    with pytest.raises(LoaderError, match=r"cnt\.hea.*declares 2 signals.*3 signal lines"):
        read_wfdb(tmp_path / "cnt")


def test_header_signal_count_disagrees_with_data(tmp_path):
    # The header lists 2 signals consistently, but the .dat holds 3 interleaved signals:
    # wfdb would read it without complaint, scrambling the samples.
    write_record(tmp_path, "dat3")
    _edit_header(tmp_path / "dat3.hea", lambda ls: [ls[0].replace("dat3 3 ", "dat3 2 ", 1), *ls[1:3]])
    with pytest.raises(LoaderError, match=r"dat3\.dat.*declares 2 signals.*disagrees"):
        read_wfdb(tmp_path / "dat3")


def test_unknown_format_code(tmp_path):
    write_record(tmp_path, "fmt")
    _edit_header(tmp_path / "fmt.hea", lambda ls: [ls[0], *[ln.replace("fmt.dat 16 ", "fmt.dat 17 ") for ln in ls[1:]]])
    with pytest.raises(LoaderError, match=r"fmt\.hea.*unknown WFDB storage format '17'"):
        read_wfdb(tmp_path / "fmt")


def test_missing_header_file(tmp_path):
    with pytest.raises(LoaderError, match=r"absent\.hea.*not found"):
        read_wfdb(tmp_path / "absent")


# --- the real PhysioNet samples ------------------------------------------------------------------

def test_every_real_single_segment_header_passes_the_checks():
    if not (DATA / "physionet").exists():
        pytest.skip(f"shared PhysioNet sample not found at {DATA / 'physionet'}")
    headers = [p for p in (DATA / "physionet").rglob("*.hea") if "mimic2wdb" not in str(p)]
    assert len(headers) >= 25
    for hea in headers:
        check_wfdb_header(hea)


def test_header_parser_agrees_with_wfdb_on_real_headers():
    if not DATA.exists():
        pytest.skip(f"shared data not found at {DATA}")
    headers = [p for p in (DATA / "physionet").rglob("*.hea") if "s25047-" not in p.name]  # segments included
    headers += sorted((DATA / "ptbxl").rglob("*.hea"))[::20]
    assert len(headers) > 50
    for hea in headers:
        ours, ref = parse_wfdb_header(hea), wfdb.rdheader(str(hea.with_suffix("")))
        assert ours.fs == ref.fs and ours.sig_len == ref.sig_len and ours.n_sig == ref.n_sig, hea
        assert ours.sig_name == ref.sig_name and ours.units == ref.units and ours.fmt == ref.fmt, hea
        assert ours.adc_gain == [float(g) for g in ref.adc_gain] and ours.baseline == list(ref.baseline), hea
        assert ours.samps_per_frame == list(ref.samps_per_frame), hea
        assert ours.base_time == ref.base_time and ours.base_date == ref.base_date, hea


def test_real_mimicdb_record_matches_rdrecord_and_reports_nans():
    base = DATA / "physionet" / "mimicdb" / "03700181"
    if not base.with_suffix(".hea").exists():
        pytest.skip(f"shared sample {base} not found")
    with pytest.raises(LoaderError, match="03700181.hea.*4 non-finite"):
        read_wfdb(base)
    rec = read_wfdb(base, allow_nan=True)
    ref = wfdb.rdrecord(str(base)).p_signal.T
    assert rec.channels == ("MCL1", "ABP", "RESP") and rec.signal.shape == (3, 75000)
    np.testing.assert_allclose(rec.signal, ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert rec.quality["nan_samples"] == 4
