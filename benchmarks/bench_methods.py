"""Compare the contrastive methods under one encoder, budget and seed, by linear probing.

For each dataset — (a) the simulated patient-structured cohort, (b) the PTB-XL sample in
/work/shared/data/ptbxl (skipped with a message if absent) — every method pretrains the
same encoder for the same number of epochs from the same seed on the probe's training
patients only (checked against the run's patients.json); the frozen features are
probed (``tscl.probes.run_probe``: patient-level split, label fractions 1/10/100 %,
patient-level bootstrap CIs, paired differences against a random-init encoder of the same
architecture). On the cohort the patient-aware methods are also compared with SimCLR.

Writes to ``--out``: ``methods.md`` (the comparison table), ``methods.json`` (every number),
``label_efficiency_<dataset>.png``.

    python benchmarks/bench_methods.py --out runs/bench_methods --quick
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tscl.datasets import open_dataset
from tscl.embed import embed_dataset
from tscl.methods import METHODS
from tscl.plots import plot_label_efficiency
from tscl.probes import check_pretraining_overlap, patient_split, pretrained_patients, run_probe
from tscl.train import PretrainConfig, environment, load_encoder, pretrain

COHORT_LABELS = ["lvh", "bbb", "af", "tachy", "brady", "mace"]
PATIENT_LEVEL = ["lvh", "bbb", "tachy", "brady", "mace"]  # stable per patient (af is per recording)
PTBXL_LABELS = ["NORM", "MI", "STTC", "CD", "HYP"]
PATIENT_AWARE = ["pclr", "polywindow", "pmq"]
FRACTIONS = (0.01, 0.1, 1.0)
TEST_FRACTION = 0.3


SUPCON_LABEL = "train_labels"  # the probed labels of the probe's training patients only (see supcon_labels)


def method_kwargs(name: str, batch: int) -> dict:
    kw = {"proj_dim": 64}
    if name == "pclr":
        kw["patients_per_batch"] = batch // 2
    else:
        kw["batch_size"] = batch
    if name in ("moco", "pmq"):
        kw.update(queue_size=1024, momentum=0.99)
    if name == "clocs-cmlc":
        kw["n_leads"] = 4  # the paper's four single-lead views (6 view pairs)
    if name == "clocs-cmsmlc":
        kw["n_leads"] = 2  # 2 leads x 2 segments = 4 single-lead views keep the CPU budget of the others
    if name == "supcon":
        kw["label"] = SUPCON_LABEL
    return kw


def supcon_labels(index, labels: list[str], train_rows) -> pl.Series:
    """SupCon's class column: the multi-hot pattern of ``labels`` (e.g. ``"100010"``) on the probe's training
    rows, null on its test rows. SupCon is supervised pretraining: it may see the labels the probe trains on,
    never a test patient's (a null label is a class of its own, so those rows only pair with their other view).
    """
    Y = index.select(labels).to_numpy()
    codes = ["".join("1" if v == 1 else "0" if v == 0 else "?" for v in row) for row in Y]
    keep = np.zeros(len(codes), dtype=bool)
    keep[np.asarray(train_rows)] = True
    return pl.Series(SUPCON_LABEL, [c if k else None for c, k in zip(codes, keep)], dtype=pl.Utf8)


def parse_variant(text: str) -> tuple[str, str, dict]:
    """``ROW=METHOD:JSON`` (e.g. ``comet-no-trial=comet:{"weights": {"trial": 0}}``) -> (row, method, kwargs):
    one more row, the method pretrained with these keyword arguments on top of the benchmark's own."""
    row, sep, rest = text.partition("=")
    method, sep2, js = rest.partition(":")
    if not (sep and sep2 and row and method):
        raise ValueError(f"--variant {text!r}: expected ROW=METHOD:JSON")
    if method not in METHODS:
        raise ValueError(f"--variant {text!r}: unknown method {method!r}; known: {sorted(METHODS)}")
    kwargs = json.loads(js)
    if not isinstance(kwargs, dict):
        raise ValueError(f"--variant {text!r}: the JSON must be an object of keyword arguments")
    return row, method, kwargs


