"""A patch transformer for multichannel time series with any lead/electrode set."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import check_channel_mask, declare_encoder
from .transformer import AttentionPool, Block, sinusoidal_encoding

__all__ = ["Transformer1d"]


@declare_encoder("waveform")
class Transformer1d(nn.Module):
    """Channel-independent patch transformer: one token per (channel, patch).

    Each channel is cut into non-overlapping patches of ``patch_len`` samples (the last one
    zero-padded), and every patch is embedded by one shared linear map, as in PatchTST (Nie
    et al., ICLR 2023). A token is::

        token[c, p] = W patch[c, p] + channel_embedding[name of c] + time_encoding(p)

    The channel embedding is looked up by channel **name** (``channel_names`` given at
    construction, e.g. ``("I", "II", ..., "V6")`` or the 10-20 EEG electrodes), so one model
    accepts any subset or order of known channels and any length. The time encoding is
    sinusoidal in the patch index (any length) or learned (up to ``max_patches``). A [CLS]
    token is prepended; the output is its final state (``pool="cls"``) or a learned-query
    attention pool over all valid tokens (``pool="attention"``). Attention runs through
    ``F.scaled_dot_product_attention`` (Vaswani et al., NeurIPS 2017; pre-LN blocks).

    Forward: ``x [B, C, T]``, ``channel_mask [B, C]`` (True = present), ``channels`` the C
    names of x's rows (default: ``channel_names`` in order) -> ``[B, embed_dim]``.
    Tokens of missing channels are removed from attention by the key mask (their values
    are also set to 0 first, so a NaN there cannot leak), so the values of a missing
    channel cannot change the output. Cost grows with (C * T / patch_len)^2.
    """

    def __init__(
        self,
        in_channels: int,
        channel_names: Sequence[str] | None = None,
        patch_len: int = 50,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        pool: str = "cls",
        time_encoding: str = "sinusoidal",
        max_patches: int = 512,
    ):
        super().__init__()
        if pool not in ("cls", "attention"):
            raise ValueError(f"pool must be 'cls' or 'attention', got {pool!r}")
        if time_encoding not in ("sinusoidal", "learned"):
            raise ValueError(f"time_encoding must be 'sinusoidal' or 'learned', got {time_encoding!r}")
        names = tuple(channel_names) if channel_names is not None else tuple(str(i) for i in range(in_channels))
        if len(set(names)) != len(names):
            raise ValueError(f"channel_names must be unique, got {names}")
        self.channel_names = names
        self.channel_index = {n: i for i, n in enumerate(names)}
        self.in_channels, self.patch_len, self.embed_dim = in_channels, patch_len, dim
        self.pool, self.time_encoding, self.max_patches = pool, time_encoding, max_patches
        self.patch = nn.Linear(patch_len, dim)
        self.channel_embedding = nn.Embedding(len(names), dim)
        self.position = nn.Parameter(torch.zeros(max_patches, dim)) if time_encoding == "learned" else None
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.attn_pool = AttentionPool(dim, heads) if pool == "attention" else None
        nn.init.normal_(self.channel_embedding.weight, std=0.02)
        nn.init.normal_(self.cls, std=0.02)
        if self.position is not None:
            nn.init.normal_(self.position, std=0.02)

    def channel_ids(self, channels: Sequence[str] | None, n: int, device) -> Tensor:
        """Embedding rows for the C channel names of an input (unknown names are an error)."""
        if channels is None:
            if n != len(self.channel_names):
                raise ValueError(f"input has {n} channels; pass channels=[names] (known: {list(self.channel_names)})")
            return torch.arange(n, device=device)
        if len(channels) != n:
            raise ValueError(f"{len(channels)} channel names for an input with {n} channels")
        unknown = [c for c in channels if c not in self.channel_index]
        if unknown:
            raise ValueError(f"unknown channels {unknown}; known: {list(self.channel_names)}")
        return torch.tensor([self.channel_index[c] for c in channels], device=device)

    def forward(self, x: Tensor, channel_mask: Tensor | None = None, channels: Sequence[str] | None = None) -> Tensor:
        b, c, t = x.shape
        ids = self.channel_ids(channels, c, x.device)
        m = None
        if channel_mask is not None:
            m = check_channel_mask(channel_mask, b, c).to(x.device)
            x = torch.where(m.unsqueeze(-1), x, 0.0)  # only so a NaN in a missing lead cannot reach 0 * NaN
        n = math.ceil(t / self.patch_len)
        patches = F.pad(x, (0, n * self.patch_len - t)).view(b, c, n, self.patch_len)
        if self.position is not None:
            if n > self.max_patches:
                raise ValueError(f"{n} patches exceed max_patches={self.max_patches} of the learned time encoding")
            pos = self.position[:n]
        else:
            pos = sinusoidal_encoding(torch.arange(n, device=x.device), self.embed_dim).to(x.dtype)
        tokens = self.patch(patches) + self.channel_embedding(ids)[None, :, None, :] + pos[None, None]
        tokens = torch.cat([self.cls.expand(b, -1, -1).to(x.dtype), tokens.reshape(b, c * n, -1)], dim=1)
        key_mask = None
        if m is not None:
            key_mask = torch.cat([m.new_ones(b, 1), m.repeat_interleave(n, dim=1)], dim=1)
        h = self.drop(tokens)
        for block in self.blocks:
            h = block(h, key_mask)
        h = self.ln(h)
        if self.attn_pool is not None:
            return self.attn_pool(h, key_mask)
        return h[:, 0]
