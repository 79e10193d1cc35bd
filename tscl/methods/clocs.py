"""CLOCS: contrastive learning of cardiac signals across space, time and patients.

Kiyasseh, Zhu, Clifton. "CLOCS: Contrastive learning of cardiac signals across space, time,
and patients." ICML 2021 (arXiv 2005.13249); code danikiyasseh/CLOCS.

Views of one recording, ``x [N, C, T]``, with segments of length L (default T/2):

- CMSC (contrastive multi-segment coding): two *adjacent, non-overlapping* segments
  x[..., o:o+L] and x[..., o+L:o+2L] (random o) of all leads;
- CMLC (multi-lead coding): the *same* segment seen through V different single leads
  (``leads`` indices, or ``n_leads`` drawn at random per batch, the default; the CLOCS code uses
  the fixed leads II, V2, aVL and aVR); each lead is a separate single-lead instance;
- CMSMLC: both — view pairs differ in segment *and* lead: (segment 1, lead v) vs
  (segment 2, lead w), v ≠ w.

Instances of the same patient are positives (the views of one recording and every other
recording of that patient in the batch); no intra-view negatives. For a view pair (a, b)
with s_ij = cos(z^a_i, z^b_j) / τ and patient ids p::

    ℓ_ab = ½ [ mean_i −1/|P_i| Σ_{j∈P_i} log e^{s_ij}/Σ_l e^{s_il}  +  the same over columns ],
    P_i = {j : p_j = p_i},       L = mean over view pairs of ℓ_ab,   τ = 0.1

i.e. ``info_nce(z_a, z_b, p, p, symmetric=True)``. (The code averages the diagonal term and
the extra same-patient term separately; here each anchor averages over all its same-patient
keys.) Single-lead instances: with a single-lead encoder (``in_channels == 1``) the lead is
fed alone; with a multi-lead encoder the other leads are masked out through ``channel_mask``
(zeroed, the lead rescaled), so the encoder that is exported still reads all leads.
No augmentation by default (CLOCS contrasts the views themselves).

Normalisation (``normalize``): ``"minmax"`` scales each lead of each view to [0, 1] over its
segment, ``(x − min) / (max − min + 1e-8)``, after any augmentation, as the CLOCS code does to
every view (``normalize_frame`` in ``prepare_dataset.py``); ``"none"`` feeds raw segments. The
default depends on the mode: ``"minmax"`` where a positive pair crosses leads (CMLC, CMSMLC),
``"none"`` for CMSC. Leads of one beat differ in gain and polarity; without the normalisation a
cross-lead objective must make the encoder itself discard amplitude, which erases what
amplitude-defined conditions (LVH's QRS voltage) are made of. CMSC's two views share their
leads and gain, so there the normalisation only removes amplitude from the input (measured
results of both defaults: ``docs/methods_notes.md``). The exported encoder reads raw records, as
every method's does.

Data parallel: every view's embeddings and the patient ids are gathered across ranks before
the loss.
"""
from __future__ import annotations

from functools import partial
from itertools import permutations

import torch
from torch import Tensor, nn

from tscl import kernels
from tscl.augment import build_augment
from tscl.distributed import gather_embeddings
from tscl.encoders import ProjectionHead
from tscl.methods.base import Method
from tscl.methods.polywindow import cut_windows
from tscl.methods.sampling import RecordBatchSampler

__all__ = ["CLOCS", "CLOCS_MODES"]

CLOCS_MODES = ("cmsc", "cmlc", "cmsmlc")
NORMALIZE = ("minmax", "none")
DEFAULT_NORMALIZE = {"cmsc": "none", "cmlc": "minmax", "cmsmlc": "minmax"}  # min-max where positives cross leads


