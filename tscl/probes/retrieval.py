"""Paired retrieval of a two-tower (clip) run: recall@k both ways, with patient-level bootstrap CIs.

For pairs ``(a_i, b_i)`` (a visit's ECG and its labs), tower A -> tower B recall@k is the fraction of
items whose partner is among the k most cosine-similar rows of the other tower (ties counted against
it); chance is k / N. The CIs resample whole patients (:class:`~tscl.probes.bootstrap.Resamples`, the
gallery fixed), as every probe does. ``tscl retrieval`` prints :meth:`RetrievalReport.to_markdown`
with the towers named (``waveform→tabular``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tscl.datasets.spec import open_spec, run_data_spec
from tscl.probes.bootstrap import Resamples, mean_resampled
from tscl.probes.protocol import check_pretraining_overlap, percentile_ci
from tscl.runs import load_clip, pretrained_patients, tower_names

__all__ = ["retrieval_recall", "retrieval_ranks", "retrieval_report", "retrieval", "RetrievalReport"]


@torch.no_grad()
def retrieval_ranks(za: Tensor, zb: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each item's partner, a->b and b->a (0 = retrieved first), ties counted against it:
    ``rank_i`` = rows at least as similar as the partner, minus the partner."""
    if za.shape[0] != zb.shape[0] or za.dim() != 2 or zb.dim() != 2:
        raise ValueError(f"za and zb must be paired [N, D], got {list(za.shape)} and {list(zb.shape)}")
    s = F.normalize(za.float(), dim=-1) @ F.normalize(zb.float(), dim=-1).T
    return tuple(((m >= m.diagonal()[:, None]).sum(dim=1) - 1).cpu().numpy() for m in (s, s.T))


def retrieval_recall(za: Tensor, zb: Tensor, ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """Recall@k of paired retrieval, both directions, with its chance level: ``{"a_to_b@k", "b_to_a@k",
    "chance@k"}`` for ``za [N, D]``, ``zb [N, D]`` whose row i is a pair."""
    ranks = retrieval_ranks(za, zb)
    n = za.shape[0]
    out = {f"{name}@{k}": float((rank < k).mean()) for name, rank in zip(("a_to_b", "b_to_a"), ranks) for k in ks}
    out.update({f"chance@{k}": min(k, n) / n for k in ks})
    return out


@dataclass
class RetrievalReport:
    """Held-out retrieval of a clip run: ``recall[direction][k] = {"recall", "ci_low", "ci_high"}`` for the
    directions ``a_to_b`` and ``b_to_a``, tower A and B named by ``towers``."""

    run: str
    towers: tuple
    n: int
    n_patients: int
    n_boot: int
    temperature: float
    ks: list
    recall: dict = field(default_factory=dict)
    chance: dict = field(default_factory=dict)

    def to_markdown(self) -> str:
        a, b = self.towers
        lines = [f"# Retrieval, {Path(self.run).name} on {self.n} held-out pairs of {self.n_patients} patients", "",
                 f"| k | {a}→{b} recall@k [95 % CI] | {b}→{a} recall@k [95 % CI] | chance |", "|---|---|---|---|"]
        for k in self.ks:
            cells = [f"{r['recall']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
                     for r in (self.recall["a_to_b"][k], self.recall["b_to_a"][k])]
            lines.append(f"| {k} | {cells[0]} | {cells[1]} | {self.chance[k]:.3f} |")
        return "\n".join(lines)

    def to_json(self) -> str:
        out = asdict(self)
        out["towers"] = {"a": self.towers[0], "b": self.towers[1]}
        for d in ("a_to_b", "b_to_a"):  # flat keys as well: "a_to_b@10"
            out.update({f"{d}@{k}": self.recall[d][k] for k in self.ks})
        out.update({f"chance@{k}": self.chance[k] for k in self.ks})
        out["recall"] = {d: {str(k): v for k, v in self.recall[d].items()} for d in self.recall}
        out["chance"] = {str(k): v for k, v in self.chance.items()}
        return json.dumps(out, indent=1, default=float)

    def write(self, out_dir: str | Path) -> Path:
        """``retrieval.md`` and ``retrieval.json`` in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "retrieval.md").write_text(self.to_markdown() + "\n")
        (out / "retrieval.json").write_text(self.to_json())
        return out


@torch.no_grad()
def retrieval_report(run_dir, dataset, ks: Sequence[int] = (1, 5, 10), n_boot: int = 1000, seed: int = 0,
                     batch_size: int = 256, device: str = "cpu", allow_pretrain_patients: bool = False) -> RetrievalReport:
    """Held-out paired retrieval of a clip run on ``dataset`` (e.g. its ``test`` split): recall@k both
    ways with 95 % CIs from a patient-level bootstrap, and chance k / N. Refuses a dataset that shares a
    patient with pretraining (the run's ``patients.json``) unless ``allow_pretrain_patients``."""
    run_dir = Path(run_dir)
    pids = np.asarray(dataset.index["patient_id"].to_list())
    check_pretraining_overlap(pretrained_patients(run_dir), pids, allow=allow_pretrain_patients,
                              what=f"the clip run {run_dir}")
    if len(dataset) < 2:
        raise ValueError("retrieval needs at least two pairs")
    clip = load_clip(run_dir, device)
    za = torch.cat([clip.embed_a(dataset.fetch(np.arange(s, min(s + batch_size, len(dataset)))).to(device))
                    for s in range(0, len(dataset), batch_size)])
    zb = clip.embed_b(clip.tabular_inputs(dataset.index).to(device))
    ranks = retrieval_ranks(za, zb)
    resamples = Resamples.patient_bootstrap(pids, n_boot, seed)  # whole patients, as every probe resamples
    report = RetrievalReport(run=str(run_dir), towers=tower_names(run_dir), n=len(dataset),
                             n_patients=int(len(set(pids))), n_boot=n_boot,
                             temperature=float(clip.temperature.detach()), ks=[int(k) for k in ks])
    for name, rank in zip(("a_to_b", "b_to_a"), ranks):
        report.recall[name] = {}
        for k in report.ks:
            hit = (rank < k).astype(np.float64)
            lo, hi = percentile_ci(mean_resampled(hit, resamples))
            report.recall[name][k] = {"recall": float(hit.mean()), "ci_low": lo, "ci_high": hi}
    report.chance = {k: min(k, report.n) / report.n for k in report.ks}
    return report


def retrieval(run: str | Path, *, ks: Sequence[int] = (1, 5, 10), n_boot: int = 1000, seed: int = 0,
              split: str | None = None, allow_test_overlap: bool = False, progress: bool = True,
              **data) -> RetrievalReport:
    """``tscl retrieval``: :func:`retrieval_report` of a clip run on the ``split`` rows (default ``test``) of
    its own dataset, or of the data named by ``data`` (the keywords of :func:`tscl.datasets.spec.data_spec`)."""
    dataset = open_spec(run_data_spec(run, split or "test", **data), progress=progress)
    return retrieval_report(run, dataset, ks=ks, n_boot=n_boot, seed=seed, allow_pretrain_patients=allow_test_overlap)
