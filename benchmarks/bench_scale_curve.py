"""Pretraining-scale curve: does a single-lead encoder's gain over random init grow with unlabelled data?

Encoders (``cnn1d`` widths 16/32/64, lead I, 10 s at 100 Hz, :mod:`tscl.benchmarks.lead1`) are pretrained
with SimCLR on nested sets of CinC 2017 recordings (1,000, 2,000, 4,000 and every non-test record; each
recording contributes every whole 10 s window) and, as a second series, on the same sets plus PTB-XL's
training folds (1-8). Every run takes the same number of optimiser steps (``--steps`` at ``--batch``), so the
curve measures data, not compute. Each encoder is probed through the evaluation engine
(:func:`tscl.probes.evaluate`) beside random init (the same architecture untrained: the reference of every
Δ) and the same architecture trained from scratch on the labels:

- PTB-XL superdiagnostic and rhythm (``ptbxl-superdiagnostic``, ``ptbxl-rhythm``; lead I; folds 1-8 train,
  fold 9 chooses the probe's C, fold 10 tests), at 10 % and 100 % of the training patients' labels;
- CinC 2017's four classes (``cinc2017-classes``: N / AF / Other / Noisy, one class per record; the source's
  held-out 20 % tests, its 10 % validation chooses C), scored as the challenge scores it — the mean F1 of
  N, AF and Other at the argmax of the probe's one-vs-rest probabilities — and by macro AUROC.

95 % CIs are patient-level bootstrap intervals of the test side; every Δ is paired (the same resamples),
including the growth from the smallest to the largest set (``pairs``). The hidden-patient rule is asserted
in code twice: :func:`~tscl.benchmarks.lead1.check_hidden` before pretraining (no CinC test record, no
PTB-XL fold-9/10 patient), and the engine, which refuses a run pretrained on a test patient of the probe's
data and asserts the patient split of every probe fit.

    python benchmarks/bench_scale_curve.py --cinc-root /work/data --ptbxl-root ../shared/data/ptbxl \\
        --out runs/bench_lead1 --docs docs/benchmarks

Runs are resumable: a finished pretraining run in ``--out/runs`` is reused when its settings, code and rows
match (``bench_transfer`` reuses the largest ones when given the same ``--out``).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from tscl.benchmarks import bench_record
from tscl.benchmarks.lead1 import (AUGMENT, BATCH, ENCODER, ENCODER_KWARGS, STEPS, check_hidden, cinc_options,
                                   open_pool, pretrain_fixed, pretraining_set, ptbxl_options)
from tscl.probes import EvalSpec
from tscl.probes.engine import RANDOM_INIT, SUPERVISED

PROBES = {"ptbxl-superdiagnostic": ("ptbxl", ("auroc",)), "ptbxl-rhythm": ("ptbxl", ("auroc",)),
          "cinc2017-classes": ("cinc2017", ("f1:normal+af+other", "auroc", "accuracy"))}
SERIES = {"cinc": False, "cinc+ptbxl": True}
CURVE_METRICS = {"ptbxl-superdiagnostic": ("auroc",), "ptbxl-rhythm": ("auroc",),
                 "cinc2017-classes": ("f1:normal+af+other", "auroc")}
NAMES = {"auroc": "macro AUROC", "f1:normal+af+other": "challenge F1 (N, AF, O)"}


def run_name(method: str, series: str, size) -> str:
    return f"{method}-{series}-{size if size else 'all'}"


def parse_sizes(text: str) -> list:
    out = []
    for s in text.split(","):
        if s.strip() == "all":
            out.append(None)
        elif s.strip().isdigit() and int(s) > 0:
            out.append(int(s))
        else:
            raise SystemExit(f"--sizes: {s!r} is not a positive number of recordings or 'all'")
    return out


def pretrain_all(args, pool, out: Path) -> dict:
    """Every (method, series, size) run, pretrained or reused: ``{name: {...counts, seconds, path}}``."""
    runs = {}
    for method in args.methods:
        for series in args.series:
            for size in args.sizes:
                data = pretraining_set(pool, size, SERIES[series])
                counts = check_hidden(data, pool)  # asserts: no held-out record or patient
                name = run_name(method, series, size)
                path, seconds = pretrain_fixed(data, out / "runs" / name, method, steps=args.steps, batch=args.batch,
                                               lr=args.lr, seed=args.seed)
                runs[name] = {"method": method, "series": series, "size": size, "recordings": counts["cinc_records"]
                              + counts["ptbxl_ecgs"], **counts, "pretrain_s": seconds, "path": str(path)}
                print(f"[scale] {name}: {counts['items']} windows of {runs[name]['recordings']} recordings, "
                      f"{args.steps} steps, {seconds:.0f} s", flush=True)
    return runs


def probe_all(args, runs: dict, out: Path) -> dict:
    """One engine evaluation per probe task, every run a row; the growth pairs (largest − smallest)."""
    results = {}
    for task in args.tasks:
        source, metrics = PROBES[task]
        root, opts = (args.ptbxl_root, ptbxl_options()) if source == "ptbxl" else (args.cinc_root, cinc_options())
        pairs = [(run_name(m, s, args.sizes[-1]), run_name(m, s, args.sizes[0]))
                 for m in args.methods for s in args.series if len(args.sizes) > 1]
        spec = EvalSpec(task=task, root=root, dataset_kwargs=opts, encoders=[r["path"] for r in runs.values()],
                        supervised=True, supervised_kwargs={"max_steps": args.sup_steps}, fractions=args.fractions,
                        repeats=args.repeats, n_boot=args.bootstrap, seed=args.seed, cache=args.cache,
                        metrics=metrics, pairs=pairs)
        results[task] = bench_record.evaluated(spec, out, task)
    return results


def curve(runs: dict, results: dict) -> list:
    """One point per (task, metric, fraction, run): Δ vs random init with its paired CI."""
    points = []
    for task, res in results.items():
        comps = [c for c in res["comparisons"] if c["reference"] == RANDOM_INIT and c.get("test", "internal")
                 == "internal"]
        for c in comps:
            info = runs.get(c["encoder"], {"series": SUPERVISED, "method": SUPERVISED, "recordings": None,
                                           "cinc_records": None})
            for m in CURVE_METRICS[task]:
                points.append({"task": task, "metric": m, "fraction": c["fraction"], "row": c["encoder"],
                               "series": info["series"], "method": info["method"], "recordings": info["recordings"],
                               "cinc_records": info["cinc_records"],
                               "delta": c[m], "ci": c[f"{m}_ci"], "n/a": c.get("n/a")})
    return points


def verdicts(args, runs: dict, results: dict) -> list:
    """Per (method, series, task, metric, fraction): the gain at the largest set and its growth from the smallest,
    both with paired CIs, and what they say."""
    out = []
    big, small = args.sizes[-1], args.sizes[0]
    for task, res in results.items():
        for m, f, method, series in itertools.product(CURVE_METRICS[task], args.fractions, args.methods, args.series):
            hi, lo = run_name(method, series, big), run_name(method, series, small)
            gain = _comp(res, hi, RANDOM_INIT, f)
            grow = _comp(res, hi, lo, f)
            out.append({"task": task, "metric": m, "fraction": f, "method": method, "series": series,
                        "gain": gain and [gain[m], *gain[f"{m}_ci"]],
                        "growth": grow and [grow[m], *grow[f"{m}_ci"]], "says": _says(gain, grow, m)})
    return out


def _comp(res: dict, row: str, ref: str, fraction: float) -> dict | None:
    return next((c for c in res["comparisons"] if c["encoder"] == row and c["reference"] == ref
                 and c["fraction"] == fraction and c.get("test", "internal") == "internal" and not c.get("n/a")), None)


def _says(gain, grow, m) -> str:
    if gain is None:
        return "n/a"
    lo, hi = gain[f"{m}_ci"]
    at_top = "above random init" if lo > 0 else "below random init" if hi < 0 else "not separated from random init"
    if grow is None:
        return f"largest set {at_top}"
    g_lo, g_hi = grow[f"{m}_ci"]
    trend = "grows" if g_lo > 0 else "shrinks" if g_hi < 0 else "flat (largest vs smallest not separated)"
    return f"{trend}; largest set {at_top}"


def plot(points: list, args, path: Path) -> Path:
    """Δ vs random init against the CinC recordings pretrained on, one panel per (task, metric) and fraction."""
    from matplotlib.ticker import NullFormatter

    from tscl.plots import _pyplot, _save

    plt = _pyplot()
    panels = list(dict.fromkeys((p["task"], p["metric"]) for p in points))
    fig, axes = plt.subplots(len(panels), len(args.fractions), figsize=(4.2 * len(args.fractions), 2.8 * len(panels)),
                             squeeze=False)
    for i, (task, metric) in enumerate(panels):
        for j, f in enumerate(args.fractions):
            ax = axes[i][j]
            here = [p for p in points if p["task"] == task and p["metric"] == metric and p["fraction"] == f]
            for k, (method, series) in enumerate((m, s) for m in args.methods for s in args.series):
                line = sorted((p for p in here if p["method"] == method and p["series"] == series and
                               p["delta"] is not None and np.isfinite(p["delta"])), key=lambda p: p["cinc_records"])
                if line:
                    x = np.array([p["cinc_records"] for p in line]) * (1.0 + 0.03 * k)  # side by side, not on top
                    y = np.array([p["delta"] for p in line])
                    err = np.abs(np.array([p["ci"] for p in line]).T - y)
                    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{method}, {series}")
            sup = next((p for p in here if p["row"] == SUPERVISED and np.isfinite(p["delta"])), None)
            if sup:
                ax.axhline(sup["delta"], color="0.4", ls=":", label="supervised from scratch")
                ax.axhspan(*sup["ci"], color="0.4", alpha=0.08)
            ax.axhline(0, color="black", lw=0.8, ls="--")
            ax.set_xscale("log")
            sizes = sorted({p["cinc_records"] for p in here if p["cinc_records"]})
            ax.set_xticks(sizes, [f"{x:,}" for x in sizes], fontsize=7)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{task}: {NAMES.get(metric, metric)}, {100 * f:g} % labels", fontsize=9)
            ax.set_xlabel("CinC 2017 recordings pretrained on", fontsize=8)
            ax.set_ylabel("Δ vs random init (95 % CI)")
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize="small")
    return _save(fig, path)


def compute_lines(runs: dict, results: dict) -> list:
    """What the numbers cost, whichever invocation measured them: a resumed run reuses earlier pretraining runs and
    reports, so its own wall time covers only what it did not reuse."""
    pre = sum(r["pretrain_s"] for r in runs.values())
    evals = {t: r.get("eval_s") for t, r in results.items()}
    known = [v for v in evals.values() if v is not None]
    parts = ", ".join(f"{t} {v / 60:.1f} min" if v is not None else f"{t} (time not recorded)" for t, v in evals.items())
    reused = [t for t, r in results.items() if r.get("reused")]
    return [f"Compute behind these numbers (each step's own measured seconds on this machine): pretraining "
            f"{len(runs)} runs {pre / 60:.1f} min; evaluations {parts}; in all {(pre + sum(known)) / 60:.1f} min."
            + (f" Reused from an earlier invocation: the finished pretraining runs and the reports of "
               f"{', '.join(reused)}; the wall time above covers only what this invocation did itself." if reused
               else ""), ""]


def markdown(args, record: dict) -> list:
    runs, results = record["runs"], record["results"]
    lines = bench_record.header(record) + compute_lines(runs, results)
    lines += ["Pretraining sets (SimCLR unless named; every run " f"{args.steps} steps of {args.batch}):", "",
              "| run | CinC records | PTB-XL ECGs | 10 s windows | pretrain s |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {r['cinc_records']} | {r['ptbxl_ecgs']} | {r['items']} | {r['pretrain_s']:.0f} |"
              for n, r in runs.items()]
    for task, res in results.items():
        comps = {(c["encoder"], c["reference"], c["fraction"]): c for c in res["comparisons"]
                 if c.get("test", "internal") == "internal"}
        rows = {(r["encoder"], r["fraction"]): r for r in res["rows"] if r.get("test", "internal") == "internal"}
        lines += ["", f"### {task}", "", res["data"]["summary"], ""]
        for m in CURVE_METRICS[task]:
            head = " | ".join(f"{100 * f:g} % labels | Δ vs random init @{100 * f:g} %" for f in args.fractions)
            lines += [f"{NAMES.get(m, m)}:", "", f"| row | recordings | {head} |",
                      "|---|---|" + "---|---|" * len(args.fractions)]
            for name in dict.fromkeys(r["encoder"] for r in res["rows"]):
                rec = runs.get(name, {}).get("recordings", "—")
                cells = [f"{bench_record.cell(rows[name, f], m)} | "
                         f"{bench_record.delta(comps.get((name, RANDOM_INIT, f)), m)}" for f in args.fractions]
                lines.append(f"| {name} | {rec} | " + " | ".join(cells) + " |")
            growth = [c for (a, b, f), c in comps.items() if b != RANDOM_INIT]
            if growth:
                lines += ["", "| growth (paired) | labels | Δ [95 % CI] |", "|---|---|---|"]
                lines += [f"| {c['encoder']} − {c['reference']} | {100 * c['fraction']:g} % | "
                          f"{bench_record.delta(c, m)} |" for c in growth]
            lines.append("")
        lines += [f"- {n}" for n in res["notes"]]
    lines += ["", "### What the curve says", "", "| task | metric | labels | series | gain at the largest set "
              "[95 % CI] | largest − smallest [95 % CI] | verdict |", "|---|---|---|---|---|---|---|"]
    for v in record["verdicts"]:
        g = bench_record.fmt_triple(v["gain"])
        w = bench_record.fmt_triple(v["growth"])
        lines.append(f"| {v['task']} | {NAMES.get(v['metric'], v['metric'])} | {100 * v['fraction']:g} % | "
                     f"{v['method']}, {v['series']} | {g} | {w} | {v['says']} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cinc-root", required=True, help="training2017/ or the folder holding it (and REFERENCE-v3.csv)")
    p.add_argument("--ptbxl-root", required=True, help="PTB-XL (records100/ and label tables)")
    p.add_argument("--sizes", default="1000,2000,4000,all", help="CinC records per pretraining set, nested")
    p.add_argument("--series", default="cinc,cinc+ptbxl")
    p.add_argument("--methods", default="simclr")
    p.add_argument("--tasks", default=",".join(PROBES))
    p.add_argument("--steps", type=int, default=STEPS, help="optimiser steps of every pretraining run")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--fractions", default="0.1,1")
    p.add_argument("--repeats", type=int, default=3, help="label subsamples per fraction below 100 %")
    bench_record.common_options(p)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.sizes = parse_sizes(args.sizes)
    args.series = [s for s in args.series.split(",") if s]
    args.methods = [m for m in args.methods.split(",") if m]
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.fractions = tuple(float(f) for f in args.fractions.split(","))
    bad = [s for s in args.series if s not in SERIES] + [t for t in args.tasks if t not in PROBES] + \
        [m for m in args.methods if m not in ("simclr", "pclr")]
    if bad:
        p.error(f"unknown series, task or method {bad[0]!r} (series: {', '.join(SERIES)}; tasks: {', '.join(PROBES)};"
                " methods: simclr, pclr)")
    if args.quick:
        args.bootstrap, args.repeats, args.sup_steps = 50, 1, 4
    record = bench_record.start("bench_scale_curve.py", argv)
    out = Path(args.out)
    record["protocol"] = {"encoder": ENCODER, "encoder_kwargs": ENCODER_KWARGS, "augment": AUGMENT,
                          "steps": args.steps, "batch": args.batch, "lr": args.lr, "sizes": args.sizes,
                          "series": args.series, "methods": args.methods, "fractions": args.fractions,
                          "cinc_options": cinc_options(), "ptbxl_options": ptbxl_options()}
    pool = open_pool(args.cinc_root, args.ptbxl_root, cache=args.cache, seed=args.seed)
    record["pool"] = {"cinc_non_test_records": len(pool.order), "cinc_test_records": len(pool.cinc_test),
                      "cinc_windows": len(pool.cinc), "ptbxl_train_ecgs": len(pool.ptbxl) if pool.ptbxl else 0}
    record["runs"] = pretrain_all(args, pool, out)
    record["results"] = probe_all(args, record["runs"], out)
    record["curve"] = curve(record["runs"], record["results"])
    record["verdicts"] = verdicts(args, record["runs"], record["results"])
    figure = plot(record["curve"], args, out / "scale_curve.png")
    bench_record.finish(record)
    bench_record.write("scale_curve", record, markdown(args, record), out, args.docs, [figure])
    return 0


if __name__ == "__main__":
    sys.exit(main())
