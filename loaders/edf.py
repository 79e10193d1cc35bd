"""EDF / EDF+ recordings (EEG), read with pyedflib, cut into fixed-length epochs.

Channel names are normalised to the 10-20 system (``"EEG Fp1"``, ``"FP1-REF"``, ``"fp1"`` ->
``"Fp1"``); other channels lose only a modality prefix (``"ECG ECG"`` -> ``"ECG"``, ``"EEG
A2-A1"`` -> ``"A2-A1"``). Samples stay in each channel's physical unit (EEG usually µV), listed
in ``Recording.units``. EDF+ annotation channels are read as annotations, not as signals.

EEGMAT (PhysioNet ``eegmat``): ``SubjectNN_1.edf`` is rest before the task, ``SubjectNN_2.edf``
mental arithmetic; the subject is the patient.
"""
from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pyedflib

from .cache import ON_ERROR, WaveformCache, cached_load, read_all
from .filters import split_reports
from .recording import LoaderError, Recording, apply_nan_policy
from .transforms import resample
from .windows import window_recording

__all__ = ["check_edf_layout", "normalise_eeg_channel", "read_edf", "read_edf_annotations", "edf_epochs",
           "load_eegmat", "EEG_1020", "eegmat_labels"]

EEG_1020 = ("Fp1", "Fp2", "F3", "F4", "F7", "F8", "T3", "T4", "C3", "C4", "T5", "T6", "P3", "P4", "O1", "O2",
            "Fz", "Cz", "Pz")
_1020_NAMES = {n.lower(): n for n in (*EEG_1020, "Fpz", "Oz", "T7", "T8", "P7", "P8", "A1", "A2", "M1", "M2",
                                      "AF3", "AF4", "AF7", "AF8", "AFz", "FC1", "FC2", "FC3", "FC4", "FC5", "FC6",
                                      "FCz", "FT7", "FT8", "CP1", "CP2", "CP3", "CP4", "CP5", "CP6", "CPz", "TP7",
                                      "TP8", "PO3", "PO4", "PO7", "PO8", "POz", "F1", "F2", "F5", "F6", "C1", "C2",
                                      "C5", "C6", "P1", "P2", "P5", "P6", "Iz", "Nz")}
_PREFIX = re.compile(r"^(eeg|ecg|ekg|eog|emg|resp)\s+", re.IGNORECASE)
_REF_SUFFIX = re.compile(r"-(ref|le|ar|avg|a1|a2|m1|m2)$", re.IGNORECASE)


def normalise_eeg_channel(name: str) -> str:
    """``"EEG Fp1"`` / ``"EEG FP1-REF"`` / ``"Fp1-A1"`` -> ``"Fp1"``; ``"ECG ECG"`` -> ``"ECG"``; the ear
    derivation ``"EEG A2-A1"`` -> ``"A2-A1"``; unknown names only lose the prefix."""
    bare = _PREFIX.sub("", name.strip())
    if bare.lower() in _1020_NAMES:
        return _1020_NAMES[bare.lower()]
    head = _REF_SUFFIX.sub("", bare)
    if head.lower() in _1020_NAMES and head.lower() not in ("a1", "a2", "m1", "m2"):  # A2-A1 is a derivation
        return _1020_NAMES[head.lower()]
    return bare


def _header_int(path: Path, raw: bytes, field: str) -> int:
    try:
        return int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise LoaderError(path, f"EDF header field '{field}' holds {raw!r}, not an integer") from None


