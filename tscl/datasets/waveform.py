"""Waveform sources (ECG, EEG): every published layout becomes a :class:`WaveformDataset` over a memmap cache.

=============  ===========================================================================
``wfdb``       any folder of WFDB records + a metadata table (``patient_id``, ``record_id``, ...)
``ptbxl``      PTB-XL as PhysioNet publishes it (records100/ or records500/, label tables, strat_fold)
``cinc``       PhysioNet/CinC 2020/2021 ``.hea``/``.mat`` with SNOMED ``# Dx``
``annotated``  MIT-BIH / SVDB / CPSC-style records with ``.atr``: beat or rhythm windows (its own module,
               :mod:`tscl.datasets.annotated`)
``edf``        a folder of EDF(+) files: fixed-length epochs, 10-20 channel names; patient = file stem
``eegmat``     EEGMAT (``SubjectNN_1.edf`` rest, ``SubjectNN_2.edf`` mental arithmetic): epochs, ``task``
=============  ===========================================================================

``normalize="zscore"`` standardises each channel of each item over time when the item is
fetched, so pretraining, ``embed`` and the probes see the same input; EEG sources default to it
(µV amplitudes differ by electrode and subject), ECG sources to ``none`` (mV is meaningful).
``normalize="patient"`` standardises each channel over all items of the item's patient instead
(statistics computed once when the dataset opens, from that patient's own items, no labels), so
differences in power between one patient's items survive; a subset keeps the statistics of the
dataset it was cut from.

Downstream tasks (:mod:`tscl.tasks`, run by :func:`tscl.probes.evaluate`) on these sources' label columns:

- ``ptbxl-superdiagnostic``, ``-subdiagnostic``, ``-form``, ``-rhythm``: every code column of the task
  (``super:*`` ...) on the ECGs some label source lists for it (``has:<task>``), strat_fold 1-8 train,
  9 chooses the probe's strength, 10 tests (Strodthoff et al. 2020); ``ptbxl-superclass`` is the
  superclasses ``NORM`` ... ``HYP`` from every label source; ``ptbxl-afib``, AF (``rhythm:AFIB``) against
  every other rhythm statement, folds 9 and 10 testing; ``ptbxl-sex`` (``female``) and ``ptbxl-age`` (years,
  ridge regression);
- ``eegmat-task``: rest (``task`` 0) vs mental arithmetic (1), 10 s epochs at 100 Hz, z-scored per channel;
- ``sim-risk``: the six risk labels of a cohort written by ``tscl simulate`` / ``tscl demo``, its split.
"""
from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tscl.loaders import LoaderError, edf_epochs, load_cinc, load_eegmat, load_ptbxl, load_wfdb_cohort
from tscl.loaders.cache import ON_ERROR, cached_load, read_all
from tscl.loaders.edf import EEG_1020
from tscl.loaders.identity import check_unique, check_unique_names, clean_ids, csv_line, relative_id
from tscl.loaders.ptbxl import PTBXL_LEADS, SUPERCLASSES
from tscl.simulate import CONDITIONS
from tscl.tasks import register_task

from . import Dataset, declare_source, hash_split_column

__all__ = ["WaveformDataset", "NORMALIZE", "cache_notes", "patient_channel_stats"]

NORMALIZE = ("none", "zscore", "patient")


