"""Start, resume or re-make a pretraining run from named options: what ``tscl pretrain`` does.

:func:`launch` checks every name and keyword before any data loads (method, encoder, their keywords
against their signatures, the augmentation spec, the dataset and its options, the encoder against the
dataset's modality), refuses to overwrite a run silently, and then calls :func:`tscl.train.pretrain`:

- a new run: ``launch(out=..., dataset=..., root=..., method=..., ...)``; ``encoder=None`` takes the
  modality's default encoder (:data:`tscl.catalog.DEFAULT_ENCODER`) and ``encoder_kwargs=None`` its
  declared defaults;
- ``resume=RUN``: continue a run from its checkpoint with its own ``config.json``, on the same data
  (compared by content, so a moved dataset resumes);
- ``config=FILE``: make a run from a config file (checked key by key).

Options given beside ``resume`` / ``config`` (``given``: their names) must agree with the saved config.
Every refusal is a :class:`~tscl.grammar.UsageError` naming the option.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import replace
from pathlib import Path

import torch

from tscl.augment import OPS_BY_MODALITY, build_augment, spec_modality
from tscl.catalog import default_encoder
from tscl.checkpoint import CHECKPOINT, LOCK, RunLock, read_checkpoint_meta
from tscl.config import PretrainConfig, load_config, nearest
from tscl.datasets import get_source
from tscl.datasets.spec import data_spec, open_spec
from tscl.distributed import init_distributed, node_local_first, rank
from tscl.encoders import encoder_defaults, encoder_modality, get_encoder, list_encoders
from tscl.grammar import UsageError, parse_kwargs, parse_split
from tscl.methods import get_method, method_class
from tscl.train import note, pretrain

__all__ = ["launch", "validate_training", "check_device"]

_DEFAULT = PretrainConfig()


def check_device(device: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; CUDA only where it is available."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    return device


def _kind_ok(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (list, tuple)) if isinstance(default, (list, tuple)) else True


def _check_kwargs(factory, kwargs: dict, what: str, option: str, skip=()) -> None:
    """Refuse keywords ``factory`` does not take, and values whose type contradicts its default."""
    params = {n: p for n, p in inspect.signature(factory).parameters.items()
              if n not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for key, value in kwargs.items():
        if key not in params:
            raise UsageError(f"{option}: {what} takes no option {key!r}{nearest(key, params)}; its options: "
                             f"{', '.join(sorted(params))}")
        default = params[key].default
        if default is inspect.Parameter.empty or default is None or value is None or _kind_ok(value, default):
            continue
        kind = "list" if isinstance(default, (list, tuple)) else type(default).__name__
        raise UsageError(f"{option}: {key}={value!r} should be a {kind} like its default {default!r}")


def _check_augment(spec: str | None, modality: str) -> None:
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


def validate_training(method: str, encoder: str, encoder_kwargs: dict, method_kwargs: dict, augment=None,
                      modality: str = "waveform", source: str | None = None) -> None:
    """Every name and keyword checked before any data loads; ``source`` names a config file the values come
    from (its keys are named instead of the command-line options)."""
    label = (lambda key: f"--{key.replace('_', '-')}") if source is None else (lambda key: f"{source}: {key}")
    try:
        get_method(method)
    except ValueError as err:
        raise UsageError(f"{label('method')}: {err}") from None
    try:
        factory = get_encoder(encoder)
    except ValueError as err:
        raise UsageError(f"{label('encoder')}: {err}") from None
    _check_kwargs(factory, encoder_kwargs, f"encoder {encoder}", label("encoder_kwargs"), skip=("in_channels",))
    _check_kwargs(get_method(method), method_kwargs, f"method {method}", label("method_kwargs"), skip=("encoder",))
    _check_augment(augment, modality)
    if encoder_modality(encoder) != modality:
        fits = [n for n in list_encoders() if encoder_modality(n) == modality]
        raise UsageError(f"{label('encoder')} {encoder} encodes {encoder_modality(encoder)} data; this dataset is "
                         f"{modality} data (its encoders: {', '.join(fits)})")
    try:
        method_class(method).check_modality(modality)
    except ValueError as err:
        raise UsageError(f"{label('method')} {method}: {err}") from None


def _kwargs(value: str | dict | None, option: str) -> dict:
    """Keyword arguments given as a dict, or as ``K=V,...`` text (:func:`tscl.grammar.parse_kwargs`)."""
    return dict(value) if isinstance(value, dict) else parse_kwargs(value, option)


def _run_folder(out: Path, overwrite: bool) -> None:
    """A run folder is never overwritten silently: ``resume`` continues it, ``overwrite`` replaces it (once every
    check has passed: the old run stays if the new one is refused); a folder another process is writing is
    refused naming that process."""
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


def _run_folder_lock(out: Path) -> None:
    """A resume of a folder another process is writing is refused before any data loads."""
    holder = RunLock.holder(out)
    if holder:
        raise UsageError(f"--resume {out}: another tscl process is writing this run ({holder}); wait for it or stop it")


# options a saved config fixes: given with resume / config they must agree with it
_FIXED = ("method", "encoder", "encoder_kwargs", "method_kwargs", "augment", "epochs", "lr", "seed", "compile",
          "dataset", "dataset_kwargs", "split")


def _saved_value(cfg: PretrainConfig, key: str):
    if key in ("method", "encoder", "encoder_kwargs", "epochs", "lr", "seed", "compile"):
        return getattr(cfg, key)
    if key == "method_kwargs":
        return {k: v for k, v in cfg.method_kwargs.items() if k != "augment"}
    if key == "augment":
        return cfg.method_kwargs.get("augment")
    if key == "dataset_kwargs":
        return {k: v for k, v in (cfg.dataset.get("options") or {}).items() if k != "metadata"}
    return cfg.dataset.get(key)


def _check_fixed(options: dict, cfg: PretrainConfig, given: set, where: str, resume: bool) -> None:
    """Refuse options given beside resume / config that contradict the saved config, naming the option."""
    advice = ("a resumed run continues with its own settings: leave the option out, or start a new run with --out"
              if resume else "edit the config file or leave the option out")
    for key in _FIXED:
        if key not in given:
            continue
        value, saved = options[key], _saved_value(cfg, key)
        if key in ("encoder_kwargs", "method_kwargs", "dataset_kwargs"):
            value = _kwargs(value, f"--{key.replace('_', '-')}")
        if value != saved:
            raise UsageError(f"--{key.replace('_', '-')} {value}: {where} has {key} {saved!r}; {advice}")
    if "data" in given and cfg.dataset.get("dataset", "wfdb") != "wfdb":
        raise UsageError(f"--data means --dataset wfdb; {where} reads dataset {cfg.dataset['dataset']!r}: give its "
                         "new place with --root")


def _moved_spec(options: dict, cfg: PretrainConfig, given: set, run: Path | None) -> dict:
    """The saved config's data source, at the place the options give (root/data/metadata/cache)."""
    spec = dict(cfg.dataset)
    if given & {"root", "data"}:
        spec["root"] = str(Path(options.get("root") or options.get("data")).resolve())
    if "metadata" in given:
        spec["options"] = {**(spec.get("options") or {}), "metadata": options["metadata"]}
    if "cache" in given:
        spec["cache"] = options["cache"]
    if run is not None and not given & {"root", "data"} and spec.get("root") and not Path(spec["root"]).exists():
        raise UsageError(f"{run}: its data {spec['root']} is not there any more; if it moved, give its new place: "
                         f"tscl pretrain --resume {run} --root NEW_PLACE (a resume checks that the content is the same)")
    return spec


