"""Memory-mapped waveform cache: one flat float32 shard plus a parquet index.

A cache folder holds ``signals.f32`` (every recording's ``[C,T]`` samples back to back),
``index.parquet`` (one row per recording: patient_id, record_id, fs, n_channels,
n_samples, offset, channels, visit_time, label columns) and ``fingerprint.txt``. Opening it
parses no header; reading a recording is a slice of the memory map.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import polars as pl

from tqdm.auto import tqdm

from .recording import LoaderError, Recording

__all__ = ["WaveformCache", "build_cache", "fingerprint_files", "open_fresh_cache", "read_all", "ON_ERROR"]

ON_ERROR = ("raise", "skip")

_SIGNALS = "signals.f32"
_INDEX = "index.parquet"
_FINGERPRINT = "fingerprint.txt"
_REPORT = "report.json"


def open_fresh_cache(cache_dir: str | Path, fingerprint: str) -> "WaveformCache | None":
    """The cache in ``cache_dir`` if it was built from sources with this ``fingerprint``, else None."""
    if not (Path(cache_dir) / _FINGERPRINT).exists():
        return None
    cache = WaveformCache(cache_dir)
    return cache if cache.fingerprint == fingerprint else None


def fingerprint_files(paths: Iterable[str | Path], extra: str = "") -> str:
    """Hash of the paths' names, sizes and modification times (cheap; detects changed sources)."""
    h = hashlib.sha256(extra.encode())
    for p in sorted(str(p) for p in paths):
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class WaveformCache:
    """Read side of a cache folder. ``cache[i]`` is recording i's ``[C,T]`` float32 memmap view."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        for name in (_SIGNALS, _INDEX):
            if not (self.dir / name).exists():
                raise LoaderError(self.dir / name, "cache file missing; rebuild the cache")
        self.index = pl.read_parquet(self.dir / _INDEX)
        self._signals = np.memmap(self.dir / _SIGNALS, dtype=np.float32, mode="r")
        self._offsets = self.index["offset"].to_numpy()
        self._shapes = self.index.select("n_channels", "n_samples").to_numpy()

    def __len__(self) -> int:
        return self.index.height

    def __getitem__(self, i: int) -> np.ndarray:
        c, t = self._shapes[i]
        o = self._offsets[i]
        return self._signals[o : o + c * t].reshape(c, t)

    @property
    def fingerprint(self) -> str:
        path = self.dir / _FINGERPRINT
        return path.read_text().strip() if path.exists() else ""

    @property
    def report(self) -> dict[str, Any]:
        """What the loader skipped or repaired while building (``{"skipped": [{"path", "problem"}], ...}``)."""
        path = self.dir / _REPORT
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def label_columns(self) -> list[str]:
        return json.loads((self.dir / "labels.json").read_text())

    def channel_mask(self) -> np.ndarray:
        """``[N, C]`` bool, True where a channel is present (False for zero-filled missing leads)."""
        names = [c.split(",") for c in self.index["channels"].to_list()]
        missing = ([set(m.split(",")) - {""} for m in self.index["missing_channels"].to_list()]
                   if "missing_channels" in self.index.columns else [set()] * len(self))
        width = max((len(n) for n in names), default=0)
        mask = np.zeros((len(self), width), dtype=bool)
        for i, (n, m) in enumerate(zip(names, missing)):
            mask[i, : len(n)] = [c not in m for c in n]
        return mask

    def stack(self) -> np.ndarray:
        """All recordings as one ``[N,C,T]`` array view (requires one shape for the cohort)."""
        if len({tuple(s) for s in self._shapes}) != 1:
            raise ValueError(f"{self.dir}: recordings differ in shape; read them one by one")
        c, t = self._shapes[0]
        if np.array_equal(self._offsets, np.arange(len(self)) * c * t):  # the whole cache, in order
            return self._signals[: len(self) * c * t].reshape(len(self), c, t)
        return _RowView(self._signals, self._offsets, c, t)

    def subset(self, rows) -> "WaveformCache":
        """A view of the rows ``rows`` (indices or a boolean mask) sharing this cache's memory map.

        Used to restrict pretraining or probing to a split (e.g. PTB-XL folds 1-8); the view's
        ``index`` is the selected rows, in the given order, and ``stack()`` reads only them."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise ValueError(f"boolean row mask must have {len(self)} entries, got {rows.shape}")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for a cache of {len(self)} recordings")
        view = object.__new__(WaveformCache)
        view.dir, view._signals = self.dir, self._signals
        view.index = self.index[rows.tolist()] if rows.size else self.index.clear()
        view._offsets, view._shapes = self._offsets[rows], self._shapes[rows]
        return view


