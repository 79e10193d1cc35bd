"""Silent loss and merging at the sources, one regression test per case (docs/faults.md, "Sources").

Each test rebuilds one way a dataset went wrong without a word (read short, merged, dropped,
skipped, poisoned) on tiny synthetic files and checks the source now refuses it in one line naming
the file, or reads it correctly and counts what it left out in ``dataset.notes``. The generated
faults through the installed CLI are in ``tests/test_mutations_*.py``.
"""
from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pyedflib
import pytest
import wfdb

from tscl.datasets import open_dataset
from tscl.loaders import LoaderError

THREE = '["Fp1","Fp2","Cz"]'


def write_edf(path: Path, seconds: int = 18, fs: int = 50, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with pyedflib.EdfWriter(str(path), 3, file_type=pyedflib.FILETYPE_EDFPLUS) as w:
        w.setSignalHeaders([{"label": f"EEG {c}", "dimension": "uV", "sample_frequency": fs, "physical_max": 500,
                             "physical_min": -500, "digital_max": 32767, "digital_min": -32768}
                            for c in ("Fp1", "Fp2", "Cz")])
        w.writeSamples([rng.normal(size=seconds * fs) * 40 for _ in range(3)])


def open_edf(root: Path, cache: Path, **options):
    return open_dataset("edf", root, cache=cache, progress=False, channels=["Fp1", "Fp2", "Cz"], epoch_s=1.0,
                        **options)


def write_record(folder: Path, name: str, seed: int = 0, n: int = 200) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sig = np.random.default_rng(seed).normal(size=(n, 2))
    wfdb.wrsamp(name, fs=100, units=["mV", "mV"], sig_name=["I", "II"], p_signal=sig, fmt=["16", "16"],
                write_dir=str(folder))


# ---- EDF record counts ------------------------------------------------------------------------------

@pytest.mark.parametrize("declared", [15, 21])
def test_edf_header_record_count_that_disagrees_with_the_file_is_refused(tmp_path, declared):
    """18 one-second records on disk; a header saying 15 was read as 15 s (3 epochs lost without a word)."""
    path = tmp_path / "eeg" / "night.edf"
    write_edf(path)
    data = bytearray(path.read_bytes())
    assert int(data[236:244]) == 18
    data[236:244] = str(declared).ljust(8).encode()
    path.write_bytes(bytes(data))
    if declared < 18:  # what EDFlib (pyedflib) does with it: reads as far as the header says, silently
        with pyedflib.EdfReader(str(path)) as f:
            assert f.getNSamples()[0] == declared * 50
    with pytest.raises(LoaderError, match=rf"night\.edf: EDF header declares {declared} data records but the file "
                                          r"holds 18"):
        open_edf(path.parent, tmp_path / "c")


# ---- one file name in two folders ---------------------------------------------------------------------

def test_one_edf_name_in_two_site_folders_is_refused_or_told_apart_by_the_table(tmp_path):
    root = tmp_path / "eeg"
    write_edf(root / "siteA" / "rec01.edf", seed=1)
    write_edf(root / "siteB" / "rec01.edf", seed=2)
    with pytest.raises(LoaderError, match=r"siteB/rec01\.edf: has the name 'rec01' of .*siteA/rec01\.edf too"):
        open_edf(root, tmp_path / "c")
    (root / "metadata.csv").write_text("file,patient_id\nsiteA/rec01.edf,a1\nsiteB/rec01.edf,b1\n")
    ds = open_edf(root, tmp_path / "c")
    assert set(ds.index["patient_id"]) == {"a1", "b1"} and len(ds) == 36
    assert ds.index["record_id"].is_unique().all()
    assert {r.split(":")[0] for r in ds.index["record_id"]} == {"siteA/rec01", "siteB/rec01"}


def test_one_cinc_name_in_two_folders_is_two_records(tmp_path):
    from tscl.loaders import load_cinc

    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    for site, seed in (("g1", 0), ("g2", 1)):
        (tmp_path / site).mkdir()
        wfdb.wrsamp("A0001", fs=500, units=["mV"] * 12, sig_name=leads, fmt=["16"] * 12, write_dir=str(tmp_path / site),
                    p_signal=np.random.default_rng(seed).normal(size=(100, 12)), comments=["Age: 50", "Sex: Male",
                                                                                             "Dx: 426783006"])
    cache = load_cinc(tmp_path, tmp_path / "c", progress=False)
    assert sorted(cache.index["record_id"]) == sorted(cache.index["patient_id"]) == ["g1/A0001", "g2/A0001"]


# ---- a listed file that is absent ------------------------------------------------------------------------

def test_edf_file_listed_in_metadata_but_absent_is_refused_or_skipped_and_counted(tmp_path):
    root = tmp_path / "eeg"
    write_edf(root / "a.edf")
    write_edf(root / "b.edf", seed=1)
    write_edf(root / "stray.edf", seed=2)
    (root / "metadata.csv").write_text("file,patient_id,y\na.edf,p1,0\nb.edf,p2,1\ngone.edf,p3,1\n")
    with pytest.raises(LoaderError, match=r"gone\.edf: listed in metadata\.csv \(line 4\) but not found; 1 of 3"):
        open_edf(root, tmp_path / "c")
    ds = open_edf(root, tmp_path / "c", on_error="skip")
    assert set(ds.index["patient_id"]) == {"p1", "p2"}
    assert [Path(s["path"]).name for s in ds.skipped] == ["gone.edf"]
    assert [Path(s["path"]).name for s in ds.notes["unlisted"]] == ["stray.edf"]
    line = ds.notes_line()
    assert "1 left out (first: " in line and "gone.edf" in line and "stray.edf" in line
    assert ds.split("train").notes is ds.notes  # a split carries what its dataset left out


def test_ptbxl_does_not_skip_missing_records_by_default(tmp_path):
    root = tmp_path / "ptbxl"
    rows = ["ecg_id,patient_id,age,sex,recording_date,scp_codes,strat_fold,filename_lr,filename_hr"]
    leads = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    (root / "records100" / "00000").mkdir(parents=True)
    for i in (1, 2, 3):
        if i != 2:
            wfdb.wrsamp(f"{i:05d}_lr", fs=100, units=["mV"] * 12, sig_name=leads, fmt=["16"] * 12,
                        p_signal=np.random.default_rng(i).normal(size=(100, 12)),
                        write_dir=str(root / "records100" / "00000"))
        rows.append(f"{i},{10 + i}.0,60,0,2000-01-01 00:00:00,\"{{'NORM': 100.0}}\",{i},records100/00000/{i:05d}_lr,x")
    (root / "ptbxl_database.csv").write_text("\n".join(rows) + "\n")
    (root / "scp_statements.csv").write_text(",description,diagnostic,form,rhythm,diagnostic_class,"
                                             "diagnostic_subclass\nNORM,normal,1,,,NORM,NORM\n")
    with pytest.raises(LoaderError, match=r"00002_lr\.hea: ecg_id 2: listed in ptbxl_database\.csv .*on_error='skip'"):
        open_dataset("ptbxl", root, cache=tmp_path / "c", progress=False)
    ds = open_dataset("ptbxl", root, cache=tmp_path / "c", progress=False, on_error="skip")
    assert sorted(ds.index["record_id"]) == ["1", "3"] and len(ds.skipped) == 1


# ---- whitespace in ids -------------------------------------------------------------------------------------

def _cohort(root: Path, ids: list[str]) -> None:
    for i in range(len(ids)):
        write_record(root, f"r{i}", seed=i)
    (root / "metadata.csv").write_text("patient_id,record_id\n" + "".join(f"{p},r{i}\n" for i, p in enumerate(ids)))


def test_patient_id_with_a_trailing_space_is_the_same_patient(tmp_path):
    _cohort(tmp_path / "a", ["p1", "p1 ", " p2", "p2"])
    ds = open_dataset("wfdb", tmp_path / "a", cache=tmp_path / "c", progress=False)
    assert ds.index["patient_id"].to_list() == ["p1", "p1", "p2", "p2"]
    assert ds.index.group_by("patient_id").agg(pl.col("split").n_unique())["split"].to_list() == [1, 1]  # one side


def test_patient_ids_differing_only_inside_are_refused_naming_both(tmp_path):
    _cohort(tmp_path / "a", ["p1", "p 1"])
    with pytest.raises(LoaderError, match=r"metadata\.csv: patient_id 'p1' \(line 2\) and 'p 1' \(line 3\) differ only "
                                          r"in whitespace"):
        open_dataset("wfdb", tmp_path / "a", cache=tmp_path / "c", progress=False)


# ---- MIMIC-IV ------------------------------------------------------------------------------------------------

_ADM = "subject_id,hadm_id,admittime,dischtime,admission_type,discharge_location\n"


def _mimic(root: Path, admissions: str, labs: str | None = None) -> Path:
    (root / "hosp").mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "hosp" / "patients.csv.gz", "wt") as f:
        f.write("subject_id,gender,anchor_age,anchor_year,dod\n1,F,50,2100,\n2,M,60,2100,\n")
    with gzip.open(root / "hosp" / "admissions.csv.gz", "wt") as f:
        f.write(_ADM + admissions)
    if labs is not None:
        with gzip.open(root / "hosp" / "labevents.csv.gz", "wt") as f:
            f.write("subject_id,itemid,charttime,value,valuenum,valueuom\n" + labs)
    return root


