"""Generated faults for the EHR sources (``meds``, ``mimic-iv``) through the installed CLI.

A small MEDS folder and a small MIMIC-IV folder (gzipped CSVs) are written here; a seeded generator
derives mutated copies (time zones, a copied or re-split shard, unsorted rows, retyped columns, cut
and corrupted files, non-finite values, empty subjects, ISO timestamps, plain CSV tables, duplicated
and inverted admissions, non-integer ids, missing tables). Correct reads are compared with the
events read directly from the files (polars for parquet, Python's csv and gzip for MIMIC-IV): per
patient the multiset of event codes, and per code how many events carry no value.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import random
import shutil
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from mutation_kit import Case, Cases, flip_bytes, needs_cli, outside, run_cases

pytestmark = needs_cli
BIG = "max_len=1000"  # no item is cut, so every event can be compared


def _events_of(result: dict, static: set[str]) -> tuple[dict[str, Counter], dict[str, tuple[int, int]]]:
    """From a read: per patient the timed codes of all its items; per code (events, events without a value)."""
    per_patient: dict[str, Counter] = {}
    values: dict[str, list[int]] = {}
    for row, item in zip(result["index"], result["payload"]):
        counts = per_patient.setdefault(row["patient_id"], Counter())
        for code, value in zip(item["codes"], item["values"]):
            if code in static:
                continue
            counts[code] += 1
            v = values.setdefault(code, [0, 0])
            v[0] += 1
            v[1] += value is None or (isinstance(value, float) and math.isnan(value))
    return per_patient, {c: tuple(v) for c, v in values.items()}


def same_events(result: dict, expected: list[tuple[str, str, float | None]], static: set[str]) -> None:
    """``expected``: (patient, code, raw value or None) per timed event, read from the files by the test."""
    got, values = _events_of(result, static)
    want: dict[str, Counter] = {}
    want_values: dict[str, list[int]] = {}
    for patient, code, value in expected:
        want.setdefault(patient, Counter())[code] += 1
        v = want_values.setdefault(code, [0, 0])
        v[0] += 1
        v[1] += value is None or not math.isfinite(value)
    assert got == want, f"events per patient differ: {set(got) ^ set(want) or [p for p in got if got[p] != want.get(p)]}"
    assert values == {c: tuple(v) for c, v in want_values.items()}, "events without a value per code"


# ---- meds ---------------------------------------------------------------------------------------------

T0 = datetime(2020, 1, 1, 8)
MEDS_STATIC = {"GENDER//F", "GENDER//M", "MEDS_BIRTH"}
_SCHEMA = {"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.Utf8, "numeric_value": pl.Float32}


def _subject_rows(s: int) -> list[dict]:
    rows = [{"subject_id": s, "time": None, "code": "GENDER//F" if s % 2 else "GENDER//M", "numeric_value": None},
            {"subject_id": s, "time": datetime(1960 + s, 1, 1), "code": "MEDS_BIRTH", "numeric_value": None}]
    for j in range(6):
        rows.append({"subject_id": s, "time": T0 + timedelta(days=9 * j + s, hours=j),
                     "code": "LAB//K" if j % 2 else "DX//I10", "numeric_value": 4.0 + 0.1 * j * s if j % 2 else None})
    rows.append({"subject_id": s, "time": T0 + timedelta(days=70 + s), "code": "LAB//HR", "numeric_value": 60.0 + s})
    return rows


def write_shard(path: Path, subjects, rows=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = rows if rows is not None else [r for s in subjects for r in _subject_rows(s)]
    pl.DataFrame(rows, schema=_SCHEMA, orient="row").write_parquet(path)


@pytest.fixture(scope="module")
def meds_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("meds") / "base"
    write_shard(root / "data" / "train" / "0.parquet", [1, 2, 3])
    write_shard(root / "data" / "held_out" / "0.parquet", [4])
    (root / "metadata").mkdir()
    pl.DataFrame({"code": ["LAB//K", "DX//I10", "LAB//HR"], "description": ["potassium", "hypertension", "rate"]}
                 ).write_parquet(root / "metadata" / "codes.parquet")
    pl.DataFrame({"subject_id": [1, 2, 3, 4], "split": ["train", "train", "train", "held_out"]}
                 ).write_parquet(root / "metadata" / "subject_splits.parquet")
    return root


def meds_expected(root: Path) -> list[tuple[str, str, float | None]]:
    out = []
    for shard in sorted((root / "data").rglob("*.parquet")):
        for r in pl.read_parquet(shard).iter_rows(named=True):
            if r["time"] is not None and r["code"] not in MEDS_STATIC:
                out.append((str(r["subject_id"]), r["code"], r["numeric_value"]))
    return out


def _rewrite(path: Path, fn) -> None:
    fn(pl.read_parquet(path)).write_parquet(path)


def _cut(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def meds_cases(base: Path, where: Path, rng: random.Random) -> list[Case]:
    case = Cases(base, where, lambda root, r: same_events(r, meds_expected(root), MEDS_STATIC), BIG)
    train, held = "data/train/0.parquet", "data/held_out/0.parquet"

    case("baseline", "correct")
    case("one shard's times in UTC", "refuse", "held_out/0.parquet",
         edit=lambda r: _rewrite(r / held, lambda f: f.with_columns(pl.col("time").dt.replace_time_zone("UTC"))))
    case("every shard's times in a time zone", "refuse", "0.parquet",
         edit=lambda r: [_rewrite(r / p, lambda f: f.with_columns(pl.col("time").dt.replace_time_zone("Europe/Paris")))
                         for p in (train, held)])
    case("a shard copied", "refuse", "0_copy.parquet", edit=lambda r: shutil.copy(r / train, r / "data/train/0_copy.parquet"))
    case("a subject split across two shards", "refuse", "parquet",
         edit=lambda r: write_shard(r / "data/train/1.parquet", [], rows=_subject_rows(2)[-2:]) or write_shard(
             r / train, [], rows=[x for s in (1, 2, 3) for x in (_subject_rows(s)[:-2] if s == 2 else _subject_rows(s))]))
    case("rows out of time order", "refuse", "train/0.parquet",
         edit=lambda r: _rewrite(r / train, lambda f: f.sort("subject_id", "code")))
    k = rng.randrange(1, 4)
    case("one value +inf", "correct", note="non-finite",
         edit=lambda r: _rewrite(r / train, lambda f: f.with_columns(
             pl.when((pl.col("subject_id") == k) & (pl.col("code") == "LAB//K") & (pl.col("time") == pl.col("time").filter(
                 (pl.col("subject_id") == k) & (pl.col("code") == "LAB//K")).min())).then(float("inf"))
             .otherwise(pl.col("numeric_value")).alias("numeric_value"))))
    case("time stored as text", "refuse", "train/0.parquet",
         edit=lambda r: _rewrite(r / train, lambda f: f.with_columns(pl.col("time").cast(pl.Utf8))))
    case("subject_id stored as Int32", "refuse", "train/0.parquet",
         edit=lambda r: _rewrite(r / train, lambda f: f.with_columns(pl.col("subject_id").cast(pl.Int32))))
    case("numeric_value stored as Float64", "correct",
         edit=lambda r: _rewrite(r / train, lambda f: f.with_columns(pl.col("numeric_value").cast(pl.Float64))))
    case("shard cut short", "refuse", "train/0.parquet", edit=lambda r: _cut(r / train, rng.uniform(0.3, 0.9)))
    case("a null code", "refuse", "held_out/0.parquet",
         edit=lambda r: _rewrite(r / held, lambda f: f.with_columns(
             pl.when(pl.int_range(pl.len()) == 4).then(None).otherwise(pl.col("code")).alias("code"))))
    case("a subject with static rows only", "refuse", "subject_id [5]",
         edit=lambda r: write_shard(r / held, [], rows=[*_subject_rows(4), *_subject_rows(5)[:2]]))
    case("a subject with static rows only, on_empty=skip", "correct", options=BIG + ",on_empty=skip",
         note="1 subjects with no timed event",
         edit=lambda r: write_shard(r / held, [], rows=[*_subject_rows(4), *_subject_rows(5)[:2]]))
    case("an unknown split name", "refuse", "subject_splits.parquet",
         edit=lambda r: _rewrite(r / "metadata/subject_splits.parquet", lambda f: f.with_columns(
             pl.when(pl.col("subject_id") == 4).then(pl.lit("testing")).otherwise(pl.col("split")).alias("split"))))
    case("no codes.parquet", "correct", edit=lambda r: (r / "metadata/codes.parquet").unlink())
    case("codes.parquet cut short", "refuse", "codes.parquet", edit=lambda r: _cut(r / "metadata/codes.parquet", 0.5))
    case("no data folder", "refuse", "data", edit=lambda r: shutil.rmtree(r / "data"))
    case("bytes corrupted inside a shard", "either", "train/0.parquet", edit=lambda r: flip_bytes(r / train, rng, 8))
    return case.cases


def test_meds_mutations(meds_base, tmp_path):
    cwd = outside(tmp_path)
    outcomes = run_cases("meds", meds_cases(meds_base, cwd, random.Random(17)), cwd)
    assert outcomes["one shard's times in UTC"] == "refused" and outcomes["one value +inf"] == "correct"


# ---- mimic-iv -----------------------------------------------------------------------------------------

MIMIC_STATIC = {"GENDER//F", "GENDER//M", "MEDS_BIRTH"}
SUBJECTS = (10000032, 10000084, 10000117, 10000248)


def _write_gz(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *rows])
    with gzip.open(path, "wt", newline="") as f:
        f.write(out.getvalue())


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


def mimic_tables() -> dict[str, tuple[list[str], list[list]]]:
    pats, adms, dx, labs, rx, tr, icu = [], [], [], [], [], [], []
    for i, s in enumerate(SUBJECTS):
        pats.append([s, "F" if i % 2 else "M", 50 + i, 2150, "2017 - 2019", "2152-03-01" if i == 1 else ""])
        for j in range(1 + i % 2):
            hadm, t = 20000000 + 10 * i + j, datetime(2150, 1 + 3 * j, 5 + i, 10)
            adms.append([s, hadm, _ts(t), _ts(t + timedelta(days=4)), "", "EW EMER.", "HOME"])
            dx.append([s, hadm, 1, f"I{10 + j}", 10])
            labs += [[100 * i + 10 * j + k, s, hadm, 50971, _ts(t + timedelta(hours=6 * k)), f"{4.1 + 0.1 * k}",
                      f"{4.1 + 0.1 * k}", "mEq/L"] for k in range(3)]
            labs.append([100 * i + 10 * j + 5, s, hadm, 51300, _ts(t + timedelta(hours=2)), "___", "", "K/uL"])
            rx.append([s, hadm, _ts(t + timedelta(hours=3)), "Aspirin"])
            tr.append([s, hadm, 300 + i * 10 + j, "admit", "Medicine", _ts(t), _ts(t + timedelta(days=4))])
        if i == 2:
            t = datetime(2150, 1, 7, 12)
            icu.append([s, 20000020, 30000000, "MICU", "MICU", _ts(t), _ts(t + timedelta(days=1))])
    return {
        "hosp/patients": (["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"], pats),
        "hosp/admissions": (["subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
                             "discharge_location"], adms),
        "hosp/diagnoses_icd": (["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"], dx),
        "hosp/labevents": (["labevent_id", "subject_id", "hadm_id", "itemid", "charttime", "value", "valuenum",
                            "valueuom"], labs),
        "hosp/prescriptions": (["subject_id", "hadm_id", "starttime", "drug"], rx),
        "hosp/transfers": (["subject_id", "hadm_id", "transfer_id", "eventtype", "careunit", "intime", "outtime"], tr),
        "icu/icustays": (["subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime", "outtime"],
                         icu),
    }


@pytest.fixture(scope="module")
def mimic_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic") / "base"
    for table, (header, rows) in mimic_tables().items():
        _write_gz(root / f"{table}.csv.gz", header, rows)
    return root


def _read_table(root: Path, table: str) -> list[dict]:
    gz, plain = root / f"{table}.csv.gz", root / f"{table}.csv"
    if not gz.exists() and not plain.exists():
        return []
    with (gzip.open(gz, "rt", newline="") if gz.exists() else open(plain, newline="")) as f:
        return list(csv.DictReader(f))


def _time(text: str | None) -> datetime | None:
    text = (text or "").strip().replace("T", " ")
    return datetime.fromisoformat(text) if text else None


def _unique(rows: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        key = tuple(sorted(r.items()))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def mimic_expected(root: Path) -> list[tuple[str, str, float | None]]:
    """The timed events docs/datasets.md promises, derived from the CSVs with Python's csv module."""
    out = []
    adms = _unique(_read_table(root, "hosp/admissions"))
    valid = {}
    for a in adms:
        adm, dis = _time(a["admittime"]), _time(a["dischtime"])
        out.append((a["subject_id"], f"HOSPITAL_ADMISSION//{a['admission_type']}", None))
        if dis is not None and not (adm is not None and dis < adm):
            out.append((a["subject_id"], f"HOSPITAL_DISCHARGE//{a['discharge_location']}", None))
            valid[a["hadm_id"]] = dis
    for p in _unique(_read_table(root, "hosp/patients")):
        if p["dod"].strip():
            out.append((p["subject_id"], "MEDS_DEATH", None))
    out += [(d["subject_id"], f"DIAGNOSIS//ICD//{d['icd_version']}//{d['icd_code']}", None)
            for d in _read_table(root, "hosp/diagnoses_icd") if d["hadm_id"] in valid]
    out += [(r["subject_id"], f"LAB//{r['itemid']}//{r['valueuom']}", _number(r["valuenum"]))
            for r in _read_table(root, "hosp/labevents") if r["charttime"].strip()]
    out += [(r["subject_id"], f"MEDICATION//{r['drug']}", None) for r in _read_table(root, "hosp/prescriptions")]
    out += [(r["subject_id"], f"TRANSFER_TO//{r['eventtype']}//{r['careunit']}", None)
            for r in _read_table(root, "hosp/transfers")]
    for r in _read_table(root, "icu/icustays"):
        out += [(r["subject_id"], f"ICU_ADMISSION//{r['first_careunit']}", None),
                (r["subject_id"], f"ICU_DISCHARGE//{r['last_careunit']}", None)]
    return out


