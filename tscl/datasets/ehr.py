"""EHR sources (MEDS, MIMIC-IV): event streams cut into items of one patient and one time window.

=============  ===========================================================================
``meds``       a MEDS folder: ``data/<split>/*.parquet`` (+ ``metadata/codes.parquet``,
               ``metadata/subject_splits.parquet`` when present)
``mimic-iv``   MIMIC-IV as PhysioNet publishes it (``hosp/``, ``icu/`` ``*.csv.gz``), converted to
               MEDS on first use (:func:`tscl.loaders.mimic_meds.mimic_iv_to_meds`) into the cache
               and reused
=============  ===========================================================================

**Items.** Patient-aware methods (PCLR, PMQ, ...) need several items of one patient, so an
item is one (subject, time window), not one subject:

- ``window="admission"`` (the ``mimic-iv`` default): a new item starts at every event whose code
  starts with ``admission_prefix`` (``HOSPITAL_ADMISSION//``) and lasts until the next one (discharge
  diagnoses, outpatient labs and an ED stay before the next admission included); events before a
  subject's first admission belong to its first item; a subject without any admission event is one item.
- ``window="30d"`` (the ``meds`` default; also ``"12h"`` or a plain number of days): consecutive
  windows of that length from the subject's first timed event; empty windows are skipped.

Index columns: ``patient_id`` (subject_id as text), ``record_id`` (``"<subject>:<k>"``, k the
item's 0-based rank within the subject), ``visit_time`` (the item's first timed event),
``window_start`` / ``window_end`` (first / last timed event), ``split`` and ``item`` (k).
``split`` comes from ``metadata/subject_splits.parquet`` when present (train -> train, tuning -> val,
held_out -> test; a subject missing there, or a source without the file, gets :func:`hash_split`).

**Payload.** ``fetch(rows)`` returns :class:`~tscl.datasets.Events` ``[B, L]``, L the longest item
of the batch (at most ``max_len``), oldest event first:

- static rows (null time: ``GENDER//F``, ``HEIGHT``...) and the birth event (``birth_codes``) come
  first, at time 0, in every item of the subject; the birth event carries the subject's age in
  years at the item's first timed event as its value, so no item is a lone birth date decades away;
- then the item's timed events in time order; ``times`` are hours since the item's first timed event;
- an item with more than ``max_len`` events keeps its static rows and its most recent timed events;
- ``values`` are z-scored per code (mean and std of that code's values over the *training* items;
  std 1 where it is 0 or undefined); NaN where an event has no value, or its code has no value
  in the training items.

**Vocabulary.** Fixed for the run and stored in the cache (``vocabulary.parquet``): every code of
the whole source (all splits: codes are not labels, and a fixed vocabulary keeps every split's
ids the same), most frequent first, ids from 3; codes seen fewer than ``min_count`` times share
id 1. Id 0 is padding, 1 unknown, 2 the ``[MASK]`` id that code masking (``codes`` augmentation)
writes. ``in_channels`` is the vocabulary size (for ``build_encoder("ehr_sequence", ...)``);
``info`` records ``vocab_size``, ``max_len``, ``window`` and ``mask_id``.

**Bad input** raises, naming the file or subject: a root without ``data/`` or without shards, a
shard missing a MEDS column or of the wrong type, with a time zone, unreadable, or sharing a
subject with another shard (:func:`~tscl.loaders.meds.scan_meds`), a subject with no timed event
(``on_empty="raise"``, default; ``"skip"`` leaves them out and records their count in
``info["empty_subjects"]``), an unknown split name in ``subject_splits``. A non-finite numeric
value is no value for its event only (``meta["non_finite_values"]`` counts them), so it
cannot make its code's statistics non-finite. ``dataset.notes`` carries these counts and, for
``mimic-iv``, the conversion report (rows without a time, duplicates removed, admissions discharged
before admitted: :mod:`tscl.loaders.mimic_meds`).

**Admissions at a prediction time** (``mimic-iv`` with ``predict_at=24``): one item per admission
still in hospital and alive 24 h after admission, from the events strictly before that time, with the
vocabulary of the source's own items (so a run pretrained on them reads it), labelled ``mortality``,
``long_stay`` and ``readmission``, and a tabular feature baseline (:func:`ehr_features`). Its tasks
(:mod:`tscl.tasks`): ``mimic-mortality``, ``mimic-long-stay``, ``mimic-readmission`` — trained on the
subjects of the ``train`` split, tested on those of ``val`` and ``test`` (never pretrained on).

:func:`ehr_embed` embeds items with a run's encoder.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tscl.loaders.cache import fingerprint_files
from tscl.loaders.meds import read_subject_splits, scan_meds, tabular_features
from tscl.loaders.mimic_meds import MIMIC_TABLES, conversion_notes, mimic_iv_to_meds, table_path
from tscl.tasks import register_task

from . import Dataset, Events, declare_source, default_cache_root, hash_split

__all__ = ["EHRDataset", "AdmissionsDataset", "PAD_ID", "UNKNOWN_ID", "MASK_ID", "build_ehr_items", "open_meds_items",
           "mimic_meds_root", "mimic_admissions", "ehr_features", "split_events", "neighbour_events", "ehr_embed",
           "ehr_notes"]

PAD_ID, UNKNOWN_ID, MASK_ID = 0, 1, 2
_FIRST_CODE_ID = 3
_SPLIT_NAMES = {"train": "train", "tuning": "val", "held_out": "test", "val": "val", "test": "test"}
_FORMAT = "tscl-ehr-items-v2"


# ---- the dataset -------------------------------------------------------------------------------------

class EHRDataset(Dataset):
    """Items of an EHR event stream as :class:`~tscl.datasets.Events` batches (see the module docstring).

    ``index`` has one row per item; the events of all items live in flat arrays (``codes`` int64,
    ``values`` / ``times`` float32), item i's being ``[start[i], start[i] + length[i])``."""

    modality = "ehr"

    def __init__(self, index: pl.DataFrame, codes: np.ndarray, values: np.ndarray, times: np.ndarray,
                 start: np.ndarray, length: np.ndarray, *, vocab: pl.DataFrame, meta: dict, source: dict | None = None,
                 notes: dict | None = None):
        super().__init__(index, source=source, notes=notes)
        self._codes, self._values, self._times = codes, values, times
        self._start, self._length = np.asarray(start, np.int64), np.asarray(length, np.int64)
        self.vocab, self.meta = vocab, dict(meta)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def in_channels(self) -> int:
        return self.vocab_size

    @property
    def max_len(self) -> int:
        return int(self.meta["max_len"])

    @property
    def info(self) -> dict:
        keep = ("vocab_size", "max_len", "window", "mask_id", "min_count", "empty_subjects", "truncated_items",
                "value_stats")
        return {**super().info, **{k: self.meta[k] for k in keep if k in self.meta}}

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("fingerprint", ""))

    def lengths(self) -> np.ndarray:
        """Events per item (after truncation to ``max_len``)."""
        return self._length.copy()

    def fetch(self, rows) -> Events:
        rows = np.asarray(rows, dtype=np.int64)
        n = len(rows)
        lens = self._length[rows]
        width = int(lens.max()) if n else 0
        codes = np.zeros((n, width), np.int64)
        values = np.full((n, width), np.nan, np.float32)
        times = np.zeros((n, width), np.float32)
        mask = np.arange(width)[None, :] < lens[:, None]
        if n and width:
            src = (self._start[rows][:, None] + np.arange(width)[None, :])[mask]
            codes[mask], values[mask], times[mask] = self._codes[src], self._values[src], self._times[src]
        return Events(torch.from_numpy(codes), torch.from_numpy(values), torch.from_numpy(times),
                      torch.from_numpy(mask))

    def _take(self, rows):
        index = self.index[rows.tolist()] if len(rows) else self.index.clear()
        return EHRDataset(index, self._codes, self._values, self._times, self._start[rows], self._length[rows],
                          vocab=self.vocab, meta=self.meta, source=self.source)