def runs_to_make(args) -> list[tuple[str, str, int, dict]]:
    """(row name, method, epochs, extra kwargs): every method at the full budget, poly-window at a fraction
    of it (``--polywindow-fraction``, one or more; the paper's claim is that it matches SimCLR with fewer epochs), then
    each ``--variant``."""
    runs = [(m, m, args.epochs, {}) for m in args.methods]
    if "polywindow" in args.methods:
        for f in sorted(args.polywindow_fraction):
            if not 0 <= f < 1:
                raise ValueError(f"--polywindow-fraction {f}: expected a fraction in [0, 1) (0: none)")
            e = max(1, round(args.epochs * f))
            if f > 0 and e < args.epochs:
                runs.append((f"polywindow@{e}ep", "polywindow", e, {}))
    runs += [(row, method, args.epochs, kw) for row, method, kw in map(parse_variant, args.variant)]
    rows = [r[0] for r in runs]
    if len(set(rows)) != len(rows):
        raise ValueError(f"duplicate row names in {rows}")
    return runs


SETTINGS = ("method", "encoder", "encoder_kwargs", "method_kwargs", "epochs", "lr", "seed")


def code_digest(method: str, encoder: str) -> str:
    """SHA-256 (12 hex digits) of the source files of the method's and the encoder's modules: a changed
    objective or encoder makes earlier runs stale even where their settings match."""
    from tscl.encoders import ENCODERS

    files = []
    for obj in (METHODS[method], ENCODERS[encoder]):
        obj = getattr(obj, "func", obj)  # functools.partial (the CLOCS modes)
        files.append(Path(inspect.getsourcefile(obj)).read_bytes())
    return hashlib.sha256(b"\0".join(files)).hexdigest()[:12]


def finished_run(run_dir: Path, cfg) -> float | None:
    """Pretraining seconds of a run already finished in ``run_dir`` with the settings and code of ``cfg``;
    None if unfinished. A finished run made with other settings, or with another version of the method's or
    encoder's code, is an error, never silently reused (runs saved without a code digest are trusted)."""
    if not (run_dir / "done.json").exists():
        return None
    done = json.loads((run_dir / "done.json").read_text())
    digest = code_digest(cfg.method, cfg.encoder)
    if done.get("code", digest) != digest:
        raise ValueError(f"{run_dir} holds a finished run made with other code of {cfg.method!r} or "
                         f"{cfg.encoder!r} (digest {done['code']} there, {digest} now); use another --out")
    saved = json.loads((run_dir / "config.json").read_text())
    want = json.loads(json.dumps({k: getattr(cfg, k) for k in SETTINGS}))  # as JSON stores it (tuples -> lists)
    differ = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v}
    if differ:
        raise ValueError(f"{run_dir} holds a finished run made with other settings "
                         f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in differ.items())}); "
                         f"use another --out")
    return done["pretrain_s"]


