"""The MIMIC-IV admission probe of an EHR encoder: mortality, long stay and readmission at admission + 24 h.

A run pretrained on the ``mimic-iv`` source (:mod:`tscl.datasets.ehr`) is probed on admissions with
features strictly before the prediction time, beside its random-init twin and the tabular baseline of
:mod:`tscl.tasks.mimic`; ``tscl mimic-probe`` and ``benchmarks/bench_real.py --dataset mimic`` call it.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tscl.datasets.ehr import _dataset, build_ehr_items, ehr_embed, mimic_meds_root

__all__ = ["mimic_probe", "EHRProbeReport", "MIMIC_PROBE_LABELS"]


MIMIC_PROBE_LABELS = ("mortality", "long_stay", "readmission")


class EHRProbeReport:
    """What :func:`mimic_probe` measured: ``results[label]`` a :class:`~tscl.probes.ProbeResult`
    (encoders × 100 % labels, patient-level bootstrap CI), ``counts[label]`` rows / positives per
    side, ``notes``."""

    def __init__(self):
        self.results: dict = {}
        self.counts: dict = {}
        self.notes: list[str] = []

    def to_markdown(self) -> str:
        parts = []
        for label, res in self.results.items():
            c = self.counts[label]
            parts += [f"### {label}", "", f"train {c['train_rows']} admissions / {c['train_patients']} patients, "
                      f"{c['train_pos']} positive; test {c['test_rows']} / {c['test_patients']}, {c['test_pos']} "
                      "positive", "", res.to_markdown(), ""]
        return "\n".join(parts + [f"- {n}" for n in self.notes])

    def write(self, out_dir: str | Path) -> Path:
        """``mimic_probe.md`` and ``mimic_probe.json`` in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "mimic_probe.md").write_text(f"# MIMIC-IV admissions at admission + 24 h\n\n{self.to_markdown()}\n")
        (out / "mimic_probe.json").write_text(json.dumps(
            {"labels": {k: json.loads(v.to_json()) for k, v in self.results.items()}, "counts": self.counts,
             "notes": self.notes}, indent=1, default=float))
        return out


