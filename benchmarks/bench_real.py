"""Real-data benchmarks: PTB-XL (Strodthoff et al. 2020 protocol), EEGMAT (rest vs mental arithmetic), MIMIC-IV demo.

Every probe, supervised and fine-tune row and every CI comes from the evaluation engine
(:func:`tscl.probes.evaluate`, and for cross-validation its :func:`~tscl.probes.fit_predict` and
:func:`~tscl.probes.score_pooled`); this file pretrains, chooses the protocol and writes the tables.

PTB-XL (``--dataset ptbxl``; ``--root`` a folder with ``records100/`` and label tables and/or
``ptbxl_database.csv``, read by the ``ptbxl`` source):

- every method pretrains the same encoder for the same epochs and seed on folds 1-8 only (checked
  in code: no pretraining row is of a fold-9/10 patient, also for every label subsample);
- the tasks ``ptbxl-superdiagnostic``, ``-subdiagnostic``, ``-form``, ``-rhythm`` (each on the ECGs that have
  a code of the task, ``has:<task>``): frozen features + a linear probe at 1 / 10 / 100 % of the training
  patients (folds 1-8), the probe's regularisation chosen on fold 9, tested once on fold 10;
- macro AUROC over the task's labels with >= ``--min-positives`` training positives and a positive in
  fold 10, 95 % CIs from a patient-level bootstrap of fold 10, paired differences against random init;
- rows: random init (same architecture, untrained), supervised from scratch
  (:class:`tscl.probes.SupervisedBaseline`, same architecture, same labels), one fine-tune row (a
  pretrained encoder trained end to end with a linear head: the same loop and budget as the supervised
  row, started from the pretrained weights), and every method of :data:`tscl.methods.METHODS` (SupCon on
  the training folds' superclass labels).

``--cv``: a patient-level estimate over the ten folds: for each fold k, pretraining and probe training
exclude fold k's patients (the probe's C is chosen on fold k+1), fold k is predicted; the out-of-fold
predictions of all ECGs are pooled into one macro AUROC per task with a patient-level bootstrap CI.

EEGMAT (``--dataset eegmat``; ``--root`` a folder of ``SubjectNN_1.edf`` / ``SubjectNN_2.edf``):
rest (``_1``) vs mental arithmetic (``_2``), 10 s windows resampled to 100 Hz, read through the
``eegmat`` source with ``--normalize`` (default ``patient``: each channel standardised over all
windows of the subject, label-free; ``zscore``: per window), in pretraining and probing alike;
leave-subjects-out cross-validation (``--folds`` groups of subjects; pretraining and probe training
never see a test subject, asserted); per-window AUROC and per-recording AUROC (mean window
probability per file). Rows (:data:`EEG_ROWS`): SimCLR, PCLR with subject positives and PCLR with
recording positives (``group="source"``: two windows of one file), each pretrained for about
``--steps`` optimiser steps, against random init, supervised from scratch and log band power per
channel with the same probe (the recipe and its ablation: ``benchmarks/eeg_ablation.py``,
docs/benchmarks/eegmat.md).

MIMIC-IV (``--dataset mimic``): ``ehr_sequence`` pretrained per method on the ``mimic-iv`` source's train
split; the tasks ``mimic-mortality``, ``mimic-long-stay`` and ``mimic-readmission`` (admissions at admission
+ 24 h) beside random init and the tabular baseline.

Runs are resumable: a finished pretraining run in ``--out`` is reused only when made with the same
settings and the same code of its method and encoder (``bench_methods.finished_run``). Results
record the git commit and any uncommitted change to the engine's code (``code_state``).

    python benchmarks/bench_real.py --dataset ptbxl --root ../shared/data/ptbxl --out runs/bench_ptbxl
    python benchmarks/bench_real.py --dataset ptbxl --root ../shared/data/ptbxl --out runs/bench_ptbxl_cv --cv
    python benchmarks/bench_real.py --dataset eegmat --root ../shared/data/physionet/eegmat --out runs/bench_eegmat
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tscl.benchmarks.bench_methods import code_digest, finished_run, method_kwargs, parse_variant
from tscl.datasets import open_dataset
from tscl.embed import embed_dataset
from tscl.methods import METHODS
from tscl.probes import (EvalSpec, SupervisedBaseline, assert_no_patient_leakage, evaluate, fit_predict, macro_auroc,
                         score_pooled)
from tscl.probes.cells import fmt
from tscl.train import PretrainConfig, environment, load_encoder, pretrain

FRACTIONS = (0.01, 0.1, 1.0)
C_GRID = (0.001, 0.01, 0.1, 1.0)
TASKS = {"superdiagnostic": "super", "subdiagnostic": "sub", "form": "form", "rhythm": "rhythm"}
SUPCON_LABEL = "train_labels"
TWO_MODALITY = ("clip",)  # pairs a recording with tabular columns of its visit; PTB-XL and EEGMAT hold none
REPO = Path(__file__).resolve().parents[1]

# Full-dataset figures (21,837 ECGs); not comparable in size with the shared sample.
ANCHORS = [
    ("Strodthoff et al. 2020, xresnet1d101 supervised (macro AUROC, fold 10)",
     "all 0.925, diagnostic 0.937, subdiagnostic 0.929, superdiagnostic 0.928, form 0.896, rhythm 0.957"),
    ("MERL (Liu et al., ICML 2024), PTB-XL superclass linear probe", "82.4 AUROC at 1 % of the labels"),
    ("Poly-window (Yuan et al. 2025), PTB-XL superclass", "0.891 vs SimCLR 0.888, with 4x fewer epochs"),
]


# --- provenance -------------------------------------------------------------------------------------------

def code_state() -> dict:
    """The git commit the engine's code is at and any uncommitted change to it (tscl, kernels, loaders,
    this file, bench_methods, eeg_ablation). A table is only as good as the code that made it: uncommitted changes are listed."""
    def git(*a):
        try:
            return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    for parent in Path(__file__).resolve().parents[:3]:  # running from an exported commit (--at-commit)
        if (parent / "SNAPSHOT_COMMIT").exists():
            return {"commit": (parent / "SNAPSHOT_COMMIT").read_text().strip(), "uncommitted": [],
                    "snapshot": str(parent)}
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "tscl", "kernels", "loaders",
                                      "benchmarks/bench_real.py", "benchmarks/bench_methods.py",
                                      "benchmarks/eeg_ablation.py").splitlines()]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "uncommitted": dirty}


def pretrain_timed(data, cfg: PretrainConfig) -> float:
    """Pretrain ``data`` with ``cfg`` over whatever its folder holds (an unfinished earlier attempt, which has
    no done.json, is redone), warnings silenced; the seconds it took."""
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretrain(data, cfg, overwrite=True)
    return time.time() - t0


def pretrain_once(cache, run_dir: Path, method: str, encoder: str, encoder_kwargs: dict, extra: dict, args,
                  epochs: int | None = None) -> tuple[Path, float]:
    """Pretrain (or reuse a finished run made with these settings and code); (run folder, seconds)."""
    kw = {**method_kwargs(method, args.batch), **extra}
    if method == "pclr":  # a batch cannot hold more patients (groups of positives) than pretraining has
        kw["patients_per_batch"] = int(min(kw["patients_per_batch"], cache.index[kw.get("group", "patient_id")].n_unique()))
    cfg = PretrainConfig(out_dir=str(run_dir), method=method, encoder=encoder, encoder_kwargs=encoder_kwargs,
                         method_kwargs=kw, epochs=epochs or args.epochs, lr=args.lr, seed=args.seed, progress=False,
                         device="cpu" if args.cpu else "auto")
    done = finished_run(run_dir, cfg)
    if done is not None:
        return run_dir, done
    seconds = pretrain_timed(cache, cfg)
    (run_dir / "done.json").write_text(json.dumps({"pretrain_s": seconds, "code": code_digest(method, encoder)}))
    return run_dir, seconds


def supcon_column(index: pl.DataFrame, labels: list[str]) -> pl.Series:
    """SupCon's class: the multi-hot pattern of ``labels`` (e.g. ``"01000"``); null where the row has none."""
    Y = index.select(labels).to_numpy()
    return pl.Series(SUPCON_LABEL, ["".join(str(int(v)) for v in row) if not any(v is None or v != v for v in row)
                                    else None for row in Y], dtype=pl.Utf8)


