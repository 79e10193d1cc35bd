"""BreastMNIST (MedMNIST v2): does contrastive pretraining of ``resnet2d18`` on the training images help a linear probe?

One command (``--root`` the ``breastmnist.npz``, or a folder holding it)::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_breastmnist.py --root /path/to/breastmnist.npz \\
        --out runs/bench_breastmnist --docs docs/benchmarks

(its measured time is in ``docs/benchmarks/breastmnist.md``). One thread: on a 2-core CPU shared with other work
(load average 13), one forward and backward pass of 64 images took 0.23-0.25 CPU-s and 2.0-2.3 s with one thread,
1.7-2.3 CPU-s and 10-14 s with two.

Protocol:

- Data: the ``medmnist`` source (:mod:`tscl.datasets.medmnist`), the file's official train / val / test split
  (BreastMNIST: 546 / 78 / 156 images, 28 x 28 gray, ``label`` 1 = normal or benign, 0 = malignant). MedMNIST
  gives no patient ids, so each image is its own patient (``patient_id`` = ``record_id``): "no test patient"
  below means "no test image"; two images of one woman may still sit on both sides of the official split.
- Pretraining: SimCLR, MoCo (v2 recipe, queue of ``--queue`` keys) and SupCon (classes: the training images'
  ``label``) each pretrain the same ``resnet2d18`` (CIFAR stem as MedMNIST's ResNet-18 (28): Conv3x3/1, no
  max-pool; ``--width`` of its channels) for ``--epochs`` epochs on the **training split only**, with the
  augmentations :data:`AUGMENT` (see :func:`augment_notes`), batch ``--batch``, AdamW ``--lr``, seed ``--seed``.
  Asserted in code (:func:`check_hidden`): every pretraining image is of the training split, none is a
  validation or test image, and each run's recorded patients (``patients.json``) are exactly the training
  images.
- Evaluation: :func:`tscl.probes.evaluate` on the frozen features: a standardised logistic regression at 1 / 10 /
  100 % of the training images' labels (3 subsamples below 100 %), its strength chosen on the official
  validation split, tested once on the test split; AUROC and accuracy at the threshold 0.5 with 95 % CIs from
  a bootstrap over test images (``--bootstrap`` resamples, shared by every row, so differences with random
  init are paired). Beside them: ``random-init`` (the same architecture untrained) and ``supervised (from
  scratch)`` (:class:`tscl.probes.SupervisedBaseline`: the same architecture and a linear head trained end to
  end on the same labelled images for ``--sup-epochs`` epochs of batch 64, at most ``--sup-steps`` steps, keeping
  the weights that score best on a quarter of those images held out, checked every 20 steps). The
  engine refuses an encoder pretrained on a test patient and checks every probe split patient-disjoint; this
  script asserts the split sizes it reports against the file (:func:`check_report`).
- Anchors: MedMNIST v2 (Yang et al., Scientific Data 2023, Table 3), ResNet-18 trained end to end on 100 % of
  the training labels for 100 epochs (the mean of at least three trials).
  A linear probe on frozen contrastive features is a different protocol; the anchors are context, not a
  like-for-like row.

``--quick`` shrinks everything for the test (one epoch, width 1/8, 50 resamples, one subsample per fraction).
Finished pretraining runs in ``--out`` are reused when made with the same settings and code.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tscl.checkpoint import environment
from tscl.datasets import open_dataset
from tscl.loaders import LoaderError
from tscl.probes import EvalSpec, evaluate, pretrained_patients
from tscl.probes.cells import fmt
from tscl.train import PretrainConfig, pretrain

REPO = Path(__file__).resolve().parents[1]
METHODS = ("simclr", "moco", "supcon")
FRACTIONS = (0.01, 0.1, 1.0)
METRICS = ("auroc", "accuracy", "auprc", "brier", "ece")
RANDOM_INIT, SUPERVISED = "random-init", "supervised (from scratch)"
# 28 x 28 gray ultrasound: crops of half the area or more, left-right mirror only (depth runs top to bottom, and
# posterior shadowing below a lesion is a sign of malignancy), small rotations, intensity jitter of all channels
# alike (no colour op exists for gray), and a blur of at most 0.5 px (SimCLR blurs 224 px images by sigma <= 2 px,
# about 1 % of the side; the project's default 1.5 px would erase a 28 px lesion's margin)
AUGMENT = "rrc:scale=0.5,flip:p=0.5:axis=h,rotate:degrees=10,jitter:brightness=0.2:contrast=0.3,blur:p=0.5:sigma=0.5"
# MedMNIST v2, Table 3, BreastMNIST (test split): ResNet-18 trained end to end on 100 % of the labels
ANCHORS = [
    {"name": "MedMNIST v2 ResNet-18 (28)", "auroc": 0.901, "accuracy": 0.863,
     "checked": "the paper's Table 3 (doi:10.1038/s41597-022-01721-8) as quoted by a third-party re-evaluation of "
                "the three BreastMNIST prediction files the authors released (Zenodo doi:10.5281/zenodo.7782114), "
                "whose means 0.9015 / 0.8632 round to these figures, and by bionichaos.com/BreastMNIST; the "
                "table itself was not read here"},
]  # the (224) figures (AUC 0.891, ACC 0.833) are not cited: only a secondary page lists them, unchecked
SOURCE = ("BreastMNIST (MedMNIST v2; from the BUSI breast ultrasound dataset, Al-Dhabyani et al. 2020), CC BY 4.0; "
          "copy read: KamalJain777/AMLS_25_26_SN24205421 at b7f638d33cc9e6dc1a0de213b243598105837d5f, "
          "Datasets/BreastMNIST.npz (labels stored [N] instead of [N, 1])")


def augment_notes() -> str:
    return ("augmentations (two views per image): random resized crop of 50-100 % of the area back to 28 x 28, "
            "left-right flip with p = 0.5 (no up-down flip), rotation in [-10, 10] degrees, intensity jitter "
            "(contrast x [0.7, 1.3], brightness +-0.2 std, one factor for all channels: no colour jitter on gray), "
            "Gaussian blur with p = 0.5 and sigma in [0.1, 0.5] px")


# --- the hidden-patient rule --------------------------------------------------------------------------------

def check_hidden(data, pre) -> dict:
    """Assert that ``pre`` (the pretraining rows) holds training images only: no validation or test image, by
    record id and by patient id (the same here: patient = image). Returns the split counts read from the file."""
    split = np.asarray(data.index["split"].to_list())
    pids = np.asarray(data.index["patient_id"].cast(pl.Utf8).to_list())
    held_out = set(pids[split != "train"])
    pre_pids = set(pre.index["patient_id"].cast(pl.Utf8).to_list())
    assert set(pre.index["split"].to_list()) == {"train"}, "pretraining must read the training split only"
    assert not pre_pids & held_out, f"pretraining rows include held-out images: {sorted(pre_pids & held_out)[:3]}"
    assert pre_pids == set(pids[split == "train"]), "pretraining must read every training image"
    assert (data.index["patient_id"] == data.index["record_id"]).all(), "MedMNIST: patient = image"
    return {s: int((split == s).sum()) for s in ("train", "val", "test")}


def check_run(run: Path, data) -> None:
    """A finished run's recorded pretraining patients are the training images, none of them a test image."""
    seen = pretrained_patients(run)
    split = np.asarray(data.index["split"].to_list())
    pids = np.asarray(data.index["patient_id"].cast(pl.Utf8).to_list())
    assert seen is not None, f"{run}: no patients.json, the pretraining set cannot be checked"
    assert not seen & set(pids[split == "test"]), f"{run}: pretrained on test images"
    assert seen == set(pids[split == "train"]), f"{run}: pretrained on other images than the training split"


