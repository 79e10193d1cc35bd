"""``tscl`` command line: simulate, pretrain, export, embed, probe, demo."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tscl.simulate import CONDITIONS as DEFAULT_LABELS  # the simulated cohort's labels (tscl demo, probe)


class UsageError(Exception):
    """A bad command-line value: printed as one line naming the option, exit status 2."""


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v]
    except ValueError:
        raise UsageError(f"expected comma-separated numbers, got {text!r}") from None


def _kwargs(text: str, option: str = "--kwargs") -> dict:
    """``width=0.25,widths=[8,16],name=abc`` -> {'width': 0.25, 'widths': [8, 16], 'name': 'abc'}.

    Values are JSON where they parse as JSON (numbers, lists, true/false/null, quoted strings) and
    plain text otherwise; an unbalanced bracket or an item without ``=`` is a :class:`UsageError`."""
    import re

    out = {}
    if text is None or not text.strip():
        return out
    if text.count("[") != text.count("]") or text.count("{") != text.count("}"):
        raise UsageError(f"{option} {text!r}: unbalanced brackets")
    for item in filter(None, re.split(r",(?![^\[\{]*[\]\}])", text)):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key or not key.isidentifier():
            raise UsageError(f"{option} {text!r}: {item!r} is not key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            if value.strip().startswith(("[", "{", '"')):
                raise UsageError(f"{option}: {key}={value!r} is not valid JSON") from None
            out[key] = value.strip()
    return out


def _check_kwargs(factory, kwargs: dict, what: str, option: str, skip=()) -> None:
    """Refuse keywords ``factory`` does not take, and values whose type contradicts its default."""
    import inspect

    params = {n: p for n, p in inspect.signature(factory).parameters.items()
              if n not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for key, value in kwargs.items():
        if key not in params:
            from tscl.train import _nearest

            raise UsageError(f"{option}: {what} takes no option {key!r}{_nearest(key, params)}; its options: "
                             f"{', '.join(sorted(params))}")
        default = params[key].default
        if default is inspect.Parameter.empty or default is None or value is None:
            continue
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if isinstance(default, float) else
              isinstance(value, int) and not isinstance(value, bool) if isinstance(default, int) and not isinstance(default, bool) else
              isinstance(value, bool) if isinstance(default, bool) else
              isinstance(value, (list, tuple)) if isinstance(default, (list, tuple)) else True)
        if not ok:
            kind = "list" if isinstance(default, (list, tuple)) else type(default).__name__
            raise UsageError(f"{option}: {key}={value!r} should be a {kind} like its default {default!r}")


def _int_at_least(low: int):
    """An argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v

    return parse


_positive_int, _nonneg_int = _int_at_least(1), _int_at_least(0)


def _nonneg_float(text: str) -> float:
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def _positive_float(text: str) -> float:
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _device(text: str) -> str:
    import torch

    if text in ("auto", "cpu"):
        return text
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError("CUDA is not available on this machine; use --device cpu or auto")
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def _encoder_kwargs(args) -> dict:
    """``--encoder-kwargs`` parsed; unset, the CPU-sized resnet1d (width 0.25) or the encoder's defaults."""
    if args.encoder_kwargs is None:
        from tscl.encoders.resnet1d import CPU_WIDTH

        return {"width": CPU_WIDTH} if args.encoder == "resnet1d" else {}
    return _kwargs(args.encoder_kwargs, "--encoder-kwargs")


def _check_augment(spec: str | None, modality: str = "waveform") -> None:
    import inspect

    from tscl.augment import OPS_BY_MODALITY, build_augment
    from tscl.augment_image import spec_modality

    if spec is None:
        return
    try:
        aug = build_augment(spec, modality=spec_modality(spec, default=modality))
    except ValueError as err:
        raise UsageError(f"--augment: {err}") from None
    if aug.ops and aug.modality != modality:
        raise UsageError(f"--augment {spec!r} holds {aug.modality} ops; this dataset is {modality} data "
                         f"(its ops: {', '.join(sorted(OPS_BY_MODALITY[modality]))})")
    table = OPS_BY_MODALITY[aug.modality]
    for name, kw in aug.ops:
        params = inspect.signature(table[name]).parameters
        for key, value in kw.items():
            if key not in params or key in ("x", "g", "fs"):
                raise UsageError(f"--augment: {name} takes no parameter {key!r}; its parameters: "
                                 f"{', '.join(p for p in params if p not in ('x', 'g', 'fs'))}")
            if not isinstance(value, (int, float)) or value < 0:
                raise UsageError(f"--augment: {name}:{key}={value!r} must be a number >= 0")


