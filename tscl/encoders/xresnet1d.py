"""xresnet1d: the 1-D "bag of tricks" ResNet of the PTB-XL benchmark."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import declare_encoder, mask_channels

__all__ = ["XResNet1d", "xresnet1d18", "xresnet1d34", "xresnet1d50", "xresnet1d101"]


def conv_bn(c_in: int, c_out: int, kernel_size: int, stride: int = 1, act: bool = True, zero_bn: bool = False) -> nn.Sequential:
    """Conv1d (no bias) -> BatchNorm (gamma 0 when ``zero_bn``, so a residual branch starts as 0) -> ReLU."""
    bn = nn.BatchNorm1d(c_out)
    nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
    layers = [nn.Conv1d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False), bn]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class XBlock1d(nn.Module):
    """Residual block. Basic (``expansion=1``): conv_k/stride -> conv_k. Bottleneck
    (``expansion=4``): conv_1 -> conv_k/stride -> conv_1 to ``4 * width``. The shortcut
    average-pools (stride) then 1x1-convolves (width change): the ResNet-D shortcut."""

    def __init__(self, c_in: int, width: int, expansion: int, kernel_size: int, stride: int):
        super().__init__()
        c_out = width * expansion
        if expansion == 1:
            self.branch = nn.Sequential(conv_bn(c_in, width, kernel_size, stride), conv_bn(width, c_out, kernel_size, act=False, zero_bn=True))
        else:
            self.branch = nn.Sequential(
                conv_bn(c_in, width, 1),
                conv_bn(width, width, kernel_size, stride),
                conv_bn(width, c_out, 1, act=False, zero_bn=True),
            )
        self.pool = nn.AvgPool1d(stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.shortcut = conv_bn(c_in, c_out, 1, act=False) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.branch(x) + self.shortcut(self.pool(x)))


class XResNet1d(nn.Module):
    """xresnet1d after He et al., "Bag of Tricks for Image Classification with CNNs" (CVPR
    2019), in the 1-D form Strodthoff et al. benchmark on PTB-XL ("Deep Learning for ECG
    Analysis: Benchmarks and Insights from PTB-XL", IEEE JBHI 2021), kernel size 5.

    Stem: three conv_bn (32, 32, 64; the first with stride 2) and MaxPool(3, stride 2);
    four stages of ``layers`` blocks (widths 64/128/256/512, stride 2 from the second stage);
    pooling: average and max over time concatenated (``pool="concat"``, the benchmark's
    AdaptiveConcatPool) or average only (``pool="avg"``).
    ``embed_dim = 512 * expansion * (2 if concat else 1)``, scaled by ``width``.

    ``x [B, in_channels, T], channel_mask [B, in_channels] (True = present) -> [B, embed_dim]``;
    missing channels are zeroed and the rest rescaled (:func:`mask_channels`).
    """

    def __init__(
        self,
        in_channels: int,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        expansion: int = 1,
        kernel_size: int = 5,
        width: float = 1.0,
        pool: str = "concat",
        stem_widths: tuple[int, ...] = (32, 32, 64),
        stage_widths: tuple[int, ...] = (64, 128, 256, 512),
    ):
        super().__init__()
        if pool not in ("concat", "avg"):
            raise ValueError(f"pool must be 'concat' or 'avg', got {pool!r}")
        sw = [max(1, round(c * width)) for c in stem_widths]
        bw = [max(1, round(c * width)) for c in stage_widths]
        stem, c = [], in_channels
        for i, c_out in enumerate(sw):
            stem.append(conv_bn(c, c_out, kernel_size, stride=2 if i == 0 else 1))
            c = c_out
        stem.append(nn.MaxPool1d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        blocks = []
        for i, (n, w) in enumerate(zip(layers, bw)):
            for j in range(n):
                blocks.append(XBlock1d(c, w, expansion, kernel_size, stride=2 if (i > 0 and j == 0) else 1))
                c = w * expansion
        self.blocks = nn.Sequential(*blocks)
        self.pool = pool
        self.in_channels = in_channels
        self.embed_dim = c * (2 if pool == "concat" else 1)

    def forward(self, x: Tensor, channel_mask: Tensor | None = None) -> Tensor:
        h = self.blocks(self.stem(mask_channels(x, channel_mask)))
        if self.pool == "avg":
            return h.mean(dim=-1)
        return torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)


_DEPTHS = {18: ((2, 2, 2, 2), 1), 34: ((3, 4, 6, 3), 1), 50: ((3, 4, 6, 3), 4), 101: ((3, 4, 23, 3), 4)}


def _xresnet_factory(depth: int):
    layers, expansion = _DEPTHS[depth]

    def build(in_channels: int, **kwargs) -> XResNet1d:
        return XResNet1d(in_channels, layers=layers, expansion=expansion, **kwargs)

    build.__name__ = f"xresnet1d{depth}"
    build.__doc__ = f"xresnet1d{depth}: layers {layers}, {'bottleneck' if expansion == 4 else 'basic'} blocks. See :class:`XResNet1d`."
    return build


xresnet1d18, xresnet1d34, xresnet1d50, xresnet1d101 = (declare_encoder("waveform")(_xresnet_factory(d)) for d in _DEPTHS)
