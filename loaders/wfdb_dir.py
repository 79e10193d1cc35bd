"""WFDB records on disk -> :class:`Recording`, and a metadata-driven cohort loader with caching.

A cohort is a folder of WFDB records plus a metadata table (CSV or parquet) with one row per
record. Required columns: ``patient_id`` and ``record_id``; optional ``path`` (record path
relative to the folder, without extension; defaults to ``record_id``) and ``visit_time``.
Every other column is a label. Header parsing and validation live in :mod:`.wfdb_header`, the
stream filters several loaders share in :mod:`.filters`; both are re-exported here.
"""
from __future__ import annotations

from datetime import datetime
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import wfdb

from .cache import ON_ERROR, Plan, WaveformCache, cached_load, handed_over
from .filters import check_same_channels, drop_nan_recordings
from .identity import check_unique_column, clean_id_column, posix_path_column, row_locator
from .recording import ECG_LEADS, LoaderError, Recording, apply_nan_policy
from .sources import combine_stats, folder_files, stat_files, stat_records
from .transforms import resample
from .wfdb_header import WfdbHeader, _header_lines, check_wfdb_header, parse_wfdb_header
from .windows import window_recording

__all__ = ["read_wfdb", "load_wfdb_cohort", "read_metadata", "normalise_lead_name", "to_millivolts",
           "check_wfdb_header", "check_same_channels", "drop_nan_recordings", "load_wfdb_windows",
           "parse_wfdb_header", "WfdbHeader"]

REQUIRED_COLUMNS = ("patient_id", "record_id")
_TEXT_COLUMNS = ("patient_id", "record_id", "path")  # identifiers: never type-inferred
_RESERVED = {"fs", "n_channels", "n_samples", "offset", "channels", "source"}

_LEAD_NAMES = {n.lower(): n for n in ECG_LEADS}
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


# Formats whose samples are whole little/big-endian integers, read straight with numpy:
# dtype on disk, value subtracted to get the signed sample, and the invalid-sample sentinel.
_PLAIN_FORMATS = {"16": ("<i2", 0, -32768), "61": (">i2", 0, -32768), "32": ("<i4", 0, -2147483648),
                  "80": ("u1", 128, -128), "160": ("<u2", 32768, -32768)}


def _read_plain(hea: Path, header) -> np.ndarray | None:
    """``[C,T]`` float64 physical signal for single-file records in a plain integer format, else None."""
    fmts = set(header.fmt)
    if (len(set(header.file_name)) != 1 or len(fmts) != 1 or next(iter(fmts)) not in _PLAIN_FORMATS
            or any((s or 1) != 1 for s in header.samps_per_frame) or any(header.skew or [])
            or not header.sig_len or any(g == 0 for g in header.adc_gain)):
        return None
    dtype, shift, invalid = _PLAIN_FORMATS[next(iter(fmts))]
    offset = int(header.byte_offset[0] or 0)
    raw = np.fromfile(hea.parent / header.file_name[0], dtype=dtype, count=header.sig_len * header.n_sig, offset=offset)
    digital = raw.reshape(header.sig_len, header.n_sig).T.astype(np.int64) - shift
    gain = np.asarray(header.adc_gain, dtype=np.float64)[:, None]
    baseline = np.asarray(header.baseline, dtype=np.float64)[:, None]
    physical = (digital - baseline) / gain
    physical[digital == invalid] = np.nan
    return physical


