"""PTB-XL (PhysioNet ``ptb-xl``): 12-lead 10 s ECGs at 100 or 500 Hz, labels from SCP-ECG statements.

Two label sources, as the data are published:

- PhysioNet's ``ptbxl_database.csv`` (one row per ECG: ecg_id, patient_id, age, sex,
  recording_date, scp_codes as a dict string ``{'NORM': 100.0, 'SR': 0.0}``, strat_fold,
  filename_lr / filename_hr) with ``scp_statements.csv`` (each statement's diagnostic class and
  subclass, and its form / rhythm flags);
- label tables ``labels/ptbxl_<task>_<part>.csv`` as MERL (Liu et al., ICML 2024) ships them
  (task ``super_class``, ``sub_class``, ``form``, ``rhythm``; part ``train`` / ``val`` / ``test``):
  ecg_id, patient_id (float text, ``15709.0``), strat_fold, filename_lr, filename_hr, the task's
  code list, then one 0/1 column per code, in an order that differs between files (read here by
  header name).

Either source alone is enough: a folder holding only ``records100/`` and ``labels/`` loads. With
both, an ECG listed in either is loaded; patient_id and strat_fold must agree where both list it.

Label columns of the cache index (see :func:`ptbxl_records`):

- task columns ``super:<class>``, ``sub:<subclass>``, ``form:<code>``, ``rhythm:<code>``, each with
  an indicator ``has:super`` / ``has:sub`` / ``has:form`` / ``has:rhythm`` (1 when the ECG has at
  least one code of the task and so belongs to that task's probe; 0 rows are left out of it, not
  counted as all-negative, and their task columns are null). From the label tables when the
  folder has them, else derived from scp_codes with scp_statements (diagnostic_class,
  diagnostic_subclass, form and rhythm flags) by the same rule.
- the superclasses ``NORM``, ``MI``, ``STTC``, ``CD``, ``HYP`` from every label source: the task
  columns ``super:<class>`` where the ECG has a superclass code in them (``has:super`` = 1; the
  tables where the folder has them), else the database row's scp_codes (an ECG of the database
  with no superclass code is 0 in each), null for an ECG no source labels;
- database columns: ``sub_<subclass>`` from scp_codes, ``age`` (years; null for PTB-XL's 300,
  which stands for any age above 89), ``sex`` (0 male, 1 female), ``female`` (0/1), scp_codes;
  null for an ECG without a database row (``in_database`` = 0).
- ecg_id, strat_fold, split (folds 1-8 train, 9 val, 10 test).

Ids are read as text from the first byte and converted deliberately: patient_id ``15709.0`` ->
``"15709"``; ecg_id must be an integer. A duplicated ecg_id in one table, or a strat_fold that is
not an integer 1-10, raises :class:`LoaderError` naming the file, line and value.
"""
from __future__ import annotations

import ast
import re
import warnings
from functools import partial
from pathlib import Path

import polars as pl

from .cache import ON_ERROR, WaveformCache, cached_load, read_all
from .filters import check_same_channels
from .recording import ECG_LEADS, LoaderError, Recording
from .wfdb_dir import read_wfdb

__all__ = ["load_ptbxl", "ptbxl_labels", "ptbxl_label_tables", "ptbxl_records", "SUPERCLASSES", "PTBXL_LEADS",
           "PTBXL_TASKS", "ptbxl_split", "task_columns"]

SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
AGE_OVER_89 = 300  # PTB-XL writes this age for every patient older than 89 (anonymisation): read as unknown
PTBXL_LEADS = ECG_LEADS
PTBXL_TASKS = ("super", "sub", "form", "rhythm")
_TABLE_TASK = {"super_class": "super", "sub_class": "sub"}  # MERL's file names -> column prefixes
_TABLE_NAME = re.compile(r"ptbxl_(?P<task>.+)_(?P<part>train|val|test)\.csv")
_BASE = ("ecg_id", "patient_id", "strat_fold", "filename_lr", "filename_hr")