def run_at_commit(rev: str, argv: list[str], args) -> int:
    """Export ``rev``'s engine (tscl, kernels, loaders, benchmarks) to ``--out``/code/<sha> and run this
    benchmark from there, so its numbers come from committed code whatever the working tree holds."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    snap = Path(args.out).resolve() / "code" / sha[:12]
    if not (snap / "SNAPSHOT_COMMIT").exists():
        snap.mkdir(parents=True, exist_ok=True)
        tar = subprocess.run(["git", "-C", str(REPO), "archive", sha, "tscl", "kernels", "loaders", "benchmarks"],
                             capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(snap)], input=tar, check=True)
        for name in ("kernels", "loaders", "benchmarks"):  # the installed layout: tscl.kernels, tscl.loaders, ...
            (snap / name).rename(snap / "tscl" / name)
        (snap / "SNAPSHOT_COMMIT").write_text(sha + "\n")
    rest, skip = [], False
    path_opts = ("--root", "--out", "--docs", "--cache")
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == "--at-commit":
            skip = True
            continue
        if a.startswith("--at-commit="):
            continue
        if i > 0 and argv[i - 1] in path_opts:
            a = str(Path(a).resolve())
        elif "=" in a and a.split("=", 1)[0] in path_opts:
            a = a.split("=", 1)[0] + "=" + str(Path(a.split("=", 1)[1]).resolve())
        rest.append(a)
    import os
    env = {**os.environ, "PYTHONPATH": str(snap),
           "TSCL_BENCH_COMMAND": "python benchmarks/bench_real.py " + " ".join(argv)}
    print(f"running {sha[:12]} from {snap}", flush=True)
    return subprocess.run([sys.executable, "-m", "tscl.benchmarks.bench_real", *rest], cwd=snap, env=env).returncode


# --- the engine's specification for a benchmark row set ------------------------------------------------------

def trained_rows(args, finetune_run=None) -> dict:
    """The supervised and fine-tune rows' settings for :class:`tscl.probes.EvalSpec`: the same loop
    (:class:`tscl.probes.SupervisedBaseline`) and budget, from scratch or from ``finetune_run``'s weights."""
    budget = {"epochs": args.sup_epochs, "max_steps": args.sup_steps}
    return {"supervised": True, "supervised_kwargs": {**budget, "lr": args.sup_lr},
            "finetune": finetune_run or False, "finetune_kwargs": {**budget, "lr": args.ft_lr}}


