"""``tscl`` command line: parses options and calls one library function per command.

Nothing heavy is imported before a command runs: the parser reads only the standard library and tscl's
stdlib-only :mod:`tscl.catalog` (the names), :mod:`tscl.config` (the defaults, shared with Python) and
:mod:`tscl.grammar` (the option grammars and :class:`~tscl.grammar.UsageError`). Every refusal is one
line on stderr and exit status 2; Ctrl-C or SIGTERM says what was kept (exit 130 / 143).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings

from tscl import catalog
from tscl.config import DemoConfig, EvalDefaults, PretrainConfig, defaults
from tscl.grammar import UsageError, parse_floats, parse_ints, parse_kwargs

_PRETRAIN, _DEMO, _EVAL = defaults(PretrainConfig), defaults(DemoConfig), defaults(EvalDefaults)
_DATA_KEYS = ("dataset", "root", "data", "metadata", "dataset_kwargs", "cache")


def _data(a) -> dict:
    """The data options of a command, as the keywords of :func:`tscl.datasets.spec.data_spec`."""
    return {k: getattr(a, k, None) for k in _DATA_KEYS}


def _fractions(text: str) -> list[float]:
    return parse_floats(text, "--fractions", low=0, high=1)


# ---- the commands: each calls one library function ------------------------------------------------------

def cmd_simulate(a):
    from tscl.simulate import simulate

    print(f"wrote {simulate(a.out, a.kind, a.patients, a.seed, progress=not a.quiet)}")


def cmd_datasets(a):
    from tscl.datasets.spec import describe_sources

    print(describe_sources())


def cmd_inspect(a):
    from tscl.datasets.spec import inspect_roots

    return inspect_roots(a.dataset, [*(a.root or []), *(a.data or [])], out=a.out, payload=a.payload,
                         metadata=a.metadata, dataset_kwargs=a.dataset_kwargs, split=a.split, cache=a.cache)


def cmd_pretrain(a):
    from tscl.launch import launch

    keys = ("out", "resume", "config", "overwrite", "split", "method", "encoder", "encoder_kwargs", "method_kwargs",
            "augment", "epochs", "lr", "seed", "device", "compile", "ckpt_every", "ckpt_every_min", *_DATA_KEYS)
    launch(**{k: getattr(a, k) for k in keys}, progress=not a.quiet, given=a.given)


def cmd_export(a):
    from tscl.datasets.spec import export

    export(a.out, shard_size=a.shard_size, split=a.split, seed=a.seed, progress=not a.quiet, **_data(a))


def cmd_embed(a):
    from tscl.embed import embed_run

    embed_run(a.run, a.out, split=a.split, tower=a.tower, random_init=a.random_init, seed=a.seed,
              progress=not a.quiet, **_data(a))


def _eval_spec(a, **fixed):
    """The evaluation the options describe (:class:`tscl.probes.EvalSpec`); ``fixed`` overrides them."""
    from tscl.probes import EvalSpec

    dataset, root = getattr(a, "dataset", None), getattr(a, "root", None)
    task = fixed.get("task", getattr(a, "task", None))
    if getattr(a, "data", None) and not root:  # --data FOLDER: a WFDB folder, as everywhere, or the task's source's
        dataset, root = dataset or (None if task else "wfdb"), a.data
    options = parse_kwargs(getattr(a, "dataset_kwargs", None), "--dataset-kwargs")
    if getattr(a, "metadata", None):
        options["metadata"] = a.metadata
    given = {"dataset": dataset, "root": root, "dataset_kwargs": options, "task": getattr(a, "task", None),
             "labels": a.labels.split(",") if getattr(a, "labels", None) else None,
             "encoders": list(getattr(a, "encoders", None) or []), "probe": a.probe,
             "fractions": tuple(_fractions(a.fractions)) if getattr(a, "fractions", None) else _EVAL["fractions"],
             "repeats": getattr(a, "repeats", _EVAL["repeats"]), "n_boot": a.bootstrap, "seed": a.seed,
             "cache": a.cache, "allow_test_overlap": a.allow_test_overlap, "split": getattr(a, "split", None),
             "random_init": not getattr(a, "no_random_init", False), "supervised": getattr(a, "supervised", False),
             "finetune": getattr(a, "finetune", None) or False, "reference": getattr(a, "reference", _EVAL["reference"]),
             "test_dataset": getattr(a, "test_dataset", None), "test_root": getattr(a, "test_root", None),
             "test_dataset_kwargs": parse_kwargs(getattr(a, "test_dataset_kwargs", None), "--test-dataset-kwargs"),
             "test_split": getattr(a, "test_split", _EVAL["test_split"]), "audit": getattr(a, "audit", False),
             "progress": not a.quiet}
    spec = {**given, **fixed}
    if not spec["task"] and not spec["labels"]:
        raise UsageError("give the labels to probe: --labels COLUMNS, or --task NAME (tscl task list)")
    return EvalSpec(**spec)


def cmd_probe(a):
    from tscl.probes import evaluate

    report = evaluate(_eval_spec(a))
    print(report.to_markdown())
    if a.out:
        report.write(a.out, stem="probe")


def _print_many(reports: dict, out) -> None:
    for report in reports.values():
        print(report.to_markdown() + "\n")
    if out:
        print(f"report: {out}/summary.md")


def cmd_retrieval(a):
    from tscl.probes.retrieval import retrieval

    report = retrieval(a.run, ks=parse_ints(a.k, "--k"), n_boot=a.bootstrap, seed=a.seed, split=a.split,
                       allow_test_overlap=a.allow_test_overlap, progress=not a.quiet, **_data(a))
    print(report.to_markdown())
    if a.out:
        report.write(a.out)


def cmd_demo(a):
    from tscl.demo import run_demo

    run_demo(DemoConfig(out=a.out, patients=a.patients, batch_patients=a.batch_patients, encoder=a.encoder,
                        encoder_kwargs=_encoder_kwargs(a.encoder_kwargs), epochs=a.epochs, lr=a.lr,
                        fractions=tuple(_fractions(a.fractions)), n_boot=a.bootstrap, supervised=not a.no_supervised,
                        seed=a.seed, device=_device(a.device), progress=not a.quiet))


def _encoder_kwargs(text):
    return None if text is None else parse_kwargs(text, "--encoder-kwargs")


def _device(text: str) -> str:
    from tscl.launch import check_device

    return check_device(text)


def cmd_mimic_probe(a):  # the old name of: tscl probe --task mimic-<label> (per label) --root ROOT
    from tscl.probes.many import evaluate_many

    specs = {label: _eval_spec(a, task=f"mimic-{label.replace('_', '-')}", encoders=[a.run] if a.run else [],
                               fractions=(1.0,)) for label in a.labels.split(",")}
    _print_many(evaluate_many(specs, a.out, key="labels", json_name="mimic_probe.json"), a.out)


def cmd_task(a):  # the old name of: tscl probe --task NAME --root ROOT --supervised --audit --fractions 1
    from tscl.probes import evaluate
    from tscl.tasks import list_tasks

    if a.action == "list":
        print("\n".join(f"{t.name:22s} {t.source:10s} {t.kind:10s} {t.description}" for t in list_tasks()))
        return
    if not a.name or not a.data:
        raise UsageError("task run: give NAME and --data ROOT (the task's source folder)")
    report = evaluate(_eval_spec(a, task=a.name, root=a.data, encoders=[a.run] if a.run else [], fractions=(1.0,),
                                 supervised=not a.no_supervised, audit=True))
    print(report.to_markdown())
    if a.out:
        report.write(a.out, stem=a.name)


def cmd_report(a):  # the old name of: tscl probe --task NAME --root ROOT --supervised --audit, for each task
    from tscl.probes.many import evaluate_many

    specs = {name: _eval_spec(a, task=name, root=a.data, encoders=[a.run] if a.run else [],
                              supervised=not a.no_supervised, audit=True) for name in a.tasks.split(",")}
    _print_many(evaluate_many(specs, a.out), a.out)


# ---- the parser ----------------------------------------------------------------------------------------

class _Help(argparse.RawDescriptionHelpFormatter):
    """Each option's default said once: appended as "(default: X)" unless its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        empty = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or empty or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".strip()


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v

    parse.__name__ = f"integer >= {low}"
    return parse