class CLOCS(Method):
    generator_names = ("_gen",)

    def __init__(self, encoder: nn.Module, mode: str = "cmsc", n_leads: int = 4, leads: list | None = None,
                 segment_len: int | float = 0.5, normalize: str | None = None,
                 proj_dim: int = 128, temperature: float = 0.1, batch_size: int = 64, augment=None):
        super().__init__()
        if mode not in CLOCS_MODES:
            raise ValueError(f"mode must be one of {CLOCS_MODES}, got {mode!r}")
        normalize = DEFAULT_NORMALIZE[mode] if normalize is None else normalize
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        self.normalize = normalize
        self.encoder = encoder
        self.head = ProjectionHead(encoder.embed_dim, encoder.embed_dim, proj_dim)
        self.mode, self.n_leads, self.leads, self.segment_len = mode, n_leads, leads, segment_len
        self.temperature, self.batch_size = temperature, batch_size
        self.augment = build_augment(augment)
        self._gen: torch.Generator | None = None

    def make_sampler(self, index, seed: int = 0) -> RecordBatchSampler:
        self.augment.bind(index, seed)
        self._gen = torch.Generator().manual_seed(seed)
        return RecordBatchSampler(len(index), batch_size=self.batch_size, seed=seed)

    def segments(self, x: Tensor) -> Tensor:
        """``x [N, C, T] -> [N, 2, C, L]``: two adjacent non-overlapping segments per recording."""
        t = x.shape[-1]
        length = int(self.segment_len * t) if self.segment_len <= 1 else int(self.segment_len)
        length = min(length, t // 2)
        gen = self._gen if x.device.type == "cpu" else None
        return cut_windows(x, 2, length, length, gen)

    def pick_leads(self, c: int, device) -> Tensor:
        """Lead indices of the views: ``leads`` if given, else ``n_leads`` drawn at random per batch."""
        if self.leads is not None:
            return torch.as_tensor(self.leads, device=device)
        v = min(self.n_leads, c)
        if v < 2:
            raise ValueError(f"{self.mode} needs at least 2 leads, the data have {c}")
        return torch.randperm(c, generator=self._gen)[:v].to(device)

    def prepare(self, seg: Tensor) -> Tensor:
        """A view as the encoder sees it: augmented, then min-max normalised per lead over time."""
        seg = self.augment(seg)
        if self.normalize == "none":
            return seg
        lo, hi = seg.amin(dim=-1, keepdim=True), seg.amax(dim=-1, keepdim=True)
        return (seg - lo) / (hi - lo + 1e-8)

    def embed_lead(self, seg: Tensor, lead: int) -> Tensor:
        """Single-lead instances of ``seg [N, C, L]`` through lead ``lead`` -> ``z [N, D]``."""
        n, c, _ = seg.shape
        if getattr(self.encoder, "in_channels", c) == 1:
            return self.head(self.encoder(self.prepare(seg[:, lead : lead + 1])))
        mask = torch.zeros(n, c, dtype=torch.bool, device=seg.device)
        mask[:, lead] = True
        return self.head(self.encoder(self.prepare(seg), mask))

    def views(self, x: Tensor) -> tuple[list[Tensor], list[tuple[int, int]]]:
        """Embedded views ``[z_v [N, D]]`` and the view pairs to contrast."""
        seg = self.segments(x)  # [N, 2, C, L]
        if self.mode == "cmsc":
            z = self.head(self.encoder(self.prepare(seg.flatten(0, 1))))  # one pass: [N·2, D]
            z = z.reshape(x.shape[0], 2, -1)
            return [z[:, 0], z[:, 1]], [(0, 1)]
        leads = self.pick_leads(x.shape[1], x.device).tolist()
        if self.mode == "cmlc":
            zs = [self.embed_lead(seg[:, 0], lead) for lead in leads]
            return zs, [(a, b) for a in range(len(zs)) for b in range(a + 1, len(zs))]
        # cmsmlc: views (segment 1, lead v) and (segment 2, lead v); pairs differ in both
        v = len(leads)
        zs = [self.embed_lead(seg[:, 0], lead) for lead in leads] + [self.embed_lead(seg[:, 1], lead) for lead in leads]
        return zs, [(a, v + b) for a, b in permutations(range(v), 2)]

    def forward(self, x: Tensor, batch: dict) -> Tensor:
        zs, pairs = self.views(x)
        zs[0], pid = gather_embeddings(zs[0], batch["patient_ids"])  # global batch under DDP
        zs[1:] = [gather_embeddings(z)[0] for z in zs[1:]]  # same row order in every view
        losses = [kernels.info_nce(zs[a], zs[b], pid, pid, temperature=self.temperature, symmetric=True)
                  for a, b in pairs]
        return torch.stack(losses).mean()


CLOCS_CMSC = partial(CLOCS, mode="cmsc")
CLOCS_CMLC = partial(CLOCS, mode="cmlc")
CLOCS_CMSMLC = partial(CLOCS, mode="cmsmlc")
