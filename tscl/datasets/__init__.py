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
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
from torch import Tensor

from tscl import catalog
from tscl.grammar import SPLITS, parse_split
from tscl.loaders import LoaderError
# $TSCL_CACHE or ~/.cache/tscl: where sources keep their caches (never the data folder); the loaders' own
from tscl.loaders.cache import cache_root as default_cache_root
# the payloads (Events, to_device, ...) live in tscl.payloads, torch only, so methods import without polars
from tscl.payloads import Events, cat_payloads, payload_len, pin_payload, to_device

__all__ = ["Dataset", "Events", "Source", "SOURCES", "declare_source", "register_source", "get_source", "open_dataset",
           "list_sources", "to_device", "cat_payloads", "payload_len", "pin_payload", "hash_split", "hash_split_column", "SPLITS",
           "select_split",
           "default_cache_root", "notes_line"]

# ---- splits ------------------------------------------------------------------------------------------

def hash_split(patient_ids, fractions=(0.7, 0.15, 0.15)) -> list[str]:
    """``train`` / ``val`` / ``test`` per patient from a hash of the id text: stable across runs,
    machines and subsets (a patient's side never depends on who else is in the folder)."""
    edges = np.cumsum(fractions) / np.sum(fractions)
    u = np.array([int.from_bytes(hashlib.sha256(str(pid).encode()).digest()[:8], "big") / 2**64
                  for pid in patient_ids], dtype=np.float64)
    sides = np.minimum(np.searchsorted(edges, u, side="right"), len(SPLITS) - 1)
    return [SPLITS[k] for k in sides]


def hash_split_column(patient_ids: pl.Series, fractions=(0.7, 0.15, 0.15)) -> pl.Series:
    """:func:`hash_split` of a column, as a ``split`` column: each distinct patient hashed once,
    no Python object per row."""
    ids = patient_ids.cast(pl.Utf8)
    unique = ids.unique(maintain_order=True)
    sides = pl.Series("split", hash_split(unique.to_list(), fractions), dtype=pl.Utf8)
    return ids.replace_strict(unique, sides, return_dtype=pl.Utf8).alias("split")


def select_split(index: pl.DataFrame, split: str | None) -> np.ndarray:
    """Rows of ``index`` in ``split`` (the grammar of :func:`tscl.grammar.parse_split`): ``None``/``"all"``
    every row, else a ``+``-joined set of split names (``train``, ``train+val``) or fold numbers when the
    index has ``strat_fold`` (``folds:1-8``, ``folds:1,2,3``)."""
    kind, values = parse_split(split, option="split")
    if kind == "all":
        return np.arange(index.height)
    if kind == "folds":
        if "strat_fold" not in index.columns:
            raise ValueError(f"split {split!r}: this dataset has no strat_fold column")
        return np.flatnonzero(np.isin(index["strat_fold"].to_numpy(), values))
    return np.flatnonzero(np.isin(index["split"].to_numpy(), values))


# ---- the dataset -------------------------------------------------------------------------------------