def _check_same_data(run: Path, cfg: PretrainConfig, spec: dict, data, given: set) -> None:
    """A resume reads the data its run was pretrained on: compared by content (the checkpoint's fingerprint),
    so a moved dataset resumes (with a note) and different data is refused naming the option."""
    if not (run / CHECKPOINT).exists():
        return
    saved = (read_checkpoint_meta(run / CHECKPOINT).get("identity") or {}).get("data")
    if saved is None or saved == data.fingerprint:
        if spec.get("root") != cfg.dataset.get("root"):
            note(f"the data moved: {cfg.dataset.get('root')} -> {spec['root']} (same content); resuming there, and "
                 "config.json now names the new place")
        return
    option = "--data" if "data" in given else "--root" if "root" in given else "the data at"
    raise UsageError(f"{option} {spec['root']}: not the data {run} was pretrained on (content fingerprint "
                     f"{data.fingerprint}, the run's {saved}); a run resumes only on its own data: give the place "
                     "that holds it, or start a new run with --out")


def _finished(run: Path) -> dict | None:
    """The checkpoint's metadata when ``run`` finished (final step reached, weights written), else None."""
    if not (run / CHECKPOINT).exists() or not (run / "encoder.safetensors").exists():
        return None
    meta = read_checkpoint_meta(run / CHECKPOINT)
    return meta if meta.get("total") and meta["step"] >= meta["total"] else None


