"""Waveform sources (ECG, EEG): every published layout becomes a :class:`WaveformDataset` over a memmap cache.

=============  ===========================================================================
``wfdb``       any folder of WFDB records + a metadata table (``patient_id``, ``record_id``, ...)
``ptbxl``      PTB-XL as PhysioNet publishes it (records100/ or records500/, label tables, strat_fold)
``cinc``       PhysioNet/CinC 2020/2021 ``.hea``/``.mat`` with SNOMED ``# Dx``
``annotated``  MIT-BIH / SVDB / CPSC-style records with ``.atr``: beat or rhythm windows
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
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import torch

from . import Dataset, hash_split, register_source

__all__ = ["WaveformDataset", "NORMALIZE", "patient_channel_stats"]

NORMALIZE = ("none", "zscore", "patient")


class WaveformDataset(Dataset):
    """Items of a :class:`~tscl.loaders.WaveformCache` (all of one shape ``[C, T]``) as ``[B, C, T]`` batches."""

    modality = "waveform"

    def __init__(self, cache, *, normalize: str = "none", source: dict | None = None, index=None,
                 patient_stats: dict | None = None):
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        if index is None:  # a subset passes its rows of the parent's index, split column included
            index = cache.index
            if "split" not in index.columns:
                index = index.with_columns(pl.Series("split", hash_split(index["patient_id"].to_list())))
        super().__init__(index, source=source)
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
        order = np.argsort(rows, kind="stable")  # sorted reads are sequential in the memmap
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
                               index=self.index[rows.tolist()] if len(rows) else self.index.clear(),
                               patient_stats=self._patient_stats)


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


@register_source("wfdb", "waveform", "a folder of WFDB records (.hea + signal files) and a metadata table with "
                 "patient_id and record_id columns (optional path, visit_time, split, label columns)",
                 options={**_COMMON, "metadata": "the metadata table (default <root>/metadata.csv)",
                          "nan_policy": "fail | interpolate | drop"})
def _wfdb(root: Path, *, cache=None, progress=True, metadata=None, normalize="none", on_error="raise",
          nan_policy="fail"):
    from tscl.loaders import load_wfdb_cohort

    c = load_wfdb_cohort(root, metadata, cache_dir=_cache_dir(cache, "wfdb", root, metadata=metadata,
                                                               on_error=on_error, nan_policy=nan_policy),
                         progress=progress, on_error=on_error, nan_policy=nan_policy)
    return WaveformDataset(c, normalize=normalize)


@register_source("ptbxl", "waveform", "PTB-XL as PhysioNet publishes it: records100/ (or records500/) and "
                 "ptbxl_database.csv + scp_statements.csv and/or labels/ptbxl_<task>_<part>.csv label tables; "
                 "split from strat_fold (1-8 train, 9 val, 10 test)",
                 options={**_COMMON, "rate": "100 or 500 (Hz): records100/ or records500/"})
def _ptbxl(root: Path, *, cache=None, progress=True, rate=100, normalize="none", on_error="skip"):
    from tscl.loaders import load_ptbxl

    c = load_ptbxl(root, rate=int(rate), cache_dir=_cache_dir(cache, "ptbxl", root, rate=rate, on_error=on_error),
                   on_error=on_error, progress=progress)
    return WaveformDataset(c, normalize=normalize)


@register_source("cinc", "waveform", "PhysioNet/CinC 2020/2021 records: .hea + .mat with '# Dx:' SNOMED codes "
                 "(any folder depth)", options={**_COMMON})
def _cinc(root: Path, *, cache=None, progress=True, normalize="none", on_error="raise"):
    from tscl.loaders import load_cinc

    c = load_cinc(root, cache_dir=_cache_dir(cache, "cinc", root, on_error=on_error), on_error=on_error,
                  progress=progress)
    return WaveformDataset(c, normalize=normalize)


@register_source("annotated", "waveform", "WFDB records with .atr annotations (MIT-BIH, SVDB, CPSC 2021): beat "
                 "windows (AAMI classes) or rhythm windows (AF)",
                 options={**_COMMON, "kind": "beats | rhythm",
                          "window_s": "rhythm window length in seconds (default 10)",
                          "default_rhythm": "rhythm of unannotated stretches (e.g. N); default: left out"})
def _annotated(root: Path, *, cache=None, progress=True, kind="beats", normalize="none", on_error="raise",
               window_s=10.0, default_rhythm=None):
    from tscl.loaders import load_annotated

    records = sorted(p.with_suffix("") for p in root.rglob("*.atr") if p.with_suffix(".hea").exists())
    if not records:
        raise FileNotFoundError(f"{root}: no record with both .hea and .atr")
    if kind not in ("beats", "rhythm"):
        raise ValueError(f"kind must be beats or rhythm, got {kind!r}")
    extra = {"window_s": float(window_s), "default_rhythm": default_rhythm} if kind == "rhythm" else {}
    c = load_annotated(records, kind=kind, cache_dir=_cache_dir(cache, "annotated", root, kind=kind, **extra),
                       on_error=on_error, progress=progress, **extra)
    return WaveformDataset(c, normalize=normalize)


@register_source("eegmat", "waveform", "EEGMAT: SubjectNN_1.edf (rest) and SubjectNN_2.edf (mental arithmetic), "
                 "EDF+, 19 10-20 channels; label 'task'",
                 options={**_COMMON, "epoch_s": "epoch length in s (30)",
                          "fs": "resample every file to this rate in Hz first (default: as recorded, 500)"})
def _eegmat(root: Path, *, cache=None, progress=True, epoch_s=30.0, normalize="zscore", on_error="raise", fs=None):
    from tscl.loaders import load_eegmat

    fs = float(fs) if fs is not None else None
    c = load_eegmat(root, cache_dir=_cache_dir(cache, "eegmat", root, epoch_s=epoch_s, on_error=on_error, fs=fs),
                    epoch_s=float(epoch_s), fs=fs, on_error=on_error, progress=progress)
    return WaveformDataset(c, normalize=normalize)


@register_source("edf", "waveform", "a folder of EDF(+) files (any names; patient = file stem), or with a "
                 "metadata.csv of 'file', 'patient_id' and label columns",
                 options={**_COMMON, "epoch_s": "epoch length in s (30)",
                          "channels": "comma-separated channel names to keep (default: the 19 10-20 EEG channels)"})
def _edf(root: Path, *, cache=None, progress=True, epoch_s=30.0, normalize="zscore", on_error="raise",
         channels=None):
    from functools import partial

    from tscl.loaders.cache import cached_load, read_all
    from tscl.loaders.edf import EEG_1020

    files = sorted(root.rglob("*.edf"))
    if not files:
        raise FileNotFoundError(f"{root}: no .edf file")
    patients, labels = {}, {}
    meta = root / "metadata.csv"
    if meta.exists():
        table = pl.read_csv(meta, infer_schema=False)  # ids stay text
        if not {"file", "patient_id"} <= set(table.columns):
            raise ValueError(f"{meta}: needs 'file' and 'patient_id' columns")
        patients = dict(zip(table["file"], table["patient_id"]))
        extra = [c for c in table.columns if c not in ("file", "patient_id")]
        labels = {r["file"]: {c: _number(r[c]) for c in extra} for r in table.iter_rows(named=True)}
    chans = tuple(channels.split(",")) if isinstance(channels, str) else tuple(channels or EEG_1020)
    key = {f: f.name if f.name in patients else str(f.relative_to(root)) for f in files}

    def build():
        report: dict = {"skipped": [], "records": []}
        items = [(f, patients.get(key[f], f.stem), labels.get(key[f], {})) for f in files]
        recs = read_all(partial(_edf_file, float(epoch_s), chans, report["records"]), items, progress=progress,
                        desc=f"reading {root.name}", on_error=on_error, skipped=report["skipped"])
        return recs, report

    c = cached_load("edf", files + ([meta] if meta.exists() else []), f"edf;{epoch_s};{chans};{on_error}",
                    _cache_dir(cache, "edf", root, epoch_s=epoch_s, channels=chans, on_error=on_error), build)
    return WaveformDataset(c, normalize=normalize)


def _edf_file(epoch_s, channels, counts, item):
    from tscl.loaders import edf_epochs

    path, patient, labels = item
    return edf_epochs(path, epoch_s=epoch_s, channels=channels, patient_id=str(patient), labels=labels, report=counts)


def _number(text):
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except (TypeError, ValueError):
        return text
