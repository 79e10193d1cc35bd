"""PhysioNet/CinC Challenge 2017 (AF classification from a short single-lead ECG): ``training2017/``.

Layout, as PhysioNet publishes it (``training2017.zip``): one record per pair ``A00001.hea`` +
``A00001.mat``. The ``.mat`` is a MAT v4 file (a 20-byte header and the name ``val``, then int16
samples ``val [1, T]``) that the header describes as WFDB format ``16+24`` (int16 after a
24-byte offset), 1000 adu/mV, 300 Hz, one signal named ``ECG``; records last 9 to 61 s (30 s
for 5,977 of the 8,528). The AliveCor device records between the two hands, a lead-I-like
lead, so the signal is named ``I`` here and mixes with lead I of 12-lead sources (PTB-XL).

Labels come from a reference table, one ``record,class`` line per record, with class ``N``
(normal sinus rhythm), ``A`` (atrial fibrillation), ``O`` (other rhythm) or ``~`` (too noisy
to classify). The challenge relabelled the training set after release; the files seen:

==========================  =====  ===  =====  ===  ==============================================
file                        N      A    O      ~    where
==========================  =====  ===  =====  ===  ==============================================
``REFERENCE-v3.csv``        5,076  758  2,415  279  PhysioNet, beside ``training2017.zip`` (final)
``REFERENCE.csv``           5,050  738  2,456  284  inside ``training2017/``
``REFERENCE-original.csv``  5,154  771  2,557  46   inside ``training2017/`` (the first release, v1)
==========================  =====  ===  =====  ===  ==============================================

(counts of the copies read here; ``REFERENCE.csv`` differs from v3 on 148 records). A header
row (a first line whose record field holds no digit, e.g. ``data_source,class``) is skipped.
The challenge gives no patient ids: each record is its own patient.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from .cache import ON_ERROR, WaveformCache, cached_load, read_all
from .recording import LoaderError, Recording
from .transforms import resample
from .wfdb_dir import read_wfdb

__all__ = ["CINC2017_CLASSES", "LABEL_FILES", "find_reference", "read_reference", "read_cinc2017",
           "load_cinc2017", "records_folder"]

# class letter -> its 0/1 label column
CINC2017_CLASSES = {"N": "normal", "A": "af", "O": "other", "~": "noisy"}
# labels= version -> the reference files that hold it, in order of preference
LABEL_FILES = {"v3": ("REFERENCE-v3.csv",), "reference": ("REFERENCE.csv",),
               "v1": ("REFERENCE-v1.csv", "REFERENCE-original.csv")}
WINDOWS = ("first", "all")
_RECORD = re.compile(r"[A-Za-z0-9_\-]+")


def records_folder(root: str | Path) -> Path:
    """The folder holding the records: ``root`` itself, or its ``training2017/`` sub-folder."""
    root = Path(root)
    if root.is_dir() and not any(root.glob("*.hea")) and (root / "training2017").is_dir():
        return root / "training2017"
    return root


def find_reference(root: str | Path, labels: str = "auto") -> Path:
    """The reference table for ``labels``: ``v3``, ``reference`` (``REFERENCE.csv``), ``v1``, ``auto``
    (the first of v3, reference, v1 present) or a file name (relative to the records folder or ``root``).
    Files are looked for in the records folder, then in ``root`` (PhysioNet keeps REFERENCE-v3.csv
    beside the zip)."""
    root = Path(root)
    folders = list(dict.fromkeys([records_folder(root), root]))
    names = (LABEL_FILES["v3"] + LABEL_FILES["reference"] + LABEL_FILES["v1"] if labels == "auto"
             else LABEL_FILES.get(labels, (labels,)))
    for name in names:
        for folder in folders:
            if (folder / name).is_file():
                return folder / name
    wanted = " or ".join(names)
    hint = (f"; labels= takes {', '.join(['auto', *LABEL_FILES])} or a file name" if labels not in LABEL_FILES
            and labels != "auto" else "")
    raise LoaderError(folders[0], f"no reference table {wanted} (labels={labels}){hint}")


def read_reference(path: str | Path) -> dict[str, str]:
    """``{record: class letter}`` from a reference table, in file order; a header row is skipped.

    A line that is not ``record,class``, a class other than N/A/O/~, a record listed twice and a
    table without records raise a :class:`LoaderError` naming the file and the line."""
    path = Path(path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        raise LoaderError(path, f"cannot read the reference table: {err}") from err
    out: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        fields = [f.strip() for f in line.strip().split(",")]
        if fields == [""]:
            continue
        if len(fields) != 2 or not _RECORD.fullmatch(fields[0]):
            raise LoaderError(path, f"line {number}: {line.strip()!r} is not 'record,class'")
        record, cls = fields
        if not out and number == 1 and not any(c.isdigit() for c in record):
            continue  # a header row such as data_source,class
        if cls not in CINC2017_CLASSES:
            raise LoaderError(path, f"line {number}: class {cls!r} of record {record} is not one of "
                                    f"{', '.join(CINC2017_CLASSES)}")
        if record in out:
            raise LoaderError(path, f"line {number}: record {record} is listed twice")
        out[record] = cls
    if not out:
        raise LoaderError(path, "lists no record")
    return out


def read_cinc2017(hea: str | Path, cls: str, *, fs: float | None = None, length_s: float = 30.0,
                  windows: str = "first") -> list[Recording]:
    """One challenge record as fixed-length :class:`Recording` windows of ``length_s`` seconds, in mV.

    The single lead is named ``I``; ``fs`` resamples first. ``windows="first"``: the first
    ``length_s`` seconds (record id = the record); ``"all"``: every whole non-overlapping window
    (record id ``<record>:<start sample>``), the tail shorter than a window left out. A record
    shorter than one window gives one window, zero-padded at the end. Labels: ``class``, the
    0/1 columns ``normal``, ``af``, ``other``, ``noisy``, ``duration_s`` (the whole record) and
    ``valid_s`` (seconds of the window that are signal, not padding)."""
    if windows not in WINDOWS:
        raise ValueError(f"windows must be one of {WINDOWS}, got {windows!r}")
    hea = Path(hea)
    name = hea.stem
    rec = read_wfdb(hea, patient_id=name, record_id=name)
    if rec.n_channels != 1:
        raise LoaderError(hea, f"has {rec.n_channels} signals {list(rec.channels)}; a CinC 2017 record has one")
    duration = rec.duration_s
    if fs is not None:
        rec = resample(rec, float(fs))
    size = int(round(length_s * rec.fs))
    if size < 1:
        raise ValueError(f"length_s={length_s} gives no sample at {rec.fs:g} Hz")
    labels = {"class": cls, **{col: int(cls == letter) for letter, col in CINC2017_CLASSES.items()},
              "duration_s": round(duration, 4)}
    starts = range(0, rec.n_samples - size + 1, size) if windows == "all" else [0]
    out = []
    for start in starts if len(starts) else [0]:
        part = rec.signal[:, start:start + size]
        valid = part.shape[1]
        if valid < size:
            part = np.pad(part, ((0, 0), (0, size - valid)))
        out.append(replace(rec, signal=part, channels=("I",),
                           record_id=name if windows == "first" else f"{name}:{start}",
                           labels={**labels, "window_start": int(start), "valid_s": round(valid / rec.fs, 4)}))
    return out


def _read_one(fs, length_s, windows, item) -> list[Recording]:
    hea, cls = item
    return read_cinc2017(hea, cls, fs=fs, length_s=length_s, windows=windows)


def load_cinc2017(root: str | Path, labels: str = "auto", cache_dir: str | Path | None = None, *,
                  fs: float | None = None, length_s: float = 30.0, windows: str = "first", on_error: str = "raise",
                  progress: bool = True, workers: int = 0) -> WaveformCache:
    """Every record of the reference table (:func:`find_reference`) as windows (:func:`read_cinc2017`) in one cache.

    ``root`` is ``training2017/`` or the folder holding it. A record listed but missing (its
    ``.hea`` or ``.mat``) or unreadable raises naming the file, or with ``on_error="skip"`` is
    left out and listed in ``cache.report["skipped"]``; records on disk that the table does not
    list are left out with a warning (``cache.report["unlisted"]``). The cache (default
    ``default_cache_dir("cinc2017", fingerprint)``) is keyed by the content of the table and
    of every listed record, and by the options."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if windows not in WINDOWS:
        raise ValueError(f"windows must be one of {WINDOWS}, got {windows!r}")
    if not length_s or float(length_s) <= 0:
        raise ValueError(f"length_s must be a positive number of seconds (records last 9-61 s), got {length_s!r}")
    folder = records_folder(root)
    reference = find_reference(root, labels)
    table = read_reference(reference)
    skipped: list = []
    items, sources = [], [reference]
    on_disk = {e.name for e in os.scandir(folder) if e.is_file()}  # one listing, not a stat per file
    for record, cls in table.items():
        missing = [name for name in (f"{record}.hea", f"{record}.mat") if name not in on_disk]
        if missing:
            err = LoaderError(folder / missing[0], f"record {record} is listed in {reference.name} but this file is "
                                                   "missing")
            if on_error == "raise":
                raise err
            skipped.append({"path": err.path, "problem": err.problem})
            continue
        base = os.path.join(folder, record)  # text, not Path: 17k paths per open
        items.append((base + ".hea", cls))
        sources += [base + ".hea", base + ".mat"]
    unlisted = sorted(n[:-4] for n in on_disk if n.endswith(".hea") and n[:-4] not in table)
    if unlisted:
        warnings.warn(f"{len(unlisted)} record(s) in {folder} are not in {reference.name} and are left out "
                      f"(first: {unlisted[0]}); see cache.report['unlisted']", stacklevel=2)

    def build():
        recs = read_all(partial(_read_one, fs, float(length_s), windows), items, workers=workers, progress=progress,
                        desc=f"reading {folder.name}", on_error=on_error, skipped=skipped)
        return recs, {"skipped": skipped, "unlisted": unlisted, "reference": reference.name}

    return cached_load("cinc2017", sources, f"cinc2017;{reference.name};fs={fs};length_s={float(length_s)};"
                       f"windows={windows};on_error={on_error}", cache_dir, build, root=folder)
