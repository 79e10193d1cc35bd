"""WFDB records on disk -> :class:`Recording`, and a metadata-driven cohort loader with caching.

A cohort is a folder of WFDB records plus a metadata table (CSV or parquet) with one row per
record. Required columns: ``patient_id`` and ``record_id``; optional ``path`` (record path
relative to the folder, without extension; defaults to ``record_id``) and ``visit_time``.
Every other column is a label.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import wfdb
from tqdm.auto import tqdm

from .cache import WaveformCache, build_cache, fingerprint_files
from .recording import LoaderError, Recording, check_signal

__all__ = ["read_wfdb", "load_wfdb_cohort", "read_metadata", "normalise_lead_name", "to_millivolts"]

REQUIRED_COLUMNS = ("patient_id", "record_id")
_RESERVED = {"fs", "n_channels", "n_samples", "offset", "channels", "source"}

_LEAD_NAMES = {n.lower(): n for n in ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")}
_UNIT_SCALE = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}


def normalise_lead_name(name: str) -> str:
    """``AVR``/``avr`` -> ``aVR``, ``v1`` -> ``V1``; names that are not ECG leads are returned stripped."""
    return _LEAD_NAMES.get(name.strip().lower(), name.strip())


def to_millivolts(signal: np.ndarray, units, path) -> tuple[np.ndarray, tuple[str, ...]]:
    """Scale each voltage channel to mV; channels in non-voltage units are left as they are."""
    out_units = []
    for c, u in enumerate(units):
        key = (u or "").strip().lower()
        if key in _UNIT_SCALE:
            if _UNIT_SCALE[key] != 1.0:
                signal[c] *= _UNIT_SCALE[key]
            out_units.append("mV")
        else:
            out_units.append(u or "")
    return signal, tuple(out_units)


def read_wfdb(path: str | Path, *, channels=None, allow_nan: bool = False, patient_id: str | None = None,
              record_id: str | None = None, labels=None, start_time=None) -> Recording:
    """Read one single-segment WFDB record (``path`` without extension) as a :class:`Recording`.

    ``channels`` picks and orders channels by (normalised) name; a missing one is an error.
    Voltages are converted to mV; non-finite samples raise unless ``allow_nan``.
    """
    path = Path(path)
    hea = path.with_suffix(".hea") if path.suffix != ".hea" else path
    base = hea.with_suffix("")
    if not hea.exists():
        raise LoaderError(hea, "header file not found")
    try:
        rec = wfdb.rdrecord(str(base))
    except Exception as err:  # wfdb raises a zoo of types for corrupt files
        raise LoaderError(hea, f"cannot read WFDB record: {type(err).__name__}: {err}") from err
    if rec.p_signal is None:
        raise LoaderError(hea, "record has no physical signal (multi-segment? read it with m2s=True)")
    names = tuple(normalise_lead_name(n) for n in rec.sig_name)
    signal = np.ascontiguousarray(rec.p_signal.T, dtype=np.float32)
    signal, units = to_millivolts(signal, rec.units, hea)
    if channels is not None:
        wanted = [normalise_lead_name(c) for c in channels]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise LoaderError(hea, f"missing channel(s) {missing}; record has {list(names)}")
        idx = [names.index(c) for c in wanted]
        signal, names, units = signal[idx], tuple(wanted), tuple(units[i] for i in idx)
    if not allow_nan:
        check_signal(signal, hea, names)
    if start_time is None and rec.base_date is not None and rec.base_time is not None:
        start_time = datetime.combine(rec.base_date, rec.base_time)
    return Recording(
        signal=signal,
        fs=float(rec.fs),
        channels=names,
        patient_id=str(patient_id if patient_id is not None else base.name),
        record_id=str(record_id if record_id is not None else base.name),
        start_time=start_time,
        units=units,
        labels=dict(labels or {}),
        source=str(hea),
    )


def read_metadata(path: str | Path) -> pl.DataFrame:
    """Read and validate a cohort metadata table (CSV or parquet)."""
    path = Path(path)
    if not path.exists():
        raise LoaderError(path, "metadata table not found")
    try:
        table = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, try_parse_dates=True)
    except Exception as err:
        raise LoaderError(path, f"cannot read metadata table: {err}") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise LoaderError(path, f"missing required column(s) {missing}; has {table.columns}")
    reserved = sorted(_RESERVED & set(table.columns))
    if reserved:
        raise LoaderError(path, f"column name(s) {reserved} are reserved by the cache index; rename them")
    if table.height == 0:
        raise LoaderError(path, "metadata table has no rows")
    dup = table["record_id"].is_duplicated()
    if dup.any():
        raise LoaderError(path, f"duplicated record_id(s): {table.filter(dup)['record_id'].unique().to_list()[:5]}")
    nulls = [c for c in REQUIRED_COLUMNS if table[c].null_count()]
    if nulls:
        raise LoaderError(path, f"empty values in column(s) {nulls}")
    return table.with_columns(pl.col("patient_id").cast(pl.Utf8), pl.col("record_id").cast(pl.Utf8))


def load_wfdb_cohort(root: str | Path, metadata: str | Path | None = None, *, cache_dir: str | Path | None = None,
                     channels=None, progress: bool = True) -> WaveformCache:
    """Load a folder of WFDB records described by a metadata table into a memory-mapped cache.

    Every record must have the same channel set (the first record's, or ``channels``). The
    cache (default ``<root>/.tscl_cache``) is rebuilt only when the table or a record file
    changes; a second call parses no header.
    """
    root = Path(root)
    meta_path = Path(metadata) if metadata is not None else root / "metadata.csv"
    table = read_metadata(meta_path)
    paths = table["path"].to_list() if "path" in table.columns else table["record_id"].to_list()
    rec_files = []
    for p in paths:
        hea = root / f"{p}.hea"
        if not hea.exists():
            raise LoaderError(hea, f"listed in {meta_path.name} but not found")
        rec_files.append(hea)
        rec_files.extend(sorted(hea.parent.glob(f"{Path(p).name}.*")))
    cache_dir = Path(cache_dir) if cache_dir is not None else root / ".tscl_cache"
    fp = fingerprint_files([meta_path, *rec_files], extra=f"channels={channels}")
    if (cache_dir / "fingerprint.txt").exists():
        cache = WaveformCache(cache_dir)
        if cache.fingerprint == fp:
            return cache
    label_cols = [c for c in table.columns if c not in ("patient_id", "record_id", "path", "visit_time")]

    def recordings():
        expected = list(channels) if channels is not None else None
        rows = table.iter_rows(named=True)
        for p, row in tqdm(zip(paths, rows), total=table.height, desc=f"reading {root.name}", disable=not progress):
            rec = read_wfdb(root / p, channels=expected, patient_id=row["patient_id"], record_id=row["record_id"],
                            labels={c: row[c] for c in label_cols}, start_time=row.get("visit_time"))
            if expected is None:
                expected = list(rec.channels)
            elif list(rec.channels) != expected:
                raise LoaderError(rec.source, f"has channels {list(rec.channels)}, the cohort has {expected}")
            yield rec

    return build_cache(recordings(), cache_dir, fingerprint=fp)