def ptbxl_split(strat_fold: int) -> str:
    """The recommended split: folds 1-8 train, 9 val, 10 test."""
    return "test" if strat_fold == 10 else "val" if strat_fold == 9 else "train"


def task_columns(columns, task: str) -> list[str]:
    """The label columns of ``task`` (``super``, ``sub``, ``form``, ``rhythm``) among ``columns``."""
    return [c for c in columns if c.startswith(f"{task}:")]


def _read_csv(path: Path) -> pl.DataFrame:
    """Every column as text, as written (ids stay ids; numbers are converted deliberately later)."""
    if not path.exists():
        raise LoaderError(path, "file not found")
    try:
        return pl.read_csv(path, infer_schema=False)
    except Exception as err:
        raise LoaderError(path, f"cannot read csv: {err}") from err


def _id_text(path, line, col, value) -> str:
    """An id as text: ``"15709.0"`` -> ``"15709"`` (the csv's float spelling of an integer id)."""
    text = (value or "").strip()
    if not text:
        raise LoaderError(path, f"line {line}: empty {col}")
    m = re.fullmatch(r"(-?\d+)\.0*", text)
    return m.group(1) if m else text


def _int_values(path, df: pl.DataFrame, col: str, ids=None, lo=None, hi=None) -> list[int]:
    out = []
    for i, value in enumerate(df[col].to_list()):
        text = _id_text(path, i + 2, col, value)
        ok = re.fullmatch(r"-?\d+", text) is not None and (lo is None or lo <= int(text) <= hi)
        if not ok:
            where = f"line {i + 2}" + (f" (ecg_id {ids[i]})" if ids is not None else "")
            need = f"an integer {lo}-{hi}" if lo is not None else "an integer"
            raise LoaderError(path, f"{where}: {col} {value!r} is not {need}")
        out.append(int(text))
    return out


def _check_unique(path, ecg_ids: list[int]) -> None:
    seen: dict = {}
    for i, e in enumerate(ecg_ids):
        if e in seen:
            raise LoaderError(path, f"ecg_id {e} appears twice (lines {seen[e]} and {i + 2})")
        seen[e] = i + 2


def _base_columns(path, df: pl.DataFrame) -> dict:
    missing = [c for c in _BASE if c not in df.columns]
    if missing:
        raise LoaderError(path, f"missing column(s) {missing}")
    ecg = _int_values(path, df, "ecg_id")
    _check_unique(path, ecg)
    return {"ecg_id": ecg,
            "patient_id": [_id_text(path, i + 2, "patient_id", v) for i, v in enumerate(df["patient_id"])],
            "strat_fold": _int_values(path, df, "strat_fold", ids=ecg, lo=1, hi=10),
            "filename_lr": df["filename_lr"].to_list(), "filename_hr": df["filename_hr"].to_list()}


def _statement_maps(scp_path: Path) -> dict[str, dict[str, str]]:
    """task -> {SCP code: label} from ``scp_statements.csv``: super = diagnostic_class, sub =
    diagnostic_subclass (diagnostic statements), form / rhythm = the code itself (flagged statements)."""
    scp = _read_csv(scp_path)
    for c in ("diagnostic", "diagnostic_class", "diagnostic_subclass"):
        if c not in scp.columns:
            raise LoaderError(scp_path, f"missing column {c!r}")
    code = scp.columns[0]
    flag = lambda c: [(v or "").strip() in ("1", "1.0") for v in scp[c]] if c in scp.columns else [False] * scp.height  # noqa: E731
    diag, form, rhythm = flag("diagnostic"), flag("form"), flag("rhythm")
    codes = scp[code].to_list()
    return {"super": {c: k for c, k, d in zip(codes, scp["diagnostic_class"], diag) if d and k},
            "sub": {c: k for c, k, d in zip(codes, scp["diagnostic_subclass"], diag) if d and k},
            "form": {c: c for c, f in zip(codes, form) if f},
            "rhythm": {c: c for c, r in zip(codes, rhythm) if r}}


