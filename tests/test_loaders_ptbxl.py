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
    """The database rows only (``labels="database"``), as PhysioNet's csv lists them."""
    return load_ptbxl(PTBXL, rate=100, cache_dir=tmp_path_factory.mktemp("ptbxl100"), on_error="skip",
                      labels="database", progress=False)


def test_missing_files_raise_by_default_naming_the_file(tmp_path):
    csv = _csv()
    present, absent = _csv_present()
    if absent.height == 0:
        pytest.skip("every csv row has its records here; nothing missing to report")
    first = absent.row(0, named=True)
    name = re.escape(first["filename_lr"])
    with pytest.raises(LoaderError, match=rf"{name}\.hea.*ecg_id {first['ecg_id']}\b.*{absent.height} of {csv.height} rows"):
        load_ptbxl(PTBXL, rate=100, cache_dir=tmp_path, labels="database", progress=False)


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
    cache = load_ptbxl(PTBXL, rate=500, cache_dir=tmp_path, on_error="skip", labels="database", progress=False)
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


# --- label tables (labels/ptbxl_<task>_<part>.csv, MERL's split files) -------------------------------------

LABELS = PTBXL / "labels"
needs_tables = pytest.mark.skipif(not LABELS.is_dir(), reason=f"shared PTB-XL label tables not found at {LABELS}")
TASK_PREFIX = {"super_class": "super", "sub_class": "sub", "form": "form", "rhythm": "rhythm"}
BASE = ("ecg_id", "patient_id", "strat_fold", "filename_lr", "filename_hr")


def _tables() -> dict[str, pl.DataFrame]:
    """task -> its train/val/test tables stacked, read as text."""
    out: dict = {}
    for path in sorted(LABELS.glob("ptbxl_*_*.csv")):
        task = path.stem.removeprefix("ptbxl_").rsplit("_", 1)[0]
        out.setdefault(task, []).append(pl.read_csv(path, infer_schema=False))
    return {t: pl.concat(v, how="diagonal") for t, v in out.items()}


def _on_disk() -> set[int]:
    return {int(p.name[:5]) for p in (PTBXL / "records100").rglob("*_lr.hea")}


@pytest.fixture(scope="module")
def merged100(tmp_path_factory):
    """Database rows and label tables together (``labels="auto"``, the default)."""
    return load_ptbxl(PTBXL, rate=100, cache_dir=tmp_path_factory.mktemp("merged100"), on_error="skip", progress=False)


@needs_tables
def test_ecgs_without_a_database_row_load_from_the_tables(merged100):
    tables = _tables()
    listed = set(map(int, _csv()["ecg_id"])) | {int(e) for t in tables.values() for e in t["ecg_id"]}
    disk = _on_disk()
    idx = merged100.index
    assert set(map(int, idx["record_id"])) == disk & listed
    assert len(merged100.report["skipped"]) == len(listed - disk)
    assert [Path(u["path"]).name[:5] for u in merged100.report["unlisted"]] == [f"{e:05d}" for e in sorted(disk - listed)]
    no_db = idx.filter(pl.col("in_database") == 0)
    assert no_db.height == len(disk - set(map(int, _csv()["ecg_id"]))) > 0
    assert no_db["patient_id"].null_count() == 0 and no_db["strat_fold"].is_between(1, 10).all()
    assert no_db["age"].null_count() == no_db.height  # nothing invented for them
    assert (no_db["has:super"] == 1).sum() > 0.9 * no_db.height
    # patient_id and strat_fold as the tables give them, ids as integer text
    sup = tables["super_class"].select(pl.col("ecg_id").cast(pl.Int64), pl.col("patient_id").alias("pid_t"),
                                       pl.col("strat_fold").cast(pl.Int64).alias("fold_t"))
    j = idx.with_columns(pl.col("record_id").cast(pl.Int64).alias("ecg_id_")).join(sup, left_on="ecg_id_", right_on="ecg_id")
    assert j.height == sup.height
    assert (j["patient_id"] == j["pid_t"].str.replace(r"\.0$", "")).all() and (j["strat_fold"] == j["fold_t"]).all()


