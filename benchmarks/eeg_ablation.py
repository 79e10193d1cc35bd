"""EEGMAT ablation: why no pretrained encoder beat random init, and what makes one do so.

Rest (``SubjectNN_1.edf``) vs mental arithmetic (``SubjectNN_2.edf``), leave-subjects-out: the
subjects are dealt into ``--folds`` groups (seeded); for each group, pretraining, the probe's
training and its choice of C see only the other subjects' windows (asserted in :func:`fold_rows`
and again on every pretraining set), and the group's windows are predicted. The out-of-fold
probabilities of all windows are pooled into one AUROC with a subject-level bootstrap CI
(``--bootstrap`` resamples of whole subjects); every row is compared with the random-init encoder
of the same architecture on the same input (same window, same normalisation), paired on the same
resamples (:func:`tscl.probes.score_pooled`). The probe is the evaluation engine's, as in
``bench_real --dataset eegmat`` (:func:`tscl.benchmarks.bench_real.oof_probes`): a standardised
logistic regression whose C (from ``bench_real.C_GRID``) is chosen by
:func:`tscl.probes.choose_params` inside each fold's training subjects (nested: 25 % of them held
out when there are at least 10, leave-one-subject-out for 3 to 9, the middle of the grid below).

First one factor at a time is changed from ``BASE`` (the recipe ``bench_real --dataset eegmat``
had: 10 s windows z-scored per window and channel, SimCLR with the ECG views, ``cnn1d`` widths
16-32-64, about 70 steps), then from :data:`RECIPE` (the recipe kept) one factor at a time back;
each row of :data:`ROWS` names what it changes:

- **normalisation** (``norm``): ``window`` z-scores each window per channel (erases absolute
  power); ``recording`` / ``subject`` z-score each channel over all windows of the recording / of
  the subject's two recordings (the eegmat source's ``normalize="patient"``; label-free, but a test
  subject's statistics come from its own unlabeled windows); ``fixed`` divides every sample by one
  µV scale, the standard deviation of the training subjects' samples (absolute band power kept);
- **window length** 2 / 4 / 10 s; **augmentations** (the ECG views, or the EEG views of
  :data:`tscl.augment.EEG_AUGMENT`); **positives**: two views of a window (SimCLR), windows of one
  window (poly-window), two windows of one subject (PCLR: rest may pair with arithmetic), two windows
  of one recording (PCLR with ``group`` = the recording, every training recording in each batch:
  temporal neighbours up to minutes apart, never across conditions, and a subject's other recording
  is a negative); **encoder size**; **pretraining steps**; the model's **seed**;
- **anchor**: log band power (1-4, 4-8, 8-13, 13-20, 20-30, 30-45 Hz, Welch) per channel of the same
  normalised windows + the same logistic-regression probe: what a non-deep model reaches.

Results are written as each row finishes (``--out``/rows/<row>.json, reused when its settings are
unchanged), then ``eeg_ablation.json`` and ``eeg_ablation.md`` (and, with ``--docs``, copies there).

    python benchmarks/eeg_ablation.py --root ../shared/data/physionet/eegmat --out runs/eeg_ablation
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tscl.augment import EEG_AUGMENT
from tscl.benchmarks.bench_real import _ci, _delta, code_state, oof_probes
from tscl.datasets import Dataset
from tscl.datasets.waveform import patient_channel_stats
from tscl.embed import embed_signals
from tscl.methods.simclr import ECG_AUGMENT
from tscl.probes import assert_no_patient_leakage, bootstrap_macro_auroc, macro_auroc, score_pooled
from tscl.probes.protocol import bootstrap_weights, paired_ci, percentile_ci
from tscl.samplers import PatientBatchSampler, encode_ids
from tscl.train import PretrainConfig, environment, load_encoder, pretrain

BANDS = ((1, 4), (4, 8), (8, 13), (13, 20), (20, 30), (30, 45))
NORMS = ("window", "recording", "subject", "fixed")
SMALL = {"widths": [16, 32, 64]}
BASE = {"window_s": 10.0, "norm": "window", "method": "simclr", "augment": ECG_AUGMENT, "encoder": "cnn1d",
        "encoder_kwargs": SMALL, "steps": 72, "batch": 64, "lr": 3e-3, "positives": "item"}

# the recipe kept for ``bench_real --dataset eegmat``: PCLR whose positives are two windows of one recording
# (every training recording in each batch, so a subject's other recording is a negative), subject z-scoring,
# about 360 steps
RECIPE = {"method": "pclr", "augment": "none", "positives": "recording", "batch": 128, "norm": "subject",
          "steps": 360}

# (row, factor, changes from BASE); "anchor" rows have no encoder. First one factor at a time from today's
# recipe, then the kept recipe and one factor at a time back from it.
ROWS = [
    ("today", "baseline", {}),
    ("anchor/window", "anchor", {"method": "bandpower"}),
    ("anchor/recording", "anchor", {"method": "bandpower", "norm": "recording"}),
    ("anchor/subject", "anchor", {"method": "bandpower", "norm": "subject"}),
    ("anchor/fixed", "anchor", {"method": "bandpower", "norm": "fixed"}),
    ("norm=fixed", "normalisation", {"norm": "fixed"}),
    ("norm=subject", "normalisation", {"norm": "subject"}),
    ("window=4s", "window", {"window_s": 4.0}),
    ("window=2s", "window", {"window_s": 2.0}),
    ("aug=EEG", "augmentation", {"augment": EEG_AUGMENT}),
    ("method=polywindow", "positives", {"method": "polywindow"}),
    ("method=pclr/subject", "positives", {"method": "pclr", "augment": "none"}),
    ("method=pclr/recording", "positives", {"method": "pclr", "augment": "none", "positives": "recording",
                                            "batch": 128}),
    ("method=pclr/subject/seed=1", "positives: seed", {"method": "pclr", "augment": "none", "seed": 1}),
    ("method=pclr/subject/seed=2", "positives: seed", {"method": "pclr", "augment": "none", "seed": 2}),
    ("method=pclr/recording/seed=1", "positives: seed", {"method": "pclr", "augment": "none",
                                                         "positives": "recording", "batch": 128, "seed": 1}),
    ("method=pclr/recording/seed=2", "positives: seed", {"method": "pclr", "augment": "none",
                                                         "positives": "recording", "batch": 128, "seed": 2}),
    ("encoder=cnn1d-wide", "encoder", {"encoder_kwargs": {"widths": [32, 64, 128, 128]}}),
    ("steps=360", "steps", {"steps": 360}),
    ("recipe", "recipe", RECIPE),
    ("recipe/seed=1", "recipe: seed", {**RECIPE, "seed": 1}),
    ("recipe/seed=2", "recipe: seed", {**RECIPE, "seed": 2}),
    ("recipe/norm=window", "recipe: normalisation", {**RECIPE, "norm": "window"}),
    ("recipe/positives=subject", "recipe: positives", {**RECIPE, "positives": "item", "batch": 64}),
    ("recipe/method=simclr", "recipe: positives", {**RECIPE, "method": "simclr", "augment": ECG_AUGMENT,
                                                   "positives": "item", "batch": 64}),
    ("recipe/steps=72", "recipe: steps", {**RECIPE, "steps": 72}),
    ("recipe/aug=EEG", "recipe: augmentation", {**RECIPE, "augment": EEG_AUGMENT}),
    ("recipe/window=4s", "recipe: window", {**RECIPE, "window_s": 4.0}),
    ("recipe/window=4s/seed=1", "recipe: window, seed", {**RECIPE, "window_s": 4.0, "seed": 1}),
    ("recipe/window=4s/seed=2", "recipe: window, seed", {**RECIPE, "window_s": 4.0, "seed": 2}),
]


# --- data -------------------------------------------------------------------------------------------------

def load_windows(root, window_s: float, fs: float, cache) -> dict:
    """EEGMAT windows of ``window_s`` at ``fs`` in µV as read by :func:`tscl.loaders.load_eegmat` (cached)."""
    from tscl.loaders import load_eegmat

    c = load_eegmat(root, cache_dir=None if cache is None else Path(cache) / f"eegmat-{window_s:g}s-{fs:g}hz",
                    epoch_s=window_s, fs=fs, progress=False, on_error="skip")
    idx = c.index
    return {"X": np.asarray(c.stack(), dtype=np.float32), "pids": idx["patient_id"].to_numpy(),
            "y": idx["task"].to_numpy().astype(float), "rec": np.array([Path(s).stem for s in idx["source"]]),
            "fs": fs, "channels": idx["channels"][0].split(","), "skipped": c.report.get("skipped", [])}


def zscore_groups(X: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each channel standardised over all samples of all windows sharing a group (recording or subject), as
    the waveform sources' ``normalize="patient"`` does with the patient as the group."""
    stats = patient_channel_stats(X, groups)
    mean = np.stack([stats[g][0] for g in groups])[:, :, None]
    std = np.stack([stats[g][1] for g in groups])[:, :, None]
    return ((X - mean) / (std + 1e-6)).astype(np.float32)