def ptbxl_labels(root: str | Path, min_likelihood: float = 0.0) -> pl.DataFrame:
    """One row per ECG of ``ptbxl_database.csv`` with the labels derived from its scp_codes.

    Columns: ecg_id, patient_id (text, without the csv's trailing ``.0``), age, sex (the csv's
    coding: 0 male, 1 female), recording_date, strat_fold, split, scp_codes (the original string),
    filename_lr, filename_hr, one 0/1 column per superclass and one ``sub_<subclass>`` column per
    diagnostic subclass, then the task columns ``<task>:<label>`` with ``has:<task>`` (see the
    module docstring). A statement counts when its likelihood in scp_codes is at least
    ``min_likelihood`` (0 keeps every listed statement, as the dataset's own example does).
    """
    root = Path(root)
    db_path, scp_path = root / "ptbxl_database.csv", root / "scp_statements.csv"
    db = _read_csv(db_path)
    need = ["ecg_id", "patient_id", "age", "sex", "scp_codes", "strat_fold", "filename_lr", "filename_hr"]
    missing = [c for c in need if c not in db.columns]
    if missing:
        raise LoaderError(db_path, f"missing column(s) {missing}")
    maps = _statement_maps(scp_path)
    base = _base_columns(db_path, db)
    subclasses = sorted(set(maps["sub"].values()))
    names = {t: sorted(set(m.values())) for t, m in maps.items()}
    rows = []
    for i, (ecg_id, codes_text) in enumerate(zip(base["ecg_id"], db["scp_codes"])):
        try:
            codes = ast.literal_eval(codes_text or "")
            if not isinstance(codes, dict):
                raise ValueError("not a dict")
        except (ValueError, SyntaxError) as err:
            raise LoaderError(db_path, f"ecg_id {ecg_id}: scp_codes {codes_text!r} is not a dict string ({err})") from None
        kept = [c for c, lik in codes.items() if float(lik) >= min_likelihood]
        got = {t: {m[c] for c in kept if c in m} for t, m in maps.items()}
        row = {**{s: int(s in got["super"]) for s in SUPERCLASSES}, **{f"sub_{s}": int(s in got["sub"]) for s in subclasses}}
        for t in PTBXL_TASKS:
            row[f"has:{t}"] = int(bool(got[t]))
            row.update({f"{t}:{n}": (int(n in got[t]) if got[t] else None) for n in names[t]})
        rows.append(row)
    schema = {**{s: pl.Int8 for s in SUPERCLASSES}, **{f"sub_{s}": pl.Int8 for s in subclasses}}
    for t in PTBXL_TASKS:
        schema.update({f"has:{t}": pl.Int8, **{f"{t}:{n}": pl.Int8 for n in names[t]}})
    labels = pl.DataFrame(rows, schema=schema)

    def number(col, dtype):
        out = []
        for i, v in enumerate(db[col].to_list()):
            try:
                out.append(None if v is None or not v.strip() else dtype(float(v)))
            except ValueError:
                raise LoaderError(db_path, f"line {i + 2} (ecg_id {base['ecg_id'][i]}): {col} {v!r} is not a number") from None
        return out

    frame = pl.DataFrame({
        "ecg_id": pl.Series(base["ecg_id"], dtype=pl.Int64),
        "patient_id": pl.Series(base["patient_id"], dtype=pl.Utf8),
        "age": pl.Series(number("age", float), dtype=pl.Float64),
        "sex": pl.Series(number("sex", int), dtype=pl.Int64),
        "recording_date": (db["recording_date"].str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False)
                           if "recording_date" in db.columns else pl.Series([None] * db.height, dtype=pl.Datetime)),
        "strat_fold": pl.Series(base["strat_fold"], dtype=pl.Int64),
        "split": pl.Series([ptbxl_split(f) for f in base["strat_fold"]], dtype=pl.Utf8),
        "scp_codes": db["scp_codes"],
        "filename_lr": pl.Series(base["filename_lr"], dtype=pl.Utf8),
        "filename_hr": pl.Series(base["filename_hr"], dtype=pl.Utf8),
    })
    return pl.concat([frame, labels], how="horizontal")