# --- PTB-XL -----------------------------------------------------------------------------------------------

def open_ptbxl(args):
    """The ``ptbxl`` source at ``--root`` (on_error=skip: the shared sample lists ECGs it has no records for)."""
    data = open_dataset("ptbxl", args.root, cache=args.cache, progress=False, on_error="skip")
    notes = [f"{len(data)} ECGs of {data.index['patient_id'].n_unique()} patients loaded from {args.root}",
             f"{len(data.notes.get('skipped', []))} listed ECG(s) without record files left out; "
             f"{len(data.notes.get('unlisted', []))} record(s) on disk listed in no label source left out"]
    return data, notes


def task_labels(index: pl.DataFrame, task: str, train_rows, test_rows, min_pos: int) -> list[str]:
    """The task's label columns with >= ``min_pos`` positives among the training rows and one in the test rows."""
    cols = [c for c in index.columns if c.startswith(f"{TASKS[task]}:")]
    Y = index.select(cols).fill_null(0).to_numpy()
    return [c for j, c in enumerate(cols) if Y[train_rows, j].sum() >= min_pos and Y[test_rows, j].sum() >= 1]


def ptbxl_runs(args) -> list[tuple[str, str, int, dict]]:
    runs = [(m, m, args.epochs, {}) for m in args.methods]
    if "polywindow" in args.methods and 0 < args.polywindow_fraction < 1:  # the paper: as good with fewer epochs
        e = max(1, round(args.epochs * args.polywindow_fraction))
        if e < args.epochs:
            runs.append((f"polywindow@{e}ep", "polywindow", e, {}))
    runs += [(row, m, args.epochs, kw) for row, m, kw in map(parse_variant, args.variant)]
    return runs


def check_pretraining_rows(pids, folds, pre_rows, held_out_folds) -> None:
    """No pretraining row is of a held-out fold, nor of a held-out fold's patient."""
    pre_rows = np.asarray(pre_rows)
    assert not np.isin(folds[pre_rows], list(held_out_folds)).any(), "a held-out fold's ECG reached pretraining"
    held = np.flatnonzero(np.isin(folds, list(held_out_folds)))
    assert_no_patient_leakage(pids, pre_rows, held)


def bench_ptbxl(args, out: Path) -> dict:
    """Each method pretrained on folds 1-8; every task evaluated by :func:`tscl.probes.evaluate` (C on fold 9,
    tested on fold 10, label fractions, random init, supervised and fine-tune rows)."""
    data, notes = open_ptbxl(args)
    idx = data.index
    pids, folds = idx["patient_id"].to_numpy(), idx["strat_fold"].to_numpy()
    train, val, test = (np.flatnonzero(folds <= 8), np.flatnonzero(folds == 9), np.flatnonzero(folds == 10))
    assert_no_patient_leakage(pids, train, val, test)
    check_pretraining_rows(pids, folds, train, (9, 10))
    pre = data.subset(train)
    sup_cols = [c for c in idx.columns if c.startswith("super:")]
    pre.index = pre.index.with_columns(supcon_column(pre.index, sup_cols))  # training folds' labels only
    timings, runs = {}, {}
    for row, method, epochs, extra in ptbxl_runs(args):
        runs[row], timings[row] = pretrain_once(pre, out / "runs" / row, method, args.encoder, args.encoder_kwargs,
                                                extra, args, epochs)
        print(f"[ptbxl] {row:14s} pretrained on {len(pre)} ECGs (folds 1-8) in {timings[row]:6.1f} s", flush=True)
    record = {"notes": notes, "pretrain_rows": int(len(pre)), "pretrain_patients": int(pre.index["patient_id"].n_unique()),
              "pretrain_s": timings, "tasks": {}}
    t_probe = time.time()
    for task in args.tasks:
        rows = np.flatnonzero(idx[f"has:{TASKS[task]}"].to_numpy() == 1)
        local = {k: np.flatnonzero(np.isin(rows, v)) for k, v in (("train", train), ("test", test))}
        labels = task_labels(idx[rows.tolist()], task, local["train"], local["test"], args.min_positives)
        if not labels:
            record["tasks"][task] = {"skipped": "no label with enough positives"}
            continue
        report = evaluate(EvalSpec(task=f"ptbxl-{task}", root=args.root, labels=labels, encoders=list(runs.values()),
                                   fractions=args.fractions, repeats=args.repeats, n_boot=args.bootstrap,
                                   seed=args.seed, cache=args.cache, grid=[{"C": c} for c in C_GRID],
                                   **trained_rows(args, runs.get(args.finetune))))
        res = report.result
        for r in res.rows:  # every subsample's rows were checked against the test side inside run_probe
            r["ecgs"] = int(len(rows))
        record["tasks"][task] = {"labels": labels, "split": res.split, "rows": res.rows, "vs_random": res.comparisons,
                                 "val_records": int(res.split.get("val_records", 0)), "notes": report.notes}
        plot(res.rows, out / f"ptbxl_{task}.png", f"PTB-XL {task}: macro AUROC, fold 10")
        print(f"[ptbxl] {task}: probed {len(rows)} ECGs, {len(labels)} labels", flush=True)
    record["probe_s"] = time.time() - t_probe
    return record