def _float_above(low: float, strict: bool):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if v != v or v in (float("inf"), float("-inf")) or v < low or strict and v == low:
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if strict else '>='} {low:g}, got {text}")
        return v

    parse.__name__ = "number"
    return parse


_positive_int, _nonneg_int = _int_at_least(1), _int_at_least(0)
_positive_float, _nonneg_float = _float_above(0, strict=True), _float_above(0, strict=False)


def _names(kind: str) -> str:
    return ", ".join(catalog.builtin_names(kind))


def _parents() -> dict:
    """The option groups several commands share, each defined once."""
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--seed", type=int, default=_PRETRAIN["seed"], help="random seed (data order, weights, draws)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--dataset", default=None, metavar="NAME",
                      help=f"dataset source: {_names('sources')}, an installed plugin's name or module:function "
                           "(tscl datasets describes them; default wfdb when --data is given)")
    data.add_argument("--root", default=None, help="the dataset's folder, as its publisher lays it out")
    data.add_argument("--data", default=None, help="shorthand for --dataset wfdb --root FOLDER (WFDB records + "
                                                   "metadata table)")
    data.add_argument("--metadata", default=None, help="wfdb: metadata table (default: <root>/metadata.csv)")
    data.add_argument("--dataset-kwargs", default=None, metavar="K=V,...", help="source options (tscl datasets)")
    data.add_argument("--cache", default=None, help="cache folder (default: $TSCL_CACHE or ~/.cache/tscl)")
    data.add_argument("--workers", type=_nonneg_int, default=None,
                      help="processes that build a cache's shards (default: every core for 1,024 records or more)")
    data.add_argument("--verify", action="store_true",
                      help="re-hash every source file and every cache file instead of trusting their stats")
    data.add_argument("--shard-mb", type=_positive_int, default=1024, help="target size of a cache shard in MiB")

    training = argparse.ArgumentParser(add_help=False)
    modal = ", ".join(f"{m}: {e}" for m, e in catalog.DEFAULT_ENCODER.items() if m != "tabular")
    training.add_argument("--encoder", default=None,
                          help=f"{_names('encoders')}, an installed plugin's name or module:Name (default: the "
                               f"dataset modality's, {modal})")
    training.add_argument("--encoder-kwargs", default=None, metavar="K=V,...",
                          help="e.g. width=0.5 (default: the encoder's own, e.g. width=0.25 for resnet1d)")
    training.add_argument("--epochs", type=_positive_int, default=_PRETRAIN["epochs"],
                          help="passes over the training rows")
    training.add_argument("--lr", type=_positive_float, default=_PRETRAIN["lr"],
                          help="peak learning rate (AdamW; linear warm-up, then cosine decay)")
    training.add_argument("--device", default=_PRETRAIN["device"], help="auto, cpu, cuda or cuda:N")

    bootstrap = argparse.ArgumentParser(add_help=False)
    bootstrap.add_argument("--bootstrap", type=_positive_int, default=_DEMO["n_boot"],
                           help="patient-level bootstrap resamples for the 95 %% CIs")
    evaluation = argparse.ArgumentParser(add_help=False, parents=[bootstrap])
    evaluation.add_argument("--allow-test-overlap", action="store_true",
                            help="evaluate even when an encoder was pretrained on some of the test patients")
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--probe", default=_EVAL["probe"], choices=["linear", "knn", "mlp"],
                       help="the model fitted on frozen features (ridge for regression targets)")
    return {"run": run, "data": data, "training": training, "bootstrap": bootstrap, "evaluation": evaluation,
            "probe": probe}


