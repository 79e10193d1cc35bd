"""A simulated, patient-structured 12-lead ECG cohort with known ground truth.

Each beat is a sum of Gaussian waves (P, Q, R, S, T; R' for bundle-branch block), each
wave carrying a 3-D cardiac dipole. Leads are projections of the dipole: I and II from the
frontal plane, III/aVR/aVL/aVF derived from them by Einthoven's and Goldberger's laws, and
V1-V6 from the horizontal plane. So the leads are coherent the way real leads are.

Patients differ in stable morphology (heart rate, frontal axis, precordial rotation, QRS
width, QT, wave amplitudes, noise). Chronic conditions change the waveform the way they do
clinically:

===========  ==============================================================================
``lvh``      high QRS voltage (x1.9 R/S) and a lateral strain pattern (T opposite to QRS)
``bbb``      wide QRS (+50 ms) with a terminal R' (right-anterior), i.e. RSR' in V1
``af``       irregularly irregular RR, no P waves, 4-8 Hz fibrillatory baseline
``tachy``    resting rate > 100 bpm
``brady``    resting rate < 55 bpm
``mace``     future outcome drawn from a logistic model of age, sex, LVH, AF, QT and BNP
===========  ==============================================================================

Visits (2-6 per patient, months to years apart) add visit-level variation: rate drift,
electrode-placement gain, baseline wander, noise, serum potassium (which scales the T
wave). Per-visit labs/vitals (``lab_*`` columns) are emitted for cross-modal pairing.

``write_cohort`` writes real WFDB records (``.hea`` + ``.dat``, format 16, 1 uV
resolution) plus ``metadata.csv``, so the cohort is read back by the same loader as
PhysioNet data. Everything is deterministic given ``seed``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from tscl.datasets import hash_split
from tscl.loaders.recording import ECG_LEADS
from tscl.loaders.wfdb_write import write_wfdb
from tscl.progress import progress_bar
from tscl.simulate_images import ImageSetConfig, write_image_set

__all__ = ["LEADS", "CONDITIONS", "CohortConfig", "simulate_patients", "synthesize_ecg", "write_cohort", "simulate"]

LEADS = ECG_LEADS
CONDITIONS = ("lvh", "bbb", "af", "tachy", "brady", "mace")
# horizontal-plane angles of V1..V6 (degrees; 0 = patient's left, 90 = anterior)
_PRECORDIAL_ANGLES = np.deg2rad([115.0, 95.0, 75.0, 55.0, 30.0, 0.0])


@dataclass(frozen=True)
class CohortConfig:
    n_patients: int = 500
    min_visits: int = 2
    max_visits: int = 6
    fs: float = 100.0
    duration_s: float = 10.0
    seed: int = 0
    prevalence_lvh: float = 0.25
    prevalence_bbb: float = 0.2
    prevalence_af: float = 0.2


def _unit(angle_frontal, angle_horizontal=0.0, z=0.0):
    """3-D dipole direction: x = left, y = inferior (frontal angle), z = anterior."""
    v = np.array([np.cos(angle_frontal), np.sin(angle_frontal), z + 0.0 * angle_horizontal])
    return v / np.linalg.norm(v)


def simulate_patients(cfg: CohortConfig) -> list[dict]:
    """Draw every patient's stable traits, conditions and visit schedule (no waveforms yet)."""
    rng = np.random.default_rng(cfg.seed)
    patients = []
    for p in range(cfg.n_patients):
        age = float(rng.uniform(25, 85))
        sex = int(rng.random() < 0.5)  # 1 = male
        lvh = int(rng.random() < cfg.prevalence_lvh * (0.6 + 0.8 * (age - 25) / 60))
        bbb = int(rng.random() < cfg.prevalence_bbb * (0.5 + (age - 25) / 60))
        af = int(rng.random() < cfg.prevalence_af * (0.4 + 1.2 * (age - 25) / 60))
        rate_class = rng.choice(3, p=[0.7, 0.15, 0.15])  # normal / tachy / brady
        hr = {0: rng.uniform(60, 90), 1: rng.uniform(105, 125), 2: rng.uniform(42, 52)}[int(rate_class)]
        qt = float(rng.normal(400, 22) + 25 * lvh)
        bnp = float(np.exp(rng.normal(4.0 + 0.02 * (age - 50) + 0.9 * lvh + 0.6 * af, 0.5)))
        risk = -3.2 + 0.05 * (age - 55) + 0.5 * sex + 1.4 * lvh + 1.0 * af + 0.03 * (qt - 400) + 0.4 * np.log(bnp / 55)
        n_visits = int(rng.integers(cfg.min_visits, cfg.max_visits + 1))
        first = datetime(2010, 1, 1) + timedelta(days=int(rng.integers(0, 3000)))
        gaps = np.cumsum(np.concatenate([[0], rng.integers(30, 900, size=n_visits - 1)]))
        patients.append(
            dict(
                patient_id=f"P{p:05d}",
                age=age,
                sex=sex,
                lvh=lvh,
                bbb=bbb,
                af=af,
                tachy=int(rate_class == 1),
                brady=int(rate_class == 2),
                mace=int(rng.random() < 1 / (1 + np.exp(-risk))),
                hr=float(hr),
                axis=float(np.deg2rad(rng.normal(50, 22) - 20 * lvh)),
                rotation=float(np.deg2rad(rng.normal(0, 12))),
                qrs_ms=float(rng.normal(88, 7) + 50 * bbb),
                qt_ms=qt,
                r_amp=float(rng.lognormal(np.log(1.1), 0.2) * (1.9 if lvh else 1.0)),
                t_amp=float(rng.lognormal(np.log(0.3), 0.2)),
                p_amp=float(rng.lognormal(np.log(0.12), 0.2)),
                noise=float(rng.uniform(0.01, 0.04)),
                bnp=bnp,
                sbp=float(rng.normal(125 + 0.4 * (age - 50) + 15 * lvh, 12)),
                visit_dates=[first + timedelta(days=int(g)) for g in gaps],
            )
        )
    return patients


