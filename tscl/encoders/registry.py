"""The encoder registry and the channel-mask convention shared by every time-series encoder.

Time-series encoders share one interface::

    encoder(x [batch, channels, time], channel_mask=None) -> features [batch, embed_dim]

and expose ``encoder.embed_dim``. ``channel_mask`` is a bool tensor ``[batch, channels]``
(or ``[channels]``, broadcast over the batch) where **True means the channel is present**
and False means it is missing (a lead that was not recorded, an electrode that fell off).
A given mask is never ignored: convolutional encoders zero the missing channels and rescale
(:func:`mask_channels`); the transformer drops their tokens from attention.

EHR, tabular and image encoders take other inputs; each documents its forward signature.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["ENCODERS", "ENCODER_MODALITY", "register_encoder", "build_encoder", "list_encoders", "mask_channels",
           "check_channel_mask"]

ENCODERS: dict[str, Callable[..., nn.Module]] = {}
ENCODER_MODALITY: dict[str, str] = {}  # name -> the payload it encodes: waveform, ehr, image or tabular


def register_encoder(name: str, modality: str = "waveform"):
    """Decorator: make ``build_encoder(name, in_channels, **kwargs)`` call the decorated class or function,
    an encoder of ``modality`` payloads (``waveform`` [B, C, T], ``ehr`` Events, ``image`` [B, C, H, W],
    ``tabular`` [B, F])."""

    def wrap(factory):
        if name in ENCODERS and ENCODERS[name] is not factory:
            raise ValueError(f"encoder {name!r} is already registered to {ENCODERS[name]!r}")
        ENCODERS[name] = factory
        ENCODER_MODALITY[name] = modality
        return factory

    return wrap


def list_encoders() -> list[str]:
    """Registered encoder names, sorted."""
    return sorted(ENCODERS)


def build_encoder(name: str, in_channels: int, **kwargs) -> nn.Module:
    """Instantiate encoder ``name``. ``in_channels`` is the number of input channels (leads,
    electrodes, image planes); for ``ehr_sequence`` it is the code vocabulary size and for
    ``tabular`` the number of features."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {', '.join(list_encoders())}")
    return ENCODERS[name](in_channels, **kwargs)


def check_channel_mask(channel_mask: Tensor, batch: int, channels: int) -> Tensor:
    """Validate a channel mask and return it as bool ``[batch, channels]`` (True = present)."""
    m = torch.as_tensor(channel_mask)
    if m.dtype != torch.bool:
        if m.dtype.is_floating_point and not torch.all((m == 0) | (m == 1)):
            raise ValueError("channel_mask must be boolean (True = channel present) or 0/1")
        m = m != 0
    if m.dim() == 1:
        m = m.unsqueeze(0).expand(batch, -1)
    if m.shape != (batch, channels):
        raise ValueError(f"channel_mask must be [{batch}, {channels}] or [{channels}], got {list(m.shape)}")
    return m


def mask_channels(x: Tensor, channel_mask: Tensor | None) -> Tensor:
    """Zero the missing channels of ``x [B, C, T]`` and rescale the present ones by ``C / n_present``.

    The rescaling keeps the expected summed input of the first convolution the same whatever
    the number of missing leads (the same inverse scaling as dropout). A sample whose
    channels are all missing becomes all zeros. Values of missing channels (NaN included)
    never reach the output.
    """
    if channel_mask is None:
        return x
    b, c = x.shape[:2]
    m = check_channel_mask(channel_mask, b, c).to(x.device)
    n_present = m.sum(dim=1, keepdim=True).clamp(min=1)
    scale = m.to(x.dtype) * (c / n_present.to(x.dtype))
    return torch.where(m.unsqueeze(-1), x, 0.0) * scale.unsqueeze(-1)  # where(): a NaN in a missing lead stays out
