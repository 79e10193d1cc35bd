"""EDF+/EEG reading (EEGMAT sample): channel names, units, epochs, labels, corrupted headers."""
from pathlib import Path

import numpy as np
import pyedflib
import pytest

from tscl.loaders import LoaderError
from tscl.loaders.edf import (EEG_1020, edf_epochs, eegmat_labels, load_eegmat, normalise_eeg_channel, read_edf,
                              read_edf_annotations)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "physionet" / "eegmat"
pytestmark = pytest.mark.skipif(not DATA.exists(), reason=f"shared EEGMAT sample not found at {DATA}")


def test_channel_names_normalised():
    assert normalise_eeg_channel("EEG Fp1") == "Fp1"
    assert normalise_eeg_channel("EEG FP1-REF") == "Fp1"
    assert normalise_eeg_channel("fz") == "Fz"
    assert normalise_eeg_channel("EEG A2-A1") == "A2-A1"
    assert normalise_eeg_channel("ECG ECG") == "ECG"


def test_read_edf_channels_units_and_values():
    rec = read_edf(DATA / "Subject00_2.edf")
    assert rec.fs == 500.0 and rec.signal.shape == (21, 31000)
    assert rec.channels[:19] == EEG_1020 and rec.channels[19:] == ("A2-A1", "ECG")
    assert rec.units == ("uV",) * 20 + ("mV",)
    with pyedflib.EdfReader(str(DATA / "Subject00_2.edf")) as f:
        np.testing.assert_allclose(rec.signal[4], f.readSignal(4), rtol=1e-5, atol=1e-3)
    eeg = rec.signal[:19]
    assert 10 < np.percentile(np.abs(eeg), 99) < 200  # µV scale, not V or mV


def test_annotations_read():
    ann = read_edf_annotations(DATA / "Subject00_1.edf")
    assert ann.height >= 1 and ann["onset_s"][0] == 0.0


def _durations_s() -> dict[Path, float]:
    """Each EEGMAT file's length in seconds, from its EDF header (the 19 EEG leads share one rate)."""
    out = {}
    for path in sorted(DATA.glob("*.edf")):
        with pyedflib.EdfReader(str(path)) as f:
            i = [normalise_eeg_channel(n) for n in f.getSignalLabels()].index("Fp1")
            out[path] = f.getNSamples()[i] / f.getSampleFrequency(i)
    return out


def test_epochs_and_eegmat_labels(tmp_path):
    assert eegmat_labels(DATA / "Subject01_2.edf") == ("Subject01", {"task": 1, "condition": "arithmetic"})
    durations = _durations_s()
    report = []
    epochs = edf_epochs(DATA / "Subject00_2.edf", epoch_s=10, channels=["Fp1", "Cz"], report=report)
    d = durations[DATA / "Subject00_2.edf"]
    assert len(epochs) == int(d // 10) > 0 and epochs[0].signal.shape == (2, 5000)
    assert report[0]["dropped_edge"] == (1 if d % 10 else 0)
    cache = load_eegmat(DATA, tmp_path, progress=False)
    idx = cache.index
    # each file gives floor(duration / 30 s) epochs; a shorter tail is left out and counted
    per_file = {p: int(s // 30) for p, s in durations.items()}
    n = sum(per_file.values())
    assert len(cache) == n and cache.stack().shape == (n, 19, 15000)
    per_subject: dict = {}
    for p, k in per_file.items():
        per_subject[eegmat_labels(p)[0]] = per_subject.get(eegmat_labels(p)[0], 0) + k
    assert dict(idx.group_by("patient_id").len().iter_rows()) == per_subject
    for p, k in per_file.items():
        rows = idx.filter(idx["source"].str.ends_with(p.name))
        assert rows.height == k and set(rows["task"]) == {eegmat_labels(p)[1]["task"]}
    assert idx["task"].sum() == sum(k for p, k in per_file.items() if p.stem.endswith("_2"))
    assert sum(r["dropped_edge"] for r in cache.report["records"]) == sum(1 for s in durations.values() if s % 30)


def test_corrupted_edf_header_is_named(tmp_path):
    data = bytearray((DATA / "Subject00_2.edf").read_bytes()[:400_000])
    data[252:256] = b"xx  "  # number of signals
    bad = tmp_path / "Subject09_1.edf"
    bad.write_bytes(bytes(data))
    with pytest.raises(LoaderError, match=r"Subject09_1\.edf: EDF header field .number of signals. holds b.xx  ., not an "
                                          r"integer"):
        read_edf(bad)
    truncated = tmp_path / "Subject08_1.edf"
    truncated.write_bytes((DATA / "Subject00_2.edf").read_bytes()[:300_000])
    with pytest.raises(LoaderError, match=r"Subject08_1\.edf"):
        read_edf(truncated)
    with pytest.raises(LoaderError, match=r"Subject08_1\.edf"):
        load_eegmat(tmp_path, tmp_path / "c", progress=False)
    (tmp_path / "Subject07_2.edf").write_bytes((DATA / "Subject00_2.edf").read_bytes())
    cache = load_eegmat(tmp_path, tmp_path / "c", progress=False, on_error="skip")
    assert set(cache.index["patient_id"]) == {"Subject07"}
    assert sorted(Path(s["path"]).name for s in cache.report["skipped"]) == ["Subject08_1.edf", "Subject09_1.edf"]


def test_missing_channel_is_named():
    with pytest.raises(LoaderError, match=r"Subject00_2\.edf.*missing channel.*Oz"):
        read_edf(DATA / "Subject00_2.edf", channels=["Fp1", "Oz"])


def test_eegmat_resampled_epochs(tmp_path):
    """``fs`` resamples before cutting: the same epochs per file, ``epoch_s * fs`` samples each."""
    durations = _durations_s()
    cache = load_eegmat(DATA, tmp_path, epoch_s=10.0, fs=100.0, progress=False)
    assert len(cache) == sum(int(s // 10) for s in durations.values())
    assert cache.stack().shape[1:] == (19, 1000) and set(cache.index["fs"]) == {100.0}
    with pyedflib.EdfReader(str(DATA / "Subject00_1.edf")) as f:
        raw = f.readSignal(0, 0, 5000)  # Fp1, first 10 s at 500 Hz
    first = cache.index.with_row_index().filter(cache.index["source"].str.ends_with("Subject00_1.edf"))["index"][0]
    np.testing.assert_allclose(cache[first][0][100:900], raw[::5][100:900], atol=0.15 * np.abs(raw).max())
