"""Background batch prefetch: the trainer's data side (rows from a sampler -> payloads on the host, ahead of the step)."""
from __future__ import annotations

import queue
import threading
import time

import numpy as np

from tscl.datasets import pin_payload

__all__ = ["Prefetcher"]


class Prefetcher:
    """Batches ``(tag, payload, {name: [B]})`` fetched from a dataset in a background thread, ``depth`` ahead,
    for every ``(tag, rows)`` of ``batches`` (the trainer's tag is the epoch).

    ``payload`` is whatever ``dataset.fetch(rows)`` returns for its modality (a waveform tensor,
    EHR :class:`~tscl.datasets.Events`, images); ``wait`` is how long the last ``next`` blocked."""

    def __init__(self, batches, fetch, columns: dict, pin: bool, depth: int = 2):
        self.fetch, self.columns, self.pin = fetch, columns, pin
        self.queue: queue.Queue = queue.Queue(max(1, depth))
        self.stop, self.wait = threading.Event(), 0.0
        self.thread = threading.Thread(target=self._fill, args=(batches,), daemon=True)
        self.thread.start()

    def _load(self, item):
        tag, rows = item
        rows = np.asarray(rows)
        x = self.fetch(rows)
        batch = {name: col[rows] for name, col in self.columns.items()}
        if self.pin:
            x, batch = pin_payload(x), {k: v.pin_memory() for k, v in batch.items()}
        return tag, x, batch

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _fill(self, batches):
        try:
            for item in batches:
                if not self._put(self._load(item)):
                    return
            self._put(None)
        except BaseException as err:  # handed to the training thread
            self._put(err)

    def __iter__(self):
        while True:
            t0 = time.perf_counter()
            item = self.queue.get()
            self.wait = time.perf_counter() - t0
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
