"""Single-lead ECG pretraining shared by ``bench_scale_curve`` and ``bench_transfer``.

Every item is 10 s of lead I at 100 Hz, z-scored per item (``normalize=zscore``: CinC 2017's handheld
AliveCor recordings and PTB-XL's lead I come from different devices and amplifiers):

- CinC 2017 (``cinc2017`` source; ``REFERENCE-v3.csv`` labels when it lies beside ``training2017/``):
  pretraining reads every whole 10 s window (``windows=all``) of the records outside the source's test
  split (its train and val records, 80 %); probes read each record's first 10 s (``windows=first``,
  zero-padded for the few records shorter than 10 s). Patient = record (the challenge has no patient ids).
- PTB-XL (``ptbxl`` source, ``channels=I``): pretraining reads strat_fold 1-8 (the source's ``train``
  split) only.

Pretraining sets are nested: the non-test CinC records in one seeded order, the first ``n`` of them for
size ``n`` (1,000 < 2,000 < ...), with or without the PTB-XL training folds added. Every run takes the same
number of optimiser steps whatever its size (:func:`pretrain_fixed`), so sizes differ in data, not compute.
:func:`check_hidden` asserts, before any pretraining, that no CinC test record and no PTB-XL fold-9/10
patient is in a pretraining set; the evaluation engine then refuses any run pretrained on a test patient of
the probe's own data, and asserts the patient split of every probe fit.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tscl.benchmarks.bench_methods import code_digest, finished_run
from tscl.benchmarks.bench_real import pretrain_timed
from tscl.datasets import Dataset, open_dataset
from tscl.train import PretrainConfig

__all__ = ["FS", "WINDOW_S", "ENCODER", "ENCODER_KWARGS", "AUGMENT", "STEPS", "BATCH", "cinc_options", "ptbxl_options", "Joined",
           "Pool", "open_pool", "pretraining_set", "check_hidden", "pretrain_fixed", "method_kwargs"]

FS, WINDOW_S = 100, 10
ENCODER, ENCODER_KWARGS = "cnn1d", {"widths": [16, 32, 64]}
AUGMENT = "crop:len=0.8,scale,noise:snr=20,wander"  # SimCLR's ECG views without lead dropout (one lead)
STEPS, BATCH = 250, 128  # every pretraining run: the same optimiser steps of the same batch, whatever its data
_INDEX = ["patient_id", "record_id", "split", "fs", "n_samples", "n_channels", "channels"]


def cinc_options(windows: str = "first") -> dict:
    """The ``cinc2017`` options of every item here: 10 s at 100 Hz, z-scored; ``windows`` first or all."""
    return {"fs": FS, "length_s": WINDOW_S, "windows": windows, "normalize": "zscore"}


def ptbxl_options() -> dict:
    """The ``ptbxl`` options: lead I, z-scored; the shared sample's listed ECGs without records are left out."""
    return {"channels": "I", "normalize": "zscore", "on_error": "skip"}


