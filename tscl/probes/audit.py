"""Representation audit: what the geometry of frozen embeddings says before any label is used.

- **Alignment** (Wang & Isola 2020): ``E ||f(x) - f(x+)||_2^alpha`` over positive pairs, with
  ``f`` the L2-normalised embedding; 0 when positives coincide, 4 (alpha = 2) when antipodal.
- **Uniformity** (Wang & Isola 2020): ``log E exp(-t ||f(x) - f(y)||_2^2)`` over all pairs; from
  0 (every point identical) down to about ``-t * 2 * d / (d - 1)`` for points spread on the sphere.
- **Effective rank** (Roy & Vetterli 2007): ``exp(H(p))`` with ``p_k = s_k / sum_j s_j`` the
  normalised singular values of the embedding covariance and ``H(p) = -sum_k p_k log p_k``.
  1 for embeddings collapsed onto one direction, ``d`` for isotropic ones.
- **Patient re-identification**: for each query whose patient has at least two recordings,
  its nearest neighbour by cosine similarity (itself excluded) among all recordings; the
  rate is the fraction of queries whose neighbour belongs to the same patient. Under a
  random neighbour the expected rate is ``mean_q (n_{p(q)} - 1) / (N - 1)`` (chance level).
  A high rate says the embedding carries patient identity, which a patient-aware objective
  encourages and which also makes record-level splits leak.
- **Source shortcut**: how well a source column (database, site, device) is predicted from
  the embedding by a logistic regression on a patient-level split: AUROC (one-vs-rest,
  macro over classes present in the test side) and balanced accuracy. Close to 0.5 AUROC
  means the embedding does not encode where the recording came from.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .protocol import assert_no_patient_leakage, patient_split

__all__ = ["l2_normalise", "alignment", "uniformity", "effective_rank", "patient_reidentification",
           "source_shortcut", "audit_embeddings", "audit_markdown"]


def l2_normalise(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(norm > 0, norm, 1.0)


def _positive_pairs(pair_ids, max_pairs: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """All ``(i, j)``, ``i < j``, sharing a pair id; a random subset of ``max_pairs`` when there are more."""
    pair_ids = np.asarray(pair_ids)
    _, inverse = np.unique(pair_ids, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    left, right = [], []
    for group in np.split(order, bounds):
        if len(group) > 1:
            i, j = np.triu_indices(len(group), k=1)
            left.append(group[i])
            right.append(group[j])
    if not left:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    left, right = np.concatenate(left), np.concatenate(right)
    if len(left) > max_pairs:
        keep = rng.choice(len(left), size=max_pairs, replace=False)
        left, right = left[keep], right[keep]
    return left, right


def alignment(z, pair_ids, alpha: float = 2.0, max_pairs: int = 200_000, seed: int = 0) -> float:
    """``mean ||f(x_i) - f(x_j)||^alpha`` over pairs sharing a pair id (NaN when there is no pair)."""
    f = l2_normalise(z)
    i, j = _positive_pairs(pair_ids, max_pairs, np.random.default_rng(seed))
    if len(i) == 0:
        return float("nan")
    return float(np.mean(np.linalg.norm(f[i] - f[j], axis=1) ** alpha))


def uniformity(z, t: float = 2.0, max_points: int = 2000, seed: int = 0) -> float:
    """``log mean_{i<j} exp(-t ||f(x_i) - f(x_j)||^2)`` (on a random subset of ``max_points`` rows)."""
    f = l2_normalise(z)
    if len(f) > max_points:
        f = f[np.random.default_rng(seed).choice(len(f), size=max_points, replace=False)]
    if len(f) < 2:
        return float("nan")
    sq = np.clip(2.0 - 2.0 * f @ f.T, 0.0, None)  # ||a - b||^2 of unit vectors
    i, j = np.triu_indices(len(f), k=1)
    v = -t * sq[i, j]
    return float(np.log(np.mean(np.exp(v - v.max()))) + v.max())


def effective_rank(z) -> float:
    """``exp(H(s / sum s))`` for the singular values ``s`` of the covariance of ``z [n, d]``.

    0 when the embeddings have no variance at all (every row identical).
    """
    z = np.asarray(z, dtype=np.float64)
    if len(z) < 2:
        return float("nan")
    s = np.linalg.svd(np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1]), compute_uv=False)
    total = s.sum()
    if total <= 1e-12 * max(1.0, float(np.abs(z).max()) ** 2):
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def patient_reidentification(z, patient_ids, block: int = 1024) -> dict:
    """Top-1 cosine nearest-neighbour re-identification rate and its chance level.

    Returns ``rate``, ``chance``, ``queries`` (recordings whose patient has >= 2 of them) and
    ``patients`` (such patients). NaN rate when no patient has two recordings.
    """
    f = l2_normalise(z)
    patient_ids = np.asarray(patient_ids)
    _, inverse, counts = np.unique(patient_ids, return_inverse=True, return_counts=True)
    n = len(f)
    queries = np.flatnonzero(counts[inverse] >= 2)
    if len(queries) == 0 or n < 2:
        return {"rate": float("nan"), "chance": float("nan"), "queries": 0, "patients": 0}
    hits = np.zeros(len(queries), dtype=bool)
    for start in range(0, len(queries), block):
        q = queries[start : start + block]
        sim = f[q] @ f.T
        sim[np.arange(len(q)), q] = -np.inf
        nn = np.argmax(sim, axis=1)
        hits[start : start + len(q)] = inverse[nn] == inverse[q]
    chance = float(np.mean((counts[inverse[queries]] - 1) / (n - 1)))
    return {"rate": float(hits.mean()), "chance": chance, "queries": int(len(queries)),
            "patients": int((counts >= 2).sum())}


def source_shortcut(z, source, patient_ids, test_fraction: float = 0.3, seed: int = 0, C: float = 1.0) -> dict:
    """Predict ``source`` from the embedding with a logistic regression on a patient-level split.

    Returns ``auroc`` (binary, or macro one-vs-rest over the classes present in both sides),
    ``balanced_accuracy``, ``sources`` (number of distinct values) and ``note`` when it cannot
    be measured (a single source, or a split that leaves one side with a single source).
    """
    z = np.asarray(z, dtype=np.float64)
    source = np.asarray(source).astype(str)
    patient_ids = np.asarray(patient_ids)
    classes = np.unique(source)
    out = {"auroc": float("nan"), "balanced_accuracy": float("nan"), "sources": int(len(classes)), "note": ""}
    if len(classes) < 2:
        out["note"] = "a single source: nothing to predict"
        return out
    if len(np.unique(patient_ids)) < 2:
        out["note"] = "fewer than 2 patients: no patient-level split"
        return out
    train, test = patient_split(patient_ids, test_fraction, seed)
    assert_no_patient_leakage(patient_ids, train, test)
    if len(np.unique(source[train])) < 2 or len(np.unique(source[test])) < 2:
        out["note"] = "the patient-level split leaves a side with a single source"
        return out
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000)).fit(z[train], source[train])
    proba = model.predict_proba(z[test])
    known = list(model.classes_)
    aucs = []
    for k, cls in enumerate(known):
        y = source[test] == cls
        if 0 < y.sum() < len(y):
            aucs.append(roc_auc_score(y, proba[:, k]))
    if len(known) == 2:
        aucs = aucs[:1]  # both columns give the same AUROC
    out["auroc"] = float(np.mean(aucs)) if aucs else float("nan")
    out["balanced_accuracy"] = float(balanced_accuracy_score(source[test], model.predict(z[test])))
    return out


def audit_embeddings(z, patient_ids, pair_ids=None, source=None, seed: int = 0) -> dict:
    """Every audit number for one embedding matrix. Positive pairs default to same-patient pairs."""
    z = np.asarray(z, dtype=np.float64)
    pair_ids = patient_ids if pair_ids is None else pair_ids
    out = {"n": int(len(z)), "dim": int(z.shape[1]), "effective_rank": effective_rank(z),
           "alignment": alignment(z, pair_ids, seed=seed), "uniformity": uniformity(z, seed=seed),
           "reid": patient_reidentification(z, patient_ids)}
    if source is not None:
        out["source"] = source_shortcut(z, source, patient_ids, seed=seed)
    return out


def _f(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def audit_markdown(audits: dict) -> str:
    """``{encoder: audit_embeddings(...)}`` as a Markdown table."""
    has_source = any("source" in a for a in audits.values())
    head = "| encoder | eff. rank / dim | alignment | uniformity | re-id [chance] |"
    head += " source AUROC / bal. acc |" if has_source else ""
    lines = [head, "|---" * (5 + has_source) + "|"]
    for name, a in audits.items():
        r = a["reid"]
        row = (f"| {name} | {a['effective_rank']:.1f} / {a['dim']} | {_f(a['alignment'])} | {_f(a['uniformity'])} | "
               f"{_f(r['rate'])} [{_f(r['chance'])}] (q={r['queries']}) |")
        if has_source:
            s = a.get("source")
            row += (f" {_f(s['auroc'])} / {_f(s['balanced_accuracy'])}" + (f" ({s['note']})" if s["note"] else "")
                    + " |") if s else " |"
        lines.append(row)
    return "\n".join(lines)