def oof_probes(feats: dict, Y, tr, te, va, pids, seed: int, oof: dict) -> dict:
    """Each feature set's linear probe trained on ``tr`` (C on ``va``, or nested inside ``tr`` when None) predicting
    ``te`` into the out-of-fold arrays ``oof``; the fold's macro AUROC per row."""
    fold_auc = {}
    for n in feats:
        P, _ = fit_predict(n, feats, {}, Y, tr, te, pids, seed, grid=[{"C": c} for c in C_GRID],
                           kind="multilabel" if Y.shape[1] > 1 else "binary", val_rows=va)
        if oof.get(n) is None:
            oof[n] = np.full(Y.shape, np.nan)
        oof[n][te] = P
        fold_auc[n] = macro_auroc(Y[te], P)
    return fold_auc


def bench_ptbxl_cv(args, out: Path) -> dict:
    data, notes = open_ptbxl(args)
    idx = data.index
    pids, folds = idx["patient_id"].to_numpy(), idx["strat_fold"].to_numpy()
    names = ["random-init", *[m for m in args.methods]]
    oof: dict = {task: {} for task in args.tasks}
    task_rows = {t: np.flatnonzero(idx[f"has:{TASKS[t]}"].to_numpy() == 1) for t in args.tasks}
    # labels fixed once over all folds: >= min_positives overall
    task_cols = {}
    for t in args.tasks:
        sub = idx[task_rows[t].tolist()]
        cols = [c for c in sub.columns if c.startswith(f"{TASKS[t]}:")]
        Yt = sub.select(cols).fill_null(0).to_numpy()
        task_cols[t] = [c for j, c in enumerate(cols) if Yt[:, j].sum() >= args.min_positives * 10 / 8]
    timings, per_fold = {}, []
    for k in range(1, 11):
        kval = k % 10 + 1
        pre_rows = np.flatnonzero(folds != k)
        check_pretraining_rows(pids, folds, pre_rows, (k,))
        pre = data.subset(pre_rows)
        feats = {}
        for m in args.methods:
            run, s = pretrain_once(pre, out / "runs" / f"fold{k}" / m, m, args.encoder, args.encoder_kwargs, {}, args)
            timings[f"fold{k}/{m}"] = s
            feats[m] = embed_dataset(load_encoder(run), data, progress=False)
            if "random-init" not in feats:
                feats["random-init"] = embed_dataset(load_encoder(run, random_init=True, seed=args.seed), data,
                                                     progress=False)
        for t in args.tasks:
            rows = task_rows[t]
            Y = idx[rows.tolist()].select(task_cols[t]).to_numpy().astype(float)
            tf = folds[rows]
            tr, va, te = np.flatnonzero((tf != k) & (tf != kval)), np.flatnonzero(tf == kval), np.flatnonzero(tf == k)
            assert_no_patient_leakage(pids[rows], tr, va, te)
            fold_auc = oof_probes({n: feats[n][rows] for n in names}, Y, tr, te, va, pids[rows], args.seed, oof[t])
            per_fold.append({"fold": k, "task": t, "auroc": fold_auc})
        print(f"[ptbxl-cv] fold {k} done", flush=True)
    record = {"notes": notes, "pretrain_s": timings, "per_fold": per_fold, "tasks": {}}
    for t in args.tasks:
        rows = task_rows[t]
        Y = idx[rows.tolist()].select(task_cols[t]).to_numpy().astype(float)
        record["tasks"][t] = score_pooled(Y, {n: oof[t][n] for n in names}, pids[rows], n_boot=args.bootstrap,
                                          seed=args.seed + 1, references=("random-init", "simclr"), labels=task_cols[t])
        record["tasks"][t]["labels"] = task_cols[t]
        record["tasks"][t]["ecgs"] = int(len(rows))
    return record


# --- EEGMAT -----------------------------------------------------------------------------------------------

