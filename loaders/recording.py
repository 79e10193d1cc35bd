"""The recording model every loader produces, and the error every loader raises."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Recording", "LoaderError", "check_signal", "apply_nan_policy", "NAN_POLICIES", "ECG_LEADS"]

# the standard 12-lead order (PTB-XL, CinC, the simulator); every module that names the leads imports it
ECG_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

NAN_POLICIES = ("fail", "keep", "interpolate", "drop")


class LoaderError(ValueError):
    """A file could not be turned into a recording. The message names the file and the problem, on one line
    (line breaks in ``problem``, e.g. from a library's own message, are folded into spaces)."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = re.sub(r"\s*[\r\n]+\s*", " ", str(problem)).strip()
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):  # raised in a worker process, re-raised intact in the parent
        return LoaderError, (self.path, self.problem)


@dataclass
class Recording:
    """One recording: ``signal`` is float32 ``[channels, samples]`` in physical units (mV for ECG).

    ``patient_id`` is a string (PhysioNet ids vary in form); ``record_id`` is unique within a
    dataset. ``labels`` maps label names to values (binary 0/1, numbers or strings).
    ``quality`` records what a loader did to the samples (e.g. how many NaNs it interpolated).
    ``adc`` (optional, from readers of integer formats) describes each channel as
    ``(gain, baseline, unit)`` with ``signal = float32((digital - baseline) / gain) * unit``; the
    cache then stores the int16 digital values when that gives back ``signal`` exactly.
    """

    signal: np.ndarray
    fs: float
    channels: tuple[str, ...]
    patient_id: str
    record_id: str
    start_time: datetime | None = None
    units: tuple[str, ...] = ()
    labels: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    quality: dict[str, Any] = field(default_factory=dict)
    adc: tuple | None = None

    def __post_init__(self):
        self.signal = np.ascontiguousarray(self.signal, dtype=np.float32)
        if self.signal.ndim != 2:
            raise LoaderError(self.source or self.record_id, f"signal must be [channels, samples], got shape {self.signal.shape}")
        if len(self.channels) != self.signal.shape[0]:
            raise LoaderError(
                self.source or self.record_id,
                f"{len(self.channels)} channel names for {self.signal.shape[0]} signal rows",
            )
        self.channels = tuple(self.channels)
        self.units = tuple(self.units)
        if not (np.isfinite(self.fs) and self.fs > 0):
            raise LoaderError(self.source or self.record_id, f"sampling frequency {self.fs} Hz is not positive")

    @property
    def n_channels(self) -> int:
        return self.signal.shape[0]

    @property
    def n_samples(self) -> int:
        return self.signal.shape[1]

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs


def check_signal(signal: np.ndarray, path: str | Path, channels=None) -> None:
    """Raise a :class:`LoaderError` naming the file, the channel and the sample when the signal holds NaN/inf."""
    bad = ~np.isfinite(signal)
    if bad.any():
        c, t = np.argwhere(bad)[0]
        name = channels[c] if channels is not None else str(c)
        raise LoaderError(
            path,
            f"{int(bad.sum())} non-finite samples (first in channel {name!r} at sample {int(t)}); "
            "choose a NaN policy (interpolate / drop) instead of training on them",
        )


def _nan_runs(row: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of NaN in a 1-D array."""
    bad = np.isnan(row).astype(np.int8)
    edges = np.diff(np.concatenate(([0], bad, [0])))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def apply_nan_policy(signal: np.ndarray, policy: str, path: str | Path, channels=None,
                     max_gap: int = 0) -> tuple[np.ndarray, dict]:
    """Handle non-finite samples of ``signal [C,T]`` by an explicit policy; return it and a report.

    ``"fail"``: raise :class:`LoaderError` naming the file, channel and sample.
    ``"keep"``: leave NaN in place (the report counts them).
    ``"interpolate"``: fill each gap of at most ``max_gap`` samples linearly between its
    neighbours (a gap at the edge takes the nearest valid value); a longer gap raises.
    ``"drop"``: leave NaN in place for the windowing step, which drops windows holding any.
    The report is ``{"nan_samples": n, "nan_policy": policy, "interpolated": k}`` (empty when clean).
    """
    if policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {policy!r}")
    signal[np.isinf(signal)] = np.nan
    n_bad = int(np.isnan(signal).sum())
    if n_bad == 0:
        return signal, {}
    if policy == "fail":
        check_signal(signal, path, channels)
    report = {"nan_samples": n_bad, "nan_policy": policy, "interpolated": 0}
    if policy != "interpolate":
        return signal, report
    t = np.arange(signal.shape[1])
    for c in range(signal.shape[0]):
        row = signal[c]
        runs = _nan_runs(row)
        if not runs:
            continue
        long = [(a, b) for a, b in runs if b - a > max_gap]
        if long or np.isnan(row).all():
            a, b = long[0] if long else (0, row.size)
            name = channels[c] if channels is not None else str(c)
            raise LoaderError(path, f"channel {name!r} has a gap of {b - a} invalid samples at sample {a}, longer "
                                    f"than max_gap={max_gap}; use nan_policy='drop' or a larger max_gap")
        good = ~np.isnan(row)
        row[~good] = np.interp(t[~good], t[good], row[good])
    report["interpolated"] = n_bad
    return signal, report