def _add_pretrain(sub, fmt, p: dict) -> None:
    sp = sub.add_parser("pretrain", help="contrastive pretraining on a dataset", formatter_class=fmt,
                        parents=[p["data"], p["run"], p["training"]])
    sp.add_argument("--split", default=None, help="rows to pretrain on: train (the source's default), train+val, all, "
                                                  "folds:1-8")
    sp.add_argument("--method", default=_PRETRAIN["method"],
                    help=f"{_names('methods')}, an installed plugin's name or module:Name")
    sp.add_argument("--method-kwargs", default=None, metavar="K=V,...", help="e.g. patients_per_batch=64,temperature=0.1")
    sp.add_argument("--augment", default=None,
                    help='augmentation pipeline, e.g. "noise:snr=20,scale,wander,crop:len=800" or "none" '
                         "(default: the method's own for the dataset's modality)")
    sp.add_argument("--out", default=None, help="run folder")
    sp.add_argument("--resume", default=None, metavar="RUN_DIR",
                    help="continue a run from its checkpoint with its own config.json (options that contradict it are "
                         "refused; --root/--data give the data's new place if it moved: its content must be the same)")
    sp.add_argument("--config", default=None, metavar="RUN_DIR/config.json",
                    help="make a run from a config file (checked key by key; into --out, default the file's out_dir)")
    sp.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    sp.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    sp.add_argument("--ckpt-every", type=_nonneg_int, default=None,
                    help=f"steps between checkpoints (default {_PRETRAIN['ckpt_every']}; 0: none by step count). "
                         "Checkpoints are also written at the end of every epoch, on Ctrl-C / SIGTERM and at the end")
    sp.add_argument("--checkpoint-every-min", dest="ckpt_every_min", type=_nonneg_float, default=None, metavar="MIN",
                    help=f"minutes of wall time between checkpoints (default {_PRETRAIN['ckpt_every_min']:g}; 0: none "
                         "by time)")
    sp.set_defaults(func=cmd_pretrain)