# row -> (method, its extra settings): what --methods picks from on EEGMAT
EEG_ROWS = {
    "simclr": ("simclr", {}),  # two views of one window (the method's default, ECG, views)
    "polywindow": ("polywindow", {}),  # windows of one window
    "pclr": ("pclr", {}),  # two windows of one subject (rest and arithmetic may pair)
    "pclr-recording": ("pclr", {"group": "source"}),  # two windows of one file; every training file in each batch
}
EEG_DEFAULT_ROWS = ["simclr", "pclr", "pclr-recording"]
EEG_ENCODERS = {"cnn1d": {"widths": [16, 32, 64]},
                "transformer1d": {"patch_len": 100, "dim": 32, "depth": 2, "heads": 4}}  # 1 s patches: 19 x 10 tokens


def epochs_for_steps(method: str, index: pl.DataFrame, kw: dict, steps: int) -> int:
    """Whole epochs giving about ``steps`` optimiser steps: PCLR's sampler takes one batch per
    ``patients_per_batch`` groups (one step an epoch on a few dozen subjects), the others one per ``batch_size``."""
    if method == "pclr":
        from tscl.samplers import PatientBatchSampler, encode_ids

        per_epoch = len(PatientBatchSampler(encode_ids(index[kw.get("group", "patient_id")].to_list()),
                                            kw["patients_per_batch"]))
    else:
        per_epoch = math.ceil(index.height / kw["batch_size"])
    return max(1, round(steps / max(1, per_epoch)))


def bench_eegmat(args, out: Path) -> dict:
    """Leave-subjects-out folds of the ``eegmat`` source (``--normalize`` as every command reads it): pretraining
    and the probes' training never see a fold's subjects (asserted); out-of-fold predictions pooled."""
    from tscl.benchmarks.eeg_ablation import band_power_features, plot_intervals  # eeg_ablation imports this module

    data = open_dataset("eegmat", args.root, cache=args.cache, progress=False, epoch_s=args.epoch_s, fs=args.fs,
                        normalize=args.normalize, on_error="skip")
    idx = data.index
    pids, y = idx["patient_id"].to_numpy(), idx["task"].to_numpy().astype(float)[:, None]
    recs = np.asarray([Path(s).stem for s in idx["source"].to_list()])
    subjects = np.unique(pids)
    perm = np.random.default_rng(args.seed).permutation(subjects)
    fold_of = {s: i % args.folds for i, s in enumerate(perm)}
    sfold = np.array([fold_of[p] for p in pids])
    encoders = {e: EEG_ENCODERS[e] for e in (args.encoder_list or ["cnn1d"])}
    oof: dict = {enc: {} for enc in encoders}
    bands = band_power_features(data.array(), args.fs)  # the anchor: log band power per channel, same probe
    timings = {}
    for k in range(args.folds):
        tr, te = np.flatnonzero(sfold != k), np.flatnonzero(sfold == k)
        assert_no_patient_leakage(pids, tr, te)
        pre = data.subset(tr)
        assert not np.isin(pre.index["patient_id"].to_numpy(), pids[te]).any(), "a test subject reached pretraining"
        for enc, ekw in encoders.items():
            feats = {"log band power": bands}
            for row in args.methods:
                method, extra = EEG_ROWS[row]
                extra = {**extra, "patients_per_batch": args.batch} if row == "pclr-recording" else extra
                kw = {**method_kwargs(method, args.batch), **extra}
                epochs = epochs_for_steps(method, pre.index, kw, args.steps)
                run, s = pretrain_once(pre, out / "runs" / f"fold{k}" / enc / row, method, enc, ekw, extra, args,
                                       epochs)
                timings[f"fold{k}/{enc}/{row}"] = s
                feats[row] = embed_dataset(load_encoder(run), data, progress=False)
                if "random-init" not in feats:
                    feats["random-init"] = embed_dataset(load_encoder(run, random_init=True, seed=args.seed), data,
                                                         progress=False)
            oof_probes(feats, y, tr, te, None, pids, args.seed, oof[enc])
            sb = SupervisedBaseline(data, "binary", enc, ekw, epochs=args.sup_epochs, max_steps=args.sup_steps,
                                    lr=args.sup_lr)
            oof[enc].setdefault("supervised", np.full(y.shape, np.nan))[te] = sb(y, tr, te, pids, args.seed)
        print(f"[eegmat] fold {k + 1}/{args.folds} done", flush=True)
    record = {"notes": [f"{len(idx)} windows of {args.epoch_s:g} s at {args.fs:g} Hz from {len(np.unique(recs))} "
                        f"recordings of {len(subjects)} subjects (the eegmat source, normalize={args.normalize}); "
                        f"{len(data.skipped)} file(s) skipped",
                        f"{args.folds} folds of subjects: " + "; ".join(
                            ",".join(sorted(s for s in subjects if fold_of[s] == k)) for k in range(args.folds))],
              "pretrain_s": timings, "encoders": encoders, "rows": {r: EEG_ROWS[r] for r in args.methods},
              "levels": {}}
    # per window, and per recording (mean window probability of the file)
    rec_rows = [np.flatnonzero(recs == r) for r in sorted(set(recs))]
    levels = {"window": (y, pids, lambda P: P),
              "recording": (np.array([y[r[0]] for r in rec_rows]), np.array([pids[r[0]] for r in rec_rows]),
                            lambda P: np.array([P[r].mean(axis=0) for r in rec_rows]))}
    for level, (Y, groups, pool) in levels.items():
        record["levels"][level] = {
            enc: score_pooled(Y, {n: pool(oof[enc][n]) for n in ("random-init", "supervised", "log band power",
                                                                   *args.methods)}, groups, n_boot=args.bootstrap, seed=args.seed + 1, references=("random-init", "supervised"),
                              labels=["task"])
            for enc in encoders}
    items = [(f"{enc}, per {level}: {r['encoder']}", r["auroc"], r["ci_low"], r["ci_high"], None)
             for level, encs in record["levels"].items() for enc, res in encs.items() for r in res["rows"]]
    plot_intervals(items, out / "eegmat_rows.png", "EEGMAT rest vs arithmetic, leave-subjects-out")
    return record


