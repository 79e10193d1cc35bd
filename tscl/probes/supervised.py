"""Supervised baseline and fine-tuning: an encoder plus a linear head trained end to end on the probe's labels.

Pretraining is worth something when its frozen features plus a linear probe beat both an
untrained encoder (random-init) and an encoder trained end to end on the labelled rows alone.
:class:`SupervisedBaseline` is that second comparison. Called with the training rows of a
label subsample it trains ``encoder + linear head`` from freshly initialised weights and
returns test-side predictions, so it sits beside frozen-feature probes in
:func:`~tscl.probes.table.run_probe` (argument ``predictors``) on the same rows, test side and
bootstrap resamples. Started from a pretrained run's weights (``init``, or
:meth:`SupervisedBaseline.like_run` with ``pretrained=True``) the same loop is fine-tuning.

Training: binary / multi-label targets use the mean binary cross-entropy over labels
(``BCEWithLogits``); multi-class targets (one class per row, one-hot) the cross-entropy of the
softmax over the classes (predictions are its probabilities); regression targets the mean
squared error of targets standardised on the training rows. AdamW (``lr``, ``weight_decay``), linear warm-up then cosine decay, batch
``batch_size`` drawn without replacement, ``epochs`` passes over the rows but at most
``max_steps`` steps. Early stopping: a patient-level validation split is carved out of the
training rows (25 % of their patients, the same rule the probes use for their
hyper-parameters), validation macro AUROC (−MAE for regression) is measured every
``eval_every`` steps and the best weights are kept. With fewer than 10 training patients there
is no validation split to trust: all rows are trained on and the last weights are used. The
test rows are only ever predicted.

Inputs: a :class:`~tscl.datasets.Dataset` (any modality: its ``fetch(rows)`` payload, as
pretraining and ``embed`` read it), ``X [N, C, T]`` waveforms (any time-series encoder of
:mod:`tscl.encoders`) or ``X [N, F]`` tabular features (encoder ``tabular``; NaN = missing,
standardised on the training rows). Results are memoised on (rows, test rows, targets, seed),
so a report that asks for the same fit twice trains once.
"""
from __future__ import annotations

import copy
import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tscl.checkpoint import load_weights
from tscl.encoders import build_encoder, encoder_defaults
from tscl.progress import progress_bar
from tscl.train import cosine_with_warmup, load_config

from .metrics import macro_auroc
from .protocol import patient_split

__all__ = ["SupervisedBaseline"]


def _digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.shape).encode() + str(a.dtype).encode())
        h.update(a.tobytes())
    return h.hexdigest()


class _Net(nn.Module):
    def __init__(self, encoder: nn.Module, n_out: int):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(encoder.embed_dim, n_out)

    def forward(self, x):
        return self.head(self.encoder(x))