def _add_evaluation(sub, fmt, p: dict) -> None:
    sp = sub.add_parser("embed", help="frozen features of a run's encoder, as .npz or .parquet", formatter_class=fmt,
                        parents=[p["data"], p["run"]])
    sp.add_argument("--split", default=None, help="rows to embed (default all)")
    sp.add_argument("--run", required=True, help="the run folder whose encoder embeds")
    sp.add_argument("--tower", default=None, help="clip runs: the tower to embed with (a or b, or its modality)")
    sp.add_argument("--random-init", action="store_true", help="same architecture, untrained weights")
    sp.add_argument("--out", required=True, help="embeddings file: .npz (NumPy) or .parquet (polars, pandas), "
                                                 "written under exactly this name")
    sp.set_defaults(func=cmd_embed)

    sp = sub.add_parser("probe", help="the evaluation: probes of encoders beside random init (and supervised, "
                        "fine-tuned) rows, patient-level splits and bootstrap CIs, external validation",
                        formatter_class=fmt, parents=[p["data"], p["run"], p["evaluation"], p["probe"]])
    sp.add_argument("--task", default=None, metavar="NAME", help="a named task (tscl task list): its source, labels, "
                                                                 "rows and split; --root gives its folder")
    sp.add_argument("--encoders", "--embeddings", nargs="+", default=None, metavar="PATH",
                    help="run folders and/or embeddings files (.npz, .parquet from tscl embed), one row each")
    sp.add_argument("--labels", default=None, help="comma-separated label columns (col, col=value, prefix*; default: "
                                                   "the task's)")
    sp.add_argument("--split", default=None, choices=["dataset", "random"],
                    help="dataset: the source's own split (default; a task's split when given); random: a "
                         "patient-level split of 30 %% of the patients, for samples whose split has no test side")
    sp.add_argument("--fractions", default=",".join(f"{f:g}" for f in _EVAL["fractions"]),
                    help="fractions of the training patients' labels")
    sp.add_argument("--repeats", type=_positive_int, default=_EVAL["repeats"],
                    help="subsamples of the training patients per fraction below 100 %%")
    sp.add_argument("--no-random-init", action="store_true", help="leave out the random-init row (the reference of "
                                                                  "every comparison by default)")
    sp.add_argument("--supervised", action="store_true", help="add the same architecture trained from scratch on the "
                                                              "labels")
    sp.add_argument("--finetune", nargs="?", const=True, default=None, metavar="RUN",
                    help="add a run's encoder trained end to end on the labels (default: the first run)")
    sp.add_argument("--reference", default=_EVAL["reference"], help="the row every other row is compared with")
    sp.add_argument("--test-dataset", default=None, metavar="NAME",
                    help="external validation: train the probes here, test them also on this source")
    sp.add_argument("--test-root", default=None, help="external validation: the second dataset's folder")
    sp.add_argument("--test-dataset-kwargs", default=None, metavar="K=V,...", help="the second dataset's options")
    sp.add_argument("--test-split", default=_EVAL["test_split"], choices=["test", "all"],
                    help="the second dataset's rows to test on")
    sp.add_argument("--audit", action="store_true", help="the representation audit and its embedding maps")
    sp.add_argument("--out", default=None, help="folder for probe.md, probe.json and the figures")
    sp.set_defaults(func=cmd_probe)

    sp = sub.add_parser("retrieval", help="held-out recall@k of a clip run, both ways, with patient-level CIs",
                        formatter_class=fmt, parents=[p["data"], p["run"], p["evaluation"]])
    sp.add_argument("--split", default=None, help="rows to retrieve among (default test)")
    sp.add_argument("--run", required=True, help="a clip run folder")
    sp.add_argument("--k", default="1,5,10", help="the k of recall@k, comma-separated")
    sp.add_argument("--out", default=None, help="folder for retrieval.md and retrieval.json")
    sp.set_defaults(func=cmd_retrieval)


