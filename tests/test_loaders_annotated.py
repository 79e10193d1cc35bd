"""Annotated long recordings (beat / rhythm windows) and long multi-segment WFDB records."""
import collections
from pathlib import Path

import numpy as np
import pytest
import wfdb

from tscl.loaders import LoaderError
from tscl.loaders.annotations import (load_annotated, read_beats, rhythm_intervals, rhythm_windows, subject_of)
from tscl.loaders.wfdb_dir import load_wfdb_windows, read_wfdb

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "physionet"
pytestmark = pytest.mark.skipif(not DATA.exists(), reason=f"shared PhysioNet sample not found at {DATA}")

AAMI = {"N": set("NLRej"), "S": set("AaJS"), "V": set("VE"), "F": {"F"}, "Q": set("/fQ")}


def rdann_counts(record):
    ann = wfdb.rdann(str(record), "atr")
    count = collections.Counter()
    for s in ann.symbol:
        for cls, symbols in AAMI.items():
            if s in symbols:
                count[cls] += 1
    return count


def test_beat_windows_match_rdann(tmp_path):
    records = [DATA / "mitdb" / "100", DATA / "svdb" / "800"]  # 360 Hz and 128 Hz: one cache each
    caches = [load_annotated([r], "beats", tmp_path / r.name, progress=False, before_s=0.25, after_s=0.45)
              for r in records]
    for record, cache in zip(records, caches):
        idx, report = cache.index, cache.report["records"][0]
        expected = rdann_counts(record)
        got = collections.Counter(idx.filter(idx["source"] == str(record) + ".hea")["aami"].to_list())
        assert report["beats"] == sum(expected.values())
        # every annotated beat is a window, or counted as too close to an edge
        assert sum(got.values()) + report["dropped_edge"] + report["dropped_nan"] == sum(expected.values())
        assert all(got[c] <= expected[c] for c in expected)
    assert collections.Counter(caches[0].index["aami"]) == {"N": 2237, "S": 33, "V": 1}
    assert caches[1].index["aami"].value_counts().sort("aami").rows() == [("F", 1), ("N", 1846), ("S", 30), ("V", 6)]
    cache, idx = caches[0], caches[0].index
    # windows are centred on the beat: 0.25 s before, 0.45 s after at 360 Hz
    beat = int(read_beats(DATA / "mitdb" / "100")["sample"][5])
    i = idx["record_id"].to_list().index(f"100:{beat}")
    assert cache[i].shape == (2, 252)
    full = read_wfdb(DATA / "mitdb" / "100")
    np.testing.assert_array_equal(cache[i], full.signal[:, beat - 90:beat + 162])
    assert idx[i, "symbol"] == "N" and idx[i, "channels"] == "MLII,V5"


def test_beats_exclude_non_beat_symbols():
    beats = read_beats(DATA / "svdb" / "800")
    assert set(beats["symbol"]) <= set("NLRejAaJSVEF/fQ") and "~" not in beats["symbol"].to_list()


def test_rhythm_windows_afib_vs_normal(tmp_path):
    records = [DATA / "cpsc2021" / "data_84_1", DATA / "cpsc2021" / "data_21_7", DATA / "cpsc2021" / "data_8_2"]
    cache = load_annotated(records, "rhythm", tmp_path, progress=False, window_s=10, default_rhythm="N")
    idx = cache.index
    counts = {(p, r): n for p, r, n in idx.group_by("patient_id", "rhythm").len().iter_rows()}
    # data_84_1: AFIB over samples [0, 103807) at 200 Hz -> 51 windows of 2000 samples
    assert counts[("84", "AFIB")] == 51
    assert counts[("21", "N")] == 47201 // 2000
    assert counts[("8", "AFIB")] == 43091 // 2000
    assert set(idx.filter(idx["rhythm"] == "AFIB")["afib"]) == {1} and set(idx.filter(idx["rhythm"] == "N")["afib"]) == {0}
    assert cache.stack().shape == (len(cache), 2, 2000)