def normalise(data: dict, norm: str, train_rows) -> np.ndarray:
    """The windows under ``norm``; ``fixed`` takes its one scale from ``train_rows`` only."""
    X = data["X"]
    if norm == "window":
        return (X - X.mean(2, keepdims=True)) / np.maximum(X.std(2, keepdims=True), 1e-6)
    if norm == "recording":
        return zscore_groups(X, data["rec"])
    if norm == "subject":
        return zscore_groups(X, data["pids"])
    if norm == "fixed":
        return X / float(X[train_rows].std())
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def band_power_features(X: np.ndarray, fs: float) -> np.ndarray:
    """log mean Welch power (2 s segments) in each band of :data:`BANDS` that holds a frequency bin below
    Nyquist, per channel: ``[N, C * bands]``."""
    from scipy.signal import welch

    f, P = welch(X, fs=fs, nperseg=min(X.shape[-1], int(2 * fs)), axis=-1)
    masks = [m for m in ((f >= lo) & (f < hi) for lo, hi in BANDS) if m.any()]
    bp = np.stack([P[..., m].mean(-1) for m in masks], axis=-1)
    return np.log(np.maximum(bp, 1e-12)).reshape(len(X), -1)


class ArrayDataset(Dataset):
    """Normalised windows held in memory as a pretraining :class:`~tscl.datasets.Dataset`; its index holds
    the subject (``patient_id``) and the ``recording`` (file stem: PCLR's ``group`` for recording positives)."""

    modality = "waveform"

    def __init__(self, X, pids, rec, fs, channels, norm: str):
        index = pl.DataFrame({"patient_id": pids, "recording": rec, "record_id": [f"{r}:{i}" for i, r in enumerate(rec)],
                              "split": ["train"] * len(X)})
        super().__init__(index, source={"dataset": "eegmat-ablation", "options": {"normalize": norm},
                                         "pretrain_rows": "the fold's training subjects"})
        self.X, self.fs, self.channels, self.norm = X, fs, channels, norm

    @property
    def in_channels(self) -> int:
        return int(self.X.shape[1])

    @property
    def info(self) -> dict:
        return {**super().info, "channels": self.channels, "fs": self.fs, "n_samples": int(self.X.shape[2]),
                "normalize": self.norm}

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.X.tobytes()).hexdigest()[:16]

    def fetch(self, rows) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.X[np.asarray(rows)]))


