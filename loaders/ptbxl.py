"""PTB-XL (PhysioNet ``ptb-xl``): 12-lead 10 s ECGs at 100 or 500 Hz with SCP-ECG statements.

The database table ``ptbxl_database.csv`` has one row per ECG (ecg_id, patient_id, age, sex,
recording_date, scp_codes as a dict string ``{'NORM': 100.0, 'SR': 0.0}``, strat_fold,
filename_lr / filename_hr). ``scp_statements.csv`` maps each diagnostic statement to one of
five superclasses (NORM, MI, STTC, CD, HYP) and a subclass. The loader turns these into
multi-label 0/1 columns and a split column following the dataset's recommendation
(strat_fold 1-8 train, 9 val, 10 test).
"""
from __future__ import annotations

import ast
from datetime import datetime
from functools import partial
from pathlib import Path

import polars as pl

from .cache import ON_ERROR, WaveformCache, build_cache, fingerprint_files, read_all, open_fresh_cache
from .recording import LoaderError, Recording
from .wfdb_dir import check_same_channels, read_wfdb

__all__ = ["load_ptbxl", "ptbxl_labels", "SUPERCLASSES", "PTBXL_LEADS", "ptbxl_split"]

SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
PTBXL_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def ptbxl_split(strat_fold: int) -> str:
    """The recommended split: folds 1-8 train, 9 val, 10 test."""
    return "test" if strat_fold == 10 else "val" if strat_fold == 9 else "train"


def _read_csv(path: Path, **kw) -> pl.DataFrame:
    if not path.exists():
        raise LoaderError(path, "file not found")
    try:
        return pl.read_csv(path, infer_schema_length=None, **kw)
    except Exception as err:
        raise LoaderError(path, f"cannot read csv: {err}") from err


def ptbxl_labels(root: str | Path, min_likelihood: float = 0.0) -> pl.DataFrame:
    """One row per ECG of ``ptbxl_database.csv`` with its labels.

    Columns: ecg_id, patient_id (string, as in the csv without the trailing ``.0``), age, sex
    (the csv's coding: 0 male, 1 female), recording_date, strat_fold, split, scp_codes (the
    original string), filename_lr, filename_hr, one 0/1 column per superclass and one
    ``sub_<subclass>`` column per diagnostic subclass of ``scp_statements.csv``. A statement
    counts when its likelihood in scp_codes is at least ``min_likelihood`` (0 keeps every
    listed statement, as the dataset's own example does).
    """
    root = Path(root)
    db_path, scp_path = root / "ptbxl_database.csv", root / "scp_statements.csv"
    db = _read_csv(db_path)
    scp = _read_csv(scp_path)
    need = ["ecg_id", "patient_id", "age", "sex", "scp_codes", "strat_fold", "filename_lr", "filename_hr"]
    missing = [c for c in need if c not in db.columns]
    if missing:
        raise LoaderError(db_path, f"missing column(s) {missing}")
    code_col = scp.columns[0]
    for c in ("diagnostic", "diagnostic_class", "diagnostic_subclass"):
        if c not in scp.columns:
            raise LoaderError(scp_path, f"missing column {c!r}")
    diag = scp.filter(pl.col("diagnostic") == 1)
    to_class = dict(zip(diag[code_col], diag["diagnostic_class"]))
    to_sub = dict(zip(diag[code_col], diag["diagnostic_subclass"]))
    subclasses = sorted(set(to_sub.values()))
    rows = []
    for ecg_id, codes_text in zip(db["ecg_id"], db["scp_codes"]):
        try:
            codes = ast.literal_eval(codes_text)
            if not isinstance(codes, dict):
                raise ValueError("not a dict")
        except (ValueError, SyntaxError) as err:
            raise LoaderError(db_path, f"ecg_id {ecg_id}: scp_codes {codes_text!r} is not a dict string ({err})") from None
        kept = [c for c, lik in codes.items() if float(lik) >= min_likelihood]
        supers = {to_class[c] for c in kept if c in to_class}
        subs = {to_sub[c] for c in kept if c in to_sub}
        rows.append({**{s: int(s in supers) for s in SUPERCLASSES}, **{f"sub_{s}": int(s in subs) for s in subclasses}})
    labels = pl.DataFrame(rows, schema={**{s: pl.Int8 for s in SUPERCLASSES}, **{f"sub_{s}": pl.Int8 for s in subclasses}})
    if db["patient_id"].null_count():
        bad = db.filter(pl.col("patient_id").is_null())["ecg_id"].to_list()[:5]
        raise LoaderError(db_path, f"empty patient_id for ecg_id(s) {bad}")
    base = db.select(
        pl.col("ecg_id").cast(pl.Int64),
        pl.col("patient_id").cast(pl.Float64).cast(pl.Int64).cast(pl.Utf8),
        pl.col("age").cast(pl.Float64),
        pl.col("sex").cast(pl.Int64),
        pl.col("recording_date").str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False)
        if "recording_date" in db.columns else pl.lit(None, dtype=pl.Datetime).alias("recording_date"),
        pl.col("strat_fold").cast(pl.Int64),
        pl.col("strat_fold").cast(pl.Int64).map_elements(ptbxl_split, return_dtype=pl.Utf8).alias("split"),
        pl.col("scp_codes"),
        pl.col("filename_lr"),
        pl.col("filename_hr"),
    )
    return pl.concat([base, labels], how="horizontal")


