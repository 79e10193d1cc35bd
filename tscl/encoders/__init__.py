"""Encoders: time series (ECG/EEG), EHR event sequences, tabular records and images.

Build any of them by name::

    from tscl.encoders import build_encoder, list_encoders
    enc = build_encoder("resnet1d", in_channels=12, width=0.5)
    features = enc(x, channel_mask)          # x [B, 12, T] -> [B, enc.embed_dim]

Time-series encoders take ``(x [B, C, T], channel_mask=None)``; see :mod:`.registry` for
the mask convention (True = channel present). Other modalities document their own inputs.
"""
from .registry import ENCODER_MODALITY, ENCODERS, build_encoder, check_channel_mask, list_encoders, mask_channels, register_encoder
from .heads import ProjectionHead
from .resnet1d import ResNet1d
from .cnn1d import CNN1d
from .xresnet1d import XResNet1d
from .transformer1d import Transformer1d
from .ehr import EHRSequenceEncoder, truncate_recent
from .tabular import TabularEncoder
from .images import ResNet2d, ViT

__all__ = [
    "ENCODERS", "ENCODER_MODALITY", "register_encoder", "build_encoder", "list_encoders", "mask_channels", "check_channel_mask",
    "ProjectionHead", "ResNet1d", "CNN1d", "XResNet1d", "Transformer1d",
    "EHRSequenceEncoder", "truncate_recent", "TabularEncoder", "ResNet2d", "ViT",
]