_TWO_ADMISSIONS = ("1,11,2100-01-01 10:00:00,2100-01-03 10:00:00,EW,HOME\n"
                   "2,21,2100-02-01 10:00:00,2100-02-05 10:00:00,EW,HOME\n")
_LABS = "".join(f"{s},50971,2100-0{s}-01 12:00:00,{v},{v},mEq/L\n" for s in (1, 2) for v in (4.0, 4.4, 4.8))


def _convert(root: Path, out: Path) -> tuple[pl.DataFrame, dict]:
    from tscl.loaders.mimic_meds import mimic_iv_to_meds

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*table not found")  # only the tables written here exist
        report = mimic_iv_to_meds(root, out)
    return pl.concat([pl.read_parquet(p) for p in sorted((out / "data").rglob("*.parquet"))]), report


def test_plain_labevents_csv_is_read_and_both_forms_are_refused(tmp_path):
    root = _mimic(tmp_path / "m", _TWO_ADMISSIONS, _LABS)
    gz, _ = _convert(root, tmp_path / "o1")
    lab = root / "hosp" / "labevents.csv.gz"
    (root / "hosp" / "labevents.csv").write_bytes(gzip.decompress(lab.read_bytes()))
    with pytest.raises(LoaderError, match=r"labevents\.csv: and labevents\.csv\.gz are both here"):
        _convert(root, tmp_path / "o2")
    lab.unlink()
    plain, _ = _convert(root, tmp_path / "o3")
    assert plain.equals(gz) and plain.filter(pl.col("code").str.starts_with("LAB//")).height == 6