# --- MIMIC-IV ---------------------------------------------------------------------------------------------

MIMIC_ENCODER = "dim=64,depth=2,heads=4,max_len=128"
MIMIC_LABELS = ("mortality", "long_stay", "readmission")


def bench_mimic(args, out: Path) -> dict:
    """MIMIC-IV demo: each method pretrains ``ehr_sequence`` on the ``mimic-iv`` source's train split
    (admissions as items); :func:`tscl.probes.evaluate` then probes admissions at admission + 24 h (the tasks
    ``mimic-<label>``: features strictly before it) beside the random-init twin and the tabular baseline, testing on
    the subjects of the val and test splits (never pretrained on: checked against each run's patients.json)."""
    enc_kwargs = args.encoder_kwargs
    train = open_dataset("mimic-iv", args.root, split="train", cache=args.cache, progress=False,
                         max_len=int(enc_kwargs.get("max_len", 128)))
    rec = {"notes": [f"pretraining: {train.describe()} (the mimic-iv source's train split)"], "methods": {}}
    for method in args.methods:
        extra = {"segments_per_record": 1} if method == "pmq" else {}
        run, seconds = pretrain_once(train, out / "runs" / method, method, "ehr_sequence", enc_kwargs, extra, args)
        reports = {label: evaluate(EvalSpec(task=f"mimic-{label.replace('_', '-')}", root=args.root, encoders=[run],
                                            fractions=(1.0,), n_boot=args.bootstrap, seed=args.seed, cache=args.cache))
                   for label in MIMIC_LABELS}
        rec["methods"][method] = {"pretrain_s": seconds, "counts": {k: _counts(r) for k, r in reports.items()},
                                  "notes": [n for r in reports.values() for n in r.notes],
                                  "labels": {k: json.loads(r.result.to_json()) for k, r in reports.items()}}
        print(f"[mimic] {method}: pretrained in {seconds:.0f} s", flush=True)
    return rec


def _counts(report) -> dict:
    """Rows, patients and positives per side of a one-label report."""
    s, (pos,) = report.result.split, report.data["positives"].values()
    return {"train_rows": s["train_records"], "train_patients": s["train_patients"], "train_pos": pos["train"],
            "test_rows": s["test_records"], "test_patients": s["test_patients"], "test_pos": pos["test"]}


def markdown_mimic(rec: dict) -> str:
    parts = []
    first = next(iter(rec["methods"].values()))
    for label, counts in first["counts"].items():
        parts += [f"### {label} (train {counts['train_rows']} admissions / {counts['train_patients']} patients, "
                  f"{counts['train_pos']} positive; test {counts['test_rows']} / {counts['test_patients']}, "
                  f"{counts['test_pos']} positive)", "", "| row | AUROC [95 % CI] | Δ vs random-init [95 % CI] | pretrain s |",
                  "|---|---|---|---|"]
        shown = set()
        for method, m in rec["methods"].items():
            res = m["labels"].get(label)
            if res is None:
                continue
            deltas = {c["encoder"]: c for c in res["comparisons"]}
            for r in res["rows"]:
                name = method if r["encoder"] not in ("random-init", "tabular") else r["encoder"]
                if name in shown:
                    continue
                shown.add(name)
                d = deltas.get(r["encoder"])
                dtext = fmt(d["delta"], (d["ci_low"], d["ci_high"]), d.get("n/a"), signed=True) if d else "—"
                secs = f"{m['pretrain_s']:.0f}" if name == method else "—"
                parts.append(f"| {name} | {_ci(r)} | {dtext} | {secs} |")
        parts.append("")
    return "\n".join(parts)


def plot(rows, path: Path, title: str) -> None:
    try:
        from tscl.plots import plot_label_efficiency

        plot_label_efficiency(rows, path, title=title)
    except ImportError as err:  # matplotlib missing: the JSON and the table still stand
        print(f"no plot ({err})")


def _ci(r) -> str:
    """A cell: the value with its CI, or ``n/a (why)`` for a cell that cannot be scored (tscl.probes.cells)."""
    return fmt(r["auroc"], (r["ci_low"], r["ci_high"]), r.get("n/a"))


