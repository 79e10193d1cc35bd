"""Encoders for one row of numeric features with missing values (labs, vitals, demographics)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import declare_encoder
from .transformer import Block

__all__ = ["TabularEncoder"]


@declare_encoder("tabular")
class TabularEncoder(nn.Module):
    """Per-feature embeddings, then an MLP or an FT-Transformer.

    Feature f with value x_f becomes ``token_f = x_f * w_f + b_f`` (the numerical feature
    tokenizer of Gorishniy et al., "Revisiting Deep Learning Models for Tabular Data",
    NeurIPS 2021); a missing feature becomes its own learned ``missing_f`` token and its
    value is never read.

    ``kind="mlp"``: the F tokens are concatenated and an MLP maps them to ``embed_dim``.
    ``kind="ft_transformer"``: a [CLS] token plus the F tokens go through transformer
    blocks; missing features are also excluded from attention; the final [CLS] state is
    projected to ``embed_dim``.

    ``in_channels`` of ``build_encoder`` is the number of features F. Forward (not the
    time-series signature): ``x [B, F]`` float (standardised features),
    ``observed [B, F]`` bool, True = value present, default ``isfinite(x)`` -> ``[B, embed_dim]``.
    """

    def __init__(
        self,
        in_channels: int,
        kind: str = "mlp",
        token_dim: int = 32,
        embed_dim: int = 128,
        hidden_dim: int = 256,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
    ):
        super().__init__()
        if kind not in ("mlp", "ft_transformer"):
            raise ValueError(f"kind must be 'mlp' or 'ft_transformer', got {kind!r}")
        self.n_features, self.kind = in_channels, kind
        self.weight = nn.Parameter(torch.randn(in_channels, token_dim) * 0.1)
        self.bias = nn.Parameter(torch.zeros(in_channels, token_dim))
        self.missing = nn.Parameter(torch.randn(in_channels, token_dim) * 0.1)
        if kind == "mlp":
            self.embed_dim = embed_dim
            self.mlp = nn.Sequential(
                nn.Linear(in_channels * token_dim, hidden_dim),
                nn.LayerNorm(hidden_dim),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, embed_dim),
            )
        else:
            self.embed_dim = embed_dim
            self.out = nn.Linear(token_dim, embed_dim)
            self.cls = nn.Parameter(torch.randn(1, 1, token_dim) * 0.02)
            self.blocks = nn.ModuleList(Block(token_dim, heads, 2.0, dropout) for _ in range(depth))
            self.ln = nn.LayerNorm(token_dim)

    def forward(self, x: Tensor, observed: Tensor | None = None) -> Tensor:
        b, f = x.shape
        if f != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got {f}")
        obs = torch.isfinite(x) if observed is None else observed.bool()
        xv = torch.where(obs, x, 0.0).unsqueeze(-1)
        tokens = torch.where(obs.unsqueeze(-1), xv * self.weight + self.bias, self.missing)  # [B, F, token_dim]
        if self.kind == "mlp":
            return self.mlp(tokens.reshape(b, -1))
        h = torch.cat([self.cls.expand(b, -1, -1), tokens], dim=1)
        key_mask = torch.cat([obs.new_ones(b, 1), obs], dim=1)
        for block in self.blocks:
            h = block(h, key_mask)
        return self.out(self.ln(h[:, 0]))
