"""benchmarks/bench_cache.py --quick: the synthetic PhysioNet-like folder reads back, and every field is measured."""
from pathlib import Path

import numpy as np
import polars as pl
import wfdb

from tscl.benchmarks.bench_cache import main, write_synthetic_wfdb


def test_synthetic_folder_is_valid_wfdb_in_nested_folders(tmp_path):
    root = write_synthetic_wfdb(tmp_path / "d", 250, per_folder=100, leads=2, seconds=2.0)
    meta = pl.read_csv(root / "metadata.csv", infer_schema=False)
    assert meta.height == 250 and meta["path"][249] == "g000/p00002/r0000249"
    assert meta["patient_id"].n_unique() == 63 and sorted(p.name for p in (root / "g000").iterdir()) == [
        "p00000", "p00001", "p00002"]
    rec = wfdb.rdrecord(str(root / meta["path"][137]))
    assert rec.p_signal.shape == (200, 2) and rec.fs == 100 and rec.sig_name == ["I", "II"]
    assert np.abs(rec.p_signal).max() < 2  # about 0.2-0.8 mV sines plus noise
    flat = write_synthetic_wfdb(tmp_path / "flat", 5, per_folder=None)
    assert sorted(p.name for p in flat.iterdir())[:2] == ["metadata.csv", "r0000000.dat"]


def test_quick_bench_measures_every_field(tmp_path):
    out = tmp_path / "cache.json"
    result = main(["--quick", "--tmp", str(tmp_path), "--out", str(out)])
    (row,) = result["sizes"]
    assert row["records"] == 300 and row["first_open"]["records"] == row["second_open"]["records"] == 300
    assert row["first_open"]["encodings"] == {"f32": 0, "f16": 0, "i16": 300}
    assert 2000 <= row["shard_bytes_per_recording"] < 2100  # int16: 2,000 data bytes, 20 of ADC description
    assert row["second_open"]["seconds"] > 0 and row["build_over_rdrecord"] > 0
    assert row["first_open"]["peak_rss_mb"] >= row["first_open"]["rss_after_imports_mb"] > 0
    assert Path(out).exists() and not list(tmp_path.glob("tscl_bench_cache_*"))
