"""CLIP-style two-tower training across modalities (ECG <-> labs, ECG <-> EHR, image <-> text).

Two encoders, each followed by a linear projection, map paired inputs (a_i, b_i) to
L2-normalised z^a_i, z^b_i. The loss is the symmetric InfoNCE of CLIP (Radford et al.,
"Learning Transferable Visual Models From Natural Language Supervision", ICML 2021)::

    L = 1/2 [ CE(z^a z^b^T / tau, diag) + CE(z^b z^a^T / tau, diag) ]

computed by ``tscl.kernels.info_nce(za, zb, symmetric=True, temperature=tau)``, with a
learnable temperature tau = exp(-logit_scale) (logit scale clipped at log 100, as CLIP).
:func:`retrieval_recall` measures how often the partner is among the k nearest, both ways.

``python -m tscl.crossmodal`` runs the ECG <-> labs demo on the simulated cohort.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tscl.kernels import info_nce

__all__ = ["TwoTower", "retrieval_recall", "retrieval_ranks", "retrieval_report", "fit_two_tower",
           "cohort_ecg_lab_pairs", "ecg_lab_demo"]


class TwoTower(nn.Module):
    """Encoder A + projection, encoder B + projection, and a learnable temperature.

    ``embed_a(*inputs_a) -> za [B, dim]`` and ``embed_b(*inputs_b) -> zb [B, dim]`` (unit
    norm); ``loss(inputs_a, inputs_b)`` is the symmetric InfoNCE over pairs (a_i, b_i).
    """

    def __init__(self, encoder_a: nn.Module, encoder_b: nn.Module, dim: int = 128, temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        self.encoder_a, self.encoder_b = encoder_a, encoder_b
        self.proj_a = nn.Linear(encoder_a.embed_dim, dim, bias=False)
        self.proj_b = nn.Linear(encoder_b.embed_dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.max_log_scale = math.log(max_logit_scale)
        self.embed_dim = dim

    @property
    def temperature(self) -> Tensor:
        """tau = 1 / exp(min(logit_scale, log max_logit_scale)), a 0-dim tensor with a gradient."""
        return torch.exp(-self.logit_scale.clamp(max=self.max_log_scale))

    def embed_a(self, *inputs) -> Tensor:
        return F.normalize(self.proj_a(self.encoder_a(*inputs)), dim=-1)

    def embed_b(self, *inputs) -> Tensor:
        return F.normalize(self.proj_b(self.encoder_b(*inputs)), dim=-1)

    def loss(self, inputs_a: Sequence[Tensor], inputs_b: Sequence[Tensor]) -> Tensor:
        za, zb = self.embed_a(*inputs_a), self.embed_b(*inputs_b)
        return info_nce(za, zb, symmetric=True, temperature=self.temperature, normalize=False)


@torch.no_grad()
def retrieval_recall(za: Tensor, zb: Tensor, ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """Recall@k of paired retrieval, both directions, with its chance level.

    ``za [N, D]``, ``zb [N, D]``: row i of each is a pair. a->b recall@k is the fraction
    of i whose partner b_i is among the k most cosine-similar rows of zb (ties counted
    against it: rank = number of rows strictly more similar, plus ties other than i);
    b->a likewise. Chance is k / N. Returns ``{"a_to_b@k", "b_to_a@k", "chance@k"}``.
    """
    if za.shape[0] != zb.shape[0] or za.dim() != 2 or zb.dim() != 2:
        raise ValueError(f"za and zb must be paired [N, D], got {list(za.shape)} and {list(zb.shape)}")
    n = za.shape[0]
    s = F.normalize(za.float(), dim=-1) @ F.normalize(zb.float(), dim=-1).T
    out = {}
    for name, sim in (("a_to_b", s), ("b_to_a", s.T)):
        true = sim.diagonal()[:, None]
        rank = (sim >= true).sum(dim=1) - 1  # rows at least as similar, minus the partner itself
        for k in ks:
            out[f"{name}@{k}"] = float((rank < k).float().mean())
    for k in ks:
        out[f"chance@{k}"] = min(k, n) / n
    return out


@torch.no_grad()
def retrieval_ranks(za: Tensor, zb: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each item's partner, a->b and b->a (0 = retrieved first), ties counted against it as in
    :func:`retrieval_recall`: ``rank_i`` = rows at least as similar as the partner, minus the partner."""
    s = F.normalize(za.float(), dim=-1) @ F.normalize(zb.float(), dim=-1).T
    return tuple(((m >= m.diagonal()[:, None]).sum(dim=1) - 1).cpu().numpy() for m in (s, s.T))


