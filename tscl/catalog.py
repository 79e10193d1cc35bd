"""Every name tscl resolves — dataset sources, encoders, methods — in one place, imported on first use.

The built-ins are listed here as ``"module:attribute"``; nothing is imported until a name is used,
so ``tscl --help`` lists them without loading torch. A name that is not built in resolves, in order:

1. an **entry point** of an installed distribution, in group ``tscl.sources``, ``tscl.encoders`` or
   ``tscl.methods`` (``pyproject.toml``: ``[project.entry-points."tscl.encoders"] myenc =
   "mypkg.enc:MyEncoder"``), by its entry-point name;
2. ``module:Name`` itself (``--encoder mypkg.enc:MyEncoder``), imported from ``sys.path``.

A run records the name it was given (``config.json``), so a fresh process rebuilds a run made with
an encoder or method from outside the package the same way. What each kind must be:

- a **source**: a function ``(root, *, cache, progress, **options) -> Dataset`` declared with
  :func:`tscl.datasets.declare_source` (which records its modality, what it needs and its options);
- an **encoder**: an ``nn.Module`` class or factory taking ``in_channels`` first, with ``embed_dim``;
  :func:`tscl.encoders.declare_encoder` records its modality (default ``waveform``) and its default
  keyword arguments (``defaults``);
- a **method**: a :class:`tscl.methods.base.Method` subclass taking the encoder first.

The augmentation ops of every modality are listed in one table too: ``tscl.augment.OPS_BY_MODALITY``.
Standard library only.
"""
from __future__ import annotations

import difflib
import importlib

__all__ = ["BUILTIN", "GROUPS", "DEFAULT_ENCODER", "names", "builtin_names", "load", "default_encoder"]

GROUPS = {"sources": "tscl.sources", "encoders": "tscl.encoders", "methods": "tscl.methods"}

BUILTIN: dict[str, dict[str, str]] = {
    "sources": {
        "wfdb": "tscl.datasets.waveform:_wfdb",
        "ptbxl": "tscl.datasets.waveform:_ptbxl",
        "cinc": "tscl.datasets.waveform:_cinc",
        "eegmat": "tscl.datasets.waveform:_eegmat",
        "edf": "tscl.datasets.waveform:_edf",
        "annotated": "tscl.datasets.annotated:_annotated",
        "cinc2017": "tscl.datasets.cinc2017:_cinc2017",
        "meds": "tscl.datasets.ehr:_meds",
        "mimic-iv": "tscl.datasets.ehr:_mimic_iv",
        "images": "tscl.datasets.images:_images",
        "medmnist": "tscl.datasets.medmnist:_medmnist",
        "webdataset": "tscl.datasets.stream:_webdataset",
    },
    "encoders": {
        "resnet1d": "tscl.encoders.resnet1d:ResNet1d",
        "cnn1d": "tscl.encoders.cnn1d:CNN1d",
        "xresnet1d18": "tscl.encoders.xresnet1d:xresnet1d18",
        "xresnet1d34": "tscl.encoders.xresnet1d:xresnet1d34",
        "xresnet1d50": "tscl.encoders.xresnet1d:xresnet1d50",
        "xresnet1d101": "tscl.encoders.xresnet1d:xresnet1d101",
        "transformer1d": "tscl.encoders.transformer1d:Transformer1d",
        "ehr_sequence": "tscl.encoders.ehr:EHRSequenceEncoder",
        "tabular": "tscl.encoders.tabular:TabularEncoder",
        "resnet2d18": "tscl.encoders.images:resnet2d18",
        "resnet2d50": "tscl.encoders.images:resnet2d50",
        "vit_small": "tscl.encoders.images:vit_small",
    },
    "methods": {
        "simclr": "tscl.methods.simclr:SimCLR",
        "moco": "tscl.methods.moco:MoCo",
        "supcon": "tscl.methods.supcon:SupCon",
        "pclr": "tscl.methods.pclr:PCLR",
        "polywindow": "tscl.methods.polywindow:PolyWindow",
        "pmq": "tscl.methods.pmq:PMQ",
        "clocs-cmsc": "tscl.methods.clocs:CLOCS_CMSC",
        "clocs-cmlc": "tscl.methods.clocs:CLOCS_CMLC",
        "clocs-cmsmlc": "tscl.methods.clocs:CLOCS_CMSMLC",
        "comet": "tscl.methods.comet:COMET",
        "clip": "tscl.methods.clip:CLIP",
    },
}

# the encoder `tscl pretrain` (and PretrainConfig(encoder=None)) uses for a dataset of each modality
DEFAULT_ENCODER = {"waveform": "resnet1d", "ehr": "ehr_sequence", "image": "resnet2d18", "tabular": "tabular"}

_WHAT = {"sources": "dataset", "encoders": "encoder", "methods": "method"}


def builtin_names(kind: str) -> list[str]:
    """The built-in names of ``kind`` (``sources``, ``encoders``, ``methods``), sorted; imports nothing."""
    return sorted(BUILTIN[kind])


def _entry_points(kind: str) -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=GROUPS[kind])}


def names(kind: str) -> list[str]:
    """Built-in names and installed entry points of ``kind``, sorted."""
    return sorted(set(BUILTIN[kind]) | set(_entry_points(kind)))


def default_encoder(modality: str) -> str:
    """The encoder used for ``modality`` when none is named."""
    if modality not in DEFAULT_ENCODER:
        raise ValueError(f"no default encoder for {modality!r} data; name one (--encoder)")
    return DEFAULT_ENCODER[modality]


def _import(spec: str, kind: str, name: str):
    module, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name) and (err.name == module or module.startswith(err.name + ".")):
            raise ValueError(f"{_WHAT[kind]} {name!r}: no module {err.name!r} on the Python path") from None
        raise
    for part in filter(None, attr.split(".")):
        if not hasattr(obj, part):
            raise ValueError(f"{_WHAT[kind]} {name!r}: module {module!r} has no {part!r}")
        obj = getattr(obj, part)
    return obj


def load(kind: str, name: str):
    """The object behind ``name``: a built-in, an entry point of group ``tscl.<kind>``, or ``module:Name``.

    An unknown name raises ``ValueError`` naming the known ones (and the nearest, when one is close)."""
    if name in BUILTIN[kind]:
        return _import(BUILTIN[kind][name], kind, name)
    eps = _entry_points(kind)
    if name in eps:
        return eps[name].load()
    if ":" in name:
        module, _, attr = name.partition(":")
        if not module or not attr or not all(p.isidentifier() for p in (*module.split("."), *attr.split("."))):
            raise ValueError(f"{_WHAT[kind]} {name!r}: expected module:Name, e.g. mypkg.enc:MyEncoder")
        return _import(name, kind, name)
    known = sorted(set(BUILTIN[kind]) | set(eps))
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    near = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown {_WHAT[kind]} {name!r}{near}; choose from {', '.join(known)}, an installed entry point "
                     f"of group {GROUPS[kind]}, or module:Name")
