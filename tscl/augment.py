"""Batched signal augmentations that run on the training device, seeded by a ``torch.Generator``.

Waveform ops take ``x [B, C, T]`` and a generator and return a new tensor (each sample gets
its own random draw)::

    aug = build_augment("noise:snr=20,scale,wander,crop:len=800", fs=100, seed=0)
    v1, v2 = aug(x), aug(x)

Spec grammar: ops separated by commas, ``name`` or ``name:key=value[:key=value]``; a bare
``key=value`` item continues the previous op (``scale:low=0.5,high=2``). ``"none"`` or ``""``
is the identity. ``fs`` (Hz) matters for wander, powerline and band-pass jitter.

EHR event-sequence augmentations act on ``(codes [B, L] int, values [B, L] float,
times [B, L] float, mask [B, L] bool)`` (True = real event) and return the same tuple. As the
``"ehr"`` modality they apply to an :class:`~tscl.datasets.Events` payload, each op named after
the field it perturbs: ``events:p`` (event dropout), ``times:std`` (time jitter, hours),
``codes:p`` (code masking to the [MASK] id 2) and ``values:std`` (multiplicative numeric noise)::

    aug = build_augment(EHR_AUGMENT, modality="ehr", seed=0)   # "events:p=0.1,times:std=1,codes:p=0.15,values:std=0.1"
    v1, v2 = aug(events), aug(events)
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "gaussian_noise", "amplitude_scale", "baseline_wander", "powerline", "random_crop", "time_shift",
    "time_mask", "lead_dropout", "bandpass_jitter", "event_dropout", "time_jitter", "code_mask",
    "numeric_noise", "Augment", "build_augment", "AUGMENTS", "EHR_OPS", "EHR_AUGMENT",
]


def _u(shape, g: torch.Generator | None, x: Tensor, low=0.0, high=1.0) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=g, device=x.device, dtype=torch.float32).to(x.dtype)


def gaussian_noise(x: Tensor, g=None, snr: float = 20.0, fs: float = 100.0) -> Tensor:
    """Add white noise at a target SNR (dB) per sample and channel: σ² = P_signal / 10^(snr/10)."""
    power = x.pow(2).mean(dim=-1, keepdim=True)
    sigma = (power / 10 ** (snr / 10)).sqrt()
    return x + sigma * torch.randn(x.shape, generator=g, device=x.device, dtype=torch.float32).to(x.dtype)


def amplitude_scale(x: Tensor, g=None, low: float = 0.8, high: float = 1.2, fs: float = 100.0) -> Tensor:
    """Multiply each sample by one factor drawn uniformly from [low, high]."""
    return x * _u((x.shape[0], 1, 1), g, x, low, high)


def baseline_wander(x: Tensor, g=None, amp: float = 0.1, max_freq: float = 0.5, fs: float = 100.0) -> Tensor:
    """Add a slow sinusoid (frequency in (0.05, max_freq] Hz, random phase, amplitude ≤ amp) per sample."""
    b, _, t = x.shape
    freq = _u((b, 1, 1), g, x, 0.05, max_freq)
    phase = _u((b, 1, 1), g, x, 0, 2 * math.pi)
    a = _u((b, 1, 1), g, x, 0, amp)
    time = torch.arange(t, device=x.device, dtype=x.dtype) / fs
    return x + a * torch.sin(2 * math.pi * freq * time + phase)


def powerline(x: Tensor, g=None, amp: float = 0.05, freq: float = 50.0, fs: float = 100.0) -> Tensor:
    """Add mains interference at ``freq`` Hz (aliased if above fs/2), random phase and amplitude ≤ amp."""
    b, _, t = x.shape
    phase = _u((b, 1, 1), g, x, 0, 2 * math.pi)
    a = _u((b, 1, 1), g, x, 0, amp)
    time = torch.arange(t, device=x.device, dtype=x.dtype) / fs
    return x + a * torch.sin(2 * math.pi * freq * time + phase)


def random_crop(x: Tensor, g=None, len: int = 0, fs: float = 100.0) -> Tensor:  # noqa: A002 (spec name)
    """A random window of ``len`` samples per sample: ``[B, C, T] -> [B, C, len]``
    (``0 < len < 1``: that fraction of T)."""
    b, c, t = x.shape
    n = int(len * t) if 0 < len < 1 else int(len) if len else t
    if n >= t:
        return x
    start = torch.randint(0, t - n + 1, (b,), generator=g, device=x.device)
    idx = start[:, None] + torch.arange(n, device=x.device)  # [B, n]
    return x.gather(2, idx[:, None, :].expand(b, c, n))


def time_shift(x: Tensor, g=None, max_shift: float = 0.1, fs: float = 100.0) -> Tensor:
    """Circularly shift each sample by up to ``max_shift`` × T samples either way."""
    b, c, t = x.shape
    m = max(1, int(max_shift * t))
    shift = torch.randint(-m, m + 1, (b,), generator=g, device=x.device)
    idx = (torch.arange(t, device=x.device)[None, :] - shift[:, None]) % t
    return x.gather(2, idx[:, None, :].expand(b, c, t))


def time_mask(x: Tensor, g=None, frac: float = 0.1, n: int = 1, fs: float = 100.0) -> Tensor:
    """Zero ``n`` random spans of ``frac`` × T samples per sample (all channels)."""
    b, _, t = x.shape
    w = max(1, int(frac * t))
    keep = torch.ones(b, t, dtype=torch.bool, device=x.device)
    pos = torch.arange(t, device=x.device)[None, :]
    for _ in range(int(n)):
        start = torch.randint(0, max(1, t - w + 1), (b, 1), generator=g, device=x.device)
        keep &= ~((pos >= start) & (pos < start + w))
    return x * keep[:, None, :].to(x.dtype)


def lead_dropout(x: Tensor, g=None, p: float = 0.2, fs: float = 100.0) -> Tensor:
    """Zero each channel with probability ``p`` (at least one channel per sample survives)."""
    b, c, _ = x.shape
    keep = _u((b, c), g, x) >= p
    none = ~keep.any(dim=1)
    if none.any():
        pick = torch.randint(0, c, (b,), generator=g, device=x.device)
        keep[none, pick[none]] = True
    return x * keep[:, :, None].to(x.dtype)


def bandpass_jitter(x: Tensor, g=None, low: float = 1.0, high: float = 0.8, fs: float = 100.0) -> Tensor:
    """Band-pass each sample in the frequency domain with a random high-pass edge in [0, low] Hz
    and a random low-pass edge in [high, 1] × Nyquist."""
    b, _, t = x.shape
    spec = torch.fft.rfft(x.float(), dim=-1)
    freqs = torch.fft.rfftfreq(t, d=1.0 / fs).to(x.device)[None, :]
    lo = _u((b, 1), g, x, 0, low).float()
    hi = _u((b, 1), g, x, high, 1.0).float() * (fs / 2)
    band = ((freqs >= lo) & (freqs <= hi)).to(spec.dtype)
    return torch.fft.irfft(spec * band[:, None, :], n=t, dim=-1).to(x.dtype)


# ---- EHR event sequences: (codes [B,L], values [B,L], times [B,L], mask [B,L]) -----------------

def event_dropout(codes, values, times, mask, g=None, p: float = 0.1):
    """Drop each real event with probability ``p`` (keeps at least one per sequence)."""
    drop = (torch.rand(mask.shape, generator=g, device=mask.device) < p) & mask
    new = mask & ~drop
    empty = ~new.any(dim=1) & mask.any(dim=1)
    new[empty] = mask[empty]
    return codes, values, times, new


def time_jitter(codes, values, times, mask, g=None, std: float = 1.0):
    """Add Gaussian noise (same unit as ``times``) to the time of each real event."""
    noise = torch.randn(times.shape, generator=g, device=times.device, dtype=torch.float32).to(times.dtype) * std
    return codes, values, times + noise * mask.to(times.dtype), mask


def code_mask(codes, values, times, mask, g=None, p: float = 0.15, mask_code: int = 1):
    """Replace each real event's code by ``mask_code`` with probability ``p`` (BERT-style)."""
    hit = (torch.rand(codes.shape, generator=g, device=codes.device) < p) & mask
    return torch.where(hit, torch.full_like(codes, mask_code), codes), values, times, mask