def test_iso_timestamps_with_a_t_are_read(tmp_path):
    events, report = _convert(_mimic(tmp_path / "m", _TWO_ADMISSIONS.replace(" 10:", "T10:")), tmp_path / "o")
    assert events.filter(pl.col("code").str.starts_with("HOSPITAL_")).height == 4
    assert all(t["dropped_null_time"] == 0 for t in report["tables"].values())
    with pytest.raises(LoaderError, match=r"admissions\.csv\.gz: line 2: admittime '01/01/2100 10:00' is not a date-time"):
        _convert(_mimic(tmp_path / "bad", _TWO_ADMISSIONS.replace("2100-01-01 10:00:00", "01/01/2100 10:00", 1)),
                 tmp_path / "o2")


def test_duplicated_hadm_rows_are_deduplicated_if_identical_and_refused_if_not(tmp_path):
    first = _TWO_ADMISSIONS.splitlines()[0] + "\n"
    events, report = _convert(_mimic(tmp_path / "m", _TWO_ADMISSIONS + first), tmp_path / "o")
    assert events.filter(pl.col("code") == "HOSPITAL_ADMISSION//EW").height == 2  # not 3
    assert report["duplicate_rows"] == {"hosp/admissions": 1}
    with pytest.raises(LoaderError, match=r"admissions\.csv\.gz: hadm_id 11 has two different rows \(lines 2 and 4; "
                                          r"they differ in \['discharge_location'\]\)"):
        _convert(_mimic(tmp_path / "m2", _TWO_ADMISSIONS + first.replace("HOME", "SNF")), tmp_path / "o2")


def test_discharge_before_admission_keeps_the_admission_and_is_counted(tmp_path):
    inverted = _TWO_ADMISSIONS.replace("2100-01-03 10:00:00", "2099-12-30 10:00:00")
    events, report = _convert(_mimic(tmp_path / "m", inverted), tmp_path / "o")
    assert events.filter(pl.col("code") == "HOSPITAL_ADMISSION//EW").height == 2
    assert events.filter(pl.col("code").str.starts_with("HOSPITAL_DISCHARGE")).height == 1
    assert report["discharge_before_admission"]["count"] == 1 and report["discharge_before_admission"]["hadm_ids"] == ["11"]
    from tscl.loaders.mimic_meds import conversion_notes

    assert conversion_notes(report)["left_out"] == {
        "admissions discharged before admitted (discharge event and diagnoses left out)": 1}