def _validate_training(method: str, encoder: str, encoder_kwargs: dict, method_kwargs: dict, augment=None,
                       modality: str = "waveform", source: str | None = None) -> None:
    """Every name and keyword checked before any data loads; ``source`` names a config file the values come
    from (its keys are named instead of the command-line options)."""
    from tscl.encoders import ENCODER_MODALITY, ENCODERS, list_encoders
    from tscl.methods import METHODS

    label = (lambda key: f"--{key.replace('_', '-')}") if source is None else (lambda key: f"{source}: {key}")
    if method not in METHODS:
        raise UsageError(f"{label('method')}: unknown method {method!r}{_near(method, METHODS)}; choose from "
                         f"{', '.join(sorted(METHODS))}")
    if encoder not in ENCODERS:
        raise UsageError(f"{label('encoder')}: unknown encoder {encoder!r}{_near(encoder, ENCODERS)}; choose from "
                         f"{', '.join(list_encoders())}")
    _check_kwargs(ENCODERS[encoder], encoder_kwargs, f"encoder {encoder}", label("encoder_kwargs"), skip=("in_channels",))
    _check_kwargs(METHODS[method], method_kwargs, f"method {method}", label("method_kwargs"), skip=("encoder",))
    _check_augment(augment, modality)
    if ENCODER_MODALITY[encoder] != modality:
        fits = [n for n in list_encoders() if ENCODER_MODALITY[n] == modality]
        raise UsageError(f"{label('encoder')} {encoder} encodes {ENCODER_MODALITY[encoder]} data; this dataset is "
                         f"{modality} data (its encoders: {', '.join(fits)})")
    try:
        getattr(METHODS[method], "func", METHODS[method]).check_modality(modality)  # CLOCS modes are partials
    except ValueError as err:
        raise UsageError(f"{label('method')} {method}: {err}") from None


def _near(name: str, known) -> str:
    from tscl.train import _nearest

    return _nearest(name, known)


def _dataset_spec(args, split: str | None) -> dict:
    """The source the command reads: ``--dataset NAME --root PATH`` (``--data PATH`` is ``--dataset wfdb``)."""
    from tscl.datasets import get_source

    name = args.dataset or "wfdb"
    root = args.root or args.data
    if root is None:
        raise UsageError("give the data: --dataset NAME --root PATH (or --data FOLDER for a WFDB folder)")
    try:
        src = get_source(name)
    except ValueError as err:
        raise UsageError(f"--dataset: {err}") from None
    options = _kwargs(getattr(args, "dataset_kwargs", None), "--dataset-kwargs")
    if getattr(args, "metadata", None):
        options["metadata"] = args.metadata
    unknown = sorted(set(options) - set(src.options))
    if unknown:
        raise UsageError(f"--dataset-kwargs: dataset {name!r} takes no option {unknown[0]!r}; its options: "
                         f"{', '.join(sorted(src.options)) or 'none'}")
    from tscl.datasets import _is_url

    return {"dataset": name, "root": root if _is_url(root) else str(Path(root).resolve()), "split": split,
            "options": options, "cache": getattr(args, "cache", None)}


def _open(spec: dict, progress: bool):
    """The command's dataset; what its source left out is said on stderr in one line (and kept in ``notes``)."""
    from tscl.datasets import open_dataset

    data = open_dataset(spec["dataset"], spec["root"], split=spec.get("split"), cache=spec.get("cache"),
                        progress=progress, **spec.get("options", {}))
    line = data.notes_line()
    if line:
        print(f"tscl: note: {spec['root']}: {line}", file=sys.stderr)
    return data


def cmd_inspect(args):
    """Open a source at one or more roots and print what it reads: items, patients, splits and what it left out.

    Each root is opened on its own: a root that is refused prints its one-line error and the others
    still run; the exit status is 2 if any was refused. ``--out`` writes every root's summary (index
    rows, notes, and with ``--payload`` every item's payload) as JSON."""
    import os

    from tscl.loaders import LoaderError

    roots = [*(args.root or []), *(args.data or [])]
    if not roots:
        raise UsageError("give the data: --dataset NAME --root PATH [--root PATH ...]")
    results, refused = [], 0
    for root in roots:
        ns = argparse.Namespace(**{**vars(args), "root": root, "data": None})
        spec = _dataset_spec(ns, args.split)
        try:
            data = _open(spec, progress=False)
        except (UsageError, LoaderError, ValueError, FileNotFoundError, KeyError) as err:
            if os.environ.get("TSCL_DEBUG"):
                raise
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"tscl inspect: error: {message}", file=sys.stderr)
            results.append({"root": spec["root"], "ok": False, "error": str(message)})
            refused += 1
            continue
        print(f"{spec['root']}: {data.describe()}")
        summary = data.summary(payload=bool(args.payload and args.out))
        if isinstance(summary.get("payload"), np.ndarray):  # waveforms and images: beside the JSON, as .npy
            path = Path(f"{args.out}.{len(results)}.npy")
            np.save(path, summary.pop("payload"))
            summary["payload_file"] = str(path)
        results.append({"root": spec["root"], "ok": True, "error": None, **summary})
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    return 2 if refused else 0


def cmd_simulate(args) -> Path:
    """Write a simulated, patient-structured cohort: 12-lead ECGs as WFDB records (default) or chest-like films."""
    if args.kind == "images":
        from tscl.simulate_images import ImageSetConfig, write_image_set

        meta = write_image_set(args.out, ImageSetConfig(n_patients=args.patients, seed=args.seed))
    else:
        from tscl.simulate import CohortConfig, write_cohort

        meta = write_cohort(args.out, CohortConfig(n_patients=args.patients, seed=args.seed), progress=not args.quiet)
    print(f"wrote {meta}")
    return meta


