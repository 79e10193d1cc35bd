"""A fast writer of single-segment WFDB records (format 16) for float signals in mV.

``wfdb.wrsamp`` is correct but slow (tens of ms per record); cohorts of thousands of
records are written with this instead, and ``wfdb.rdrecord`` reads the result (tested).
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

__all__ = ["write_wfdb"]


def write_wfdb(path: str | Path, signal: np.ndarray, fs: float, sig_names, units="mV", gain: float = 1000.0,
               start: datetime | None = None) -> Path:
    """Write ``signal [C,T]`` (physical units) as ``<path>.hea`` + ``<path>.dat``; returns the header path.

    Samples are stored as int16 = round(signal * gain); values outside the int16 range raise.
    """
    path = Path(path)
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 2 or signal.shape[0] != len(sig_names):
        raise ValueError(f"signal must be [{len(sig_names)}, T], got {signal.shape}")
    if not np.isfinite(signal).all():
        raise ValueError(f"{path}: refusing to write non-finite samples")
    digital = np.round(signal * gain)
    if np.abs(digital).max(initial=0) > 32767:
        raise ValueError(f"{path}: signal exceeds the int16 range at gain {gain}; lower the gain")
    digital = digital.astype("<i2")
    c, t = digital.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    digital.T.tofile(path.with_suffix(".dat"))
    units = [units] * c if isinstance(units, str) else list(units)
    first = f"{path.name} {c} {fs:g} {t}"
    if start is not None:
        first += f" {start:%H:%M:%S} {start:%d/%m/%Y}"
    lines = [first]
    checksums = digital.astype(np.int64).sum(axis=1) % 65536
    for i, name in enumerate(sig_names):
        lines.append(f"{path.name}.dat 16 {gain:g}(0)/{units[i]} 16 0 {int(digital[i, 0]) if t else 0} {int(checksums[i])} 0 {name}")
    hea = path.with_suffix(".hea")
    hea.write_text("\n".join(lines) + "\n")
    return hea
