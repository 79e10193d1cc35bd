"""Probe models beside :class:`~tscl.probes.linear.LinearProbe`, selectable by name.

Classifiers take ``Y [n, L]`` binary targets (one model per label, multi-label) and return
``predict_proba(X) -> [n, L]`` probabilities of the positive class; a label with a single
class in the training rows predicts that class's prevalence and is listed in ``untrainable_``.

- ``linear``: standardised L2 logistic regression, strength ``C``.
- ``knn``: ``k`` nearest neighbours by cosine distance, ``P(y=1|x)`` = fraction of positive
  neighbours weighted by ``1 / distance`` or uniformly.
- ``mlp``: standardised one-hidden-layer MLP (ReLU, Adam, L2 penalty ``alpha``, early stopping
  off: the sets are small), cross-entropy per label.
- ``ridge`` (regression): standardised ridge ``min ||y - Xw - b||^2 + alpha ||w||^2``.

:data:`PROBE_GRIDS` lists the hyper-parameters tried on the validation split.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.linear_model import Ridge
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .linear import LinearProbe

__all__ = ["KNNProbe", "MLPProbe", "RidgeProbe", "PROBES", "PROBE_GRIDS", "make_probe"]


class _PerLabel(BaseEstimator, ClassifierMixin):
    """One binary classifier per label column; subclasses give ``_model()``."""

    def _model(self):
        raise NotImplementedError

    def fit(self, X, Y):
        X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y)
        Y = Y[:, None] if Y.ndim == 1 else Y
        self.models_, self.untrainable_ = [], []
        for j in range(Y.shape[1]):
            y = Y[:, j].astype(int)
            if len(np.unique(y)) < 2:
                self.models_.append(float(y.mean()) if len(y) else 0.5)
                self.untrainable_.append(j)
            else:
                self.models_.append(self._model().fit(X, y))
        return self

    def predict_proba(self, X):
        X = np.asarray(X, dtype=np.float64)
        cols = []
        for m in self.models_:
            if isinstance(m, float):
                cols.append(np.full(len(X), m))
            else:
                cols.append(m.predict_proba(X)[:, list(m.classes_).index(1)])
        return np.stack(cols, axis=1)


class KNNProbe(_PerLabel):
    """k-nearest-neighbour vote on cosine distance (``k`` is capped at the number of training rows)."""

    def __init__(self, k: int = 15, weights: str = "distance"):
        self.k = k
        self.weights = weights

    def fit(self, X, Y):
        self.n_fit_ = len(X)
        return super().fit(X, Y)

    def _model(self):
        return KNeighborsClassifier(n_neighbors=max(1, min(self.k, self.n_fit_)), weights=self.weights,
                                    metric="cosine")


class MLPProbe(_PerLabel):
    """Standardised MLP with one hidden layer of ``hidden`` ReLU units and L2 penalty ``alpha``."""

    def __init__(self, hidden: int = 64, alpha: float = 1e-3, max_iter: int = 300, seed: int = 0):
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.seed = seed

    def _model(self):
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=self.alpha,
                                                             max_iter=self.max_iter, random_state=self.seed))


class RidgeProbe(BaseEstimator, RegressorMixin):
    """Standardised ridge regression on ``y [n]`` or ``Y [n, L]``; ``predict -> [n, L]``."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, X, Y):
        Y = np.asarray(Y, dtype=np.float64)
        self.model_ = make_pipeline(StandardScaler(), Ridge(alpha=self.alpha)).fit(np.asarray(X, np.float64),
                                                                                  Y[:, None] if Y.ndim == 1 else Y)
        return self

    def predict(self, X):
        out = self.model_.predict(np.asarray(X, dtype=np.float64))
        return out[:, None] if out.ndim == 1 else out


PROBES = {"linear": LinearProbe, "knn": KNNProbe, "mlp": MLPProbe, "ridge": RidgeProbe}
PROBE_GRIDS = {
    "linear": [{"C": c} for c in (0.01, 0.1, 1.0)],
    "knn": [{"k": k} for k in (5, 15, 45)],
    "mlp": [{"alpha": a} for a in (1e-4, 1e-2, 1.0)],
    "ridge": [{"alpha": a} for a in (0.1, 10.0, 1000.0)],
}


def make_probe(name: str, **params):
    """A probe estimator by name (``linear``, ``knn``, ``mlp``, ``ridge``)."""
    if name not in PROBES:
        raise ValueError(f"unknown probe {name!r}; known: {', '.join(PROBES)}")
    return PROBES[name](**params)