def _read_label_table(path: Path, task: str) -> pl.DataFrame:
    """One label table: base columns + ``<prefix>:<code>`` 0/1 columns, by header name."""
    df = _read_csv(path)
    base = _base_columns(path, df)
    codes = [c for c in df.columns if c not in _BASE and c != task]
    if not codes:
        raise LoaderError(path, f"no label columns besides {list(_BASE)}")
    prefix = _TABLE_TASK.get(task, task)
    cols = {}
    for c in codes:
        vals = []
        for i, v in enumerate(df[c].to_list()):
            text = (v or "").strip()
            if text not in ("0", "1", "0.0", "1.0"):
                raise LoaderError(path, f"line {i + 2} (ecg_id {base['ecg_id'][i]}): column {c!r} holds {v!r}, not 0/1")
            vals.append(int(float(text)))
        cols[f"{prefix}:{c}"] = pl.Series(vals, dtype=pl.Int8)
    out = pl.DataFrame({"ecg_id": pl.Series(base["ecg_id"], dtype=pl.Int64),
                        "patient_id": pl.Series(base["patient_id"], dtype=pl.Utf8),
                        "strat_fold": pl.Series(base["strat_fold"], dtype=pl.Int64),
                        "filename_lr": pl.Series(base["filename_lr"], dtype=pl.Utf8),
                        "filename_hr": pl.Series(base["filename_hr"], dtype=pl.Utf8), **cols})
    return out.with_columns(pl.lit(str(path)).alias("_source"), pl.lit(1, dtype=pl.Int8).alias(f"has:{prefix}"))


def _check_agree(a: pl.DataFrame, b: pl.DataFrame, what: str) -> None:
    """patient_id and strat_fold of ECGs listed in both frames must agree (``_source`` names the files)."""
    j = a.select("ecg_id", "patient_id", "strat_fold", "_source").join(
        b.select("ecg_id", "patient_id", "strat_fold", "_source"), on="ecg_id", suffix="_b")
    bad = j.filter((pl.col("patient_id") != pl.col("patient_id_b")) | (pl.col("strat_fold") != pl.col("strat_fold_b")))
    if bad.height:
        r = bad.row(0, named=True)
        raise LoaderError(r["_source"], f"ecg_id {r['ecg_id']}: patient_id {r['patient_id']!r} / strat_fold "
                                        f"{r['strat_fold']} here, but {r['patient_id_b']!r} / {r['strat_fold_b']} in "
                                        f"{r['_source_b']} ({what}; {bad.height} ECG(s) disagree)")


def _check_disjoint_parts(parts: list[pl.DataFrame]) -> None:
    """One ECG in two parts of a task (e.g. train and test) is a leak: raise naming both tables."""
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            both = a.join(b, on="ecg_id", how="semi")
            if both.height:
                raise LoaderError(a["_source"][0], f"ecg_id {both['ecg_id'][0]} is also listed in "
                                                   f"{b['_source'][0]} ({both.height} ECG(s) in both)")