def run_dataset(tag: str, data, labels: list[str], args, out: Path) -> dict:
    """Every method pretrained on the training patients of ``data`` (a dataset source), probed by the engine
    (:func:`tscl.probes.run_probe`) on the test patients; rows without a value for every label are left out."""
    labelled = data.index.select(labels).with_columns(pl.all().is_not_null()).to_numpy().all(axis=1)
    data = data.subset(np.flatnonzero(labelled))
    pids = data.index["patient_id"].to_numpy()
    Y = data.index.select(labels).to_numpy().astype(float)
    split = patient_split(pids, TEST_FRACTION, args.seed)  # (train rows, test rows) of every probe below
    data.index = data.index.with_columns(supcon_labels(data.index, labels, split[0]))
    train = data.subset(split[0])  # pretraining sees the training patients only, never a test patient's signal
    held_out = f"training patients of patient_split(test_fraction={TEST_FRACTION}, seed={args.seed})"
    features, timings = {}, {}
    for row, name, epochs, extra in args.runs:
        kw = {**method_kwargs(name, args.batch), **extra}
        run_dir = out / "runs" / tag / row
        cfg = PretrainConfig(out_dir=str(run_dir), method=name, encoder=args.encoder,
                             encoder_kwargs=args.encoder_kwargs, method_kwargs=kw, epochs=epochs, lr=args.lr,
                             seed=args.seed, progress=False, dataset={"pretrain_rows": held_out})
        t0 = time.time()
        done_s = finished_run(run_dir, cfg)
        if done_s is not None:  # finished earlier with these settings (an interrupted benchmark resumes here)
            run, timings[row] = run_dir, done_s
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run = pretrain(train, cfg, overwrite=True)  # an unfinished earlier attempt is redone
            timings[row] = time.time() - t0
            check_pretraining_overlap(pretrained_patients(run), pids[split[1]], what=f"{row}")
            (run_dir / "done.json").write_text(json.dumps({"pretrain_s": timings[row], "code": code_digest(name, args.encoder)}))
        features[row] = embed_dataset(load_encoder(run), data, progress=False)
        print(f"[{tag}] {row:16s} pretrained in {timings[row]:6.1f} s", flush=True)
    first = out / "runs" / tag / args.runs[0][0]
    features["random-init"] = embed_dataset(load_encoder(first, random_init=True, seed=args.seed), data, progress=False)
    result = run_probe(features, Y, labels, pids, fractions=FRACTIONS, n_boot=args.bootstrap, seed=args.seed,
                       reference="random-init", split=split)
    plot_label_efficiency(result.rows, out / f"label_efficiency_{tag}.png",
                          title=f"{tag}: linear probe, macro AUROC ({args.epochs} epochs)")
    record = {"labels": labels, "split": result.split, "rows": result.rows, "vs_random": result.comparisons,
              "pretrain_s": timings, "left_out_rows": int((~labelled).sum())}
    method_of = {row: name for row, name, _, _ in args.runs}
    aware = [m for m in features if method_of.get(m) in PATIENT_AWARE]
    simclrs = [m for m in features if method_of.get(m) == "simclr"]  # SimCLR and its variants
    if tag == "cohort" and simclrs and aware:
        Yp = data.index.select(PATIENT_LEVEL).to_numpy().astype(float)
        record["patient_level_vs_simclr"], record["patient_level_rows"] = [], {}
        for ref in simclrs:  # the same split and bootstrap resamples for every reference
            vs = run_probe({m: features[m] for m in [ref, *aware]}, Yp, PATIENT_LEVEL, pids, fractions=(0.1, 1.0),
                           n_boot=args.bootstrap, seed=args.seed, reference=ref, split=split)
            record["patient_level_vs_simclr"] += [{**c, "reference": ref} for c in vs.comparisons]
            record["patient_level_rows"][ref] = vs.rows
    return record


def _verdict(c: dict) -> str:
    """A paired comparison's reading: better, worse, or not separated (the CI spans 0)."""
    return "yes" if c["ci_low"] > 0 else "worse" if c["ci_high"] < 0 else "no (CI spans 0)"


