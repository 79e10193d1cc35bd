"""A small patient-structured set of chest-film-like grayscale images with known ground truth.

Each patient has a stable anatomy: body outline, two lung fields (width, height, spacing,
tilt), rib spacing and phase, and two to four small calcified nodules at fixed places in the
lungs (a fingerprint that survives from film to film, which is what MICLe-style positives
— two films of one patient — can learn). Conditions change the picture as they do on a film:

================  =========================================================================
``cardiomegaly``  patient-level: the cardiac silhouette is wider (cardiothoracic ratio ~0.6
                  against ~0.45)
``effusion``      per film: the base of one lung is filled with fluid (a bright meniscus that
                  blunts the costophrenic angle)
================  =========================================================================

Films of one patient differ by positioning (shift, rotation), exposure (gain, contrast),
inspiration (lung height), quantum noise and blur. Values are in [0, 1].

``write_image_set(out_dir, ImageSetConfig(...))`` writes ``images/<record_id>.npy`` (or
``.png``, 8-bit grayscale) and ``labels.csv`` (``path, patient_id, record_id, cardiomegaly,
effusion``), which ``open_dataset("images", out_dir)`` reads. 40 patients x 2-4 films of
64 x 64 take well under a second. Deterministic given ``seed``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

__all__ = ["ImageSetConfig", "simulate_image_patients", "render_film", "write_image_set"]


@dataclass(frozen=True)
class ImageSetConfig:
    n_patients: int = 40
    min_images: int = 2
    max_images: int = 4
    size: int = 64
    seed: int = 0
    prevalence_cardiomegaly: float = 0.35
    prevalence_effusion: float = 0.3
    fmt: str = "npy"  # npy | png


def simulate_image_patients(cfg: ImageSetConfig) -> list[dict]:
    """Every patient's stable anatomy, condition and number of films (no pixels yet)."""
    rng = np.random.default_rng(cfg.seed)
    patients = []
    for p in range(cfg.n_patients):
        cardio = int(rng.random() < cfg.prevalence_cardiomegaly)
        n_nodules = int(rng.integers(2, 5))
        side = rng.choice([-1.0, 1.0], size=n_nodules)
        patients.append(dict(
            patient_id=f"I{p:04d}",
            cardiomegaly=cardio,
            n_images=int(rng.integers(cfg.min_images, cfg.max_images + 1)),
            body_w=float(rng.uniform(0.78, 0.92)), body_h=float(rng.uniform(0.85, 0.98)),
            lung_w=float(rng.uniform(0.24, 0.32)), lung_h=float(rng.uniform(0.50, 0.62)),
            lung_dx=float(rng.uniform(0.36, 0.46)), lung_tilt=float(rng.normal(0, 0.12)),
            rib_freq=float(rng.uniform(5.0, 8.0)), rib_phase=float(rng.uniform(0, 2 * np.pi)),
            rib_amp=float(rng.uniform(0.05, 0.12)),
            ctr=float(rng.normal(0.61 if cardio else 0.44, 0.03)),
            heart_h=float(rng.uniform(0.28, 0.36)),
            nodules=[(float(s * rng.uniform(0.28, 0.5)), float(rng.uniform(-0.35, 0.3)), float(rng.uniform(0.025, 0.05)))
                     for s in side],
        ))
    return patients


def _ellipse(x, y, cx, cy, rx, ry, soft=0.02):
    """Soft 0-1 mask of an ellipse (sigmoid edge)."""
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return 1.0 / (1.0 + np.exp((r - 1.0) / soft))