def mimic_probe(mimic_root: str | Path, run: str | Path | None = None, *, labels=MIMIC_PROBE_LABELS,
                cache: str | Path | None = None, horizon_h: float = 24.0, long_stay_days: float = 7.0,
                split: str = "source", n_boot: int = 500, seed: int = 0, allow_test_overlap: bool = False,
                encoder_kwargs: dict | None = None, tabular: bool = True) -> EHRProbeReport:
    """Linear probe of MIMIC-IV admissions at admission + ``horizon_h`` with a run's EHR encoder.

    Cohort (:func:`tscl.tasks.mimic_admissions`): admissions still in hospital and alive at the
    prediction time ``admittime + horizon_h``. One item per admission, built as the ``mimic-iv``
    source builds its pretraining items and with the run's vocabulary (same ids, same value
    statistics) but only from events **strictly before the prediction time**: the admission's
    events from its admission time (a subject's first admission: its whole earlier history), the
    subject's static rows and age; ``MEDS_DEATH`` is never an input (MIMIC's date of death is a
    date, its midnight can precede the prediction time).

    Labels: ``mortality`` (in-hospital death), ``long_stay`` (discharge more than ``long_stay_days``
    after admission) and ``readmission`` (another admission within 30 days of discharge; cohort
    restricted to admissions discharged alive). A label whose test side holds one class is skipped
    with a note.

    Encoders compared on the same split and bootstrap resamples (:func:`tscl.probes.run_probe`,
    100 % of training labels, patient-level CI, paired difference to ``random-init``): the run's
    encoder, its random-init twin, and with ``tabular`` the tabular baseline
    (:func:`tscl.tasks.ehr_features`: counts and last values of the 200 commonest codes before the
    prediction time, age, sex). Without ``run`` only a random-init ``ehr_sequence`` (``encoder_kwargs``)
    and the tabular baseline.

    ``split="source"`` (default): training rows are subjects of the source's ``train`` split, test rows
    those of ``val`` and ``test``, so no test patient reached pretraining on ``split="train"``; the run's
    ``patients.json`` is checked (``PretrainingOverlapError`` unless ``allow_test_overlap``).
    ``split="stratified"``: :func:`tscl.tasks.stratified_patient_split` (30 % of patients, both classes
    on both sides when possible), the split of the ``mimic-*`` tasks; it overlaps a ``train`` pretraining,
    so it needs ``allow_test_overlap=True`` with a run.
    """
    from tscl.loaders.meds import scan_meds
    from tscl.probes import run_probe
    from tscl.probes.linear import check_pretraining_overlap, pretrained_patients
    from tscl.tasks import ehr_features, mimic_admissions, stratified_patient_split

    from tscl.datasets import open_dataset

    mimic_root = Path(mimic_root)
    bad = sorted(set(labels) - set(MIMIC_PROBE_LABELS))
    if bad:
        raise ValueError(f"unknown label(s) {bad}; known: {list(MIMIC_PROBE_LABELS)}")
    if split not in ("source", "stratified"):
        raise ValueError(f"split must be 'source' or 'stratified', got {split!r}")
    cfg = None
    if run is not None:
        from tscl.train import load_config

        cfg = load_config(run)
        if cfg.data_info.get("modality") != "ehr":
            raise ValueError(f"{run}: not an EHR run (data_info {cfg.data_info})")
    options = dict(cfg.dataset.get("options", {})) if cfg is not None else {}
    ds = open_dataset("mimic-iv", mimic_root, cache=cache, progress=False, **options)
    if cfg is not None and cfg.in_channels != ds.vocab_size:
        raise ValueError(f"{run}: its encoder has {cfg.in_channels} code ids, this MIMIC-IV folder's vocabulary "
                         f"{ds.vocab_size}; probe it on the data it was pretrained on")

    meds = mimic_meds_root(mimic_root, cache)
    events = scan_meds(meds).select("subject_id", "time", "code", "numeric_value").collect()
    events = events.filter(pl.col("code") != "MEDS_DEATH")
    adm = pl.read_csv(mimic_root / "hosp" / "admissions.csv.gz", infer_schema_length=0).select(
        pl.col("subject_id").cast(pl.Int64), pl.col("hadm_id").cast(pl.Int64),
        pl.col("admittime").str.to_datetime(), pl.col("dischtime").str.to_datetime())
    first = adm.group_by("subject_id").agg(pl.col("admittime").min().alias("first_admit"))
    cohort = (mimic_admissions(mimic_root, horizon_h=horizon_h).join(adm.drop("subject_id"), on="hadm_id", how="left")
              .join(first, on="subject_id", how="left")
              .with_columns(pl.when(pl.col("admittime") > pl.col("first_admit")).then(pl.col("admittime"))
                            .otherwise(None).alias("item_start"),
                            ((pl.col("dischtime") - pl.col("admittime")).dt.total_hours() / 24 > long_stay_days)
                            .cast(pl.Int8).alias("long_stay"),
                            pl.col("subject_id").cast(pl.Utf8).alias("patient_id")))
    splits = dict(zip(ds.index["patient_id"].cast(pl.Int64).to_list(), ds.index["split"].to_list()))
    index, flat, _, meta = build_ehr_items(events, splits, cutoffs=cohort, vocab=ds.vocab, max_len=ds.max_len,
                                           where=str(mimic_root))
    items = _dataset(index, flat, ds.vocab, {**ds.meta, **{k: meta[k] for k in ("n_items", "n_events")}})

    from tscl.encoders import build_encoder
    from tscl.train import load_encoder

    features: dict = {}
    if run is not None:
        features[Path(run).name] = ehr_embed(load_encoder(run), items)
        features["random-init"] = ehr_embed(load_encoder(run, random_init=True, seed=seed), items)
    else:
        torch.manual_seed(seed)
        features["random-init"] = ehr_embed(build_encoder("ehr_sequence", ds.vocab_size, **(encoder_kwargs or {})), items)

    report = EHRProbeReport()
    report.notes.append(f"{cohort.height} admissions of {cohort['subject_id'].n_unique()} subjects in hospital at "
                        f"admission + {horizon_h:g} h; items from events strictly before it (max_len {ds.max_len}, "
                        f"median {int(np.median(items.lengths()))} events)")
    pids = np.asarray(cohort["patient_id"].to_list())
    for label in labels:
        rows = (np.flatnonzero(cohort["discharged_alive"].to_numpy()) if label == "readmission"
                else np.arange(cohort.height))
        Y = cohort[label].to_numpy()[rows].astype(np.float64)[:, None]
        if split == "source":
            side = np.asarray([splits.get(int(p), "test") for p in pids[rows]])
            train, test = np.flatnonzero(side == "train"), np.flatnonzero(side != "train")
        else:
            train, test = stratified_patient_split(pids[rows], Y, 0.3, seed)
        if run is not None:
            check_pretraining_overlap(pretrained_patients(run), pids[rows][test], allow=allow_test_overlap,
                                      what=f"the encoder of {run}")
        count = {"train_rows": len(train), "train_patients": len(np.unique(pids[rows][train])),
                 "train_pos": int(Y[train].sum()), "test_rows": len(test),
                 "test_patients": len(np.unique(pids[rows][test])), "test_pos": int(Y[test].sum())}
        report.counts[label] = count
        if not 0 < count["test_pos"] < len(test) or not 0 < count["train_pos"] < len(train):
            report.notes.append(f"{label}: skipped, a side holds a single class ({count})")
            continue
        feats = {k: v[rows] for k, v in features.items()}
        if tabular:
            sub = cohort[rows.tolist()]
            train_subjects = set(sub["subject_id"].to_numpy()[train].tolist())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                feats["tabular"], _ = ehr_features(events.lazy(), sub, train_subjects)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            report.results[label] = run_probe(feats, Y.astype(int), [label], pids[rows], fractions=(1.0,),
                                              n_boot=n_boot, seed=seed, split=(train, test), reference="random-init")
        if count["test_pos"] < 5:
            report.notes.append(f"{label}: only {count['test_pos']} positive test admission(s); its AUROC and CI rest "
                                "on them alone")
    return report
