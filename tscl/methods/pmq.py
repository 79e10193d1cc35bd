"""PMQ: patient memory queue — MoCo with patient ids on the queued keys.

Sun, Yang, Dong. "Patient memory queue ..." arXiv 2506.06310 (2025); code 3hiuwoo/PMQ
(``model.py``; PMB is the variant without a queue).

Batch: a "trial shuffle" sampler (patients shuffled, their recordings kept together, order
shuffled inside each batch), so one batch holds several recordings of one patient. Each
recording ``x [N, C, T]`` is cut into S consecutive segments; each segment's first half is
the query view and its adjacent second half the key view ("neighbor" augmentation), giving
B = N·S pairs with patient ids p [B]. Query branch: encoder → head → predictor; key branch:
an EMA copy of encoder → head (θ_k ← m θ_k + (1−m) θ_q, no gradient). A FIFO queue Q [K, D]
stores past keys with their patient ids p_Q [K] (both buffers, saved in the checkpoint).

With s_ij = q_i·k_j / τ over the columns [k | Q] (normalised), D_i = Σ_j exp(s_ij):

    L_inst = mean_i −log exp(s_ii) / D_i                          (every queue entry a negative)
    L_pat  = mean_i −1/|P(i)| Σ_{j∈P(i)} log exp(s_ij) / D_i,     P(i) = {j : p_j = p_i} over [k | Q]
    L      = τ (L_inst + L_pat)                                    (the code's 2τ · mean of the two)

``bank_same_id="positive"`` (default, the paper): same-patient queue entries are positives in
L_pat. ``"mask"``: they are removed from every denominator instead (false-negative masking);
then L = 2τ L_pat, in which the own key and in-batch same-patient keys are the positives.

Differences from the code, all in the averaging of L_pat: the code averages over the pairs
(i, j>i) of the concatenated index (in-batch upper triangle + all same-patient queue
entries); here each anchor averages over all its same-patient keys, its own key included
(SupCon's L_out), and anchors are averaged. The code's SWA copy of the online network and its
in-encoder frequency/time masking are replaced by EMA from the online weights and the
``augment`` pipeline (default: band-pass jitter + time masking).

EHR items (:class:`~tscl.datasets.Events`): the neighbour views are the first and second half
of each item's events by count (2·S consecutive chunks for S segments), then the EHR
augmentation (``default_augment["ehr"]``); the patient queue is unchanged.

Data parallel: queries (with gradient), keys and patient ids are gathered across ranks before
the loss, and the gathered keys enter the queue, so every rank holds the same queue.
"""
from __future__ import annotations

from torch import Tensor, nn

from tscl import kernels
from tscl.augment import EHR_AUGMENT, build_augment
from tscl.payloads import Events
from tscl.distributed import gather_embeddings
from tscl.encoders import ProjectionHead
from tscl.methods.base import Method
from tscl.methods.polywindow import cut_windows
from tscl.methods.queue import encode_keys, key_copy, queue_bank, register_queue, update_key_branch
from tscl.methods.sampling import TrialShuffleSampler
from tscl.samplers import encode_ids

__all__ = ["PMQ"]


class PMQ(Method):
    modalities = ("waveform", "ehr")
    default_augment = {"waveform": "bandpass,mask:frac=0.05:n=4", "ehr": EHR_AUGMENT}

    def __init__(self, encoder: nn.Module, proj_dim: int = 128, temperature: float = 0.1, queue_size: int = 16384,
                 momentum: float = 0.999, segments_per_record: int = 2, bank_same_id: str = "positive",
                 predictor: bool = True, batch_size: int = 64, augment="bandpass,mask:frac=0.05:n=4"):
        super().__init__()
        if bank_same_id not in ("positive", "mask"):
            raise ValueError(f"bank_same_id must be 'positive' or 'mask', got {bank_same_id!r}")
        self.encoder = encoder
        self.head = ProjectionHead(encoder.embed_dim, encoder.embed_dim, proj_dim)
        self.predictor = ProjectionHead(proj_dim, proj_dim, proj_dim) if predictor else nn.Identity()
        self.key_encoder, self.key_head = key_copy(encoder, self.head)
        self.temperature, self.momentum, self.bank_same_id = temperature, momentum, bank_same_id
        self.segments_per_record, self.batch_size = segments_per_record, batch_size
        self.augment = build_augment(augment)
        register_queue(self, queue_size, proj_dim, ids=True)  # buffers queue, queue_ids, queue_ptr, queue_filled
        self._pending: tuple[Tensor, Tensor] | None = None

    def make_sampler(self, index, seed: int = 0) -> TrialShuffleSampler:
        self.augment.bind(index, seed)
        return TrialShuffleSampler(encode_ids(index["patient_id"].to_list()), batch_size=self.batch_size, seed=seed)

    def neighbour_views(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [N, C, T]`` -> query halves, key halves ``[N·S, C, L/2]`` (S adjacent segments of length L = T/S).

        EHR :class:`~tscl.datasets.Events`: each item's events in 2·S consecutive chunks of equal count,
        chunk 2s the query and chunk 2s + 1 its key (:func:`tscl.datasets.ehr.neighbour_events`)."""
        if isinstance(x, Events):
            from tscl.datasets.ehr import neighbour_events

            return neighbour_events(x, self.segments_per_record)
        n, c, t = x.shape
        seg = t // self.segments_per_record
        s = cut_windows(x, self.segments_per_record, seg, seg).reshape(n * self.segments_per_record, c, seg)
        half = seg // 2
        return s[..., :half], s[..., half : 2 * half]

    def forward(self, x: Tensor, batch: dict) -> Tensor:
        xq, xk = self.neighbour_views(x)
        pids = batch["patient_ids"].repeat_interleave(self.segments_per_record)  # [B]
        q = self.predictor(self.head(self.encoder(self.augment(xq))))  # [B, D]
        k = encode_keys(self, self.augment(xk))  # [B, D], no gradient
        q, _ = gather_embeddings(q)
        k, pids = gather_embeddings(k, pids)  # global batch under DDP (patient ids are global codes)
        self._pending = (k, pids)
        bank, bank_ids = queue_bank(self)
        l_pat = kernels.info_nce(q, k, pids, pids, temperature=self.temperature, bank=bank, bank_ids=bank_ids,
                                 bank_same_id=self.bank_same_id)
        if self.bank_same_id == "mask":
            return 2 * self.temperature * l_pat
        l_inst = kernels.info_nce(q, k, temperature=self.temperature, bank=bank)
        return self.temperature * (l_inst + l_pat)

    def after_step(self) -> None:
        update_key_branch(self)  # EMA of the key branch, then this step's keys and patient ids enter the queue