def _add_aliases(sub, fmt, p: dict) -> None:
    """The evaluation's old command names, kept for a release as aliases of tscl probe."""
    old = "(old name, kept for a release: "
    tasks = argparse.ArgumentParser(add_help=False)
    tasks.add_argument("--run", default=None, help="run folder whose encoder embeds the data (default: the modality's "
                                                   "default architecture, untrained)")
    tasks.add_argument("--cache", default=None, help="cache folder (default: $TSCL_CACHE or ~/.cache/tscl)")
    tasks.add_argument("--no-supervised", action="store_true", help="skip the supervised-from-scratch baseline")

    sp = sub.add_parser("mimic-probe", help=f"{old}tscl probe --task mimic-LABEL per label) a run's EHR encoder on "
                        "MIMIC-IV admissions at admission + 24 h beside random init and the tabular baseline",
                        formatter_class=fmt, parents=[p["run"], p["evaluation"], p["probe"]])
    sp.add_argument("--root", required=True, help="MIMIC-IV folder (hosp/, icu/ CSVs)")
    sp.add_argument("--run", default=None, help="run folder pretrained on the mimic-iv source (default: random init only)")
    sp.add_argument("--labels", default="mortality,long_stay,readmission", help="outcomes to probe")
    sp.add_argument("--cache", default=None, help="cache folder (default: $TSCL_CACHE or ~/.cache/tscl)")
    sp.add_argument("--out", default=None, help="folder for a report per label, summary.md and mimic_probe.json")
    sp.set_defaults(func=cmd_mimic_probe)

    sp = sub.add_parser("task", help=f"named downstream tasks: list, or run NAME {old}tscl probe --task NAME "
                        "--supervised --audit --fractions 1)", formatter_class=fmt,
                        parents=[tasks, p["run"], p["evaluation"], p["probe"]])
    sp.add_argument("action", choices=["list", "run"], help="list the tasks, or run one")
    sp.add_argument("name", nargs="?", default=None, help="the task to run (tscl task list)")
    sp.add_argument("--data", default=None, help="the task's source folder (tscl task list names the source)")
    sp.add_argument("--out", default=None, help="folder for <task>.md, <task>.json and the figures")
    sp.set_defaults(func=cmd_task)

    sp = sub.add_parser("report", help=f"{old}tscl probe --task NAME --supervised --audit, per task) named tasks on "
                        "one folder: a report per task and summary.md", formatter_class=fmt,
                        parents=[tasks, p["run"], p["evaluation"], p["probe"]])
    sp.add_argument("--tasks", required=True, help="comma-separated task names (tscl task list)")
    sp.add_argument("--data", required=True, help="the tasks' source folder")
    sp.add_argument("--fractions", default="0.1,0.5,1", help="fractions of the training patients' labels")
    sp.add_argument("--out", required=True, help="folder for a report per task, summary.md and report.json")
    sp.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    fmt = _Help
    p = argparse.ArgumentParser(
        prog="tscl", formatter_class=fmt, description=__doc__.split("\n\n")[0],
        epilog=f"datasets: {_names('sources')}\nencoders: {_names('encoders')}\nmethods:  {_names('methods')}\n"
               "(plus installed plugins: entry points of groups tscl.sources, tscl.encoders, tscl.methods; or "
               "module:Name)\n`tscl COMMAND --help` lists a command's options and their defaults.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = _parents()

    sp = sub.add_parser("simulate", help="write a simulated patient-structured cohort: ECGs (WFDB) or images",
                        formatter_class=fmt, parents=[parents["run"]])
    sp.add_argument("--out", required=True, help="folder to write")
    sp.add_argument("--kind", default="ecg", choices=["ecg", "images"],
                    help="ecg: 12-lead WFDB records + metadata.csv (--dataset wfdb); images: 64x64 films + labels.csv "
                         "(--dataset images)")
    sp.add_argument("--patients", type=_positive_int, default=_DEMO["patients"], help="patients to simulate")
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("datasets", help="list the dataset sources and what each needs on disk", formatter_class=fmt)
    sp.set_defaults(func=cmd_datasets)

    sp = sub.add_parser("inspect", help="open a dataset source at one or more roots and print what it reads and "
                        "leaves out", formatter_class=fmt)
    sp.add_argument("--dataset", default=None, metavar="NAME", help=f"dataset source: {_names('sources')} (default "
                                                                    "wfdb)")
    sp.add_argument("--root", action="append", help="a dataset folder (repeat for several)")
    sp.add_argument("--data", action="append", help="shorthand for --dataset wfdb --root FOLDER")
    sp.add_argument("--metadata", default=None, help="wfdb: metadata table (default: <root>/metadata.csv)")
    sp.add_argument("--dataset-kwargs", default=None, metavar="K=V,...", help="source options (tscl datasets)")
    sp.add_argument("--split", default=None, help="rows to read: all (default), train, train+val, folds:1-8")
    sp.add_argument("--cache", default=None, help="cache folder (default: $TSCL_CACHE or ~/.cache/tscl)")
    sp.add_argument("--out", default=None, help="write each root's summary (index rows, notes) as JSON here")
    sp.add_argument("--payload", action="store_true", help="with --out: every item's payload too (waveforms and "
                                                             "images as OUT.<k>.npy beside it, k the root's position)")
    sp.set_defaults(func=cmd_inspect)

    _add_pretrain(sub, fmt, parents)

    sp = sub.add_parser("export", help="write a dataset as WebDataset tar shards for streamed pretraining "
                        "(tscl pretrain --dataset webdataset --root DIR)", formatter_class=fmt,
                        parents=[parents["data"], parents["run"]])
    sp.add_argument("--split", default=None, help="rows to export (default all)")
    sp.add_argument("--format", default="webdataset", choices=["webdataset"], help="the shards' format")
    sp.add_argument("--shard-size", default="256MB", help="target shard size (bytes, or KB/MB/GB)")
    sp.add_argument("--out", required=True, help="new folder for the shards, index.parquet and manifest.json")
    sp.set_defaults(func=cmd_export)
    _add_evaluation(sub, fmt, parents)

    sp = sub.add_parser("demo", help="simulate -> PCLR pretraining -> report vs random-init and supervised baselines",
                        formatter_class=fmt, parents=[parents["run"], parents["training"], parents["bootstrap"]])
    sp.add_argument("--out", default=_DEMO["out"], help="folder for the cohort, the run and the report")
    sp.add_argument("--patients", type=_positive_int, default=_DEMO["patients"], help="patients to simulate")
    sp.add_argument("--batch-patients", type=_positive_int, default=_DEMO["batch_patients"],
                    help="patients per PCLR batch (two recordings each)")
    sp.add_argument("--no-supervised", action="store_true", help="skip the supervised-from-scratch baseline")
    sp.add_argument("--fractions", default=",".join(f"{f:g}" for f in _DEMO["fractions"]),
                    help="fractions of the training patients' labels")
    sp.set_defaults(func=cmd_demo)

    _add_aliases(sub, fmt, parents)
    return p


def _given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the options ``argv`` gives explicitly (abbreviations included), found by parsing it
    again with every default suppressed."""
    saved = [(a, a.default) for a in parser._actions]
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        return set(vars(parser.parse_known_args(argv)[0]))
    finally:
        for a, default in saved:
            a.default = default


class _Stopped(KeyboardInterrupt):
    """SIGTERM outside the training loop (which checkpoints before stopping)."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum = signum


def _on_sigterm(signum, frame):
    raise _Stopped(signum)


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as one line on stderr (what a source left out or repaired), not Python's two-line form."""
    text = " ".join(str(message).splitlines())
    return f"tscl: warning: {text}\n"


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line: a KeyError's key text, an OSError's file and reason."""
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    elif isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror:
        text = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    else:
        text = str(err)
    return " ".join(text.split()) if "\n" in text else text


def _rank0_print(text: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the first rank speaks
        print(text, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "pretrain":
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["pretrain"]
        args.given = _given_options(sub, argv[argv.index("pretrain") + 1:])
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    before, warnings.formatwarning = warnings.formatwarning, _warning_line
    try:
        if hasattr(args, "workers"):  # the commands that open a dataset: how its cache is built and checked
            from tscl.loaders.cache import configure

            configure(workers=args.workers, verify=args.verify, shard_bytes=args.shard_mb << 20)
        status = args.func(args)
    except (ValueError, FileNotFoundError, KeyError, FloatingPointError, OSError) as err:  # UsageError, LoaderError
        if os.environ.get("TSCL_DEBUG"):
            raise
        print(f"tscl {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C (or SIGTERM): in training after a checkpoint, or outside it
        if hasattr(err, "exit_code"):  # tscl.train.Interrupted: the checkpoint is written
            _rank0_print(f"tscl {args.command}: {err}")
            return err.exit_code
        signum = getattr(err, "signum", signal.SIGINT)
        what = (" before a checkpoint could be written: a run folder, if one was made, keeps its last checkpoint"
                if args.command == "pretrain" else "; nothing more was done")
        _rank0_print(f"tscl {args.command}: stopped by {signal.Signals(signum).name}{what}")
        return 128 + signum
    finally:
        warnings.formatwarning = before  # main() called in-process leaves the caller's warnings as they were
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return status if args.command == "inspect" else 0  # inspect: 2 when any of its roots was refused


if __name__ == "__main__":
    sys.exit(main())
