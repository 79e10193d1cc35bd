"""Image encoders: 2-D ResNets and a small Vision Transformer (no torchvision needed)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import declare_encoder
from .transformer import Block, sinusoidal_encoding

__all__ = ["ResNet2d", "ViT", "sincos_2d", "resnet2d18", "resnet2d50", "vit_small"]


def conv_bn2d(c_in: int, c_out: int, kernel_size: int, stride: int = 1, act: bool = True, zero_bn: bool = False) -> nn.Sequential:
    bn = nn.BatchNorm2d(c_out)
    nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
    layers = [nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False), bn]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if act else nn.Sequential(*layers)


class Block2d(nn.Module):
    """Basic (3x3, 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1 to 4x width) residual
    block; projection shortcut (1x1 conv, stride) when the shape changes."""

    def __init__(self, c_in: int, width: int, expansion: int, stride: int):
        super().__init__()
        c_out = width * expansion
        if expansion == 1:
            self.branch = nn.Sequential(conv_bn2d(c_in, width, 3, stride), conv_bn2d(width, c_out, 3, act=False, zero_bn=True))
        else:
            self.branch = nn.Sequential(
                conv_bn2d(c_in, width, 1), conv_bn2d(width, width, 3, stride), conv_bn2d(width, c_out, 1, act=False, zero_bn=True)
            )
        self.shortcut = conv_bn2d(c_in, c_out, 1, stride, act=False) if (stride > 1 or c_in != c_out) else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.branch(x) + self.shortcut(x))


class ResNet2d(nn.Module):
    """ResNet of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016).

    Stem Conv7x7/2 -> BN -> ReLU -> MaxPool3x3/2 (``small_input=True``: one Conv3x3/1 and no
    pooling, for 32-64 px images, as in SimCLR's CIFAR variant), four stages of widths
    64/128/256/512 (x4 for bottlenecks), global average pooling.
    ``embed_dim`` = 512 (resnet2d18) or 2048 (resnet2d50), times ``width``.

    ``x [B, in_channels, H, W] -> [B, embed_dim]``.
    """

    def __init__(
        self,
        in_channels: int,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        expansion: int = 1,
        width: float = 1.0,
        small_input: bool = False,
    ):
        super().__init__()
        w = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        if small_input:
            self.stem = conv_bn2d(in_channels, w[0], 3)
        else:
            self.stem = nn.Sequential(conv_bn2d(in_channels, w[0], 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks, c = [], w[0]
        for i, (n, wi) in enumerate(zip(layers, w)):
            for j in range(n):
                blocks.append(Block2d(c, wi, expansion, stride=2 if (i > 0 and j == 0) else 1))
                c = wi * expansion
        self.blocks = nn.Sequential(*blocks)
        self.in_channels, self.embed_dim = in_channels, c

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


@declare_encoder("image")
def resnet2d18(in_channels: int, width: float = 1.0, small_input: bool = False) -> ResNet2d:
    """ResNet-18: basic blocks (2, 2, 2, 2), 512-d (x width). See :class:`ResNet2d`."""
    return ResNet2d(in_channels, (2, 2, 2, 2), 1, width=width, small_input=small_input)


@declare_encoder("image")
def resnet2d50(in_channels: int, width: float = 1.0, small_input: bool = False) -> ResNet2d:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3), 2048-d (x width). See :class:`ResNet2d`."""
    return ResNet2d(in_channels, (3, 4, 6, 3), 4, width=width, small_input=small_input)


def sincos_2d(h: int, w: int, dim: int, device=None) -> Tensor:
    """Fixed 2-D sin-cos position encoding ``[h * w, dim]``: half the features encode the row,
    half the column (as in MoCo v3, Chen et al. 2021), so any image size works."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.cat([sinusoidal_encoding(rows.flatten(), dim // 2), sinusoidal_encoding(cols.flatten(), dim - dim // 2)], dim=-1)


class ViT(nn.Module):
    """Vision Transformer of Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021).

    Non-overlapping ``patch`` x ``patch`` patches (the image is zero-padded on the right and
    bottom to a multiple of ``patch``), linear patch embedding, fixed 2-D sin-cos positions
    (any image size), a [CLS] token, pre-LN blocks with ``F.scaled_dot_product_attention``,
    final LayerNorm; the output is the [CLS] state. ViT-Small (Touvron et al., DeiT 2021):
    dim 384, depth 12, 6 heads, patch 16.

    ``x [B, in_channels, H, W] -> [B, embed_dim]``.
    """

    def __init__(self, in_channels: int, patch: int = 16, dim: int = 384, depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.patch, self.embed_dim = in_channels, patch, dim
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        gh, gw = math.ceil(h / self.patch), math.ceil(w / self.patch)
        x = F.pad(x, (0, gw * self.patch - w, 0, gh * self.patch - h))
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + sincos_2d(gh, gw, self.embed_dim, x.device).to(x.dtype)
        hid = torch.cat([self.cls.expand(b, -1, -1), tokens], dim=1)
        for block in self.blocks:
            hid = block(hid)
        return self.ln(hid[:, 0])


@declare_encoder("image")
def vit_small(in_channels: int, **kwargs) -> ViT:
    """ViT-Small/16: dim 384, depth 12, 6 heads (keyword arguments override). See :class:`ViT`."""
    return ViT(in_channels, **{"patch": 16, "dim": 384, "depth": 12, "heads": 6, **kwargs})
