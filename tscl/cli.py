"""``tscl`` command line: simulate, pretrain, embed, probe, demo."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

DEFAULT_LABELS = ("lvh", "bbb", "af", "tachy", "brady", "mace")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _kwargs(text: str) -> dict:
    """``width=0.25,widths=[8,16]`` -> {'width': 0.25, 'widths': [8, 16]} (values parsed as JSON when possible)."""
    import re

    out = {}
    for item in filter(None, re.split(r",(?![^\[]*\])", text)):
        key, _, value = item.partition("=")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _encoder_kwargs(args) -> dict:
    """``--encoder-kwargs`` parsed; unset, the CPU-sized resnet1d (width 0.25) or the encoder's defaults."""
    if args.encoder_kwargs is None:
        return {"width": 0.25} if args.encoder == "resnet1d" else {}
    return _kwargs(args.encoder_kwargs)


def cmd_simulate(args) -> Path:
    from tscl.simulate import CohortConfig, write_cohort

    meta = write_cohort(args.out, CohortConfig(n_patients=args.patients, seed=args.seed), progress=not args.quiet)
    print(f"wrote {meta}")
    return meta


def _load(args):
    from tscl.loaders import load_wfdb_cohort

    return load_wfdb_cohort(args.data, args.metadata, progress=not args.quiet)


def cmd_pretrain(args) -> Path:
    from tscl.distributed import init_distributed, rank, rank_zero_first
    from tscl.train import PretrainConfig, load_config, pretrain

    if not (args.out or args.resume):
        raise SystemExit("tscl pretrain: give --out RUN_DIR (new run) or --resume RUN_DIR")
    init_distributed(args.device)  # under torchrun: join the other ranks before touching the cache
    with rank_zero_first():
        cache = _load(args)
    if args.resume:  # the saved config, so the schedule and the data order match the killed run
        cfg = load_config(args.resume)
        cfg.out_dir, cfg.resume, cfg.device, cfg.progress = args.resume, True, args.device, not args.quiet
    else:
        cfg = PretrainConfig(
            out_dir=args.out, method=args.method, encoder=args.encoder, encoder_kwargs=_encoder_kwargs(args),
            method_kwargs={**_kwargs(args.method_kwargs), **({"augment": args.augment} if args.augment else {})}, epochs=args.epochs, lr=args.lr, seed=args.seed,
            device=args.device, progress=not args.quiet, compile=args.compile,
        )
    if args.ckpt_every is not None:
        cfg.ckpt_every = args.ckpt_every
    run = pretrain(cache, cfg)
    if rank() == 0:  # under torchrun the other ranks trained the same run folder
        print(f"pretrained encoder in {run}")
    return run


def cmd_embed(args) -> Path:
    from tscl.embed import embed_signals
    from tscl.train import load_encoder

    cache = _load(args)
    encoder = load_encoder(args.run, random_init=args.random_init, seed=args.seed)
    feats = embed_signals(encoder, cache.stack(), progress=not args.quiet)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, features=feats, record_id=np.array(cache.index["record_id"].to_list()))
    print(f"wrote {feats.shape} features to {out}")
    return out


