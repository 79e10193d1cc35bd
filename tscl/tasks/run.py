"""Running a task: embed its waveforms with a run's encoder (or a random-init ``resnet1d`` when no run is
given), fit a probe per encoder beside the supervised-from-scratch baseline, and audit the embeddings."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .registry import TaskData, get_task

__all__ = ["SUPERVISED", "embed_task", "supervised_baseline", "run_task", "TaskRun"]

SUPERVISED = "supervised (from scratch)"


def _standardise(X: np.ndarray) -> np.ndarray:
    mean = X.mean(axis=-1, keepdims=True)
    std = X.std(axis=-1, keepdims=True)
    return ((X - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def embed_task(data: TaskData, run: str | Path | None = None, seed: int = 0) -> dict:
    """``{encoder name: [N, d] features}``: the run's encoder and its random-init twin, or without a run a
    random-init ``resnet1d`` (width 0.25); tabular tasks give their features as they are."""
    if data.modality == "tabular":
        return {"tabular": data.X}
    import torch

    from tscl.embed import embed_signals

    X = _standardise(data.X) if data.standardise else np.asarray(data.X, dtype=np.float32)
    if run is not None:
        from tscl.train import load_encoder

        return {Path(run).name: embed_signals(load_encoder(run), X, progress=False),
                "random-init": embed_signals(load_encoder(run, random_init=True, seed=seed), X, progress=False)}
    from tscl.encoders import build_encoder
    from tscl.encoders.resnet1d import CPU_WIDTH

    torch.manual_seed(seed)
    enc = build_encoder("resnet1d", X.shape[1], width=CPU_WIDTH).eval()
    return {"random-init resnet1d": embed_signals(enc, X, progress=False)}


@dataclass
class TaskRun:
    data: TaskData
    features: dict
    result: object  # tscl.probes.evaluate.EvalResult
    audits: dict
    predictors: dict = field(default_factory=dict)  # name -> model trained on the labels (supervised baseline)

    def to_markdown(self) -> str:
        from tscl.probes.audit import audit_markdown

        lines = [f"## {self.data.name}", "", self.data.summary(), ""]
        lines += [f"- {n}" for n in self.data.notes] + [""]
        lines += [self.result.to_markdown(), "", audit_markdown(self.audits)]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"task": self.data.name, "summary": self.data.summary(), "notes": self.data.notes,
                           "probe": json.loads(self.result.to_json()), "audit": self.audits}, indent=1, default=float)

    def write(self, out_dir: str | Path) -> Path:
        """``<task>.md`` and ``<task>.json`` in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{self.data.name}.md").write_text(self.to_markdown() + "\n")
        (out / f"{self.data.name}.json").write_text(self.to_json())
        return out


def supervised_baseline(data: TaskData, run: str | Path | None = None, progress: bool = False, **kwargs):
    """The task's supervised-from-scratch baseline: the run's encoder architecture (or the default
    random-init ``resnet1d``, width 0.25) for waveforms, the ``tabular`` MLP encoder for tabular features."""
    from tscl.probes.supervised import SupervisedBaseline

    X = _standardise(data.X) if data.standardise else data.X
    if data.modality == "waveform" and run is not None:
        return SupervisedBaseline.like_run(X, run, data.kind, progress=progress, **kwargs)
    return SupervisedBaseline(X, data.kind, progress=progress, **kwargs)


def run_task(name: str, root: str | Path, *, run: str | Path | None = None, cache_dir: str | Path | None = None,
             probe: str = "linear", n_boot: int = 500, seed: int = 0, supervised: bool = True,
             progress: bool = False, allow_test_overlap: bool = False) -> TaskRun:
    """Load task ``name`` from ``root``, embed, probe and audit it; with ``supervised`` the encoder
    architecture is also trained from scratch on the task's training labels (:func:`supervised_baseline`)."""
    from tscl.probes.audit import audit_embeddings
    from tscl.probes.evaluate import evaluate_probe

    task = get_task(name)
    if run is not None and task.modality == "waveform":  # an encoder that cannot take the task: before any data
        from tscl.train import check_encoder_fits, load_config

        info = load_config(run).data_info
        check_encoder_fits(info, modality="waveform", in_channels=task.in_channels, fs=task.fs, what=f"task {name}",
                           run=run)
    cache_dir = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "tscl" / "tasks"
    data = task.load(root, cache_dir, seed)
    if run is not None and task.modality == "waveform":
        check_encoder_fits(info, modality="waveform", in_channels=int(data.X.shape[1]), what=f"task {name}", run=run)
    if run is not None:
        from tscl.probes.linear import check_pretraining_overlap, pretrained_patients

        overlap = check_pretraining_overlap(pretrained_patients(run), data.patient_ids[data.test],
                                            allow=allow_test_overlap, what=f"the encoder of {run}")
        if overlap:
            data.notes.append(f"the encoder was pretrained on {len(overlap)} of the test patients (allowed by "
                              "--allow-test-overlap): its test numbers are optimistic")
    features = embed_task(data, run, seed)
    predictors = {SUPERVISED: supervised_baseline(data, run, progress)} if supervised else {}
    result = evaluate_probe(features, data.Y, data.labels, data.patient_ids, (data.train, data.test), kind=data.kind,
                            probe=probe, n_boot=n_boot, seed=seed, predictors=predictors,
                            reference="random-init" if "random-init" in features and len(features) > 1 else None)
    audits = {k: audit_embeddings(v, data.patient_ids, source=data.source, seed=seed) for k, v in features.items()}
    n_test = len(np.unique(data.patient_ids[data.test]))
    if 1 < n_test < 5:
        data.notes.append(f"only {n_test} test patients: the patient-level bootstrap cannot show between-patient "
                          "variation, so the CIs are far too narrow")
    if data.kind != "regression":
        from tscl.probes.cells import label_problem

        data.notes += [f"label {lab!r} is not scored: {why}" for j, lab in enumerate(data.labels)
                       if (why := label_problem(data.Y[data.test, j]))]
    return TaskRun(data, features, result, audits, predictors)
