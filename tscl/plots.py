"""Plots people would rather look at than read: ECG grids, probe tables, training curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_ecg", "plot_label_efficiency", "plot_loss_curve"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ecg(signal: np.ndarray, fs: float, leads, out: str | Path, title: str = "") -> Path:
    """A 12-lead style grid (one panel per lead, mV vs s) written to ``out`` as PNG."""
    plt = _pyplot()
    c = signal.shape[0]
    cols = 2 if c > 6 else 1
    rows = int(np.ceil(c / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 1.2 * rows), sharex=True, squeeze=False)
    t = np.arange(signal.shape[1]) / fs
    for i in range(rows * cols):
        ax = axes[i % rows, i // rows]
        if i >= c:
            ax.axis("off")
            continue
        ax.plot(t, signal[i], lw=0.7, color="k")
        ax.set_ylabel(leads[i], rotation=0, ha="right", va="center")
        ax.grid(True, color="#f3b4b4", lw=0.4)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_label_efficiency(results: list[dict], out: str | Path, title: str = "") -> Path:
    """Macro AUROC (with 95 % CI bands) against label fraction, one line per encoder.

    ``results`` rows hold ``encoder``, ``fraction``, ``auroc``, ``ci_low``, ``ci_high``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name in dict.fromkeys(r["encoder"] for r in results):
        rows = sorted((r for r in results if r["encoder"] == name), key=lambda r: r["fraction"])
        x = [100 * r["fraction"] for r in rows]
        ax.plot(x, [r["auroc"] for r in rows], marker="o", label=name)
        ax.fill_between(x, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training data (%)")
    ax.set_ylabel("macro AUROC (95 % CI)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_loss_curve(steps, losses, out: str | Path, title: str = "pretraining loss") -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(steps, losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
