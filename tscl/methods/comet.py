"""COMET: contrastive learning at observation, sample, trial and patient level.

Wang, Han, Wang, Zhang. "Contrast everything: a hierarchical contrastive framework for
medical time-series." NeurIPS 2023 (arXiv 2310.14017); code DL4mHealth/COMET.

Hierarchy: a *patient* has several *trials* (recordings, here the rows of the cohort); a trial
is cut into S *samples* (consecutive segments); a sample is a sequence of *observations*
(here O short chunks of it). Two augmented views of every sample are encoded; at each level
the same InfoNCE is taken with a different notion of "same" (q = k = both views stacked,
exclude_self)::

    L_level = mean_i −1/|P(i)| Σ_{p∈P(i)} log  exp(z_i·z_p / τ) / Σ_{a≠i} exp(z_i·z_a / τ),
    P(i) = {a ≠ i : id_level(a) = id_level(i)}

    L = λ_p L_patient + λ_t L_trial + λ_s L_sample + λ_o L_observation

with ids: observation = (sample, chunk) — each chunk's positive is the same chunk of the
other view; sample = (record id, segment index), unique across ranks; trial = ``batch["record_ids"]``; patient =
``batch["patient_ids"]``. Default weights are the paper's PTB configuration
λ = (patient 0.1, trial 0.7, sample 0.1, observation 0.1); τ = 0.1. A level whose ids are
not in the batch is skipped with a warning (its weight is not redistributed). The trial
level's negatives include other recordings of the same patient, so where the downstream
labels are patient traits it works against them: on the simulated cohort the paper's weights
probe below a random-init encoder and ``weights={"trial": 0}`` above it (README, method
benchmark). Data parallel:
every level's embeddings and ids are gathered across ranks before its loss.

Differences from the code: the code's observation and sample levels are TS2Vec losses on
per-timestamp features with raw dot products (observation negatives: other timestamps of the
same sample only); here the encoder returns one vector per input, so observations are short
chunks encoded on their own, every other chunk in the batch is a negative, and all levels use
cosine similarity. Sampler: trial shuffle (batches hold several trials of one patient).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from tscl.augment import build_augment
from tscl.distributed import all_gather, gather_embeddings, is_distributed
from tscl.encoders import ProjectionHead
from tscl.kernels import info_nce
from tscl.methods.polywindow import cut_windows
from tscl.methods.sampling import TrialShuffleSampler
from tscl.samplers import encode_ids

__all__ = ["COMET", "PTB_WEIGHTS"]

PTB_WEIGHTS = {"patient": 0.1, "trial": 0.7, "sample": 0.1, "observation": 0.1}
LEVEL_IDS = {"trial": "record_ids", "patient": "patient_ids"}


class COMET(nn.Module):
    def __init__(self, encoder: nn.Module, weights: dict | None = None, samples_per_trial: int = 2,
                 observations_per_sample: int = 4, level_ids: dict | None = None, proj_dim: int = 128,
                 temperature: float = 0.1, batch_size: int = 64, augment="mask:frac=0.1:n=2,scale"):
        super().__init__()
        self.weights = {**PTB_WEIGHTS, **(weights or {})}
        unknown = set(self.weights) - set(PTB_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown COMET level(s) {sorted(unknown)}; levels: {list(PTB_WEIGHTS)}")
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

    def _nce(self, z: Tensor, ids: Tensor) -> Tensor:
        return info_nce(z, z, ids, ids, temperature=self.temperature, exclude_self=True)

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
            z = self.head(self.encoder(torch.cat([v1, v2])))  # [2·N·S, D]: view 1 rows, then view 2 rows
            z_all = gather_embeddings(z)[0]  # every rank's [view 1; view 2] blocks, in rank order
            for level in level_views:
                if level == "sample":
                    ids = self._unit_ids(batch, n, s, dev)
                else:
                    key = self.level_ids[level]
                    if batch.get(key) is None:
                        self._skip(level, key)
                        continue
                    ids = batch[key].to(dev).repeat_interleave(s)  # [N·S]
                ids_all = all_gather(ids.repeat(2))  # ids in the same block order as z_all
                total = total + self.weights[level] * self._nce(z_all, ids_all)
        if self.weights["observation"]:
            o = self.observations_per_sample
            chunk = length // o
            obs = torch.cat([v1, v2])[..., : o * chunk].reshape(2 * n * s, c, o, chunk)
            obs = obs.permute(0, 2, 1, 3).reshape(2 * n * s * o, c, chunk)  # [2·N·S·O, C, L/O]
            z_obs, ids = gather_embeddings(self.head(self.encoder(obs)), self._unit_ids(batch, n, s * o, dev).repeat(2))
            total = total + self.weights["observation"] * self._nce(z_obs, ids)
        return total