def _probe_report(cache, features: dict, labels, out: Path, fractions, reference, n_boot, seed, quiet=False):
    from tscl.plots import plot_label_efficiency
    from tscl.probes import run_probe

    missing = [lab for lab in labels if lab not in cache.index.columns]
    if missing:
        raise SystemExit(f"label column(s) {missing} not in the cohort metadata; available: {cache.label_columns}")
    Y = cache.index.select(labels).to_numpy()
    result = run_probe(features, Y, list(labels), cache.index["patient_id"].to_numpy(), fractions=fractions,
                       reference=reference, n_boot=n_boot, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(result.to_json())
    table = result.to_markdown()
    (out / "probe.md").write_text(f"# Linear probe, macro AUROC over {', '.join(labels)}\n\n{table}\n")
    plot_label_efficiency(result.rows, out / "label_efficiency.png", title="linear probe")
    return result, table


def cmd_probe(args):
    cache = _load(args)
    ids = cache.index["record_id"].to_list()
    features = {}
    for path in args.embeddings:
        z = np.load(path)
        if z["record_id"].tolist() != ids:
            raise SystemExit(f"{path}: embeddings are not aligned with the cohort's records (re-run tscl embed)")
        features[Path(path).stem] = z["features"]
    result, table = _probe_report(cache, features, args.labels.split(","), Path(args.out), _floats(args.fractions),
                                  args.reference, args.bootstrap, args.seed)
    print(table)
    return result


def cmd_demo(args):
    """Simulate the default cohort, pretrain PCLR, report it against random-init and supervised baselines."""
    from tscl.loaders import load_wfdb_cohort
    from tscl.simulate import CohortConfig, write_cohort
    from tscl.tasks import write_report
    from tscl.train import PretrainConfig, pretrain

    t0 = time.time()
    out = Path(args.out)
    data = out / "cohort"
    if not (data / "metadata.csv").exists():
        write_cohort(data, CohortConfig(n_patients=args.patients, seed=args.seed), progress=not args.quiet)
    cache = load_wfdb_cohort(data, progress=not args.quiet)
    n_pat = cache.index["patient_id"].n_unique()
    print(f"cohort: {len(cache)} recordings of {n_pat} patients, {cache.index['n_channels'][0]} leads, "
          f"{cache.index['fs'][0]:g} Hz  ({data})")
    cfg = PretrainConfig(out_dir=str(out / "pclr"), method="pclr", encoder=args.encoder,
                         encoder_kwargs=_encoder_kwargs(args),
                         method_kwargs={"patients_per_batch": args.batch_patients}, epochs=args.epochs, lr=args.lr,
                         seed=args.seed, device=args.device, progress=not args.quiet)
    t_pre = time.time()
    run = pretrain(cache, cfg)
    print(f"pretrained {run} in {time.time() - t_pre:.0f} s")
    t_rep = time.time()
    print("\nprobing: PCLR and random-init (frozen features, linear probe) and the same encoder trained "
          "from scratch on the labels (supervised baseline)", flush=True)
    report = write_report(["sim-risk"], data, out / "report", run=run, fractions=_floats(args.fractions),
                          n_boot=args.bootstrap, seed=args.seed, supervised=not args.no_supervised,
                          progress=not args.quiet)
    payload = json.loads((report / "report.json").read_text())["sim-risk"]
    eff = payload.get("label_efficiency")
    if eff is not None:
        from tscl.probes.linear import ProbeResult

        result = ProbeResult(labels=eff["labels"], rows=eff["rows"], comparisons=eff["comparisons"], split=eff["split"])
        s = result.split
        print(f"\nmacro AUROC over {', '.join(result.labels)} [95 % patient-level bootstrap CI]\n"
              f"test: {s['test_records']} recordings of {s['test_patients']} patients; "
              f"train pool: {s['train_patients']} patients\n")
        print(result.to_markdown())
    print(f"\nreport: {report / 'summary.md'} (AUROC/AUPRC/Brier/ECE, audit, label-efficiency, reliability and "
          f"embedding plots); run: {run}")
    print(f"report written in {time.time() - t_rep:.0f} s; demo finished in {time.time() - t0:.0f} s")
    return payload


def cmd_task(args):
    """``task list`` or ``task run NAME``: embed, probe and audit a named task."""
    from tscl.tasks import TASKS, run_task

    if args.action == "list":
        for name, task in TASKS.items():
            print(f"{name:20s} {task.kind:10s} {task.description}")
        return None
    if not args.name or not args.data:
        raise SystemExit("tscl task run: give NAME and --data ROOT")
    tr = run_task(args.name, args.data, run=args.run, cache_dir=args.cache, probe=args.probe, n_boot=args.bootstrap,
                  seed=args.seed, supervised=not args.no_supervised, progress=not args.quiet)
    text = tr.to_markdown()
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.name}.md").write_text(text + "\n")
        (out / f"{args.name}.json").write_text(tr.to_json())
    return tr


