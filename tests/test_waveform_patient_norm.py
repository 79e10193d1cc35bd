"""normalize="patient" (tscl/datasets/waveform.py): each channel standardised over all items of the item's
patient, statistics from that patient's own items; subsets keep them; the eegmat source and the CLI take it."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tscl.datasets.waveform import WaveformDataset, patient_channel_stats
from tscl.loaders import build_cache
from tscl.loaders.recording import Recording

EEGMAT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "physionet" / "eegmat"


def _cache(tmp: Path, gains, items: int, seed: int):
    rng = np.random.default_rng(seed)
    recs = []
    for p, gain in enumerate(gains):
        for i in range(items):
            x = rng.standard_normal((3, 50)) * gain * (1 + i) + rng.normal(0, 10, (3, 1))  # items differ in power
            recs.append(Recording(signal=x, fs=50.0, channels=("a", "b", "c"), patient_id=f"P{p}",
                                  record_id=f"P{p}/{i}", labels={"k": i}))
    return build_cache(recs, tmp, fingerprint=f"t{seed}-{len(gains)}-{items}")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gains=st.lists(st.floats(0.01, 1e4), min_size=2, max_size=4), items=st.integers(1, 5),
       seed=st.integers(0, 2**31 - 1))
def test_patient_normalisation_standardises_over_the_patients_items_and_keeps_their_contrast(tmp_path_factory, gains,
                                                                                            items, seed):
    cache = _cache(tmp_path_factory.mktemp("c"), gains, items, seed)
    ds = WaveformDataset(cache, normalize="patient")
    X = ds.array()
    pids = ds.index["patient_id"].to_numpy()
    for p in np.unique(pids):
        rows = pids == p
        assert np.allclose(X[rows].mean(axis=(0, 2)), 0, atol=1e-3)
        assert np.allclose(X[rows].std(axis=(0, 2)), 1, atol=1e-3)
        if items > 1:  # the later item of a patient stays the louder one over time, per channel (zscore would
            # make them equal); the items' own offsets are left out of the comparison
            power = X[rows].std(axis=2).mean(axis=1)
            assert power[-1] > power[0]
    raw = np.asarray(cache.stack())
    want = {p: (raw[pids == p].mean(axis=(0, 2)), raw[pids == p].std(axis=(0, 2))) for p in np.unique(pids)}
    got = patient_channel_stats(raw, pids, block=2)  # read in blocks: the same statistics
    for p in want:
        assert np.allclose(got[p][0], want[p][0], rtol=1e-4, atol=1e-3)
        assert np.allclose(got[p][1], want[p][1], rtol=1e-4)


def test_a_subset_keeps_the_statistics_of_the_dataset_it_was_cut_from(tmp_path):
    cache = _cache(tmp_path / "c", [1.0, 50.0, 3.0], 4, seed=0)
    ds = WaveformDataset(cache, normalize="patient")
    rows = np.array([5, 1, 2])  # one item of P1 alone would z-score to itself under its own statistics
    sub = ds.subset(rows)
    assert np.allclose(sub.fetch(np.arange(3)).numpy(), ds.fetch(rows).numpy(), atol=1e-6)
    assert np.allclose(sub.array(), ds.array()[rows], atol=1e-6)
    assert sub.info["normalize"] == "patient"
    with pytest.raises(ValueError, match="patient"):
        WaveformDataset(cache, normalize="subject")


@pytest.mark.skipif(not EEGMAT.is_dir(), reason=f"shared EEGMAT recordings not at {EEGMAT}")
def test_eegmat_source_with_patient_normalisation_and_the_cli_refusing_an_unknown_one(tmp_path, capsys):
    from tscl.cli import main
    from tscl.datasets import open_dataset

    root = tmp_path / "eeg"
    root.mkdir()
    subject = sorted(p.name[:9] for p in EEGMAT.glob("Subject*_2.edf") if (EEGMAT / f"{p.name[:9]}_1.edf").exists())[0]
    for k in (1, 2):
        (root / f"{subject}_{k}.edf").symlink_to(EEGMAT / f"{subject}_{k}.edf")
    ds = open_dataset("eegmat", root, cache=tmp_path / "cache", progress=False, epoch_s=10, fs=50,
                      normalize="patient")
    X = ds.array()
    assert np.allclose(X.mean(axis=(0, 2)), 0, atol=1e-3) and np.allclose(X.std(axis=(0, 2)), 1, atol=1e-3)
    z = open_dataset("eegmat", root, cache=tmp_path / "cache", progress=False, epoch_s=10, fs=50).array()
    assert np.allclose(z.std(axis=2), 1, atol=1e-3) and not np.allclose(X.std(axis=2), 1, atol=0.05)
    rc = main(["pretrain", "--dataset", "eegmat", "--root", str(root), "--dataset-kwargs", "normalize=subjekt,fs=50",
               "--method", "pclr", "--encoder", "cnn1d", "--epochs", "1", "--quiet", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "subjekt" in err[0]