def check_report(report, counts: dict) -> None:
    """The probes trained on training images only, chose on the validation split and tested on the test split,
    in the numbers the file gives (the engine asserts the patient-disjointness of every split itself)."""
    split = report.result.split
    # a validation split under MIN_TUNING_PATIENTS images trains with the training split (the report says so)
    want = (counts["train"], counts["val"], counts["test"]) if "val_patients" in split else \
        (counts["train"] + counts["val"], None, counts["test"])
    got = (split["train_patients"], split.get("val_patients"), split["test_patients"])
    assert got == want, f"probe split {split} is not the file's {counts}"
    for row in report.rows:
        assert row["train_patients"] <= want[0], row["encoder"]


# --- pretraining --------------------------------------------------------------------------------------------

def method_kwargs(method: str, args) -> dict:
    kw = {"batch_size": args.batch, "augment": AUGMENT}
    if method == "moco":
        kw["queue_size"] = args.queue
    if method == "supcon":
        kw["label"] = "label"
    return kw


def run_key(cfg: PretrainConfig, fingerprint: str) -> str:
    """What makes a finished run reusable: its settings, the data's fingerprint and the code of the package."""
    import hashlib

    import tscl

    h = hashlib.sha256(json.dumps([cfg.method, cfg.encoder, cfg.encoder_kwargs, cfg.method_kwargs, cfg.epochs,
                                   cfg.lr, cfg.seed, fingerprint], sort_keys=True, default=str).encode())
    for path in sorted(Path(tscl.__file__).parent.rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def pretrain_once(train, method: str, args, out: Path) -> tuple[Path, float]:
    """Pretrain ``method`` on ``train``, or reuse the run in ``out`` finished with the same settings, data and
    code (``done.json``); an unfinished or different run there is replaced."""
    run = out / "runs" / method
    cfg = PretrainConfig(out_dir=str(run), method=method, encoder="resnet2d18",
                         encoder_kwargs={"width": args.width, "small_input": True},
                         method_kwargs=method_kwargs(method, args), epochs=args.epochs, lr=args.lr, seed=args.seed,
                         device="cpu", progress=False, ckpt_every_min=0)
    key = run_key(cfg, train.fingerprint)
    done = json.loads((run / "done.json").read_text()) if (run / "done.json").exists() else {}
    if done.get("key") == key:
        return run, float(done["pretrain_s"])
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretrain(train, cfg, overwrite=True)
    seconds = time.time() - t0
    (run / "done.json").write_text(json.dumps({"pretrain_s": seconds, "key": key}))
    return run, seconds


# --- the table ----------------------------------------------------------------------------------------------

def table(report) -> tuple[list, list]:
    """``(rows, comparisons)`` of the report as plain dicts: AUROC and accuracy with CIs per row and fraction."""
    rows = [{"encoder": r["encoder"], "fraction": r["fraction"], "train_images": r["train_patients"],
             "repeats": r["repeats"], "n/a": r.get("n/a"),
             **{m: r[m] for m in METRICS}, **{f"{m}_ci": r[f"{m}_ci"] for m in METRICS},
             "untrainable_label_fits": r.get("untrainable_label_fits", 0), "params": r.get("params")}
            for r in report.rows]
    comps = [{"encoder": c["encoder"], "reference": c["reference"], "fraction": c["fraction"], "n/a": c.get("n/a"),
              **{m: c[m] for m in ("auroc", "accuracy")}, **{f"{m}_ci": c[f"{m}_ci"] for m in ("auroc", "accuracy")}}
             for c in report.comparisons]
    return rows, comps


def order(names) -> list:
    first = [n for n in (RANDOM_INIT, SUPERVISED) if n in names]
    return first + [n for n in names if n not in first]


def markdown(res: dict) -> str:
    rows, comps = res["rows"], res["comparisons"]
    fractions = sorted({r["fraction"] for r in rows})
    cell = {(r["encoder"], r["fraction"]): r for r in rows}
    head = " | ".join(f"{what} {100 * f:g} %" for f in fractions for what in ("AUROC", "acc."))
    lines = [f"| encoder | {head} |", "|---" * (1 + 2 * len(fractions)) + "|"]
    for name in order(list(dict.fromkeys(r["encoder"] for r in rows))):
        cells = [fmt(cell[name, f][m], cell[name, f][f"{m}_ci"], cell[name, f]["n/a"])
                 for f in fractions for m in ("auroc", "accuracy")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [f"| {a['name']} (100 % labels, end to end, 100 epochs) | "
              + " | ".join("" if f < 1 else f"{a[m]:.3f}" for f in fractions for m in ("auroc", "accuracy")) + " |"
              for a in res["anchors"]]
    lines += ["", "| comparison | labels | Δ AUROC [95 % CI] | Δ accuracy [95 % CI] |", "|---|---|---|---|"]
    lines += [f"| {c['encoder']} − {c['reference']} | {100 * c['fraction']:g} % | "
              f"{fmt(c['auroc'], c['auroc_ci'], c['n/a'], signed=True)} | "
              f"{fmt(c['accuracy'], c['accuracy_ci'], c['n/a'], signed=True)} |" for c in comps]
    full = [r for r in rows if r["fraction"] == 1.0]
    lines += ["", "| encoder (100 % labels) | AUPRC [95 % CI] | Brier [95 % CI] | ECE [95 % CI] |", "|---|---|---|---|"]
    lines += [f"| {r['encoder']} | " + " | ".join(fmt(r[m], r[f"{m}_ci"], r["n/a"]) for m in ("auprc", "brier", "ece"))
              + " |" for r in sorted(full, key=lambda r: order([x["encoder"] for x in full]).index(r["encoder"]))]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    names = order(list(dict.fromkeys(r["encoder"] for r in rows)))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, m, label in zip(axes, ("auroc", "accuracy"), ("AUROC", "accuracy (threshold 0.5)")):
        for i, name in enumerate(names):
            mine = sorted((r for r in rows if r["encoder"] == name), key=lambda r: r["fraction"])
            x = [100 * r["fraction"] for r in mine]
            style = {RANDOM_INIT: {"color": "black", "ls": "--"}, SUPERVISED: {"color": "0.45", "ls": ":"}}.get(
                name, {"color": plt.get_cmap("tab10")(i), "ls": "-"})
            ax.plot(x, [r[m] for r in mine], marker="o", label=name, **style)
            ax.fill_between(x, [r[f"{m}_ci"][0] for r in mine], [r[f"{m}_ci"][1] for r in mine], alpha=0.12,
                            color=style["color"])
        for a, ls in zip(res["anchors"], ("-.", (0, (1, 3)))):
            ax.axhline(a[m], color="tab:red", ls=ls, lw=1, label=f"{a['name']}, end to end")
        ax.set_xscale("log")
        ax.set_xticks([100 * f for f in sorted({r["fraction"] for r in rows})],
                      [f"{100 * f:g}" for f in sorted({r["fraction"] for r in rows})])
        ax.minorticks_off()
        ax.set_xlabel("labelled training images (%)")
        ax.set_ylabel(f"{label} (95 % CI)")
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize="x-small", loc="lower right")
    fig.suptitle(f"BreastMNIST test split: linear probe on frozen resnet2d18 (width {res['config']['width']}) features")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def code_state() -> dict:
    def git(*a):
        try:
            return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "tscl", "kernels", "loaders",
                                      "benchmarks/bench_breastmnist.py").splitlines()]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "uncommitted": dirty}


