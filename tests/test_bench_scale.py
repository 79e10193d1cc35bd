"""The scale benchmark: every stage measured in its own process, resumable per size, slopes and projections
computed from the records, a size refused when the disk is short."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tscl.benchmarks import bench_scale as bs

STAGE_FIELDS = {"build": ["build_s", "records_per_s", "rdrecord_per_s", "cache_bytes_per_record"],
                "open": ["open1_s", "open2_s"], "pretrain": ["step_s", "data_wait_frac", "epoch_s", "steps_per_epoch"],
                "embed": ["embed_s"], "probe": ["probe_s", "auroc", "test_records"]}


def test_quick_run_measures_every_stage_and_a_second_run_skips_the_size(tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    bs.main(["--quick", "--out", str(out), "--work", str(work), "--probe-rows", "2000"])
    record = json.loads((out / "scale-200.json").read_text())
    assert record["n"] == 200 and record["timestamp"] and record["environment"]["torch"]
    for stage, names in STAGE_FIELDS.items():
        got = record["stages"][stage]
        assert got["peak_anon_mb"] > 10 and got["peak_rss_mb"] >= got["peak_anon_mb"] * 0.5, stage
        for name in names:
            assert np.isfinite(got[name]), (stage, name)
    assert record["stages"]["build"]["cache_bytes_per_record"] >= 4 * 1000  # 1 lead x 1000 float32 samples
    assert record["stages"]["pretrain"]["steps"] == 3
    assert record["stages"]["probe"]["bootstrap"] == 100
    assert not (work / "data-200").exists()  # a measured size's data is removed unless --keep
    table = (out / "scale_table.md").read_text()
    assert "| 200 |" in table and "800,000" in table and "3,200,000" in table
    alone = json.loads((out / "scale-probe-2000.json").read_text())["stages"]["probe"]
    assert alone["test_records"] == 2000 and alone["bootstrap"] == 100 and alone["peak_anon_mb"] > 10
    assert "The probe alone at 2,000 test rows" in table
    for stage in ("pretrain", "embed"):  # the dataset's open is timed apart from the stage's own work
        assert record["stages"][stage]["open_s"] > 0
    before = (out / "scale-200.json").stat().st_mtime_ns
    capsys.readouterr()
    bs.main(["--quick", "--out", str(out), "--work", str(work)])
    assert "exists, skipped" in capsys.readouterr().out
    assert (out / "scale-200.json").stat().st_mtime_ns == before


def _records(costs: dict, sizes=(1_000, 10_000, 100_000)) -> list[dict]:
    """Synthetic size records whose stage costs follow ``field: (c, k)`` as c * N^k."""
    out = []
    for n in sizes:
        stages = {s: {"peak_anon_mb": 100 + n * 1e-3, "peak_rss_mb": 200.0} for s in bs.STAGES}
        for key, (stage, field, _) in bs.COSTS.items():
            c, k = costs.get(key, (1e-3, 1.0))
            stages[stage][field] = c * n**k
        stages["build"].update(records_per_s=2000.0, rdrecord_per_s=1000.0, cache_bytes_per_record=4100.0,
                               source_disk_bytes_per_record=8192.0)
        stages["pretrain"].update(step_s=0.1, data_wait_frac=0.01, steps_per_epoch=n // 128)
        stages["probe"]["test_records"] = n // 7
        out.append({"n": n, "leads": 1, "seconds": 10.0, "fs": 100.0, "stages": stages})
    return out


def test_slopes_projection_and_plot_follow_from_the_records(tmp_path):
    records = _records({"build": (1e-3, 1.0), "open2": (1e-6, 2.0), "probe": (0.5, 0.5)})
    summary = bs.write_outputs(tmp_path, records, None)
    slopes = summary["slopes"]
    assert slopes["build"]["slope"] == pytest.approx(1.0) and slopes["open2"]["slope"] == pytest.approx(2.0)
    assert slopes["probe"]["slope"] == pytest.approx(0.5) and slopes["build"]["from"] == 10_000  # from 10k up
    proj = {p["n"]: p for p in summary["projection"]}
    samples = 12 * 10 * 500 / (1 * 10 * 100)  # the projection's recordings hold 60x the samples
    assert proj[800_000]["cache_gb"] == pytest.approx(800_000 * 4100 * samples / 1e9)
    assert proj[3_200_000]["build_h_1core"] == pytest.approx(3_200_000 / (2000 / samples) / 3600)
    assert proj[3_200_000]["build_h_32cores"] == pytest.approx(proj[3_200_000]["build_h_1core"] / 32)
    assert proj[800_000]["open_rss_mb_per_rank"] == pytest.approx(100 + 800_000e-3)  # the fitted line
    shape = {"n": 1000, "stages": {"build": {"cache_bytes_per_record": 240_100.0, "records_per_s": 100.0,
                                             "source_disk_bytes_per_record": 122_880.0}}}
    proj = {p["n"]: p for p in bs.projection(records, shape)}
    assert proj[800_000]["cache_gb"] == pytest.approx(800_000 * 240_100 / 1e9)
    assert proj[800_000]["build_h_1core"] == pytest.approx(8000 / 3600)
    assert (tmp_path / "scale.png").stat().st_size > 5000 and json.loads((tmp_path / "scale.json").read_text())


def test_a_size_is_refused_when_the_disk_is_short(tmp_path, monkeypatch):
    class Usage:
        free = 10 * 2**30

    monkeypatch.setattr(bs.shutil, "disk_usage", lambda path: Usage)
    bs.check_disk(tmp_path, 100_000, 1, 10.0, 100.0)  # ~1.2 GiB: fits
    with pytest.raises(SystemExit, match=r"N=1000000 needs about 1\d\.\d GiB .* only 10\.0 GiB free"):
        bs.check_disk(tmp_path, 1_000_000, 1, 10.0, 100.0)
    with pytest.raises(SystemExit, match="at least 50"):
        bs.main(["--sizes", "10", "--out", str(tmp_path)])


def test_generated_dataset_is_real_wfdb_in_physionet_like_folders(tmp_path):
    import polars as pl
    import wfdb

    assert bs.generate(tmp_path / "d", 120, leads=1, seconds=10.0, fs=100.0, per_folder=50, workers=1) > 0
    meta = pl.read_csv(tmp_path / "d" / "metadata.csv")
    assert meta.height == 120 and sorted(p.name for p in (tmp_path / "d" / "records").iterdir()) == [
        "00000", "00001", "00002"]
    per_patient = meta.group_by("patient_id").len()["len"]
    assert per_patient.min() >= 1 and per_patient.max() <= 5
    rec = wfdb.rdrecord(str(tmp_path / "d" / meta["path"][77]))
    assert rec.p_signal.shape == (1000, 1) and rec.fs == 100
    assert bs.generate(tmp_path / "d", 120, leads=1, seconds=10.0, fs=100.0, per_folder=50, workers=1) == 0.0


def test_peak_memory_sees_anonymous_allocations():
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc/self/status on this platform")
    with bs.PeakMemory(interval=0.005) as mem:
        block = np.ones(50 * 2**20 // 8)  # 50 MB of anonymous memory, touched
        import time

        time.sleep(0.05)
        del block
    assert mem.record()["peak_anon_mb"] >= 50 and sys.platform.startswith("linux")