def ptbxl_label_tables(root: str | Path) -> tuple[pl.DataFrame, list[Path]]:
    """The label tables under ``root/labels`` merged to one row per ECG, and the files read.

    Columns: ecg_id, patient_id, strat_fold, filename_lr, filename_hr, then per task ``has:<task>``
    (0 where the task's tables do not list the ECG) and ``<task>:<code>`` (null there). An ECG in
    two parts of one task, or in two tables with another patient_id or strat_fold, raises."""
    folder = Path(root) / "labels"
    files = sorted(p for p in folder.glob("ptbxl_*_*.csv") if _TABLE_NAME.fullmatch(p.name)) if folder.is_dir() else []
    if not files:
        raise LoaderError(folder, "no label tables ptbxl_<task>_{train,val,test}.csv found")
    by_task: dict[str, list[pl.DataFrame]] = {}
    for path in files:
        task = _TABLE_NAME.fullmatch(path.name)["task"]
        by_task.setdefault(task, []).append(_read_label_table(path, task))
    merged = None
    for task, parts in by_task.items():
        _check_disjoint_parts(parts)
        frame = pl.concat(parts, how="diagonal")
        if merged is None:
            merged = frame
            continue
        _check_agree(merged, frame, "label tables disagree")
        base = [c for c in _BASE if c != "ecg_id"]
        merged = merged.join(frame, on="ecg_id", how="full", coalesce=True, suffix="_new").with_columns(
            [pl.coalesce(c, f"{c}_new").alias(c) for c in [*base, "_source"]]).drop([f"{c}_new" for c in [*base, "_source"]])
    prefixes = [_TABLE_TASK.get(t, t) for t in by_task]
    merged = merged.with_columns([pl.col(f"has:{p}").fill_null(0) for p in prefixes]).sort("ecg_id")
    return merged, files


def _tables_present(root: Path) -> bool:
    folder = root / "labels"
    return folder.is_dir() and any(_TABLE_NAME.fullmatch(p.name) for p in folder.glob("ptbxl_*_*.csv"))


def ptbxl_records(root: str | Path, labels: str = "auto", min_likelihood: float = 0.0) -> tuple[pl.DataFrame, list[Path]]:
    """One row per ECG listed by the folder's label sources, and the source files read.

    ``labels``: ``"database"`` (ptbxl_database.csv + scp_statements.csv only), ``"tables"``
    (``labels/`` only) or ``"auto"`` (both where present: ECGs of either; task columns from the
    tables when there are tables, database columns from the database). Column ``in_database``
    says whether the ECG has a database row.
    """
    root = Path(root)
    if labels not in ("auto", "database", "tables"):
        raise ValueError(f"labels must be auto, database or tables, got {labels!r}")
    has_db, has_tables = (root / "ptbxl_database.csv").exists(), _tables_present(root)
    use_db = labels == "database" or (labels == "auto" and has_db)
    use_tables = labels == "tables" or (labels == "auto" and has_tables)
    if not (use_db or use_tables):
        raise LoaderError(root, "neither ptbxl_database.csv nor label tables labels/ptbxl_<task>_<part>.csv found")
    db = tables = None
    sources: list[Path] = []
    if use_db:
        db = ptbxl_labels(root, min_likelihood=min_likelihood).with_columns(
            pl.lit(str(root / "ptbxl_database.csv")).alias("_source"), pl.lit(1, dtype=pl.Int8).alias("in_database"))
        sources += [root / "ptbxl_database.csv", root / "scp_statements.csv"]
    if use_tables:
        tables, files = ptbxl_label_tables(root)
        sources += files
    if db is not None and tables is not None:
        _check_agree(db, tables, "database and label tables disagree")
        task_cols = [c for c in db.columns if c.split(":")[0] in ("has", *PTBXL_TASKS)]
        db = db.drop(task_cols)  # the tables' task columns rule where the folder has tables
        base = [c for c in _BASE if c != "ecg_id"]
        table = db.join(tables, on="ecg_id", how="full", coalesce=True, suffix="_t").with_columns(
            [pl.coalesce(c, f"{c}_t").alias(c) for c in [*base, "_source"]]).drop([f"{c}_t" for c in [*base, "_source"]])
    elif db is not None:
        table = db
    else:
        table = tables
    if "in_database" not in table.columns:
        table = table.with_columns(pl.lit(0, dtype=pl.Int8).alias("in_database"))
    for c in ("age", "sex", "scp_codes", "recording_date", *SUPERCLASSES):
        if c not in table.columns:
            dtype = {"age": pl.Float64, "sex": pl.Int64, "scp_codes": pl.Utf8, "recording_date": pl.Datetime}.get(c, pl.Int8)
            table = table.with_columns(pl.lit(None, dtype=dtype).alias(c))
    has_cols = [c for c in table.columns if c.startswith("has:")]
    table = table.with_columns(pl.col("in_database").fill_null(0), *[pl.col(c).fill_null(0) for c in has_cols],
                               pl.col("strat_fold").map_elements(ptbxl_split, return_dtype=pl.Utf8).alias("split"))
    if "has:super" in table.columns:  # a superclass column holds every label source's value for the ECG
        table = table.with_columns(pl.when(pl.col("has:super") == 1).then(pl.col(f"super:{c}")).otherwise(pl.col(c))
                                   .cast(pl.Int8).alias(c) for c in SUPERCLASSES if f"super:{c}" in table.columns)
    table = table.with_columns(pl.when(pl.col("age") < AGE_OVER_89).then(pl.col("age")).alias("age"),
                               (pl.col("sex") == 1).cast(pl.Int8).alias("female"))
    first = ["ecg_id", "patient_id", "age", "sex", "female", "recording_date", "strat_fold", "split", "in_database",
             "scp_codes", "filename_lr", "filename_hr", *SUPERCLASSES]
    rest = [c for c in table.columns if c not in first]
    legacy = [c for c in rest if c.startswith("sub_")]
    tasks = [c for t in ("has", *PTBXL_TASKS) for c in rest if c.startswith(f"{t}:")]
    other = [c for c in rest if c not in legacy and c not in tasks]
    return table.select(*first, *legacy, *tasks, *other).sort("ecg_id"), sources


