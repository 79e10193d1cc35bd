"""Cross-dataset AF transfer: an AF probe developed on one single-lead ECG source, validated on another.

Both directions go through the evaluation engine's external path (:func:`tscl.probes.evaluate` with
``test_task``), lead I, 10 s at 100 Hz, z-scored per item (:mod:`tscl.benchmarks.lead1`):

- **PTB-XL → CinC 2017**: task ``ptbxl-afib`` (``rhythm:AFIB`` against every other rhythm statement, on the
  ECGs with one; strat_fold 1-8 train, folds 9 and 10 the internal test), externally tested on
  ``cinc2017-af`` (AF against normal rhythm in CinC's held-out 20 %; its Other and Noisy records left out);
- **CinC 2017 → PTB-XL**: task ``cinc2017-af`` (train split trains, val chooses C, the held-out 20 % the
  internal test), externally tested on ``ptbxl-afib`` in PTB-XL folds 9 and 10.

Rows: random init (the reference of every Δ), supervised from scratch (the same ``cnn1d`` trained end to end on
the training side's labels, also predicting the external rows), and the SimCLR encoders pretrained on every
non-test CinC 2017 record, without and with PTB-XL folds 1-8 (the largest runs of ``bench_scale_curve``,
reused from ``--out/runs`` when made with the same settings, else pretrained here). Internal and external
estimates are side by side, each with a patient-level bootstrap CI on its own test set.

Hidden patients, asserted in code: the engine refuses a run pretrained on an internal test patient and checks
every probe fit's split; the external test patients are another source's, so this benchmark asserts itself
that no run's ``patients.json`` holds one (CinC test records; PTB-XL fold-9/10 patients).

    python benchmarks/bench_transfer.py --cinc-root /work/data --ptbxl-root ../shared/data/ptbxl \\
        --out runs/bench_lead1 --docs docs/benchmarks
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

from tscl.benchmarks import bench_record
from tscl.benchmarks.lead1 import (BATCH, STEPS, check_hidden, cinc_options, open_pool, pretrain_fixed,
                                   pretraining_set, ptbxl_options)
from tscl.datasets import open_dataset
from tscl.probes import EvalSpec
from tscl.probes.engine import RANDOM_INIT
from tscl.tasks import get_task

DIRECTIONS = {"ptbxl->cinc2017": ("ptbxl-afib", "cinc2017-af"), "cinc2017->ptbxl": ("cinc2017-af", "ptbxl-afib")}
RUNS = {"simclr-cinc-all": False, "simclr-cinc+ptbxl-all": True}  # bench_scale_curve's names for these runs
METRICS = ("auroc", "auprc", "brier", "ece")


def _root_and_options(args, task: str) -> tuple:
    source = get_task(task).source
    return (args.ptbxl_root, ptbxl_options()) if source == "ptbxl" else (args.cinc_root, cinc_options())


def external_patients(args, task: str) -> set:
    """The raw patient ids of ``task``'s test rows (the external side's), as its source writes them."""
    t = get_task(task)
    root, opts = _root_and_options(args, task)
    data = open_dataset(t.source, root, cache=args.cache, progress=False, **{**t.options, **opts})
    rows = data.index
    for column, allowed in t.rows.items():
        rows = rows.filter(pl.col(column).cast(pl.Utf8).is_in([str(a) for a in allowed]))
    return set(rows.filter(pl.col("split").is_in(list(t.test_splits)))["patient_id"].cast(pl.Utf8).to_list())


def pretrain_runs(args, out: Path) -> dict:
    pool = open_pool(args.cinc_root, args.ptbxl_root, cache=args.cache, seed=args.seed)
    runs = {}
    for name, with_ptbxl in RUNS.items():
        data = pretraining_set(pool, None, with_ptbxl)
        counts = check_hidden(data, pool)
        path, seconds = pretrain_fixed(data, out / "runs" / name, "simclr", steps=args.steps, batch=args.batch,
                                       lr=args.lr, seed=args.seed)
        runs[name] = {**counts, "pretrain_s": seconds, "path": str(path)}
        print(f"[transfer] {name}: {counts['items']} windows, pretrained in {seconds:.0f} s (a reused run keeps its own time)", flush=True)
    return runs


def assert_external_hidden(runs: dict, held: set, where: str) -> None:
    """No run was pretrained on a patient of the external test set (ids of its own source)."""
    for name, run in runs.items():
        seen = set(json.loads((Path(run["path"]) / "patients.json").read_text())["patients"])
        shared = sorted(seen & held)
        assert not shared, f"{name} was pretrained on {len(shared)} external test patients of {where} ({shared[:3]})"


def evaluate_direction(args, runs: dict, direction: str, out: Path) -> dict:
    task, test_task = DIRECTIONS[direction]
    root, opts = _root_and_options(args, task)
    test_root, test_opts = _root_and_options(args, test_task)
    assert_external_hidden(runs, external_patients(args, test_task), test_task)
    spec = EvalSpec(task=task, root=root, dataset_kwargs=opts, test_task=test_task, test_root=test_root,
                    test_dataset_kwargs={**get_task(test_task).options, **test_opts},
                    encoders=[r["path"] for r in runs.values()], supervised=True,
                    supervised_kwargs={"max_steps": args.sup_steps}, fractions=(1.0,), n_boot=args.bootstrap,
                    seed=args.seed, cache=args.cache, metrics=METRICS)
    return bench_record.evaluated(spec, out, direction)


def plot(results: dict, path: Path) -> Path:
    """AUROC with its CI per row, internal and external side by side, one panel per direction."""
    from tscl.plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.8), squeeze=False)
    for ax, (direction, res) in zip(axes[0], results.items()):
        names = list(dict.fromkeys(r["encoder"] for r in res["rows"]))
        for k, test in enumerate(("internal", "external")):
            cells = [next(r for r in res["rows"] if r["encoder"] == n and r["test"] == test) for n in names]
            y = np.array([c["auroc"] for c in cells], dtype=float)
            err = np.abs(np.array([c["auroc_ci"] for c in cells], dtype=float).T - y)
            ax.errorbar(np.arange(len(names)) + (k - 0.5) * 0.25, y, yerr=err, fmt="o", capsize=3, label=test)
        ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("AUROC (95 % CI)")
        ax.set_title(f"AF, {direction}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def markdown(record: dict) -> list:
    lines = bench_record.header(record)
    lines += ["Encoders: " + "; ".join(f"{n}: {r['items']} windows ({r['cinc_records']} CinC records, {r['ptbxl_ecgs']}"
                                       " PTB-XL ECGs)" for n, r in record["runs"].items()), ""]
    for direction, res in record["results"].items():
        comps = {(c["encoder"], c["test"]): c for c in res["comparisons"] if c["reference"] == RANDOM_INIT}
        rows = {(r["encoder"], r["test"]): r for r in res["rows"]}
        lines += [f"### {direction}", "", res["data"]["summary"], "",
                  "| row | AUROC internal | AUROC external | Δ vs random init, internal | Δ vs random init, external |"
                  " AUPRC internal | AUPRC external |", "|---|---|---|---|---|---|---|"]
        for name in dict.fromkeys(r["encoder"] for r in res["rows"]):
            i, e = rows[name, "internal"], rows[name, "external"]
            lines.append(f"| {name} | {bench_record.cell(i, 'auroc')} | {bench_record.cell(e, 'auroc')} | "
                         f"{bench_record.delta(comps.get((name, 'internal')), 'auroc')} | "
                         f"{bench_record.delta(comps.get((name, 'external')), 'auroc')} | "
                         f"{bench_record.cell(i, 'auprc')} | {bench_record.cell(e, 'auprc')} |")
        lines += [""] + [f"- {n}" for n in res["notes"]] + ["", "<details><summary>every metric (engine report)"
                                                             "</summary>", "", res["markdown"], "", "</details>", ""]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cinc-root", required=True, help="training2017/ or the folder holding it (and REFERENCE-v3.csv)")
    p.add_argument("--ptbxl-root", required=True)
    p.add_argument("--steps", type=int, default=STEPS, help="optimiser steps per run (bench_scale_curve's: with its --out its runs are reused)")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--directions", default=",".join(DIRECTIONS))
    bench_record.common_options(p)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.directions = [d for d in args.directions.split(",") if d]
    bad = [d for d in args.directions if d not in DIRECTIONS]
    if bad:
        p.error(f"unknown direction {bad[0]!r}; directions: {', '.join(DIRECTIONS)}")
    if args.quick:
        args.bootstrap, args.sup_steps = 50, 4
    record = bench_record.start("bench_transfer.py", argv)
    out = Path(args.out)
    record["runs"] = pretrain_runs(args, out)
    record["results"] = {d: evaluate_direction(args, record["runs"], d, out) for d in args.directions}
    figure = plot(record["results"], out / "transfer.png")
    bench_record.finish(record)
    bench_record.write("transfer", record, markdown(record), out, args.docs, [figure])
    return 0


if __name__ == "__main__":
    sys.exit(main())
