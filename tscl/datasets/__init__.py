"""Datasets as sources: files as their publishers lay them out -> one index and modality payloads.

A *source* (``ptbxl``, ``wfdb``, ``edf``, ``meds``, ...) opens a data root and returns a
:class:`Dataset`: a polars ``index`` with one row per item (``patient_id`` and ``record_id`` as
text, ``split``, ``visit_time``, label columns) and ``fetch(rows)``, which returns the items'
payload for one batch:

=============  ==================================================================
modality       payload of ``fetch(rows)``
=============  ==================================================================
``waveform``   ``Tensor [B, C, T]`` float32 (ECG leads, EEG channels)
``ehr``        :class:`Events` (codes, values, times, mask ``[B, L]``)
``image``      ``Tensor [B, C, H, W]`` float32
=============  ==================================================================

Everything after the source — samplers (ids and times only), the trainer, checkpoints, DDP,
``embed`` and the probes — handles a payload only through :func:`to_device`,
:func:`cat_payloads` and :func:`payload_len`, so a new modality is a source, an encoder and its
augmentations.

Splits are data: every index has a ``split`` column (``train`` / ``val`` / ``test``) that
pretraining, probing and the benchmarks all read. A source that publishes folds uses them
(PTB-XL: strat_fold 1-8 train, 9 val, 10 test); otherwise the split is a fixed function of the
patient id (:func:`hash_split`, 70 / 15 / 15 %), so the same patient is on the same side in every
run and every command.

``open_dataset(name, root, split=..., cache=...)`` opens a registered source;
``tscl datasets`` lists them with what each needs on disk.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

# $TSCL_CACHE or ~/.cache/tscl: where sources keep their caches (never the data folder); the loaders' own
from tscl.loaders.cache import cache_root as default_cache_root
# the payloads (Events, to_device, ...) live in tscl.payloads, torch only, so methods import without polars
from tscl.payloads import Events, cat_payloads, payload_len, pin_payload, to_device

__all__ = ["Dataset", "Events", "Source", "SOURCES", "register_source", "open_dataset", "list_sources",
           "to_device", "cat_payloads", "payload_len", "pin_payload", "hash_split", "SPLITS", "select_split",
           "default_cache_root"]

SPLITS = ("train", "val", "test")


# ---- splits ------------------------------------------------------------------------------------------

def hash_split(patient_ids, fractions=(0.7, 0.15, 0.15)) -> list[str]:
    """``train`` / ``val`` / ``test`` per patient from a hash of the id text: stable across runs,
    machines and subsets (a patient's side never depends on who else is in the folder)."""
    edges = np.cumsum(fractions) / np.sum(fractions)
    out = []
    for pid in patient_ids:
        u = int.from_bytes(hashlib.sha256(str(pid).encode()).digest()[:8], "big") / 2**64
        out.append(SPLITS[min(len(SPLITS) - 1, int(np.searchsorted(edges, u, side="right")))])
    return out


def select_split(index: pl.DataFrame, split: str | None) -> np.ndarray:
    """Rows of ``index`` in ``split``: ``None``/``"all"`` every row, else a ``+``-joined set of
    split names (``train``, ``train+val``) or fold numbers when the index has ``strat_fold``
    (``folds:1-8``, ``folds:1,2,3``)."""
    if split in (None, "", "all"):
        return np.arange(index.height)
    if split.startswith("folds:"):
        if "strat_fold" not in index.columns:
            raise ValueError(f"split {split!r}: this dataset has no strat_fold column")
        folds: set[int] = set()
        for part in split[len("folds:"):].split(","):
            lo, _, hi = part.partition("-")
            try:
                folds.update(range(int(lo), int(hi or lo) + 1))
            except ValueError:
                raise ValueError(f"split {split!r}: folds must be numbers or ranges such as 1-8") from None
        return np.flatnonzero(np.isin(index["strat_fold"].to_numpy(), sorted(folds)))
    names = split.split("+")
    bad = [n for n in names if n not in SPLITS]
    if bad:
        raise ValueError(f"unknown split {bad[0]!r}; use all, {', '.join(SPLITS)}, a '+' of them (train+val) "
                         "or folds:1-8")
    return np.flatnonzero(np.isin(index["split"].to_numpy(), names))


# ---- the dataset -------------------------------------------------------------------------------------

class Dataset:
    """Base of every source's dataset: ``index``, ``fetch(rows)``, ``subset(rows)`` and what an encoder needs.

    Subclasses set ``modality`` and implement ``fetch`` and ``_take(rows)`` (a dataset over the
    given rows). ``info`` records what the run folder needs to rebuild the encoder's input
    (``in_channels`` and, for waveforms, channel names and sampling rate)."""

    modality: str = "waveform"

    def __init__(self, index: pl.DataFrame, *, source: dict | None = None):
        self.index = index
        self.source = dict(source or {})  # name, root, split, options: recorded in config.json

    def __len__(self) -> int:
        return self.index.height

    @property
    def in_channels(self) -> int:
        raise NotImplementedError

    @property
    def info(self) -> dict:
        return {"modality": self.modality, "in_channels": self.in_channels}

    @property
    def label_columns(self) -> list[str]:
        return [c for c in self.index.columns if c not in _ID_COLUMNS]

    @property
    def fingerprint(self) -> str:
        return ""

    def fetch(self, rows: np.ndarray):
        raise NotImplementedError

    def _take(self, rows: np.ndarray) -> "Dataset":
        raise NotImplementedError

    def subset(self, rows) -> "Dataset":
        """The dataset restricted to ``rows`` (indices or a boolean mask), in that order."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return self._take(rows.astype(np.int64))

    def split(self, split: str | None) -> "Dataset":
        """The rows of ``split`` (see :func:`select_split`); refuses an empty result."""
        rows = select_split(self.index, split)
        if split not in (None, "", "all") and not len(rows):
            have = sorted(set(self.index["split"].to_list())) if "split" in self.index.columns else []
            raise ValueError(f"split {split!r} selects no item of this dataset (its splits: {have})")
        out = self.subset(rows)
        out.source = {**self.source, "split": split or "all"}
        return out

    def patients(self) -> list[str]:
        return sorted(set(self.index["patient_id"].to_list()))

    def describe(self) -> str:
        n_pat = self.index["patient_id"].n_unique()
        sides = ""
        if "split" in self.index.columns:
            counts = dict(self.index.group_by("split").len().iter_rows())
            sides = " (" + ", ".join(f"{s} {counts[s]}" for s in SPLITS if s in counts) + ")"
        return f"{len(self)} {self.modality} items of {n_pat} patients{sides}"


_ID_COLUMNS = {"patient_id", "record_id", "fs", "n_channels", "n_samples", "offset", "channels", "visit_time", "source",
               "nan_samples", "missing_channels", "split", "window_start", "window_end", "item"}


# ---- the registry ------------------------------------------------------------------------------------

@dataclass
class Source:
    """A registered dataset source: ``open(root, cache=..., **options) -> Dataset``."""

    name: str
    modality: str
    needs: str  # what the root must hold, for `tscl datasets`
    open: Callable[..., Dataset]
    options: dict = field(default_factory=dict)  # option -> help text
    default_split: str = "train"  # what pretraining reads unless told otherwise


SOURCES: dict[str, Source] = {}


def register_source(name: str, modality: str, needs: str, options: dict | None = None, default_split: str = "train"):
    def wrap(fn):
        SOURCES[name] = Source(name, modality, needs, fn, options or {}, default_split)
        return fn

    return wrap


def list_sources() -> list[str]:
    _load_builtin()
    return sorted(SOURCES)


def get_source(name: str) -> Source:
    _load_builtin()
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def open_dataset(name: str, root: str | Path, *, split: str | None = None, cache: str | Path | None = None,
                 progress: bool = True, **options) -> Dataset:
    """Open source ``name`` at ``root`` and keep the rows of ``split`` (None: every row)."""
    src = get_source(name)
    unknown = sorted(set(options) - set(src.options))
    if unknown:
        raise ValueError(f"dataset {name!r} takes no option {unknown[0]!r}; its options: "
                         f"{', '.join(sorted(src.options)) or 'none'}")
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: dataset root not found")
    ds = src.open(root, cache=Path(cache) if cache else None, progress=progress, **options)
    ds.source = {"dataset": name, "root": str(root.resolve()), "options": options, "split": "all"}
    if split not in (None, "", "all"):
        ds = ds.split(split)
    return ds


def _load_builtin() -> None:
    from . import waveform  # noqa: F401  (registers its sources)
    for module in ("ehr", "images"):
        try:
            __import__(f"{__name__}.{module}")
        except ModuleNotFoundError as err:  # a modality whose module is not present
            if err.name != f"{__name__}.{module}":
                raise
