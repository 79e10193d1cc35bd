"""MIMIC-IV (hosp/icu ``*.csv.gz``) -> MEDS folder, with polars.

Events written (one row per source row, except where noted):

========================  ===================================================  ==================
table                     code                                                 time
========================  ===================================================  ==================
patients                  ``MEDS_BIRTH`` (Jan 1 of anchor_year - anchor_age),  birth / null /
                          ``GENDER//F|M`` (static), ``MEDS_DEATH`` (if dod)    dod
admissions                ``HOSPITAL_ADMISSION//<admission_type>``,            admittime,
                          ``HOSPITAL_DISCHARGE//<discharge_location>``         dischtime
diagnoses_icd             ``DIAGNOSIS//ICD//<version>//<code>``                the admission's dischtime
labevents                 ``LAB//<itemid>//<valueuom>`` (numeric_value =       charttime
                          valuenum, text_value = value)
prescriptions             ``MEDICATION//<drug>``                               starttime
icustays                  ``ICU_ADMISSION//<first_careunit>``,                 intime, outtime
                          ``ICU_DISCHARGE//<last_careunit>``
transfers                 ``TRANSFER_TO//<eventtype>//<careunit>``             intime
chartevents               ``LAB//<itemid>//<valueuom>`` (numeric_value)        charttime
========================  ===================================================  ==================

Missing text parts become ``UNK``. Nothing is dropped or changed without a count in the report
(``metadata/conversion_report.json``; the ``mimic-iv`` source carries it in ``dataset.notes`` and
says it on the terminal):

- each table is ``<table>.csv.gz`` or a plain ``<table>.csv`` (both present is refused, naming both);
  a table absent from the folder is listed in ``report["missing_tables"]`` with a warning;
- times are read as ``YYYY-MM-DD HH:MM:SS`` or ISO 8601 (``2180-05-06T22:23:00``, fractional
  seconds allowed); a time that is neither is refused naming the file, line, column and value. A
  source row whose event time is empty cannot become a timed event; it is counted per table
  (``dropped_null_time``);
- ``patients`` must have one row per subject_id and ``admissions`` one per hadm_id: exact duplicate
  rows are removed and counted (``duplicate_rows``), two different rows with one id are refused
  naming both lines;
- an admission whose dischtime is before its admittime keeps its admission event; its discharge
  event and its diagnoses (timed at discharge) are left out and counted
  (``discharge_before_admission``: count and hadm_ids);
- a numeric value that is not finite (``inf``, ``nan``) is read as "no value" for that event only,
  and counted (``non_finite_values``);
- a file that cannot be read (a corrupt gzip, a cut file) is refused naming it.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import polars as pl

from .recording import LoaderError

__all__ = ["mimic_iv_to_meds", "MIMIC_TABLES", "table_path"]

MIMIC_TABLES = ("hosp/patients", "hosp/admissions", "hosp/diagnoses_icd", "hosp/labevents", "hosp/prescriptions",
                "icu/icustays", "hosp/transfers", "icu/chartevents")
_EVENT_SCHEMA = {"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.Utf8, "numeric_value": pl.Float32,
                 "text_value": pl.Utf8}
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d")


def _part(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Utf8).fill_null("UNK").str.strip_chars().replace("", "UNK")


def _ts(col: str) -> pl.Expr:
    """A MIMIC time column: ``YYYY-MM-DD HH:MM:SS`` or ISO 8601 with a ``T`` (fractional seconds allowed); null
    when empty or not a time (:func:`_check_times` refuses the latter before any event is made)."""
    text = pl.col(col).cast(pl.Utf8).str.strip_chars().str.replace("T", " ", literal=True)
    return pl.coalesce([text.str.to_datetime(f, strict=False, time_unit="us") for f in _TIME_FORMATS])


def _check_times(path: Path, frame: pl.DataFrame, columns: list[str]) -> None:
    """Refuse a non-empty time that :func:`_ts` cannot read, naming the line, the column and the value."""
    for col in columns:
        text = pl.col(col).cast(pl.Utf8).str.strip_chars()
        bad = frame.filter(text.is_not_null() & (text != "") & _ts(col).is_null())
        if bad.height:
            row = bad.row(0, named=True)
            raise LoaderError(path, f"line {row['_line']}: {col} {row[col]!r} is not a date-time (YYYY-MM-DD HH:MM:SS "
                                    f"or ISO 8601); {bad.height} such value(s)")


def _events(frame: pl.DataFrame, code: pl.Expr, time: pl.Expr | None, value: pl.Expr | None = None,
            text: pl.Expr | None = None) -> pl.DataFrame:
    return frame.select(
        pl.col("subject_id").cast(pl.Int64),
        (time if time is not None else pl.lit(None)).cast(pl.Datetime("us")).alias("time"),
        code.alias("code"),
        (value if value is not None else pl.lit(None)).cast(pl.Float32).alias("numeric_value"),
        (text if text is not None else pl.lit(None)).cast(pl.Utf8).alias("text_value"))


def table_path(root: Path, table: str) -> Path | None:
    """``root/<table>.csv.gz``, or a plain ``<table>.csv``; None when neither exists; both is refused naming both."""
    gz, plain = Path(root) / f"{table}.csv.gz", Path(root) / f"{table}.csv"
    if gz.exists() and plain.exists():
        raise LoaderError(plain, f"and {gz.name} are both here; which one holds the table is ambiguous: keep one")
    return gz if gz.exists() else plain if plain.exists() else None


def _read(path: Path, columns: list[str]) -> pl.DataFrame:
    """The ``columns`` of a table, every value as text, with ``_line`` (the file's line number of each row)."""
    try:
        names = pl.read_csv(path, infer_schema_length=0, n_rows=1).columns
        missing = [c for c in columns if c not in names]
        frame = None if missing else pl.read_csv(path, infer_schema_length=0, columns=columns)
    except Exception as err:  # a corrupt gzip, a cut file, a ragged line
        raise LoaderError(path, f"cannot read csv: {type(err).__name__}: {err}") from err
    if missing:
        raise LoaderError(path, f"missing column(s) {missing}")
    return frame.select(columns).with_row_index("_line", offset=2)


def _one_row_per(path: Path, frame: pl.DataFrame, key: str, report: dict, table: str) -> pl.DataFrame:
    """Rows of ``frame`` with one per ``key``: exact duplicates removed (counted in ``report["duplicate_rows"]``),
    two different rows with one key refused naming both lines."""
    cols = [c for c in frame.columns if c != "_line"]
    unique = frame.unique(subset=cols, keep="first", maintain_order=True)
    if unique.height != frame.height:
        report.setdefault("duplicate_rows", {})[table] = frame.height - unique.height
    clash = unique.filter(pl.col(key).is_duplicated()).sort(key, "_line")
    if clash.height:
        a, b = clash.row(0, named=True), clash.row(1, named=True)
        differ = [c for c in cols if a[c] != b[c]]
        raise LoaderError(path, f"{key} {a[key]} has two different rows (lines {a['_line']} and {b['_line']}; they "
                                f"differ in {differ})")
    return unique


def _values(frame: pl.DataFrame, report: dict, table: str) -> pl.Expr:
    """``valuenum`` as a number; a non-finite one (``inf``, ``nan``) is "no value" for that event, counted."""
    value = pl.col("valuenum").cast(pl.Float64, strict=False)
    n = frame.select((value.is_not_null() & ~value.is_finite()).sum()).item()
    if n:
        report.setdefault("non_finite_values", {})[table] = int(n)
    return pl.when(value.is_finite()).then(value).otherwise(None)


def _check_subject_ids(path: Path, frame: pl.DataFrame) -> None:
    """MEDS subject ids are Int64; refuse source ids that would not survive the cast unchanged
    (``007`` and ``7`` would become one subject, ``7.0`` or ``p7`` would fail deep inside polars)."""
    ids = frame["subject_id"].unique()
    as_int = ids.cast(pl.Int64, strict=False)
    bad = ids.filter(ids.is_not_null() & (as_int.cast(pl.Utf8) != ids).fill_null(True))
    if bad.len():
        raise LoaderError(path, f"{bad.len()} subject_id value(s) are not plain integers and would be changed or "
                                f"merged by the Int64 MEDS subject_id, e.g. {sorted(bad.to_list())[:5]}")
    if ids.null_count():
        line = frame.filter(pl.col("subject_id").is_null())["_line"][0]
        raise LoaderError(path, f"line {line}: empty subject_id")


_TIMES = {"patients": [], "admissions": ["admittime", "dischtime"], "diagnoses_icd": [],
          "labevents": ["charttime"], "chartevents": ["charttime"], "prescriptions": ["starttime"],
          "icustays": ["intime", "outtime"], "transfers": ["intime"]}


def _admissions(path: Path, report: dict) -> pl.DataFrame:
    """admissions, one row per hadm_id, with ``_bad_discharge`` where dischtime is before admittime (counted)."""
    frame = _read(path, _COLUMNS["admissions"])
    _check_subject_ids(path, frame)
    _check_times(path, frame, _TIMES["admissions"])
    frame = _one_row_per(path, frame, "hadm_id", report, "hosp/admissions")
    frame = frame.with_columns((_ts("dischtime") < _ts("admittime")).fill_null(False).alias("_bad_discharge"))
    bad = frame.filter("_bad_discharge")
    if bad.height:
        report["discharge_before_admission"] = {"count": bad.height, "hadm_ids": bad["hadm_id"].head(20).to_list(),
                                                "left_out": "their discharge event and their diagnoses"}
    return frame


def _convert(name: str, frame: pl.DataFrame, admissions: pl.DataFrame | None, path: Path,
             report: dict, table: str) -> list[pl.DataFrame]:
    if name == "patients":
        birth = pl.datetime(pl.col("anchor_year").cast(pl.Int32) - pl.col("anchor_age").cast(pl.Int32), 1, 1)
        return [_events(frame, pl.lit("MEDS_BIRTH"), birth),
                _events(frame, pl.lit("GENDER//") + _part("gender"), None),
                _events(frame.filter(pl.col("dod").is_not_null() & (pl.col("dod").str.strip_chars() != "")),
                        pl.lit("MEDS_DEATH"), _ts("dod"))]
    if name == "admissions":
        return [_events(frame, pl.lit("HOSPITAL_ADMISSION//") + _part("admission_type"), _ts("admittime")),
                _events(frame.filter(~pl.col("_bad_discharge")),
                        pl.lit("HOSPITAL_DISCHARGE//") + _part("discharge_location"), _ts("dischtime"))]
    if name == "diagnoses_icd":
        if admissions is None:
            raise LoaderError(path, "diagnoses need the admissions table for their time (discharge time)")
        joined = frame.join(admissions.select("hadm_id", "dischtime", "_bad_discharge"), on="hadm_id", how="left")
        bad = joined["_bad_discharge"].fill_null(False)
        if bad.any():  # timed at a discharge that is before its admission: left out, counted
            report["discharge_before_admission"]["diagnoses_left_out"] = int(bad.sum())
            joined = joined.filter(~bad)
        code = pl.lit("DIAGNOSIS//ICD//") + _part("icd_version") + pl.lit("//") + _part("icd_code")
        return [_events(joined, code, _ts("dischtime"))]
    if name in ("labevents", "chartevents"):
        code = pl.lit("LAB//") + _part("itemid") + pl.lit("//") + _part("valueuom")
        return [_events(frame, code, _ts("charttime"), _values(frame, report, table), pl.col("value"))]
    if name == "prescriptions":
        return [_events(frame, pl.lit("MEDICATION//") + _part("drug"), _ts("starttime"))]
    if name == "icustays":
        return [_events(frame, pl.lit("ICU_ADMISSION//") + _part("first_careunit"), _ts("intime")),
                _events(frame, pl.lit("ICU_DISCHARGE//") + _part("last_careunit"), _ts("outtime"))]
    if name == "transfers":
        code = pl.lit("TRANSFER_TO//") + _part("eventtype") + pl.lit("//") + _part("careunit")
        return [_events(frame, code, _ts("intime"))]
    raise ValueError(name)


_COLUMNS = {
    "patients": ["subject_id", "gender", "anchor_age", "anchor_year", "dod"],
    "admissions": ["subject_id", "hadm_id", "admittime", "dischtime", "admission_type", "discharge_location"],
    "diagnoses_icd": ["subject_id", "hadm_id", "icd_code", "icd_version"],
    "labevents": ["subject_id", "itemid", "charttime", "value", "valuenum", "valueuom"],
    "chartevents": ["subject_id", "itemid", "charttime", "value", "valuenum", "valueuom"],
    "prescriptions": ["subject_id", "starttime", "drug"],
    "icustays": ["subject_id", "intime", "outtime", "first_careunit", "last_careunit"],
    "transfers": ["subject_id", "intime", "eventtype", "careunit"],
}


def _split_of(subject_id: int, fractions: tuple[float, float, float]) -> str:
    u = int(hashlib.sha256(str(subject_id).encode()).hexdigest()[:8], 16) / 16**8
    return "train" if u < fractions[0] else "tuning" if u < fractions[0] + fractions[1] else "held_out"


def _table_events(name: str, path: Path, admissions: pl.DataFrame | None, report: dict,
                  table: str) -> list[pl.DataFrame]:
    """One table's events, with its counts in ``report["tables"][table]``; rows without a time are dropped, counted."""
    if name == "admissions" and admissions is not None:
        frame = admissions
    else:
        frame = _read(path, _COLUMNS[name])
        _check_subject_ids(path, frame)
        _check_times(path, frame, _TIMES[name] + (["dod"] if name == "patients" else []))
        if name == "patients":
            frame = _one_row_per(path, frame, "subject_id", report, table)
    events = _convert(name, frame, admissions, path, report, table)
    dropped = 0
    kept = []
    for i, e in enumerate(events):
        static = name == "patients" and i == 1  # GENDER rows are static by design
        if not static:
            dropped += e["time"].null_count()
            e = e.filter(pl.col("time").is_not_null())
        kept.append(e)
    report["tables"][table] = {"source_rows": frame.height, "events": sum(e.height for e in kept),
                               "dropped_null_time": dropped}
    return kept


def mimic_iv_to_meds(mimic_root: str | Path, out_dir: str | Path, *, tables=MIMIC_TABLES,
                     split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict:
    """Convert a MIMIC-IV folder (``hosp/``, ``icu/``) to a MEDS folder at ``out_dir``.

    Writes ``data/<split>/0.parquet`` (sorted by subject_id, then time with static rows first),
    ``metadata/codes.parquet`` (code, count, description where MIMIC has one),
    ``metadata/subject_splits.parquet`` (a subject's split is a hash of its id) and
    ``metadata/dataset.json``. Returns the report, also written to ``metadata/conversion_report.json``:
    per table ``source_rows``, ``events`` and ``dropped_null_time``; ``missing_tables``; and, when they
    occur, ``duplicate_rows``, ``discharge_before_admission`` and ``non_finite_values`` (module docstring).
    """
    mimic_root, out_dir = Path(mimic_root), Path(out_dir)
    if not (mimic_root / "hosp").is_dir():
        raise LoaderError(mimic_root, "not a MIMIC-IV folder (no hosp/)")
    report: dict = {"tables": {}, "missing_tables": []}
    paths = {t: table_path(mimic_root, t) for t in (*tables, "hosp/admissions", "hosp/d_labitems")}
    adm_path = paths["hosp/admissions"]
    admissions = _admissions(adm_path, report) if adm_path is not None else None
    parts = []
    for table in tables:
        path = paths[table]
        if path is None:
            report["missing_tables"].append(table)
            warnings.warn(f"{mimic_root / table}.csv.gz: table not found; its events are left out of the MEDS output",
                          stacklevel=2)
            continue
        parts.extend(_table_events(table.split("/")[-1], path, admissions, report, table))
    if not parts:
        raise LoaderError(mimic_root, "no MIMIC-IV tables found")
    events = pl.concat(parts).sort(["subject_id", pl.col("time").is_not_null(), "time", "code"], nulls_last=False)
    subjects = events["subject_id"].unique().sort()
    splits = pl.DataFrame({"subject_id": subjects,
                           "split": [_split_of(s, split_fractions) for s in subjects.to_list()]})
    events = events.join(splits, on="subject_id", how="left", maintain_order="left")
    for split in ("train", "tuning", "held_out"):
        shard = events.filter(pl.col("split") == split).drop("split")
        if shard.height:
            (out_dir / "data" / split).mkdir(parents=True, exist_ok=True)
            shard.write_parquet(out_dir / "data" / split / "0.parquet")
    meta = out_dir / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    splits.write_parquet(meta / "subject_splits.parquet")
    codes = events.group_by("code").agg(pl.len().alias("count")).sort("code")
    labs = paths["hosp/d_labitems"]
    if labs is not None:
        d = _read(labs, ["itemid", "label"]).select("itemid", pl.col("label").alias("description"))
        codes = (codes.with_columns(pl.col("code").str.extract(r"^LAB//(\d+)//", 1).alias("itemid"))
                 .join(d, on="itemid", how="left").drop("itemid"))
    else:
        codes = codes.with_columns(pl.lit(None, dtype=pl.Utf8).alias("description"))
    codes.write_parquet(meta / "codes.parquet")
    (meta / "dataset.json").write_text(json.dumps({"dataset_name": "MIMIC-IV", "dataset_version": mimic_root.name,
                                                   "etl_name": "tscl.loaders.mimic_meds", "etl_version": "0.2.0",
                                                   "meds_version": "0.3.3"}, indent=1))
    report["subjects"] = splits.height
    report["events"] = events.height
    (meta / "conversion_report.json").write_text(json.dumps(report, indent=1))
    return report


def conversion_notes(report: dict) -> dict:
    """A conversion report as dataset notes: ``left_out`` counts (rows without a time, duplicate rows,
    discharges before admission, non-finite values) and the report's details."""
    left = {
        "MIMIC-IV rows with no event time (no event made)":
            sum(t.get("dropped_null_time", 0) for t in report.get("tables", {}).values()),
        "exact duplicate rows removed": sum((report.get("duplicate_rows") or {}).values()),
        "admissions discharged before admitted (discharge event and diagnoses left out)":
            (report.get("discharge_before_admission") or {}).get("count", 0),
        "non-finite numeric values read as no value": sum((report.get("non_finite_values") or {}).values()),
    }
    return {"conversion": report, "missing_tables": report.get("missing_tables", []),
            "left_out": {k: int(v) for k, v in left.items() if v}}
