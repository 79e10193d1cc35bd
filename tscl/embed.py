"""Frozen features: run an encoder over a cache (or an array) without gradients."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["embed_signals", "embed_dataset"]


@torch.no_grad()
def embed_signals(encoder: torch.nn.Module, signals, batch_size: int = 256, device: str | torch.device = "cpu",
                  progress: bool = True) -> np.ndarray:
    """``signals [N, C, T]`` (array or memmap) -> float32 features ``[N, encoder.embed_dim]``."""
    encoder = encoder.to(device).eval()
    out = np.empty((len(signals), encoder.embed_dim), dtype=np.float32)
    for start in tqdm(range(0, len(signals), batch_size), desc="embedding", disable=not progress):
        x = torch.from_numpy(np.array(signals[start : start + batch_size], dtype=np.float32)).to(device)
        out[start : start + len(x)] = encoder(x).float().cpu().numpy()
    if not np.isfinite(out).all():
        raise FloatingPointError("encoder produced non-finite features; check the weights and the input scale")
    return out


@torch.no_grad()
def embed_dataset(encoder: torch.nn.Module, dataset, batch_size: int = 256, device: str | torch.device = "cpu",
                  progress: bool = True) -> np.ndarray:
    """Features of every item of a :class:`~tscl.datasets.Dataset` (any modality), fetched as pretraining
    fetches them (same normalisation) -> float32 ``[len(dataset), encoder.embed_dim]``."""
    from tscl.datasets import to_device

    encoder = encoder.to(device).eval()
    out = np.empty((len(dataset), encoder.embed_dim), dtype=np.float32)
    for start in tqdm(range(0, len(dataset), batch_size), desc="embedding", disable=not progress):
        rows = np.arange(start, min(start + batch_size, len(dataset)))
        out[rows] = encoder(to_device(dataset.fetch(rows), device)).float().cpu().numpy()
    if not np.isfinite(out).all():
        raise FloatingPointError("encoder produced non-finite features; check the weights and the input scale")
    return out
