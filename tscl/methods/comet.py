"""COMET: contrastive learning at observation, sample, trial and patient level.

Wang, Han, Wang, Zhang. "Contrast everything: a hierarchical contrastive framework for
medical time-series." NeurIPS 2023 (arXiv 2310.14017); code DL4mHealth/COMET.

Hierarchy: a *patient* has several *trials* (recordings, here the rows of the cohort); a trial
is cut into S *samples* (consecutive segments); a sample is a sequence of *observations*
(here O short chunks of it). Two augmented views of every sample are encoded, ``z¹, z² [B, D]``
(B = N·S samples, or B·O observations), s_ij = cos(z_i, z_j) / τ, τ = 0.1.

Sample and observation levels (TS2Vec-style instance contrast): q = k = both views stacked,
the positive of a row is the same unit in the other view, every other row a negative::

    L_unit = mean_i −log  exp(s_{i,i'}) / Σ_{a≠i} exp(s_ia)         (2B rows, i' = other view)

Trial and patient levels (the code's ``id_contrastive_loss``): view 1 against view 2, the
positives of sample i are the *other* samples with the same id (its own other view is not
one), both directions::

    L_id = ½ [ mean_i −1/|P(i)| Σ_{j∈P(i)} log exp(s_{i¹j²}) / Σ_{l≠i} exp(s_{i¹l²})  +  the same over columns ],
    P(i) = {j ≠ i : id(j) = id(i)}

    L = λ_p L_patient + λ_t L_trial + λ_s L_sample + λ_o L_observation

Kernel terms: unit levels ``info_nce(z, z, unit, unit, exclude_self=True)`` with z = [z¹; z²];
id levels ``info_nce(z¹, z², id, id, exclude_self=True, symmetric=True)``. Ids: observation
= (sample, chunk); sample = (record id, segment index), unique across ranks; trial =
``batch["record_ids"]``; patient = ``batch["patient_ids"]``. A level whose ids are not in the
batch is skipped with a warning (its weight is not redistributed).

Weights: the code ships one configuration per dataset. The default is its general one,
λ = 0.25 for every level (its AD and TDBrain configurations); ``weights="ptb"`` is its PTB
configuration λ = (patient 0.1, trial 0.7, sample 0.1, observation 0.1); a dict overrides
single levels of the default. The trial level's negatives include the other recordings of
the same patient, so a heavy trial weight teaches the encoder what tells one visit from the
next (measured results: ``docs/methods_notes.md``). Data parallel: every level's embeddings and
ids are gathered across ranks before its loss.

Differences from the code: the code's observation and sample levels are TS2Vec losses on
per-timestamp features with raw dot products (observation negatives: other timestamps of the
same sample only); here the encoder returns one vector per input, so observations are short
chunks encoded on their own, every other chunk in the batch is a negative, and all levels use
cosine similarity. At the id levels the code keeps a sample's own other view in the
denominator (a negative) and averages over positive pairs rather than anchors; here it is
left out of both. Sampler: trial shuffle (batches hold several trials of one patient).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from tscl import kernels
from tscl.augment import build_augment
from tscl.distributed import all_gather, gather_embeddings, is_distributed
from tscl.encoders import ProjectionHead
from tscl.methods.base import Method
from tscl.methods.polywindow import cut_windows
from tscl.methods.sampling import TrialShuffleSampler
from tscl.samplers import encode_ids

__all__ = ["COMET", "DEFAULT_WEIGHTS", "PTB_WEIGHTS"]

DEFAULT_WEIGHTS = {"patient": 0.25, "trial": 0.25, "sample": 0.25, "observation": 0.25}
PTB_WEIGHTS = {"patient": 0.1, "trial": 0.7, "sample": 0.1, "observation": 0.1}
PRESETS = {"default": DEFAULT_WEIGHTS, "ptb": PTB_WEIGHTS}
LEVEL_IDS = {"trial": "record_ids", "patient": "patient_ids"}


class COMET(Method):
    def __init__(self, encoder: nn.Module, weights: dict | str | None = None, samples_per_trial: int = 2,
                 observations_per_sample: int = 4, level_ids: dict | None = None, proj_dim: int = 128,
                 temperature: float = 0.1, batch_size: int = 64, augment="mask:frac=0.1:n=2,scale"):
        super().__init__()
        if isinstance(weights, str):
            if weights not in PRESETS:
                raise ValueError(f"unknown COMET weights preset {weights!r}; presets: {sorted(PRESETS)}")
            weights = PRESETS[weights]
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown COMET level(s) {sorted(unknown)}; levels: {list(DEFAULT_WEIGHTS)}")
        if samples_per_trial < 2 and self.weights["trial"]:
            raise ValueError("COMET's trial level needs samples_per_trial >= 2 (a sample's positives are the "
                             "other samples of its trial); set it, or weights={'trial': 0}")
        self.level_ids = {**LEVEL_IDS, **(level_ids or {})}
        self.encoder = encoder
        self.head = ProjectionHead(encoder.embed_dim, encoder.embed_dim, proj_dim)
        self.samples_per_trial, self.observations_per_sample = samples_per_trial, observations_per_sample
        self.temperature, self.batch_size = temperature, batch_size
        self.augment = build_augment(augment)
        self._warned: set = set()

    def make_sampler(self, index, seed: int = 0) -> TrialShuffleSampler:
        self.augment.bind(index, seed)
        return TrialShuffleSampler(encode_ids(index["patient_id"].to_list()), batch_size=self.batch_size, seed=seed)

    def _unit_nce(self, z1: Tensor, z2: Tensor, ids: Tensor) -> Tensor:
        """Instance contrast of the (gathered) views: both stacked, a unit's positive is its other view."""
        z, ids = torch.cat([z1, z2]), all_gather(ids).repeat(2)
        return kernels.info_nce(z, z, ids, ids, temperature=self.temperature, exclude_self=True)

    def _id_nce(self, z1: Tensor, z2: Tensor, ids: Tensor) -> Tensor:
        """View 1 against view 2 (gathered, same row order); positives are the other samples with the same id."""
        ids = all_gather(ids)
        return kernels.info_nce(z1, z2, ids, ids, temperature=self.temperature, exclude_self=True, symmetric=True)

    @staticmethod
    def _gathered_views(z: Tensor) -> tuple[Tensor, Tensor]:
        """``[view 1; view 2]`` rows of this rank -> every rank's view-1 rows and view-2 rows, in rank order."""
        z1, z2 = z.chunk(2)
        return gather_embeddings(z1)[0], gather_embeddings(z2)[0]

    def _skip(self, level: str, key: str) -> None:
        if level not in self._warned:
            self._warned.add(level)
            warnings.warn(f"COMET: batch has no {key!r}; the {level} level is skipped", stacklevel=3)

    def _unit_ids(self, batch: dict, n: int, per_record: int, dev) -> Tensor:
        """Globally unique ids of the ``per_record`` sub-units of each of the ``n`` records:
        ``record_id · per_record + j`` (a per-rank ``arange`` would collide across ranks)."""
        rec = batch.get("record_ids")
        if rec is None:
            if is_distributed():
                raise ValueError("COMET under data parallel needs batch['record_ids'] for its sample and observation ids")
            rec = torch.arange(n)
        j = torch.arange(per_record, device=dev)
        return (rec.to(dev)[:, None] * per_record + j).reshape(-1)

    def forward(self, x: Tensor, batch: dict) -> Tensor:
        n, c, t = x.shape
        s = self.samples_per_trial
        length = t // s
        samples = cut_windows(x, s, length, length).reshape(n * s, c, length)  # [N·S, C, L]
        v1, v2 = self.augment(samples), self.augment(samples)
        dev = x.device
        total = x.new_zeros((), dtype=torch.float32)
        level_views = [lvl for lvl in ("sample", "trial", "patient") if self.weights[lvl]]
        if level_views:
            z1, z2 = self._gathered_views(self.head(self.encoder(torch.cat([v1, v2]))))  # [N·S, D] per rank
            for level in level_views:
                if level == "sample":
                    total = total + self.weights[level] * self._unit_nce(z1, z2, self._unit_ids(batch, n, s, dev))
                    continue
                key = self.level_ids[level]
                if batch.get(key) is None:
                    self._skip(level, key)
                    continue
                ids = batch[key].to(dev).repeat_interleave(s)  # [N·S]
                total = total + self.weights[level] * self._id_nce(z1, z2, ids)
        if self.weights["observation"]:
            o = self.observations_per_sample
            chunk = length // o
            obs = torch.cat([v1, v2])[..., : o * chunk].reshape(2 * n * s, c, o, chunk)
            obs = obs.permute(0, 2, 1, 3).reshape(2 * n * s * o, c, chunk)  # [2·N·S·O, C, L/O]
            z1, z2 = self._gathered_views(self.head(self.encoder(obs)))
            total = total + self.weights["observation"] * self._unit_nce(z1, z2, self._unit_ids(batch, n, s * o, dev))
        return total