def _run_folder(out: Path, overwrite: bool) -> None:
    """A run folder is never overwritten silently: --resume continues it, --overwrite replaces it (once every
    check has passed: the old run stays if the new one is refused); a folder another process is writing is
    refused naming that process."""
    from tscl.checkpoint import LOCK, RunLock

    holder = RunLock.holder(out)
    if holder:
        raise UsageError(f"--out {out}: another tscl process is writing this run ({holder}); wait for it, stop it, "
                         "or choose another --out")
    if not out.exists() or not any(p.name != LOCK for p in out.iterdir()):
        return
    if not (out / "config.json").exists():
        raise UsageError(f"--out {out}: folder exists and is not a tscl run; choose another folder")
    if not overwrite:
        raise UsageError(f"--out {out}: a run is already there; --resume {out} continues it, --overwrite replaces it")


# options a saved config fixes: given with --resume or --config they must agree with it
_FIXED = ("method", "encoder", "encoder_kwargs", "method_kwargs", "augment", "epochs", "lr", "seed", "compile",
          "dataset", "dataset_kwargs", "split")


def _saved_value(cfg, key):
    if key in ("method", "encoder", "encoder_kwargs", "epochs", "lr", "seed", "compile"):
        return getattr(cfg, key)
    if key == "method_kwargs":
        return {k: v for k, v in cfg.method_kwargs.items() if k != "augment"}
    if key == "augment":
        return cfg.method_kwargs.get("augment")
    if key == "dataset_kwargs":
        return {k: v for k, v in (cfg.dataset.get("options") or {}).items() if k != "metadata"}
    return cfg.dataset.get(key)


def _given_value(args, key):
    if key in ("encoder_kwargs", "method_kwargs", "dataset_kwargs"):
        return _kwargs(getattr(args, key), f"--{key.replace('_', '-')}")
    return getattr(args, key)


def _check_fixed(args, cfg, given: set, where: str, resume: bool) -> None:
    """Refuse options given beside --resume / --config that contradict the saved config, naming the option."""
    advice = ("a resumed run continues with its own settings: leave the option out, or start a new run with --out"
              if resume else "edit the config file or leave the option out")
    for key in _FIXED:
        if key not in given:
            continue
        value, saved = _given_value(args, key), _saved_value(cfg, key)
        if value != saved:
            raise UsageError(f"--{key.replace('_', '-')} {value}: {where} has {key} {saved!r}; {advice}")
    if "data" in given and cfg.dataset.get("dataset", "wfdb") != "wfdb":
        raise UsageError(f"--data means --dataset wfdb; {where} reads dataset {cfg.dataset['dataset']!r}: give its "
                         "new place with --root")


def _moved_spec(args, cfg, given: set, run: Path | None) -> dict:
    """The saved config's data source, at the place the command line gives (--root/--data/--metadata/--cache)."""
    spec = dict(cfg.dataset)
    if given & {"root", "data"}:
        spec["root"] = str(Path(args.root or args.data).resolve())
    if "metadata" in given:
        spec["options"] = {**(spec.get("options") or {}), "metadata": args.metadata}
    if "cache" in given:
        spec["cache"] = args.cache
    if run is not None and not given & {"root", "data"} and spec.get("root") and not Path(spec["root"]).exists():
        raise UsageError(f"{run}: its data {spec['root']} is not there any more; if it moved, give its new place: "
                         f"tscl pretrain --resume {run} --root NEW_PLACE (a resume checks that the content is the same)")
    return spec


def _check_same_data(run: Path, cfg, spec: dict, data, given: set) -> None:
    """A resume reads the data its run was pretrained on: compared by content (the checkpoint's fingerprint),
    so a moved dataset resumes (with a note) and different data is refused naming the option."""
    from tscl.checkpoint import CHECKPOINT, read_checkpoint_meta

    if not (run / CHECKPOINT).exists():
        return
    saved = (read_checkpoint_meta(run / CHECKPOINT).get("identity") or {}).get("data")
    if saved is None or saved == data.fingerprint:
        if spec.get("root") != cfg.dataset.get("root"):
            from tscl.train import note

            note(f"the data moved: {cfg.dataset.get('root')} -> {spec['root']} (same content); resuming there, and "
                 "config.json now names the new place")
        return
    option = "--data" if "data" in given else "--root" if "root" in given else "the data at"
    raise UsageError(f"{option} {spec['root']}: not the data {run} was pretrained on (content fingerprint "
                     f"{data.fingerprint}, the run's {saved}); a run resumes only on its own data: give the place "
                     "that holds it, or start a new run with --out")


def _finished(run: Path) -> dict | None:
    """The checkpoint's metadata when ``run`` finished (final step reached, weights written), else None."""
    from tscl.checkpoint import CHECKPOINT, read_checkpoint_meta

    if not (run / CHECKPOINT).exists() or not (run / "encoder.safetensors").exists():
        return None
    meta = read_checkpoint_meta(run / CHECKPOINT)
    return meta if meta.get("total") and meta["step"] >= meta["total"] else None


