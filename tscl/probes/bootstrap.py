"""Patient-level bootstrap resamples in bounded memory, and every probe metric over them in O(n) per resample.

A resample draws the P test patients with replacement: multinomial counts ``c [P]``, and a
record's weight is its patient's count (recordings of one patient move together). Each metric
here is a function of weighted sums over *groups* of records:

- AUROC and AUPRC: the positives' and the negatives' weight at each distinct score. With
  ``pos_u``, ``neg_u`` at the distinct scores ``u`` in ascending order,
  ``AUROC = sum_u pos_u (sum_{v<u} neg_v + neg_u / 2) / (N_pos N_neg)`` (ties count one half, as
  in scikit-learn's ``roc_auc_score``) and ``AUPRC = sum_u pos_u TP_u / (TP_u + FP_u) / N_pos``
  with ``TP_u``, ``FP_u`` the weight at scores >= u (scikit-learn's ``average_precision_score``);
- Brier: ``sum w (p - y)^2 / sum w``; ECE: ``sum_b |sum_{i in b} w_i (y_i - p_i)| / sum w`` over
  equal-width bins (the same as ``sum_b (W_b / W) |ybar_b - pbar_b|``); accuracy at the threshold 0.5:
  ``sum w [(p > 0.5) = y] / sum w`` (a probability of exactly 0.5 calls the negative class, as MedMNIST's
  evaluator does);
- MAE and R^2: ``sum w |y - yhat|``, ``sum w (y - yhat)^2`` and the moments of ``y``.

Sums over fixed groups (Brier, accuracy, calibration bins, regression moments) are ``c @ S`` with ``S [P, K]``
the sums over each patient's records. The rank-based ones sort each label's scores once (O(n log n))
and then, per resample, gather the patients' counts in score order and take cumulative sums
(:class:`_Ranked`): O(n) time and memory per resample, and records are never expanded to a dense
``[n_boot, n]`` matrix. Labels are scored one at a time. Resamples are drawn once, kept as the
smallest unsigned integer type that holds them (1 byte per patient and resample in practice),
and turned into float64 in chunks of at most :data:`CHUNK_BYTES` of work arrays. The draws are
one ``numpy`` generator stream, so they equal a single ``multinomial(P, 1/P, size=n_boot)``
draw whatever the chunking.
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["Resamples", "CHUNK_BYTES", "macro_auroc_resampled", "classification_resampled", "regression_resampled",
           "mean_resampled", "decision_resampled"]

CHUNK_BYTES = 128 * 2**20  # float64 work arrays per chunk of resamples
_DRAW_ROWS = 64  # resamples drawn per call of the generator (the stream does not depend on it)


class Resamples:
    """``n_boot`` weightings of ``n`` records: ``counts [n_boot, G]`` per group and ``inverse [n]``,
    the group of each record (a record's weight is its group's count).

    :meth:`patient_bootstrap` draws whole patients; :meth:`from_weights` wraps explicit record
    weights ``[B, n]`` (each record its own group)."""

    def __init__(self, counts: np.ndarray, inverse: np.ndarray):
        self.counts = counts
        self.inverse = np.asarray(inverse, dtype=np.int64)
        if counts.ndim != 2 or (len(self.inverse) and self.inverse.max() >= counts.shape[1]):
            raise ValueError(f"counts must be [n_boot, groups] covering every record's group, got {counts.shape}")

    @classmethod
    def patient_bootstrap(cls, groups, n_boot: int, seed: int) -> "Resamples":
        """Patient-level bootstrap: ``n_boot`` multinomial draws of the unique ``groups``, equal probability."""
        uniq, inverse = np.unique(np.asarray(groups), return_inverse=True)
        P = len(uniq)
        rng = np.random.default_rng(seed)
        counts = np.zeros((n_boot, P), dtype=np.uint8)
        for start in range(0, n_boot, _DRAW_ROWS):
            draw = rng.multinomial(P, np.full(P, 1 / P), size=min(_DRAW_ROWS, n_boot - start))
            if draw.max(initial=0) > np.iinfo(counts.dtype).max:
                counts = counts.astype(np.min_scalar_type(P))
            counts[start:start + len(draw)] = draw
        return cls(counts, inverse.reshape(-1))

    @classmethod
    def from_weights(cls, weights) -> "Resamples":
        """Explicit record weights ``[B, n]`` (a 1-D ``[n]`` is one weighting)."""
        w = np.asarray(weights, dtype=np.float64)
        w = w[None] if w.ndim == 1 else w
        return cls(w, np.arange(w.shape[1]))

    @property
    def n_groups(self) -> int:
        return self.counts.shape[1]

    def __len__(self) -> int:
        return self.counts.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_boot, n)``: the shape of the dense record weights these resamples stand for."""
        return len(self), len(self.inverse)

    def chunks(self, n: int):
        """``(start, C [b, G] float64)`` over all resamples, ``b`` such that the ~6 ``[b, n]`` float64 work
        arrays of one label stay within :data:`CHUNK_BYTES`."""
        b = max(1, min(len(self), CHUNK_BYTES // (6 * 8 * max(1, n + 1))))
        for start in range(0, len(self), b):
            yield start, self.counts[start:start + b].astype(np.float64)

    def record_weights(self, rows=slice(None)) -> np.ndarray:
        """Dense ``[b, n]`` record weights of resamples ``rows`` (for small data; metrics never need it)."""
        return self.counts[rows][:, self.inverse].astype(np.float64)

    def __iter__(self):
        """Each resample's record weights ``[n]``, one at a time."""
        for i in range(len(self)):
            yield self.record_weights(slice(i, i + 1))[0]



def _ratio(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _per_group(resamples: Resamples, values: np.ndarray) -> np.ndarray:
    """``[G, K]`` sums of ``values [n, K]`` over each group's records (a resample's sums are ``C @ this``)."""
    return np.stack([np.bincount(resamples.inverse, weights=v, minlength=resamples.n_groups) for v in values.T], 1)


class _Ranked:
    """One label's scores sorted once (O(n log n)); :meth:`weights` then gives what AUROC and AUPRC need
    per resample in O(n): the positives' weights in score order and cumulative sums of both classes.

    For a positive i with score s_i, ``neg_lo[i]`` / ``neg_hi[i]`` count the negatives scored below /
    at most s_i, and ``pos_lo[i]`` the positives scored below s_i, so with ``cumneg[:, k]`` the weight
    of the k lowest negatives the negatives' weight below s_i is ``cumneg[:, neg_lo]`` and the tied
    ones' ``cumneg[:, neg_hi] - cumneg[:, neg_lo]``."""

    def __init__(self, y, scores, resamples: Resamples):
        y = np.asarray(y).astype(bool)
        s = np.asarray(scores, dtype=np.float64)
        order = np.argsort(s, kind="stable")
        pos, neg = order[y[order]], order[~y[order]]
        self.g_pos, self.g_neg = resamples.inverse[pos], resamples.inverse[neg]
        s_pos, s_neg = s[pos], s[neg]
        self.neg_lo = np.searchsorted(s_neg, s_pos, "left")
        self.neg_hi = np.searchsorted(s_neg, s_pos, "right")
        self.pos_lo = np.searchsorted(s_pos, s_pos, "left")
        self.n = len(s)

    def weights(self, C: np.ndarray) -> tuple:
        """``(w_pos [b, n_pos], cumneg [b, n_neg + 1], cumpos [b, n_pos + 1])`` under counts ``C [b, G]``."""
        w_pos = np.take(C, self.g_pos, axis=1)
        cumneg = np.zeros((len(C), len(self.g_neg) + 1))
        np.cumsum(np.take(C, self.g_neg, axis=1), axis=1, out=cumneg[:, 1:])
        cumpos = np.zeros((len(C), len(self.g_pos) + 1))
        np.cumsum(w_pos, axis=1, out=cumpos[:, 1:])
        return w_pos, cumneg, cumpos

    def auroc(self, w_pos, cumneg) -> np.ndarray:
        """``[b]``: ``sum_i w_i (negatives below s_i + tied negatives / 2) / (N_pos N_neg)`` over positives i."""
        num = np.einsum("bi,bi->b", w_pos, np.take(cumneg, self.neg_lo, axis=1))
        num += np.einsum("bi,bi->b", w_pos, np.take(cumneg, self.neg_hi, axis=1))
        n_pos, n_neg = w_pos.sum(axis=1), cumneg[:, -1]
        return np.where((n_pos > 0) & (n_neg > 0), _ratio(0.5 * num, n_pos * n_neg), np.nan)

    def auprc(self, w_pos, cumneg, cumpos) -> np.ndarray:
        """``[b]``: ``sum_i w_i TP_i / (TP_i + FP_i) / N_pos``, TP_i and FP_i the weight scored >= s_i."""
        n_pos, n_neg = cumpos[:, -1:], cumneg[:, -1:]
        tp = n_pos - np.take(cumpos, self.pos_lo, axis=1)
        seen = tp + (n_neg - np.take(cumneg, self.neg_lo, axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(seen > 0, tp / np.where(seen > 0, seen, 1), 0.0)
        ap = np.einsum("bi,bi->b", w_pos, precision)
        return np.where((n_pos[:, 0] > 0) & (n_neg[:, 0] > 0), _ratio(ap, n_pos[:, 0]), np.nan)


def _nanmean(a, axis):
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def _label_auroc(y, p, resamples: Resamples) -> np.ndarray:
    r = _Ranked(y, p, resamples)
    out = np.empty(len(resamples))
    for start, C in resamples.chunks(r.n):
        out[start:start + len(C)] = r.auroc(*r.weights(C)[:2])
    return out


def macro_auroc_resampled(Y, P_repeats, resamples: Resamples) -> np.ndarray:
    """``[B]`` macro AUROCs (labels without both classes in a resample left out), averaged over the
    repeats' predictions ``P_repeats [R, n, L]``, one per resample. One label at a time, so memory
    is one label's sort and one chunk of resamples."""
    Y = np.asarray(Y)
    per = np.array([[_label_auroc(Y[:, j], np.asarray(P)[:, j], resamples) for j in range(Y.shape[1])]
                    for P in P_repeats])  # [R, L, B]
    return _nanmean(per, axis=1).mean(axis=0)


CLASSIFICATION = ("auroc", "auprc", "brier", "ece", "accuracy")  # what classification_resampled computes


def _label_classification(y, p, resamples: Resamples, n_bins: int) -> dict:
    """One label's ``{"auroc", "auprc", "brier", "ece", "accuracy"}`` -> ``[B]`` (NaN where a resample lacks a
    class)."""
    r = _Ranked(y, p, resamples)
    G = resamples.n_groups
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    right = ((p > 0.5) == (y > 0.5)).astype(np.float64)
    sums = _per_group(resamples, np.column_stack([np.ones(len(y)), y, (p - y) ** 2, right]))  # records, pos, sq, hits
    calib = np.bincount(resamples.inverse * n_bins + bins, weights=y - p, minlength=G * n_bins).reshape(G, n_bins)
    out = {m: np.empty(len(resamples)) for m in CLASSIFICATION}
    for start, C in resamples.chunks(r.n):
        rows = slice(start, start + len(C))
        total, n_pos, sq, hits = (C @ sums).T
        both = (n_pos > 0) & (n_pos < total)
        w_pos, cumneg, cumpos = r.weights(C)
        out["auroc"][rows] = r.auroc(w_pos, cumneg)
        out["auprc"][rows] = r.auprc(w_pos, cumneg, cumpos)
        out["brier"][rows] = np.where(both, _ratio(sq, total), np.nan)
        out["ece"][rows] = np.where(both, _ratio(np.abs(C @ calib).sum(axis=1), total), np.nan)
        out["accuracy"][rows] = np.where(both, _ratio(hits, total), np.nan)
    return out


def classification_resampled(Y, P, resamples: Resamples, n_bins: int = 10) -> dict:
    """``{"auroc", "auprc", "brier", "ece", "accuracy"}`` -> ``[B]``: macro averages over the labels with both
    classes in each resample (NaN where none has)."""
    Y, P = np.asarray(Y, dtype=np.float64), np.asarray(P, dtype=np.float64)
    per = [_label_classification(Y[:, j], P[:, j], resamples, n_bins) for j in range(Y.shape[1])]
    return {m: _nanmean(np.array([d[m] for d in per]).reshape(-1, len(resamples)), axis=0) for m in CLASSIFICATION}


def regression_resampled(Y, Yhat, resamples: Resamples) -> dict:
    """``{"mae", "r2"}`` -> ``[B]``: means over target columns. R^2 is NaN where the resample's targets
    are all equal (from each patient's smallest and largest target: exact, not a round-off test)."""
    Y, Yhat = np.asarray(Y, dtype=np.float64), np.asarray(Yhat, dtype=np.float64)
    y = Y - Y.mean(axis=0)  # centred: the moments below then cancel as little as they can
    sums = _per_group(resamples, np.column_stack([np.ones(len(Y)), y, y**2, np.abs(Y - Yhat), (Y - Yhat) ** 2]))
    low = np.full((resamples.n_groups, Y.shape[1]), np.inf)
    high = np.full_like(low, -np.inf)
    np.minimum.at(low, resamples.inverse, Y)
    np.maximum.at(high, resamples.inverse, Y)
    L = Y.shape[1]
    out = {m: np.empty(len(resamples)) for m in ("mae", "r2")}
    for start, C in resamples.chunks(resamples.n_groups * L):
        S = C @ sums
        w = S[:, :1]
        s1, s2, abs_err, sq_err = (S[:, 1 + k * L:1 + (k + 1) * L] for k in range(4))
        drawn = (C > 0)[:, :, None]  # [b, G, 1]
        spread = np.where(drawn, high, -np.inf).max(axis=1) - np.where(drawn, low, np.inf).min(axis=1)
        ss_tot = s2 - _ratio(s1**2, w)
        r2 = np.where((spread > 0) & (ss_tot > 0), 1 - _ratio(sq_err, np.where(ss_tot > 0, ss_tot, 1)), np.nan)
        out["mae"][start:start + len(C)] = _ratio(abs_err, w).mean(axis=1)
        out["r2"][start:start + len(C)] = r2.mean(axis=1)
    return out


def decision_resampled(Y, P, resamples: Resamples) -> dict:
    """One class per row (``Y [n, K]`` one-hot), decided at the argmax of ``P [n, K]``: ``{"tp", "fp", "fn"}``
    -> ``[B, K]`` weighted counts per class and ``"correct"``, ``"total"`` -> ``[B]``, from per-patient sums
    (a resample's counts are ``C @ S``). Metrics of the decisions (F1, sensitivity, PPV, accuracy) are ratios of
    these (:func:`tscl.probes.metrics.decision_metrics`)."""
    Y, P = np.asarray(Y, dtype=np.float64), np.asarray(P, dtype=np.float64)
    K = Y.shape[1]
    truth, said = np.argmax(Y, axis=1), np.argmax(P, axis=1)
    hit = np.eye(K)[said] * np.eye(K)[truth]
    cols = np.column_stack([hit, np.eye(K)[said] - hit, np.eye(K)[truth] - hit, truth == said, np.ones(len(Y))])
    sums = _per_group(resamples, cols)
    out = {k: np.empty((len(resamples), K)) for k in ("tp", "fp", "fn")}
    out.update(correct=np.empty(len(resamples)), total=np.empty(len(resamples)))
    for start, C in resamples.chunks(resamples.n_groups):
        S = C @ sums
        rows = slice(start, start + len(C))
        out["tp"][rows], out["fp"][rows], out["fn"][rows] = S[:, :K], S[:, K:2 * K], S[:, 2 * K:3 * K]
        out["correct"][rows], out["total"][rows] = S[:, -2], S[:, -1]
    return out


def mean_resampled(values, resamples: Resamples) -> np.ndarray:
    """``[B]`` weighted means of ``values [n]`` (e.g. a retrieval's 0/1 hits) under each resample: per-group sums
    times the counts, never a ``[B, n]`` matrix."""
    sums = _per_group(resamples, np.column_stack([np.ones(len(values)), np.asarray(values, dtype=np.float64)]))
    out = np.empty(len(resamples))
    for start, C in resamples.chunks(resamples.n_groups):
        total, hits = (C @ sums).T
        out[start:start + len(C)] = _ratio(hits, total)
    return out
