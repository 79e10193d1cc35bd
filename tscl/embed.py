"""Frozen features: run an encoder over a cache, an array or a dataset without gradients.

:func:`embed_run` is ``tscl embed``: a run's encoder (or one tower of a clip run, or its random-init
twin) over a dataset, written as an embeddings file (:mod:`tscl.embeddings`: ``.npz`` or ``.parquet``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tscl.config import load_config
from tscl.datasets.spec import open_spec, run_data_spec
from tscl.embeddings import Embeddings, save_embeddings
from tscl.grammar import UsageError
from tscl.progress import progress_bar
from tscl.runs import load_encoder, load_tower, pretrained_patients
from tscl.train import check_encoder_fits

__all__ = ["embed_signals", "embed_dataset", "embed_rows", "embed_run"]


@torch.no_grad()
def embed_rows(encoder: torch.nn.Module, n: int, fetch: Callable, batch_size: int = 256,
               device: str | torch.device = "cpu", progress: bool = True, desc: str = "embedding") -> np.ndarray:
    """``encoder(fetch(rows))`` for consecutive batches of ``rows`` in ``0 .. n - 1`` -> float32
    ``[n, encoder.embed_dim]``; ``fetch`` returns the payload of those rows (a tensor or any payload with
    ``.to(device)``). Non-finite features raise."""
    encoder = encoder.to(device).eval()
    out = np.empty((n, encoder.embed_dim), dtype=np.float32)
    for start in progress_bar(range(0, n, batch_size), desc=desc, disable=not progress):
        rows = np.arange(start, min(start + batch_size, n))
        out[rows] = encoder(fetch(rows).to(device)).float().cpu().numpy()
    if not np.isfinite(out).all():
        raise FloatingPointError("encoder produced non-finite features; check the weights and the input scale")
    return out


def embed_signals(encoder: torch.nn.Module, signals, batch_size: int = 256, device: str | torch.device = "cpu",
                  progress: bool = True) -> np.ndarray:
    """``signals [N, C, T]`` (array or memmap) -> float32 features ``[N, encoder.embed_dim]``."""
    def fetch(rows):
        return torch.from_numpy(np.array(signals[rows[0]: rows[-1] + 1], dtype=np.float32))

    return embed_rows(encoder, len(signals), fetch, batch_size, device, progress)


def embed_dataset(encoder: torch.nn.Module, dataset, batch_size: int = 256, device: str | torch.device = "cpu",
                  progress: bool = True) -> np.ndarray:
    """Features of every item of a :class:`~tscl.datasets.Dataset` (any modality), fetched as pretraining
    fetches them (same normalisation) -> float32 ``[len(dataset), encoder.embed_dim]``."""
    return embed_rows(encoder, len(dataset), dataset.fetch, batch_size, device, progress)


def embed_run(run: str | Path, out: str | Path, *, split: str | None = None, tower: str | None = None,
              random_init: bool = False, seed: int = 0, progress: bool = True, **data) -> Embeddings:
    """Features of ``run``'s encoder (``tower``: one tower of a clip run; ``random_init``: the same
    architecture untrained) for every row of ``split`` of a dataset — the run's own unless ``data`` names one
    (the keywords of :func:`tscl.datasets.spec.data_spec`) — written to ``out`` (``.npz`` or ``.parquet``,
    exactly that name) with the ids and the patients the encoder was pretrained on."""
    run = Path(run)
    if not (run / "config.json").exists():
        raise UsageError(f"--run {run}: not a tscl run folder (config.json missing)")
    if tower and random_init:
        raise UsageError("--tower embeds a trained clip tower; --random-init applies to the run's encoder only")
    if Path(out).suffix not in (".npz", ".parquet"):
        raise UsageError(f"--out {out}: an embeddings file ends in .npz or .parquet (the format follows the suffix)")
    spec = run_data_spec(run, split, **data)
    dataset = open_spec(spec, progress=progress)
    check_encoder_fits(load_config(run).data_info, modality=dataset.modality, in_channels=dataset.in_channels,
                       fs=dataset.info.get("fs"), what=f"{spec['dataset']} at {spec['root']}", run=run)
    if tower:
        net = load_tower(run, tower)
        feats = embed_rows(net, len(dataset), lambda rows: net.inputs(dataset, rows), progress=progress,
                           desc=f"embedding (tower {tower})")
    else:
        feats = embed_dataset(load_encoder(run, random_init=random_init, seed=seed), dataset, progress=progress)
    seen = [] if random_init else sorted(pretrained_patients(run) or [])
    emb = Embeddings(feats, dataset.index["record_id"].to_list(), dataset.index["patient_id"].to_list(),
                     run=str(run.resolve()), pretrained_patients=seen, path=str(out))
    save_embeddings(out, emb)
    print(f"wrote {feats.shape} features to {out}")
    return emb