# ---- building items ----------------------------------------------------------------------------------

def _parse_window(window) -> tuple[str, float]:
    """``"admission"`` -> ("admission", 0); ``"30d"`` / ``"12h"`` / ``30`` (days) -> ("hours", h)."""
    if isinstance(window, str) and window.strip().lower() == "admission":
        return "admission", 0.0
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([dh]?)\s*", str(window).lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"window must be 'admission' or a positive length such as 30d, 12h or 30 (days), got {window!r}")
    return "hours", float(m.group(1)) * (1.0 if m.group(2) == "h" else 24.0)


def _subject_splits(meds_root: Path, subjects: list[int]) -> dict[int, str]:
    path = meds_root / "metadata" / "subject_splits.parquet"
    given: dict[int, str] = {}
    if path.exists():
        table = read_subject_splits(meds_root)
        bad = sorted(set(table["split"].to_list()) - set(_SPLIT_NAMES))
        if bad:
            raise ValueError(f"{path}: unknown split name(s) {bad}; MEDS uses train, tuning and held_out")
        given = {int(s): _SPLIT_NAMES[v] for s, v in table.select("subject_id", "split").iter_rows()}
    missing = [s for s in subjects if s not in given]
    return {**given, **dict(zip(missing, hash_split([str(s) for s in missing])))}