class WaveformDataset(Dataset):
    """Items of a :class:`~tscl.loaders.WaveformCache` (all of one shape ``[C, T]``) as ``[B, C, T]`` batches."""

    modality = "waveform"

    def __init__(self, cache, *, normalize: str = "none", source: dict | None = None, index=None,
                 notes: dict | None = None, patient_stats: dict | None = None):
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        if index is None:  # a subset passes its rows of the parent's index, split column included
            # where a recording's bytes lie is the cache's business (cache.index keeps it), not the dataset's
            index = cache.index.drop([c for c in ("shard", "encoding") if c in cache.index.columns])
            if "split" not in index.columns:
                index = index.with_columns(hash_split_column(index["patient_id"]))
            notes = {**cache_notes(cache.report), **(notes or {})}
        super().__init__(index, source=source, notes=notes)
        self.cache, self.normalize = cache, normalize
        self._signals = cache.stack()
        self._patient_stats = self._row_patients = None
        if normalize == "patient":  # a subset passes its parent's statistics
            self._row_patients = index["patient_id"].to_numpy()
            self._patient_stats = patient_stats or patient_channel_stats(self._signals, self._row_patients)

    @property
    def in_channels(self) -> int:
        return int(self.index["n_channels"][0])

    @property
    def info(self) -> dict:
        return {**super().info, "channels": self.index["channels"][0].split(","), "fs": float(self.index["fs"][0]),
                "n_samples": int(self.index["n_samples"][0]), "normalize": self.normalize}

    @property
    def fingerprint(self) -> str:
        return self.cache.fingerprint

    def fetch(self, rows) -> torch.Tensor:
        rows = np.asarray(rows)
        order = np.argsort(rows, kind="stable")  # sorted reads are sequential in the shards
        x = np.ascontiguousarray(self._signals[rows[order]], dtype=np.float32)
        x = torch.from_numpy(x)[torch.from_numpy(np.argsort(order))]
        if self.normalize == "patient":
            pids = self._row_patients[rows]
            mean = torch.from_numpy(np.stack([self._patient_stats[p][0] for p in pids]))[:, :, None]
            std = torch.from_numpy(np.stack([self._patient_stats[p][1] for p in pids]))[:, :, None]
            return (x - mean) / (std + 1e-6)
        return zscore(x) if self.normalize == "zscore" else x

    def array(self) -> np.ndarray:
        """Every item as one ``[N, C, T]`` array, normalised as ``fetch`` does (for embedding and probes)."""
        if self.normalize == "none":
            return self._signals
        return np.concatenate([self.fetch(np.arange(s, min(s + 512, len(self)))).numpy()
                               for s in range(0, len(self), 512)]) if len(self) else np.zeros((0, 0, 0), np.float32)

    def _take(self, rows):
        return WaveformDataset(self.cache.subset(rows), normalize=self.normalize, source=self.source,
                               index=self.index[rows] if len(rows) else self.index.clear(),
                               patient_stats=self._patient_stats)


def cache_notes(report: dict) -> dict:
    """A cache's build report as dataset notes: what was left out, as listed there (``skipped``, ``unlisted``,
    ``dropped_nan``, ``quality``, ...), with the per-file window counts (``records``) summed up (``windows``),
    and windows left out for NaN counted under ``left_out``."""
    notes = {k: v for k, v in report.items() if k != "records"}
    records = [r for r in report.get("records") or [] if isinstance(r, dict)]
    if records:
        keys = ("kept", "dropped_nan", "dropped_edge", "beats")
        notes["windows"] = {"files": len(records), **{k: int(sum(r.get(k, 0) for r in records)) for k in keys
                                                      if any(k in r for r in records)}}
        nan = notes["windows"].get("dropped_nan", 0)
        if nan:
            notes["left_out"] = {**notes.get("left_out", {}), "windows holding NaN samples": nan}
    dropped = report.get("dropped") or {}  # rhythm windows: whole episodes and unannotated stretches
    episodes = sum(e.get("intervals", 0) for e in (dropped.get("short_intervals") or {}).values())
    unannotated = int(round(dropped.get("unannotated_s", 0)))
    losses = {"rhythm episodes shorter than one window": episodes,
              "s before the first rhythm annotation (default_rhythm=None)": unannotated}
    if any(losses.values()):
        notes["left_out"] = {**notes.get("left_out", {}), **{k: v for k, v in losses.items() if v}}
    return notes


def patient_channel_stats(signals, patient_ids, block: int = 256) -> dict:
    """``{patient: (mean [C], std [C])}`` of each channel over every sample of every item of the patient
    (``signals [N, C, T]``, read ``block`` items at a time)."""
    pids = np.asarray(patient_ids)
    stats = {}
    for p in np.unique(pids):
        rows = np.flatnonzero(pids == p)
        total = total_sq = 0.0
        for start in range(0, len(rows), block):
            x = np.asarray(signals[rows[start:start + block]], dtype=np.float64)
            total = total + x.sum(axis=(0, 2))
            total_sq = total_sq + np.square(x).sum(axis=(0, 2))
        n = len(rows) * signals.shape[-1]
        mean = total / n
        std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0))
        stats[p] = (mean.astype(np.float32), std.astype(np.float32))
    return stats