def render_film(patient: dict, rng: np.random.Generator, size: int = 64, effusion: int = 0) -> np.ndarray:
    """One film ``[size, size]`` float32 in [0, 1] of ``patient`` (image x: patient's right on the left)."""
    lin = np.linspace(-1, 1, size, dtype=np.float64)
    # positioning: the coordinates of the film in the patient's frame
    angle = np.deg2rad(rng.normal(0, 3))
    sx, sy = rng.normal(0, 0.05, size=2)
    y0, x0 = np.meshgrid(lin, lin, indexing="ij")
    x = np.cos(angle) * x0 - np.sin(angle) * y0 + sx
    y = np.sin(angle) * x0 + np.cos(angle) * y0 + sy
    inspiration = float(rng.uniform(0.92, 1.06))
    body = _ellipse(x, y, 0, 0.05, patient["body_w"], patient["body_h"], 0.04)
    img = 0.04 + 0.5 * body
    lungs = np.zeros_like(x)
    for s in (-1.0, 1.0):
        cy = -0.05 - (inspiration - 1) * 0.2
        tilt_x = x - s * patient["lung_dx"] - s * patient["lung_tilt"] * (y - cy)
        lungs = np.maximum(lungs, _ellipse(tilt_x, y, 0, cy, patient["lung_w"], patient["lung_h"] * inspiration, 0.05))
    ribs = patient["rib_amp"] * (0.5 + 0.5 * np.cos(2 * np.pi * patient["rib_freq"] * (y + 0.15 * x ** 2) / 2
                                                     + patient["rib_phase"]))
    img = img - lungs * (0.32 - ribs)
    # effusion: fluid filling the base of one lung, meniscus curving up to the lateral wall
    if effusion:
        s = 1.0 if rng.random() < 0.5 else -1.0
        level = 0.08 + 0.15 * rng.random() - 0.6 * (s * x - patient["lung_dx"]).clip(0, None)
        fluid = lungs * (x * s > 0.05) / (1 + np.exp(-(y - level) / 0.03))
        img = img + 0.35 * fluid
    # cardiac silhouette: centred a little to the patient's left (the image's right), width = CTR x thorax
    heart = _ellipse(x, y, 0.08, 0.28, patient["ctr"] * patient["body_w"], patient["heart_h"], 0.05)
    img = np.maximum(img, heart * 0.62 + (1 - heart) * img)
    for nx, ny, r in patient["nodules"]:
        img = img + 0.28 * _ellipse(x, y, nx, ny, r, r, 0.15)
    # exposure, blur, quantum noise
    img = (img - img.mean()) * rng.uniform(0.85, 1.15) + img.mean() + rng.normal(0, 0.03)
    k = np.exp(-0.5 * (np.arange(-2, 3) / rng.uniform(0.4, 1.0)) ** 2)
    k /= k.sum()
    img = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, img)
    img = np.apply_along_axis(lambda c: np.convolve(c, k, mode="same"), 0, img)
    img = img + rng.normal(0, 0.02, size=img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def write_image_set(out_dir: str | Path, cfg: ImageSetConfig | None = None) -> Path:
    """Write the films under ``out_dir/images`` and ``out_dir/labels.csv``; returns the CSV's path."""
    cfg = cfg or ImageSetConfig()
    if cfg.fmt not in ("npy", "png"):
        raise ValueError(f"fmt must be npy or png, got {cfg.fmt!r}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed + 1)
    rows = []
    for p in simulate_image_patients(cfg):
        for v in range(p["n_images"]):
            effusion = int(rng.random() < cfg.prevalence_effusion)
            img = render_film(p, rng, cfg.size, effusion)
            record_id = f"{p['patient_id']}_f{v}"
            rel = f"images/{record_id}.{cfg.fmt}"
            if cfg.fmt == "npy":
                np.save(out_dir / rel, img)
            else:
                from PIL import Image

                Image.fromarray(np.round(img * 255).astype(np.uint8), mode="L").save(out_dir / rel)
            rows.append(dict(path=rel, patient_id=p["patient_id"], record_id=record_id,
                             cardiomegaly=p["cardiomegaly"], effusion=effusion))
    csv = out_dir / "labels.csv"
    pl.DataFrame(rows).write_csv(csv)
    (out_dir / "truth.json").write_text(json.dumps({"config": asdict(cfg), "labels": ["cardiomegaly", "effusion"]},
                                                   indent=2))
    return csv