def build_ehr_items(events: pl.DataFrame, splits: dict[int, str], *, window="30d", max_len: int = 256,
                    min_count: int = 1, birth_codes=("MEDS_BIRTH", "DOB"), admission_prefix: str = "HOSPITAL_ADMISSION//",
                    on_empty: str = "raise", extra_subjects=(), cutoffs: pl.DataFrame | None = None,
                    vocab: pl.DataFrame | None = None, where: str = "the MEDS data"):
    """Cut MEDS ``events`` (subject_id, time, code, numeric_value) into items (module docstring).

    Returns ``(index, flat, vocab, meta)``: the item index, a frame of the kept events in item
    order (``item_row``, ``code_id``, ``value`` z-scored, ``time_h``), the vocabulary
    (code, id, count, value_mean, value_std) and counts. ``extra_subjects`` are subjects known
    to the source (e.g. listed in ``subject_splits``) that may have no event at all.

    ``cutoffs`` (subject_id, ``item_start`` nullable, ``prediction_time``) builds one item per row
    instead of windows: the subject's events in ``[item_start, prediction_time)`` (strictly before
    the prediction time; a null start: from the subject's first event), with the given ``vocab``
    (the run's, so ids and value statistics match pretraining). Used by :func:`mimic_probe`."""
    if on_empty not in ("raise", "skip"):
        raise ValueError(f"on_empty must be 'raise' or 'skip', got {on_empty!r}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    kind, hours = _parse_window(window)
    ev = events.select(pl.col("subject_id").cast(pl.Int64), pl.col("time").cast(pl.Datetime("us")), "code",
                       pl.col("numeric_value").cast(pl.Float64)).with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64))
    # a non-finite value (inf, nan) is "no value" for its event only, counted: it must not poison its code's statistics
    non_finite = int(ev.select((pl.col("numeric_value").is_not_null() & ~pl.col("numeric_value").is_finite()).sum()).item())
    if non_finite:
        ev = ev.with_columns(pl.when(pl.col("numeric_value").is_finite()).then(pl.col("numeric_value")).otherwise(None))
    is_birth = pl.col("code").is_in(list(birth_codes))
    static = ev.filter(pl.col("time").is_null() & ~is_birth)
    birth = (ev.filter(is_birth & pl.col("time").is_not_null()).sort("_row").group_by("subject_id", maintain_order=True)
             .agg(pl.col("code").first(), pl.col("time").first().alias("birth")))
    timed = ev.filter(pl.col("time").is_not_null() & ~is_birth).sort(["subject_id", "time", "_row"])

    subjects = sorted(set(ev["subject_id"].to_list()) | {int(s) for s in extra_subjects})
    with_events = set(timed["subject_id"].unique().to_list())
    empty = [s for s in subjects if s not in with_events]
    if cutoffs is None and empty and on_empty == "raise":
        raise ValueError(f"{where}: {len(empty)} subject(s) have no timed event (only static rows, a birth date, or "
                         f"nothing at all), so they form no item: e.g. subject_id {empty[:5]}; pass on_empty='skip' to "
                         "leave them out")

    if cutoffs is not None:  # one item per (subject, prediction time)
        cut = cutoffs.select(pl.col("subject_id").cast(pl.Int64), pl.col("item_start").cast(pl.Datetime("us")),
                             pl.col("prediction_time").cast(pl.Datetime("us"))).with_row_index("item_row")
        timed = (timed.join(cut, on="subject_id", how="inner")
                 .filter((pl.col("time") < pl.col("prediction_time"))
                         & (pl.col("item_start").is_null() | (pl.col("time") >= pl.col("item_start"))))
                 .drop("item_start", "prediction_time").sort(["item_row", "time", "_row"]))
        items = cut.join(timed.group_by("item_row").agg(pl.col("time").min().alias("window_start"),
                                                        pl.col("time").max().alias("window_end")),
                         on="item_row", how="left").sort("item_row")
        items = items.with_columns(pl.int_range(pl.len()).over("subject_id").alias("item"))
    else:
        if kind == "admission":
            bounds = (timed.filter(pl.col("code").str.starts_with(admission_prefix))
                      .select("subject_id", pl.col("time").alias("bound")).unique().sort(["subject_id", "bound"]))
            with warnings.catch_warnings():  # both sides are sorted by time; polars cannot check it per group
                warnings.filterwarnings("ignore", message=".*Sortedness.*")
                timed = (timed.sort("time").join_asof(bounds.sort("bound"), left_on="time", right_on="bound",
                                                      by="subject_id", strategy="backward")
                         .sort(["subject_id", "time", "_row"]))
            # before the first admission: the first item (a subject without admissions is one item)
            key = pl.col("bound").fill_null(pl.col("bound").min().over("subject_id")).fill_null(
                pl.col("time").min().over("subject_id"))
        else:
            first = pl.col("time").min().over("subject_id")
            key = ((pl.col("time") - first).dt.total_seconds() / 3600.0 // hours).cast(pl.Int64)
        timed = timed.with_columns(key.alias("_key"))
        timed = timed.with_columns((pl.col("_key").rank("dense").over("subject_id") - 1).cast(pl.Int64).alias("item"))
        timed = timed.sort(["subject_id", "item", "time", "_row"])
        items = (timed.group_by(["subject_id", "item"], maintain_order=True)
                 .agg(pl.col("time").min().alias("window_start"), pl.col("time").max().alias("window_end"))
                 .with_row_index("item_row"))
        timed = timed.join(items.select("subject_id", "item", "item_row"), on=["subject_id", "item"], how="left")
    items = items.with_columns(pl.col("item_row").cast(pl.Int64))
    timed = timed.with_columns(pl.col("item_row").cast(pl.Int64))

    # static rows (and the birth event, valued as age at the item's start) of every item of the subject, at time 0
    statics = static.join(items.select("subject_id", "item_row"), on="subject_id", how="inner")
    ages = (items.join(birth, on="subject_id", how="inner")
            .with_columns(pl.coalesce("window_start", "prediction_time" if cutoffs is not None else "window_start")
                          .alias("_at"))
            .select("subject_id", "item_row", "code",
                    ((pl.col("_at") - pl.col("birth")).dt.total_days() / 365.25).alias("numeric_value"),
                    pl.lit(-1, dtype=pl.Int64).alias("_row")))
    head = pl.concat([ages.select("item_row", "_row", "code", "numeric_value"),
                      statics.select("item_row", "_row", "code", "numeric_value")])
    head = head.with_columns(pl.lit(0.0).alias("time_h"), pl.lit(True).alias("_static"))
    start = items.select("item_row", "window_start")
    body = (timed.join(start, on="item_row", how="left")
            .select("item_row", "_row", "code", "numeric_value",
                    ((pl.col("time") - pl.col("window_start")).dt.total_seconds() / 3600.0).alias("time_h"),
                    pl.lit(False).alias("_static")))
    long = pl.concat([head, body]).sort(["item_row", pl.col("_static").not_(), "time_h", "_row"])

    # keep static rows and the most recent timed events, max_len in all
    long = long.with_columns(pl.col("_static").sum().over("item_row").cast(pl.Int64).alias("_n_static"),
                             pl.len().over("item_row").cast(pl.Int64).alias("_n"),
                             pl.int_range(pl.len()).over("item_row").cast(pl.Int64).alias("_pos"))
    n_timed_kept = (pl.lit(max_len) - pl.col("_n_static")).clip(0)
    keep = (pl.col("_static") & (pl.col("_pos") < max_len)) | (
        ~pl.col("_static") & (pl.col("_pos") >= pl.col("_n") - n_timed_kept))
    truncated = int((long.group_by("item_row").agg(pl.len().alias("n"))["n"] > max_len).sum())
    long = long.filter(keep)

    missing = sorted(set(items["subject_id"].to_list()) - set(splits))
    splits = {**splits, **dict(zip(missing, hash_split([str(m) for m in missing])))}
    split_of = pl.DataFrame({"subject_id": list(splits), "split": list(splits.values())},
                            schema={"subject_id": pl.Int64, "split": pl.Utf8})
    items = items.join(split_of, on="subject_id", how="left", maintain_order="left")

    value_stats = "train"
    if vocab is None:
        counts = ev.group_by("code").agg(pl.len().alias("count"))
        train_rows = items.filter(pl.col("split") == "train")["item_row"]
        if not len(train_rows):
            value_stats = "all"  # no training item: statistics over every item
            warnings.warn(f"{where}: no item in the train split; value statistics use every item", stacklevel=2)
        src = long if value_stats == "all" else long.filter(pl.col("item_row").is_in(train_rows.to_list()))
        stats = src.group_by("code").agg(pl.col("numeric_value").mean().alias("value_mean"),
                                         pl.col("numeric_value").std().alias("value_std"))
        table = (counts.filter(pl.col("count") >= min_count).sort(["count", "code"], descending=[True, False])
                 .with_columns((pl.int_range(pl.len()) + _FIRST_CODE_ID).cast(pl.Int64).alias("id")))
        vocab = (table.join(stats, on="code", how="left", maintain_order="left")
                 .select("code", "id", pl.col("count").cast(pl.Int64), "value_mean", "value_std"))
    flat = (long.join(vocab.select("code", "id", "value_mean", "value_std"), on="code", how="left", maintain_order="left")
            .select("item_row", pl.col("id").fill_null(UNKNOWN_ID).alias("code_id"),
                    ((pl.col("numeric_value") - pl.col("value_mean"))
                     / pl.when(pl.col("value_std") > 0).then(pl.col("value_std")).otherwise(1.0))
                    .cast(pl.Float32).fill_null(float("nan")).alias("value"),
                    pl.col("time_h").cast(pl.Float32)))

    index = items.select(
        pl.col("subject_id").cast(pl.Utf8).alias("patient_id"),
        (pl.col("subject_id").cast(pl.Utf8) + ":" + pl.col("item").cast(pl.Utf8)).alias("record_id"),
        pl.col("window_start").alias("visit_time"), "window_start", "window_end", "split",
        pl.col("item").cast(pl.Int64), "item_row", *(["prediction_time"] if cutoffs is not None else []))
    meta = {"vocab_size": int(vocab["id"].max() or _FIRST_CODE_ID - 1) + 1 if vocab.height else _FIRST_CODE_ID,
            "max_len": int(max_len), "window": str(window), "mask_id": MASK_ID, "min_count": int(min_count),
            "empty_subjects": len(empty), "truncated_items": truncated, "value_stats": value_stats,
            "non_finite_values": non_finite,
            "n_items": index.height, "n_events": flat.height}
    return index, flat, vocab, meta


def ehr_notes(meta: dict) -> dict:
    """What building the items left out or changed, as dataset notes (``left_out`` counts)."""
    left = {"subjects with no timed event (on_empty=skip)": meta.get("empty_subjects", 0),
            "non-finite numeric values read as no value": meta.get("non_finite_values", 0)}
    return {"left_out": {k: int(v) for k, v in left.items() if v},
            "truncated_items": int(meta.get("truncated_items", 0)), "max_len": meta.get("max_len")}


def _dataset(index: pl.DataFrame, flat: pl.DataFrame, vocab: pl.DataFrame, meta: dict) -> EHRDataset:
    lengths = (index.select("item_row").join(flat.group_by("item_row").agg(pl.len().alias("n")), on="item_row",
                                             how="left", maintain_order="left")["n"].fill_null(0).to_numpy())
    flat = flat.sort("item_row", maintain_order=True)
    counts = flat.group_by("item_row", maintain_order=True).agg(pl.len().alias("n"))
    offsets = dict(zip(counts["item_row"].to_list(), np.concatenate([[0], np.cumsum(counts["n"].to_numpy())[:-1]])))
    start = np.array([offsets.get(r, 0) for r in index["item_row"].to_list()], np.int64)
    return EHRDataset(index.drop("item_row"), flat["code_id"].to_numpy().astype(np.int64),
                      flat["value"].to_numpy().astype(np.float32), flat["time_h"].to_numpy().astype(np.float32),
                      start, lengths.astype(np.int64), vocab=vocab, meta=meta, notes=ehr_notes(meta))


def _meds_files(meds_root: Path) -> list[Path]:
    data = meds_root / "data"
    if not data.is_dir():
        raise FileNotFoundError(f"{meds_root}: not a MEDS folder (no data/ directory with data/<split>/*.parquet shards)")
    shards = sorted(data.rglob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{data}: no MEDS parquet shard (expected data/<split>/*.parquet)")
    meta = [meds_root / "metadata" / n for n in ("codes.parquet", "subject_splits.parquet")]
    return shards + [p for p in meta if p.exists()]


def open_meds_items(meds_root: Path, cache_dir: Path, *, progress: bool = False, **options) -> EHRDataset:
    """Items of the MEDS folder ``meds_root`` (module docstring), built once into ``cache_dir/items-<key>``
    (``items.parquet``, ``events.parquet``, ``vocabulary.parquet``, ``meta.json``) and reused while the
    source files and the options are unchanged."""
    meds_root = Path(meds_root)
    files = _meds_files(meds_root)
    opts = json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(options.items())}, sort_keys=True)
    fp = fingerprint_files(files, extra=f"{_FORMAT};{opts}", root=meds_root)
    folder = Path(cache_dir) / f"items-{fp[:16]}"
    if (folder / "meta.json").exists():
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("fingerprint") == fp:
            return _dataset(pl.read_parquet(folder / "items.parquet"), pl.read_parquet(folder / "events.parquet"),
                            pl.read_parquet(folder / "vocabulary.parquet"), meta)
    events = scan_meds(meds_root).select("subject_id", "time", "code", "numeric_value").collect()
    known = []
    if (meds_root / "metadata" / "subject_splits.parquet").exists():
        known = read_subject_splits(meds_root)["subject_id"].to_list()
    subjects = sorted(set(events["subject_id"].to_list()) | set(known))
    index, flat, vocab, meta = build_ehr_items(events, _subject_splits(meds_root, subjects), extra_subjects=known,
                                               where=str(meds_root), **options)
    if not index.height:
        raise ValueError(f"{meds_root}: no item (every subject is empty)")
    meta["fingerprint"] = fp
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    index.write_parquet(tmp / "items.parquet")
    flat.write_parquet(tmp / "events.parquet")
    vocab.write_parquet(tmp / "vocabulary.parquet")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process wrote it first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return _dataset(index, flat, vocab, meta)


# ---- sources -----------------------------------------------------------------------------------------

_OPTIONS = {
    "window": "admission | a window length such as 30d, 12h or 30 (days): one item per admission or per window",
    "max_len": "events per item at most (static rows + the most recent events); default 256",
    "min_count": "codes seen fewer times share the unknown id (default 1)",
    "on_empty": "raise | skip: a subject with no timed event stops the load, or is left out (counted in info)",
    "admission_prefix": "code prefix that starts an admission item (default HOSPITAL_ADMISSION//)",
}
_COHORT_OPTIONS = {
    "predict_at": "hours after admission (e.g. 24): items are instead the admissions still in hospital and alive "
                  "then, each from the events strictly before it, labelled mortality, long_stay and readmission "
                  "(default: none)",
    "long_stay_days": "with predict_at: long_stay is a stay of more than this many days (default 7)",
    "readmit_days": "with predict_at: readmission is another admission within this many days of discharge (default 30)",
}


def _options(window, max_len, min_count, on_empty, admission_prefix) -> dict:
    return {"window": str(window), "max_len": int(max_len), "min_count": int(min_count), "on_empty": on_empty,
            "admission_prefix": admission_prefix}


@declare_source("meds", "ehr", "a MEDS folder: data/<split>/*.parquet (subject_id, time, code, numeric_value), "
                 "metadata/codes.parquet, metadata/subject_splits.parquet (train/tuning/held_out -> train/val/test; "
                 "else hash split)", options=_OPTIONS)
def _meds(root: Path, *, cache=None, progress=True, window="30d", max_len=256, min_count=1, on_empty="raise",
          admission_prefix="HOSPITAL_ADMISSION//"):
    _meds_files(root)  # a clear error before any cache folder is made
    base = Path(cache) if cache else default_cache_root()  # items-<content fingerprint>: a moved copy reuses it
    return open_meds_items(root, base / "meds", progress=progress,
                           **_options(window, max_len, min_count, on_empty, admission_prefix))


def mimic_meds_root(root: str | Path, cache: str | Path | None = None) -> Path:
    """The MEDS conversion of the MIMIC-IV folder ``root`` in the cache (made on first use with
    :func:`~tscl.loaders.mimic_meds.mimic_iv_to_meds`, never inside ``root``), keyed by the content of
    its CSVs: ``<cache or default_cache_root()>/mimic-iv/<fingerprint>/meds``."""
    root = Path(root)
    if not (root / "hosp").is_dir():
        raise FileNotFoundError(f"{root}: not a MIMIC-IV folder (no hosp/ with *.csv.gz tables)")
    files = [table_path(root, t) for t in (*MIMIC_TABLES, "hosp/d_labitems")]  # .csv.gz or .csv; both is refused
    fp = fingerprint_files([f for f in files if f is not None], extra="mimic-iv-meds-v2;" + ",".join(MIMIC_TABLES),
                           root=root)
    out = (Path(cache) if cache else default_cache_root()) / "mimic-iv" / fp[:16] / "meds"
    if not (out / "metadata" / "dataset.json").exists():
        tmp = out.with_name(f"meds.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*table not found.*")  # the demo has no chartevents
            mimic_iv_to_meds(root, tmp)
        try:
            os.replace(tmp, out)
        except OSError:  # another process converted it first
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@declare_source("mimic-iv", "ehr", "MIMIC-IV as PhysioNet publishes it: hosp/*.csv.gz (patients, admissions, "
                 "diagnoses_icd, labevents, prescriptions, transfers) and icu/*.csv.gz (icustays, chartevents), "
                 "converted to MEDS in the cache on first use; predict_at=24: admissions at admission + 24 h with "
                 "mortality, long_stay and readmission labels", options={**_OPTIONS, **_COHORT_OPTIONS})
def _mimic_iv(root: Path, *, cache=None, progress=True, window="admission", max_len=256, min_count=1,
              on_empty="raise", admission_prefix="HOSPITAL_ADMISSION//", predict_at=None, long_stay_days=7.0,
              readmit_days=30.0):
    meds = mimic_meds_root(root, cache)
    ds = open_meds_items(meds, meds.parent, progress=progress,
                         **_options(window, max_len, min_count, on_empty, admission_prefix))
    report = json.loads((meds / "metadata" / "conversion_report.json").read_text())
    conv = conversion_notes(report)
    ds.notes = {**ds.notes, **conv, "left_out": {**conv["left_out"], **ds.notes.get("left_out", {})}}
    if predict_at in (None, "", "none"):
        return ds
    return admission_items(root, meds, ds, horizon_h=_positive_number("predict_at", predict_at),
                           long_stay_days=_positive_number("long_stay_days", long_stay_days),
                           readmit_days=_positive_number("readmit_days", readmit_days))


def _positive_number(name: str, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not out > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return out


# ---- MIMIC-IV admissions at a prediction time ---------------------------------------------------------

def mimic_admissions(mimic_root: Path, horizon_h: float = 24.0, readmit_days: float = 30.0) -> pl.DataFrame:
    """Admissions still in hospital (and alive) at ``admittime + horizon_h``: subject_id, hadm_id,
    prediction_time, mortality (in-hospital death), discharged_alive, readmission (next admission of the
    subject within ``readmit_days`` of discharge)."""
    adm = pl.read_csv(mimic_root / "hosp" / "admissions.csv.gz", infer_schema_length=None).select(
        pl.col("subject_id").cast(pl.Int64), pl.col("hadm_id").cast(pl.Int64),
        pl.col("admittime").str.to_datetime(), pl.col("dischtime").str.to_datetime(),
        pl.col("deathtime").str.to_datetime(strict=False), pl.col("hospital_expire_flag").cast(pl.Int8))
    adm = adm.sort("subject_id", "admittime").with_columns(
        pl.col("admittime").shift(-1).over("subject_id").alias("next_admit"))
    pt = pl.col("admittime") + pl.duration(hours=horizon_h)
    adm = adm.with_columns(pt.alias("prediction_time")).filter(
        (pl.col("dischtime") > pl.col("prediction_time"))
        & (pl.col("deathtime").is_null() | (pl.col("deathtime") > pl.col("prediction_time"))))
    soon = pl.col("next_admit").is_not_null() & (
        pl.col("next_admit") - pl.col("dischtime") <= pl.duration(days=readmit_days))
    return adm.select("subject_id", "hadm_id", pl.col("prediction_time").cast(pl.Datetime("us")),
                      pl.col("hospital_expire_flag").alias("mortality"),
                      (pl.col("hospital_expire_flag") == 0).alias("discharged_alive"),
                      soon.cast(pl.Int8).alias("readmission"))


def ehr_features(events: pl.LazyFrame | pl.DataFrame, cohort: pl.DataFrame, train_subjects, *, top_k: int = 200,
                 lookback: timedelta = timedelta(days=365), exclude=("MEDS_DEATH",)) -> tuple[np.ndarray, list]:
    """``[n, d]`` features per cohort row (subject_id, prediction_time) from events strictly before
    the prediction time (see the module docstring), z-scored with training-row statistics; the code
    list, imputation and scaling use training rows only. ``exclude`` codes are never features
    (MIMIC's date of death is a date, so its midnight event can precede a same-day prediction time)."""
    lf = events.lazy()
    pt = cohort.select("subject_id", pl.col("prediction_time").cast(pl.Datetime("us"))).unique()
    before = (lf.join(pt.lazy(), on="subject_id", how="inner")
              .filter(pl.col("time").is_not_null() & (pl.col("time") < pl.col("prediction_time"))
                      & (pl.col("time") >= pl.col("prediction_time") - lookback)))
    train_pt = pt.filter(pl.col("subject_id").is_in(list(train_subjects)))
    freq = (before.join(train_pt.lazy(), on=["subject_id", "prediction_time"], how="inner")
            .group_by("code").agg(pl.struct("subject_id", "prediction_time").n_unique().alias("n"))
            .sort(["n", "code"], descending=[True, False]).collect())
    codes = freq.filter(~pl.col("code").is_in(list(exclude)))["code"].head(top_k).to_list()
    tab = tabular_features(lf, pt, lookback=lookback, codes=codes)
    tab = cohort.select("subject_id", pl.col("prediction_time").cast(pl.Datetime("us"))).join(
        tab, on=["subject_id", "prediction_time"], how="left", maintain_order="left")
    is_train = tab["subject_id"].is_in(list(train_subjects)).to_numpy()
    cols, names = [], []
    for c in codes:
        cols.append(np.log1p(tab[f"count//{c}"].fill_null(0).to_numpy().astype(np.float64)))
        names.append(f"log1p count//{c}")
        last = tab[f"last//{c}"].cast(pl.Float64).to_numpy()
        if np.isfinite(last[is_train]).any():
            med = np.nanmedian(last[is_train])
            cols.append(np.where(np.isfinite(last), last, med))
            names.append(f"last//{c}")
    static = lf.filter(pl.col("code").str.starts_with("GENDER//") | (pl.col("code") == "MEDS_BIRTH")).collect()
    birth = dict(static.filter(pl.col("code") == "MEDS_BIRTH").select("subject_id", "time").iter_rows())
    female = set(static.filter(pl.col("code") == "GENDER//F")["subject_id"].to_list())
    subj, when = tab["subject_id"].to_list(), tab["prediction_time"].to_list()
    age = np.array([(w - birth[s]).days / 365.25 if birth.get(s) is not None and birth[s] < w else np.nan
                    for s, w in zip(subj, when)])
    cols.append(np.where(np.isfinite(age), age, np.nanmedian(age[is_train]) if np.isfinite(age[is_train]).any() else 0))
    names.append("age")
    cols.append(np.array([float(s in female) for s in subj]))
    names.append("female")
    X = np.column_stack(cols)
    mean, std = X[is_train].mean(axis=0), X[is_train].std(axis=0)
    return (X - mean) / np.where(std > 0, std, 1.0), names


class AdmissionsDataset(EHRDataset):
    """MIMIC-IV admissions at a prediction time (``predict_at``): one item per admission still in hospital and
    alive then, from the events strictly before it, with :meth:`feature_baselines` (the tabular baseline)."""

    def __init__(self, *args, events: pl.DataFrame, **kwargs):
        super().__init__(*args, **kwargs)
        self._events = events

    def feature_baselines(self, rows, train_rows) -> dict:
        """``{"tabular": [len(rows), d]}``: :func:`ehr_features` of the admissions ``rows`` (index rows), its
        codes, imputation and scaling from the admissions ``train_rows`` only."""
        sub = self.index[np.asarray(rows).tolist()].select(pl.col("subject_id"), "prediction_time")
        train_subjects = set(self.index[np.asarray(train_rows).tolist()]["subject_id"].to_list())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            X, _ = ehr_features(self._events.lazy(), sub, train_subjects)
        return {"tabular": X}


def admission_items(mimic_root: Path, meds: Path, ds: EHRDataset, *, horizon_h: float = 24.0,
                    long_stay_days: float = 7.0, readmit_days: float = 30.0) -> AdmissionsDataset:
    """The admissions of :func:`mimic_admissions` at ``admittime + horizon_h`` as items, built as the source
    builds its pretraining items and with ``ds``'s vocabulary (same ids, same value statistics) but only from
    events **strictly before the prediction time**: the admission's events from its admission time (a subject's
    first admission: its whole earlier history), the subject's static rows and age; ``MEDS_DEATH`` is never an
    input (MIMIC's date of death is a date, its midnight can precede the prediction time).

    Labels: ``mortality`` (in-hospital death), ``long_stay`` (discharge more than ``long_stay_days`` after
    admission) and ``readmission`` (another admission within ``readmit_days`` of discharge; null for an
    admission not discharged alive). ``split``: the subject's split in ``ds``."""
    events = scan_meds(meds).select("subject_id", "time", "code", "numeric_value").collect()
    events = events.filter(pl.col("code") != "MEDS_DEATH")
    adm = pl.read_csv(mimic_root / "hosp" / "admissions.csv.gz", infer_schema_length=0).select(
        pl.col("subject_id").cast(pl.Int64), pl.col("hadm_id").cast(pl.Int64),
        pl.col("admittime").str.to_datetime(), pl.col("dischtime").str.to_datetime())
    first = adm.group_by("subject_id").agg(pl.col("admittime").min().alias("first_admit"))
    cohort = (mimic_admissions(mimic_root, horizon_h=horizon_h, readmit_days=readmit_days)
              .join(adm.drop("subject_id"), on="hadm_id", how="left").join(first, on="subject_id", how="left")
              .with_columns(pl.when(pl.col("admittime") > pl.col("first_admit")).then(pl.col("admittime"))
                            .otherwise(None).alias("item_start"),
                            ((pl.col("dischtime") - pl.col("admittime")).dt.total_hours() / 24 > long_stay_days)
                            .cast(pl.Int8).alias("long_stay")))
    splits = dict(zip(ds.index["patient_id"].cast(pl.Int64).to_list(), ds.index["split"].to_list()))
    splits.update({s: "test" for s in cohort["subject_id"].to_list() if s not in splits})  # no item: never pretrained
    index, flat, _, meta = build_ehr_items(events, splits, cutoffs=cohort, vocab=ds.vocab, max_len=ds.max_len,
                                           where=str(mimic_root))
    labels = cohort.select("subject_id", "hadm_id", pl.col("mortality").cast(pl.Int8), "long_stay",
                           pl.when(pl.col("discharged_alive")).then(pl.col("readmission")).alias("readmission"),
                           pl.col("discharged_alive").cast(pl.Int8))
    index = pl.concat([index, labels], how="horizontal")
    out = _dataset(index, flat, ds.vocab, {**ds.meta, **{k: meta[k] for k in ("n_items", "n_events")}})
    notes = {**ds.notes, "cohort": f"{cohort.height} admissions of {cohort['subject_id'].n_unique()} subjects in hospital "
                                   f"at admission + {horizon_h:g} h; items from events strictly before it"}
    return AdmissionsDataset(out.index, out._codes, out._values, out._times, out._start, out._length, vocab=ds.vocab,
                             meta=out.meta, notes=notes, events=events)


# ---- views -------------------------------------------------------------------------------------------

def split_events(x: Events, parts: int) -> list[Events]:
    """Each row's real events cut into ``parts`` consecutive chunks of (nearly) equal count, oldest first.

    Chunk j of a row with n real events holds its events of rank ``[⌊j·n/parts⌋, ⌊(j+1)·n/parts⌋)``
    (rank = position among the row's real events, whatever the padding layout); a row with fewer
    events than ``parts`` gives chunk j its event of rank ``min(⌊j·n/parts⌋, n − 1)``, so no chunk of
    a non-empty row is empty. Chunks keep the row's width and times (only ``mask`` changes)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    real = x.mask.bool()
    n = real.sum(dim=1, keepdim=True)
    rank = real.long().cumsum(dim=1) - 1
    chunk = torch.div(rank * parts, n.clamp(min=1), rounding_mode="floor")
    out = []
    for j in range(parts):
        mask = real & (chunk == j)
        fallback = real & (rank == torch.minimum(torch.div(j * n, parts, rounding_mode="floor"), n - 1))
        mask = torch.where(mask.any(dim=1, keepdim=True), mask, fallback)
        out.append(Events(x.codes, x.values, x.times, mask))
    return out


def neighbour_events(x: Events, segments: int = 1) -> tuple[Events, Events]:
    """PMQ's "neighbour" views on EHR: each row's events cut into ``2·segments`` consecutive chunks
    (:func:`split_events`); segment s's first chunk is a query view and the chunk right after it
    its key. Returns ``(queries, keys)`` of ``[N·segments, L]``, row ``i·segments + s`` from item i
    (the order of ``patient_ids.repeat_interleave(segments)``), as the waveform halves are."""
    chunks = split_events(x, 2 * segments)
    n, width = x.codes.shape

    def stack(views: list[Events]) -> Events:
        return Events(*(torch.stack([getattr(v, f) for v in views], dim=1).reshape(n * segments, width)
                        for f in ("codes", "values", "times", "mask")))

    return stack(chunks[0::2]), stack(chunks[1::2])


# ---- embedding -------------------------------------------------------------------------------------------

@torch.no_grad()
def ehr_embed(encoder: torch.nn.Module, dataset: EHRDataset, batch_size: int = 64, device="cpu") -> np.ndarray:
    """Every item of ``dataset`` through ``encoder(events)`` (eval mode): float32 ``[N, embed_dim]``."""
    encoder = encoder.to(device).eval()
    out = np.empty((len(dataset), encoder.embed_dim), dtype=np.float32)
    for s in range(0, len(dataset), batch_size):
        rows = np.arange(s, min(s + batch_size, len(dataset)))
        out[rows] = encoder(dataset.fetch(rows).to(device)).float().cpu().numpy()
    if not np.isfinite(out).all():
        raise FloatingPointError("the EHR encoder produced non-finite features; check the weights and the input")
    return out


for _label, _what in (("mortality", "in-hospital death"), ("long_stay", "a stay of more than 7 days"),
                      ("readmission", "another admission within 30 days of a discharge alive")):
    register_task(f"mimic-{_label.replace('_', '-')}", "mimic-iv", (_label,), "binary", options={"predict_at": 24},
                  test_splits=("val", "test"),
                  description=f"MIMIC-IV admissions at admission + 24 h: {_what}; trained on the train split's "
                              "subjects, tested on the val and test splits' (never pretrained on)")