def cmd_report(args):
    """Run named tasks and write a report folder (Markdown, JSON, figures)."""
    from tscl.tasks import write_report

    out = write_report(args.tasks.split(","), args.data, args.out, run=args.run, cache_dir=args.cache,
                       probe=args.probe, fractions=_floats(args.fractions), n_boot=args.bootstrap, seed=args.seed,
                       supervised=not args.no_supervised, progress=not args.quiet)
    print(f"report: {out / 'summary.md'}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tscl", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, data=True):
        if data:
            sp.add_argument("--data", required=True, help="cohort folder (WFDB records + metadata table)")
            sp.add_argument("--metadata", default=None, help="metadata table (default: <data>/metadata.csv)")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    def training(sp):
        sp.add_argument("--encoder", default="resnet1d")
        sp.add_argument("--encoder-kwargs", default=None,
                        help="e.g. width=0.5 (default: width=0.25 for resnet1d, the encoder's own defaults otherwise)")
        sp.add_argument("--epochs", type=int, default=40)
        sp.add_argument("--lr", type=float, default=3e-3)
        sp.add_argument("--device", default="auto")

    sp = sub.add_parser("simulate", help="write the simulated ECG cohort as WFDB records")
    sp.add_argument("--out", required=True)
    sp.add_argument("--patients", type=int, default=500)
    common(sp, data=False)
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("pretrain", help="contrastive pretraining on a cohort")
    common(sp)
    training(sp)
    sp.add_argument("--method", default="pclr")
    sp.add_argument("--method-kwargs", default="", help="e.g. patients_per_batch=64,temperature=0.1")
    sp.add_argument("--augment", default=None,
                    help='augmentation pipeline, e.g. "noise:snr=20,scale,wander,crop:len=800" or "none" '
                         "(default: the method's own)")
    sp.add_argument("--out", default=None, help="run folder")
    sp.add_argument("--resume", default=None, metavar="RUN_DIR",
                    help="continue a run from its checkpoint (its config.json; training options are ignored)")
    sp.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    sp.add_argument("--ckpt-every", type=int, default=None, help="steps between checkpoints (default 500; 0: end only)")
    sp.set_defaults(func=cmd_pretrain)

    sp = sub.add_parser("embed", help="frozen features of a run's encoder")
    common(sp)
    sp.add_argument("--run", required=True)
    sp.add_argument("--random-init", action="store_true", help="same architecture, untrained weights")
    sp.add_argument("--out", required=True, help=".npz file")
    sp.set_defaults(func=cmd_embed)

    sp = sub.add_parser("probe", help="linear probes with patient-level splits and bootstrap CIs")
    common(sp)
    sp.add_argument("--embeddings", nargs="+", required=True, help=".npz files from tscl embed")
    sp.add_argument("--labels", default=",".join(DEFAULT_LABELS))
    sp.add_argument("--fractions", default="0.01,0.1,1")
    sp.add_argument("--reference", default=None, help="embedding name the others are compared against")
    sp.add_argument("--bootstrap", type=int, default=1000)
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_probe)

    sp = sub.add_parser("demo", help="simulate -> PCLR pretraining -> report vs random-init and supervised baselines")
    common(sp, data=False)
    training(sp)
    sp.add_argument("--out", default="runs/demo")
    sp.add_argument("--patients", type=int, default=500)
    sp.add_argument("--batch-patients", type=int, default=32)
    sp.add_argument("--no-supervised", action="store_true", help="skip the supervised-from-scratch baseline")
    sp.add_argument("--fractions", default="0.01,0.1,1")
    sp.add_argument("--bootstrap", type=int, default=1000)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("task", help="named downstream tasks on real data: list, or run NAME (probe + audit)")
    sp.add_argument("action", choices=["list", "run"])
    sp.add_argument("name", nargs="?", default=None)
    sp.add_argument("--data", default=None, help="data root holding ptbxl/, physionet/, meds_demo/")
    sp.add_argument("--run", default=None, help="run folder whose encoder embeds waveforms (default: random-init resnet1d)")
    sp.add_argument("--probe", default="linear", choices=["linear", "knn", "mlp"])
    sp.add_argument("--bootstrap", type=int, default=1000)
    sp.add_argument("--cache", default=None, help="cache folder (default ~/.cache/tscl/tasks)")
    sp.add_argument("--out", default=None, help="folder for <task>.md and <task>.json")
    sp.add_argument("--no-supervised", action="store_true", help="skip the supervised-from-scratch baseline")
    common(sp, data=False)
    sp.set_defaults(func=cmd_task)

    sp = sub.add_parser("report", help="run named tasks; write summary.md, report.json and figures")
    sp.add_argument("--tasks", required=True, help="comma-separated task names (tscl task list)")
    sp.add_argument("--data", required=True, help="data root holding ptbxl/, physionet/, meds_demo/")
    sp.add_argument("--run", default=None, help="run folder whose encoder embeds waveforms (default: random-init resnet1d)")
    sp.add_argument("--probe", default="linear", choices=["linear", "knn", "mlp"])
    sp.add_argument("--fractions", default="0.1,0.5,1")
    sp.add_argument("--bootstrap", type=int, default=500)
    sp.add_argument("--cache", default=None, help="cache folder (default ~/.cache/tscl/tasks)")
    sp.add_argument("--no-supervised", action="store_true", help="skip the supervised-from-scratch baseline")
    sp.add_argument("--out", required=True)
    common(sp, data=False)
    sp.set_defaults(func=cmd_report)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from tscl.loaders import LoaderError

    try:
        args.func(args)
    except LoaderError as err:
        print(f"tscl: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