def _lead_matrix(rotation: float) -> np.ndarray:
    """[12, 3] projection of the dipole onto the 12 leads (limb leads exactly derived)."""
    lead_i = np.array([1.0, 0.0, 0.0])
    lead_ii = np.array([np.cos(np.pi / 3), np.sin(np.pi / 3), 0.0])
    lead_iii = lead_ii - lead_i
    avr = -(lead_i + lead_ii) / 2
    avl = lead_i - lead_ii / 2
    avf = lead_ii - lead_i / 2
    ang = _PRECORDIAL_ANGLES + rotation
    prec = np.stack([np.cos(ang), 0.25 * np.ones(6), np.sin(ang)], axis=1) * 1.4
    return np.vstack([lead_i, lead_ii, lead_iii, avr, avl, avf, prec])


def synthesize_ecg(patient: dict, visit: int, rng: np.random.Generator, fs: float = 100.0, duration_s: float = 10.0):
    """One 12-lead recording ``[12, T]`` in mV for a patient's visit, and that visit's labs."""
    n = int(round(fs * duration_s))
    t = np.arange(n) / fs
    af_now = patient["af"] and rng.random() < 0.9  # a few paroxysmal AF patients are in sinus rhythm
    hr = patient["hr"] * float(np.exp(rng.normal(0, 0.06)))
    rr_mean = 60.0 / hr
    # beat times: sinus = small respiratory variability, AF = irregularly irregular
    beats, tb = [], float(rng.uniform(0, rr_mean))
    while tb < duration_s + 0.5:
        beats.append(tb)
        jitter = rng.normal(0, 0.22) if af_now else 0.03 * np.sin(2 * np.pi * 0.25 * tb) + rng.normal(0, 0.01)
        tb += rr_mean * max(0.45, 1.0 + jitter)
    beats = np.array(beats)
    potassium = float(rng.normal(4.2, 0.35))
    axis = patient["axis"] + rng.normal(0, np.deg2rad(4))
    qrs = patient["qrs_ms"] / 1000.0
    qt = patient["qt_ms"] / 1000.0 * np.sqrt(rr_mean)  # Bazett: QT shortens with rate
    r_amp = patient["r_amp"] * float(np.exp(rng.normal(0, 0.05)))
    t_amp = patient["t_amp"] * (1 + 0.6 * (potassium - 4.2))
    strain = patient["lvh"] == 1
    # waves: (offset from R peak in s, width in s, amplitude, dipole direction)
    waves = [
        (-0.018 - qrs * 0.15, qrs / 9, -0.12 * r_amp, _unit(axis + 0.4, z=0.3)),  # Q
        (0.0, qrs / 7, r_amp, _unit(axis, z=-0.4 + 0.2 * patient["lvh"])),  # R
        (qrs * 0.35, qrs / 8, -0.35 * r_amp, _unit(axis - 0.3, z=-1.1)),  # S
        (0.55 * qt, 0.055 + 0.05 * qt, -t_amp if strain else t_amp, _unit(axis + 0.1, z=-0.2)),  # T
    ]
    if patient["bbb"]:
        waves.append((qrs * 0.55, qrs / 7, 0.55 * r_amp, _unit(np.deg2rad(150), z=1.3)))  # R' right-anterior
    if not af_now:
        waves.append((-0.16, 0.022, patient["p_amp"], _unit(np.deg2rad(55), z=0.2)))  # P
    dipole = np.zeros((3, n))
    for offset, width, amp, direction in waves:
        centres = beats + offset
        shape = np.exp(-0.5 * ((t[None, :] - centres[:, None]) / width) ** 2).sum(axis=0)
        dipole += amp * direction[:, None] * shape[None, :]
    leads = _lead_matrix(patient["rotation"]) @ dipole
    if af_now:  # fibrillatory waves, largest in V1 and inferior leads
        f = sum(rng.uniform(0.02, 0.05) * np.sin(2 * np.pi * rng.uniform(4, 8) * t + rng.uniform(0, 2 * np.pi)) for _ in range(3))
        leads += f[None, :] * np.array([0.3, 0.8, 0.6, -0.5, -0.1, 0.7, 1.0, 0.7, 0.5, 0.3, 0.2, 0.2])[:, None]
    gains = np.exp(rng.normal(0, 0.12, size=(12, 1)))  # electrode placement and skin contact
    wander = rng.uniform(0.05, 0.4) * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 2 * np.pi))
    noise = rng.normal(0, patient["noise"] * rng.uniform(0.5, 2.5), size=leads.shape)  # muscle / contact noise
    signal = leads * gains + wander[None, :] * rng.uniform(0.5, 1.0, size=(12, 1)) + noise
    # an electrocardiograph records I and II and derives the other limb leads from them
    lead_i, lead_ii = signal[0], signal[1]
    signal[2], signal[3] = lead_ii - lead_i, -(lead_i + lead_ii) / 2
    signal[4], signal[5] = lead_i - lead_ii / 2, lead_ii - lead_i / 2
    signal = signal.astype(np.float32)
    labs = dict(
        lab_potassium=potassium,
        lab_heart_rate=float(60.0 * len(beats) / (duration_s + 0.5)),
        lab_bnp=float(patient["bnp"] * np.exp(rng.normal(0, 0.2))),
        lab_sbp=float(patient["sbp"] + rng.normal(0, 8)),
    )
    return signal, int(af_now), labs