def _read_multisegment(hea: Path):
    """Header and joined ``[C,T]`` physical signal of a multi-segment record (every segment checked first)."""
    lines = _header_lines(hea)
    spf: dict[str, int] = {}
    for ln in lines[1:]:
        seg = ln.split()[0]
        if seg == "~":
            continue
        seg_hea = hea.parent / f"{seg}.hea"
        if not seg_hea.exists():
            raise LoaderError(seg_hea, f"segment listed in {hea.name} not found")
        seg_header = check_wfdb_header(seg_hea)
        for name, n in zip(seg_header.sig_name, seg_header.samps_per_frame):
            spf[name] = max(spf.get(name, 1), int(n or 1))
    fields = lines[0].split()
    try:
        fs = float(fields[2].split("/")[0]) if len(fields) > 2 else 250.0
    except ValueError:
        raise LoaderError(hea, f"cannot parse record line {lines[0]!r}") from None
    if not (np.isfinite(fs) and fs > 0):
        raise LoaderError(hea, f"sampling frequency {fields[2]!r} in the record line is not positive")
    try:
        rec = wfdb.rdrecord(str(hea.with_suffix("")), m2s=True)
    except Exception as err:
        raise LoaderError(hea, f"cannot read multi-segment record: {type(err).__name__}: {err}") from err
    rec.samps_per_frame = [spf.get(name, 1) for name in rec.sig_name]
    return rec, rec.p_signal.T


def read_wfdb(path: str | Path, *, channels=None, allow_nan: bool = False, patient_id: str | None = None,
              record_id: str | None = None, labels=None, start_time=None, nan_policy: str | None = None,
              max_gap_s: float = 0.1) -> Recording:
    """Read one WFDB record (``path`` without extension) as a :class:`Recording`.

    The header is checked against its data files first (:func:`check_wfdb_header`). A
    multi-segment record is joined into one signal over the layout's channels; samples in gaps
    and in segments lacking a channel are NaN (so they meet ``nan_policy``).
    ``channels`` picks and orders channels by (normalised) name; a missing one is an error.
    Voltages are converted to mV. Invalid (NaN) samples follow ``nan_policy`` (see
    :func:`apply_nan_policy`); without one, they raise unless ``allow_nan`` (then they are kept).
    What the policy did is recorded in ``Recording.quality``. A channel stored at several
    samples per frame (e.g. MIMIC's 500 Hz ECG in 125 Hz frames) is averaged down to the frame
    rate, as ``wfdb.rdrecord`` does; ``quality["frame_averaged"]`` names it with its own rate
    (and the cache's report lists it).
    """
    path = Path(path)
    hea = path.with_suffix(".hea") if path.suffix != ".hea" else path
    base = hea.with_suffix("")
    if not hea.exists():
        raise LoaderError(hea, "header file not found")
    lines = _header_lines(hea)
    adc = None
    if lines and "/" in lines[0].split()[0]:
        header, physical = _read_multisegment(hea)
    else:
        header = check_wfdb_header(hea)
        physical = _read_plain(hea, header)
        adc = [(float(g), float(b), _UNIT_SCALE.get((u or "").strip().lower(), 1.0))
               for g, b, u in zip(header.adc_gain, header.baseline, header.units)]
    if physical is None:
        try:
            rec = wfdb.rdrecord(str(base))
        except Exception as err:  # wfdb raises a zoo of types for corrupt files
            raise LoaderError(hea, f"cannot read WFDB record: {type(err).__name__}: {err}") from err
        if rec.p_signal is None:
            raise LoaderError(hea, "record has no physical signal")
        physical = rec.p_signal.T
    names = tuple(normalise_lead_name(n) for n in header.sig_name)
    # wfdb averages the samples of a channel stored at k samples per frame down to the frame rate
    averaged = {n: int(k) for n, k in zip(names, getattr(header, "samps_per_frame", None) or []) if (k or 1) > 1}
    signal = np.ascontiguousarray(physical, dtype=np.float32)
    signal, units = to_millivolts(signal, header.units, hea)
    if channels is not None:
        picked = _pick_channels(signal, names, units, channels, hea)
        adc = [adc[names.index(n)] for n in picked[1]] if adc is not None else None
        signal, names, units = picked
    policy = nan_policy or ("keep" if allow_nan else "fail")
    signal, quality = apply_nan_policy(signal, policy, hea, names, max_gap=int(round(max_gap_s * header.fs)))
    averaged = {n: {"samples_per_frame": k, "rate_hz": k * float(header.fs)} for n, k in averaged.items() if n in names}
    if averaged:
        quality = {**quality, "frame_averaged": averaged}
    if start_time is None and header.base_date is not None and header.base_time is not None:
        start_time = datetime.combine(header.base_date, header.base_time)
    return Recording(
        signal=signal,
        fs=float(header.fs),
        channels=names,
        patient_id=str(patient_id if patient_id is not None else base.name),
        record_id=str(record_id if record_id is not None else base.name),
        start_time=start_time,
        units=units,
        labels=dict(labels or {}),
        source=str(hea),
        quality=quality,
        adc=tuple(adc) if adc is not None else None,
    )


