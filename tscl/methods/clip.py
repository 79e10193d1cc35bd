"""CLIP: a two-tower contrastive method pairing two modalities of one recording / visit.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021; for ECG with structured data, e.g. Lalam et al. 2023 and the ECG-text / ECG-EHR
two-tower literature.

Tower A is the run's encoder (``method.encoder``: an ECG, EEG or image encoder on the dataset's
payload); tower B encodes the *tabular columns of the same rows of the index* — the visit's labs
and vitals (the simulated cohort's ``lab_*``, a CSV's numeric columns) — with the ``tabular``
encoder (:class:`~tscl.encoders.TabularEncoder`, missing values as learned tokens). Each tower
ends in a linear projection to ``proj_dim`` and L2 normalisation. With pairs (a_i, b_i) of a
batch of N visits::

    L = 1/2 [ CE(z^a z^bT / tau, diag) + CE(z^b z^aT / tau, diag) ],   tau = exp(-s), s learnable

(the logit scale s clipped at log 100, as CLIP). Kernel terms: ``info_nce(za, zb, ids, ids,
symmetric=True, temperature=tau)`` with ids = record ids (``positives="pair"``: only a visit's
own partner is positive) or patient ids (``positives="patient"``: other visits of the same
patient are positives too, never negatives).

The tabular side needs no second payload: :meth:`batch_extras` hands the trainer a ``[N, F]``
tensor of the selected columns (``columns``: names or ``fnmatch`` patterns, default ``lab_*``;
``log``: columns log-transformed first, e.g. ``lab_bnp``), standardised with the mean and
standard deviation of the *training* rows (saved as buffers ``b_mean`` / ``b_std`` with the
method), so any source whose index carries the columns works unchanged (``wfdb`` on the
simulated cohort, ``images`` with lab columns in its CSV). Tower B is built when the sampler sees
the index (F = number of selected columns) unless ``b_channels`` is given;
:func:`tscl.runs.load_tower` rebuilds either tower from a run folder (``config.json`` + ``method.safetensors``).

Outside the trainer, ``CLIP(encoder_a, tower_b=encoder_b)`` is a two-tower model over any paired inputs
(ECG <-> labs, ECG <-> EHR, image <-> text): :meth:`CLIP.pair_loss` and :func:`fit_pairs` train it on
paired tensors; :func:`tscl.probes.retrieval.retrieval_recall` measures how often the partner is among
the k nearest, both ways.
"""
from __future__ import annotations

import math
import warnings
from fnmatch import fnmatch

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tscl import kernels
from tscl.augment import build_augment, spec_modality
from tscl.distributed import gather_embeddings
from tscl.encoders import build_encoder
from tscl.methods.base import Method
from tscl.methods.sampling import RecordBatchSampler

__all__ = ["CLIP", "select_columns", "tabular_table", "Tower", "fit_pairs"]


def select_columns(columns, pattern) -> list[str]:
    """The columns named by ``pattern``: a list, or a comma-separated string, of names or ``fnmatch``
    patterns (``lab_*``), in the index's order within each pattern; a pattern matching nothing raises."""
    patterns = [p.strip() for p in pattern.split(",") if p.strip()] if isinstance(pattern, str) else list(pattern)
    out: list[str] = []
    for p in patterns:
        hits = [c for c in columns if fnmatch(c, p)]
        if not hits:
            raise ValueError(f"CLIP columns: {p!r} matches no column of the index; columns: {list(columns)}")
        out += [h for h in hits if h not in out]
    return out


def tabular_table(index, columns: list[str], log=()) -> np.ndarray:
    """``[N, F]`` float64 of ``columns`` (null -> NaN), ``log`` columns log-transformed."""
    import polars as pl

    log = [c.strip() for c in log.split(",") if c.strip()] if isinstance(log, str) else list(log or ())
    unknown = [c for c in log if c not in columns]
    if unknown:
        raise ValueError(f"CLIP log column(s) {unknown} are not among the tabular columns {columns}")
    out = np.empty((index.height, len(columns)), dtype=np.float64)
    for j, c in enumerate(columns):
        col = index[c]
        if not col.dtype.is_numeric() and col.dtype != pl.Boolean:
            try:
                col = col.cast(pl.Float64)
            except Exception:
                raise ValueError(f"CLIP column {c!r} is not numeric (dtype {col.dtype}); choose numeric columns") from None
        v = col.cast(pl.Float64).fill_null(float("nan")).to_numpy()
        if c in log:
            if (v[np.isfinite(v)] <= 0).any():
                raise ValueError(f"CLIP log column {c!r} holds values <= 0; it cannot be log-transformed")
            v = np.log(v)
        out[:, j] = v
    return out


