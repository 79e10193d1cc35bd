"""Batch payloads, the one thing every stage after a source hands on: a ``Tensor`` or :class:`Events`.

Torch only (no polars): methods, encoders and the trainer's step import these without the
dataset layer, so the GPU check runs where only torch, numpy and triton are installed.
:mod:`tscl.datasets` re-exports every name here.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

__all__ = ["Events", "to_device", "pin_payload", "cat_payloads", "payload_len"]


@dataclass
class Events:
    """A batch of EHR event sequences, oldest event first in each row.

    ``codes [B, L]`` int64 vocabulary ids (0 = padding), ``values [B, L]`` float32 numeric values
    (NaN where an event has none), ``times [B, L]`` float32 hours since the item's first event,
    ``mask [B, L]`` bool (True = a real event)."""

    codes: Tensor
    values: Tensor
    times: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.codes.shape[0]

    def _map(self, fn) -> "Events":
        return Events(*(fn(getattr(self, f.name)) for f in fields(self)))

    def to(self, device, non_blocking: bool = False) -> "Events":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Events":
        return self._map(lambda t: t.pin_memory())

    def __getitem__(self, rows) -> "Events":
        return self._map(lambda t: t[rows])

    @staticmethod
    def cat(parts: list["Events"]) -> "Events":
        width = max(p.codes.shape[1] for p in parts)

        def pad(t: Tensor, value) -> Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

        return Events(torch.cat([pad(p.codes, 0) for p in parts]), torch.cat([pad(p.values, float("nan")) for p in parts]),
                      torch.cat([pad(p.times, 0.0) for p in parts]), torch.cat([pad(p.mask, False) for p in parts]))


def to_device(x, device, non_blocking: bool = False):
    """A payload (tensor or :class:`Events`) on ``device``."""
    return x.to(device, non_blocking=non_blocking)


def pin_payload(x):
    return x.pin_memory()


def cat_payloads(parts: list):
    """Stack payloads along the batch dimension (views of a batch, batches of a dataset)."""
    if isinstance(parts[0], Events):
        return Events.cat(parts)
    return torch.cat(parts)


def payload_len(x) -> int:
    return len(x)
