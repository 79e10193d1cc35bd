"""Real-data benchmarks: PTB-XL (Strodthoff et al. 2020 protocol) and EEGMAT (rest vs mental arithmetic).

PTB-XL (``--dataset ptbxl``; ``--root`` a folder with ``records100/`` and label tables and/or
``ptbxl_database.csv``, see :mod:`tscl.loaders.ptbxl`):

- every method pretrains the same encoder for the same epochs and seed on folds 1-8 only (checked
  in code: no pretraining row is of a fold-9/10 patient, also for every label subsample);
- frozen features + a linear probe at 1 / 10 / 100 % of the training patients (folds 1-8), the
  probe's regularisation chosen on fold 9, tested once on fold 10; tasks superdiagnostic,
  subdiagnostic, form, rhythm, each on the ECGs that have a code of the task (``has:<task>``);
- macro AUROC over the task's labels with >= ``--min-positives`` training positives and a positive in
  fold 10, 95 % CIs from a patient-level bootstrap of fold 10, paired differences against random init;
- rows: random init (same architecture, untrained), supervised from scratch
  (:class:`tscl.probes.SupervisedBaseline`, same architecture, same labels), one fine-tune row (a
  pretrained encoder trained end to end with a linear head, same loop and budget as the supervised
  row), and every method of :data:`tscl.methods.METHODS` (SupCon on the training folds' superclass
  labels).

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
from torch import nn

from tscl.benchmarks.bench_methods import code_digest, finished_run, method_kwargs, parse_variant
from tscl.embed import embed_signals
from tscl.methods import METHODS
from tscl.probes import SupervisedBaseline, assert_no_patient_leakage, bootstrap_macro_auroc, macro_auroc, run_probe
from tscl.probes.linear import LinearProbe, choose_on_validation, patient_split
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
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretrain(cache, cfg)
    seconds = time.time() - t0
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


# --- fine-tuning ------------------------------------------------------------------------------------------

class FineTune:
    """A pretrained run's encoder + a linear head trained end to end: ``(Y, rows, test_rows, pids, seed) -> P``.

    The same loop as :class:`~tscl.probes.SupervisedBaseline` (mean BCE, AdamW, warm-up + cosine,
    ``max_steps``, early stopping on a patient-level 25 % split of the training rows, last weights
    with fewer than 10 patients), started from the pretrained weights instead of random ones."""

    def __init__(self, X, run_dir, *, epochs: int, max_steps: int, batch_size: int = 64, lr: float = 1e-3,
                 weight_decay: float = 1e-4, eval_every: int = 20, kind: str = "multilabel"):
        self.X, self.run_dir, self.kind = X, Path(run_dir), kind
        self.epochs, self.max_steps, self.batch_size = epochs, max_steps, batch_size
        self.lr, self.weight_decay, self.eval_every = lr, weight_decay, eval_every

    def _predict(self, net, rows) -> np.ndarray:
        net.eval()
        with torch.no_grad():
            out = [net(torch.from_numpy(np.asarray(self.X[rows[s:s + 256]], dtype=np.float32))).numpy()
                   for s in range(0, len(rows), 256)]
        net.train()
        return 1 / (1 + np.exp(-np.concatenate(out).astype(np.float64)))

    def __call__(self, Y, rows, test_rows, patient_ids, seed: int = 0) -> np.ndarray:
        from tscl.train import cosine_with_warmup

        Y = np.asarray(Y, dtype=np.float32).reshape(len(Y), -1)
        rows, test_rows = np.asarray(rows), np.asarray(test_rows)
        if len(np.unique(patient_ids[rows])) >= 10:
            fit_l, val_l = patient_split(patient_ids[rows], test_fraction=0.25, seed=seed)
            fit, val = rows[fit_l], rows[val_l]
        else:
            fit, val = rows, None
        torch.manual_seed(seed)
        encoder = load_encoder(self.run_dir).train()
        net = nn.Sequential(encoder, nn.Linear(encoder.embed_dim, Y.shape[1]))
        bs = min(self.batch_size, len(fit))
        steps = int(min(self.max_steps, max(1, self.epochs * math.ceil(len(fit) / bs))))
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(steps, max(1, steps // 20)))
        loss_fn, rng, order = nn.BCEWithLogitsLoss(), np.random.default_rng(seed), np.empty(0, dtype=np.int64)
        best = (-math.inf, None)
        for step in range(1, steps + 1):
            if len(order) < bs:
                order = np.concatenate([order, rng.permutation(fit)])
            batch, order = order[:bs], order[bs:]
            x = torch.from_numpy(np.asarray(self.X[np.sort(batch)], dtype=np.float32))
            loss = loss_fn(net(x), torch.from_numpy(Y[np.sort(batch)]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            if val is not None and (step % self.eval_every == 0 or step == steps):
                score = macro_auroc(Y[val], self._predict(net, val))
                if np.isfinite(score) and score > best[0]:
                    best = (score, {k: v.clone() for k, v in net.state_dict().items()})
        if best[1] is not None:
            net.load_state_dict(best[1])
        return self._predict(net, test_rows)


def fold_probe(X, val_rows):
    """A linear-probe predictor whose C is chosen on ``val_rows`` (PTB-XL fold 9) by macro AUROC."""
    def predict(Y, rows, test_rows, patient_ids, seed):
        scores = []
        for C in C_GRID:
            P = LinearProbe(C=C).fit(X[rows], Y[rows]).predict_proba(X[val_rows])
            scores.append(macro_auroc(Y[val_rows], P))
        C = C_GRID[int(np.argmax(np.nan_to_num(scores, nan=-np.inf)))]
        return LinearProbe(C=C).fit(X[rows], Y[rows]).predict_proba(X[test_rows])
    return predict


# --- PTB-XL -----------------------------------------------------------------------------------------------

def load_ptbxl_cache(args):
    from tscl.loaders.ptbxl import load_ptbxl

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = load_ptbxl(args.root, rate=100, on_error="skip", progress=False,
                           cache_dir=None if args.cache is None else Path(args.cache) / "ptbxl")
    rep = cache.report
    notes = [f"{len(cache)} ECGs of {cache.index['patient_id'].n_unique()} patients loaded from {args.root}",
             f"{len(rep.get('skipped', []))} listed ECG(s) without record files left out; "
             f"{len(rep.get('unlisted', []))} record(s) on disk listed in no label source left out"]
    notes += [str(w.message) for w in caught if "label source" not in str(w.message)]
    return cache, notes


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
    cache, notes = load_ptbxl_cache(args)
    idx = cache.index
    pids, folds = idx["patient_id"].to_numpy(), idx["strat_fold"].to_numpy()
    train, val, test = (np.flatnonzero(folds <= 8), np.flatnonzero(folds == 9), np.flatnonzero(folds == 10))
    assert_no_patient_leakage(pids, train, val, test)
    check_pretraining_rows(pids, folds, train, (9, 10))
    pre = cache.subset(train)
    sup_cols = [c for c in idx.columns if c.startswith("super:")]
    pre.index = pre.index.with_columns(supcon_column(pre.index, sup_cols))  # training folds' labels only
    signals = cache.stack()
    features, timings, runs = {}, {}, {}
    for row, method, epochs, extra in ptbxl_runs(args):
        run, timings[row] = pretrain_once(pre, out / "runs" / row, method, args.encoder, args.encoder_kwargs,
                                          extra, args, epochs)
        runs[row] = run
        features[row] = embed_signals(load_encoder(run), signals, progress=False)
        print(f"[ptbxl] {row:14s} pretrained on {len(pre)} ECGs (folds 1-8) in {timings[row]:6.1f} s", flush=True)
    first = next(iter(runs.values()))
    features = {"random-init": embed_signals(load_encoder(first, random_init=True, seed=args.seed), signals,
                                             progress=False), **features}
    record = {"notes": notes, "pretrain_rows": int(len(pre)), "pretrain_patients": int(pre.index["patient_id"].n_unique()),
              "pretrain_s": timings, "tasks": {}}
    t_probe = time.time()
    for task in args.tasks:
        has = idx[f"has:{TASKS[task]}"].to_numpy() == 1
        rows = np.flatnonzero(has)
        local = {k: np.flatnonzero(np.isin(rows, v)) for k, v in (("train", train), ("val", val), ("test", test))}
        labels = task_labels(idx[rows.tolist()], task, local["train"], local["test"], args.min_positives)
        if not labels:
            record["tasks"][task] = {"skipped": "no label with enough positives"}
            continue
        Y = idx[rows.tolist()].select(labels).to_numpy().astype(float)
        tp = pids[rows]
        predictors = {name: fold_probe(X[rows], local["val"]) for name, X in features.items()}
        X_task = signals[rows] if isinstance(signals, np.ndarray) else np.asarray(signals)[rows]
        predictors["supervised"] = SupervisedBaseline(X_task, "multilabel", args.encoder, args.encoder_kwargs,
                                                      epochs=args.sup_epochs, max_steps=args.sup_steps, lr=args.sup_lr)
        if args.finetune in runs:
            predictors[f"fine-tune ({args.finetune})"] = FineTune(X_task, runs[args.finetune], epochs=args.sup_epochs,
                                                                  max_steps=args.sup_steps, lr=args.ft_lr)
        res = run_probe({}, Y, labels, tp, fractions=args.fractions, repeats=args.repeats, n_boot=args.bootstrap,
                        seed=args.seed, reference="random-init", split=(local["train"], local["test"]),
                        predictors=predictors)
        for r in res.rows:  # every subsample's rows were checked against the test side inside run_probe
            r["ecgs"] = int(len(rows))
        record["tasks"][task] = {"labels": labels, "split": res.split, "rows": res.rows, "vs_random": res.comparisons,
                                 "val_records": int(len(local["val"]))}
        plot(res.rows, out / f"ptbxl_{task}.png", f"PTB-XL {task}: macro AUROC, fold 10")
        print(f"[ptbxl] {task}: probed {len(rows)} ECGs, {len(labels)} labels", flush=True)
    record["probe_s"] = time.time() - t_probe
    return record


def bench_ptbxl_cv(args, out: Path) -> dict:
    cache, notes = load_ptbxl_cache(args)
    idx = cache.index
    pids, folds = idx["patient_id"].to_numpy(), idx["strat_fold"].to_numpy()
    signals = cache.stack()
    names = ["random-init", *[m for m in args.methods]]
    oof = {task: {n: None for n in names} for task in args.tasks}
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
        pre = cache.subset(pre_rows)
        feats = {}
        for m in args.methods:
            run, s = pretrain_once(pre, out / "runs" / f"fold{k}" / m, m, args.encoder, args.encoder_kwargs, {}, args)
            timings[f"fold{k}/{m}"] = s
            feats[m] = embed_signals(load_encoder(run), signals, progress=False)
            if "random-init" not in feats:
                feats["random-init"] = embed_signals(load_encoder(run, random_init=True, seed=args.seed), signals,
                                                     progress=False)
        for t in args.tasks:
            rows = task_rows[t]
            Y = idx[rows.tolist()].select(task_cols[t]).to_numpy().astype(float)
            tf = folds[rows]
            tr, va, te = np.flatnonzero((tf != k) & (tf != kval)), np.flatnonzero(tf == kval), np.flatnonzero(tf == k)
            assert_no_patient_leakage(pids[rows], tr, va, te)
            fold_auc = {}
            for n in names:
                P = fold_probe(feats[n][rows], va)(Y, tr, te, pids[rows], args.seed)
                if oof[t][n] is None:
                    oof[t][n] = np.full(Y.shape, np.nan)
                oof[t][n][te] = P
                fold_auc[n] = macro_auroc(Y[te], P)
            per_fold.append({"fold": k, "task": t, "auroc": fold_auc})
        print(f"[ptbxl-cv] fold {k} done", flush=True)
    record = {"notes": notes, "pretrain_s": timings, "per_fold": per_fold, "tasks": {}}
    for t in args.tasks:
        rows = task_rows[t]
        Y = idx[rows.tolist()].select(task_cols[t]).to_numpy().astype(float)
        record["tasks"][t] = pooled(Y, {n: oof[t][n] for n in names}, pids[rows], args, refs=("random-init", "simclr"))
        record["tasks"][t]["labels"] = task_cols[t]
        record["tasks"][t]["ecgs"] = int(len(rows))
    return record


def pooled(Y, preds: dict, groups, args, refs=("random-init",)) -> dict:
    """Pooled out-of-fold macro AUROC per encoder with a group-level bootstrap CI, and paired differences."""
    boots, rows, comps = {}, [], []
    for n, P in preds.items():
        boots[n] = bootstrap_macro_auroc(Y, P[None], groups, n_boot=args.bootstrap, seed=args.seed + 1)
        rows.append({"encoder": n, "auroc": float(macro_auroc(Y, P)), "ci_low": float(np.nanpercentile(boots[n], 2.5)),
                     "ci_high": float(np.nanpercentile(boots[n], 97.5))})
    refs = [r for r in refs if r in preds]
    for i, ref in enumerate(refs):
        for n in preds:
            if n != ref and n not in refs[:i]:  # each pair once
                d = boots[n] - boots[ref]
                comps.append({"encoder": n, "reference": ref, "delta": rows[list(preds).index(n)]["auroc"] -
                              rows[list(preds).index(ref)]["auroc"], "ci_low": float(np.nanpercentile(d, 2.5)),
                              "ci_high": float(np.nanpercentile(d, 97.5))})
    return {"rows": rows, "comparisons": comps, "groups": int(len(np.unique(groups))), "records": int(len(Y))}


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


def eegmat_probe(X, y, pids, tr, te, seed: int) -> np.ndarray:
    """Standardised logistic regression on ``tr``, C chosen on a subject-level split of ``tr``; P(task) of ``te``."""
    def score(C, fit_rows, val_rows):
        P = LinearProbe(C=C).fit(X[fit_rows], y[fit_rows]).predict_proba(X[val_rows])
        return macro_auroc(y[val_rows, None], P)

    C = choose_on_validation(list(C_GRID), score, tr, pids, seed)
    return LinearProbe(C=C).fit(X[tr], y[tr]).predict_proba(X[te])[:, 0]


def bench_eegmat(args, out: Path) -> dict:
    from tscl.benchmarks.eeg_ablation import band_power_features
    from tscl.datasets import open_dataset

    ds = open_dataset("eegmat", args.root, cache=args.cache, progress=False, epoch_s=args.epoch_s, fs=args.fs,
                      normalize=args.normalize, on_error="skip")
    report = ds.cache.report
    idx = ds.index
    pids, y = idx["patient_id"].to_numpy(), idx["task"].to_numpy().astype(float)
    recs = np.array([Path(s).stem for s in idx["source"].to_list()])
    signals = ds.array()  # normalised as pretraining fetches them
    subjects = np.unique(pids)
    perm = np.random.default_rng(args.seed).permutation(subjects)
    fold_of = {s: i % args.folds for i, s in enumerate(perm)}
    sfold = np.array([fold_of[p] for p in pids])
    encoders = {e: EEG_ENCODERS[e] for e in (args.encoder_list or ["cnn1d"])}
    names = [(e, n) for e in encoders for n in ("random-init", "supervised", "log band power", *args.methods)]
    oof = {en: np.full(len(idx), np.nan) for en in names}
    bands = band_power_features(signals, args.fs)
    timings = {}
    for k in range(args.folds):
        tr, te = np.flatnonzero(sfold != k), np.flatnonzero(sfold == k)
        assert_no_patient_leakage(pids, tr, te)
        pre = ds.subset(tr)
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
                feats[row] = embed_signals(load_encoder(run), signals, progress=False)
                if "random-init" not in feats:
                    feats["random-init"] = embed_signals(load_encoder(run, random_init=True, seed=args.seed), signals,
                                                         progress=False)
            for n, X in feats.items():
                oof[(enc, n)][te] = eegmat_probe(X, y, pids, tr, te, args.seed)
            sb = SupervisedBaseline(signals, "binary", enc, ekw, epochs=args.sup_epochs, max_steps=args.sup_steps,
                                    lr=args.sup_lr)
            oof[(enc, "supervised")][te] = sb(y, tr, te, pids, args.seed)[:, 0]
        print(f"[eegmat] fold {k + 1}/{args.folds} done", flush=True)
    record = {"notes": [f"{len(idx)} windows of {args.epoch_s:g} s at {args.fs:g} Hz from {len(np.unique(recs))} "
                        f"recordings of {len(subjects)} subjects, normalize={args.normalize}; "
                        f"{len(report.get('skipped', []))} file(s) skipped",
                        f"{args.folds} folds of subjects: " + "; ".join(
                            ",".join(sorted(s for s in subjects if fold_of[s] == k)) for k in range(args.folds))],
              "pretrain_s": timings, "encoders": encoders, "rows": {r: EEG_ROWS[r] for r in args.methods},
              "levels": {}}
    # per window, and per recording (mean window probability of the file)
    rec_names = sorted(set(recs))
    rec_rows = [np.flatnonzero(recs == r) for r in rec_names]
    y_rec = np.array([y[r[0]] for r in rec_rows])
    g_rec = np.array([pids[r[0]] for r in rec_rows])
    for level in ("window", "recording"):
        record["levels"][level] = {}
        for enc in encoders:
            preds = {n: oof[(enc, n)] for e, n in names if e == enc}
            if level == "recording":
                preds = {n: np.array([P[r].mean() for r in rec_rows]) for n, P in preds.items()}
                Y, g = y_rec, g_rec
            else:
                Y, g = y, pids
            record["levels"][level][enc] = pooled(Y[:, None], {n: P[:, None] for n, P in preds.items()}, g, args,
                                                  refs=("random-init", "supervised"))
    from tscl.benchmarks.eeg_ablation import plot_intervals

    items = [(f"{enc}, per {level}: {r['encoder']}", r["auroc"], r["ci_low"], r["ci_high"], None)
             for level, encs in record["levels"].items() for enc, res in encs.items() for r in res["rows"]]
    plot_intervals(items, out / "eegmat_rows.png", "EEGMAT rest vs arithmetic, leave-subjects-out")
    return record


# --- output -----------------------------------------------------------------------------------------------

MIMIC_ENCODER = "dim=64,depth=2,heads=4,max_len=128"


def bench_mimic(args, out: Path) -> dict:
    """MIMIC-IV demo: each method pretrains ``ehr_sequence`` on the ``mimic-iv`` source's train split
    (admissions as items); :func:`tscl.tasks.mimic_ehr.mimic_probe` then probes admissions at admission + 24 h
    (features strictly before it) beside the random-init twin and the tabular baseline, testing on the
    subjects of the val and test splits (never pretrained on: checked against each run's patients.json)."""
    from tscl.datasets import open_dataset
    from tscl.tasks.mimic_ehr import mimic_probe

    enc_kwargs = args.encoder_kwargs
    train = open_dataset("mimic-iv", args.root, split="train", cache=args.cache, progress=False,
                         max_len=int(enc_kwargs.get("max_len", 128)))
    rec = {"notes": [f"pretraining: {train.describe()} (the mimic-iv source's train split)"], "methods": {}}
    for method in args.methods:
        extra = {"segments_per_record": 1} if method == "pmq" else {}
        run, seconds = pretrain_once(train, out / "runs" / method, method, "ehr_sequence", enc_kwargs, extra, args)
        report = mimic_probe(args.root, run, cache=args.cache, n_boot=args.bootstrap, seed=args.seed)
        rec["methods"][method] = {"pretrain_s": seconds, "counts": report.counts, "notes": report.notes,
                                  "labels": {k: json.loads(v.to_json()) for k, v in report.results.items()}}
        print(f"[mimic] {method}: pretrained in {seconds:.0f} s", flush=True)
    return rec


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
                dtext = f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if d else "—"
                secs = f"{m['pretrain_s']:.0f}" if name == method else "—"
                parts.append(f"| {name} | {r['auroc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {dtext} | {secs} |")
        parts.append("")
    return "\n".join(parts)


def plot(rows, path: Path, title: str) -> None:
    try:
        from tscl.plots import plot_label_efficiency

        plot_label_efficiency(rows, path, title=title)
    except ImportError as err:  # matplotlib missing: the JSON and the table still stand
        print(f"no plot ({err})")


def _ci(r) -> str:
    return f"{r['auroc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def _delta(c) -> str:
    verdict = "better" if c["ci_low"] > 0 else "worse" if c["ci_high"] < 0 else "not separated"
    return f"{c['delta']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] {verdict}"


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


def header(args, results: dict, command: str) -> list[str]:
    env, code = results["environment"], results["code"]
    dirty = f"; uncommitted changes: {', '.join(code['uncommitted'])}" if code["uncommitted"] else ""
    return [f"Command: `{command}`", "",
            f"Measured wall time: {results['wall_s'] / 60:.1f} min ({results['cpu_s'] / 60:.1f} CPU-min of this process; "
            f"load average at the end {results['load_average_at_end'][1]:.1f} on a machine shared with other work) "
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
    p.add_argument("--repeats", type=int, default=3, help="label subsamples per fraction below 100 %")
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
    from tscl.cli import _kwargs

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
    md = header(args, results, command) + [f"- {n}" for n in rec["notes"]] + [""]
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
