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

Missing text parts become ``UNK``. A source row whose event time is null cannot become a timed
event; it is counted in the report (``dropped_null_time``), never silently lost. A table absent
from the folder is listed in ``report["missing_tables"]`` with a warning.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import polars as pl

from .recording import LoaderError

__all__ = ["mimic_iv_to_meds", "MIMIC_TABLES"]

MIMIC_TABLES = ("hosp/patients", "hosp/admissions", "hosp/diagnoses_icd", "hosp/labevents", "hosp/prescriptions",
                "icu/icustays", "hosp/transfers", "icu/chartevents")
_EVENT_SCHEMA = {"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.Utf8, "numeric_value": pl.Float32,
                 "text_value": pl.Utf8}


def _part(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Utf8).fill_null("UNK").str.strip_chars().replace("", "UNK")


def _ts(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Utf8).str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False).cast(pl.Datetime("us"))


def _events(frame: pl.LazyFrame, code: pl.Expr, time: pl.Expr | None, value: pl.Expr | None = None,
            text: pl.Expr | None = None) -> pl.LazyFrame:
    return frame.select(
        pl.col("subject_id").cast(pl.Int64),
        (time if time is not None else pl.lit(None)).cast(pl.Datetime("us")).alias("time"),
        code.alias("code"),
        (value if value is not None else pl.lit(None)).cast(pl.Float32).alias("numeric_value"),
        (text if text is not None else pl.lit(None)).cast(pl.Utf8).alias("text_value"))


def _read(path: Path, columns: list[str]) -> pl.LazyFrame:
    try:
        lf = pl.scan_csv(path, infer_schema_length=0)  # every column as text; cast explicitly below
        names = lf.collect_schema().names()
    except Exception as err:
        raise LoaderError(path, f"cannot read csv: {err}") from err
    missing = [c for c in columns if c not in names]
    if missing:
        raise LoaderError(path, f"missing column(s) {missing}")
    return lf.select(columns)


def _check_subject_ids(path: Path, lf: pl.LazyFrame) -> None:
    """MEDS subject ids are Int64; refuse source ids that would not survive the cast unchanged
    (``007`` and ``7`` would become one subject, ``7.0`` or ``p7`` would fail deep inside polars)."""
    ids = lf.select(pl.col("subject_id").unique()).collect()["subject_id"]
    as_int = ids.cast(pl.Int64, strict=False)
    bad = ids.filter(ids.is_not_null() & (as_int.cast(pl.Utf8) != ids).fill_null(True))
    if bad.len():
        raise LoaderError(path, f"{bad.len()} subject_id value(s) are not plain integers and would be changed or "
                                f"merged by the Int64 MEDS subject_id, e.g. {sorted(bad.to_list())[:5]}")
    if ids.null_count():
        raise LoaderError(path, "empty subject_id value(s)")


def _convert(name: str, lf: pl.LazyFrame, admissions: pl.LazyFrame | None, path: Path) -> list[pl.LazyFrame]:
    if name == "patients":
        birth = pl.datetime(pl.col("anchor_year").cast(pl.Int32) - pl.col("anchor_age").cast(pl.Int32), 1, 1)
        return [_events(lf, pl.lit("MEDS_BIRTH"), birth),
                _events(lf, pl.lit("GENDER//") + _part("gender"), None),
                _events(lf.filter(pl.col("dod").is_not_null()), pl.lit("MEDS_DEATH"),
                        pl.col("dod").str.to_datetime("%Y-%m-%d", strict=False))]
    if name == "admissions":
        return [_events(lf, pl.lit("HOSPITAL_ADMISSION//") + _part("admission_type"), _ts("admittime")),
                _events(lf, pl.lit("HOSPITAL_DISCHARGE//") + _part("discharge_location"), _ts("dischtime"))]
    if name == "diagnoses_icd":
        if admissions is None:
            raise LoaderError(path, "diagnoses need admissions.csv.gz for their time (discharge time)")
        joined = lf.join(admissions.select("hadm_id", "dischtime"), on="hadm_id", how="left")
        code = pl.lit("DIAGNOSIS//ICD//") + _part("icd_version") + pl.lit("//") + _part("icd_code")
        return [_events(joined, code, _ts("dischtime"))]
    if name in ("labevents", "chartevents"):
        code = pl.lit("LAB//") + _part("itemid") + pl.lit("//") + _part("valueuom")
        return [_events(lf, code, _ts("charttime"), pl.col("valuenum").cast(pl.Float64, strict=False),
                        pl.col("value"))]
    if name == "prescriptions":
        return [_events(lf, pl.lit("MEDICATION//") + _part("drug"), _ts("starttime"))]
    if name == "icustays":
        return [_events(lf, pl.lit("ICU_ADMISSION//") + _part("first_careunit"), _ts("intime")),
                _events(lf, pl.lit("ICU_DISCHARGE//") + _part("last_careunit"), _ts("outtime"))]
    if name == "transfers":
        code = pl.lit("TRANSFER_TO//") + _part("eventtype") + pl.lit("//") + _part("careunit")
        return [_events(lf, code, _ts("intime"))]
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


