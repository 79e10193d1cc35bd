"""Probe models over frozen embeddings, selectable by name.

Classifiers take ``Y [n, L]`` binary targets and fit one clone of a scikit-learn estimator per
label (:class:`PerLabel`); ``predict_proba(X) -> [n, L]`` gives probabilities of the positive
class. A label with a single class in the training rows cannot be learned: it gets a
``DummyClassifier(strategy="prior")`` (it predicts that class's prevalence) and is listed in
``untrainable_``.

- ``linear``: standardised L2 logistic regression, strength ``C``.
- ``knn``: ``k`` nearest neighbours by cosine distance, ``P(y=1|x)`` = fraction of positive
  neighbours weighted by ``1 / distance`` or uniformly.
- ``mlp``: standardised one-hidden-layer MLP (ReLU, Adam, L2 penalty ``alpha``, early stopping
  off: the sets are small), cross-entropy per label.
- ``ridge`` (regression): standardised ridge ``min ||y - Xw - b||^2 + alpha ||w||^2``.

:data:`PROBE_GRIDS` lists the hyper-parameters tried on the validation split.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.dummy import DummyClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["PerLabel", "LinearProbe", "KNNProbe", "MLPProbe", "RidgeProbe", "C_GRID", "PROBES", "PROBE_GRIDS",
           "make_probe"]

C_GRID = (0.01, 0.1, 1.0)  # the logistic regression's strengths tried on the validation split


class PerLabel(BaseEstimator, ClassifierMixin):
    """One clone of ``estimator`` per label column (a ``DummyClassifier(strategy="prior")`` for a label
    with one class in the training rows, listed in ``untrainable_``). Subclasses build the estimator
    from their own parameters in ``_estimator(X)``; ``_dtype`` is the dtype ``X`` is read as."""

    _dtype = None

    def __init__(self, estimator=None):
        self.estimator = estimator

    def _estimator(self, X):
        return self.estimator

    def fit(self, X, Y):
        X, Y = np.asarray(X, dtype=self._dtype), np.asarray(Y)
        Y = Y[:, None] if Y.ndim == 1 else Y
        template = self._estimator(X)
        self.untrainable_ = [j for j in range(Y.shape[1]) if len(np.unique(Y[:, j])) < 2]
        self.estimators_ = [(DummyClassifier(strategy="prior") if j in self.untrainable_ else clone(template))
                            .fit(X, Y[:, j]) for j in range(Y.shape[1])]
        return self

    def predict_proba(self, X):
        X = np.asarray(X, dtype=self._dtype)
        return np.stack([_positive_proba(m, X) for m in self.estimators_], axis=1)


def _positive_proba(model, X) -> np.ndarray:
    classes = list(model.classes_)
    return model.predict_proba(X)[:, classes.index(1)] if 1 in classes else np.zeros(len(X))


class LinearProbe(PerLabel):
    """Standardised logistic regression per label (multi-label, binary targets)."""

    def __init__(self, C: float = 0.1, max_iter: int = 2000):
        self.C = C
        self.max_iter = max_iter

    def _estimator(self, X):
        return make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter))


class KNNProbe(PerLabel):
    """k-nearest-neighbour vote on cosine distance (``k`` is capped at the number of training rows)."""

    _dtype = np.float64

    def __init__(self, k: int = 15, weights: str = "distance"):
        self.k = k
        self.weights = weights

    def _estimator(self, X):
        return KNeighborsClassifier(n_neighbors=max(1, min(self.k, len(X))), weights=self.weights, metric="cosine")


class MLPProbe(PerLabel):
    """Standardised MLP with one hidden layer of ``hidden`` ReLU units and L2 penalty ``alpha``."""

    _dtype = np.float64

    def __init__(self, hidden: int = 64, alpha: float = 1e-3, max_iter: int = 300, random_state: int = 0):
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state

    def _estimator(self, X):
        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=self.alpha,
                                                             max_iter=self.max_iter, random_state=self.random_state))

    def fit(self, X, Y):
        with warnings.catch_warnings():  # max_iter is the budget on these small sets, not a failure
            warnings.simplefilter("ignore", ConvergenceWarning)
            return super().fit(X, Y)


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
    "linear": [{"C": c} for c in C_GRID],
    "knn": [{"k": k} for k in (5, 15, 45)],
    "mlp": [{"alpha": a} for a in (1e-4, 1e-2, 1.0)],
    "ridge": [{"alpha": a} for a in (0.1, 10.0, 1000.0)],
}


def make_probe(name: str, **params):
    """A probe estimator by name (``linear``, ``knn``, ``mlp``, ``ridge``)."""
    if name not in PROBES:
        raise ValueError(f"unknown probe {name!r}; known: {', '.join(PROBES)}")
    return PROBES[name](**params)
