"""Progress bars that suit both a terminal and a batch job's log.

On a terminal (and in a notebook) :func:`progress_bar` is tqdm as usual. When its stream is not a
terminal — SLURM and CI logs, a redirected stderr — it writes a plain line at the start, then at most
one line every :data:`LOG_INTERVAL` seconds (``$TSCL_PROGRESS_INTERVAL``, default 10), and one at the
end, instead of the thousands of carriage-return frames a redrawn bar leaves in a log file.
"""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

__all__ = ["progress_bar", "LOG_INTERVAL"]

LOG_INTERVAL = float(os.environ.get("TSCL_PROGRESS_INTERVAL", "10"))


class _Lines:
    """A text stream for a bar in a log: every frame tqdm draws becomes one line of its own."""

    def __init__(self, stream):
        self.stream, self.last = stream, None

    def write(self, text: str) -> None:
        frame = text.replace("\r", "").replace("\x1b[A", "").strip()  # tqdm draws "\r<frame>", closes with "\n"
        if frame and frame != self.last:  # closing redraws the last frame: once is enough
            self.stream.write(frame + "\n")
            self.last = frame

    def flush(self) -> None:
        self.stream.flush()


def _terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)``, as one line every few seconds when its stream is not a terminal."""
    stream = kwargs.pop("file", None) or sys.stderr
    if not tqdm.__module__.startswith("tqdm.notebook") and not _terminal(stream):
        kwargs.setdefault("mininterval", LOG_INTERVAL)
        kwargs.setdefault("maxinterval", max(LOG_INTERVAL, kwargs["mininterval"]))
        kwargs.setdefault("ncols", 100)
        stream = _Lines(stream)
    return tqdm(iterable, file=stream, **kwargs)