def mimic_iv_to_meds(mimic_root: str | Path, out_dir: str | Path, *, tables=MIMIC_TABLES,
                     split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict:
    """Convert a MIMIC-IV folder (``hosp/``, ``icu/``) to a MEDS folder at ``out_dir``.

    Writes ``data/<split>/0.parquet`` (sorted by subject_id, then time with static rows first),
    ``metadata/codes.parquet`` (code, count, description where MIMIC has one),
    ``metadata/subject_splits.parquet`` (a subject's split is a hash of its id) and
    ``metadata/dataset.json``. Returns the report, also written to ``metadata/conversion_report.json``:
    per table ``source_rows``, ``events`` and ``dropped_null_time``; ``missing_tables``.
    """
    mimic_root, out_dir = Path(mimic_root), Path(out_dir)
    if not (mimic_root / "hosp").is_dir():
        raise LoaderError(mimic_root, "not a MIMIC-IV folder (no hosp/)")
    report: dict = {"tables": {}, "missing_tables": []}
    adm_path = mimic_root / "hosp" / "admissions.csv.gz"
    admissions = _read(adm_path, _COLUMNS["admissions"]) if adm_path.exists() else None
    parts = []
    for table in tables:
        name = table.split("/")[-1]
        path = mimic_root / f"{table}.csv.gz"
        if not path.exists():
            report["missing_tables"].append(table)
            warnings.warn(f"{path}: table not found; its events are left out of the MEDS output", stacklevel=2)
            continue
        lf = _read(path, _COLUMNS[name])
        _check_subject_ids(path, lf)
        source_rows = lf.select(pl.len()).collect().item()
        events = [e.collect() for e in _convert(name, lf, admissions, path)]
        dropped = 0
        kept = []
        for i, e in enumerate(events):
            static = name == "patients" and i == 1  # GENDER rows are static by design
            if not static:
                dropped += e["time"].null_count()
                e = e.filter(pl.col("time").is_not_null())
            kept.append(e)
        n_events = sum(e.height for e in kept)
        report["tables"][table] = {"source_rows": source_rows, "events": n_events, "dropped_null_time": dropped}
        parts.extend(kept)
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
    labs = mimic_root / "hosp" / "d_labitems.csv.gz"
    if labs.exists():
        d = pl.read_csv(labs, infer_schema_length=0).select("itemid", pl.col("label").alias("description"))
        codes = (codes.with_columns(pl.col("code").str.extract(r"^LAB//(\d+)//", 1).alias("itemid"))
                 .join(d, on="itemid", how="left").drop("itemid"))
    else:
        codes = codes.with_columns(pl.lit(None, dtype=pl.Utf8).alias("description"))
    codes.write_parquet(meta / "codes.parquet")
    (meta / "dataset.json").write_text(json.dumps({"dataset_name": "MIMIC-IV", "dataset_version": mimic_root.name,
                                                   "etl_name": "tscl.loaders.mimic_meds", "etl_version": "0.1.0",
                                                   "meds_version": "0.3.3"}, indent=1))
    report["subjects"] = splits.height
    report["events"] = events.height
    (meta / "conversion_report.json").write_text(json.dumps(report, indent=1))
    return report
