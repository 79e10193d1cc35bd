"""Frozen features: run an encoder over a cache (or an array) without gradients."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["embed_signals"]


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