def test_one_inf_value_does_not_turn_its_code_into_no_value(tmp_path):
    from tscl.datasets.ehr import build_ehr_items

    root = _mimic(tmp_path / "m", _TWO_ADMISSIONS, _LABS.replace(",4.4,4.4,", ",inf,inf,", 1))
    events, report = _convert(root, tmp_path / "o")
    assert report["non_finite_values"] == {"hosp/labevents": 1}
    lab = events.filter(pl.col("code").str.starts_with("LAB//"))["numeric_value"]
    assert lab.null_count() == 1 and lab.drop_nulls().is_finite().all()
    # item building counts a non-finite value as no value for that event only, whoever wrote it
    raw = events.with_columns(pl.when(pl.col("code").str.starts_with("LAB//") & pl.col("numeric_value").is_null())
                              .then(float("inf")).otherwise(pl.col("numeric_value")).alias("numeric_value"))
    index, flat, vocab, meta = build_ehr_items(raw, {1: "train", 2: "train"}, window="admission")
    assert meta["non_finite_values"] == 1
    lab_id = vocab.filter(pl.col("code").str.starts_with("LAB//"))["id"][0]
    values = flat.filter(pl.col("code_id") == lab_id)["value"]
    assert values.is_nan().sum() == 1 and values.is_finite().sum() == 5


def test_corrupt_gzip_is_one_line_naming_it(tmp_path):
    root = _mimic(tmp_path / "m", _TWO_ADMISSIONS, _LABS * 50)
    lab = root / "hosp" / "labevents.csv.gz"
    data = bytearray(lab.read_bytes())
    data[len(data) // 2:len(data) // 2 + 8] = b"\xff" * 8
    lab.write_bytes(bytes(data))
    with pytest.raises(LoaderError, match=r"labevents\.csv\.gz: cannot read csv") as err:
        _convert(root, tmp_path / "o")
    assert "\n" not in str(err.value)


# ---- MEDS time zones ------------------------------------------------------------------------------------------

def test_meds_shard_with_a_time_zone_is_refused_naming_it(tmp_path):
    from datetime import datetime

    rows = {"subject_id": [1, 1], "time": [datetime(2020, 1, 1), datetime(2020, 1, 2)], "code": ["A", "B"],
            "numeric_value": [None, 1.0]}
    schema = {"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.Utf8, "numeric_value": pl.Float32}
    for split in ("train", "held_out"):
        (tmp_path / "data" / split).mkdir(parents=True)
    pl.DataFrame(rows, schema=schema).write_parquet(tmp_path / "data" / "train" / "0.parquet")
    pl.DataFrame(rows, schema=schema).with_columns(pl.col("subject_id") + 1, pl.col("time").dt.replace_time_zone("UTC")
                                                   ).write_parquet(tmp_path / "data" / "held_out" / "0.parquet")
    with pytest.raises(LoaderError, match=r"held_out/0\.parquet: column 'time' carries the time zone 'UTC'"):
        open_dataset("meds", tmp_path, cache=tmp_path / "c", progress=False)


# ---- images found bad at open ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["rgba", "nan", "corrupt"])
def test_bad_image_is_found_when_the_dataset_opens(tmp_path, fault):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / f"f{i}.png")
    np.save(tmp_path / "f4.npy", rng.random((1, 8, 8)).astype(np.float32))
    (tmp_path / "labels.csv").write_text("path,patient_id\n" + "".join(f"f{i}.png,p{i}\n" for i in range(4))
                                         + "f4.npy,p4\n")
    bad = {"rgba": "f3.png", "nan": "f4.npy", "corrupt": "f2.png"}[fault]
    if fault == "rgba":
        Image.fromarray(rng.integers(0, 255, (8, 8, 4), dtype=np.uint8)).save(tmp_path / bad)
    elif fault == "nan":
        np.save(tmp_path / bad, np.full((1, 8, 8), np.nan, np.float32))
    else:
        (tmp_path / bad).write_bytes((tmp_path / bad).read_bytes()[:40])
    with pytest.raises(LoaderError, match=rf"{bad}: "):
        open_dataset("images", tmp_path, progress=False)
    ds = open_dataset("images", tmp_path, progress=False, on_error="skip")
    assert len(ds) == 4 and [Path(s["path"]).name for s in ds.skipped] == [bad]
    assert ds.fetch(np.arange(4)).isfinite().all()


def test_what_was_left_out_is_said_again_when_the_cache_is_reused(tmp_path, monkeypatch):
    """The notes come with the cache: a second open, which reads no record, says the same as the first."""
    import tscl.loaders.wfdb_dir as wfdb_dir

    _cohort(tmp_path / "a", ["p1", "p2", "p3"])
    (tmp_path / "a" / "r1.dat").unlink()
    first = open_dataset("wfdb", tmp_path / "a", cache=tmp_path / "c", progress=False, on_error="skip")
    monkeypatch.setattr(wfdb_dir, "read_wfdb", lambda *a, **k: pytest.fail("the cache was not reused"))
    again = open_dataset("wfdb", tmp_path / "a", cache=tmp_path / "c", progress=False, on_error="skip")
    assert len(first) == len(again) == 2 and again.notes == first.notes
    assert first.notes_line().startswith("1 left out (first: ") and "r1." in first.notes_line()
