"""MEDS reading and validation, MIMIC-IV -> MEDS conversion, event sequences and tabular features."""
import gzip
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tscl.loaders import LoaderError
from tscl.loaders.meds import (build_vocabulary, read_codes, read_subject_splits, scan_meds, subject_sequences,
                               tabular_features, validate_meds_shard)
from tscl.loaders.mimic_meds import mimic_iv_to_meds

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "meds_demo"
EXAMPLE = DATA / "meds_example"
MIMIC = DATA / "mimic-iv-clinical-database-demo-2.2"

needs_example = pytest.mark.skipif(not EXAMPLE.exists(), reason=f"shared MEDS example not found at {EXAMPLE}")
needs_mimic = pytest.mark.skipif(not MIMIC.exists(), reason=f"shared MIMIC-IV demo not found at {MIMIC}")


@needs_example
def test_scan_meds_example():
    with pytest.warns(UserWarning, match=r"6 code\(s\).*not in metadata/codes\.parquet"):  # DOB, HEIGHT, ...
        events = scan_meds(EXAMPLE).collect()
    assert events.height == 30 + 14 + 7 + 11
    assert events.schema["numeric_value"] == pl.Float64 and events["text_value"].null_count() == events.height
    assert set(events["shard"]) == {"train/0.parquet", "train/1.parquet", "tuning/0.parquet", "held_out/0.parquet"}
    splits = read_subject_splits(EXAMPLE)
    assert dict(splits.group_by("split").len().iter_rows()) == {"train": 4, "tuning": 1, "held_out": 1}
    assert set(events["subject_id"]) == set(splits["subject_id"])
    assert read_codes(EXAMPLE).height == 5


@needs_example
def test_meds_validation_names_the_shard(tmp_path):
    good = pl.read_parquet(EXAMPLE / "data" / "train" / "0.parquet")
    (tmp_path / "data" / "train").mkdir(parents=True)
    bad = tmp_path / "data" / "train" / "0.parquet"
    good.with_columns(pl.col("subject_id").cast(pl.Utf8)).write_parquet(bad)
    with pytest.raises(LoaderError, match=r"train/0\.parquet.*'subject_id' has type String"):
        validate_meds_shard(bad)
    good.drop("code").write_parquet(bad)
    with pytest.raises(LoaderError, match=r"0\.parquet.*missing MEDS column 'code'"):
        scan_meds(tmp_path)
    good.reverse().write_parquet(bad)
    with pytest.raises(LoaderError, match=r"0\.parquet.*not sorted"):
        scan_meds(tmp_path)
    good.with_columns(pl.col("time").cast(pl.Utf8)).write_parquet(bad)
    with pytest.raises(LoaderError, match=r"'time' has type String"):
        validate_meds_shard(bad)
    good.write_parquet(bad)
    assert scan_meds(tmp_path).collect().height == good.height


@pytest.fixture(scope="module")
def mimic_meds(tmp_path_factory):
    if not MIMIC.exists():
        pytest.skip(f"shared MIMIC-IV demo not found at {MIMIC}")
    out = tmp_path_factory.mktemp("mimic_meds")
    with pytest.warns(UserWarning, match="chartevents"):
        report = mimic_iv_to_meds(MIMIC, out)
    return out, report


def _rows(table: str) -> int:
    with gzip.open(MIMIC / f"{table}.csv.gz", "rt") as f:
        return sum(1 for _ in f) - 1


@needs_mimic
def test_mimic_conversion_row_counts_match_the_source(mimic_meds):
    out, report = mimic_meds
    events = scan_meds(out).collect()
    assert report["missing_tables"] == ["icu/chartevents"]
    count = lambda prefix: events.filter(pl.col("code").str.starts_with(prefix)).height  # noqa: E731
    patients = _rows("hosp/patients")
    assert patients == 100 and count("GENDER//") == patients and count("MEDS_BIRTH") == patients
    deaths = pl.read_csv(MIMIC / "hosp/patients.csv.gz")["dod"].drop_nulls().len()
    assert count("MEDS_DEATH") == deaths
    assert count("HOSPITAL_ADMISSION//") == count("HOSPITAL_DISCHARGE//") == _rows("hosp/admissions") == 275
    assert count("DIAGNOSIS//ICD//") == _rows("hosp/diagnoses_icd") == 4506
    assert count("LAB//") == _rows("hosp/labevents") == 107727
    assert count("MEDICATION//") == _rows("hosp/prescriptions") - report["tables"]["hosp/prescriptions"]["dropped_null_time"]
    assert count("ICU_ADMISSION//") == count("ICU_DISCHARGE//") == _rows("icu/icustays") == 140
    assert count("TRANSFER_TO//") == _rows("hosp/transfers") - report["tables"]["hosp/transfers"]["dropped_null_time"]
    for table, r in report["tables"].items():
        assert r["source_rows"] == _rows(table)
    assert events.height == report["events"]
    assert set(events["subject_id"]) == set(pl.read_csv(MIMIC / "hosp/patients.csv.gz")["subject_id"])
    splits = read_subject_splits(out)
    assert splits.height == 100 and set(splits["split"]) <= {"train", "tuning", "held_out"}