def method_kwargs(method: str, batch: int) -> dict:
    """The objective's settings: SimCLR on :data:`AUGMENT`; PCLR pairs two windows of one record."""
    if method == "pclr":
        return {"proj_dim": 64, "patients_per_batch": batch // 2}
    return {"proj_dim": 64, "batch_size": batch, "augment": AUGMENT}


class Joined(Dataset):
    """Waveform datasets of one item shape as one: rows of the first, then of the second, ...; ``pretrain_source`` names
    which each row came from (pretraining on CinC 2017 and PTB-XL at once)."""

    modality = "waveform"

    def __init__(self, parts: list, source: dict | None = None):
        infos = [{k: p.info[k] for k in ("in_channels", "fs", "n_samples", "normalize")} for p in parts]
        if any(i != infos[0] for i in infos):
            raise ValueError(f"joined datasets differ in item shape, rate or normalisation: {infos}")
        index = pl.concat([p.index.select(_INDEX).with_columns(pl.lit(str((p.source or {}).get("dataset", k)))
                                                                 .alias("pretrain_source"))
                           for k, p in enumerate(parts)], how="vertical_relaxed")
        super().__init__(index, source=source, notes={})
        self.parts = parts
        self._part = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
        self._local = np.concatenate([np.arange(len(p)) for p in parts])

    @property
    def in_channels(self) -> int:
        return self.parts[0].in_channels

    @property
    def info(self) -> dict:
        return self.parts[0].info

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256("|".join(p.fingerprint for p in self.parts).encode())
        h.update("\n".join(self.index["record_id"].cast(pl.Utf8).to_list()).encode())
        return h.hexdigest()

    def fetch(self, rows) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        out = None
        for k, part in enumerate(self.parts):
            mine = np.flatnonzero(self._part[rows] == k)
            if not len(mine):
                continue
            x = part.fetch(self._local[rows[mine]])
            if out is None:
                out = torch.empty((len(rows), *x.shape[1:]), dtype=x.dtype)
            out[torch.from_numpy(mine)] = x
        return out

    def _take(self, rows):
        parts = [self.parts[k].subset(self._local[rows[self._part[rows] == k]]) for k in range(len(self.parts))]
        if not np.all(np.diff(self._part[rows]) >= 0):
            raise ValueError("a subset of a joined dataset keeps its parts in order")
        return Joined([p for p in parts if len(p)], source=self.source)


@dataclass
class Pool:
    """What pretraining may read: CinC 2017's non-test windows (records in a seeded order) and PTB-XL's training
    folds, and the held-out ids :func:`check_hidden` checks against."""

    cinc: Dataset  # every 10 s window of the non-test records
    order: list  # the non-test records, in the seeded order the nested sizes take them
    ptbxl: Dataset | None  # lead I of strat_fold 1-8
    cinc_test: set  # the records of CinC's test split
    ptbxl_held_out: set  # the patients of PTB-XL folds 9 and 10
    roots: dict


def open_pool(cinc_root, ptbxl_root=None, *, cache=None, seed: int = 0) -> Pool:
    """Open both sources (PTB-XL only with a root) and draw the order of the non-test CinC records."""
    windows = open_dataset("cinc2017", cinc_root, cache=cache, progress=False, **cinc_options("all"))
    split = windows.index["split"].to_numpy()
    test = set(windows.index.filter(pl.col("split") == "test")["patient_id"].to_list())
    records = sorted(set(windows.index["patient_id"].to_list()) - test)
    order = [records[i] for i in np.random.default_rng(seed).permutation(len(records))]
    cinc = windows.subset(np.flatnonzero(split != "test"))
    cinc.source = {"dataset": "cinc2017", "root": str(cinc_root), "options": cinc_options("all")}
    ptbxl, held = None, set()
    if ptbxl_root is not None:
        full = open_dataset("ptbxl", ptbxl_root, cache=cache, progress=False, **ptbxl_options())
        side = full.index["split"].to_numpy()
        held = set(full.index.filter(pl.col("split") != "train")["patient_id"].cast(pl.Utf8).to_list())
        ptbxl = full.subset(np.flatnonzero(side == "train"))
        ptbxl.source = {"dataset": "ptbxl", "root": str(ptbxl_root), "options": ptbxl_options()}
    return Pool(cinc, order, ptbxl, test, held, {"cinc2017": str(cinc_root), "ptbxl": str(ptbxl_root)})


def pretraining_set(pool: Pool, n_records: int | None, with_ptbxl: bool) -> Dataset:
    """Every window of the first ``n_records`` of the ordered non-test CinC records (None: all of them), plus
    PTB-XL's training folds with ``with_ptbxl``; its ``source`` says which rows."""
    n = len(pool.order) if n_records is None else int(n_records)
    if not 0 < n <= len(pool.order):
        raise ValueError(f"size {n_records}: the pool holds {len(pool.order)} non-test CinC 2017 records")
    keep = set(pool.order[:n])
    pids = pool.cinc.index["patient_id"].to_list()
    cinc = pool.cinc.subset(np.flatnonzero([p in keep for p in pids]))
    rows = f"the first {n} of the {len(pool.order)} non-test CinC 2017 records in a seeded order, every 10 s window"
    if not with_ptbxl:
        cinc.source = {**pool.cinc.source, "split": None, "pretrain_rows": rows}
        return cinc
    if pool.ptbxl is None:
        raise ValueError("the series with PTB-XL needs its root")
    source = {"dataset": "cinc2017+ptbxl", "root": f"{pool.roots['cinc2017']} + {pool.roots['ptbxl']}",
              "split": None, "options": {"cinc2017": cinc_options("all"), "ptbxl": ptbxl_options()},
              "pretrain_rows": rows + "; PTB-XL strat_fold 1-8, lead I"}
    cinc.source = {"dataset": "cinc2017"}
    return Joined([cinc, pool.ptbxl], source=source)


def check_hidden(data: Dataset, pool: Pool) -> dict:
    """Assert that no held-out CinC record or PTB-XL patient is in ``data`` (a pretraining set); its counts."""
    index = data.index
    source = index["pretrain_source"].to_list() if "pretrain_source" in index.columns else ["cinc2017"] * index.height
    pids = index["patient_id"].cast(pl.Utf8).to_list()
    cinc = {p for p, s in zip(pids, source) if s == "cinc2017"}
    ptb = {p for p, s in zip(pids, source) if s == "ptbxl"}
    assert not cinc & pool.cinc_test, f"CinC 2017 test records in pretraining: {sorted(cinc & pool.cinc_test)[:5]}"
    assert not ptb & pool.ptbxl_held_out, f"PTB-XL fold 9/10 patients in pretraining: {sorted(ptb & pool.ptbxl_held_out)[:5]}"
    return {"items": int(index.height), "cinc_records": len(cinc), "ptbxl_patients": len(ptb),
            "ptbxl_ecgs": int(sum(s == "ptbxl" for s in source))}


def _rows_digest(data: Dataset) -> str:
    return hashlib.sha256("\n".join(data.index["record_id"].cast(pl.Utf8).to_list()).encode()).hexdigest()[:16]


def pretrain_fixed(data: Dataset, run_dir: Path, method: str, *, steps: int, batch: int, lr: float = 3e-3,
                   seed: int = 0, method_kw: dict | None = None) -> tuple[Path, float]:
    """Pretrain ``method`` (settings ``method_kw``, default :func:`method_kwargs`) with the ``cnn1d`` of
    :data:`ENCODER_KWARGS` on ``data`` for exactly ``steps`` optimiser steps (epochs = enough passes to cover
    them, stopped at ``steps``; the LR schedule spans those passes), or reuse a finished run of ``run_dir``
    made with these settings, code and rows. Returns (run folder, seconds)."""
    per_epoch = max(1, len(data) // batch)
    kw = method_kwargs(method, batch) if method_kw is None else dict(method_kw)
    cfg = PretrainConfig(out_dir=str(run_dir), method=method, encoder=ENCODER, encoder_kwargs=dict(ENCODER_KWARGS),
                         method_kwargs=kw, epochs=math.ceil(steps / per_epoch),
                         max_steps=steps, lr=lr, seed=seed, progress=False, ckpt_every=0, dataset=data.source)
    rows = _rows_digest(data)
    done = finished_run(run_dir, cfg)
    if done is not None:
        saved = json.loads((run_dir / "done.json").read_text())
        if saved.get("rows") != rows or saved.get("steps") != steps:
            raise ValueError(f"{run_dir} holds a finished run on other rows or steps ({saved.get('rows')}, "
                             f"{saved.get('steps')} there; {rows}, {steps} now); use another --out")
        return run_dir, done
    seconds = pretrain_timed(data, cfg)
    taken = sum("step" in json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    assert taken == steps, f"{run_dir}: {taken} steps taken, {steps} asked"
    (run_dir / "done.json").write_text(json.dumps({"pretrain_s": seconds, "code": code_digest(method, ENCODER),
                                                   "rows": rows, "steps": steps}))
    return run_dir, seconds