def cmd_pretrain(args) -> Path:
    from dataclasses import replace

    from tscl.datasets import get_source
    from tscl.distributed import init_distributed, rank, rank_zero_first
    from tscl.train import PretrainConfig, load_config

    given = getattr(args, "given", set())
    if sum(bool(v) for v in (args.resume, args.config)) > 1:
        raise UsageError("give either --resume RUN_DIR or --config FILE, not both")
    if args.resume or args.config:  # the saved config: same schedule, same data, same order
        path = Path(args.resume or args.config)
        where = f"the run {path}" if args.resume else str(path)
        cfg = load_config(path)
        _check_fixed(args, cfg, given, where, resume=bool(args.resume))
        if not cfg.dataset:
            cfg = replace(cfg, dataset=_dataset_spec(args, None))  # runs made before config.json named their data
        out = Path(args.resume) if args.resume else Path(args.out or cfg.out_dir)
        if args.resume:
            _run_folder_lock(out)
            done = _finished(out)
            if done is not None:
                print(f"{out}: this run is finished (step {done['step']} of {done['total']}); nothing to do (its "
                      f"encoder: {out / 'encoder.safetensors'})")
                return out
        else:
            _run_folder(out, args.overwrite)
        cfg = replace(cfg, out_dir=str(out), resume=bool(args.resume), device=args.device, progress=not args.quiet,
                      dataset=_moved_spec(args, cfg, given, out if args.resume else None))
        _validate_training(cfg.method, cfg.encoder, cfg.encoder_kwargs, cfg.method_kwargs,
                           modality=get_source(cfg.dataset["dataset"]).modality,
                           source=None if args.resume else str(path))
    else:
        if not args.out:
            raise UsageError("give --out RUN_DIR (a new run), --resume RUN_DIR or --config RUN_DIR/config.json")
        method_kwargs = {**_kwargs(args.method_kwargs, "--method-kwargs"),
                         **({"augment": args.augment} if args.augment else {})}
        encoder_kwargs = _encoder_kwargs(args)
        spec = _dataset_spec(args, None)
        _validate_training(args.method, args.encoder, encoder_kwargs, method_kwargs, args.augment,
                           get_source(spec["dataset"]).modality)
        split = args.split or get_source(spec["dataset"]).default_split
        spec["split"] = split
        _run_folder(Path(args.out), args.overwrite)
        cfg = PretrainConfig(out_dir=args.out, method=args.method, encoder=args.encoder, encoder_kwargs=encoder_kwargs,
                             method_kwargs=method_kwargs, epochs=args.epochs, lr=args.lr, seed=args.seed,
                             device=args.device, progress=not args.quiet, compile=args.compile, dataset=spec)
    if args.ckpt_every is not None:
        cfg = replace(cfg, ckpt_every=args.ckpt_every)
    if args.checkpoint_every_min is not None:
        cfg = replace(cfg, ckpt_every_min=args.checkpoint_every_min)
    init_distributed(cfg.device)  # under torchrun: join the other ranks before touching the cache
    with rank_zero_first():
        data = _open(cfg.dataset, progress=not args.quiet)
    if args.resume:
        _check_same_data(Path(args.resume), load_config(args.resume), cfg.dataset, data, given)
    from tscl.train import pretrain

    if rank() == 0:
        verb = "resuming" if args.resume else "pretraining"
        print(f"{verb} {cfg.method}/{cfg.encoder} on {cfg.dataset['dataset']} split "
              f"{cfg.dataset.get('split') or 'all'}: {data.describe()}")
    run = pretrain(data, cfg, overwrite=args.overwrite)
    if rank() == 0:  # under torchrun the other ranks trained the same run folder
        print(f"pretrained encoder in {run}")
    return run


def _run_folder_lock(out: Path) -> None:
    """--resume of a folder another process is writing is refused before any data loads."""
    from tscl.checkpoint import RunLock

    holder = RunLock.holder(out)
    if holder:
        raise UsageError(f"--resume {out}: another tscl process is writing this run ({holder}); wait for it or stop it")


def _run_dataset_spec(args, run: Path | None, split: str | None) -> dict:
    """The command's data: its own --dataset/--root, else the run's (config.json), read at ``split``."""
    if args.root or args.data or run is None:
        spec = _dataset_spec(args, split)
    else:
        from tscl.train import load_config

        saved = load_config(run).dataset
        if not saved:
            raise UsageError(f"{run}/config.json names no dataset; give --dataset NAME --root PATH")
        spec = {**saved, "split": split, "cache": getattr(args, "cache", None) or saved.get("cache")}
    return spec


def cmd_embed(args) -> Path:
    from tscl.embed import embed_dataset
    from tscl.train import load_encoder

    from tscl.train import check_encoder_fits, load_config

    run = Path(args.run)
    if not (run / "config.json").exists():
        raise UsageError(f"--run {run}: not a tscl run folder (config.json missing)")
    spec = _run_dataset_spec(args, run, args.split)
    data = _open(spec, progress=not args.quiet)
    check_encoder_fits(load_config(run).data_info, modality=data.modality, in_channels=data.in_channels,
                       fs=data.info.get("fs"), what=f"{spec['dataset']} at {spec['root']}", run=run)
    if args.tower:
        if args.random_init:
            raise UsageError("--tower embeds a trained clip tower; --random-init applies to the run's encoder only")
        feats = _embed_tower(run, args.tower, data, progress=not args.quiet)
    else:
        feats = embed_dataset(load_encoder(run, random_init=args.random_init, seed=args.seed), data,
                              progress=not args.quiet)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from tscl.probes.protocol import pretrained_patients

    seen = [] if args.random_init else sorted(pretrained_patients(run) or [])
    np.savez(out, features=feats, record_id=np.array(data.index["record_id"].to_list()),
             patient_id=np.array(data.index["patient_id"].to_list()), run=str(run.resolve()),
             pretrained_patients=np.array(seen, dtype=str))
    print(f"wrote {feats.shape} features to {out}")
    return out