def test_rhythm_intervals_mitdb():
    n = wfdb.rdheader(str(DATA / "mitdb" / "100")).sig_len
    iv = rhythm_intervals(DATA / "mitdb" / "100", n)
    assert iv.rows() == [(18, n, "N")]
    assert rhythm_intervals(DATA / "cpsc2021" / "data_21_7", 47201).height == 0
    assert rhythm_windows(DATA / "cpsc2021" / "data_21_7") == []


def test_subject_ids():
    assert subject_of("cpsc2021/data_84_1") == "84" and subject_of("mitdb/202") == "201"
    assert subject_of("svdb/800") == "800"


def test_missing_annotation_file_is_named(tmp_path):
    for ext in ("hea", "dat"):
        (tmp_path / f"100.{ext}").write_bytes((DATA / "mitdb" / f"100.{ext}").read_bytes())
    with pytest.raises(LoaderError, match=r"100\.atr.*not found"):
        load_annotated([tmp_path / "100"], "beats", tmp_path / "c", progress=False)
    (tmp_path / "100.atr").write_bytes(b"\x01\x02\x03")
    with pytest.raises(LoaderError, match=r"100\.atr"):
        read_beats(tmp_path / "100")


MULTI = DATA / "mimic2wdb-matched" / "s25047" / "s25047-2704-05-04-10-44"


def test_multisegment_record_joined_with_nan_gaps():
    ref = wfdb.rdrecord(str(MULTI), m2s=True)
    with pytest.raises(LoaderError, match="s25047-2704-05-04-10-44.hea.*non-finite"):
        read_wfdb(MULTI)
    rec = read_wfdb(MULTI, channels=["ABP", "II"], allow_nan=True)
    assert rec.signal.shape == (2, 543240) and rec.fs == 125.0
    assert rec.units == ("mmHg", "mV")
    np.testing.assert_allclose(rec.signal[1], ref.p_signal[:, 0], rtol=1e-6, equal_nan=True)
    assert rec.quality["nan_samples"] == int(np.isnan(ref.p_signal[:, [0, 2]]).sum())


def test_multisegment_windows_drop_or_interpolate(tmp_path):
    cache = load_wfdb_windows([MULTI], tmp_path / "drop", window_s=10, channels=["II", "V"], progress=False)
    rep = cache.report["records"][0]
    total = 543240 // 1250
    assert rep["kept"] == len(cache) and rep["kept"] + rep["dropped_nan"] == total and rep["dropped_nan"] > 0
    assert np.isfinite(cache.stack()).all()
    assert set(cache.index["patient_id"]) == {"s25047-2704-05-04-10-44"}
    with pytest.raises(LoaderError, match="s25047-2704-05-04-10-44.hea.*gap of"):
        load_wfdb_windows([MULTI], tmp_path / "interp", window_s=10, channels=["II"], nan_policy="interpolate",
                          progress=False)
    with pytest.raises(LoaderError, match="s25047.*non-finite"):
        load_wfdb_windows([MULTI], tmp_path / "fail", window_s=10, channels=["II"], nan_policy="fail",
                          progress=False)


def test_missing_segment_is_named(tmp_path):
    folder = MULTI.parent
    for f in folder.iterdir():
        if f.name != "3234460_0003.hea":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(LoaderError, match=r"3234460_0003\.hea.*segment listed"):
        read_wfdb(tmp_path / MULTI.name, allow_nan=True)


def test_mimic3_record_small_window_with_interpolation(tmp_path):
    rec = read_wfdb(DATA / "mimic3wdb" / "3000003_0003", nan_policy="interpolate")
    ref = wfdb.rdrecord(str(DATA / "mimic3wdb" / "3000003_0003")).p_signal.T
    assert rec.signal.shape == (2, 1028) and rec.channels == ("II", "V")
    np.testing.assert_allclose(rec.signal, ref, rtol=1e-6, atol=1e-6)