class Dataset:
    """Base of every source's dataset: ``index``, ``fetch(rows)``, ``subset(rows)`` and what an encoder needs.

    Subclasses set ``modality`` and implement ``fetch`` and ``_take(rows)`` (a dataset over the
    given rows). ``info`` records what the run folder needs to rebuild the encoder's input
    (``in_channels`` and, for waveforms, channel names and sampling rate).

    ``notes`` is a plain, JSON-serialisable dict of what the source left out or changed while
    reading, for runs and reports to record (a split or subset carries its parent's):
    ``skipped`` (``[{"path", "problem"}]``: items or files left out, e.g. under ``on_error=skip``),
    ``unlisted`` (files on disk that no table lists), ``left_out`` (``{what: count}`` for counted
    losses such as subjects without events) and source-specific details. :meth:`notes_line` says it
    in one line for the terminal; it is empty when nothing was left out."""

    modality: str = "waveform"

    def __init__(self, index: pl.DataFrame, *, source: dict | None = None, notes: dict | None = None):
        self.index = index
        self.source = dict(source or {})  # name, root, split, options: recorded in config.json
        self.notes = dict(notes or {})

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

    def sample_items(self, n: int = 2):
        """A batch of up to ``n`` items shaped as training batches are, for checks before training (the
        encoder takes them). Here: the first ``n`` rows; a streamed source gives zeros of its item shape
        instead, so a rank never reads shards outside its own lanes."""
        return self.fetch(np.arange(min(n, len(self))))

    def _take(self, rows: np.ndarray) -> "Dataset":
        raise NotImplementedError

    def subset(self, rows) -> "Dataset":
        """The dataset restricted to ``rows`` (indices or a boolean mask), in that order."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        out = self._take(rows.astype(np.int64))
        out.notes = self.notes
        return out

    @property
    def skipped(self) -> list[dict]:
        """Items or files the source left out (``notes["skipped"]``): ``[{"path", "problem"}]``."""
        return list(self.notes.get("skipped", []))

    def notes_line(self) -> str:
        """What the source left out, in one line (``""`` when nothing was); every entry is in :attr:`notes`."""
        return notes_line(self.notes)

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

    def summary(self, payload: bool = False) -> dict:
        """What ``tscl inspect --out`` writes: the description, ``info``, ``notes`` and every index row (ids,
        split, labels; values as JSON gives them). With ``payload``, ``out["payload"]`` is every item's payload
        as ``fetch`` gives it: a float32 array ``[N, C, T]`` / ``[N, C, H, W]``, or for EHR items a list of
        their ``codes`` (vocabulary code text; ``"[UNK]"`` for the unknown id), ``values`` and ``times``."""
        out = {"describe": self.describe(), "modality": self.modality, "info": self.info, "notes": self.notes,
               "index": json.loads(self.index.write_json())}
        if payload and len(self):
            x = self.fetch(np.arange(len(self)))
            out["payload"] = x.numpy() if isinstance(x, Tensor) else self._events_summary(x)
        return out

    def _events_summary(self, x: "Events") -> list[dict]:
        names = dict(zip(self.vocab["id"].to_list(), self.vocab["code"].to_list())) if hasattr(self, "vocab") else {}
        names[1] = "[UNK]"
        out = []
        for i in range(len(x)):
            m = x.mask[i]
            out.append({"codes": [names.get(int(c), str(int(c))) for c in x.codes[i][m]],
                        "values": x.values[i][m].tolist(), "times": x.times[i][m].tolist()})
        return out

    def describe(self) -> str:
        n_pat = self.index["patient_id"].n_unique()
        sides = ""
        if "split" in self.index.columns:
            counts = dict(self.index.group_by("split").len().iter_rows())
            sides = " (" + ", ".join(f"{s} {counts[s]}" for s in SPLITS if s in counts) + ")"
        return f"{len(self)} {self.modality} items of {n_pat} patients{sides}"


def notes_line(notes: dict) -> str:
    """One line saying what ``notes`` (a :attr:`Dataset.notes`) records as left out; ``""`` when nothing."""
    parts = []
    for key, what in (("skipped", "left out"), ("unlisted", "on disk but listed in no table, left out"),
                      ("dropped_nan", "holding NaN, left out (nan_policy=drop)")):
        entries = notes.get(key) or []
        if entries:
            first = entries[0]
            parts.append(f"{len(entries)} {what} (first: {first.get('path')}: {first.get('problem')})")
    parts += [f"{n} {what}" for what, n in (notes.get("left_out") or {}).items() if n]
    return "; ".join(parts)


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


# sources resolved in this process, by name: the built-ins (tscl.catalog), entry points and module:name once used,
# and any registered in-process with register_source
SOURCES: dict[str, Source] = {}


def declare_source(name: str, modality: str, needs: str, options: dict | None = None, default_split: str = "train"):
    """Decorator: declare ``fn(root, *, cache, progress, **options) -> Dataset`` as the opener of source
    ``name`` (its modality, what its root must hold, its options with their help text, the split pretraining
    reads by default). It registers nothing: built-ins are named in :mod:`tscl.catalog`; others are found by
    an entry point of group ``tscl.sources`` or as ``module:function``."""

    def wrap(fn):
        fn.source = Source(name, modality, needs, fn, options or {}, default_split)
        return fn

    return wrap


def register_source(name: str, modality: str, needs: str, options: dict | None = None, default_split: str = "train"):
    """Decorator: :func:`declare_source`, and make ``open_dataset(name, ...)`` find it in this process."""

    def wrap(fn):
        SOURCES[name] = declare_source(name, modality, needs, options, default_split)(fn).source
        return fn

    return wrap


def list_sources() -> list[str]:
    """Source names: built-in, installed entry points and any registered in this process, sorted."""
    return sorted(set(catalog.names("sources")) | set(SOURCES))


def get_source(name: str) -> Source:
    """The :class:`Source` behind ``name``: registered in this process, built in, an entry point of group
    ``tscl.sources``, or ``module:function``; an unknown name raises ``ValueError`` naming the known ones."""
    if name not in SOURCES:
        fn = catalog.load("sources", name)
        src = getattr(fn, "source", None)
        if not isinstance(src, Source):
            raise ValueError(f"dataset {name!r} is not a tscl source (declare it with tscl.datasets.declare_source)")
        SOURCES[name] = Source(name, src.modality, src.needs, src.open, src.options, src.default_split)
    return SOURCES[name]


def open_dataset(name: str, root: str | Path, *, split: str | None = None, cache: str | Path | None = None,
                 progress: bool = True, **options) -> Dataset:
    """Open source ``name`` at ``root`` and keep the rows of ``split`` (None: every row)."""
    src = get_source(name)
    unknown = sorted(set(options) - set(src.options))
    if unknown:
        raise ValueError(f"dataset {name!r} takes no option {unknown[0]!r}; its options: "
                         f"{', '.join(sorted(src.options)) or 'none'}")
    if not _is_url(root):  # a URL prefix (http://, pipe:) is the streamed sources' to open
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{root}: dataset root not found")

    try:
        ds = src.open(root, cache=Path(cache) if cache else None, progress=progress, **options)
    except OSError as err:  # a file the OS would not open or read: one line naming it, as every loader error does
        if not err.filename:
            raise
        raise LoaderError(err.filename, f"{type(err).__name__}: {err.strerror or err}") from err
    ds.source = {"dataset": name, "root": root if _is_url(root) else str(root.resolve()), "options": options,
                 "split": "all"}
    if split not in (None, "", "all"):
        ds = ds.split(split)
    return ds


def _is_url(root) -> bool:
    text = str(root)
    return "://" in text or text.startswith("pipe:")