@torch.no_grad()
def retrieval_report(run_dir, dataset, ks: Sequence[int] = (1, 5, 10), n_boot: int = 1000, seed: int = 0,
                     batch_size: int = 256, device: str = "cpu", allow_pretrain_patients: bool = False) -> dict:
    """Held-out paired retrieval of a ``clip`` run on ``dataset`` (e.g. its ``test`` split): recall@k both
    ways with 95 % CIs from a patient-level bootstrap (whole patients resampled, the gallery fixed), and
    chance k / N.

    Refuses a dataset that shares a patient with pretraining (the run's ``patients.json``) unless
    ``allow_pretrain_patients``. Returns ``{"n", "n_patients", "temperature", "a_to_b@k": {"recall",
    "ci_low", "ci_high"}, "b_to_a@k": ..., "chance@k"}``.
    """
    import json
    from pathlib import Path

    from tscl.methods.clip import load_clip
    from tscl.probes.bootstrap import Resamples, mean_resampled
    from tscl.probes.protocol import percentile_ci

    run_dir = Path(run_dir)
    pids = np.asarray(dataset.index["patient_id"].to_list())
    seen_path = run_dir / "patients.json"
    if seen_path.exists() and not allow_pretrain_patients:
        shared = set(pids) & set(json.loads(seen_path.read_text())["patients"])
        if shared:
            raise ValueError(f"{len(shared)} patient(s) of this dataset were in pretraining (e.g. {sorted(shared)[0]!r}); "
                             "report retrieval on a held-out split")
    if len(dataset) < 2:
        raise ValueError("retrieval needs at least two pairs")
    clip = load_clip(run_dir, device)
    za, zb = [], []
    for start in range(0, len(dataset), batch_size):
        rows = np.arange(start, min(start + batch_size, len(dataset)))
        za.append(clip.embed_a(dataset.fetch(rows).to(device)))
    zb = clip.embed_b(clip.tabular_inputs(dataset.index).to(device))
    ranks = retrieval_ranks(torch.cat(za), zb)
    n = len(dataset)
    W = Resamples.patient_bootstrap(pids, n_boot, seed)  # the probes' patient-level bootstrap
    out = {"n": n, "n_patients": int(len(set(pids))), "n_boot": n_boot,
           "temperature": float(clip.temperature.detach())}
    for name, rank in zip(("a_to_b", "b_to_a"), ranks):
        for k in ks:
            hit = (rank < k).astype(np.float64)
            lo, hi = percentile_ci(mean_resampled(hit, W))
            out[f"{name}@{k}"] = {"recall": float(hit.mean()), "ci_low": lo, "ci_high": hi}
    for k in ks:
        out[f"chance@{k}"] = min(k, n) / n
    return out


def fit_two_tower(model: TwoTower, inputs_a: Sequence[Tensor], inputs_b: Sequence[Tensor], steps: int = 200, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0) -> list[float]:
    """Train on paired tensors (dim 0 aligned) with random batches; returns the loss per step."""
    n = inputs_a[0].shape[0]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[: min(batch_size, n)]
        loss = model.loss([t[idx] for t in inputs_a], [t[idx] for t in inputs_b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def cohort_ecg_lab_pairs(n_patients: int = 200, seed: int = 0, fs: float = 100.0, duration_s: float = 10.0):
    """One (ECG, labs) pair per visit of the simulated cohort (:mod:`tscl.simulate`).

    Returns ``ecg [N, 12, T]`` float32 tensor, ``labs [N, F]`` float32 (raw; ``lab_bnp``
    log-transformed), the lab names, and the patient ids ``[N]`` (int, for patient splits).
    """
    from tscl.simulate import CohortConfig, simulate_patients, synthesize_ecg

    cfg = CohortConfig(n_patients=n_patients, seed=seed, fs=fs, duration_s=duration_s)
    rng = np.random.default_rng(seed + 1)
    ecgs, labs, pids = [], [], []
    for p_index, p in enumerate(simulate_patients(cfg)):
        for v in range(len(p["visit_dates"])):
            signal, _, lab = synthesize_ecg(p, v, rng, fs, duration_s)
            ecgs.append(signal)
            labs.append(lab)
            pids.append(p_index)
    names = sorted(k for k in labs[0] if k.startswith("lab_"))
    table = np.array([[np.log(r[k]) if k == "lab_bnp" else r[k] for k in names] for r in labs], dtype=np.float32)
    return torch.from_numpy(np.stack(ecgs)), torch.from_numpy(table), names, torch.tensor(pids)


def ecg_lab_demo(n_patients: int = 200, steps: int = 300, seed: int = 0, verbose: bool = True) -> dict:
    """Train ECG (cnn1d) <-> labs (tabular) on 80 % of the simulated patients; report
    retrieval recall on the held-out 20 % (chance = k / N held-out visits)."""
    from tscl.encoders import build_encoder

    torch.manual_seed(seed)
    ecg, labs, names, pids = cohort_ecg_lab_pairs(n_patients, seed)
    test = pids % 5 == 0
    mean, std = labs[~test].mean(0), labs[~test].std(0).clamp(min=1e-6)
    labs = (labs - mean) / std
    model = TwoTower(build_encoder("cnn1d", 12), build_encoder("tabular", len(names), embed_dim=64, hidden_dim=128), dim=64)
    losses = fit_two_tower(model, [ecg[~test]], [labs[~test]], steps=steps, batch_size=128, seed=seed)
    model.eval()
    with torch.no_grad():
        result = retrieval_recall(model.embed_a(ecg[test]), model.embed_b(labs[test]), ks=(1, 10))
    result.update(n_train=int((~test).sum()), n_test=int(test.sum()), labs=names, first_loss=losses[0], last_loss=losses[-1], temperature=float(model.temperature.detach()))
    if verbose:
        print(result)
    return result


if __name__ == "__main__":
    ecg_lab_demo()