SIM_SPLIT = (0.7, 0.0, 0.3)  # train / val / test fractions of patients


def write_cohort(out_dir: str | Path, cfg: CohortConfig | None = None, progress: bool = True) -> Path:
    """Write the cohort as WFDB records under ``out_dir/records`` and ``out_dir/metadata.csv``.

    Labels per record: ``lvh``, ``bbb``, ``tachy``, ``brady``, ``mace`` (patient-level),
    ``af`` (this recording shows AF), ``age`` (at the visit), ``sex`` (1 = male); plus
    ``lab_*`` per-visit covariates. ``split`` is the patient's side, ``train`` (70 %) or ``test``
    (30 %), from a hash of the patient id (:func:`tscl.datasets.hash_split`): pretraining reads
    ``train`` and the probes test on ``test``. ``truth.json`` records the configuration.
    Returns the path of the metadata table.
    """
    cfg = cfg or CohortConfig()
    out_dir = Path(out_dir)
    rec_dir = out_dir / "records"
    rec_dir.mkdir(parents=True, exist_ok=True)

    patients = simulate_patients(cfg)
    sides = dict(zip([p["patient_id"] for p in patients],
                     hash_split([p["patient_id"] for p in patients], SIM_SPLIT)))
    rng = np.random.default_rng(cfg.seed + 1)
    rows = []
    total = sum(len(p["visit_dates"]) for p in patients)
    with progress_bar(total=total, desc="simulating ECGs", disable=not progress) as bar:
        for p in patients:
            for v, date in enumerate(p["visit_dates"]):
                signal, af_now, labs = synthesize_ecg(p, v, rng, cfg.fs, cfg.duration_s)
                record_id = f"{p['patient_id']}_v{v}"
                write_wfdb(rec_dir / record_id, signal, cfg.fs, LEADS, start=date)
                age = p["age"] + (date - p["visit_dates"][0]).days / 365.25
                rows.append(
                    dict(
                        patient_id=p["patient_id"],
                        record_id=record_id,
                        path=f"records/{record_id}",
                        visit_time=date,
                        split=sides[p["patient_id"]],
                        age=round(age, 2),
                        sex=p["sex"],
                        lvh=p["lvh"],
                        bbb=p["bbb"],
                        af=af_now,
                        tachy=p["tachy"],
                        brady=p["brady"],
                        mace=p["mace"],
                        **{k: round(v_, 4) for k, v_ in labs.items()},
                    )
                )
                bar.update()
    meta = out_dir / "metadata.csv"
    pl.DataFrame(rows).write_csv(meta)
    (out_dir / "truth.json").write_text(json.dumps({"config": asdict(cfg), "conditions": CONDITIONS}, indent=2))
    return meta


def simulate(out_dir: str | Path, kind: str = "ecg", n_patients: int = 500, seed: int = 0, progress: bool = True) -> Path:
    """``tscl simulate``: a patient-structured cohort, as 12-lead WFDB records and ``metadata.csv``
    (``kind="ecg"``, :func:`write_cohort`, read with ``--dataset wfdb``) or as chest-like films and
    ``labels.csv`` (``kind="images"``, :func:`tscl.simulate_images.write_image_set`, ``--dataset images``).
    Returns the table's path."""
    if kind == "images":
        return write_image_set(out_dir, ImageSetConfig(n_patients=n_patients, seed=seed))
    if kind != "ecg":
        raise ValueError(f"kind must be ecg or images, got {kind!r}")
    return write_cohort(out_dir, CohortConfig(n_patients=n_patients, seed=seed), progress=progress)
