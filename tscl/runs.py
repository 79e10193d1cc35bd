"""Run folders read back: the encoder of a run, the towers of a clip run, the run's config.

Two lines reuse a pretrained encoder::

    from tscl.runs import load_encoder
    encoder = load_encoder("runs/pclr")          # the run's architecture and weights, in eval mode

``encoder(x)`` then gives ``[B, encoder.embed_dim]`` features of payloads like the run's data
(:func:`tscl.embed.embed_dataset` runs it over a whole dataset). A run made with an encoder or
method from outside the package (an entry point, or ``module:Name``) records that name in
``config.json``, so a fresh process rebuilds it wherever the module can be imported.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tscl.checkpoint import load_weights
from tscl.config import PretrainConfig, load_config
from tscl.encoders import build_encoder
from tscl.methods import get_method, method_class
from tscl.methods.clip import CLIP, Tower

__all__ = ["load_config", "load_encoder", "from_run", "load_clip", "load_tower", "tower_names", "pretrained_patients",
           "PretrainConfig"]


def pretrained_patients(run_dir: str | Path) -> set[str] | None:
    """The patients a run folder's encoder was pretrained on (its ``patients.json``), or None if not recorded."""
    path = Path(run_dir) / "patients.json"
    return set(json.loads(path.read_text())["patients"]) if path.exists() else None


def load_encoder(run_dir: str | Path, device: str = "cpu", random_init: bool = False, seed: int = 0):
    """Rebuild the encoder of a run folder from its config (and its weights unless ``random_init``), in eval
    mode on ``device``."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    torch.manual_seed(seed)
    encoder = build_encoder(cfg.encoder, cfg.in_channels, **cfg.encoder_kwargs)
    if not random_init:
        encoder.load_state_dict(load_weights(run_dir / "encoder.safetensors", device=device))
    return encoder.to(device).eval()


from_run = load_encoder  # tscl.runs.from_run(run): the same two lines, by the other name


def load_clip(run_dir: str | Path, device: str = "cpu") -> CLIP:
    """The trained :class:`~tscl.methods.clip.CLIP` of a run folder (both towers, standardisation,
    temperature), in eval mode."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    if not issubclass(method_class(cfg.method), CLIP):
        raise ValueError(f"{run_dir} is a {cfg.method!r} run, not clip: it has no second tower")
    state = load_weights(run_dir / "method.safetensors", device=device)  # missing or damaged: one line
    encoder = build_encoder(cfg.encoder, cfg.in_channels, **cfg.encoder_kwargs)
    clip = get_method(cfg.method)(encoder, **{**cfg.method_kwargs, "b_channels": int(state["b_mean"].shape[0])})
    clip.load_state_dict(state)
    return clip.to(device).eval()


def tower_names(run_dir: str | Path) -> tuple[str, str]:
    """The names of a clip run's towers: tower A's data modality (``waveform``, ``image``, ``ehr``) and tower
    B's encoder (``tabular``)."""
    cfg = load_config(run_dir)
    return cfg.data_info.get("modality", "a"), cfg.method_kwargs.get("b_encoder", "tabular")


def load_tower(run_dir: str | Path, name: str = "a", projected: bool = False, device: str = "cpu") -> Tower:
    """Tower ``name`` of a clip run: ``a`` (or the data's modality, e.g. ``waveform``, ``image``, or
    ``encoder``) / ``b`` (or its encoder, ``tabular``), as features or (``projected``) joint-space
    embeddings — what ``tscl embed --tower NAME`` runs."""
    clip = load_clip(run_dir, device)
    a_name, b_name = tower_names(run_dir)
    a_names, b_names = {"a", "encoder", a_name}, {"b", clip.b_encoder, b_name}
    if name in a_names:
        return Tower(clip, "a", projected).eval()
    if name in b_names:
        return Tower(clip, "b", projected).eval()
    raise ValueError(f"unknown tower {name!r}; this run has {sorted(a_names)} (tower A) and {sorted(b_names)} (tower B)")
