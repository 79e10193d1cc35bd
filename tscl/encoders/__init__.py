"""Encoders: time series (ECG/EEG), EHR event sequences, tabular records and images.

Build any of them by name::

    from tscl.encoders import build_encoder, list_encoders
    enc = build_encoder("resnet1d", in_channels=12, width=0.5)
    features = enc(x, channel_mask)          # x [B, 12, T] -> [B, enc.embed_dim]

Time-series encoders take ``(x [B, C, T], channel_mask=None)``; see :mod:`.registry` for
the mask convention (True = channel present). Other modalities document their own inputs.
Names resolve through :mod:`tscl.catalog` (built-ins, entry points of group ``tscl.encoders``,
``module:Name``); each encoder declares its modality and its default keyword arguments
(:func:`declare_encoder`, :func:`encoder_defaults`).
"""
from .registry import (ENCODERS, build_encoder, check_channel_mask, declare_encoder, encoder_defaults, encoder_modality,
                       get_encoder, list_encoders, mask_channels, register_encoder)
from .heads import ProjectionHead
from .resnet1d import ResNet1d
from .cnn1d import CNN1d
from .xresnet1d import XResNet1d
from .transformer1d import Transformer1d
from .ehr import EHRSequenceEncoder, truncate_recent
from .tabular import TabularEncoder
from .images import ResNet2d, ViT

__all__ = [
    "ENCODERS", "declare_encoder", "register_encoder", "get_encoder", "build_encoder", "list_encoders",
    "encoder_modality", "encoder_defaults", "mask_channels", "check_channel_mask",
    "ProjectionHead", "ResNet1d", "CNN1d", "XResNet1d", "Transformer1d",
    "EHRSequenceEncoder", "truncate_recent", "TabularEncoder", "ResNet2d", "ViT",
]