def table(tag: str, rec: dict) -> str:
    cell = {(r["encoder"], r["fraction"]): r for r in rec["rows"]}
    comp = {(c["encoder"], c["fraction"]): c for c in rec["vs_random"]}
    names = list(dict.fromkeys(r["encoder"] for r in rec["rows"]))
    lines = [f"### {tag}: macro AUROC over {', '.join(rec['labels'])} "
             f"(test: {rec['split']['test_patients']} patients, {rec['split']['test_records']} records)", "",
             "| method | 1 % | 10 % | 100 % | Δ vs random-init @10 % [95 % CI] | beats random @10 %? | pretrain s |",
             "|---|---|---|---|---|---|---|"]
    for n in names:
        aucs = [f"{cell[(n, f)]['auroc']:.3f} [{cell[(n, f)]['ci_low']:.3f}, {cell[(n, f)]['ci_high']:.3f}]" for f in FRACTIONS]
        c = comp.get((n, 0.1))
        delta = f"{c['delta']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]" if c else "—"
        beats = _verdict(c) if c else "—"
        t = f"{rec['pretrain_s'][n]:.0f}" if n in rec["pretrain_s"] else "—"
        lines.append(f"| {n} | " + " | ".join(aucs) + f" | {delta} | {beats} | {t} |")
    if "patient_level_vs_simclr" in rec:
        lines += ["", f"Patient-level labels ({', '.join(PATIENT_LEVEL)}), patient-aware methods − SimCLR:", "",
                  "| comparison | labels | Δ macro AUROC [95 % CI] | better than SimCLR? |", "|---|---|---|---|"]
        for c in rec["patient_level_vs_simclr"]:
            lines.append(f"| {c['encoder']} − {c.get('reference', 'simclr')} | {100 * c['fraction']:g} % | "
                         f"{c['delta']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] | {_verdict(c)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_methods")
    p.add_argument("--quick", action="store_true", help="small budget: 40 patients, 2 epochs, 100 bootstrap")
    p.add_argument("--patients", type=int, default=60)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--encoder", default="cnn1d")
    p.add_argument("--encoder-kwargs", default="widths=[16,32,64]", help="e.g. width=0.25 for resnet1d")
    p.add_argument("--polywindow-fraction", type=lambda t: [float(v) for v in t.split(",") if v], default=[0.25],
                   help="also pretrain poly-window for these fractions of the epochs, comma-separated (0: none)")
    p.add_argument("--bootstrap", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--variant", action="append", default=[], metavar="ROW=METHOD:JSON",
                   help='one more row: a method with extra keyword arguments, e.g. '
                        '\'comet-no-trial=comet:{"weights": {"trial": 0}}\' (repeatable)')
    p.add_argument("--ptbxl", default="/work/shared/data/ptbxl")
    args = p.parse_args(argv)
    if args.quick:
        args.patients, args.epochs, args.bootstrap = 40, 2, 100
    from tscl.cli import _kwargs

    args.encoder_kwargs = _kwargs(args.encoder_kwargs)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        sys.exit(f"unknown method(s) {sorted(unknown)}; known: {sorted(METHODS)}")
    try:
        args.runs = runs_to_make(args)
    except ValueError as e:  # a malformed --variant fails now, not after an hour of pretraining
        sys.exit(str(e))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    from tscl.simulate import CohortConfig, write_cohort

    data = out / f"cohort_{args.patients}_{args.seed}"
    if not (data / "metadata.csv").exists():
        write_cohort(data, CohortConfig(n_patients=args.patients, seed=args.seed), progress=False)
    cohort = open_dataset("wfdb", data, progress=False)
    print(f"cohort: {len(cohort)} recordings of {cohort.index['patient_id'].n_unique()} patients", flush=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where PretrainConfig's "auto" trains
    results = {"config": {k: v for k, v in vars(args).items()}, "environment": environment(device), "datasets": {}}
    results["datasets"]["cohort"] = run_dataset("cohort", cohort, COHORT_LABELS, args, out)

    root = Path(args.ptbxl)
    if (root / "ptbxl_database.csv").exists() or (root / "labels").is_dir():
        ptb = open_dataset("ptbxl", root, cache=out / "ptbxl_cache", on_error="skip", progress=False)
        n_multi = int((ptb.index.group_by("patient_id").len()["len"] >= 2).sum())
        print(f"PTB-XL: {len(ptb)} recordings of {ptb.index['patient_id'].n_unique()} patients "
              f"({n_multi} with >= 2 recordings); {len(ptb.skipped)} rows without files skipped", flush=True)
        rec = run_dataset("ptbxl", ptb, PTBXL_LABELS, args, out)
        rec["patients_with_2_recordings"] = n_multi
        results["datasets"]["ptbxl"] = rec
    else:
        print(f"PTB-XL skipped: neither {root / 'ptbxl_database.csv'} nor {root / 'labels'} found")

    results["wall_s"] = time.time() - t_start
    md = [f"# Contrastive methods, linear probe (encoder {args.encoder} {args.encoder_kwargs}, {args.epochs} epochs, "
          f"batch {args.batch}, seed {args.seed}; random-init = same architecture untrained)", ""]
    md += [table(tag, rec) + "\n" for tag, rec in results["datasets"].items()]
    env = results["environment"]
    md.append(f"wall-clock: {results['wall_s'] / 60:.1f} min on {env.get('gpu', env['device'])} "
              f"(torch {env['torch']}, {env['cpu_capability']} CPU kernels, {env['threads']} threads)")
    (out / "methods.md").write_text("\n".join(md) + "\n")
    (out / "methods.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
