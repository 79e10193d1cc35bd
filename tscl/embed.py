"""Frozen features: run an encoder over a cache, an array or a dataset without gradients."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from tscl.progress import progress_bar

__all__ = ["embed_signals", "embed_dataset", "embed_rows"]


@torch.no_grad()
def embed_rows(encoder: torch.nn.Module, n: int, fetch: Callable, batch_size: int = 256,
               device: str | torch.device = "cpu", progress: bool = True, desc: str = "embedding") -> np.ndarray:
    """``encoder(fetch(rows))`` for consecutive batches of ``rows`` in ``0 .. n - 1`` -> float32
    ``[n, encoder.embed_dim]``; ``fetch`` returns the payload of those rows (a tensor or any payload with
    ``.to(device)``). Non-finite features raise."""
    encoder = encoder.to(device).eval()
    out = np.empty((n, encoder.embed_dim), dtype=np.float32)
    for start in progress_bar(range(0, n, batch_size), desc=desc, disable=not progress):
        rows = np.arange(start, min(start + batch_size, n))
        out[rows] = encoder(fetch(rows).to(device)).float().cpu().numpy()
    if not np.isfinite(out).all():
        raise FloatingPointError("encoder produced non-finite features; check the weights and the input scale")
    return out


def embed_signals(encoder: torch.nn.Module, signals, batch_size: int = 256, device: str | torch.device = "cpu",
                  progress: bool = True) -> np.ndarray:
    """``signals [N, C, T]`` (array or memmap) -> float32 features ``[N, encoder.embed_dim]``."""
    def fetch(rows):
        return torch.from_numpy(np.array(signals[rows[0]: rows[-1] + 1], dtype=np.float32))

    return embed_rows(encoder, len(signals), fetch, batch_size, device, progress)


def embed_dataset(encoder: torch.nn.Module, dataset, batch_size: int = 256, device: str | torch.device = "cpu",
                  progress: bool = True) -> np.ndarray:
    """Features of every item of a :class:`~tscl.datasets.Dataset` (any modality), fetched as pretraining
    fetches them (same normalisation) -> float32 ``[len(dataset), encoder.embed_dim]``."""
    return embed_rows(encoder, len(dataset), dataset.fetch, batch_size, device, progress)
