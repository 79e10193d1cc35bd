"""Per-recording transforms applied while building a cache: resampling and lead harmonisation."""
from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

from .recording import LoaderError, Recording

__all__ = ["resample", "harmonise_channels", "prepare"]


def resample(rec: Recording, fs: float, *, max_denominator: int = 1000) -> Recording:
    """``rec`` at ``fs`` Hz by polyphase filtering (scipy ``resample_poly``, whose FIR low-pass
    removes content above the new Nyquist frequency before decimating).

    The rate ratio is approximated by a fraction with denominator at most ``max_denominator``;
    the recording's ``fs`` is set to the rate actually obtained. NaN samples raise (filtering
    would smear them); handle them first with a NaN policy.
    """
    if fs <= 0:
        raise ValueError(f"target rate must be positive, got {fs}")
    if rec.fs == fs:
        return rec
    if not np.isfinite(rec.signal).all():
        raise LoaderError(rec.source or rec.record_id, "cannot resample a signal holding NaN; apply a nan_policy first")
    ratio = Fraction(fs / rec.fs).limit_denominator(max_denominator)
    up, down = ratio.numerator, ratio.denominator
    signal = resample_poly(rec.signal, up, down, axis=1).astype(np.float32)
    return replace(rec, signal=signal, fs=rec.fs * up / down, quality={**rec.quality, "resampled_from": rec.fs})


def harmonise_channels(rec: Recording, channels) -> Recording:
    """``rec`` with exactly ``channels`` in that order; a missing channel becomes zeros and is listed
    in ``quality["missing_channels"]`` (the cache records it; ``WaveformCache.channel_mask`` reads it)."""
    channels = tuple(channels)
    present = {c: i for i, c in enumerate(rec.channels)}
    signal = np.zeros((len(channels), rec.n_samples), dtype=np.float32)
    units = []
    for j, c in enumerate(channels):
        if c in present:
            signal[j] = rec.signal[present[c]]
            units.append(rec.units[present[c]] if rec.units else "")
        else:
            units.append("")
    missing = tuple(c for c in channels if c not in present)
    return replace(rec, signal=signal, channels=channels, units=tuple(units) if rec.units else (),
                   quality={**rec.quality, "missing_channels": missing})


def prepare(rec: Recording, fs: float | None = None, channels=None) -> Recording:
    """Harmonise channels (when ``channels`` is given), then resample (when ``fs`` is given)."""
    if channels is not None:
        rec = harmonise_channels(rec, channels)
    if fs is not None:
        rec = resample(rec, fs)
    return rec