def _pick_channels(signal, names, units, channels, path):
    """Rows of ``signal`` for ``channels`` (normalised names, in that order); a missing one is an error."""
    wanted = [normalise_lead_name(c) for c in channels]
    missing = [c for c in wanted if c not in names]
    if missing:
        raise LoaderError(path, f"missing channel(s) {missing}; record has {list(names)}")
    idx = [names.index(c) for c in wanted]
    return signal[idx], tuple(wanted), tuple(units[i] for i in idx)


def read_metadata(path: str | Path) -> pl.DataFrame:
    """Read and validate a cohort metadata table (CSV or parquet).

    ``patient_id``, ``record_id`` and ``path`` are text from the first byte read: ``007`` and
    ``7`` are two patients, ``3`` and ``3.0`` stay as written, record ids ``001`` and ``1``
    are distinct. Surrounding whitespace is removed from them (``"p1 "`` is ``"p1"``); ids that
    differ only in whitespace inside them, an empty id, a repeated record_id and two rows naming
    the same record files are refused naming both lines (:mod:`.identity`). Other columns' types
    are inferred from every row (not the first hundred), so a column that turns from numbers to
    text late in the file still loads. A parquet table's id columns are cast to text from their
    stored type (integers or text; a floating-point id column is refused: ``7.0`` is not ``7``).
    """
    path = Path(path)
    if not path.exists():
        raise LoaderError(path, "metadata table not found")
    try:
        if path.suffix == ".parquet":
            table = pl.read_parquet(path)
        else:
            table = _parse_dates(pl.read_csv(path, schema_overrides={c: pl.Utf8 for c in _TEXT_COLUMNS},
                                             infer_schema_length=None))
    except Exception as err:
        raise LoaderError(path, f"cannot read metadata table: {type(err).__name__}: {err}") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise LoaderError(path, f"missing required column(s) {missing}; has {table.columns}")
    reserved = sorted(_RESERVED & set(table.columns))
    if reserved:
        raise LoaderError(path, f"column name(s) {reserved} are reserved by the cache index; rename them")
    if table.height == 0:
        raise LoaderError(path, "metadata table has no rows")
    floats = [c for c in _TEXT_COLUMNS if c in table.columns and table[c].dtype.is_float()]
    if floats:
        raise LoaderError(path, f"id column(s) {floats} are stored as floating-point numbers; store ids as text or "
                                "integers (7.0 is not the id 7)")
    where = row_locator(path)  # the checks run on the columns: no Python object per row
    table = table.with_columns(clean_id_column(table[c], path, c, where) for c in _TEXT_COLUMNS if c in table.columns)
    check_unique_column(table["record_id"], path, "record_id", where)
    files = table["path"] if "path" in table.columns else table["record_id"]
    check_unique_column(posix_path_column(files), path, "path", where,
                        "names the same record files twice; one recording would become two records")
    return table