def _embed_tower(run: Path, name: str, data, progress: bool) -> np.ndarray:
    """Features of tower ``name`` of a clip run for every row of ``data`` (its payload, or its tabular columns)."""
    from tscl.embed import embed_rows
    from tscl.methods.clip import load_tower

    tower = load_tower(run, name)
    return embed_rows(tower, len(data), lambda rows: tower.inputs(data, rows), progress=progress,
                      desc=f"embedding (tower {name})")


def cmd_retrieval(args):
    """Held-out paired retrieval of a clip run: recall@k both ways with patient-level bootstrap CIs."""
    from tscl.crossmodal import retrieval_report

    run = Path(args.run)
    data = _open(_run_dataset_spec(args, run, args.split or "test"), progress=not args.quiet)
    ks = [int(k) for k in _floats(args.k)]
    report = retrieval_report(run, data, ks=ks, n_boot=args.bootstrap, seed=args.seed,
                              allow_pretrain_patients=args.allow_test_overlap)
    lines = [f"# Retrieval, {run.name} on {report['n']} held-out pairs of {report['n_patients']} patients", "",
             "| k | A→B recall@k [95 % CI] | B→A recall@k [95 % CI] | chance |", "|---|---|---|---|"]
    for k in ks:
        a, b = report[f"a_to_b@{k}"], report[f"b_to_a@{k}"]
        lines.append(f"| {k} | {a['recall']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] | {b['recall']:.3f} "
                     f"[{b['ci_low']:.3f}, {b['ci_high']:.3f}] | {report[f'chance@{k}']:.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "retrieval.md").write_text(text + "\n")
        (out / "retrieval.json").write_text(json.dumps(report, indent=1, default=float))
    return report


def _report(spec, out: str | Path | None, stem: str, quiet: bool):
    """Run the evaluation ``spec`` (:func:`tscl.probes.evaluate`), print its table and write its report."""
    from tscl.probes import evaluate

    report = evaluate(spec)
    if out:
        report.write(out, stem=stem)
    print(report.to_markdown())
    return report


def cmd_probe(args):
    """Probes of embeddings files (and the random-init row of their run) on a dataset's own split."""
    from tscl.probes import EvalSpec

    spec = _dataset_spec(args, None)
    return _report(EvalSpec(dataset=spec["dataset"], root=spec["root"], dataset_kwargs=spec["options"],
                            labels=args.labels.split(","), encoders=list(args.embeddings),
                            fractions=tuple(_floats(args.fractions)), n_boot=args.bootstrap, seed=args.seed,
                            cache=spec["cache"], allow_test_overlap=args.allow_test_overlap,
                            split="random" if args.split == "random" else _probe_split(args.split),
                            reference=args.reference or "random-init", progress=not args.quiet),
                   args.out, "probe", args.quiet)


def _probe_split(split):
    if split in (None, "dataset"):
        return "dataset"
    raise UsageError(f"--split: the probe takes 'dataset' (the source's test split) or 'random', got {split!r}")


def cmd_mimic_probe(args):
    """MIMIC-IV admissions at admission + 24 h: a run's EHR encoder vs random init vs the tabular baseline."""
    from tscl.probes import EvalSpec, evaluate

    run = Path(args.run) if args.run else None
    if run is not None and not (run / "config.json").exists():
        raise UsageError(f"--run {run}: not a tscl run folder (config.json missing)")
    out = Path(args.out) if args.out else None
    reports = {}
    for label in args.labels.split(","):
        reports[label] = evaluate(EvalSpec(task=f"mimic-{label.replace('_', '-')}", root=args.root,
                                           encoders=[run] if run else [], fractions=(1.0,), n_boot=args.bootstrap,
                                           seed=args.seed, cache=args.cache, allow_test_overlap=args.allow_test_overlap,
                                           progress=not args.quiet))
        print(reports[label].to_markdown() + "\n")
        if out:
            reports[label].write(out / label)
    if out:
        (out / "mimic_probe.json").write_text(json.dumps(
            {"labels": {k: json.loads(r.to_json()) for k, r in reports.items()}}, indent=1, default=str))
    return reports


def cmd_export(args):
    """Write a dataset's rows as WebDataset shards (+ index.parquet, manifest.json) for streamed pretraining."""
    from tscl.datasets.stream import export_webdataset, parse_size

    try:
        shard_bytes = parse_size(args.shard_size)
    except ValueError as err:
        raise UsageError(f"--shard-size: {err}") from None
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out}: folder exists and is not empty; choose a new folder")
    data = _open(_dataset_spec(args, args.split or "all"), progress=not args.quiet)
    manifest = export_webdataset(data, out, shard_bytes=shard_bytes, seed=args.seed, progress=not args.quiet)
    size = sum(s["bytes"] for s in manifest["shards"])
    print(f"wrote {manifest['items']} items in {len(manifest['shards'])} shard(s), {size / 2**20:.1f} MiB, to {out}")
    return out