def check_edf_layout(path: str | Path) -> int:
    """Check an EDF/EDF+ (or BDF) file's size against its header; return its number of data records.

    The header declares the number of data records (bytes 236-244) and each signal's samples per
    record; the file must hold exactly that many whole records after the header (EDF spec: -1,
    "unknown", is allowed only while a recording is being written). EDFlib, which pyedflib wraps,
    refuses a file shorter than its header says but reads a longer one only as far as the header
    says, silently; here both are refused, naming the file, the declared count and the count
    the file holds, as is a file ending inside a record, a header size that does not match its
    signal count, and an EDF+D (discontinuous) file, whose records are not contiguous in time."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(256)
            n_sig = _header_int(path, head[252:256], "number of signals") if len(head) == 256 else -1
            sig = f.read(max(n_sig, 0) * 240)
    except OSError as err:
        raise LoaderError(path, f"cannot read EDF file: {type(err).__name__}: {err.strerror or err}") from err
    if len(head) < 256 or n_sig < 1 or len(sig) < n_sig * 240:
        raise LoaderError(path, f"not an EDF file: {size} bytes, shorter than the header it must start with")
    bdf = head[:8] == b"\xffBIOSEMI"
    header_bytes = _header_int(path, head[184:192], "number of bytes in header record")
    declared = _header_int(path, head[236:244], "number of data records")
    if header_bytes != 256 * (n_sig + 1):
        raise LoaderError(path, f"EDF header declares {header_bytes} header bytes, but {n_sig} signals need "
                                f"{256 * (n_sig + 1)}")
    if head[192:197] == b"EDF+D":
        raise LoaderError(path, "EDF+D (discontinuous) recording: its data records are not contiguous in time, so "
                                "fixed-length epochs would straddle the gaps; convert it to EDF+C first")
    offset = n_sig * 216  # the signal fields come field by field; samples per record follow 216 bytes per signal
    per_record = sum(_header_int(path, sig[offset + 8 * i: offset + 8 * i + 8], f"samples of signal {i + 1}")
                     for i in range(n_sig)) * (3 if bdf else 2)
    data = size - header_bytes
    held, rest = divmod(data, per_record) if per_record > 0 else (0, data)
    if declared < 1:
        raise LoaderError(path, f"EDF header declares {declared} data records (-1 means a recording still being "
                                f"written); the file holds {held}")
    if rest:
        raise LoaderError(path, f"ends inside a data record: {data} bytes after the {header_bytes}-byte header are "
                                f"{held} records of {per_record} bytes and {rest} bytes more (the header declares "
                                f"{declared}); the file is cut or has bytes appended")
    if held != declared:
        raise LoaderError(path, f"EDF header declares {declared} data records but the file holds {held} "
                                f"({data} bytes after the header, {per_record} bytes per record); "
                                f"{'records would be left out' if held > declared else 'the file is cut short'}")
    return declared


def _open(path: Path) -> pyedflib.EdfReader:
    if not path.exists():
        raise LoaderError(path, "EDF file not found")
    check_edf_layout(path)
    try:
        return pyedflib.EdfReader(str(path))
    except Exception as err:  # pyedflib raises OSError with a description of the header problem
        raise LoaderError(path, f"cannot read EDF header: {type(err).__name__}: {err}") from err


def read_edf_annotations(path: str | Path) -> pl.DataFrame:
    """EDF+ annotations as ``onset_s``, ``duration_s`` (None when unspecified), ``text``."""
    path = Path(path)
    f = _open(path)
    try:
        onsets, durations, texts = f.readAnnotations()
    finally:
        f.close()
    return pl.DataFrame({"onset_s": np.asarray(onsets, dtype=np.float64),
                         "duration_s": [float(d) if d >= 0 else None for d in durations],
                         "text": [str(t) for t in texts]}, schema={"onset_s": pl.Float64, "duration_s": pl.Float64,
                                                                   "text": pl.Utf8})


def read_edf(path: str | Path, *, channels=None, patient_id: str | None = None, record_id: str | None = None,
             labels=None, nan_policy: str = "fail") -> Recording:
    """One EDF/EDF+ file as a :class:`Recording` (physical units per channel, 10-20 names).

    ``channels`` picks and orders channels by normalised name. Without it, every signal at the
    file's most common sampling rate is kept (annotation channels are never signals). The
    chosen channels must share one sampling rate.
    """
    path = Path(path)
    f = _open(path)
    try:
        raw_names = f.getSignalLabels()
        names = [normalise_eeg_channel(n) for n in raw_names]
        rates = [float(f.getSampleFrequency(i)) for i in range(f.signals_in_file)]
        if channels is not None:
            wanted = [normalise_eeg_channel(c) for c in channels]
            missing = [c for c in wanted if c not in names]
            if missing:
                raise LoaderError(path, f"missing channel(s) {missing}; file has {names}")
            idx = [names.index(c) for c in wanted]
        else:
            common = Counter(rates).most_common(1)[0][0]
            idx = [i for i, r in enumerate(rates) if r == common]
        fs = {rates[i] for i in idx}
        if len(fs) != 1:
            raise LoaderError(path, f"channels {[names[i] for i in idx]} have different sampling rates {sorted(fs)}")
        n = min(int(f.getNSamples()[i]) for i in idx)
        try:
            signal = np.stack([f.readSignal(i, 0, n) for i in idx]).astype(np.float32)
        except Exception as err:
            raise LoaderError(path, f"cannot read EDF samples: {type(err).__name__}: {err}") from err
        units = tuple(f.getPhysicalDimension(i).strip() for i in idx)
        start = f.getStartdatetime()
    finally:
        f.close()
    chosen = tuple(names[i] for i in idx)
    signal, quality = apply_nan_policy(signal, nan_policy, path, chosen)
    return Recording(signal=signal, fs=fs.pop(), channels=chosen, patient_id=str(patient_id or path.stem),
                     record_id=str(record_id or path.stem), start_time=start if isinstance(start, datetime) else None,
                     units=units, labels=dict(labels or {}), source=str(path), quality=quality)


def edf_epochs(path: str | Path, *, epoch_s: float = 30.0, stride_s: float | None = None, channels=None,
               patient_id: str | None = None, labels=None, annotation_labels: bool = True,
               nan_policy: str = "drop", report: list | None = None, record_id: str | None = None) -> list[Recording]:
    """Fixed-length epochs of an EDF file, each with ``labels`` and, with ``annotation_labels``,
    ``annotation`` = the text of the EDF+ annotation (with a duration) covering the epoch's
    midpoint, or None. The tail shorter than an epoch is left out and counted in ``report``.
    Epoch record ids are ``<record_id>:<first sample>`` (``record_id`` defaults to the file's stem)."""
    path = Path(path)
    rec = read_edf(path, channels=channels, patient_id=patient_id, labels=labels, record_id=record_id,
                   nan_policy="keep" if nan_policy == "drop" else nan_policy)
    epochs, rep = window_recording(rec, epoch_s, stride_s, nan_policy=nan_policy)
    if annotation_labels:
        ann = read_edf_annotations(path).filter(pl.col("duration_s").is_not_null() & (pl.col("duration_s") > 0))
        for ep in epochs:
            mid = (ep.labels["window_start"] + ep.n_samples / 2) / ep.fs
            hit = ann.filter((pl.col("onset_s") <= mid) & (mid < pl.col("onset_s") + pl.col("duration_s")))
            ep.labels["annotation"] = hit["text"][0] if hit.height else None
    if report is not None:
        report.append(rep.as_dict())
    return epochs


def eegmat_labels(path: str | Path) -> tuple[str, dict]:
    """``(subject, labels)`` from an EEGMAT file name ``SubjectNN_K.edf``: K=1 rest (task 0), K=2 arithmetic (task 1)."""
    path = Path(path)
    m = re.fullmatch(r"(Subject\d+)_([12])", path.stem)
    if not m:
        raise LoaderError(path, "EEGMAT file names look like SubjectNN_1.edf (rest) or SubjectNN_2.edf (task)")
    task = int(m.group(2) == "2")
    return m.group(1), {"task": task, "condition": "arithmetic" if task else "rest"}


def _eegmat_file(epoch_s, channels, fs, path):
    subject, labels = eegmat_labels(path)
    if fs is None:
        counts: list = []
        return [*edf_epochs(path, epoch_s=epoch_s, channels=channels, patient_id=subject, labels=labels,
                            annotation_labels=False, report=counts), *counts]
    rec = resample(read_edf(path, channels=channels, patient_id=subject, labels=labels), fs)
    epochs, rep = window_recording(rec, epoch_s, None, nan_policy="drop")
    return [*epochs, rep.as_dict()]


def load_eegmat(root: str | Path, cache_dir: str | Path | None = None, *, epoch_s: float = 30.0, channels=EEG_1020,
                fs: float | None = None, on_error: str = "raise", progress: bool = True,
                workers: int = 0) -> WaveformCache:
    """Every ``SubjectNN_1.edf`` (rest) / ``SubjectNN_2.edf`` (mental arithmetic) in ``root`` as epochs in one cache.

    That folder of files is the layout (PhysioNet ``eegmat``); a subject may have one file or both.
    Index labels: ``task`` (0 rest, 1 mental arithmetic), ``condition``, ``window_start``;
    ``patient_id`` is the subject (``Subject00``), ``record_id`` the file's epoch, ``source`` the
    file. Default channels: the 19 10-20 EEG leads (µV). ``fs`` resamples each file (polyphase,
    anti-aliased) before it is cut into epochs; None keeps the file's rate (500 Hz).
    ``cache.report["records"]`` counts epochs per file; ``["skipped"]`` the files left out.
    """
    root = Path(root)
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    files = sorted(root.glob("*.edf"))
    if not files:
        raise LoaderError(root, "no .edf files found")

    def build():
        report: dict = {"skipped": [], "records": []}
        items = read_all(partial(_eegmat_file, epoch_s, channels, fs), files, workers=workers, progress=progress,
                         desc="EEGMAT epochs", on_error=on_error, skipped=report["skipped"])
        return list(split_reports(items, report["records"])), report

    return cached_load("eegmat", files, f"eegmat;{epoch_s};{channels};{on_error}" + (f";fs={fs}" if fs else ""),
                       cache_dir, build, root=root)