@needs_tables
def test_task_columns_read_by_header_name_with_a_has_indicator(merged100):
    idx = merged100.index.with_columns(pl.col("record_id").cast(pl.Int64).alias("ecg"))
    for task, table in _tables().items():
        prefix = TASK_PREFIX[task]
        codes = [c for c in table.columns if c not in BASE and c != task]
        assert sorted(c.removeprefix(f"{prefix}:") for c in idx.columns if c.startswith(f"{prefix}:")) == sorted(codes)
        listed = set(map(int, table["ecg_id"]))
        has = dict(zip(idx["ecg"], idx[f"has:{prefix}"]))
        assert {e for e, h in has.items() if h == 1} == listed & set(has)
        left_out = idx.filter(pl.col(f"has:{prefix}") == 0)
        assert left_out.select(f"{prefix}:{codes[0]}").null_count().item() == left_out.height  # not all-negative
        # the one-hot columns agree with each row's code list (their order differs between files)
        by_id = {r["ecg"]: r for r in idx.iter_rows(named=True)}
        for r in table.head(200).iter_rows(named=True):
            row = by_id.get(int(r["ecg_id"]))
            if row is not None:
                assert {c for c in codes if row[f"{prefix}:{c}"] == 1} == set(ast.literal_eval(r[task]))


def _table_folder(tmp_path: Path, ecg_ids) -> Path:
    """A folder with only records100/ (symlinks to some shared records) and labels/ (symlinks to the tables)."""
    root = tmp_path / "ptbxl_tables_only"
    (root / "labels").mkdir(parents=True)
    for path in LABELS.glob("*.csv"):
        (root / "labels" / path.name).symlink_to(path)
    for e in ecg_ids:
        sub = f"records100/{(e // 1000) * 1000:05d}"
        (root / sub).mkdir(parents=True, exist_ok=True)
        for ext in ("hea", "dat"):
            (root / sub / f"{e:05d}_lr.{ext}").symlink_to(PTBXL / sub / f"{e:05d}_lr.{ext}")
    return root


@needs_tables
def test_folder_with_only_records_and_label_tables(tmp_path):
    disk = sorted(_on_disk())
    subset = [e for e in disk if e in (137, 138)] + disk[300:340] + disk[-40:]
    root = _table_folder(tmp_path, subset)
    tables = _tables()
    listed = {int(e) for t in tables.values() for e in t["ecg_id"]}
    with pytest.raises(LoaderError, match=r"_lr\.hea.*listed in labels/ptbxl_.*but not found"):
        load_ptbxl(root, cache_dir=tmp_path / "c", progress=False)
    with pytest.warns(UserWarning, match="listed in no label source"):
        cache = load_ptbxl(root, cache_dir=tmp_path / "c", on_error="skip", progress=False)
    got = set(map(int, cache.index["record_id"]))
    assert got == set(subset) & listed and len(got) > 50
    assert len(cache.report["skipped"]) == len(listed - set(subset))
    assert {int(Path(u["path"]).name[:5]) for u in cache.report["unlisted"]} == set(subset) - listed
    assert cache.index["in_database"].sum() == 0 and cache.index["patient_id"].null_count() == 0
    assert set(cache.index["split"]) <= {"train", "val", "test"}
    assert cache.stack().shape == (len(got), 12, 1000)