def _read_ptbxl_row(root: Path, channels, item) -> Recording:
    path, patient_id, record_id, visit_time, labels = item
    return read_wfdb(root / path, channels=channels, patient_id=patient_id, record_id=record_id,
                     labels=labels, start_time=visit_time)


def load_ptbxl(root: str | Path, rate: int = 100, cache_dir: str | Path | None = None, *, on_error: str = "raise",
               channels=PTBXL_LEADS, min_likelihood: float = 0.0, progress: bool = True,
               workers: int = 0) -> WaveformCache:
    """Load PTB-XL at ``rate`` (100 or 500 Hz) into a :class:`WaveformCache`.

    Index: patient_id, record_id (= ecg_id), visit_time (= recording_date), then label columns
    ecg_id, age, sex, strat_fold, split, scp_codes, NORM/MI/STTC/CD/HYP and ``sub_*`` (see
    :func:`ptbxl_labels`). Leads come out as ``channels`` (default I..V6, ``AVR`` normalised to
    ``aVR``), in mV.

    Every row of the database table must have its record files. By default the first row whose
    ``.hea``/``.dat`` is missing raises a :class:`LoaderError` naming the file (and how many
    more are missing); ``on_error="skip"`` leaves such rows, and unreadable records, out and
    lists each ``{"path", "problem"}`` in ``cache.report["skipped"]``. The cache (default
    ``<root>/.tscl_cache/ptbxl_<rate>``) is rebuilt only when a source file changes.
    """
    root = Path(root)
    if rate not in (100, 500):
        raise ValueError(f"rate must be 100 or 500, got {rate}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    table = ptbxl_labels(root, min_likelihood=min_likelihood)
    file_col = "filename_lr" if rate == 100 else "filename_hr"
    skipped, present, sources = [], [], [root / "ptbxl_database.csv", root / "scp_statements.csv"]
    for i, name in enumerate(table[file_col].to_list()):
        files = [root / f"{name}.hea", root / f"{name}.dat"]
        lost = [f for f in files if not f.exists()]
        if lost:
            skipped.append({"path": str(lost[0]), "problem": f"ecg_id {table['ecg_id'][i]}: listed in "
                                                            f"ptbxl_database.csv ({file_col}) but not found"})
        else:
            present.append(i)
            sources.extend(files)
    if skipped and on_error == "raise":
        raise LoaderError(skipped[0]["path"], f"{skipped[0]['problem']}; {len(skipped)} of {table.height} rows "
                                              "reference missing files (pass on_error='skip' to leave them out)")
    cache_dir = Path(cache_dir) if cache_dir is not None else root / ".tscl_cache" / f"ptbxl_{rate}"
    fp = fingerprint_files(sources, extra=f"ptbxl;rate={rate};channels={channels};on_error={on_error};"
                                          f"min_likelihood={min_likelihood}")
    cache = open_fresh_cache(cache_dir, fp)
    if cache is not None:
        return cache
    rows = table[present]
    label_cols = [c for c in rows.columns if c not in ("patient_id", "recording_date", "filename_lr", "filename_hr")]
    items = [(r[file_col], r["patient_id"], str(r["ecg_id"]), r["recording_date"], {c: r[c] for c in label_cols})
             for r in rows.iter_rows(named=True)]
    report = {"skipped": skipped, "rows_in_table": table.height}
    recs = read_all(partial(_read_ptbxl_row, root, channels), items, workers=workers, progress=progress,
                    desc=f"reading PTB-XL {rate} Hz", on_error=on_error, skipped=skipped)
    return build_cache(check_same_channels(recs, channels, on_error, skipped), cache_dir, fingerprint=fp, report=report)