class SupervisedBaseline:
    """``baseline(Y, train_rows, test_rows, patient_ids, seed) -> P [len(test_rows), L]``.

    ``X``: all rows' inputs — a dataset (``fetch(rows)`` and ``in_channels``), or an array or memmap —
    indexed by the row numbers given at call time. ``kind``: ``binary`` / ``multilabel`` / ``multiclass``
    (probabilities returned) or ``regression`` (predictions in the targets' units). ``encoder`` / ``encoder_kwargs``: any
    registered encoder; for a run folder use :meth:`like_run` to get the pretrained encoder's
    architecture. ``init``: a run folder whose encoder weights the encoder starts from (fine-tuning;
    the head is new either way). After each call ``last_info`` holds ``steps``, ``best_step``,
    ``best_val`` and ``untrainable_labels``.
    """

    def __init__(self, X, kind: str = "multilabel", encoder: str = "resnet1d", encoder_kwargs: dict | None = None,
                 *, epochs: int = 30, max_steps: int = 300, batch_size: int = 64, lr: float = 3e-3,
                 weight_decay: float = 1e-4, eval_every: int = 20, device: str = "cpu", progress: bool = False,
                 init=None):
        if kind not in ("binary", "multilabel", "multiclass", "regression"):
            raise ValueError(f"kind must be binary, multilabel, multiclass or regression, got {kind!r}")
        self._dataset = hasattr(X, "fetch")
        if not self._dataset and np.ndim(X) not in (2, 3):
            raise ValueError(f"X must be a dataset, [N, C, T] waveforms or [N, F] tabular features, got shape "
                             f"{np.shape(X)}")
        self.X, self.kind = X, kind
        self.encoder = "tabular" if not self._dataset and np.ndim(X) == 2 else encoder
        self.encoder_kwargs = dict(encoder_defaults(self.encoder) if encoder_kwargs is None else encoder_kwargs)
        self.epochs, self.max_steps, self.batch_size = epochs, max_steps, batch_size
        self.lr, self.weight_decay, self.eval_every = lr, weight_decay, eval_every
        self.device, self.progress = torch.device(device), progress
        self.init = init
        self.last_info: dict = {}
        self._memo: dict = {}

    @classmethod
    def like_run(cls, X, run_dir, kind: str = "multilabel", pretrained: bool = False, **kwargs) -> "SupervisedBaseline":
        """The architecture of a pretraining run's encoder (its ``config.json``), trained from scratch, or with
        ``pretrained`` fine-tuned from the run's weights."""
        cfg = load_config(run_dir)
        return cls(X, kind, cfg.encoder, cfg.encoder_kwargs, init=run_dir if pretrained else None, **kwargs)

    @property
    def in_channels(self) -> int:
        return int(self.X.in_channels if self._dataset else self.X.shape[1])

    # -- data ------------------------------------------------------------------------------------------
    def _inputs(self, rows, scale):
        if self._dataset:
            return self.X.fetch(np.asarray(rows)).to(self.device)
        x = np.asarray(self.X[rows], dtype=np.float32)
        if scale is not None:
            x = (x - scale[0]) / scale[1]
        return torch.from_numpy(x).to(self.device)

    def _predict(self, net, rows, scale) -> np.ndarray:
        net.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(rows), 256):
                out.append(net(self._inputs(rows[start:start + 256], scale)).float().cpu().numpy())
        net.train()
        return np.concatenate(out) if out else np.zeros((0, net.head.out_features), dtype=np.float32)

    def _score(self, Y, P) -> float:
        if self.kind == "regression":
            return -float(np.mean(np.abs(Y - P)))
        return float(macro_auroc(Y, P))

    # -- training ----------------------------------------------------------------------------------------
    def __call__(self, Y, rows, test_rows, patient_ids, seed: int = 0) -> np.ndarray:
        Y = np.asarray(Y, dtype=np.float64)
        Y = Y[:, None] if Y.ndim == 1 else Y
        rows, test_rows = np.asarray(rows, dtype=np.int64), np.asarray(test_rows, dtype=np.int64)
        patient_ids = np.asarray(patient_ids)
        if len(rows) < 2:
            raise ValueError(f"the supervised baseline needs at least 2 training rows, got {len(rows)}")
        if not np.isfinite(Y[rows]).all():
            raise ValueError("the supervised baseline's training targets contain NaN/inf")
        key = _digest(rows, test_rows, Y[rows], np.array([seed]))
        if key in self._memo:
            self.last_info, P = self._memo[key]
            return P.copy()
        P = self._fit_predict(Y, rows, test_rows, patient_ids, seed)
        self._memo[key] = (self.last_info, P)
        return P.copy()

    def _network(self, n_out: int) -> "_Net":
        """A fresh encoder (or the ``init`` run's weights) and head; seeded by the caller."""
        encoder = build_encoder(self.encoder, self.in_channels, **self.encoder_kwargs)
        if self.init is not None:
            encoder.load_state_dict(load_weights(Path(self.init) / "encoder.safetensors"))
        return _Net(encoder, n_out).to(self.device).train()

    def _fit_predict(self, Y, rows, test_rows, patient_ids, seed) -> np.ndarray:
        if len(np.unique(patient_ids[rows])) >= 10:
            fit_local, val_local = patient_split(patient_ids[rows], test_fraction=0.25, seed=seed)
            fit, val = rows[fit_local], rows[val_local]
        else:
            fit, val = rows, None
        scale = None
        if self.encoder == "tabular" and not self._dataset:  # standardise on the fitting rows; NaN = missing
            xf = np.asarray(self.X[fit], dtype=np.float64)
            mean = np.nan_to_num(np.nanmean(np.where(np.isfinite(xf), xf, np.nan), axis=0))
            std = np.nan_to_num(np.nanstd(np.where(np.isfinite(xf), xf, np.nan), axis=0), nan=1.0)
            scale = (mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32))
        y_mean = Y[fit].mean(0) if self.kind == "regression" else np.zeros(Y.shape[1])
        y_std = Y[fit].std(0) if self.kind == "regression" else np.ones(Y.shape[1])
        y_std = np.where(y_std > 0, y_std, 1.0)
        target = torch.from_numpy(((Y - y_mean) / y_std).astype(np.float32))

        torch.manual_seed(seed)
        net = self._network(Y.shape[1])
        bs = min(self.batch_size, len(fit))
        steps = int(min(self.max_steps, max(1, self.epochs * math.ceil(len(fit) / bs))))
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(steps, max(1, steps // 20)))
        loss_fn = nn.MSELoss() if self.kind == "regression" else _softmax_ce if self.kind == "multiclass" else \
            nn.BCEWithLogitsLoss()
        rng = np.random.default_rng(seed)
        order = np.empty(0, dtype=np.int64)
        best = (-math.inf, None, 0)
        for step in progress_bar(range(1, steps + 1), desc="supervised baseline", disable=not self.progress, leave=False):
            if len(order) < bs:
                order = np.concatenate([order, rng.permutation(fit)])
            batch, order = order[:bs], order[bs:]
            loss = loss_fn(net(self._inputs(batch, scale)), target[batch].to(self.device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"supervised baseline: non-finite loss at step {step}; check the inputs' scale")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            if val is not None and (step % self.eval_every == 0 or step == steps):
                P_val = self._output(self._predict(net, val, scale), y_mean, y_std)
                score = self._score(Y[val], P_val)
                if np.isfinite(score) and score > best[0]:
                    best = (score, copy.deepcopy(net.state_dict()), step)
        if best[1] is not None:
            net.load_state_dict(best[1])
        single = [j for j in range(Y.shape[1]) if self.kind != "regression" and len(np.unique(Y[rows, j])) < 2]
        self.last_info = {"steps": steps, "best_step": best[2] if best[1] is not None else steps,
                          "best_val": best[0] if best[1] is not None else float("nan"),
                          "validation_rows": 0 if val is None else int(len(val)), "untrainable_labels": single}
        return self._output(self._predict(net, test_rows, scale), y_mean, y_std)

    def _output(self, logits: np.ndarray, y_mean, y_std) -> np.ndarray:
        if self.kind == "regression":
            return logits * y_std + y_mean
        if self.kind == "multiclass":
            z = logits.astype(np.float64)
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def _softmax_ce(logits: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the softmax over the classes against one-hot targets."""
    return nn.functional.cross_entropy(logits, onehot.argmax(dim=1))
