"""Cutting recordings into fixed-length windows, with an explicit NaN policy."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta

import numpy as np

from .recording import LoaderError, Recording, apply_nan_policy

__all__ = ["WindowReport", "cut_window", "window_recording"]


@dataclass
class WindowReport:
    """What windowing kept and left out of one recording."""

    source: str
    kept: int = 0
    dropped_nan: int = 0
    dropped_edge: int = 0
    dropped_other: int = 0
    notes: list[str] = field(default_factory=list)
    tail_samples: int = 0  # samples after the end of the last window (the edge drop)
    fs: float = 0.0

    def as_dict(self) -> dict:
        return {"source": self.source, "kept": self.kept, "dropped_nan": self.dropped_nan,
                "dropped_edge": self.dropped_edge, "dropped_other": self.dropped_other, "notes": self.notes,
                "tail_samples": self.tail_samples, "tail_s": self.tail_samples / self.fs if self.fs else 0.0}


def cut_window(rec: Recording, start: int, stop: int, *, record_id: str | None = None, labels=None) -> Recording:
    """Samples ``[start, stop)`` of ``rec`` as a new recording (a copy) with the parent's labels plus ``labels``.

    ``record_id`` defaults to ``"<record_id>:<start>"``; the start time moves with the window
    and ``window_start`` (in samples of the parent) is added to the labels.
    """
    if start < 0 or stop > rec.n_samples or stop <= start:
        raise LoaderError(rec.source, f"window [{start}, {stop}) outside the recording's {rec.n_samples} samples")
    start_time = rec.start_time + timedelta(seconds=start / rec.fs) if rec.start_time is not None else None
    return replace(rec, signal=rec.signal[:, start:stop].copy(), record_id=record_id or f"{rec.record_id}:{start}",
                   start_time=start_time, labels={**rec.labels, "window_start": int(start), **(labels or {})},
                   quality={k: v for k, v in rec.quality.items() if k != "nan_samples"})


def window_recording(rec: Recording, window_s: float, stride_s: float | None = None, *, nan_policy: str = "drop",
                     max_gap_s: float = 0.1, labels=None) -> tuple[list[Recording], WindowReport]:
    """Cut ``rec`` into windows of ``window_s`` seconds every ``stride_s`` (default: no overlap).

    NaN handling (:func:`apply_nan_policy`): ``"drop"`` leaves out windows holding any NaN,
    ``"interpolate"`` fills gaps up to ``max_gap_s`` first (longer gaps raise), ``"fail"``
    raises on any NaN. The trailing part shorter than a window is left out (counted as an edge
    drop; ``tail_samples`` says how long it was, so a recording shorter than one window is
    counted as one edge drop of its whole length). The report counts every window left out.
    """
    size = int(round(window_s * rec.fs))
    step = int(round((stride_s or window_s) * rec.fs))
    if size <= 0 or step <= 0:
        raise ValueError(f"window_s and stride_s must give at least one sample at {rec.fs} Hz")
    report = WindowReport(rec.source, fs=float(rec.fs))
    signal, _ = apply_nan_policy(rec.signal.copy(), nan_policy, rec.source, rec.channels,
                                 max_gap=int(round(max_gap_s * rec.fs)))
    rec = replace(rec, signal=signal)
    bad = np.isnan(signal).any(axis=0)
    bad_before = np.concatenate(([0], np.cumsum(bad)))
    windows = []
    starts = range(0, max(rec.n_samples - size, -1) + 1, step)
    for start in starts:
        if bad_before[start + size] - bad_before[start]:
            report.dropped_nan += 1
            continue
        windows.append(cut_window(rec, start, start + size, labels=labels))
    last_end = (starts[-1] + size) if len(starts) else 0
    if rec.n_samples - last_end > 0:
        report.dropped_edge += 1
        report.tail_samples = int(rec.n_samples - last_end)
    report.kept = len(windows)
    return windows, report
