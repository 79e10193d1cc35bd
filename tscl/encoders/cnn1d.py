"""A small, fast 1-D CNN baseline."""
from __future__ import annotations

from torch import Tensor, nn

from .registry import declare_encoder, mask_channels

__all__ = ["CNN1d"]


@declare_encoder("waveform")
class CNN1d(nn.Module):
    """A few [Conv -> BN -> ReLU -> MaxPool2] blocks and global average pooling.

    The shape of the CLOCS encoder (Kiyasseh et al., ICML 2021: 3 x [Conv k7 s3, BN, ReLU,
    MaxPool2]) but over all leads at once and wider, as a quick baseline: the first conv has
    stride 2, so a batch of 64 x 12 leads x 1000 samples runs forward and backward in a
    fraction of a second on two CPU cores.

    ``x [B, in_channels, T], channel_mask [B, in_channels] (True = present) -> [B, embed_dim]``;
    missing channels are zeroed and the rest rescaled (:func:`mask_channels`).
    ``embed_dim = widths[-1]``.
    """

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, ...] = (32, 64, 128, 128),
        kernel_size: int = 7,
        first_stride: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_channels, self.embed_dim = in_channels, widths[-1]
        layers, c_in = [], in_channels
        for i, c_out in enumerate(widths):
            stride = first_stride if i == 0 else 1
            layers += [
                nn.Conv1d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
                nn.BatchNorm1d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool1d(2, ceil_mode=True),
                nn.Dropout(dropout),
            ]
            c_in = c_out
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, channel_mask: Tensor | None = None) -> Tensor:
        return self.net(mask_channels(x, channel_mask)).mean(dim=-1)
