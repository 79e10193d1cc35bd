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

from tscl import catalog

__all__ = ["ENCODERS", "declare_encoder", "register_encoder", "get_encoder", "build_encoder", "list_encoders",
           "encoder_modality", "encoder_defaults", "mask_channels", "check_channel_mask"]

# encoders resolved in this process, by name: the built-ins (tscl.catalog), entry points and module:Name once
# used, and any registered in-process with register_encoder
ENCODERS: dict[str, Callable[..., nn.Module]] = {}


def declare_encoder(modality: str = "waveform", defaults: dict | None = None):
    """Decorator: record what an encoder (class or factory) encodes — ``modality``: ``waveform`` [B, C, T],
    ``ehr`` Events, ``image`` [B, C, H, W], ``tabular`` [B, F] — and the keyword arguments it is built with
    when none are given (``defaults``, e.g. resnet1d's CPU width), held by the encoder itself. It registers
    nothing: built-ins are named in :mod:`tscl.catalog`, others by entry point or ``module:Name``."""

    def wrap(factory):
        factory.modality = modality
        factory.defaults = dict(defaults or {})
        return factory

    return wrap


def register_encoder(name: str, modality: str = "waveform", defaults: dict | None = None):
    """Decorator: :func:`declare_encoder`, and make ``build_encoder(name, ...)`` call it in this process
    (notebooks, tests; a run made with it is rebuilt in another process only where it is registered again
    — an entry point or ``module:Name`` needs no registration)."""

    def wrap(factory):
        if name in ENCODERS and ENCODERS[name] is not factory:
            raise ValueError(f"encoder {name!r} is already registered to {ENCODERS[name]!r}")
        ENCODERS[name] = declare_encoder(modality, defaults)(factory)
        return factory

    return wrap


def get_encoder(name: str) -> Callable[..., nn.Module]:
    """The class or factory of encoder ``name``: registered in this process, built in, an entry point of
    group ``tscl.encoders``, or ``module:Name``; an unknown name raises ``ValueError`` naming the known ones."""
    if name not in ENCODERS:
        factory = catalog.load("encoders", name)
        if not callable(factory):
            raise ValueError(f"encoder {name!r} is a {type(factory).__name__}, not an nn.Module class or factory")
        ENCODERS[name] = factory
    return ENCODERS[name]


def encoder_modality(name: str) -> str:
    """The payload encoder ``name`` encodes (``waveform`` unless it declares another)."""
    return getattr(get_encoder(name), "modality", "waveform")


def encoder_defaults(name: str) -> dict:
    """The keyword arguments encoder ``name`` is built with when none are given (a copy)."""
    return dict(getattr(get_encoder(name), "defaults", None) or {})


def list_encoders() -> list[str]:
    """Encoder names: built-in, installed entry points and any registered in this process, sorted."""
    return sorted(set(catalog.names("encoders")) | set(ENCODERS))


def build_encoder(name: str, in_channels: int, **kwargs) -> nn.Module:
    """Instantiate encoder ``name``. ``in_channels`` is the number of input channels (leads,
    electrodes, image planes); for ``ehr_sequence`` it is the code vocabulary size and for
    ``tabular`` the number of features. The architecture's own keyword defaults apply; the defaults an
    encoder declares for tscl runs (:func:`encoder_defaults`) are applied by :class:`~tscl.config.PretrainConfig`
    when it is given no ``encoder_kwargs``."""
    return get_encoder(name)(in_channels, **kwargs)


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