def _read_ptbxl_row(root: Path, channels, item) -> Recording:
    path, patient_id, record_id, visit_time, labels = item
    return read_wfdb(root / path, channels=channels, patient_id=patient_id, record_id=record_id,
                     labels=labels, start_time=visit_time)


def _unlisted_records(root: Path, rate: int, listed: set[str]) -> list[dict]:
    """Records on disk under records100/ (records500/) that no label source lists."""
    folder, tail = (root / "records100", "_lr") if rate == 100 else (root / "records500", "_hr")
    out = []
    for hea in sorted(folder.rglob(f"*{tail}.hea")) if folder.is_dir() else []:
        name = str(hea.relative_to(root).with_suffix(""))
        if name not in listed:
            out.append({"path": str(hea), "problem": "record on disk but listed in no label source "
                                                     "(no patient_id, strat_fold or labels); left out"})
    return out


def _check_one_ecg_per_file(root: Path, table: pl.DataFrame, file_col: str) -> None:
    """Two ecg_ids naming one record file would be one recording twice (under two ids, maybe two patients)."""
    dup = table.filter(pl.col(file_col).is_duplicated()).sort(file_col, "ecg_id")
    if dup.height:
        a, b = dup.row(0, named=True), dup.row(1, named=True)
        where = Path(a["_source"]).name if a["_source"] == b["_source"] else f"{a['_source']} and {b['_source']}"
        raise LoaderError(root / str(a[file_col]), f"named by ecg_id {a['ecg_id']} and ecg_id {b['ecg_id']} ({file_col} "
                                                   f"in {where}); one recording cannot be two ECGs")