def cmd_datasets(args):
    """List the dataset sources and what each needs on disk."""
    from tscl.datasets import get_source, list_sources

    for name in list_sources():
        src = get_source(name)
        print(f"{name} ({src.modality}; pretraining reads split '{src.default_split}' by default)\n  needs: {src.needs}")
        for opt, text in src.options.items():
            print(f"  --dataset-kwargs {opt}=...  {text}")
    return None


def cmd_demo(args):
    """Simulate the default cohort, pretrain PCLR, report it against random-init and supervised baselines."""
    from tscl.probes import EvalSpec, evaluate
    from tscl.simulate import CohortConfig, write_cohort
    from tscl.train import PretrainConfig, pretrain

    t0 = time.time()
    out = Path(args.out)
    data = out / "cohort"
    if not (data / "metadata.csv").exists():
        write_cohort(data, CohortConfig(n_patients=args.patients, seed=args.seed), progress=not args.quiet)
    from tscl.datasets import open_dataset

    cohort = open_dataset("wfdb", data, progress=not args.quiet)
    train = cohort.split("train")  # test patients are never pretrained on: the probes test on them
    print(f"cohort: {len(cohort)} recordings of {cohort.index['patient_id'].n_unique()} patients, "
          f"{cohort.in_channels} leads, {cohort.info['fs']:g} Hz  ({data}); pretraining on the training split: "
          f"{len(train)} recordings of {train.index['patient_id'].n_unique()} patients")
    cfg = PretrainConfig(out_dir=str(out / "pclr"), method="pclr", encoder=args.encoder,
                         encoder_kwargs=_encoder_kwargs(args),
                         method_kwargs={"patients_per_batch": args.batch_patients}, epochs=args.epochs, lr=args.lr,
                         seed=args.seed, device=args.device, progress=not args.quiet)
    t_pre = time.time()
    if (out / "pclr" / "config.json").exists():
        print(f"replacing the demo's earlier run in {out / 'pclr'}")
    run = pretrain(train, cfg, overwrite=True)  # the demo's own folder: a new demo replaces it
    print(f"pretrained {run} in {time.time() - t_pre:.0f} s")
    t_rep = time.time()
    print("\nprobing: PCLR and random-init (frozen features, linear probe) and the same encoder trained "
          "from scratch on the labels (supervised baseline)", flush=True)
    report = evaluate(EvalSpec(task="sim-risk", root=data, encoders=[run], supervised=not args.no_supervised,
                               fractions=tuple(_floats(args.fractions)), n_boot=args.bootstrap, seed=args.seed,
                               audit=True, progress=not args.quiet))
    report.write(out / "report")
    s = report.result.split
    print(f"\nmacro AUROC over {', '.join(report.result.labels)} [95 % patient-level bootstrap CI]\n"
          f"test: {s['test_records']} recordings of {s['test_patients']} patients; "
          f"train pool: {s['train_patients']} patients\n")
    print(report.result.to_markdown(metrics_table=False))
    print(f"\nreport: {out / 'report' / 'report.md'} (AUROC/AUPRC/Brier/ECE, audit, label-efficiency, reliability "
          f"and embedding plots); run: {run}")
    print(f"report written in {time.time() - t_rep:.0f} s; demo finished in {time.time() - t0:.0f} s")
    return report


def cmd_task(args):
    """``task list`` or ``task run NAME --data ROOT``: a named task's probe, with the audit."""
    from tscl.tasks import list_tasks

    if args.action == "list":
        for task in list_tasks():
            print(f"{task.name:22s} {task.source:10s} {task.kind:10s} {task.description}")
        return None
    if not args.name or not args.data:
        raise UsageError("task run: give NAME and --data ROOT (the task's source folder)")
    out = Path(args.out) if args.out else None
    return _report(_task_spec(args, args.name, fractions=(1.0,)), out, args.name, args.quiet)


def _task_spec(args, name: str, fractions):
    from tscl.probes import EvalSpec

    return EvalSpec(task=name, root=args.data, encoders=[args.run] if args.run else [], probe=args.probe,
                    fractions=tuple(fractions), n_boot=args.bootstrap, seed=args.seed, cache=args.cache,
                    supervised=not args.no_supervised, allow_test_overlap=args.allow_test_overlap, audit=True,
                    progress=not args.quiet)


