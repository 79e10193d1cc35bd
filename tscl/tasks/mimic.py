"""MIMIC-IV tasks (per admission), read through its MEDS conversion.

The prediction time is admission + 24 h; admissions that end (discharge or death) before it are
left out. Features are :func:`loaders.meds.tabular_features` over MEDS events strictly before the
prediction time (one-year look-back): ``log1p`` counts of the ``top_k`` codes most often seen before
prediction time in training admissions, the last numeric value of those with values
(training-median imputed), age at prediction time and sex. Labels come from ``hosp/admissions``:
in-hospital death (``hospital_expire_flag``), and, for admissions discharged alive, another
admission of the same subject starting within 30 days of discharge.
"""
from __future__ import annotations

import warnings
from datetime import timedelta
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

__all__ = ["mimic_admissions", "ehr_features", "load", "loader"]


def mimic_admissions(mimic_root: Path, horizon_h: float = 24.0, readmit_days: float = 30.0) -> pl.DataFrame:
    """Admissions still in hospital (and alive) at ``admittime + horizon_h``: subject_id, hadm_id,
    prediction_time, mortality (in-hospital death), discharged_alive, readmission (next admission of the
    subject within ``readmit_days`` of discharge)."""
    adm = pl.read_csv(mimic_root / "hosp" / "admissions.csv.gz", infer_schema_length=None).select(
        pl.col("subject_id").cast(pl.Int64), pl.col("hadm_id").cast(pl.Int64),
        pl.col("admittime").str.to_datetime(), pl.col("dischtime").str.to_datetime(),
        pl.col("deathtime").str.to_datetime(strict=False), pl.col("hospital_expire_flag").cast(pl.Int8))
    adm = adm.sort("subject_id", "admittime").with_columns(
        pl.col("admittime").shift(-1).over("subject_id").alias("next_admit"))
    pt = pl.col("admittime") + pl.duration(hours=horizon_h)
    adm = adm.with_columns(pt.alias("prediction_time")).filter(
        (pl.col("dischtime") > pl.col("prediction_time"))
        & (pl.col("deathtime").is_null() | (pl.col("deathtime") > pl.col("prediction_time"))))
    soon = pl.col("next_admit").is_not_null() & (
        pl.col("next_admit") - pl.col("dischtime") <= pl.duration(days=readmit_days))
    return adm.select("subject_id", "hadm_id", pl.col("prediction_time").cast(pl.Datetime("us")),
                      pl.col("hospital_expire_flag").alias("mortality"),
                      (pl.col("hospital_expire_flag") == 0).alias("discharged_alive"),
                      soon.cast(pl.Int8).alias("readmission"))


def ehr_features(events: pl.LazyFrame | pl.DataFrame, cohort: pl.DataFrame, train_subjects, *, top_k: int = 200,
                 lookback: timedelta = timedelta(days=365), exclude=("MEDS_DEATH",)) -> tuple[np.ndarray, list]:
    """``[n, d]`` features per cohort row (subject_id, prediction_time) from events strictly before
    the prediction time (see the module docstring), z-scored with training-row statistics; the code
    list, imputation and scaling use training rows only. ``exclude`` codes are never features
    (MIMIC's date of death is a date, so its midnight event can precede a same-day prediction time)."""
    from tscl.loaders.meds import tabular_features

    lf = events.lazy()
    pt = cohort.select("subject_id", pl.col("prediction_time").cast(pl.Datetime("us"))).unique()
    before = (lf.join(pt.lazy(), on="subject_id", how="inner")
              .filter(pl.col("time").is_not_null() & (pl.col("time") < pl.col("prediction_time"))
                      & (pl.col("time") >= pl.col("prediction_time") - lookback)))
    train_pt = pt.filter(pl.col("subject_id").is_in(list(train_subjects)))
    freq = (before.join(train_pt.lazy(), on=["subject_id", "prediction_time"], how="inner")
            .group_by("code").agg(pl.struct("subject_id", "prediction_time").n_unique().alias("n"))
            .sort(["n", "code"], descending=[True, False]).collect())
    codes = freq.filter(~pl.col("code").is_in(list(exclude)))["code"].head(top_k).to_list()
    tab = tabular_features(lf, pt, lookback=lookback, codes=codes)
    tab = cohort.select("subject_id", pl.col("prediction_time").cast(pl.Datetime("us"))).join(
        tab, on=["subject_id", "prediction_time"], how="left", maintain_order="left")
    is_train = tab["subject_id"].is_in(list(train_subjects)).to_numpy()
    cols, names = [], []
    for c in codes:
        cols.append(np.log1p(tab[f"count//{c}"].fill_null(0).to_numpy().astype(np.float64)))
        names.append(f"log1p count//{c}")
        last = tab[f"last//{c}"].cast(pl.Float64).to_numpy()
        if np.isfinite(last[is_train]).any():
            med = np.nanmedian(last[is_train])
            cols.append(np.where(np.isfinite(last), last, med))
            names.append(f"last//{c}")
    static = lf.filter(pl.col("code").str.starts_with("GENDER//") | (pl.col("code") == "MEDS_BIRTH")).collect()
    birth = dict(static.filter(pl.col("code") == "MEDS_BIRTH").select("subject_id", "time").iter_rows())
    female = set(static.filter(pl.col("code") == "GENDER//F")["subject_id"].to_list())
    subj, when = tab["subject_id"].to_list(), tab["prediction_time"].to_list()
    age = np.array([(w - birth[s]).days / 365.25 if birth.get(s) is not None and birth[s] < w else np.nan
                    for s, w in zip(subj, when)])
    cols.append(np.where(np.isfinite(age), age, np.nanmedian(age[is_train]) if np.isfinite(age[is_train]).any() else 0))
    names.append("age")
    cols.append(np.array([float(s in female) for s in subj]))
    names.append("female")
    X = np.column_stack(cols)
    mean, std = X[is_train].mean(axis=0), X[is_train].std(axis=0)
    return (X - mean) / np.where(std > 0, std, 1.0), names


def load(root: Path, cache: Path, label: str):
    """The MIMIC-IV demo admissions (converted to MEDS under ``cache`` once) with features and ``label``
    (``mortality`` or ``readmission``; readmission only for admissions discharged alive)."""
    from tscl.loaders.meds import scan_meds
    from tscl.loaders.mimic_meds import mimic_iv_to_meds

    from .registry import stratified_patient_split

    mimic_root = root / "meds_demo" / "mimic-iv-clinical-database-demo-2.2"
    meds = cache / "mimic_demo_meds"
    if not (meds / "metadata" / "dataset.json").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the demo has no chartevents table
            mimic_iv_to_meds(mimic_root, meds)
    cohort = mimic_admissions(mimic_root)
    if label == "readmission":
        cohort = cohort.filter(pl.col("discharged_alive"))
    cohort = cohort.with_columns(pl.col("subject_id").cast(pl.Utf8).alias("patient_id"))
    Y = cohort.select(label).to_numpy().astype(np.float64)
    train, _ = stratified_patient_split(cohort["patient_id"].to_numpy(), Y, 0.3, 0)
    train_subjects = set(cohort["subject_id"].to_numpy()[train].tolist())
    X, names = ehr_features(scan_meds(meds), cohort, train_subjects)
    notes = [f"{cohort.height} admissions of {cohort['subject_id'].n_unique()} subjects in hospital at admission "
             f"+ 24 h; {len(names)} features from MEDS events strictly before it"]
    return X, cohort, notes


def loader(label: str):
    """``load(root, cache)`` of the MIMIC-IV demo task predicting ``label``."""
    return partial(load, label=label)
