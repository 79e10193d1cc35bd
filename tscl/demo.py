"""``tscl demo``: simulate the built-in cohort, pretrain PCLR on its training patients, and report it against a
random-init encoder and a supervised one trained from scratch, on the held-out patients.

:func:`run_demo` takes a :class:`~tscl.config.DemoConfig` (the CLI's defaults are its fields), evaluates
the run on the ``sim-risk`` task with :func:`tscl.probes.evaluate` and returns the
:class:`~tscl.probes.EvalReport` whose table it printed; the full report (tables, audit, figures) is
written under ``<out>/report``.
"""
from __future__ import annotations

import time
from pathlib import Path

from tscl.config import DemoConfig, PretrainConfig
from tscl.datasets import open_dataset
from tscl.probes import EvalSpec, evaluate
from tscl.simulate import CohortConfig, write_cohort
from tscl.train import pretrain

__all__ = ["run_demo"]


def run_demo(cfg: DemoConfig = DemoConfig()):
    """Simulate ``cfg.patients`` patients (kept when already there), pretrain PCLR on the training split,
    probe it beside random init and the supervised baseline; prints the macro-AUROC table and returns the
    report."""
    t0 = time.time()
    out = Path(cfg.out)
    data = out / "cohort"
    if not (data / "metadata.csv").exists():
        write_cohort(data, CohortConfig(n_patients=cfg.patients, seed=cfg.seed), progress=cfg.progress)
    cohort = open_dataset("wfdb", data, progress=cfg.progress)
    train = cohort.split("train")  # test patients are never pretrained on: the probes test on them
    print(f"cohort: {len(cohort)} recordings of {cohort.index['patient_id'].n_unique()} patients, "
          f"{cohort.in_channels} leads, {cohort.info['fs']:g} Hz  ({data}); pretraining on the training split: "
          f"{len(train)} recordings of {train.index['patient_id'].n_unique()} patients")
    pcfg = PretrainConfig(out_dir=str(out / "pclr"), method="pclr", encoder=cfg.encoder,
                          encoder_kwargs=cfg.encoder_kwargs, method_kwargs={"patients_per_batch": cfg.batch_patients},
                          epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed, device=cfg.device, progress=cfg.progress)
    t_pre = time.time()
    if (out / "pclr" / "config.json").exists():
        print(f"replacing the demo's earlier run in {out / 'pclr'}")
    run = pretrain(train, pcfg, overwrite=True)  # the demo's own folder: a new demo replaces it
    print(f"pretrained {run} in {time.time() - t_pre:.0f} s")
    t_rep = time.time()
    print("\nprobing: PCLR and random-init (frozen features, linear probe) and the same encoder trained "
          "from scratch on the labels (supervised baseline)", flush=True)
    report = evaluate(EvalSpec(task="sim-risk", root=data, encoders=[run], supervised=cfg.supervised,
                               fractions=tuple(cfg.fractions), n_boot=cfg.n_boot, seed=cfg.seed, audit=True,
                               progress=cfg.progress))
    report.write(out / "report")
    s = report.result.split
    print(f"\nmacro AUROC over {', '.join(report.result.labels)} [95 % patient-level bootstrap CI]\n"
          f"test: {s['test_records']} recordings of {s['test_patients']} patients; "
          f"train pool: {s['train_patients']} patients\n")
    print(report.result.to_markdown(metrics_table=False))
    print(f"\nreport: {out / 'report' / 'report.md'} (AUROC/AUPRC/Brier/ECE, audit, label-efficiency, reliability "
          f"and embedding plots); run: {run}")
    print(f"report written in {time.time() - t_rep:.0f} s; demo finished in {time.time() - t0:.0f} s")
    return report
