"""Plots people would rather look at than read: label efficiency, reliability, embedding maps, loss curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_label_efficiency", "plot_loss_curve", "plot_reliability", "plot_embedding_map"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> Path:
    """Lay out, write ``out`` as PNG and free the figure."""
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return Path(out)


def plot_label_efficiency(results: list[dict], out: str | Path, title: str = "") -> Path:
    """Macro AUROC (with 95 % CI bands) against label fraction, one line per encoder.

    ``results`` rows hold ``encoder``, ``fraction``, ``auroc``, ``ci_low``, ``ci_high``.
    """
    plt = _pyplot()
    names = list(dict.fromkeys(r["encoder"] for r in results))
    many = len(names) > 5
    fig, ax = plt.subplots(figsize=(7.5, 4.5) if many else (5.5, 4))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for i, name in enumerate(names):
        rows = sorted((r for r in results if r["encoder"] == name), key=lambda r: r["fraction"])
        x = [100 * r["fraction"] for r in rows]
        style, band = {"color": cmap(i % cmap.N), "ls": "-"}, 0.1 if many else 0.2
        if name == "random-init":  # the references stand apart from the pretrained encoders
            style, band = {"color": "black", "ls": "--"}, 0.08
        elif name.startswith("supervised"):
            style, band = {"color": "0.45", "ls": ":"}, 0.12
        ax.plot(x, [r["auroc"] for r in rows], marker="o", label=name, **style)
        ax.fill_between(x, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], alpha=band, color=style["color"])
    ax.set_xscale("log")
    ticks = sorted({100 * r["fraction"] for r in results})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])  # the measured fractions, not powers of ten
    ax.minorticks_off()
    ax.set_xlabel("labelled training data (%)")
    ax.set_ylabel("macro AUROC (95 % CI)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if many:
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    else:
        ax.legend()
    return _save(fig, out)


def plot_loss_curve(steps, losses, out: str | Path, title: str = "pretraining loss") -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(steps, losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return _save(fig, out)


def plot_reliability(y, probs: dict, out: str | Path, n_bins: int = 10, title: str = "reliability") -> Path:
    """Reliability diagram: observed event rate against mean predicted probability per
    equal-width bin, one line per encoder (``probs`` maps names to ``[n]`` probabilities of
    the binary targets ``y [n]``; multi-label columns can be passed flattened), with the
    diagonal of perfect calibration and a histogram of the predictions underneath."""
    plt = _pyplot()
    y = np.asarray(y, dtype=np.float64).ravel()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    edges = np.linspace(0, 1, n_bins + 1)
    for name, p in probs.items():
        p = np.asarray(p, dtype=np.float64).ravel()
        b = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
        n = np.bincount(b, minlength=n_bins)
        ok = n > 0
        ax.plot((np.bincount(b, weights=p, minlength=n_bins)[ok] / n[ok]),
                (np.bincount(b, weights=y, minlength=n_bins)[ok] / n[ok]), marker="o", label=name)
        hist.hist(p, bins=edges, alpha=0.4, label=name)
    ax.set_ylabel("observed event rate")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("count")
    return _save(fig, out)


def plot_embedding_map(z, labels, patient_ids, out: str | Path, title: str = "embedding map (PCA)") -> Path:
    """First two principal components of ``z [n, d]``, coloured by ``labels`` (left; the 12
    commonest values, the rest grey) and by patient (right; patients beyond the 20 with most
    recordings are grey)."""
    plt = _pyplot()
    z = np.asarray(z, dtype=np.float64)
    zc = z - z.mean(axis=0)
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    xy = zc @ vt[:2].T if vt.shape[0] >= 2 else np.column_stack([zc @ vt[:1].T, np.zeros(len(z))])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    labels = np.asarray(labels).astype(str)
    names, counts = np.unique(labels, return_counts=True)
    shown = list(names[np.argsort(-counts, kind="stable")[:12]])  # the 12 commonest labels; the rest "other"
    labels = np.where(np.isin(labels, shown), labels, "other")
    cmap20 = plt.get_cmap("tab20")
    for k, lab in enumerate(shown + (["other"] if (labels == "other").any() else [])):
        m = labels == lab
        axes[0].scatter(xy[m, 0], xy[m, 1], s=8, alpha=0.7, label=lab,
                        color="lightgrey" if lab == "other" else cmap20(k % 20))
    axes[0].legend(fontsize=7, markerscale=2)
    axes[0].set_title("by label")
    pids = np.asarray(patient_ids).astype(str)
    uniq, counts = np.unique(pids, return_counts=True)
    top = set(uniq[np.argsort(-counts, kind="stable")[:20]])
    rest = ~np.isin(pids, list(top))
    axes[1].scatter(xy[rest, 0], xy[rest, 1], s=6, color="lightgrey")
    cmap = plt.get_cmap("tab20")
    for k, p in enumerate(sorted(top)):
        m = pids == p
        axes[1].scatter(xy[m, 0], xy[m, 1], s=8, color=cmap(k % 20))
    axes[1].set_title(f"by patient ({len(uniq)} patients; top 20 coloured)")
    for ax in axes:
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.suptitle(title)
    return _save(fig, out)
