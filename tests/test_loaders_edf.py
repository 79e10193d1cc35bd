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


def test_epochs_and_eegmat_labels(tmp_path):
    assert eegmat_labels(DATA / "Subject01_2.edf") == ("Subject01", {"task": 1, "condition": "arithmetic"})
    report = []
    epochs = edf_epochs(DATA / "Subject00_2.edf", epoch_s=10, channels=["Fp1", "Cz"], report=report)
    assert len(epochs) == 6 and epochs[0].signal.shape == (2, 5000)
    assert report[0]["dropped_edge"] == 1  # 62 s = 6 x 10 s + 2 s
    cache = load_eegmat(DATA, tmp_path, progress=False)
    idx = cache.index
    # 182 s -> 6 epochs of 30 s; 62 s -> 2 epochs (each with a short tail left out)
    assert len(cache) == 6 + 2 + 2 and cache.stack().shape == (10, 19, 15000)
    assert dict(idx.group_by("patient_id").len().iter_rows()) == {"Subject00": 8, "Subject01": 2}
    assert idx.filter(idx["task"] == 0)["source"].str.ends_with("Subject00_1.edf").all()
    assert idx["task"].sum() == 4
    assert sum(r["dropped_edge"] for r in cache.report["records"]) == 3


def test_corrupted_edf_header_is_named(tmp_path):
    data = bytearray((DATA / "Subject00_2.edf").read_bytes()[:400_000])
    data[252:256] = b"xx  "  # number of signals
    bad = tmp_path / "Subject09_1.edf"
    bad.write_bytes(bytes(data))
    with pytest.raises(LoaderError, match=r"Subject09_1\.edf.*cannot read EDF header"):
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