def header(res: dict) -> list:
    env, code = res["environment"], res["code"]
    dirty = f"; uncommitted changes: {', '.join(code['uncommitted'])}" if code["uncommitted"] else ""
    pre = ", ".join(f"{m} {s:.0f} s" for m, s in res["pretrain_s"].items())
    return [f"Command: `{res['command']}`", "",
            f"Measured wall time: {res['wall_s'] / 60:.1f} min (pretraining {pre}; evaluation {res['evaluate_s']:.0f} s; "
            f"{res['cpu_s'] / 60:.1f} CPU-min of this process; load average at the end "
            f"{res['load_average_at_end'][1]:.1f}) on {env['device']} (torch {env['torch']}, {env['cpu_capability']} "
            f"CPU kernels, {env['threads']} threads); code at commit {code['commit']}{dirty}.", "",
            f"- data: {res['data']['summary']}", f"- source: {SOURCE}",
            f"- encoder: resnet2d18, width {res['config']['width']}, CIFAR stem (small_input); {augment_notes()}",
            *[f"- {n}" for n in res["notes"]],
            *[f"- anchor {a['name']}: {a['checked']}" for a in res["anchors"]], ""]


# --- main -----------------------------------------------------------------------------------------------------

def parse(argv):
    p = argparse.ArgumentParser(prog="bench_breastmnist.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="breastmnist.npz, or a folder holding one MedMNIST .npz")
    p.add_argument("--out", default="runs/bench_breastmnist")
    p.add_argument("--docs", default=None, help="also write breastmnist.json / _table.md / .png here")
    p.add_argument("--quick", action="store_true", help="tiny budget for the test")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--width", type=float, default=0.25, help="channels of resnet2d18 relative to 64/128/256/512")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--queue", type=int, default=256, help="MoCo's queue: below the training images, so an image's "
                                                          "own older key is rarely among its negatives")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3, help="label subsamples per fraction below 100 %%")
    p.add_argument("--sup-epochs", type=int, default=50)
    p.add_argument("--sup-steps", type=int, default=400)
    p.add_argument("--sup-lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        p.error(f"--methods: {', '.join(unknown) or 'none given'}; choose among {', '.join(METHODS)}")
    small = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
             if k in ("epochs", "batch", "queue", "bootstrap", "repeats", "sup_epochs", "sup_steps")
             and v is not None and v < 1]
    if small or not (args.width > 0 and args.lr > 0 and args.sup_lr > 0):
        p.error(f"{', '.join(small) or '--width, --lr and --sup-lr'}: must be positive")
    if args.quick:
        args.epochs, args.width, args.bootstrap, args.repeats, args.sup_epochs, args.sup_steps = 1, 0.125, 50, 1, 2, 4
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        data = open_dataset("medmnist", args.root, progress=False)
        train = data.split("train")
    except (OSError, ValueError, LoaderError) as err:  # one line naming the file and what is wrong with it
        print(f"bench_breastmnist.py: error: {err}", file=sys.stderr)
        return 2
    counts = check_hidden(data, train)
    runs, seconds = [], {}
    for method in args.methods:
        run, seconds[method] = pretrain_once(train, method, args, out)
        check_run(run, data)
        runs.append(run)
        print(f"{method}: pretrained in {seconds[method]:.0f} s", flush=True)
    t1 = time.time()
    spec = EvalSpec(dataset="medmnist", root=args.root, labels=["label"], encoders=[str(r) for r in runs],
                    supervised=True, supervised_kwargs={"epochs": args.sup_epochs, "max_steps": args.sup_steps,
                                                        "lr": args.sup_lr},
                    fractions=FRACTIONS, repeats=args.repeats, n_boot=args.bootstrap, seed=args.seed, metrics=METRICS)
    report = evaluate(spec)
    check_report(report, counts)
    report.write(out / "report")
    rows, comps = table(report)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    res = {"benchmark": "breastmnist", "command": os.environ.get("TSCL_BENCH_COMMAND")
           or "python benchmarks/bench_breastmnist.py " + " ".join(argv),
           "config": {k: v for k, v in vars(args).items()}, "augment": AUGMENT, "split_images": counts,
           "data": report.data, "notes": report.notes, "rows": rows, "comparisons": comps, "anchors": ANCHORS,
           "pretrain_s": seconds, "evaluate_s": time.time() - t1, "wall_s": time.time() - t0,
           "cpu_s": ru.ru_utime + ru.ru_stime, "load_average_at_end": os.getloadavg(),
           "environment": environment(torch.device("cpu")), "code": code_state()}
    md = "\n".join(header(res)) + "\n" + markdown(res) + "\n"
    (out / "breastmnist.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "breastmnist_table.md").write_text(md)
    plot(res, out / "breastmnist.png")
    if args.docs:
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        for name in ("breastmnist.json", "breastmnist_table.md", "breastmnist.png"):
            (docs / name).write_bytes((out / name).read_bytes())
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