# --- protocol ---------------------------------------------------------------------------------------------

def subject_folds(pids: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold of each window: subjects dealt round-robin into ``n_folds`` groups in a seeded order."""
    subjects = np.unique(pids)
    if len(subjects) < n_folds:
        raise ValueError(f"{len(subjects)} subjects cannot fill {n_folds} folds")
    perm = np.random.default_rng(seed).permutation(subjects)
    fold_of = {s: i % n_folds for i, s in enumerate(perm)}
    return np.array([fold_of[p] for p in pids])


def fold_rows(pids, folds, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, test rows) of fold ``k``; no subject on both sides (asserted)."""
    tr, te = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
    assert_no_patient_leakage(pids, tr, te)
    return tr, te


def method_kwargs(cfg: dict, n_groups: int) -> dict:
    """The method's settings for ``cfg`` on a pretraining set with ``n_groups`` subjects (or recordings)."""
    kw = {"proj_dim": 64, "augment": cfg["augment"]}
    if cfg["method"] == "pclr":
        kw["patients_per_batch"] = int(min(cfg["batch"] // 2, n_groups))
        if cfg["positives"] == "recording":
            kw["group"] = "recording"
    else:
        kw["batch_size"] = cfg["batch"]
    if cfg["method"] == "polywindow":
        kw.update(n_windows=4, window_len=0.5)
    return kw


def pretrain_fold(cfg: dict, ds: ArrayDataset, run_dir: Path, seed: int) -> tuple[Path, float]:
    """Pretrain ``cfg`` on ``ds`` for about ``cfg['steps']`` steps (whole epochs); (run folder, seconds)."""
    column = "recording" if cfg["positives"] == "recording" else "patient_id"
    groups = ds.index[column].n_unique()
    kw = method_kwargs(cfg, groups)
    if cfg["method"] == "pclr":
        per_epoch = len(PatientBatchSampler(encode_ids(ds.index[column].to_list()), kw["patients_per_batch"]))
    else:
        per_epoch = math.ceil(len(ds) / kw["batch_size"])
    epochs = max(1, round(cfg["steps"] / max(1, per_epoch)))
    pc = PretrainConfig(out_dir=str(run_dir), method=cfg["method"], encoder=cfg["encoder"],
                        encoder_kwargs=cfg["encoder_kwargs"], method_kwargs=kw, epochs=epochs, lr=cfg["lr"],
                        seed=seed, progress=False, device="cpu", ckpt_every=0)
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretrain(ds, pc)
    return run_dir, time.time() - t0


def run_row(name: str, cfg: dict, data: dict, folds: np.ndarray, args, out: Path) -> dict:
    """Out-of-fold P(task) of every window for the row's encoder and its random init, or for the anchor."""
    pids, Y = data["pids"], data["y"][:, None]
    seed = cfg.get("seed", args.seed)  # the model's seed; the folds (and the probe's choice of C) come from --seed
    preds: dict = {}  # row -> out-of-fold P(task) [n, 1], filled fold by fold by the engine's probe
    seconds = 0.0
    for k in range(args.folds):
        tr, te = fold_rows(pids, folds, k)
        Xn = normalise(data, cfg["norm"], tr)
        if cfg["method"] == "bandpower":
            oof_probes({"band power": band_power_features(Xn, data["fs"])}, Y, tr, te, None, pids, args.seed, preds)
            continue
        ds = ArrayDataset(Xn[tr], pids[tr], data["rec"][tr], data["fs"], data["channels"], cfg["norm"])
        assert not np.isin(ds.index["patient_id"].to_numpy(), pids[te]).any(), "a test subject reached pretraining"
        run, s = pretrain_fold(cfg, ds, out / "runs" / name.replace("/", "_") / f"fold{k}", seed)
        seconds += s
        feats = {row: embed_signals(enc, Xn, progress=False)
                 for row, enc in (("pretrained", load_encoder(run)),
                                  ("random-init", load_encoder(run, random_init=True, seed=seed)))}
        oof_probes(feats, Y, tr, te, None, pids, args.seed, preds)
        print(f"[{name}] fold {k + 1}/{args.folds}: pretrained in {s:.0f} s", flush=True)
    refs = ("random-init",) if "random-init" in preds else ()
    result = score_pooled(Y, preds, pids, n_boot=args.bootstrap, seed=args.seed + 1, references=refs, labels=["task"])
    fold_auc = {n: [float(macro_auroc(Y[folds == k], P[folds == k])) for k in range(args.folds)]
                for n, P in preds.items()}
    fold_of = {str(s): int(folds[pids == s][0]) for s in np.unique(pids)}
    return {"name": name, "config": cfg, "pretrain_s": seconds, "windows": int(len(Y)), "folds": fold_of, **result,
            "per_fold_auroc": fold_auc, "oof": {n: P[:, 0].tolist() for n, P in preds.items()}}


def config_key(cfg: dict, args) -> str:
    """What a saved row must match to be reused: its settings, the fold seed (``--seed``), folds, resamples, rate
    and root. A row's own model seed (``cfg["seed"]``) enters as ``model_seed``, so rows without one keep the key
    they had before it was recorded."""
    model_seed = {"model_seed": cfg["seed"]} if "seed" in cfg else {}
    raw = json.dumps({**cfg, **model_seed, "folds": args.folds, "seed": args.seed, "bootstrap": args.bootstrap,
                      "fs": args.fs, "root": str(Path(args.root).resolve())}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def seed_groups(results: list[dict]) -> list[list[dict]]:
    """Rows whose settings differ only in the model's seed (groups of two or more, in table order)."""
    groups: dict = {}
    for r in results:
        if r["config"]["method"] != "bandpower":
            key = json.dumps({k: v for k, v in r["config"].items() if k != "seed"}, sort_keys=True, default=str)
            groups.setdefault(key, []).append(r)
    return [g for g in groups.values() if len(g) > 1]


def seed_summary(rows: list[dict], data: dict, args) -> dict:
    """Pooled AUROC averaged over the seeds' runs, for the pretrained encoders and their random inits, with
    one subject-level bootstrap shared by both (the CI of the difference is paired over subjects and seeds)."""
    y, pids = data["y"][:, None], data["pids"]
    W = bootstrap_weights(pids, args.bootstrap, args.seed + 1)  # the resamples run_row's score_pooled draws
    out = {"rows": [r["name"] for r in rows], "seeds": [r["config"].get("seed", args.seed) for r in rows]}
    boots = {}
    for n in ("pretrained", "random-init"):
        P = np.stack([np.asarray(r["oof"][n], dtype=float)[:, None] for r in rows])
        boots[n] = bootstrap_macro_auroc(y, P, pids, weights=W)
        out[n] = {"encoder": n, "auroc": float(np.mean([macro_auroc(y, p) for p in P])),
                  **dict(zip(("ci_low", "ci_high"), percentile_ci(boots[n])))}
    out["delta"] = {"encoder": "pretrained", "delta": out["pretrained"]["auroc"] - out["random-init"]["auroc"],
                    **dict(zip(("ci_low", "ci_high"), paired_ci(boots["pretrained"], boots["random-init"])))}
    out["delta_per_seed"] = [next(c["delta"] for c in r["comparisons"] if c["encoder"] == "pretrained") for r in rows]
    return out


# --- output -----------------------------------------------------------------------------------------------

def describe(cfg: dict) -> str:
    if cfg["method"] == "bandpower":
        return f"log band power, {cfg['window_s']:g} s, norm={cfg['norm']}"
    aug = "ECG views" if cfg["augment"] == ECG_AUGMENT else "EEG views" if cfg["augment"] == EEG_AUGMENT \
        else f"aug={cfg['augment']}"
    enc = f"{cfg['encoder']} {'-'.join(map(str, cfg['encoder_kwargs'].get('widths', [])))}".strip()
    pos = "" if cfg["method"] != "pclr" else ", recording positives" if cfg["positives"] == "recording" \
        else ", subject positives"
    return (f"{cfg['method']}{pos}, {aug}, {enc}, {cfg['steps']} steps, {cfg['window_s']:g} s, "
            f"norm={cfg['norm']}")


def markdown(rows: list[dict]) -> str:
    lines = ["| row | factor | setting | AUROC [95 % CI] | random init | Δ vs random init [95 % CI] | pretrain s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        by = {x["encoder"]: x for x in r["rows"]}
        main = by.get("pretrained", by.get("band power"))
        rand = by.get("random-init")
        comp = next((c for c in r["comparisons"] if c["encoder"] == "pretrained"), None)
        lines.append(f"| {r['name']} | {r['factor']} | {describe(r['config'])} | {_ci(main)} | "
                     f"{_ci(rand) if rand else '—'} | {_delta(comp) if comp else '—'} | "
                     f"{r['pretrain_s']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_intervals(items: list[tuple], path: Path, title: str) -> None:
    """One line per ``(label, auroc, ci_low, ci_high, reference_auroc or None)``: the AUROC with its CI, and
    the reference (the row's random init) as an open marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.3 * len(items) + 1.2))
    ys = np.arange(len(items))[::-1]
    for yv, (label, auc, lo, hi, ref) in zip(ys, items):
        ax.errorbar(auc, yv, xerr=[[auc - lo], [hi - auc]], fmt="o", color="k", ms=4, capsize=2)
        if ref is not None:
            ax.plot(ref, yv, "o", mfc="none", mec="tab:red", ms=6)
    ax.set_yticks(ys, [i[0] for i in items], fontsize=7)
    ax.axvline(0.5, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("pooled AUROC, 95 % subject-bootstrap CI (open red: the row's random init)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_items(results: list[dict]) -> list[tuple]:
    items = []
    for r in results:
        by = {x["encoder"]: x for x in r["rows"]}
        main = by.get("pretrained", by.get("band power"))
        ref = by.get("random-init")
        items.append((r["name"], main["auroc"], main["ci_low"], main["ci_high"], ref["auroc"] if ref else None))
    return items


def markdown_seeds(summaries: list[dict]) -> str:
    lines = ["| rows (seeds) | pretrained, mean over seeds [95 % CI] | random init, mean [95 % CI] | "
             "Δ [95 % CI] | Δ per seed |", "|---|---|---|---|---|"]
    for s in summaries:
        per = ", ".join(f"{d:+.3f}" for d in s["delta_per_seed"])
        lines.append(f"| {s['rows'][0]} ({', '.join(map(str, s['seeds']))}) | {_ci(s['pretrained'])} | "
                     f"{_ci(s['random-init'])} | {_delta(s['delta'])} | {per} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from tscl.loaders import LoaderError

    try:
        return run(argv)
    except (LoaderError, ValueError, FileNotFoundError) as err:  # bad input: one line, exit status 2
        print(f"eeg_ablation: error: {err}", file=sys.stderr)
        return 2


def run(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="a folder of SubjectNN_1.edf / SubjectNN_2.edf")
    p.add_argument("--out", required=True)
    p.add_argument("--cache", default=None, help="cache folder for the EDF windows (default: the per-user cache)")
    p.add_argument("--docs", default=None, help="also write eeg_ablation.md / .json here")
    p.add_argument("--only", default=None, help="comma-separated row names (default: every row)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--fs", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="tests: 2 folds, 4 steps, 50 resamples, three rows")
    args = p.parse_args(argv)
    rows = ROWS
    if args.quick:
        args.folds, args.bootstrap = min(args.folds, 2), 50
        rows = [(n, f, {**c, "steps": 4}) for n, f, c in ROWS if n in ("today", "anchor/fixed", "recipe",
                                                                      "recipe/seed=1")]
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {n for n, _, _ in ROWS})
        if unknown:
            print(f"unknown row(s) {unknown}; rows: {[n for n, _, _ in ROWS]}", file=sys.stderr)
            return 2
        rows = [r for r in rows if r[0] in wanted]
    out = Path(args.out)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cache: dict = {}
    results = []
    for name, factor, change in rows:
        cfg = {**BASE, **change}
        key = config_key(cfg, args)
        path = out / "rows" / (name.replace("/", "_") + ".json")
        if path.exists() and json.loads(path.read_text()).get("key") == key:
            results.append(json.loads(path.read_text()))
            continue
        if cfg["window_s"] not in cache:
            cache[cfg["window_s"]] = load_windows(args.root, cfg["window_s"], args.fs, args.cache)
        data = cache[cfg["window_s"]]
        folds = subject_folds(data["pids"], args.folds, args.seed)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        res = run_row(name, cfg, data, folds, args, out)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        res = {**res, "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, "factor": factor, "key": key,
               "subjects": int(len(np.unique(data["pids"]))), "code": code_state()}
        path.write_text(json.dumps(res, default=str))
        results.append(res)
        print(markdown([res]).splitlines()[-1], flush=True)
    summaries = []
    for group in seed_groups(results):
        window_s = group[0]["config"]["window_s"]
        if window_s not in cache:
            cache[window_s] = load_windows(args.root, window_s, args.fs, args.cache)
        summaries.append(seed_summary(group, cache[window_s], args))
    record = {"command": "python benchmarks/eeg_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "config": vars(args), "environment": environment(torch.device("cpu")), "code": code_state(),
              "wall_s": time.time() - t0, "load_average_at_end": os.getloadavg(),
              "rows": [{k: v for k, v in r.items() if k != "oof"} for r in results], "seeds": summaries}
    md = markdown(results) + ("\n" + markdown_seeds(summaries) if summaries else "")
    (out / "eeg_ablation.json").write_text(json.dumps(record, indent=1, default=str))
    (out / "eeg_ablation.md").write_text(md)
    plot_intervals(plot_items(results), out / "eeg_ablation.png", "EEGMAT rest vs arithmetic, leave-subjects-out")
    if args.docs:
        Path(args.docs).mkdir(parents=True, exist_ok=True)
        (Path(args.docs) / "eeg_ablation.json").write_text(json.dumps(record, indent=1, default=str))
        (Path(args.docs) / "eeg_ablation_table.md").write_text(md)
        (Path(args.docs) / "eeg_ablation.png").write_bytes((out / "eeg_ablation.png").read_bytes())
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