def zscore(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each channel of each item minus its mean over time, over its standard deviation."""
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True)
    return (x - mean) / (std + eps)


def _cache_dir(cache: Path | None, name: str, root: Path, **options) -> Path | None:
    """``None`` (the loader's own per-user folder, keyed by the sources' content) unless ``--cache`` names a
    folder; there, one sub-folder per source, root and options."""
    if cache is None:
        return None
    key = hashlib.sha256(f"{root.resolve()}|{sorted(options.items())}".encode()).hexdigest()[:16]
    return Path(cache) / f"{name}-{key}"


_COMMON = {"normalize": "none | zscore | patient: per-channel standardisation of each item, or over all items "
                        "of its patient (default: none for ECG, zscore for EEG)",
           "on_error": "raise | skip: an unreadable record stops the load, or is left out and listed in the report"}


@declare_source("wfdb", "waveform", "a folder of WFDB records (.hea + signal files) and a metadata table with "
                 "patient_id and record_id columns (optional path, visit_time, split, label columns)",
                 options={**_COMMON, "metadata": "the metadata table (default <root>/metadata.csv)",
                          "nan_policy": "fail | interpolate | drop"})
def _wfdb(root: Path, *, cache=None, progress=True, metadata=None, normalize="none", on_error="raise",
          nan_policy="fail"):
    c = load_wfdb_cohort(root, metadata, cache_dir=_cache_dir(cache, "wfdb", root, metadata=metadata,
                                                               on_error=on_error, nan_policy=nan_policy),
                         progress=progress, on_error=on_error, nan_policy=nan_policy)
    return WaveformDataset(c, normalize=normalize)


@declare_source("ptbxl", "waveform", "PTB-XL as PhysioNet publishes it: records100/ (or records500/) and "
                 "ptbxl_database.csv + scp_statements.csv and/or labels/ptbxl_<task>_<part>.csv label tables; "
                 "split from strat_fold (1-8 train, 9 val, 10 test)",
                 options={**_COMMON, "rate": "100 or 500 (Hz): records100/ or records500/",
                          "channels": "lead(s) to keep by name: I, or a list such as [\"I\",\"V1\"] (default: all 12, I..V6)"})
def _ptbxl(root: Path, *, cache=None, progress=True, rate=100, normalize="none", on_error="raise", channels=None):
    leads = _leads(channels, PTBXL_LEADS)
    chosen = {"channels": leads} if leads != tuple(PTBXL_LEADS) else {}  # the default keeps its cache folder name
    c = load_ptbxl(root, rate=int(rate), cache_dir=_cache_dir(cache, "ptbxl", root, rate=rate, on_error=on_error,
                                                               **chosen),
                   on_error=on_error, progress=progress, channels=leads)
    return WaveformDataset(c, normalize=normalize)


def channel_names(channels) -> list[str] | None:
    """A ``channels`` option (text ``"I,V1"`` or a list) as its non-empty names; None when it selects none
    (``None``, ``""`` or ``"all"``: every channel)."""
    if channels in (None, "", "all"):
        return None
    return [n for n in (str(c).strip() for c in (channels.split(",") if isinstance(channels, str) else channels)) if n]


def _leads(channels, known) -> tuple:
    """``channels`` (text ``"I,V1"`` or a list) as a tuple of names among ``known`` (None: all of them); an unknown
    or repeated name is refused naming the known ones (``aVR`` and ``AVR`` are one lead)."""
    names = channel_names(channels)
    if names is None:
        return tuple(known)
    by_key = {k.lower(): k for k in known}
    picked = [by_key.get(n.lower()) for n in names]
    bad = [n for n, k in zip(names, picked) if k is None]
    if bad or not picked or len(set(picked)) != len(picked):
        why = f"{bad[0]!r} is not a lead" if bad else "no lead named" if not picked else "a lead is named twice"
        raise ValueError(f"channels {channels!r}: {why}; the leads: {','.join(known)}")
    return tuple(picked)


@declare_source("cinc", "waveform", "PhysioNet/CinC 2020/2021 records: .hea + .mat with '# Dx:' SNOMED codes "
                 "(any folder depth)", options={**_COMMON})
def _cinc(root: Path, *, cache=None, progress=True, normalize="none", on_error="raise"):
    c = load_cinc(root, cache_dir=_cache_dir(cache, "cinc", root, on_error=on_error), on_error=on_error,
                  progress=progress)
    return WaveformDataset(c, normalize=normalize)


@declare_source("eegmat", "waveform", "EEGMAT: SubjectNN_1.edf (rest) and SubjectNN_2.edf (mental arithmetic), "
                 "EDF+, 19 10-20 channels; label 'task'",
                 options={**_COMMON, "epoch_s": "epoch length in s (30)",
                          "fs": "resample every file to this rate in Hz first (default: as recorded, 500)"})
def _eegmat(root: Path, *, cache=None, progress=True, epoch_s=30.0, normalize="zscore", on_error="raise", fs=None):
    fs = float(fs) if fs is not None else None
    c = load_eegmat(root, cache_dir=_cache_dir(cache, "eegmat", root, epoch_s=epoch_s, on_error=on_error, fs=fs),
                    epoch_s=float(epoch_s), fs=fs, on_error=on_error, progress=progress)
    below = [{"path": str(p), "problem": "in a subfolder; the EEGMAT layout is one folder of SubjectNN_K.edf files, "
                                        "so it is left out"} for p in sorted(root.rglob("*.edf")) if p.parent != root]
    return WaveformDataset(c, normalize=normalize, notes={"unlisted": below} if below else None)


@declare_source("edf", "waveform", "a folder of EDF(+) files (any names, any depth; patient = file stem, record = "
                 "path), or with a metadata.csv of 'file', 'patient_id' and label columns",
                 options={**_COMMON, "epoch_s": "epoch length in s (30)",
                          "channels": "comma-separated channel names to keep (default: the 19 10-20 EEG channels)"})
def _edf(root: Path, *, cache=None, progress=True, epoch_s=30.0, normalize="zscore", on_error="raise",
         channels=None):
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    files = sorted(root.rglob("*.edf"))
    meta = root / "metadata.csv"
    rows, left_out = _edf_rows(root, files, meta, on_error) if meta.exists() else (_edf_plain_rows(root, files), {})
    if not rows:
        raise FileNotFoundError(f"{root}: no .edf file" + (f" listed in {meta.name} was found" if meta.exists() else ""))
    chans = tuple(channels.split(",")) if isinstance(channels, str) else tuple(channels or EEG_1020)

    def build():
        report: dict = {"skipped": list(left_out.get("skipped", [])), "unlisted": left_out.get("unlisted", []),
                        "records": []}
        recs = read_all(partial(_edf_file, float(epoch_s), chans, report["records"]), rows, progress=progress,
                        desc=f"reading {root.name}", on_error=on_error, skipped=report["skipped"])
        return recs, report

    # files left out are in the fingerprint too, so the cache's report (what was left out) is never stale
    sources = [r[0] for r in rows] + [Path(u["path"]) for u in left_out.get("unlisted", [])] + \
        ([meta] if meta.exists() else [])
    c = cached_load("edf", sources, f"edf;{epoch_s};{chans};{on_error};ids-v2",
                    _cache_dir(cache, "edf", root, epoch_s=epoch_s, channels=chans, on_error=on_error), build, root=root)
    return WaveformDataset(c, normalize=normalize)


def _edf_plain_rows(root: Path, files: list[Path]) -> list[tuple]:
    """``(file, patient = stem, record = relative path, {})`` per file; one stem in two folders is refused."""
    check_unique_names(files, why="without a metadata.csv the patient id is the file's stem, so the two would be one "
                       "patient: rename one, or give a metadata.csv with a patient_id per file")
    return [(f, f.stem, relative_id(f, root), {}) for f in files]


def _edf_rows(root: Path, files: list[Path], meta: Path, on_error: str) -> tuple[list[tuple], dict]:
    """The rows of ``metadata.csv`` as ``(file, patient_id, record id, labels)``, and what is left out.

    ``file`` is a path relative to the root, or a bare file name matching exactly one file under it
    (two matches are refused naming both). A listed file that is absent is refused, or left out
    with ``on_error="skip"``; files on disk that no row lists are left out and listed (``unlisted``)."""
    try:
        table = pl.read_csv(meta, infer_schema=False)  # ids stay text
    except Exception as err:
        raise LoaderError(meta, f"cannot read csv: {type(err).__name__}: {err}") from err
    if not {"file", "patient_id"} <= set(table.columns):
        raise LoaderError(meta, f"needs 'file' and 'patient_id' columns; has {table.columns}")
    names = clean_ids(table["file"].to_list(), meta, "file")
    patients = clean_ids(table["patient_id"].to_list(), meta, "patient_id")
    by_name: dict[str, list[Path]] = {}
    for f in files:
        by_name.setdefault(f.name, []).append(f)
    paths = [_edf_listed_file(root, name, by_name, meta, csv_line(i)) for i, name in enumerate(names)]
    missing = [{"path": str(root / n), "problem": f"listed in {meta.name} ({csv_line(i)}) but not found"}
               for i, (n, p) in enumerate(zip(names, paths)) if p is None]
    if missing and on_error == "raise":
        raise LoaderError(missing[0]["path"], f"{missing[0]['problem']}; {len(missing)} of {len(names)} listed file(s) "
                                              "missing (on_error=skip leaves them out, listed)")
    kept = [i for i, p in enumerate(paths) if p is not None]
    check_unique([str(paths[i].resolve()) for i in kept], meta, "file", lambda k: csv_line(kept[k]),
                 "is listed twice; one recording would become two records")
    extra = [c for c in table.columns if c not in ("file", "patient_id")]
    labels = table.select(extra).to_dicts() if extra else [{}] * table.height
    rows = [(paths[i], patients[i], relative_id(paths[i], root), {c: _number(v) for c, v in labels[i].items()})
            for i in kept]
    listed = {paths[i].resolve() for i in kept}
    unlisted = [{"path": str(f), "problem": f"on disk but listed in no row of {meta.name} (no patient_id); left out"}
                for f in files if f.resolve() not in listed]
    return rows, {"skipped": missing, "unlisted": unlisted}


def _edf_listed_file(root: Path, name: str, by_name: dict, meta: Path, line: str) -> Path | None:
    """The file a metadata row names: ``root/name``, else the one file of that name under the root; None if absent."""
    if (root / name).is_file():
        return root / name
    matches = by_name.get(name, []) if "/" not in name else []
    if len(matches) > 1:
        raise LoaderError(meta, f"{line}: file {name!r} matches {matches[0]} and {matches[1]}; give its path "
                                f"relative to {root}")
    return matches[0] if matches else None


def _edf_file(epoch_s, channels, counts, item):
    path, patient, record, labels = item
    return edf_epochs(path, epoch_s=epoch_s, channels=channels, patient_id=str(patient), labels=labels, report=counts,
                      record_id=record)


def _number(text):
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except (TypeError, ValueError):
        return text


# --- downstream tasks on these sources' label columns ----------------------------------------------------

_PTBXL_FITS = {"in_channels": 12, "fs": 100}  # records100/: 12 leads at 100 Hz
register_task("ptbxl-superclass", "ptbxl", SUPERCLASSES, "multilabel", options={"on_error": "skip"},
              source_column="device", fits=_PTBXL_FITS, description="PTB-XL diagnostic superclasses from every label source (tables and "
              "database), multi-label; strat_fold 1-8 train, 9 validation, 10 test")
for _task, _prefix, _what in (("superdiagnostic", "super", "superclasses"), ("subdiagnostic", "sub", "subclasses"),
                              ("form", "form", "form statements"), ("rhythm", "rhythm", "rhythm statements")):
    register_task(f"ptbxl-{_task}", "ptbxl", (f"{_prefix}:*",), "multilabel", options={"on_error": "skip"},
                  rows={f"has:{_prefix}": [1]}, source_column="device", fits=_PTBXL_FITS,
                  description=f"PTB-XL {_what} (every {_prefix}: column) on the ECGs listed for the task, multi-label; "
                              "strat_fold 1-8 train, 9 validation, 10 test")
register_task("ptbxl-afib", "ptbxl", ("rhythm:AFIB",), "binary", options={"on_error": "skip"},
              rows={"has:rhythm": [1]}, test_splits=("val", "test"), source_column="device",
              description="PTB-XL atrial fibrillation (rhythm:AFIB) against every other rhythm statement, on the ECGs "
                          "with a rhythm statement; strat_fold 1-8 train, 9 and 10 test (fold 10 alone holds few AF "
                          "ECGs)")
register_task("ptbxl-sex", "ptbxl", ("female",), "binary", options={"on_error": "skip"}, source_column="device",
              fits=_PTBXL_FITS, description="PTB-XL sex (female) from the ECG; strat_fold split")
register_task("ptbxl-age", "ptbxl", ("age",), "regression", options={"on_error": "skip"}, source_column="device",
              fits=_PTBXL_FITS, description="PTB-XL age in years (ages above 89 are unknown), ridge regression; strat_fold split")
register_task("eegmat-task", "eegmat", ("task",), "binary", options={"epoch_s": 10, "fs": 100},
              fits={"in_channels": 19}, description="EEGMAT rest vs mental arithmetic, 10 s epochs at 100 Hz z-scored per channel; the source's "
                          "subject split (hash of the subject)")
register_task("sim-risk", "wfdb", CONDITIONS, "multilabel", fits={"in_channels": 12},
              description="simulated cohort (tscl simulate / tscl demo; the root is the cohort folder): the six risk "
                          "labels, multi-label, its split column (test patients are never pretrained on)")
