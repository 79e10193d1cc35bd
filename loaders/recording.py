"""The recording model every loader produces, and the error every loader raises."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Recording", "LoaderError", "check_signal"]


class LoaderError(ValueError):
    """A file could not be turned into a recording. The message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class Recording:
    """One recording: ``signal`` is float32 ``[channels, samples]`` in physical units (mV for ECG).

    ``patient_id`` is a string (PhysioNet ids vary in form); ``record_id`` is unique within a
    dataset. ``labels`` maps label names to values (binary 0/1, numbers or strings).
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
