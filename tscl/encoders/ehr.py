"""A transformer over MEDS-derived EHR event sequences."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from tscl.payloads import Events

from .registry import declare_encoder
from .transformer import Block

__all__ = ["EHRSequenceEncoder", "ContinuousTime", "truncate_recent"]


def truncate_recent(max_len: int, padding_mask: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Keep each row's ``max_len`` most recent events.

    ``padding_mask [B, L]`` is True for real events, which are in time order (oldest first)
    within a row; ``tensors`` are ``[B, L, ...]`` aligned with it. Returns
    ``(padding_mask, *tensors)`` of length ``min(L, max_len)``: the kept events of each row,
    in their original order, packed to the left and followed by padding (mask False, value 0).
    """
    b, length = padding_mask.shape
    out_len = min(length, max_len)
    real = padding_mask.bool()
    newer = real.flip(1).cumsum(1).flip(1) - real.long()  # real events after each position
    keep = real & (newer < max_len)
    slot = torch.where(keep, keep.cumsum(1) - 1, out_len)  # drop everything else into a spill column
    rows = torch.arange(b, device=real.device)[:, None].expand_as(slot)
    outs = []
    for t in (real, *tensors):
        if t.shape[:2] != (b, length):
            raise ValueError(f"every tensor must start with [{b}, {length}], got {list(t.shape)}")
        o = t.new_zeros((b, out_len + 1, *t.shape[2:]))
        o[rows, slot] = t
        outs.append(o[:, :out_len])
    return tuple(outs)


class ContinuousTime(nn.Module):
    """Time2Vec (Kazemi et al., 2019) of ``log1p(|dt|)``: one linear and ``dim - 1`` periodic
    features, so any time gap, from seconds to years, maps to a smooth vector. ``dt [...] -> [..., dim]``."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(1, dim)

    def forward(self, dt: Tensor) -> Tensor:
        h = self.linear(torch.log1p(dt.abs()).unsqueeze(-1))
        return torch.cat([h[..., :1], torch.sin(h[..., 1:])], dim=-1)


@declare_encoder("ehr")
class EHRSequenceEncoder(nn.Module):
    """Transformer over an EHR event stream (one event = one MEDS row: code, time, value),
    in the spirit of BEHRT (Li et al., Sci Rep 2020) and of time-aware EHR transformers.

    Each event is a token::

        token = code_embedding[code]
              + (value_mlp(value) if value observed else no_value_embedding)
              + time2vec(time since previous event) + time2vec(time to prediction time)

    A [CLS] token is prepended; the output is its final state (pre-LN blocks, attention
    through ``F.scaled_dot_product_attention``). Padding events are excluded by the key
    mask. ``in_channels`` of ``build_encoder`` is the code vocabulary size (id 0 = padding).

    Forward (a different signature from the time-series encoders): ``encoder(events)`` with an
    :class:`~tscl.datasets.Events` payload (codes, values, times, mask; what an EHR dataset's
    ``fetch`` returns and what the trainer hands a method), optionally ``prediction_time=``; or
    the tensors one by one:
        codes ``[B, L]`` int64, 0 = padding;
        values ``[B, L]`` float, numeric values (normalised per code, e.g. z-scores);
        value_mask ``[B, L]`` bool, True where the value is observed (others, NaN included,
        are never read); default ``isfinite(values)``;
        times ``[B, L]`` float, event times in one unit (hours recommended), oldest first;
        prediction_time ``[B]`` float, default each row's last event time;
        padding_mask ``[B, L]`` bool, True = real event; default ``codes != 0``.
        -> ``[B, embed_dim]``.

    Truncation policy: a row with more than ``max_len`` events keeps its ``max_len`` most
    recent ones (:func:`truncate_recent`); time gaps are computed before truncating, so the
    oldest kept event still knows how long ago its predecessor was.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        max_len: int = 256,
    ):
        super().__init__()
        self.vocab_size, self.embed_dim, self.max_len = in_channels, dim, max_len
        self.code = nn.Embedding(in_channels, dim, padding_idx=0)
        self.value = nn.Sequential(nn.Linear(1, dim), nn.GELU(), nn.Linear(dim, dim))
        self.no_value = nn.Parameter(torch.zeros(dim))
        self.since_previous = ContinuousTime(dim)
        self.to_prediction = ContinuousTime(dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)

    def forward(
        self,
        codes,
        values: Tensor | None = None,
        value_mask: Tensor | None = None,
        times: Tensor | None = None,
        prediction_time: Tensor | None = None,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        if isinstance(codes, Events):  # encoder(events): the payload of an EHR dataset (tscl.datasets.ehr)
            if values is not None or times is not None or padding_mask is not None or value_mask is not None:
                raise TypeError("encoder(events) takes the codes, values, times and mask from the Events payload; "
                                "pass only prediction_time beside it")
            codes, values, times, padding_mask = codes.codes, codes.values, codes.times, codes.mask
        b, length = codes.shape
        if codes.numel() and (int(codes.max()) >= self.vocab_size or int(codes.min()) < 0):
            raise ValueError(f"code ids must lie in [0, {self.vocab_size}), got [{int(codes.min())}, {int(codes.max())}]")
        pad = (codes != 0) if padding_mask is None else padding_mask.bool()
        if values is None:
            values = torch.zeros(b, length, device=codes.device)
        vmask = torch.isfinite(values) if value_mask is None else value_mask.bool()
        vmask = vmask & pad
        if times is None:
            times = torch.zeros(b, length, device=codes.device)
        times = times.float()
        if prediction_time is None:
            prediction_time = torch.where(pad, times, -torch.inf).amax(dim=1)
            prediction_time = torch.where(torch.isfinite(prediction_time), prediction_time, 0.0)
        # time since the previous real event (0 for a row's first event), whatever the padding layout
        real_idx = torch.where(pad, torch.arange(length, device=codes.device), -1)
        prev = torch.cat([real_idx.new_full((b, 1), -1), real_idx.cummax(dim=1).values[:, :-1]], dim=1)
        since = torch.where(prev >= 0, times - times.gather(1, prev.clamp(min=0)), 0.0)
        to_pred = prediction_time.float()[:, None] - times
        if length > self.max_len:
            pad, codes, values, vmask, since, to_pred = truncate_recent(self.max_len, pad, codes, values, vmask, since, to_pred)
        v = torch.where(vmask, values.float(), 0.0).unsqueeze(-1)
        tokens = (
            self.code(torch.where(pad, codes, 0))
            + torch.where(vmask.unsqueeze(-1), self.value(v), self.no_value)
            + self.since_previous(torch.where(pad, since, 0.0))
            + self.to_prediction(torch.where(pad, to_pred, 0.0))
        )
        h = torch.cat([self.cls.expand(b, -1, -1), tokens], dim=1)
        key_mask = torch.cat([pad.new_ones(b, 1), pad], dim=1)
        h = self.drop(h)
        for block in self.blocks:
            h = block(h, key_mask)
        return self.ln(h[:, 0])