def _parse_dates(table: pl.DataFrame) -> pl.DataFrame:
    """Text columns (ids and paths aside) whose every value is a date or a datetime, as dates or datetimes: what
    ``read_csv(try_parse_dates=True)`` gives, column by column (that option took 13 s for 100,000 rows here)."""
    for c in table.columns:
        if c in _TEXT_COLUMNS or table.schema[c] != pl.Utf8:
            continue
        for parse in (table[c].str.to_date, table[c].str.to_datetime):
            try:
                parsed = parse()
            except Exception:  # polars raises ComputeError (or InvalidOperationError) for text that is not a date
                continue
            if parsed.null_count() == table[c].null_count():
                table = table.with_columns(parsed)
                break
    return table


def _read_cohort_row(root: Path, channels, label_cols, nan_policy, fs, row: dict) -> Recording:
    rec = read_wfdb(root / row["path"], channels=channels, patient_id=row["patient_id"], record_id=row["record_id"],
                    labels={c: row[c] for c in label_cols}, start_time=row.get("visit_time"), nan_policy=nan_policy)
    return resample(rec, fs) if fs is not None else rec


def _cohort_check(expected, drop_nan: bool, rec: Recording, first) -> tuple[str, str, bool] | None:
    """Why ``rec`` stays out of the cohort (``drop`` NaN policy; channels other than ``expected`` or the first
    recording's), as :class:`~loaders.shards.Plan` checks report it; None to keep it."""
    if drop_nan and rec.quality.get("nan_samples"):
        return "dropped_nan", f"{rec.quality['nan_samples']} invalid (NaN) samples", False
    want = expected if expected is not None else (list(first.channels) if first is not None else None)
    if want is not None and list(rec.channels) != want:
        return "skipped", f"has {rec.n_channels} channels {list(rec.channels)}, the cohort has {len(want)} {want}", True
    return None


