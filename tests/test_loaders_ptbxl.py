"""PTB-XL reader on the shared sample: shapes, leads, patient ids, superclass labels, missing files."""
import ast
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import wfdb

from tscl.loaders import LoaderError, WaveformCache, load_ptbxl, ptbxl_labels
from tscl.loaders.ptbxl import PTBXL_LEADS, SUPERCLASSES

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PTBXL = DATA / "ptbxl"

pytestmark = pytest.mark.skipif(not (PTBXL / "ptbxl_database.csv").exists(),
                                reason=f"shared PTB-XL sample not found at {PTBXL}")


def _csv() -> pl.DataFrame:
    return pl.read_csv(PTBXL / "ptbxl_database.csv", schema_overrides={"patient_id": pl.Utf8})


def _csv_present(rate: int = 100) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The csv rows whose .hea and .dat exist on disk at ``rate``, and the rows without them."""
    csv = _csv()
    col = "filename_lr" if rate == 100 else "filename_hr"
    ok = [(PTBXL / f"{n}.hea").exists() and (PTBXL / f"{n}.dat").exists() for n in csv[col]]
    mask = pl.Series(ok)
    return csv.filter(mask), csv.filter(~mask)


@pytest.fixture(scope="module")
def ptbxl100(tmp_path_factory):
    return load_ptbxl(PTBXL, rate=100, cache_dir=tmp_path_factory.mktemp("ptbxl100"), on_error="skip", progress=False)


def test_missing_files_raise_by_default_naming_the_file(tmp_path):
    csv = _csv()
    present, absent = _csv_present()
    if absent.height == 0:
        pytest.skip("every csv row has its records here; nothing missing to report")
    first = absent.row(0, named=True)
    name = re.escape(first["filename_lr"])
    with pytest.raises(LoaderError, match=rf"{name}\.hea.*ecg_id {first['ecg_id']}\b.*{absent.height} of {csv.height} rows"):
        load_ptbxl(PTBXL, rate=100, cache_dir=tmp_path, progress=False)


def test_skip_lists_every_missing_row(ptbxl100):
    csv = _csv()
    present_rows, absent_rows = _csv_present()
    assert isinstance(ptbxl100, WaveformCache)
    skipped = ptbxl100.report["skipped"]
    assert len(ptbxl100) + len(skipped) == csv.height
    assert len(ptbxl100) == present_rows.height and len(skipped) == absent_rows.height
    present = {int(r) for r in ptbxl100.index["record_id"]}
    listed = {int(Path(s["path"]).name[:5]) for s in skipped}
    assert present.isdisjoint(listed) and present | listed == set(csv["ecg_id"])


def test_shapes_leads_and_folds_at_100hz(ptbxl100):
    present, _ = _csv_present()
    assert ptbxl100.stack().shape == (present.height, 12, 1000)
    assert set(ptbxl100.index["fs"]) == {100.0}
    assert ptbxl100.index["channels"][0].split(",") == list(PTBXL_LEADS)
    folds = dict(ptbxl100.index.group_by("strat_fold").len().iter_rows())
    assert folds == dict(present.group_by("strat_fold").len().iter_rows())
    assert set(folds) == set(range(1, 11))
    split = dict(ptbxl100.index.group_by("split").len().iter_rows())
    n_fold = lambda f: sum(v for k, v in folds.items() if f(k))  # noqa: E731
    assert split == {"train": n_fold(lambda k: k <= 8), "val": folds[9], "test": folds[10]}


def test_signal_equals_rdrecord(ptbxl100):
    i = ptbxl100.index["record_id"].to_list().index("17")
    ref = wfdb.rdrecord(str(PTBXL / "records100/00000/00017_lr")).p_signal.T
    np.testing.assert_allclose(ptbxl100[i], ref, rtol=1e-6, atol=1e-6)


def test_patient_ids_age_sex_as_in_the_csv(ptbxl100):
    present, _ = _csv_present()
    merged = ptbxl100.index.with_columns(pl.col("record_id").cast(pl.Int64).alias("ecg_id_")).join(
        present.select("ecg_id", pl.col("patient_id").alias("pid_csv"), pl.col("age").alias("age_csv"),
                       pl.col("sex").alias("sex_csv")), left_on="ecg_id_", right_on="ecg_id")
    assert merged.height == present.height == len(ptbxl100)
    # the csv writes patient ids as float text ("15709.0"); the loader keeps the integer text
    assert (merged["patient_id"] == merged["pid_csv"].str.replace(r"\.0$", "")).all()
    assert (merged["age"] == merged["age_csv"]).all() and (merged["sex"] == merged["sex_csv"]).all()
    # patients with several ECGs give patient-level positives
    per_patient = ptbxl100.index.group_by("patient_id").len()
    expect = present.group_by("patient_id").len()
    assert per_patient.height == expect.height
    assert per_patient.filter(pl.col("len") >= 2).height == expect.filter(pl.col("len") >= 2).height > 0


def test_superclass_labels_follow_scp_codes(ptbxl100):
    idx = ptbxl100.index
    row = lambda ecg: idx.filter(pl.col("record_id") == str(ecg)).row(0, named=True)  # noqa: E731
    r1 = row(1)  # {'NORM': 100.0, 'LVOLT': 0.0, 'SR': 0.0}
    assert [r1[s] for s in SUPERCLASSES] == [1, 0, 0, 0, 0] and r1["sub_NORM"] == 1
    scp = pl.read_csv(PTBXL / "scp_statements.csv").filter(pl.col("diagnostic") == 1)
    to_class = dict(zip(scp[scp.columns[0]], scp["diagnostic_class"]))
    checked = 0
    for r in idx.head(40).iter_rows(named=True):
        expect = {to_class[c] for c in ast.literal_eval(r["scp_codes"]) if c in to_class}
        assert {s for s in SUPERCLASSES if r[s]} == expect
        checked += len(expect) > 0 and expect != {"NORM"}
    assert checked >= 5  # some rows with abnormal superclasses were among those checked
    assert idx.select(SUPERCLASSES).sum().row(0) != (0,) * 5


def test_min_likelihood_filters_statements():
    every = ptbxl_labels(PTBXL)
    certain = ptbxl_labels(PTBXL, min_likelihood=100.0)
    assert (certain.select(SUPERCLASSES).to_numpy() <= every.select(SUPERCLASSES).to_numpy()).all()
    assert certain.select(SUPERCLASSES).sum().sum_horizontal()[0] < every.select(SUPERCLASSES).sum().sum_horizontal()[0]


def test_500hz(tmp_path):
    cache = load_ptbxl(PTBXL, rate=500, cache_dir=tmp_path, on_error="skip", progress=False)
    n = len(list((PTBXL / "records500").rglob("*_hr.hea")))
    assert len(cache) == n > 0 and cache.stack().shape == (n, 12, 5000)
    assert set(cache.index["fs"]) == {500.0}
    present, absent = _csv_present(500)
    assert cache.index["record_id"].to_list() == [str(i) for i in present["ecg_id"]]
    assert len(cache.report["skipped"]) == absent.height


def test_bad_scp_codes_and_missing_column(tmp_path):
    root = tmp_path / "ptbxl"
    root.mkdir()
    shutil.copy(PTBXL / "scp_statements.csv", root)
    csv = pl.read_csv(PTBXL / "ptbxl_database.csv").head(3)
    csv.with_columns(pl.when(pl.col("ecg_id") == 2).then(pl.lit("NORM 100")).otherwise(pl.col("scp_codes"))
                     .alias("scp_codes")).write_csv(root / "ptbxl_database.csv")
    with pytest.raises(LoaderError, match=r"ptbxl_database\.csv.*ecg_id 2.*not a dict"):
        load_ptbxl(root, cache_dir=tmp_path / "c", progress=False)
    csv.drop("strat_fold").write_csv(root / "ptbxl_database.csv")
    with pytest.raises(LoaderError, match=r"ptbxl_database\.csv.*missing column.*strat_fold"):
        load_ptbxl(root, cache_dir=tmp_path / "c", progress=False)


def test_truncated_record_is_named_or_skipped(tmp_path):
    root = tmp_path / "ptbxl"
    (root / "records100" / "00000").mkdir(parents=True)
    shutil.copy(PTBXL / "scp_statements.csv", root)
    pl.read_csv(PTBXL / "ptbxl_database.csv").head(3).write_csv(root / "ptbxl_database.csv")
    for i in (1, 2, 3):
        for ext in ("hea", "dat"):
            shutil.copy(PTBXL / f"records100/00000/{i:05d}_lr.{ext}", root / f"records100/00000/{i:05d}_lr.{ext}")
    (root / "records100/00000/00002_lr.dat").write_bytes(b"\0" * 100)
    with pytest.raises(LoaderError, match=r"00002_lr\.dat.*truncated"):
        load_ptbxl(root, cache_dir=tmp_path / "c", progress=False)
    cache = load_ptbxl(root, cache_dir=tmp_path / "c", progress=False, on_error="skip")
    assert cache.index["record_id"].to_list() == ["1", "3"]
    assert [Path(s["path"]).name for s in cache.report["skipped"]] == ["00002_lr.dat"]