def _delta(c) -> str:
    if c.get("n/a") or not np.isfinite(c["delta"]):
        return fmt(c["delta"], (c["ci_low"], c["ci_high"]), c.get("n/a"), signed=True)
    verdict = "better" if c["ci_low"] > 0 else "worse" if c["ci_high"] < 0 else "not separated"
    return f"{fmt(c['delta'], (c['ci_low'], c['ci_high']), signed=True)} {verdict}"


def markdown_ptbxl(rec: dict, fractions) -> str:
    lines = []
    for task, t in rec["tasks"].items():
        if "rows" not in t:
            lines += [f"### {task}: skipped ({t['skipped']})", ""]
            continue
        cell = {(r["encoder"], r["fraction"]): r for r in t["rows"]}
        comp = {(c["encoder"], c["fraction"]): c for c in t["vs_random"]}
        names = list(dict.fromkeys(r["encoder"] for r in t["rows"]))
        sp = t["split"]
        lines += [f"### {task}: macro AUROC over {len(t['labels'])} labels "
                  f"(train folds 1-8: {sp['train_patients']} patients / {sp['train_records']} ECGs; fold 9: "
                  f"{t['val_records']} ECGs for C; test fold 10: {sp['test_patients']} patients / {sp['test_records']} ECGs)",
                  "", "| row | " + " | ".join(f"{100 * f:g} %" for f in fractions) +
                  " | Δ vs random-init @100 % [95 % CI] | Δ vs random-init @10 % | pretrain s |",
                  "|---" * (len(fractions) + 4) + "|"]
        for n in names:
            c100, c10 = comp.get((n, 1.0)), comp.get((n, 0.1))
            t_s = rec["pretrain_s"].get(n)
            lines.append(f"| {n} | " + " | ".join(_ci(cell[(n, f)]) for f in fractions) +
                         f" | {_delta(c100) if c100 else '—'} | {_delta(c10) if c10 else '—'} | "
                         f"{f'{t_s:.0f}' if t_s is not None else '—'} |")
        lines += ["", f"Labels: {', '.join(l.split(':', 1)[1] for l in t['labels'])}", ""]
    return "\n".join(lines)


def markdown_pooled(title: str, p: dict) -> str:
    lines = [f"### {title} ({p['records']} items, {p['groups']} patients/subjects)", "",
             "| row | pooled macro AUROC [95 % CI] |", "|---|---|"]
    lines += [f"| {r['encoder']} | {_ci(r)} |" for r in p["rows"]]
    lines += ["", "| comparison | Δ [95 % CI] |", "|---|---|"]
    lines += [f"| {c['encoder']} − {c['reference']} | {_delta(c)} |" for c in p["comparisons"]]
    return "\n".join(lines) + "\n"


