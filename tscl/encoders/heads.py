"""Projection heads that map encoder features to the space the contrastive loss sees."""
from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Module):
    """Dense -> (BatchNorm) -> ReLU -> Dense, the SimCLR head (Chen et al., ICML 2020).

    PCLR (Diamant et al., PLoS Comput Biol 2022) uses Dense320-ReLU-Dense320 without
    batch norm, which is the default here. ``features [B, in_dim] -> z [B, out_dim]``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = False):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=not batch_norm),
            nn.BatchNorm1d(hidden_dim) if batch_norm else nn.Identity(),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)