def cmd_report(args):
    """Run named tasks on one data root; ``<out>/<task>/`` holds each report, ``<out>/summary.md`` them all."""
    from tscl.probes import evaluate

    out = Path(args.out)
    parts = []
    for name in args.tasks.split(","):
        report = evaluate(_task_spec(args, name, _floats(args.fractions)))
        report.write(out / name)
        parts.append(f"## [{name}]({name}/report.md)\n\n{report.result.to_markdown()}\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("# Downstream evaluation\n\n" + "\n".join(parts))
    print(f"report: {out / 'summary.md'}")
    return out


def build_parser() -> argparse.ArgumentParser:
    from tscl.encoders import list_encoders
    from tscl.methods import METHODS

    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="tscl", description=__doc__, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    def data(sp, split_help):
        sp.add_argument("--dataset", default=None, metavar="NAME",
                        help="dataset source (tscl datasets lists them); default wfdb when --data is given")
        sp.add_argument("--root", default=None, help="the dataset's folder, as its publisher lays it out")
        sp.add_argument("--data", default=None, help="shorthand for --dataset wfdb --root FOLDER (WFDB records + "
                                                     "metadata table)")
        sp.add_argument("--metadata", default=None, help="wfdb: metadata table (default: <root>/metadata.csv)")
        sp.add_argument("--dataset-kwargs", default=None, metavar="K=V,...", help="source options (tscl datasets)")
        sp.add_argument("--split", default=None, help=split_help)
        sp.add_argument("--cache", default=None, help="cache folder (default: $TSCL_CACHE or ~/.cache/tscl)")

    def training(sp):
        sp.add_argument("--encoder", default="resnet1d", help=f"one of {', '.join(list_encoders())}")
        sp.add_argument("--encoder-kwargs", default=None,
                        help="e.g. width=0.5 (default: width=0.25 for resnet1d, the encoder's own defaults otherwise)")
        sp.add_argument("--epochs", type=_positive_int, default=40)
        sp.add_argument("--lr", type=_positive_float, default=3e-3)
        sp.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N")

    sp = sub.add_parser("simulate", help="write a simulated patient-structured cohort: ECGs (WFDB) or images",
                        formatter_class=fmt)
    sp.add_argument("--out", required=True)
    sp.add_argument("--kind", default="ecg", choices=["ecg", "images"],
                    help="ecg: 12-lead WFDB records + metadata.csv (--dataset wfdb); images: 64x64 films + labels.csv "
                         "(--dataset images)")
    sp.add_argument("--patients", type=_positive_int, default=500)
    common(sp)
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("datasets", help="list the dataset sources and what each needs on disk", formatter_class=fmt)
    sp.set_defaults(func=cmd_datasets)

    sp = sub.add_parser("inspect", help="open a dataset source at one or more roots and print what it reads and "
                        "leaves out", formatter_class=fmt)
    sp.add_argument("--dataset", default=None, metavar="NAME", help="dataset source (default wfdb)")
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

    sp = sub.add_parser("pretrain", help="contrastive pretraining on a dataset", formatter_class=fmt)
    data(sp, "rows to pretrain on: train (the source's default), train+val, all, folds:1-8")
    common(sp)
    training(sp)
    sp.add_argument("--method", default="pclr", help=f"one of {', '.join(sorted(METHODS))}")
    sp.add_argument("--method-kwargs", default="", help="e.g. patients_per_batch=64,temperature=0.1")
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
                    help="steps between checkpoints (default 500; 0: none by step count). Checkpoints are also "
                         "written at the end of every epoch, on Ctrl-C / SIGTERM and at the end")
    sp.add_argument("--checkpoint-every-min", type=_nonneg_float, default=None, metavar="MIN",
                    help="minutes of wall time between checkpoints (default 5; 0: none by time)")
    sp.set_defaults(func=cmd_pretrain)

    sp = sub.add_parser("export", help="write a dataset as WebDataset tar shards for streamed pretraining "
                        "(tscl pretrain --dataset webdataset --root DIR)", formatter_class=fmt)
    data(sp, "rows to export (default all)")
    common(sp)
    sp.add_argument("--format", default="webdataset", choices=["webdataset"])
    sp.add_argument("--shard-size", default="256MB", help="target shard size (bytes, or KB/MB/GB)")
    sp.add_argument("--out", required=True, help="new folder for the shards, index.parquet and manifest.json")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("embed", help="frozen features of a run's encoder", formatter_class=fmt)
    data(sp, "rows to embed (default all)")
    common(sp)
    sp.add_argument("--run", required=True)
    sp.add_argument("--tower", default=None, help="clip runs: the tower to embed with (a or b, or its modality)")
    sp.add_argument("--random-init", action="store_true", help="same architecture, untrained weights")
    sp.add_argument("--out", required=True, help=".npz file")
    sp.set_defaults(func=cmd_embed)

    sp = sub.add_parser("probe", help="linear probes with patient-level splits and bootstrap CIs", formatter_class=fmt)
    data(sp, "dataset: test on the source's test split, train on the rest; random: a random patient-level split "
             "(30 %% test patients), for samples whose split has no test side")
    common(sp)
    sp.add_argument("--embeddings", nargs="+", required=True, help=".npz files from tscl embed")
    sp.add_argument("--labels", default=",".join(DEFAULT_LABELS))
    sp.add_argument("--fractions", default="0.01,0.1,1")
    sp.add_argument("--reference", default=None, help="embedding name the others are compared against")
    sp.add_argument("--bootstrap", type=_positive_int, default=1000)
    sp.add_argument("--allow-test-overlap", action="store_true",
                    help="probe even when an encoder was pretrained on some of the test patients")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_probe)

    sp = sub.add_parser("retrieval", help="held-out recall@k of a clip run, both ways, with patient-level CIs",
                        formatter_class=fmt)
    data(sp, "rows to retrieve among (default test)")
    common(sp)
    sp.add_argument("--run", required=True, help="a clip run folder")
    sp.add_argument("--k", default="1,5,10")
    sp.add_argument("--bootstrap", type=_positive_int, default=1000)
    sp.add_argument("--allow-test-overlap", action="store_true")
    sp.add_argument("--out", default=None, help="folder for retrieval.md and retrieval.json")
    sp.set_defaults(func=cmd_retrieval)

    sp = sub.add_parser("mimic-probe", help="probe a run's EHR encoder on MIMIC-IV admissions (mortality, long stay, "
                        "readmission at admission + 24 h) beside random init and the tabular baseline",
                        formatter_class=fmt)
    sp.add_argument("--root", required=True, help="MIMIC-IV folder (hosp/, icu/ CSVs)")
    sp.add_argument("--run", default=None, help="run folder pretrained on the mimic-iv source (default: random init only)")
    sp.add_argument("--labels", default="mortality,long_stay,readmission")
    sp.add_argument("--bootstrap", type=_positive_int, default=500)
    sp.add_argument("--cache", default=None, help="cache folder (default: $TSCL_CACHE or ~/.cache/tscl)")
    sp.add_argument("--allow-test-overlap", action="store_true")
    sp.add_argument("--out", default=None, help="folder for mimic_probe.json and a report per label")
    common(sp)
    sp.set_defaults(func=cmd_mimic_probe)

    sp = sub.add_parser("demo", help="simulate -> PCLR pretraining -> report vs random-init and supervised baselines",
                        formatter_class=fmt)
    common(sp)
    training(sp)
    sp.add_argument("--out", default="runs/demo")
    sp.add_argument("--patients", type=_positive_int, default=500)
    sp.add_argument("--batch-patients", type=_positive_int, default=64,
                    help="patients per PCLR batch (two recordings each)")
    sp.add_argument("--no-supervised", action="store_true", help="skip the supervised-from-scratch baseline")
    sp.add_argument("--fractions", default="0.01,0.1,1")
    sp.add_argument("--bootstrap", type=_positive_int, default=1000)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("task", help="named downstream tasks on real data: list, or run NAME (probe + audit)",
                        formatter_class=fmt)
    sp.add_argument("action", choices=["list", "run"])
    sp.add_argument("name", nargs="?", default=None)
    sp.add_argument("--data", default=None, help="the task's source folder (tscl task list names the source)")
    sp.add_argument("--run", default=None, help="run folder whose encoder embeds the data (default: the modality's "
                                                "default architecture, untrained)")
    sp.add_argument("--probe", default="linear", choices=["linear", "knn", "mlp"])
    sp.add_argument("--bootstrap", type=_positive_int, default=1000)
    sp.add_argument("--cache", default=None, help="cache folder (default: $TSCL_CACHE or ~/.cache/tscl)")
    sp.add_argument("--out", default=None, help="folder for <task>.md, <task>.json and figures")
    sp.add_argument("--no-supervised", action="store_true", help="skip the supervised-from-scratch baseline")
    sp.add_argument("--allow-test-overlap", action="store_true",
                    help="evaluate even when the run was pretrained on some of the task's test patients")
    common(sp)
    sp.set_defaults(func=cmd_task)

    sp = sub.add_parser("report", help="run named tasks; write summary.md, report.json and figures", formatter_class=fmt)
    sp.add_argument("--tasks", required=True, help="comma-separated task names (tscl task list)")
    sp.add_argument("--data", required=True, help="the tasks' source folder")
    sp.add_argument("--run", default=None, help="run folder whose encoder embeds the data (default: the modality's "
                                                "default architecture, untrained)")
    sp.add_argument("--probe", default="linear", choices=["linear", "knn", "mlp"])
    sp.add_argument("--fractions", default="0.1,0.5,1")
    sp.add_argument("--bootstrap", type=_positive_int, default=500)
    sp.add_argument("--cache", default=None, help="cache folder (default: $TSCL_CACHE or ~/.cache/tscl)")
    sp.add_argument("--no-supervised", action="store_true", help="skip the supervised-from-scratch baseline")
    sp.add_argument("--allow-test-overlap", action="store_true",
                    help="evaluate even when the run was pretrained on some of the tasks' test patients")
    sp.add_argument("--out", required=True)
    common(sp)
    sp.set_defaults(func=cmd_report)
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


def main(argv=None) -> int:
    import os
    import signal
    import warnings

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "pretrain":
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["pretrain"]
        args.given = _given_options(sub, argv[argv.index("pretrain") + 1:])
    from tscl.loaders import LoaderError
    from tscl.train import Interrupted

    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    before, warnings.formatwarning = warnings.formatwarning, _warning_line
    try:
        status = args.func(args)
    except (UsageError, LoaderError, ValueError, FileNotFoundError, KeyError, FloatingPointError, OSError) as err:
        if os.environ.get("TSCL_DEBUG"):
            raise
        print(f"tscl {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Interrupted as err:
        _rank0_print(f"tscl {args.command}: {err}")
        return err.exit_code
    except KeyboardInterrupt as err:  # Ctrl-C (or SIGTERM) outside the training loop, or a second Ctrl-C
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


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _rank0_print(text: str) -> None:
    from tscl.distributed import rank

    if rank() == 0:
        print(text, file=sys.stderr, flush=True)


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line: a KeyError's key text, an OSError's file and reason."""
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    elif isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror:
        text = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    else:
        text = str(err)
    return " ".join(text.split()) if "\n" in text else text


if __name__ == "__main__":
    sys.exit(main())