def record_header(record: dict) -> list[str]:
    """The lines every generated benchmark table starts with: command, measured time, machine, code
    (``record``: ``command``, ``environment``, ``code``, ``wall_s``, ``cpu_s``, ``load_average_at_end``)."""
    env, code = record["environment"], record["code"]
    dirty = f"; uncommitted changes: {', '.join(code['uncommitted'])}" if code["uncommitted"] else ""
    return [f"Command: `{record['command']}`", "",
            f"Measured wall time: {record['wall_s'] / 60:.1f} min ({record['cpu_s'] / 60:.1f} CPU-min of this process; "
            f"load average at the end {record['load_average_at_end'][1]:.1f} on a machine shared with other work) "
            f"on {env.get('gpu', env['device'])} "
            f"(torch {env['torch']}, {env['cpu_capability']} CPU kernels, {env['threads']} threads); "
            f"code at commit {code['commit']}{dirty}.", ""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("ptbxl", "eegmat", "mimic"), required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cache", default=None, help="cache folder for the loaders (default: the per-user cache)")
    p.add_argument("--docs", default=None, help="also write <dataset>.md / .json / .png here (e.g. docs/benchmarks)")
    p.add_argument("--cv", action="store_true", help="PTB-XL: ten-fold patient-level cross-validation")
    p.add_argument("--quick", action="store_true", help="tiny budget for tests: 1 epoch, few methods and steps")
    p.add_argument("--methods", default=None, help="comma-separated; default: every method (CV: simclr,pclr,polywindow; "
                                                   "EEGMAT: simclr,pclr,pclr-recording; also polywindow)")
    p.add_argument("--variant", action="append", default=[], metavar="ROW=METHOD:JSON")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--polywindow-fraction", type=float, default=0.25,
                   help="PTB-XL: also pretrain poly-window for this fraction of the epochs (0: none)")
    p.add_argument("--encoder", default="cnn1d")
    p.add_argument("--encoder-kwargs", default="widths=[16,32,64]")
    p.add_argument("--encoders", dest="encoder_list", default=None, help="EEGMAT: cnn1d (default), transformer1d")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3, help="label subsamples per fraction below 100 %%")
    p.add_argument("--min-positives", type=int, default=5)
    p.add_argument("--finetune", default="simclr", help="the pretrained row fine-tuned end to end ('' : none)")
    p.add_argument("--sup-epochs", type=int, default=20)
    p.add_argument("--sup-steps", type=int, default=200)
    p.add_argument("--sup-lr", type=float, default=3e-3)
    p.add_argument("--ft-lr", type=float, default=1e-3)
    p.add_argument("--folds", type=int, default=5, help="EEGMAT: groups of subjects for cross-validation")
    p.add_argument("--steps", type=int, default=360, help="EEGMAT: optimiser steps of each pretraining run "
                                                          "(whole epochs closest to it)")
    p.add_argument("--normalize", default="patient", choices=("zscore", "patient"),
                   help="EEGMAT: the eegmat source's normalize: per window and channel, or per subject and channel")
    p.add_argument("--epoch-s", type=float, default=10.0)
    p.add_argument("--fs", type=float, default=100.0)
    p.add_argument("--cpu", action="store_true", help="pretrain on the CPU even where a GPU is present")
    p.add_argument("--at-commit", default=None, metavar="REV",
                   help="run the engine as committed at REV (e.g. HEAD), exported under --out/code/, not the working tree")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.at_commit:
        return run_at_commit(args.at_commit, argv, args)
    import os
    command = os.environ.get("TSCL_BENCH_COMMAND") or "python benchmarks/bench_real.py " + " ".join(argv)
    from tscl.grammar import parse_kwargs as _kwargs

    if args.dataset == "mimic" and args.encoder_kwargs == p.get_default("encoder_kwargs"):
        args.encoder_kwargs = MIMIC_ENCODER
    args.encoder_kwargs = _kwargs(args.encoder_kwargs)
    default_methods = ([m for m in METHODS if m not in TWO_MODALITY] if args.dataset == "ptbxl" and not args.cv else
                       ["simclr", "pclr", "moco", "pmq"] if args.dataset == "mimic" else
                       EEG_DEFAULT_ROWS if args.dataset == "eegmat" else ["simclr", "pclr", "polywindow"])
    args.methods = [m for m in args.methods.split(",") if m] if args.methods else default_methods
    if args.epochs is None:
        args.epochs = {"ptbxl": 20, "eegmat": 8, "mimic": 20}[args.dataset]
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.fractions = FRACTIONS
    if args.encoder_list:
        args.encoder_list = args.encoder_list.split(",")
    if args.quick:
        args.epochs, args.bootstrap, args.repeats, args.sup_steps, args.steps = 1, 50, 1, 4, 4
        args.fractions = (0.1, 1.0)
        if args.dataset == "eegmat":
            args.folds = min(args.folds, 2)
    known = EEG_ROWS if args.dataset == "eegmat" else METHODS
    unknown = set(args.methods) - set(known) | set(args.tasks) - set(TASKS)
    if unknown:
        sys.exit(f"unknown method(s)/task(s) {sorted(unknown)}; methods: {sorted(known)}; tasks: {sorted(TASKS)}")
    for v in args.variant:
        try:
            parse_variant(v)
        except ValueError as e:
            sys.exit(str(e))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    results = {"dataset": args.dataset, "cv": args.cv, "config": {k: v for k, v in vars(args).items()},
               "environment": environment(device), "code": code_state()}
    if args.dataset == "ptbxl" and args.cv:
        rec, tag = bench_ptbxl_cv(args, out), "ptbxl_cv"
    elif args.dataset == "ptbxl":
        rec, tag = bench_ptbxl(args, out), "ptbxl"
    elif args.dataset == "mimic":
        rec, tag = bench_mimic(args, out), "mimic"
    else:
        rec, tag = bench_eegmat(args, out), "eegmat"
    results.update(rec)
    results["wall_s"] = time.time() - t0
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    results["cpu_s"] = ru.ru_utime + ru.ru_stime  # the machine is shared: CPU seconds say what the run itself cost
    import os
    results["load_average_at_end"] = os.getloadavg()
    results["code_at_end"] = code_state()
    md = record_header({**results, "command": command}) + [f"- {n}" for n in rec["notes"]] + [""]
    if tag == "ptbxl":
        md += [markdown_ptbxl(rec, args.fractions)]
    elif tag == "ptbxl_cv":
        md += [markdown_pooled(f"{t}: pooled out-of-fold, ten folds", r) for t, r in rec["tasks"].items()]
    elif tag == "mimic":
        md += [markdown_mimic(rec)]
    else:
        for level, encs in rec["levels"].items():
            md += [markdown_pooled(f"per {level}, encoder {enc}, leave-subjects-out ({args.folds} folds)", r)
                   for enc, r in encs.items()]
    (out / f"{tag}.md").write_text("\n".join(md) + "\n")
    (out / f"{tag}.json").write_text(json.dumps(results, indent=1, default=str))
    if args.docs:
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        (docs / f"{tag}.json").write_text(json.dumps(results, indent=1, default=str))
        (docs / f"{tag}_table.md").write_text("\n".join(md) + "\n")
        for png in out.glob(f"{tag}_*.png"):
            (docs / png.name).write_bytes(png.read_bytes())
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
