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
from tscl.config import DemoConfig, PretrainConfig, defaults
from tscl.grammar import UsageError, parse_floats, parse_ints, parse_kwargs

_PRETRAIN, _DEMO = defaults(PretrainConfig), defaults(DemoConfig)
_SIM_LABELS = "lvh,bbb,af,tachy,brady,mace"  # the simulated cohort's conditions (tscl.simulate.CONDITIONS)
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


def cmd_probe(a):
    from tscl.datasets.spec import data_spec, open_spec
    from tscl.probes.files import probe_embeddings

    fractions = _fractions(a.fractions)
    data = open_spec(data_spec(**_data(a), split="all"), progress=not a.quiet)
    result = probe_embeddings(data, a.embeddings, (a.labels or _SIM_LABELS).split(","), a.out, fractions=fractions,
                              reference=a.reference, n_boot=a.bootstrap, seed=a.seed, split=a.split,
                              allow_test_overlap=a.allow_test_overlap)
    print(result.to_markdown())


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


def cmd_mimic_probe(a):
    from tscl.tasks.mimic_ehr import mimic_probe

    report = mimic_probe(a.root, a.run, labels=tuple(a.labels.split(",")), cache=a.cache, n_boot=a.bootstrap,
                         seed=a.seed, allow_test_overlap=a.allow_test_overlap)
    print(report.to_markdown())
    if a.out:
        report.write(a.out)


def cmd_task(a):
    from tscl.tasks import TASKS, run_task

    if a.action == "list":
        print("\n".join(f"{name:20s} {task.kind:10s} {task.description}" for name, task in TASKS.items()))
        return
    if not a.name or not a.data:
        raise UsageError("task run: give NAME and --data ROOT")
    result = run_task(a.name, a.data, run=a.run, cache_dir=a.cache, probe=a.probe, n_boot=a.bootstrap, seed=a.seed,
                      supervised=not a.no_supervised, progress=not a.quiet, allow_test_overlap=a.allow_test_overlap)
    print(result.to_markdown())
    if a.out:
        result.write(a.out)


def cmd_report(a):
    from tscl.tasks import write_report

    out = write_report(a.tasks.split(","), a.data, a.out, run=a.run, cache_dir=a.cache, probe=a.probe,
                       fractions=_fractions(a.fractions), n_boot=a.bootstrap, seed=a.seed,
                       supervised=not a.no_supervised, progress=not a.quiet, allow_test_overlap=a.allow_test_overlap)
    print(f"report: {out / 'summary.md'}")


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
    return {"run": run, "data": data, "training": training, "bootstrap": bootstrap, "evaluation": evaluation}


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

    sp = sub.add_parser("probe", help="linear probes with patient-level splits and bootstrap CIs", formatter_class=fmt,
                        parents=[p["data"], p["run"], p["evaluation"]])
    sp.add_argument("--split", default=None, help="dataset: test on the source's test split, train on the rest "
                    "(default); random: a random patient-level split (30 %% test patients), for samples whose split "
                    "has no test side")
    sp.add_argument("--embeddings", nargs="+", required=True, help=".npz or .parquet files from tscl embed")
    sp.add_argument("--labels", default=None, help=f"comma-separated label columns (default: {_SIM_LABELS}, the "
                                                   "simulated cohort's)")
    sp.add_argument("--fractions", default="0.01,0.1,1", help="fractions of the training patients' labels")
    sp.add_argument("--reference", default=None, help="embedding name the others are compared against")
    sp.add_argument("--out", required=True, help="folder for probe.md, probe.json and label_efficiency.png")
    sp.set_defaults(func=cmd_probe)

    sp = sub.add_parser("retrieval", help="held-out recall@k of a clip run, both ways, with patient-level CIs",
                        formatter_class=fmt, parents=[p["data"], p["run"], p["evaluation"]])
    sp.add_argument("--split", default=None, help="rows to retrieve among (default test)")
    sp.add_argument("--run", required=True, help="a clip run folder")
    sp.add_argument("--k", default="1,5,10", help="the k of recall@k, comma-separated")
    sp.add_argument("--out", default=None, help="folder for retrieval.md and retrieval.json")
    sp.set_defaults(func=cmd_retrieval)


def _add_tasks(sub, fmt, p: dict) -> None:
    sp = sub.add_parser("mimic-probe", help="probe a run's EHR encoder on MIMIC-IV admissions (mortality, long stay, "
                        "readmission at admission + 24 h) beside random init and the tabular baseline",
                        formatter_class=fmt, parents=[p["run"], p["evaluation"]])
    sp.add_argument("--root", required=True, help="MIMIC-IV folder (hosp/, icu/ CSVs)")
    sp.add_argument("--run", default=None, help="run folder pretrained on the mimic-iv source (default: random init only)")
    sp.add_argument("--labels", default="mortality,long_stay,readmission", help="outcomes to probe")
    sp.add_argument("--cache", default=None, help="cache folder (default: $TSCL_CACHE or ~/.cache/tscl)")
    sp.add_argument("--out", default=None, help="folder for mimic_probe.md and mimic_probe.json")
    sp.set_defaults(func=cmd_mimic_probe)

    tasks = argparse.ArgumentParser(add_help=False)
    tasks.add_argument("--run", default=None, help="run folder whose encoder embeds waveforms (default: random-init "
                                                   "resnet1d)")
    tasks.add_argument("--probe", default="linear", choices=["linear", "knn", "mlp"], help="the probe's model")
    tasks.add_argument("--cache", default=None, help="cache folder (default ~/.cache/tscl/tasks)")
    tasks.add_argument("--no-supervised", action="store_true", help="skip the supervised-from-scratch baseline")

    sp = sub.add_parser("task", help="named downstream tasks on real data: list, or run NAME (probe + audit)",
                        formatter_class=fmt, parents=[tasks, p["run"], p["evaluation"]])
    sp.add_argument("action", choices=["list", "run"], help="list the tasks, or run one")
    sp.add_argument("name", nargs="?", default=None, help="the task to run (tscl task list)")
    sp.add_argument("--data", default=None, help="data root holding ptbxl/, physionet/, meds_demo/")
    sp.add_argument("--out", default=None, help="folder for <task>.md and <task>.json")
    sp.set_defaults(func=cmd_task)

    sp = sub.add_parser("report", help="run named tasks; write summary.md, report.json and figures", formatter_class=fmt,
                        parents=[tasks, p["run"], p["evaluation"]])
    sp.add_argument("--tasks", required=True, help="comma-separated task names (tscl task list)")
    sp.add_argument("--data", required=True, help="data root holding ptbxl/, physionet/, meds_demo/")
    sp.add_argument("--fractions", default="0.1,0.5,1", help="fractions of the training patients' labels")
    sp.add_argument("--out", required=True, help="folder for summary.md, report.json and the figures")
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

    _add_tasks(sub, fmt, parents)
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
