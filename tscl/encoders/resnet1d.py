"""The 1-D ResNet of Ribeiro et al. (Nat Commun 2020), the PCLR encoder (Diamant et al. 2022)."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import declare_encoder, mask_channels

__all__ = ["CPU_WIDTH", "ResNet1d", "same_pad"]

CPU_WIDTH = 0.25  # the width multiplier tscl uses by default on CPU (fast, still the full depth)


def same_pad(x: Tensor, kernel_size: int, stride: int = 1) -> Tensor:
    """Pad ``x [B, C, T]`` on the time axis so a conv gives ``ceil(T / stride)`` outputs (TF 'same')."""
    t = x.shape[-1]
    total = max((math.ceil(t / stride) - 1) * stride + kernel_size - t, 0)
    return F.pad(x, (total // 2, total - total // 2))


class ResidualUnit1d(nn.Module):
    """One Ribeiro unit on two streams: ``x`` (activated) and ``y`` (the residual stream).

        x <- Conv_k(x) -> BN -> ReLU -> Dropout -> Conv_k/stride(x)
        y <- MaxPool_stride(y) -> Conv_1(y) (when the width changes)
        y <- x + y ;  x <- ReLU(BN(y)) -> Dropout          (pre-activation for the next unit)
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, dropout: float):
        super().__init__()
        self.k, self.stride = kernel_size, stride
        self.conv1 = nn.Conv1d(c_in, c_out, kernel_size, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel_size, stride=stride, bias=False)
        self.skip = nn.Conv1d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()
        self.bn2 = nn.BatchNorm1d(c_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.stride > 1:
            y = F.max_pool1d(y, self.stride, ceil_mode=True)
        y = self.skip(y)
        x = self.drop(F.relu(self.bn1(self.conv1(same_pad(x, self.k)))))
        x = self.conv2(same_pad(x, self.k, self.stride))
        y = x + y
        x = self.drop(F.relu(self.bn2(y)))
        return x, y


@declare_encoder("waveform", defaults={"width": CPU_WIDTH})  # CPU-sized unless told otherwise
class ResNet1d(nn.Module):
    """PCLR's 1-D ResNet after Ribeiro et al., "Automatic diagnosis of the 12-lead ECG using a
    deep neural network", Nat Commun 11:1760 (2020).

    Conv(64, k16) -> BN -> ReLU, then 4 residual units (128/196/256/320 filters, each
    downsampling time by 4: 4096 -> 1024 -> 256 -> 64 -> 16), then global average pooling to
    a 320-d representation. ``width`` multiplies every width (``width=0.25`` is a fast CPU
    model with an 80-d output).

    ``x [B, in_channels, T], channel_mask [B, in_channels] (True = present) -> [B, embed_dim]``;
    missing channels are zeroed and the rest rescaled (:func:`mask_channels`).
    """

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, ...] = (64, 128, 196, 256, 320),
        width: float = 1.0,
        kernel_size: int = 16,
        downsample: int = 4,
        dropout: float = 0.2,
    ):
        super().__init__()
        w = [max(1, round(c * width)) for c in widths]
        self.in_channels, self.embed_dim, self.k = in_channels, w[-1], kernel_size
        self.stem = nn.Conv1d(in_channels, w[0], kernel_size, bias=False)
        self.stem_bn = nn.BatchNorm1d(w[0])
        self.units = nn.ModuleList(
            ResidualUnit1d(c_in, c_out, kernel_size, downsample, dropout) for c_in, c_out in zip(w[:-1], w[1:])
        )

    def forward(self, x: Tensor, channel_mask: Tensor | None = None) -> Tensor:
        x = mask_channels(x, channel_mask)
        x = F.relu(self.stem_bn(self.stem(same_pad(x, self.k))))
        y = x
        for unit in self.units:
            x, y = unit(x, y)
        return x.mean(dim=-1)