class CLIP(Method):
    modalities = ("waveform", "image", "ehr")
    augment_names = ("augment",)

    def __init__(self, encoder: nn.Module, columns: str = "lab_*", log: str = "", b_channels: int | None = None,
                 b_encoder: str = "tabular", b_encoder_kwargs: dict | None = None, proj_dim: int = 128,
                 temperature: float = 0.07, learn_temperature: bool = True, max_logit_scale: float = 100.0,
                 batch_size: int = 64, positives: str = "pair", augment=None, tower_b: nn.Module | None = None):
        super().__init__()
        if positives not in ("pair", "patient"):
            raise ValueError(f"positives must be 'pair' or 'patient', got {positives!r}")
        self.encoder = encoder
        self.proj_a = nn.Linear(encoder.embed_dim, proj_dim, bias=False)
        self.columns, self.log = columns, log
        self.b_encoder, self.b_encoder_kwargs, self.proj_dim = b_encoder, dict(b_encoder_kwargs or {}), proj_dim
        self.batch_size, self.positives = batch_size, positives
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)
        self.max_log_scale = math.log(max_logit_scale)
        self.augment = build_augment(augment, modality=spec_modality(augment))  # tower A's input; none by default
        self.tower_b: nn.Module | None = None
        self.b_columns: list[str] = []
        if tower_b is not None:
            self._set_tower_b(tower_b)
        elif b_channels:
            self._build_tower_b(int(b_channels))

    # ---- tower B -----------------------------------------------------------------------------------
    def _set_tower_b(self, tower: nn.Module) -> None:
        device = next(self.encoder.parameters()).device
        self.tower_b = tower.to(device)
        self.proj_b = nn.Linear(tower.embed_dim, self.proj_dim, bias=False).to(device)

    def _build_tower_b(self, n_features: int) -> None:
        self._set_tower_b(build_encoder(self.b_encoder, n_features, **self.b_encoder_kwargs))
        device = self.proj_b.weight.device
        self.register_buffer("b_mean", torch.zeros(n_features, device=device))  # float32: every device has it
        self.register_buffer("b_std", torch.ones(n_features, device=device))

    @property
    def b_channels(self) -> int | None:
        """Tower B's number of tabular features (None before it is built, or for a tower given as a module)."""
        return int(self.b_mean.shape[0]) if getattr(self, "b_mean", None) is not None else None

    def fit_tabular(self, index) -> None:
        """Select the columns in ``index``, build tower B if needed, and set the standardisation from these
        (training) rows."""
        cols = select_columns(index.columns, self.columns)
        if self.tower_b is None:
            self._build_tower_b(len(cols))
        elif len(cols) != self.b_channels:
            raise ValueError(f"CLIP tower B takes {self.b_channels} features but columns={self.columns!r} selects "
                             f"{len(cols)} ({cols})")
        table = tabular_table(index, cols, self.log)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, std = np.nanmean(table, axis=0), np.nanstd(table, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        self.b_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        self.b_std.copy_(torch.from_numpy(std.astype(np.float32)))
        self.b_columns = cols

    def tabular_inputs(self, index) -> Tensor:
        """Tower B's input for the rows of ``index``: ``[N, F]`` float32, standardised with the training
        rows' statistics (NaN where a value is missing)."""
        if self.tower_b is None:
            raise RuntimeError("CLIP tower B is not built yet: call fit_tabular(train_index) (the trainer does it "
                               "through make_sampler) or give b_channels")
        cols = select_columns(index.columns, self.columns)
        if len(cols) != self.b_channels:
            raise ValueError(f"CLIP tower B takes {self.b_channels} features; this index gives {len(cols)} ({cols})")
        table = torch.from_numpy(tabular_table(index, cols, self.log))
        return ((table - self.b_mean.cpu().double()) / self.b_std.cpu().double()).float()

    # ---- the method protocol ---------------------------------------------------------------------------
    def make_sampler(self, index, seed: int = 0) -> RecordBatchSampler:
        self.augment.bind(index, seed)
        self.fit_tabular(index)
        return RecordBatchSampler(len(index), batch_size=self.batch_size, seed=seed)

    def batch_extras(self, index) -> dict:
        """``{"tabular": [N, F]}``: each row's standardised columns, sliced into every batch by the trainer."""
        if self.tower_b is None:
            self.fit_tabular(index)
        return {"tabular": self.tabular_inputs(index)}

    @property
    def temperature(self) -> Tensor:
        """tau = exp(-min(logit_scale, log max_logit_scale)): a 0-dim tensor with a gradient."""
        return torch.exp(-self.logit_scale.clamp(max=self.max_log_scale))

    def embed_a(self, *inputs) -> Tensor:
        """Tower A's unit-norm joint-space embedding ``[B, proj_dim]`` of its input (the run's payload)."""
        return F.normalize(self.proj_a(self.encoder(*inputs)), dim=-1)

    def embed_b(self, *inputs) -> Tensor:
        """Tower B's unit-norm joint-space embedding ``[B, proj_dim]`` (its standardised table, or what a
        tower given as a module takes)."""
        return F.normalize(self.proj_b(self.tower_b(*inputs)), dim=-1)

    def pair_loss(self, inputs_a, inputs_b) -> Tensor:
        """The symmetric InfoNCE over pairs ``(a_i, b_i)`` given as tuples of tensors (dim 0 aligned), no ids:
        pair i is only its own partner's positive (:func:`fit_pairs` trains on it)."""
        za, zb = self.embed_a(*inputs_a), self.embed_b(*inputs_b)
        return kernels.info_nce(za, zb, symmetric=True, temperature=self.temperature, normalize=False)

    def forward(self, x, batch: dict) -> Tensor:
        if "tabular" not in batch:
            raise KeyError("CLIP needs batch['tabular'] (the trainer adds it from method.batch_extras(index))")
        za = self.embed_a(self.augment(x) if self.augment else x)  # [N, D]
        zb = self.embed_b(batch["tabular"])  # [N, D]
        ids = batch["record_ids"] if self.positives == "pair" else batch["patient_ids"]
        (za, gids), (zb, _) = gather_embeddings(za, ids), gather_embeddings(zb, ids)  # global batch under DDP
        return kernels.info_nce(za, zb, gids, gids, temperature=self.temperature, symmetric=True, normalize=False)


# ---- rebuilding a run's towers ---------------------------------------------------------------------

class Tower(nn.Module):
    """One tower of a trained CLIP: its encoder's features (``projected=False``) or the unit-norm
    joint-space embedding (``projected=True``). ``inputs(dataset)`` gives what ``forward`` takes for
    a dataset's rows (its payload for tower A, the standardised tabular columns for tower B)."""

    def __init__(self, clip: CLIP, side: str, projected: bool):
        super().__init__()
        self.side, self.projected = side, projected
        self.encoder = clip.encoder if side == "a" else clip.tower_b
        self.proj = (clip.proj_a if side == "a" else clip.proj_b) if projected else None
        self.embed_dim = clip.proj_dim if projected else self.encoder.embed_dim
        self._clip = [clip]  # not a submodule: the tower's state_dict is its own weights

    def inputs(self, dataset, rows=None):
        rows = np.arange(len(dataset)) if rows is None else np.asarray(rows)
        if self.side == "a":
            return dataset.fetch(rows)
        return self._clip[0].tabular_inputs(dataset.index[rows.tolist()] if len(rows) else dataset.index.clear())

    def forward(self, x) -> Tensor:
        h = self.encoder(x)
        return F.normalize(self.proj(h), dim=-1) if self.projected else h


def fit_pairs(model: CLIP, inputs_a, inputs_b, steps: int = 200, batch_size: int = 64, lr: float = 1e-3,
              weight_decay: float = 1e-4, seed: int = 0) -> list[float]:
    """Train both towers of ``model`` on paired tensors (tuples of tensors, dim 0 aligned) with random
    batches, outside the trainer (no run folder, no dataset); returns the loss per step."""
    n = inputs_a[0].shape[0]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[: min(batch_size, n)]
        loss = model.pair_loss([t[idx] for t in inputs_a], [t[idx] for t in inputs_b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