@needs_mimic
def test_mimic_codes_and_values(mimic_meds):
    out, _ = mimic_meds
    events = scan_meds(out).collect()
    adm = pl.read_csv(MIMIC / "hosp/admissions.csv.gz", infer_schema_length=0)
    row = adm.row(0, named=True)
    hit = events.filter((pl.col("subject_id") == int(row["subject_id"]))
                        & (pl.col("code") == f"HOSPITAL_ADMISSION//{row['admission_type']}")
                        & (pl.col("time") == datetime.fromisoformat(row["admittime"])))
    assert hit.height == 1
    dx = pl.read_csv(MIMIC / "hosp/diagnoses_icd.csv.gz", infer_schema_length=0).row(0, named=True)
    disch = adm.filter(pl.col("hadm_id") == dx["hadm_id"])["dischtime"][0]
    code = f"DIAGNOSIS//ICD//{dx['icd_version']}//{dx['icd_code']}"
    assert events.filter((pl.col("code") == code) & (pl.col("time") == datetime.fromisoformat(disch))).height >= 1
    lab = events.filter(pl.col("code") == "LAB//50868//mEq/L")
    assert lab.height > 0 and lab["numeric_value"].null_count() < lab.height
    codes = read_codes(out)
    assert codes.filter(pl.col("code") == "LAB//50868//mEq/L")["description"][0] == "Anion Gap"


@needs_mimic
def test_missing_table_reported_and_bad_columns_named(tmp_path):
    (tmp_path / "hosp").mkdir()
    shutil.copy(MIMIC / "hosp/patients.csv.gz", tmp_path / "hosp")
    with pytest.warns(UserWarning, match="admissions"):
        report = mimic_iv_to_meds(tmp_path, tmp_path / "out", tables=("hosp/patients", "hosp/admissions"))
    assert report["missing_tables"] == ["hosp/admissions"] and report["tables"]["hosp/patients"]["events"] > 200
    with gzip.open(tmp_path / "hosp" / "patients.csv.gz", "wt") as f:
        f.write(pl.read_csv(MIMIC / "hosp/patients.csv.gz").drop("gender").write_csv())
    with pytest.raises(LoaderError, match=r"patients\.csv\.gz.*missing column.*gender"):
        mimic_iv_to_meds(tmp_path, tmp_path / "out2", tables=("hosp/patients",))


def _toy_events() -> pl.DataFrame:
    t = datetime(2020, 1, 1)
    rows = [(1, None, "GENDER//F", None), (1, t, "HR", 60.0), (1, t + timedelta(hours=1), "HR", 80.0),
            (1, t + timedelta(hours=2), "DX//A", None), (1, t + timedelta(hours=5), "HR", 100.0),
            (2, t, "HR", 70.0), (2, t + timedelta(hours=3), "RARE", 1.0)]
    return pl.DataFrame(rows, schema={"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.Utf8,
                                      "numeric_value": pl.Float64}, orient="row")


def test_sequences_vocabulary_and_normalisation():
    events = _toy_events()
    vocab = build_vocabulary(events, min_count=2)
    assert vocab.table["code"].to_list() == ["HR"] and vocab.size == 3  # pad, unknown, HR
    pt = pl.DataFrame({"subject_id": [1, 2], "prediction_time": [datetime(2020, 1, 1, 4), datetime(2020, 1, 2)]})
    seq = subject_sequences(events, vocab, pt).sort("subject_id")
    s1 = seq.row(0, named=True)
    assert s1["code_id"] == [1, 2, 2, 1]  # static gender first; HR at 100 is after the prediction time
    mean, std = np.mean([60, 80, 100, 70]), np.std([60, 80, 100, 70], ddof=1)
    np.testing.assert_allclose(s1["value"][1:3], [(60 - mean) / std, (80 - mean) / std])
    assert np.isnan(s1["value"][0]) and s1["time_h"] == [0.0, 0.0, 1.0, 2.0] and s1["delta_h"] == [0, 0, 1, 1]
    assert seq.row(1, named=True)["code_id"] == [2, 1]


def test_tabular_features_strictly_before_prediction_time():
    events = _toy_events()
    pt = pl.DataFrame({"subject_id": [1, 2], "prediction_time": [datetime(2020, 1, 1, 4), datetime(2020, 1, 1, 5)]})
    feats = tabular_features(events, pt, lookback=timedelta(hours=3.5))
    r1 = feats.filter(pl.col("subject_id") == 1).row(0, named=True)
    assert r1["count//HR"] == 1 and r1["last//HR"] == 80.0 and r1["mean//HR"] == 80.0  # 60 is outside the look-back
    assert r1["count//DX//A"] == 1 and r1["count//RARE"] == 0 and r1["last//RARE"] is None
    r2 = feats.filter(pl.col("subject_id") == 2).row(0, named=True)
    assert r2["count//RARE"] == 1 and r2["last//RARE"] == 1.0 and r2["count//HR"] == 0  # HR at 00:00 is too old
    planted = pl.concat([events, pl.DataFrame(
        [(1, datetime(2020, 1, 1, 4), "HR", 999.0), (1, datetime(2020, 1, 1, 6), "DX//FUTURE", None),
         (2, datetime(2020, 1, 1, 5), "RARE", 5.0)],
        schema=events.schema, orient="row")])
    again = tabular_features(planted, pt, lookback=timedelta(hours=3.5), codes=["HR", "DX//A", "RARE"])
    assert again.equals(feats.select(again.columns))
    seq = subject_sequences(planted, build_vocabulary(events, min_count=2), pt)
    assert seq.equals(subject_sequences(events, build_vocabulary(events, min_count=2), pt))