class _RowView:
    """``[N, C, T]`` rows of a memory map at arbitrary offsets (a cache subset): indexing reads only
    the requested rows, as the trainer's and ``embed_signals``' batch reads do."""

    def __init__(self, signals: np.ndarray, offsets: np.ndarray, c: int, t: int):
        self._signals, self._offsets, self.shape = signals, np.asarray(offsets), (len(offsets), int(c), int(t))
        self.dtype = signals.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        c, t = self.shape[1:]
        if isinstance(rows, (int, np.integer)):
            o = int(self._offsets[rows])
            return np.asarray(self._signals[o : o + c * t]).reshape(c, t)
        offs = self._offsets[rows]
        idx = offs[:, None] + np.arange(c * t)[None, :]
        return np.asarray(self._signals[idx]).reshape(len(offs), c, t)

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(len(self))]
        return out.astype(dtype) if dtype is not None else out


def build_cache(recordings: Iterable[Recording], cache_dir: str | Path, fingerprint: str = "",
                report: dict[str, Any] | None = None) -> WaveformCache:
    """Write recordings to a cache folder atomically (temporary names, then rename).

    ``report`` (JSON-serialisable; read back as ``WaveformCache.report``) is written after the
    recordings are consumed, so a generator may fill it while it yields.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp_sig = cache_dir / (_SIGNALS + ".tmp")
    rows, offset = [], 0
    label_cols: list[str] = []
    with open(tmp_sig, "wb") as f:
        for rec in recordings:
            f.write(np.ascontiguousarray(rec.signal, dtype=np.float32).tobytes())
            for key in rec.labels:
                if key not in label_cols:
                    label_cols.append(key)
            rows.append(
                {
                    "patient_id": rec.patient_id,
                    "record_id": rec.record_id,
                    "fs": float(rec.fs),
                    "n_channels": rec.n_channels,
                    "n_samples": rec.n_samples,
                    "offset": offset,
                    "channels": ",".join(rec.channels),
                    "visit_time": rec.start_time,
                    "source": rec.source,
                    **{f"label:{k}": v for k, v in rec.labels.items()},
                    "nan_samples": int(rec.quality.get("nan_samples", 0)),
                    "missing_channels": ",".join(rec.quality.get("missing_channels", ())),
                }
            )
            offset += rec.signal.size
    if not rows:
        tmp_sig.unlink()
        raise LoaderError(cache_dir, f"no recordings to cache{_skipped_note(report)}")
    index = pl.DataFrame(rows, infer_schema_length=None)
    index = index.rename({c: c.removeprefix("label:") for c in index.columns if c.startswith("label:")})
    index = index.select([c for c in index.columns if c not in ("nan_samples", "missing_channels")]
                         + ["nan_samples", "missing_channels"])
    index.write_parquet(cache_dir / (_INDEX + ".tmp"))
    (cache_dir / "labels.json.tmp").write_text(json.dumps(label_cols))
    (cache_dir / (_FINGERPRINT + ".tmp")).write_text(fingerprint)
    (cache_dir / (_REPORT + ".tmp")).write_text(json.dumps(report or {}, indent=1, default=str))
    for name in (_SIGNALS, _INDEX, "labels.json", _FINGERPRINT, _REPORT):
        os.replace(cache_dir / (name + ".tmp"), cache_dir / name)
    return WaveformCache(cache_dir)


def _skipped_note(report) -> str:
    skipped = (report or {}).get("skipped") or []
    return f" ({len(skipped)} skipped, first: {skipped[0]})" if skipped else ""


def _attempt(read_one: Callable, item):
    try:
        return read_one(item)
    except LoaderError as err:
        return err


def read_all(read_one: Callable[[Any], Recording | list[Recording]], items: list, *, workers: int = 0,
             progress: bool = True, desc: str = "reading", on_error: str = "raise",
             skipped: list | None = None) -> Iterator[Recording]:
    """Apply ``read_one`` to every item (in order), yielding recordings; optionally in worker processes.

    ``read_one`` returns a recording or a list of them (windows) and raises :class:`LoaderError`
    for bad input. With ``on_error="raise"`` the first error propagates; with ``"skip"`` the item
    is left out and ``{"path", "problem"}`` is appended to ``skipped``. ``workers > 0`` reads in
    that many processes (``read_one`` and the items must be picklable).
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    attempt = partial(_attempt, read_one)
    pool = ProcessPoolExecutor(workers) if workers and workers > 0 else None
    try:
        results = pool.map(attempt, items, chunksize=max(1, min(64, len(items) // (8 * workers)))) if pool else map(attempt, items)
        for result in tqdm(results, total=len(items), desc=desc, disable=not progress):
            if isinstance(result, LoaderError):
                if on_error == "raise":
                    raise result
                if skipped is not None:
                    skipped.append({"path": result.path, "problem": result.problem})
                continue
            if isinstance(result, Recording):
                yield result
            else:
                yield from result
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
