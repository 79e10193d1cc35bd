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
from pathlib import Path
from typing import Iterable

import numpy as np
import polars as pl

from .recording import LoaderError, Recording

__all__ = ["WaveformCache", "build_cache", "fingerprint_files"]

_SIGNALS = "signals.f32"
_INDEX = "index.parquet"
_FINGERPRINT = "fingerprint.txt"


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
    def label_columns(self) -> list[str]:
        return json.loads((self.dir / "labels.json").read_text())

    def stack(self) -> np.ndarray:
        """All recordings as one ``[N,C,T]`` array view (requires one shape for the cohort)."""
        if len({tuple(s) for s in self._shapes}) != 1:
            raise ValueError(f"{self.dir}: recordings differ in shape; read them one by one")
        c, t = self._shapes[0]
        return self._signals[: len(self) * c * t].reshape(len(self), c, t)


def build_cache(recordings: Iterable[Recording], cache_dir: str | Path, fingerprint: str = "") -> WaveformCache:
    """Write recordings to a cache folder atomically (temporary names, then rename)."""
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
                }
            )
            offset += rec.signal.size
    if not rows:
        tmp_sig.unlink()
        raise LoaderError(cache_dir, "no recordings to cache")
    index = pl.DataFrame(rows, infer_schema_length=None)
    index = index.rename({c: c.removeprefix("label:") for c in index.columns if c.startswith("label:")})
    index.write_parquet(cache_dir / (_INDEX + ".tmp"))
    (cache_dir / "labels.json.tmp").write_text(json.dumps(label_cols))
    (cache_dir / (_FINGERPRINT + ".tmp")).write_text(fingerprint)
    for name in (_SIGNALS, _INDEX, "labels.json", _FINGERPRINT):
        os.replace(cache_dir / (name + ".tmp"), cache_dir / name)
    return WaveformCache(cache_dir)
