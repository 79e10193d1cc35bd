"""Annotated long ECG recordings (MIT-BIH, SVDB, CPSC 2021): beat and rhythm windows.

Beat annotations (``.atr``) map to the five AAMI EC57 classes: N (normal and bundle-branch
block beats N, L, R, e, j), S (supraventricular ectopic A, a, J, S), V (ventricular ectopic
V, E), F (fusion F) and Q (paced and unclassifiable /, f, Q). Other symbols (rhythm changes
``+``, noise ``~``, comments, waveform onsets...) are not beats. Rhythm-change annotations
(``+`` with an aux note such as ``(AFIB`` or ``(N``) start an interval that lasts until the
next one; the last lasts to the end of the record.
"""
from __future__ import annotations

import re
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import wfdb

from .cache import ON_ERROR, WaveformCache, cached_load, check_same_rate, read_all
from .filters import split_reports
from .identity import check_unique_names, relative_id
from .recording import LoaderError, Recording
from .sources import record_files
from .transforms import resample
from .wfdb_dir import read_wfdb
from .windows import cut_window, window_recording

__all__ = ["AAMI_CLASSES", "AAMI_MAP", "read_beats", "rhythm_intervals", "beat_windows", "rhythm_windows",
           "load_annotated", "subject_of", "check_annotation_file", "summarise_rhythm_report", "annotated_records",
           "MITDB_DS1", "MITDB_DS2", "MITDB_PACED", "MITDB_RECORDS", "MITDB_SAME_SUBJECT"]

AAMI_CLASSES = ("N", "S", "V", "F", "Q")
AAMI_MAP = {**dict.fromkeys("NLRej", "N"), **dict.fromkeys("AaJS", "S"), **dict.fromkeys("VE", "V"), "F": "F",
            **dict.fromkeys("/fQ", "Q")}
# MIT-BIH Arrhythmia Database: its 48 records, the four with paced beats, the record pairs from one subject
# (201 and 202, the MIT-BIH directory says) and de Chazal, O'Dwyer & Reilly's inter-patient division (IEEE
# Trans Biomed Eng 51(7), 2004): DS1 to train, DS2 to test, 22 records each, the paced records in neither.
MITDB_DS1 = ("101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122", "124", "201", "203", "205",
             "207", "208", "209", "215", "220", "223", "230")
MITDB_DS2 = ("100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210", "212", "213", "214", "219",
             "221", "222", "228", "231", "232", "233", "234")
MITDB_PACED = ("102", "104", "107", "217")
MITDB_RECORDS = tuple(sorted(MITDB_DS1 + MITDB_DS2 + MITDB_PACED))
MITDB_SAME_SUBJECT = {"202": "201"}
_SAME_PATIENT = {f"mitdb/{record}": subject for record, subject in MITDB_SAME_SUBJECT.items()}


def subject_of(record: str | Path) -> str:
    """Patient id for a record path: CPSC 2021 ``data_<subject>_<n>`` -> ``<subject>``; MIT-BIH 202 -> 201;
    otherwise the record name."""
    path = Path(record)
    key = f"{path.parent.name}/{path.name}"
    if key in _SAME_PATIENT:
        return _SAME_PATIENT[key]
    m = re.fullmatch(r"data_(\d+)_\d+", path.name)
    return m.group(1) if m else path.name


def annotated_records(root: str | Path) -> list[Path]:
    """The records of a database folder (paths without extension): those its ``RECORDS`` file lists
    (PhysioNet's list of a database's records; MIT-BIH's leaves out the ``x_mitdb/`` extras), else every
    record with both ``.hea`` and ``.atr``, at any depth. A listed record that is missing is named when read."""
    root = Path(root)
    listing = root / "RECORDS"
    if listing.is_file():
        names = [ln.strip() for ln in listing.read_text(errors="replace").splitlines() if ln.strip()]
        if not names:
            raise LoaderError(listing, "lists no record")
        return [root / name for name in names]
    return sorted(p.with_suffix("") for p in root.rglob("*.atr") if p.with_suffix(".hea").exists())