def load_ptbxl(root: str | Path, rate: int = 100, cache_dir: str | Path | None = None, *, on_error: str = "raise",
               channels=PTBXL_LEADS, min_likelihood: float = 0.0, labels: str = "auto", progress: bool = True,
               workers: int = 0) -> WaveformCache:
    """Load PTB-XL at ``rate`` (100 or 500 Hz) into a :class:`WaveformCache`.

    Index: patient_id, record_id (= ecg_id), visit_time (= recording_date, null without a
    database row), then the label columns of :func:`ptbxl_records` (``labels`` picks the
    sources). Leads come out as ``channels`` (default I..V6, ``AVR`` normalised to ``aVR``), in mV.

    Nothing is dropped silently. Every listed ECG must have its record files: by default the
    first one whose ``.hea``/``.dat`` is missing raises a :class:`LoaderError` naming the file and
    the table that lists it (and how many more are missing); ``on_error="skip"`` leaves such rows,
    and unreadable records, out and lists each ``{"path", "problem"}`` in
    ``cache.report["skipped"]``. Records on disk that no source lists (no patient id) are left out,
    listed in ``cache.report["unlisted"]`` and warned about. ``cache.report["tasks"]`` counts the
    ECGs per task. The cache (default ``default_cache_dir("ptbxl", fingerprint)``, keyed by the sources'
    content) is rebuilt only when a source file changes.
    """
    root = Path(root)
    if rate not in (100, 500):
        raise ValueError(f"rate must be 100 or 500, got {rate}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    table, sources = ptbxl_records(root, labels=labels, min_likelihood=min_likelihood)
    file_col = "filename_lr" if rate == 100 else "filename_hr"
    _check_one_ecg_per_file(root, table, file_col)
    skipped, present = [], []
    for i, (name, ecg_id, source) in enumerate(zip(table[file_col], table["ecg_id"], table["_source"])):
        files = [root / f"{name}.hea", root / f"{name}.dat"]
        lost = [f for f in files if not f.exists()]
        if lost:
            listed_in = Path(source).relative_to(root) if Path(source).is_relative_to(root) else source
            skipped.append({"path": str(lost[0]), "problem": f"ecg_id {ecg_id}: listed in {listed_in} ({file_col}) "
                                                            "but not found"})
        else:
            present.append(i)
            sources.extend(files)
    if skipped and on_error == "raise":
        raise LoaderError(skipped[0]["path"], f"{skipped[0]['problem']}; {len(skipped)} of {table.height} rows "
                                              "reference missing files (pass on_error='skip' to leave them out)")
    unlisted = _unlisted_records(root, rate, set(table[file_col].to_list()))
    if unlisted:
        warnings.warn(f"{root}: {len(unlisted)} record(s) on disk are listed in no label source and are left out "
                      f"(first: {unlisted[0]['path']}); see cache.report['unlisted']", stacklevel=2)
    listing = [Path(u["path"]) for u in unlisted]  # in the fingerprint, so the cache's report lists them as they are

    def build():
        rows = table[present]
        label_cols = [c for c in rows.columns if c not in ("patient_id", "recording_date", "filename_lr",
                                                           "filename_hr", "_source")]
        items = [(r[file_col], r["patient_id"], str(r["ecg_id"]), r["recording_date"], {c: r[c] for c in label_cols})
                 for r in rows.iter_rows(named=True)]
        tasks = {c.removeprefix("has:"): int(rows[c].sum()) for c in rows.columns if c.startswith("has:")}
        report = {"skipped": skipped, "unlisted": unlisted, "rows_in_table": table.height,
                  "sources": [str(s) for s in sources if s.suffix == ".csv"], "tasks": tasks,
                  "in_database": int(rows["in_database"].sum())}
        recs = read_all(partial(_read_ptbxl_row, root, channels), items, workers=workers, progress=progress,
                        desc=f"reading PTB-XL {rate} Hz", on_error=on_error, skipped=skipped)
        return check_same_channels(recs, channels, on_error, skipped), report

    return cached_load("ptbxl", [*sources, *listing], f"ptbxl;rate={rate};channels={channels};on_error={on_error};"
                       f"min_likelihood={min_likelihood};labels={labels};v3", cache_dir, build, root=root)
