"""Typed configs and the defaults shared by the command line and Python: one set of each.

:class:`PretrainConfig` is what a run folder's ``config.json`` holds (:func:`load_config` reads it back,
:func:`check_config` checks it key by key); ``tscl pretrain`` takes its option defaults from the
dataclass's fields, so ``tscl pretrain`` and ``pretrain(data, PretrainConfig())`` train alike.
:class:`DemoConfig` does the same for ``tscl demo``. Standard library only (the CLI reads these
defaults for ``--help`` without importing torch).

``encoder=None`` means the dataset modality's default encoder (:data:`tscl.catalog.DEFAULT_ENCODER`:
``resnet1d`` for waveforms, ``ehr_sequence`` for EHR, ``resnet2d18`` for images) and
``encoder_kwargs=None`` the chosen encoder's declared defaults (resnet1d: the CPU width 0.25), so
``PretrainConfig(encoder="cnn1d")`` builds a cnn1d with its own defaults; :func:`~tscl.train.pretrain`
resolves both and records the result in ``config.json``.
"""
from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

__all__ = ["PretrainConfig", "DemoConfig", "EvalDefaults", "RunFileError", "check_config", "load_config", "nearest",
           "defaults"]


class RunFileError(ValueError):
    """A run file that cannot be written or read back: one line naming the file and what to do."""


@dataclass
class PretrainConfig:
    out_dir: str = "runs/pretrain"
    method: str = "pclr"
    encoder: str | None = None  # None: the dataset modality's default encoder (tscl.catalog.DEFAULT_ENCODER)
    encoder_kwargs: dict | None = None  # None: the encoder's declared defaults (tscl.encoders.encoder_defaults)
    method_kwargs: dict = field(default_factory=dict)
    epochs: int = 40
    lr: float = 3e-3
    weight_decay: float = 1e-2
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA; CPU runs in fp32
    compile: bool = False  # torch.compile the encoder
    ckpt_every: int = 500  # steps between checkpoints (0: none by step count; epochs, minutes and the end still)
    ckpt_every_min: float = 5.0  # minutes of wall time between checkpoints (0: none by time)
    resume: bool = False  # continue from out_dir/checkpoint.safetensors when it exists
    max_steps: int = 0  # stop after this many steps (0: all epochs); the LR schedule still spans all epochs
    prefetch: int = 2  # batches the loader thread prepares ahead
    progress: bool = True
    in_channels: int = 12
    channels: list = field(default_factory=list)
    dataset: dict = field(default_factory=dict)  # source: dataset, root, split, options (tscl pretrain --config)
    data_info: dict = field(default_factory=dict)  # modality, in_channels, channels, fs, normalize

    def __post_init__(self):
        if self.encoder is not None and self.encoder_kwargs is None:
            from tscl.encoders import encoder_defaults  # torch: only once an encoder is named

            self.encoder_kwargs = encoder_defaults(self.encoder)


@dataclass
class EvalDefaults:
    """The evaluation's defaults as ``tscl probe`` shows them: :class:`tscl.probes.EvalSpec` has the same
    (a test compares them field by field), kept here so ``--help`` needs no import of the engine."""

    probe: str = "linear"
    fractions: tuple = (0.01, 0.1, 1.0)
    repeats: int = 3
    n_boot: int = 1000
    seed: int = 0
    test_split: str = "test"
    reference: str = "random-init"
    random_init: bool = True
    supervised: bool = False


@dataclass
class DemoConfig:
    """``tscl demo``: simulate a cohort, pretrain PCLR on its training patients, report against random init
    and a supervised baseline (:func:`tscl.demo.run_demo`)."""

    out: str = "runs/demo"
    patients: int = 500
    batch_patients: int = 64  # patients per PCLR batch, two recordings each
    encoder: str | None = None  # None: the waveform default, resnet1d (tscl.catalog.DEFAULT_ENCODER)
    encoder_kwargs: dict | None = None  # None: the encoder's declared defaults
    epochs: int = PretrainConfig.epochs
    lr: float = PretrainConfig.lr
    fractions: tuple = EvalDefaults.fractions
    n_boot: int = EvalDefaults.n_boot
    supervised: bool = True
    seed: int = 0
    device: str = "auto"
    progress: bool = True