def _write_table(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")


SUPER_HEADER = "ecg_id,patient_id,strat_fold,filename_lr,filename_hr,super_class,HYP,NORM,MI,CD,STTC"


def _row(ecg, pid="15709.0", fold="3", codes="['NORM']", onehot="0,1,0,0,0"):
    return f"{ecg},{pid},{fold},records100/00000/{ecg:05d}_lr,records500/00000/{ecg:05d}_hr,\"{codes}\",{onehot}"


def _tiny_records(root: Path, ecg_ids) -> None:
    (root / "records100/00000").mkdir(parents=True, exist_ok=True)
    for e in ecg_ids:
        for ext in ("hea", "dat"):
            (root / f"records100/00000/{e:05d}_lr.{ext}").symlink_to(PTBXL / f"records100/00000/{e:05d}_lr.{ext}")


def test_ids_are_text_as_written(tmp_path):
    root = tmp_path / "p"
    _tiny_records(root, (1, 2))
    _write_table(root / "labels/ptbxl_super_class_train.csv", SUPER_HEADER,
                 [_row(1, pid="15709.0"), _row(2, pid="0042", codes="['MI']", onehot="0,0,1,0,0")])
    cache = load_ptbxl(root, cache_dir=tmp_path / "c", progress=False)
    idx = cache.index
    assert idx["patient_id"].to_list() == ["15709", "0042"]  # float text loses '.0'; leading zeros stay
    assert idx["super:MI"].to_list() == [0, 1] and idx["super:NORM"].to_list() == [1, 0]


def test_duplicated_ecg_id_is_named(tmp_path):
    root = tmp_path / "p"
    _tiny_records(root, (1, 2))
    _write_table(root / "labels/ptbxl_super_class_val.csv", SUPER_HEADER, [_row(1, fold="9"), _row(2, fold="9"),
                                                                           _row(2, fold="9")])
    with pytest.raises(LoaderError, match=r"ptbxl_super_class_val\.csv: ecg_id 2 appears twice \(lines 3 and 4\)"):
        load_ptbxl(root, cache_dir=tmp_path / "c", progress=False)


def test_non_integer_strat_fold_is_named(tmp_path):
    root = tmp_path / "p"
    _tiny_records(root, (1, 2))
    _write_table(root / "labels/ptbxl_super_class_train.csv", SUPER_HEADER, [_row(1), _row(2, fold="ten")])
    with pytest.raises(LoaderError, match=r"ptbxl_super_class_train\.csv: line 3 \(ecg_id 2\): strat_fold 'ten' "
                                          r"is not an integer 1-10"):
        load_ptbxl(root, cache_dir=tmp_path / "c", progress=False)
    db_root = tmp_path / "db"
    db_root.mkdir()
    shutil.copy(PTBXL / "scp_statements.csv", db_root)
    csv = pl.read_csv(PTBXL / "ptbxl_database.csv", infer_schema=False).head(3)
    csv.with_columns(pl.when(pl.col("ecg_id") == "2").then(pl.lit("ten")).otherwise(pl.col("strat_fold"))
                     .alias("strat_fold")).write_csv(db_root / "ptbxl_database.csv")
    with pytest.raises(LoaderError, match=r"ptbxl_database\.csv: line 3 \(ecg_id 2\): strat_fold 'ten'"):
        load_ptbxl(db_root, cache_dir=tmp_path / "c2", progress=False)


def test_same_ecg_in_two_parts_or_with_two_patients_raises(tmp_path):
    root = tmp_path / "p"
    _tiny_records(root, (1, 2))
    _write_table(root / "labels/ptbxl_super_class_train.csv", SUPER_HEADER, [_row(1), _row(2)])
    _write_table(root / "labels/ptbxl_super_class_test.csv", SUPER_HEADER, [_row(2, fold="10")])
    with pytest.raises(LoaderError, match=r"ecg_id 2 is also listed in .*ptbxl_super_class_train\.csv"):
        load_ptbxl(root, cache_dir=tmp_path / "c", progress=False)
    (root / "labels/ptbxl_super_class_test.csv").unlink()
    _write_table(root / "labels/ptbxl_form_train.csv", "ecg_id,patient_id,strat_fold,filename_lr,filename_hr,form,NDT",
                 [_row(2, pid="999.0", codes="['NDT']", onehot="1")])
    with pytest.raises(LoaderError, match=r"ecg_id 2: patient_id .*label tables disagree"):
        load_ptbxl(root, cache_dir=tmp_path / "c", progress=False)


def test_source_channels_option_keeps_the_named_leads_in_order(ptbxl100, tmp_path):
    """``open_dataset("ptbxl", ..., channels=...)``: the named leads (any case) in the order named, equal to those
    rows of the 12-lead read; an unknown or repeated lead is refused in one line naming the leads."""
    from tscl.datasets import open_dataset

    opts = {"on_error": "skip", "cache": tmp_path, "progress": False}
    full = open_dataset("ptbxl", PTBXL, **opts)
    some = open_dataset("ptbxl", PTBXL, channels="v1,I", **opts)
    assert some.info["channels"] == ["V1", "I"] and some.in_channels == 2 and len(some) == len(full)
    rows = np.arange(0, len(full), max(1, len(full) // 7))
    np.testing.assert_array_equal(some.fetch(rows).numpy(), full.fetch(rows).numpy()[:, [6, 0]])
    for bad, why in [("I,X", "'X' is not a lead"), ("I,i", "a lead is named twice")]:
        with pytest.raises(ValueError, match=f"channels '{bad}': {why}; the leads: I,II,III,aVR"):
            open_dataset("ptbxl", PTBXL, channels=bad, **opts)
