"""Filters over a stream of recordings that several loaders share: they yield what passes and list
what they leave out (``{"path", "problem"}``), so a loader can report it."""
from __future__ import annotations

from .recording import LoaderError

__all__ = ["check_same_channels", "drop_nan_recordings", "split_reports"]


def check_same_channels(recordings, expected=None, on_error: str = "raise", skipped: list | None = None):
    """Yield recordings that have the cohort's channels (``expected``, or the first recording's).

    A recording with other channels (count or names) raises a :class:`LoaderError` naming its
    file, or with ``on_error="skip"`` is left out and listed in ``skipped``.
    """
    expected = list(expected) if expected is not None else None
    origin = "" if expected is None else " (as asked)"
    for rec in recordings:
        if expected is None:
            expected, origin = list(rec.channels), f" (those of {rec.source or rec.record_id}, the first recording)"
        elif list(rec.channels) != expected:
            err = LoaderError(rec.source, f"has {rec.n_channels} channels {list(rec.channels)}, the cohort has "
                                          f"{len(expected)} {expected}{origin}")
            if on_error == "raise":
                raise err
            if skipped is not None:
                skipped.append({"path": err.path, "problem": err.problem})
            continue
        yield rec


def drop_nan_recordings(recordings, dropped: list):
    """Yield recordings without NaN; list the others in ``dropped`` (``nan_policy="drop"`` for whole records)."""
    for rec in recordings:
        if rec.quality.get("nan_samples"):
            dropped.append({"path": rec.source, "problem": f"{rec.quality['nan_samples']} invalid (NaN) samples"})
            continue
        yield rec


def split_reports(items, reports: list):
    """Yield the recordings of a reader's output; its per-file report dicts go to ``reports``."""
    for item in items:
        if isinstance(item, dict):
            reports.append(item)
        else:
            yield item
