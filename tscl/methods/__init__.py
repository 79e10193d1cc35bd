"""Contrastive methods: each a small module mapping a batch to (q, k, ids, bank) for ``info_nce``.

A method is an ``nn.Module`` with:

- ``encoder`` (the backbone that is exported and probed) and whatever heads it needs;
- ``make_sampler(index, seed)``: a batch sampler over the cohort index (polars DataFrame);
- ``forward(x [B, C, T], batch)``: the loss for one batch, ``batch`` holding int64 tensors
  such as ``patient_ids`` and ``record_ids`` aligned with ``x``;
- optional ``after_step()`` for state updated outside autograd (EMA encoders, queues).
"""
from .pclr import PCLR

METHODS = {"pclr": PCLR}


def build_method(name: str, encoder, **kwargs):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name](encoder, **kwargs)


__all__ = ["METHODS", "build_method", "PCLR"]