def numeric_noise(codes, values, times, mask, g=None, std: float = 0.1):
    """Multiply real-event values by (1 + N(0, std²)); NaN (missing) values stay NaN."""
    noise = 1 + std * torch.randn(values.shape, generator=g, device=values.device, dtype=torch.float32).to(values.dtype)
    return codes, torch.where(mask, values * noise, values), times, mask


AUGMENTS = {
    "noise": gaussian_noise, "scale": amplitude_scale, "wander": baseline_wander, "powerline": powerline,
    "crop": random_crop, "shift": time_shift, "mask": time_mask, "dropout": lead_dropout,
    "bandpass": bandpass_jitter,
}


# modality -> its op table; a modality's module adds its own (see ``register_modality_ops``)
OPS_BY_MODALITY: dict[str, dict] = {"waveform": AUGMENTS}


def register_modality_ops(modality: str, ops: dict, apply) -> None:
    """Register a modality's augmentation ops and ``apply(op, payload, generator, **params) -> payload``."""
    OPS_BY_MODALITY[modality] = ops
    _APPLY[modality] = apply


def _apply_waveform(op, x, g, fs: float, **kw):
    return op(x, g, fs=fs, **kw)


_APPLY = {"waveform": _apply_waveform}


class Augment:
    """A pipeline of ops of one modality applied in order; owns a seeded generator per device.

    ``Augment([("noise", {"snr": 20}), ("scale", {})], fs=100, seed=0)(x [B,C,T])``.
    """

    def __init__(self, ops: list[tuple[str, dict]], fs: float = 100.0, seed: int = 0, modality: str = "waveform"):
        if modality not in OPS_BY_MODALITY:
            raise ValueError(f"no augmentations for modality {modality!r}; known: {sorted(OPS_BY_MODALITY)}")
        table = OPS_BY_MODALITY[modality]
        for name, _ in ops:
            if name not in table:
                raise ValueError(f"unknown augmentation {name!r} for {modality} data; known: {sorted(table)}")
        self.ops, self.fs, self.seed, self.modality = ops, fs, seed, modality
        self._gens: dict = {}

    def generator(self, device) -> torch.Generator:
        key = str(device)
        if key not in self._gens:
            self._gens[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._gens[key]

    def bind(self, index, seed: int) -> None:
        """Take the sampling rate from a cohort index (``fs`` column) and seed the generators."""
        if "fs" in index.columns:
            self.fs = float(index["fs"][0])
        self.seed = seed
        if self.modality == "waveform" and "n_samples" in index.columns and index.height:
            t = int(index["n_samples"].min())
            for name, kw in self.ops:
                n = kw.get("len", 0)
                if name == "crop" and n >= 1 and n > t:
                    raise ValueError(f"augmentation crop:len={n} is longer than the recordings ({t} samples); "
                                     f"give len < {t} or a fraction such as len=0.8")

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __call__(self, x, g: torch.Generator | None = None):
        device = x.codes.device if hasattr(x, "codes") else x.device
        g = g if g is not None else self.generator(device)
        table, apply = OPS_BY_MODALITY[self.modality], _APPLY[self.modality]
        for name, kw in self.ops:
            x = apply(table[name], x, g, fs=self.fs, **kw)
        return x

    def __repr__(self) -> str:
        return "Augment(" + ",".join(n + "".join(f":{k}={v}" for k, v in kw.items()) for n, kw in self.ops) + ")"


def build_augment(spec, fs: float = 100.0, seed: int = 0, modality: str = "waveform") -> Augment:
    """Parse ``"noise:snr=20,scale,wander,crop:len=800"`` into an :class:`Augment`.

    ``spec`` may also be None / "none" / "" (identity) or an :class:`Augment` (returned as is)."""
    if isinstance(spec, Augment):
        return spec
    ops: list[tuple[str, dict]] = []
    if spec is None or str(spec).strip().lower() in ("", "none"):
        return Augment(ops, fs, seed, modality)
    for item in str(spec).split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        if "=" in parts[0]:  # continuation: key=value of the previous op
            if not ops:
                raise ValueError(f"augment spec {spec!r}: {item!r} has no op before it")
            name, params = ops[-1][0], parts
        else:
            name, params = parts[0], parts[1:]
            ops.append((name, {}))
        for p in params:
            key, _, value = p.partition("=")
            try:
                ops[-1][1][key.strip()] = float(value) if any(ch in value for ch in ".eE") else int(value)
            except ValueError:
                ops[-1][1][key.strip()] = value
    return Augment(ops, fs, seed, modality)


# ---- EHR: the "ehr" op table, acting on an Events payload ----------------------------------------

EHR_OPS = {"events": event_dropout, "times": time_jitter, "codes": code_mask, "values": numeric_noise,
           # the functions' own names, as aliases
           "event_dropout": event_dropout, "time_jitter": time_jitter, "code_mask": code_mask,
           "numeric_noise": numeric_noise}

# drop 10 % of events, jitter times by N(0, 1 h²), mask 15 % of codes, scale values by 1 + N(0, 0.1²)
EHR_AUGMENT = "events:p=0.1,times:std=1,codes:p=0.15,values:std=0.1"

EHR_MASK_ID = 2  # tscl.datasets.ehr.MASK_ID: the [MASK] code id that ``codes`` writes


def _apply_ehr(op, x, g, fs: float = 0.0, **kw):
    """``op(codes, values, times, mask, g, **kw)`` on an :class:`~tscl.datasets.Events` payload.

    Every draw comes from ``g``, the pipeline's seeded generator (checkpointed with the run), so
    a resumed run draws the same events, jitters and masks step for step. Code masking writes
    :data:`EHR_MASK_ID` unless the spec gives ``mask_code``."""
    from tscl.payloads import Events

    if op is code_mask:
        kw = {"mask_code": EHR_MASK_ID, **kw}
    return Events(*op(x.codes, x.values, x.times, x.mask, g, **kw))


register_modality_ops("ehr", EHR_OPS, _apply_ehr)
