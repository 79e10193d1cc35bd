"""What the GPU benchmarks measure from a torch profiler trace (torch only: runs where polars and wfdb are absent)."""
from __future__ import annotations

import torch

__all__ = ["gpu_busy"]


def gpu_busy(prof) -> float:
    """Union of CUDA kernel intervals / span from the first kernel start to the last kernel end."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    if not spans:
        return float("nan")
    busy, (lo, hi) = 0.0, spans[0]
    for s, e in spans[1:]:
        if s > hi:
            busy, lo, hi = busy + hi - lo, s, e
        else:
            hi = max(hi, e)
    busy += hi - lo
    return busy / (max(e for _, e in spans) - spans[0][0])