def load_wfdb_cohort(root: str | Path, metadata: str | Path | None = None, *, cache_dir: str | Path | None = None,
                     channels=None, progress: bool = True, workers: int | None = None, on_error: str = "raise",
                     nan_policy: str = "fail", fs: float | None = None) -> WaveformCache:
    """Load a folder of WFDB records described by a metadata table into a memory-mapped cache.

    Every record must have the same channel set (the first record's, or ``channels``). The
    cache (default :func:`default_cache_dir` ``("wfdb_cohort", fingerprint)``, never inside
    ``root``, which may be read-only) is rebuilt only when the content of the table or a record
    file changes; a moved copy of the folder reuses it. Opening lists each record folder once and
    stats each file (no per-record listing, no file read once the files' hashes are recorded; see
    :mod:`~loaders.sources`); a second call parses no header. A record listed in the table whose
    header is missing raises (naming the file, the table's line and how many are missing) before
    anything is read. Missing and unreadable records raise, or with ``on_error="skip"`` are left
    out and listed in ``cache.report["skipped"]``. ``nan_policy``
    (see :func:`apply_nan_policy`): ``"drop"`` leaves out records holding NaN and lists them in
    ``cache.report["dropped_nan"]``. The cache is built in shards by ``workers`` processes (default:
    the ``workers`` cache option, every core for 1,024 records or more; the same bytes whatever the
    number) and a killed build resumes from its finished shards.
    Records must share one sampling rate: one at another rate raises naming both records and
    rates (or is skipped and listed), unless ``fs`` resamples every record to that rate
    (:func:`~loaders.transforms.resample`; ``quality`` and the index keep the rate read).
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    root = Path(root)
    meta_path = Path(metadata) if metadata is not None else root / "metadata.csv"
    key, handed = handed_over("wfdb_cohort", root=root, metadata=meta_path, cache_dir=cache_dir and Path(cache_dir),
                              channels=channels, on_error=on_error, nan_policy=nan_policy, fs=fs)
    if handed is not None:  # this node's first rank checked the sources and opened this cache moments ago
        return handed
    table = read_metadata(meta_path)
    if "path" not in table.columns:
        table = table.with_columns(path=pl.col("record_id"))
    records, missing = stat_records(root, table["path"])
    absent = [{"path": str(root / f"{table['path'][i]}.hea"),
               "problem": f"listed in {meta_path.name} ({row_locator(meta_path)(i)}, record_id "
                          f"{table['record_id'][i]!r}) but not found"} for i in missing]
    if absent and on_error == "raise":
        raise LoaderError(absent[0]["path"], f"{absent[0]['problem']}; {len(absent)} of {table.height} listed "
                                             "record(s) missing (on_error=skip leaves them out, listed)")
    if len(missing) == table.height:
        raise LoaderError(meta_path, f"none of its {table.height} records was found under {root}")
    rows_in_table = table.height
    if missing:
        keep = np.ones(table.height, dtype=bool)
        keep[missing] = False
        table = table.filter(pl.Series(keep))
    stats = combine_stats(records, stat_files([meta_path], root))

    def build():
        label_cols = [c for c in table.columns if c not in ("patient_id", "record_id", "path", "visit_time")]
        report: dict = {"skipped": list(absent), "rows_in_table": rows_in_table,
                        **({"dropped_nan": []} if nan_policy == "drop" else {})}
        expected = [normalise_lead_name(c) for c in channels] if channels else None
        return Plan(table, partial(_read_cohort_row, root, channels, label_cols, nan_policy, fs), report=report,
                    on_error=on_error, check=partial(_cohort_check, expected, nan_policy == "drop"),
                    desc=f"caching {root.name}", progress=progress)

    return cached_load("wfdb_cohort", stats, f"channels={channels};on_error={on_error};nan_policy={nan_policy};fs={fs}",
                       cache_dir, build, workers=workers, key=key)


def _windows_of_record(channels, window_s, stride_s, nan_policy, max_gap_s, patient_id_of, record):
    rec = read_wfdb(record, channels=channels, nan_policy="keep",
                    patient_id=patient_id_of(Path(record)) if patient_id_of else None)
    windows, report = window_recording(rec, window_s, stride_s, nan_policy=nan_policy, max_gap_s=max_gap_s)
    return [*windows, report.as_dict()]


def load_wfdb_windows(records, cache_dir: str | Path | None = None, *, window_s: float = 10.0, stride_s: float | None = None,
                      channels=None, nan_policy: str = "drop", max_gap_s: float = 0.1, patient_id_of=None,
                      on_error: str = "raise", progress: bool = True, workers: int | None = None) -> WaveformCache:
    """Fixed-length windows of long WFDB records (single- or multi-segment) in one cache.

    ``channels`` picks signals by name (e.g. ``["II", "ABP"]`` from a mixed ECG/pressure
    record; a record lacking one raises or is skipped). NaN samples follow ``nan_policy``
    (:func:`window_recording`: ``"drop"`` windows holding NaN, ``"interpolate"`` gaps up to
    ``max_gap_s``, or ``"fail"``). ``patient_id_of(path)`` gives each record's patient (default:
    the record name). The cache defaults to :func:`default_cache_dir` ``("wfdb_windows", fingerprint)``.
    ``cache.report["records"]`` counts kept and dropped windows per record;
    ``cache.report["skipped"]`` lists records left out with ``on_error="skip"``. Every file in the
    records' folders is a source (each folder listed once); ``workers`` as in :func:`load_wfdb_cohort`.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    records = [Path(r) for r in records]
    stats = stat_files(folder_files(r.parent for r in records))

    def build():
        read_one = partial(_windows_of_record, channels, window_s, stride_s, nan_policy, max_gap_s, patient_id_of)
        return Plan([str(r) for r in records], read_one, report={"skipped": [], "records": []}, on_error=on_error,
                    desc="windows", progress=progress)

    return cached_load("wfdb_windows", stats, f"windows;{channels};{window_s};{stride_s};{nan_policy};"
                       f"{max_gap_s};{on_error};{getattr(patient_id_of, '__name__', '')}", cache_dir, build,
                       workers=workers)
