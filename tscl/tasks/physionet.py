"""PhysioNet annotated-record tasks: MIT-BIH (+ SVDB) beats and CPSC 2021 rhythm windows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl


def fixed_length(windows: np.ndarray, length: int) -> np.ndarray:
    """Linear interpolation of ``[N, C, T]`` windows to ``length`` samples (same duration)."""
    if windows.shape[-1] == length:
        return windows
    t_old = np.linspace(0, 1, windows.shape[-1])
    t_new = np.linspace(0, 1, length)
    flat = windows.reshape(-1, windows.shape[-1])
    out = np.stack([np.interp(t_new, t_old, row) for row in flat])
    return out.reshape(*windows.shape[:-1], length).astype(np.float32)


def mitdb_beats(root: Path, cache: Path):
    from tscl.loaders.annotations import load_annotated

    parts, frames, notes = [], [], []
    for db in ("mitdb", "svdb"):
        records = sorted(p.with_suffix("") for p in (root / "physionet" / db).glob("*.atr")
                         if p.with_suffix(".dat").exists())
        if not records:
            continue
        c = load_annotated(records, kind="beats", cache_dir=cache / f"beats_{db}", progress=False)
        idx = c.index.with_row_index("row").filter(pl.col("aami").is_in(["N", "V"]))
        sig = np.stack([np.asarray(c[i])[:2] for i in idx["row"].to_list()])
        parts.append(fixed_length(sig, 252))  # 0.7 s at 360 Hz
        frames.append(idx.select(pl.col("patient_id").cast(pl.Utf8), pl.col("record_id").cast(pl.Utf8),
                                 (pl.col("aami") == "V").cast(pl.Int8).alias("V"), pl.lit(db).alias("database")))
        notes.append(f"{db}: {len(records)} record(s), {idx.height} N/V beats, first 2 channels, 0.7 s windows "
                     "resampled to 252 samples (360 Hz)")
    if not parts:
        raise FileNotFoundError(root / "physionet" / "mitdb")
    idx = pl.concat(frames)
    idx = idx.with_columns((pl.col("database") + "/" + pl.col("patient_id")).alias("patient_id"))
    return np.concatenate(parts), idx, notes


def cpsc2021(root: Path, cache: Path):
    from tscl.loaders.annotations import load_annotated

    records = sorted(p.with_suffix("") for p in (root / "physionet" / "cpsc2021").glob("*.atr"))
    c = load_annotated(records, kind="rhythm", cache_dir=cache / "cpsc2021_rhythm", progress=False,
                       window_s=10.0, default_rhythm="N")
    idx = c.index.with_row_index("row").filter(pl.col("rhythm").is_in(["N", "AFIB"]))
    X = np.stack([np.asarray(c[i]) for i in idx["row"].to_list()])
    notes = [f"{len(records)} records, 10 s windows inside one rhythm interval; AFIB vs N (other rhythms left out); "
             "records without rhythm annotations count as N"]
    return X, idx.with_columns(pl.col("afib").cast(pl.Int8)), notes