def _edit_gz(path: Path, fn) -> None:
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    rows = fn(rows)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    with gzip.open(path, "wt", newline="") as f:
        f.write(out.getvalue())


def _gunzip(path: Path) -> None:
    with gzip.open(path, "rb") as f:
        path.with_suffix("").write_bytes(f.read())
    path.unlink()


def _cell(rows: list[list], row: int, col: str, value) -> list[list]:
    rows[row][rows[0].index(col)] = value
    return rows


def mimic_cases(base: Path, where: Path, rng: random.Random) -> list[Case]:
    case = Cases(base, where, lambda root, r: same_events(r, mimic_expected(root), MIMIC_STATIC), BIG)
    adm, labs = "hosp/admissions.csv.gz", "hosp/labevents.csv.gz"

    row = rng.randrange(1, 6)  # the admission (data row) the mutations hit
    case("baseline", "correct")
    case("labevents as a plain CSV", "correct", edit=lambda r: _gunzip(r / labs))
    case("labevents as both .csv and .csv.gz", "refuse", "labevents.csv",
         edit=lambda r: (r / "hosp/labevents.csv").write_bytes(gzip.decompress((r / labs).read_bytes())))
    case("ISO 8601 times with a T", "correct",
         edit=lambda r: _edit_gz(r / adm, lambda rows: [rows[0], *[[c.replace(" ", "T", 1) if c[:2] == "21" else c
                                                                    for c in x] for x in rows[1:]]]))
    case("an admission row duplicated exactly", "correct", note="exact duplicate rows removed",
         edit=lambda r: _edit_gz(r / adm, lambda rows: [*rows, rows[row]]))
    case("two different rows with one hadm_id", "refuse", "admissions.csv.gz",
         edit=lambda r: _edit_gz(r / adm, lambda rows: [*rows, _cell([list(x) for x in rows], row, "admission_type",
                                                                      "URGENT")[row]]))
    case("discharged before admitted", "correct", note="discharged before admitted",
         edit=lambda r: _edit_gz(r / adm, lambda rows: _cell(rows, row, "dischtime", "2149-01-01 00:00:00")))
    case("one lab value +inf", "correct", note="non-finite",
         edit=lambda r: _edit_gz(r / labs, lambda rows: _cell(rows, 1 + rng.randrange(3), "valuenum", "inf")))
    case("a time that is not a time", "refuse", "admissions.csv.gz",
         edit=lambda r: _edit_gz(r / adm, lambda rows: _cell(rows, row, "admittime", "yesterday")))
    case("an empty lab time", "correct", note="no event time",
         edit=lambda r: _edit_gz(r / labs, lambda rows: _cell(rows, 2, "charttime", "")))
    case("gzip corrupted", "refuse", "labevents.csv.gz", edit=lambda r: flip_bytes(r / labs, rng, 6, head=20))
    case("gzip cut short", "refuse", "labevents.csv.gz", edit=lambda r: _cut(r / labs, 0.6))
    case("subject ids with leading zeros", "refuse", "patients.csv.gz",
         edit=lambda r: _edit_gz(r / "hosp/patients.csv.gz", lambda rows: _cell(rows, 1, "subject_id", f"0{SUBJECTS[0]}")))
    case("a column missing", "refuse", "transfers.csv.gz",
         edit=lambda r: _edit_gz(r / "hosp/transfers.csv.gz", lambda rows: [x[:-3] + x[-2:] for x in rows]))
    case("prescriptions table absent", "correct", edit=lambda r: (r / "hosp/prescriptions.csv.gz").unlink())
    case("rows reordered", "correct",
         edit=lambda r: _edit_gz(r / labs, lambda rows: [rows[0], *rng.sample(rows[1:], len(rows) - 1)]))
    return case.cases


def test_mimic_mutations(mimic_base, tmp_path):
    cwd = outside(tmp_path)
    outcomes = run_cases("mimic-iv", mimic_cases(mimic_base, cwd, random.Random(29)), cwd)
    assert outcomes["ISO 8601 times with a T"] == "correct" and outcomes["gzip corrupted"] == "refused"