def defaults(cls) -> dict:
    """``{field: default}`` of a config dataclass (factories called): what the CLI shows and uses."""
    return {f.name: f.default_factory() if f.default_factory is not MISSING else f.default for f in fields(cls)}


# the config schema: each field's JSON type comes from its annotation; these bound the numbers
_AT_LEAST = {"epochs": 1, "weight_decay": 0, "warmup_frac": 0, "grad_clip": 0, "ckpt_every": 0, "ckpt_every_min": 0,
             "max_steps": 0, "prefetch": 0, "in_channels": 1}
_AT_MOST = {"warmup_frac": 1}
_POSITIVE = ("lr",)
_DATASET_KEYS = {"dataset": str, "root": str, "split": (str, type(None)), "options": dict, "cache": (str, type(None)),
                 "pretrain_rows": str}  # pretrain_rows: which rows, when they are not a named split (benchmarks)
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,), "list": (list,)}
_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "dict": "an object {...}", "list": "a list [...]"}


def nearest(key: str, known) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to ``key``, or ``""``."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_value(key: str, value, annotation: str, where: str) -> None:
    kind, optional = annotation.split("|")[0].strip(), annotation.replace(" ", "").endswith("|None")
    if value is None and optional:
        return
    if isinstance(value, bool) and kind != "bool" or not isinstance(value, _TYPES[kind]):
        null = " or null" if optional else ""
        raise ValueError(f"{where}: {key} must be {_TYPE_NAMES[kind]}{null}, got {json.dumps(value)}")
    if kind == "float" and not math.isfinite(value):
        raise ValueError(f"{where}: {key} must be a finite number, got {value}")
    if key in _AT_LEAST and value < _AT_LEAST[key]:
        raise ValueError(f"{where}: {key} must be >= {_AT_LEAST[key]}, got {value}")
    if key in _AT_MOST and value > _AT_MOST[key]:
        raise ValueError(f"{where}: {key} must be <= {_AT_MOST[key]}, got {value}")
    if key in _POSITIVE and value <= 0:
        raise ValueError(f"{where}: {key} must be > 0, got {value}")


def check_config(values: dict, where: str = "config") -> None:
    """Refuse (``ValueError``, one line naming ``where`` and the key) what the :class:`PretrainConfig` schema
    does not allow: unknown keys (with the nearest known one), values of the wrong JSON type, numbers out of
    range, and malformed ``dataset`` entries."""
    known = {f.name: f.type for f in fields(PretrainConfig)}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{where}: unknown key {key!r}{nearest(key, known)}; the keys: {', '.join(known)}")
        _check_value(key, value, known[key], where)
    if "device" in values and not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", values["device"]):
        raise ValueError(f"{where}: device must be auto, cpu, cuda or cuda:N, got {values['device']!r}")
    for key, value in values.get("dataset", {}).items():
        if key not in _DATASET_KEYS:
            raise ValueError(f"{where}: dataset: unknown key {key!r}{nearest(key, _DATASET_KEYS)}; the keys: "
                             f"{', '.join(_DATASET_KEYS)}")
        if not isinstance(value, _DATASET_KEYS[key]):
            raise ValueError(f"{where}: dataset.{key} has the wrong type: {json.dumps(value)}")


def load_config(run_dir: str | Path) -> PretrainConfig:
    """The :class:`PretrainConfig` of a run folder's ``config.json`` (or of a config file given by its path),
    checked against the schema (:func:`check_config`): the one reader of ``config.json``."""
    path = Path(run_dir)
    if path.is_dir() or not path.exists() and path.suffix != ".json":  # a run folder, or a file given by name
        path = path / "config.json"
    if not path.exists():
        what = "config file not found" if path.name != "config.json" else "not a tscl run folder (config.json missing)"
        raise FileNotFoundError(f"{path}: {what}")
    try:
        saved = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise RunFileError(f"{path}: cannot read ({err.strerror})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: expected a JSON object of config keys, got {type(saved).__name__}")
    check_config(saved, str(path))
    return PretrainConfig(**saved)