def _saved_config(options: dict, given: set, resume, config) -> PretrainConfig | Path:
    """The config of a resume or of a config file, checked against the options given beside it; a finished
    resumed run is returned as its folder (nothing to do)."""
    path = Path(resume or config)
    where = f"the run {path}" if resume else str(path)
    cfg = load_config(path)
    _check_fixed(options, cfg, given, where, resume=bool(resume))
    if not cfg.dataset:  # runs made before config.json named their data
        cfg = replace(cfg, dataset=data_spec(options.get("dataset"), options.get("root"), data=options.get("data"),
                                             metadata=options.get("metadata"), cache=options.get("cache"),
                                             dataset_kwargs=options.get("dataset_kwargs")))
    out = Path(resume) if resume else Path(options.get("out") or cfg.out_dir)
    if resume:
        _run_folder_lock(out)
        done = _finished(out)
        if done is not None:
            print(f"{out}: this run is finished (step {done['step']} of {done['total']}); nothing to do (its "
                  f"encoder: {out / 'encoder.safetensors'})")
            return out
    else:
        _run_folder(out, options.get("overwrite", False))
    cfg = replace(cfg, out_dir=str(out), resume=bool(resume), device=options["device"],
                  progress=options["progress"], dataset=_moved_spec(options, cfg, given, out if resume else None))
    validate_training(cfg.method, cfg.encoder, cfg.encoder_kwargs, cfg.method_kwargs,
                      modality=get_source(cfg.dataset["dataset"]).modality, source=None if resume else str(path))
    return cfg


def _new_config(options: dict) -> PretrainConfig:
    if not options.get("out"):
        raise UsageError("give --out RUN_DIR (a new run), --resume RUN_DIR or --config RUN_DIR/config.json")
    augment = options.get("augment")
    method_kwargs = {**_kwargs(options.get("method_kwargs"), "--method-kwargs"),
                     **({"augment": augment} if augment else {})}
    spec = data_spec(options.get("dataset"), options.get("root"), data=options.get("data"),
                     metadata=options.get("metadata"), dataset_kwargs=options.get("dataset_kwargs"),
                     cache=options.get("cache"))
    src = get_source(spec["dataset"])
    encoder = options.get("encoder") or default_encoder(src.modality)
    try:
        encoder_kwargs = (encoder_defaults(encoder) if options.get("encoder_kwargs") is None else
                          _kwargs(options["encoder_kwargs"], "--encoder-kwargs"))
    except ValueError as err:
        raise UsageError(f"--encoder: {err}") from None
    validate_training(options["method"], encoder, encoder_kwargs, method_kwargs, augment, src.modality)
    parse_split(options.get("split"), "--split")  # malformed: refused before any data loads
    spec["split"] = options.get("split") or src.default_split
    _run_folder(Path(options["out"]), options.get("overwrite", False))
    return PretrainConfig(out_dir=options["out"], method=options["method"], encoder=encoder,
                          encoder_kwargs=encoder_kwargs, method_kwargs=method_kwargs, epochs=options["epochs"],
                          lr=options["lr"], seed=options["seed"], device=options["device"],
                          progress=options["progress"], compile=options.get("compile", False), dataset=spec)


def launch(*, out: str | None = None, resume: str | None = None, config: str | None = None, overwrite: bool = False,
           dataset: str | None = None, root: str | None = None, data: str | None = None, metadata: str | None = None,
           dataset_kwargs: str | dict | None = None, split: str | None = None, cache: str | None = None,
           method: str = _DEFAULT.method, encoder: str | None = None, encoder_kwargs: str | dict | None = None,
           method_kwargs: str | dict | None = None, augment: str | None = None, epochs: int = _DEFAULT.epochs,
           lr: float = _DEFAULT.lr, seed: int = _DEFAULT.seed, device: str = _DEFAULT.device, compile: bool = False,
           ckpt_every: int | None = None, ckpt_every_min: float | None = None, progress: bool = True,
           given: set | frozenset = frozenset()) -> Path:
    """Pretrain a new run into ``out``, resume the run ``resume``, or make one from the config file ``config``;
    returns the run folder. ``given`` names the options the caller set explicitly (checked against a saved
    config). Keyword texts (``*_kwargs``) are ``K=V,...`` (:func:`tscl.grammar.parse_kwargs`) or dicts."""
    options = dict(locals())
    check_device(device)
    if resume and config:
        raise UsageError("give either --resume RUN_DIR or --config FILE, not both")
    cfg = _saved_config(options, set(given), resume, config) if resume or config else _new_config(options)
    if isinstance(cfg, Path):  # a resumed run that is already finished
        return cfg
    if ckpt_every is not None:
        cfg = replace(cfg, ckpt_every=ckpt_every)
    if ckpt_every_min is not None:
        cfg = replace(cfg, ckpt_every_min=ckpt_every_min)
    init_distributed(cfg.device)  # under torchrun: join the other ranks before touching the cache
    with node_local_first():  # each node's first rank builds (or checks) its cache, all nodes at once
        loaded = open_spec(cfg.dataset, progress=progress)
    if resume:
        _check_same_data(Path(resume), load_config(resume), cfg.dataset, loaded, set(given))
    if rank() == 0:
        verb = "resuming" if resume else "pretraining"
        print(f"{verb} {cfg.method}/{cfg.encoder} on {cfg.dataset['dataset']} split "
              f"{cfg.dataset.get('split') or 'all'}: {loaded.describe()}")
    run = pretrain(loaded, cfg, overwrite=overwrite)
    if rank() == 0:  # under torchrun the other ranks trained the same run folder
        print(f"pretrained encoder in {run}")
    return run