_SKIP, _NUM, _SUB, _CHN, _AUX, _NOTE = 59, 60, 61, 62, 63, 22


def _pdp11_long(b: bytes) -> int:
    """A SKIP's signed 32-bit interval: high 16-bit word first, each word little-endian (as wfdb reads it)."""
    value = (b[0] << 16) | (b[1] << 24) | b[2] | (b[3] << 8)
    return value - (1 << 32) if value >= 1 << 31 else value


def check_annotation_file(path: str | Path) -> int:
    """Walk a WFDB (MIT format) annotation file; return its number of annotations (as ``wfdb.rdann`` counts them:
    without NOTANN words and the definition notes at sample 0).

    The file is a stream of 16-bit little-endian words (6-bit type, 10-bit interval): SKIP is
    followed by a 32-bit interval, AUX by its bytes padded to an even count, NUM/SUB/CHN
    modify the annotation before them, and the stream ends with the end-of-annotations word
    0x0000. ``wfdb.rdann`` reads a cut file without complaint (up to where it was cut); here a
    file that ends without the marker, inside a field, or holds bytes after it raises a
    :class:`LoaderError` naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise LoaderError(path, f"cannot read annotations: {err}") from err
    n, i, count, sample = len(data), 0, 0, 0
    while i + 2 <= n:
        word = data[i] | (data[i + 1] << 8)
        kind, value = word >> 10, word & 0x3FF
        if word == 0:
            if i + 2 != n:
                raise LoaderError(path, f"{n - i - 2} bytes after the end-of-annotations marker at byte {i}")
            return count
        if kind == _SKIP:
            sample += _pdp11_long(data[i + 2:i + 6]) if i + 6 <= n else 0
            i += 6
        elif kind == _AUX:
            i += 2 + value + (value & 1)
        else:
            i += 2
            sample += value
            # rdann drops NOTANN (type 0) words and the definitions (NOTE, type 22) at sample 0, e.g. the
            # "## time resolution" note wfdb.wrann writes
            if kind not in (_NUM, _SUB, _CHN, 0) and not (kind == _NOTE and sample == 0):
                count += 1
    detail = "cut inside an annotation's field" if i > n else "no end-of-annotations marker (0x0000)"
    raise LoaderError(path, f"truncated: {detail} after {count} annotations ({n} bytes); the file was cut short")


def _read_annotation(record: Path, extension: str):
    ann_file = record.parent / f"{record.name}.{extension}"
    if not ann_file.exists():
        raise LoaderError(ann_file, "annotation file not found")
    expected = check_annotation_file(ann_file)
    try:
        ann = wfdb.rdann(str(record), extension)
    except Exception as err:
        raise LoaderError(ann_file, f"cannot read annotations: {type(err).__name__}: {err}") from err
    if len(ann.sample) != expected:
        raise LoaderError(ann_file, f"holds {expected} annotations but wfdb read {len(ann.sample)}")
    return ann


def read_beats(record: str | Path, extension: str = "atr") -> pl.DataFrame:
    """Beat annotations of a record: columns ``sample``, ``symbol``, ``aami`` (non-beat symbols removed)."""
    record = Path(record)
    ann = _read_annotation(record, extension)
    symbols = list(ann.symbol)
    keep = [i for i, s in enumerate(symbols) if s in AAMI_MAP]
    return pl.DataFrame({"sample": np.asarray(ann.sample)[keep].astype(np.int64),
                         "symbol": [symbols[i] for i in keep],
                         "aami": [AAMI_MAP[symbols[i]] for i in keep]})


def rhythm_intervals(record: str | Path, n_samples: int, extension: str = "atr",
                     default_rhythm: str | None = None) -> pl.DataFrame:
    """Rhythm intervals ``start``, ``stop`` (samples, stop exclusive), ``rhythm`` (aux note without ``(``).

    The part before the first rhythm annotation (the whole record when there is none, as in
    CPSC 2021's non-AF records) gets ``default_rhythm``, or is left out when that is None.
    """
    record = Path(record)
    ann = _read_annotation(record, extension)
    changes = [(int(s), (note or "").strip("\x00 ").lstrip("("))
               for s, sym, note in zip(ann.sample, ann.symbol, ann.aux_note)
               if sym == "+" and (note or "").strip("\x00 ").startswith("(")]
    if default_rhythm is not None and (not changes or changes[0][0] > 0):
        changes.insert(0, (0, default_rhythm))
    starts = [s for s, _ in changes]
    stops = starts[1:] + [n_samples]
    rows = [(a, b, r) for (a, r), b in zip(changes, stops) if b > a]
    return pl.DataFrame(rows, schema={"start": pl.Int64, "stop": pl.Int64, "rhythm": pl.Utf8}, orient="row")


def beat_windows(record: str | Path, *, before_s: float = 0.25, after_s: float = 0.45, channels=None,
                 extension: str = "atr", patient_id: str | None = None, nan_policy: str = "drop",
                 report: list | None = None, fs: float | None = None, record_id: str | None = None) -> list[Recording]:
    """One window per annotated beat, ``before_s`` before to ``after_s`` after the R peak.

    Labels: ``aami`` (N/S/V/F/Q), ``symbol``, ``beat_sample``. Beats too close to the record's
    ends, and (with ``nan_policy="drop"``) windows holding NaN, are left out and counted in the
    ``report`` entry appended for the record. ``fs`` resamples the record first (beat positions
    are scaled to the new rate, and ``beat_sample`` is in its samples).
    """
    record = Path(record)
    rec = read_wfdb(record, channels=channels, patient_id=patient_id or subject_of(record), record_id=record_id,
                    nan_policy="keep" if nan_policy == "drop" else nan_policy)
    beats = read_beats(record, extension)
    rec, scale = _resampled(rec, fs)
    if scale != 1.0:
        beats = beats.with_columns((pl.col("sample") * scale).round().cast(pl.Int64))
    lo, hi = int(round(before_s * rec.fs)), int(round(after_s * rec.fs))
    bad = np.concatenate(([0], np.cumsum(np.isnan(rec.signal).any(axis=0))))
    windows, dropped_edge, dropped_nan, dropped_classes = [], 0, 0, {}
    for sample, symbol, aami in beats.iter_rows():
        start, stop = sample - lo, sample + hi
        if start < 0 or stop > rec.n_samples:
            dropped_edge += 1
            dropped_classes[aami] = dropped_classes.get(aami, 0) + 1
            continue
        if bad[stop] - bad[start]:
            dropped_nan += 1
            dropped_classes[aami] = dropped_classes.get(aami, 0) + 1
            continue
        windows.append(cut_window(rec, start, stop, record_id=f"{rec.record_id}:{sample}",
                                  labels={"aami": aami, "symbol": symbol, "beat_sample": int(sample)}))
    if report is not None:
        report.append({"source": rec.source, "beats": beats.height, "kept": len(windows),
                       "dropped_edge": dropped_edge, "dropped_nan": dropped_nan,
                       "dropped_by_class": dict(sorted(dropped_classes.items()))})
    return windows


def rhythm_windows(record: str | Path, *, window_s: float = 10.0, stride_s: float | None = None, channels=None,
                   extension: str = "atr", patient_id: str | None = None, default_rhythm: str | None = None,
                   nan_policy: str = "drop", report: list | None = None, fs: float | None = None,
                   record_id: str | None = None) -> list[Recording]:
    """Fixed-length windows lying wholly inside one rhythm interval (:func:`rhythm_intervals`).

    Labels: ``rhythm`` (e.g. ``AFIB``, ``N``) and ``afib`` (1 for AFIB, 0 otherwise). Windows
    that would straddle a rhythm change are not cut. What is left out is counted in the
    ``report`` entry: the tail of each interval after its last window (``samples["tail"]``),
    whole episodes shorter than a window per rhythm (``short_intervals``: count, samples,
    seconds), the part before the first rhythm annotation when ``default_rhythm`` is None
    (``unannotated_s``), and windows with NaN (``dropped_nan``, with ``nan_policy="drop"``).
    """
    record = Path(record)
    rec = read_wfdb(record, channels=channels, patient_id=patient_id or subject_of(record), record_id=record_id,
                    nan_policy="keep" if nan_policy == "drop" else nan_policy)
    intervals = rhythm_intervals(record, rec.n_samples, extension, default_rhythm)
    rec, scale = _resampled(rec, fs)
    if scale != 1.0:
        intervals = intervals.with_columns(
            (pl.col(c) * scale).round().cast(pl.Int64).clip(0, rec.n_samples) for c in ("start", "stop"))
    size = int(round(window_s * rec.fs))
    windows, counts = [], {"dropped_nan": 0, "dropped_edge": 0}
    short: dict[str, dict] = {}  # rhythm -> intervals too short for one window
    tail = nan_samples = 0
    for start, stop, rhythm in intervals.iter_rows():
        part = cut_window(rec, start, stop)
        cut, rep = window_recording(part, window_s, stride_s, nan_policy="drop",
                                    labels={"rhythm": rhythm, "afib": int(rhythm == "AFIB")})
        for w in cut:
            w.labels["window_start"] += int(start)
            w.record_id = f"{rec.record_id}:{w.labels['window_start']}"
        windows.extend(cut)
        counts["dropped_nan"] += rep.dropped_nan
        counts["dropped_edge"] += rep.dropped_edge
        nan_samples += rep.dropped_nan * size
        if stop - start < size:
            entry = short.setdefault(rhythm, {"intervals": 0, "samples": 0})
            entry["intervals"] += 1
            entry["samples"] += int(stop - start)
        else:
            tail += rep.tail_samples
    if report is not None:
        covered = int((intervals["stop"] - intervals["start"]).sum()) if intervals.height else 0
        unannotated = rec.n_samples - covered
        report.append({
            "source": rec.source, "intervals": intervals.height, "kept": len(windows), **counts,
            "fs": rec.fs, "n_samples": rec.n_samples,
            # where every sample went (with stride = window they add up to n_samples)
            "samples": {"kept": len(windows) * size, "nan": nan_samples, "tail": tail,
                        "short_intervals": sum(e["samples"] for e in short.values()), "unannotated": unannotated},
            "short_intervals": {r: {**e, "seconds": e["samples"] / rec.fs} for r, e in sorted(short.items())},
            "unannotated_s": unannotated / rec.fs,
        })
    return windows


def summarise_rhythm_report(records: list[dict], window_s: float) -> dict:
    """Totals over :func:`rhythm_windows` report entries: what was left out, how much, and why."""
    out = {"windows_kept": 0, "windows_dropped_nan": 0, "tail_s": 0.0, "unannotated_s": 0.0,
           "records_without_windows": [], "short_intervals": {}}
    for r in records:
        fs = r["fs"]
        out["windows_kept"] += r["kept"]
        out["windows_dropped_nan"] += r["dropped_nan"]
        out["tail_s"] += r["samples"]["tail"] / fs
        out["unannotated_s"] += r["unannotated_s"]
        if not r["kept"]:
            out["records_without_windows"].append(r["source"])
        for rhythm, e in r["short_intervals"].items():
            t = out["short_intervals"].setdefault(rhythm, {"intervals": 0, "seconds": 0.0})
            t["intervals"] += e["intervals"]
            t["seconds"] += e["seconds"]
    out["why"] = {"short_intervals": f"rhythm episodes shorter than one {window_s:g} s window",
                  "tail_s": "the end of an episode after its last whole window",
                  "unannotated_s": "before the first rhythm annotation, with default_rhythm=None",
                  "windows_dropped_nan": "windows holding invalid (NaN) samples"}
    return out


def _resampled(rec: Recording, fs: float | None) -> tuple[Recording, float]:
    """``rec`` at ``fs`` (when given) and the factor that maps its annotation samples to the new rate."""
    if fs is None or rec.fs == fs:
        return rec, 1.0
    out = resample(rec, fs)
    return out, out.fs / rec.fs


def load_annotated(records, kind: str = "beats", cache_dir: str | Path | None = None, *, channels=None,
                   on_error: str = "raise", progress: bool = True, workers: int = 0, root: str | Path | None = None,
                   **window_args) -> WaveformCache:
    """Beat (``kind="beats"``) or rhythm (``kind="rhythm"``) windows of several annotated records in one cache.

    ``records``: record paths without extension. ``window_args`` go to :func:`beat_windows` or
    :func:`rhythm_windows`; for rhythm windows ``cache.report["dropped"]`` totals what was left
    out and why (:func:`summarise_rhythm_report`), with a warning when whole episodes or
    unannotated stretches were; records at different rates need ``fs=`` there (each record is
    resampled to it), else the first record at another rate raises naming both records and
    rates (with ``on_error="skip"`` its windows are left out and it is listed in ``skipped``). The cache defaults to :func:`default_cache_dir`
    ``("annotated_<kind>", fingerprint)``. ``cache.report["records"]`` holds each record's counts;
    ``cache.report["skipped"]`` the records left out with ``on_error="skip"``. With ``root``, record ids
    are the records' paths relative to it (``mitdb/100``; windows add ``:<sample>``), and two
    records of one name in two folders are refused naming both (their patient id comes from the name).
    """
    if kind not in ("beats", "rhythm"):
        raise ValueError(f"kind must be 'beats' or 'rhythm', got {kind!r}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    records = [Path(r) for r in records]
    if root is not None:
        check_unique_names(records, name=lambda p: p.name, why="the patient id comes from the record name, so the "
                           "two would be one patient: rename one, or open each folder on its own")
    items = [(r, relative_id(r, root) if root is not None else None) for r in records]
    sources = [f for files in record_files(records).values() for f in files]  # one listing per folder

    def build():
        report: dict = {"skipped": [], "records": []}
        cut = beat_windows if kind == "beats" else rhythm_windows
        read_one = partial(_windows_with_report, cut, channels, window_args)
        windows = list(split_reports(read_all(read_one, items, workers=workers, progress=progress,
                                              desc=f"{kind} windows", on_error=on_error, skipped=report["skipped"]),
                                     report["records"]))
        if kind == "rhythm" and report["records"]:
            report["dropped"] = _warn_rhythm_losses(report["records"], window_args.get("window_s", 10.0))
        return check_same_rate(windows, on_error, report["skipped"]), report

    return cached_load(f"annotated_{kind}", sources, f"{kind};{channels};{sorted(window_args.items())};{on_error}"
                       + (";ids=relative" if root is not None else ""), cache_dir, build)


def _warn_rhythm_losses(records: list[dict], window_s: float) -> dict:
    """:func:`summarise_rhythm_report`, with a warning when whole episodes or unannotated stretches were left out."""
    summary = summarise_rhythm_report(records, window_s)
    lost = [f"{e['intervals']} {r} episode(s) ({e['seconds']:.1f} s) shorter than a window"
            for r, e in summary["short_intervals"].items()]
    if summary["unannotated_s"]:
        lost.append(f"{summary['unannotated_s']:.1f} s before the first rhythm annotation (default_rhythm=None)")
    if lost:
        warnings.warn(f"rhythm windows left out {'; '.join(lost)}; see cache.report['dropped']",
                      stacklevel=5)  # the caller of load_annotated (through cached_load and its build)
    return summary


def _windows_with_report(cut, channels, window_args, item):
    record, record_id = item
    counts: list = []
    windows = cut(record, channels=channels, report=counts, record_id=record_id, **window_args)
    return [*windows, *counts]
