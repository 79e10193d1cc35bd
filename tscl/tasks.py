"""Named downstream tasks on real data: a loader, label columns, a split rule and a target kind.

Each :class:`Task` turns a data root (the folder holding ``ptbxl/``, ``physionet/<db>/`` and
``meds_demo/``) into a :class:`TaskData`: waveforms ``[N, C, T]`` or tabular features ``[N, d]``,
targets ``Y [N, L]``, one patient id per row and a patient-disjoint ``(train, test)`` split.
:func:`run_task` embeds waveforms with a run's encoder (or a random-init ``resnet1d`` when no
run is given), fits a probe per encoder, and audits the embeddings.

Split rules:

- ``strat_fold``: PTB-XL's folds 1-8 train, 10 test (fold 9 is not used; hyper-parameters are
  chosen on a patient-level split inside the training folds). The folds are patient-disjoint.
- ``patient``: a random patient-level split (30 % of patients test). On the tiny public samples
  a random split easily puts a single class on the test side, so the split seed is the first
  of 0..199 for which both sides hold both classes of every label (a split stratified on
  patients' labels; rows still never cross sides). When no seed achieves it the seed-0
  split is kept and metrics of labels without both test classes are reported as n/a.

MIMIC-IV tasks (per admission): the prediction time is admission + 24 h; admissions that end
(discharge or death) before it are left out. Features are
:func:`loaders.meds.tabular_features` over MEDS events strictly before the prediction time
(one-year look-back): ``log1p`` counts of the ``top_k`` codes most often seen before
prediction time in training admissions, the last numeric value of those with values
(training-median imputed), age at prediction time and sex. Labels come from
``hosp/admissions``: in-hospital death (``hospital_expire_flag``), and, for admissions
discharged alive, another admission of the same subject starting within 30 days of discharge.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from tscl.probes.linear import assert_no_patient_leakage, patient_split

__all__ = ["Task", "TaskData", "TASKS", "get_task", "stratified_patient_split", "ehr_features",
           "mimic_admissions", "embed_task", "supervised_baseline", "run_task", "TaskRun", "write_report", "SUPERVISED"]

SUPERVISED = "supervised (from scratch)"


@dataclass
class TaskData:
    name: str
    kind: str  # binary | multilabel | regression
    modality: str  # waveform | tabular
    X: np.ndarray
    Y: np.ndarray
    labels: list
    patient_ids: np.ndarray
    train: np.ndarray
    test: np.ndarray
    source: np.ndarray | None = None
    notes: list = field(default_factory=list)
    standardise: bool = False

    def summary(self) -> str:
        pos = ""
        if self.kind != "regression":
            pos = ", positives train/test: " + "; ".join(
                f"{lab} {int(self.Y[self.train, j].sum())}/{int(self.Y[self.test, j].sum())}"
                for j, lab in enumerate(self.labels))
        return (f"{self.name}: {len(self.Y)} rows of {len(np.unique(self.patient_ids))} patients, "
                f"{self.modality} {tuple(self.X.shape[1:])}; train {len(self.train)} rows / "
                f"{len(np.unique(self.patient_ids[self.train]))} patients, test {len(self.test)} rows / "
                f"{len(np.unique(self.patient_ids[self.test]))} patients{pos}")


@dataclass
class Task:
    """``loader(root, cache_dir) -> (X, index)``: ``index`` has ``patient_id``, the label columns
    and what ``split`` needs; ``split(index, Y, seed) -> (train_rows, test_rows)``."""

    name: str
    loader: Callable
    labels: tuple
    split: Callable
    kind: str
    modality: str = "waveform"
    description: str = ""
    standardise: bool = False
    source_column: str | None = None

    def load(self, root: str | Path, cache_dir: str | Path, seed: int = 0) -> TaskData:
        X, index, notes = self.loader(Path(root), Path(cache_dir))
        Y = index.select(list(self.labels)).to_numpy().astype(np.float64)
        pids = np.asarray(index["patient_id"].cast(pl.Utf8).to_list())
        train, test = self.split(index, Y, seed)
        assert_no_patient_leakage(pids, train, test)
        source = (np.asarray(index[self.source_column].cast(pl.Utf8).fill_null("unknown").to_list())
                  if self.source_column else None)
        return TaskData(self.name, self.kind, self.modality, X, Y, list(self.labels), pids, np.asarray(train),
                        np.asarray(test), source, notes, self.standardise)


# --- split rules ----------------------------------------------------------------------------------------

def stratified_patient_split(patient_ids, Y, test_fraction: float = 0.3, seed: int = 0, tries: int = 200):
    """A patient-level split whose both sides hold both classes of every binary label, when one exists
    among seeds ``seed .. seed + tries - 1``; else the split of ``seed``. Regression targets: ``seed``."""
    patient_ids = np.asarray(patient_ids)
    Y = np.asarray(Y)
    binary = np.isin(Y, (0, 1)).all()
    for s in range(seed, seed + (tries if binary else 1)):
        train, test = patient_split(patient_ids, test_fraction, s)
        if not binary or all(0 < Y[rows, j].sum() < len(rows) for rows in (train, test) for j in range(Y.shape[1])):
            return train, test
    return patient_split(patient_ids, test_fraction, seed)


def _patient_rule(index, Y, seed):
    return stratified_patient_split(index["patient_id"].cast(pl.Utf8).to_numpy(), Y, 0.3, seed)


def _split_column_rule(index, Y, seed):
    """The source's own ``split`` column: ``test`` rows against every other row (as pretraining reads it)."""
    side = index["split"].to_numpy()
    return np.flatnonzero(side != "test"), np.flatnonzero(side == "test")


def _sim_rule(index, Y, seed):
    """The cohort's ``split`` column where it has one (cohorts written by ``tscl simulate``), else a patient split."""
    return _split_column_rule(index, Y, seed) if "split" in index.columns else _patient_rule(index, Y, seed)


def _strat_fold_rule(index, Y, seed):
    fold = index["strat_fold"].to_numpy()
    return np.flatnonzero(fold <= 8), np.flatnonzero(fold == 10)


# --- waveform loaders -------------------------------------------------------------------------------------

def _ptbxl(root: Path, cache: Path):
    from tscl.loaders.ptbxl import load_ptbxl

    c = load_ptbxl(root / "ptbxl", rate=100, cache_dir=cache / "ptbxl_100", on_error="skip", labels="database",
                   progress=False)  # age, sex and superclasses come from the database rows
    idx = c.index
    db = pl.read_csv(root / "ptbxl" / "ptbxl_database.csv", infer_schema_length=None)
    if "device" in db.columns:
        dev = db.select(pl.col("ecg_id").cast(pl.Int64), pl.col("device").cast(pl.Utf8))
        idx = idx.with_columns(pl.col("ecg_id").cast(pl.Int64)).join(dev, on="ecg_id", how="left", maintain_order="left")
    idx = idx.with_columns((pl.col("sex") == 1).cast(pl.Int8).alias("female"))
    skipped = len(c.report.get("skipped", []))
    notes = [f"PTB-XL loaded with on_error='skip': {skipped} of {c.report.get('rows_in_table', '?')} database rows "
             "have no record files in this sample and are left out"]
    return np.asarray(c.stack()), idx, notes


def _ptbxl_age(root: Path, cache: Path):
    X, idx, notes = _ptbxl(root, cache)
    keep = (idx["age"].is_not_null() & (idx["age"] < 120)).to_numpy()
    if (~keep).any():
        notes.append(f"{int((~keep).sum())} rows without a usable age (null, or PTB-XL's 300 for >89 y) left out")
    return X[keep], idx.filter(pl.Series(keep)), notes


def _fixed_length(windows: np.ndarray, length: int) -> np.ndarray:
    """Linear interpolation of ``[N, C, T]`` windows to ``length`` samples (same duration)."""
    if windows.shape[-1] == length:
        return windows
    t_old = np.linspace(0, 1, windows.shape[-1])
    t_new = np.linspace(0, 1, length)
    flat = windows.reshape(-1, windows.shape[-1])
    return np.stack([np.interp(t_new, t_old, row) for row in flat]).reshape(*windows.shape[:-1], length).astype(np.float32)


def _mitdb_beats(root: Path, cache: Path):
    from tscl.loaders.annotations import load_annotated

    parts, frames, notes = [], [], []
    for db in ("mitdb", "svdb"):
        records = sorted(p.with_suffix("") for p in (root / "physionet" / db).glob("*.atr")
                         if p.with_suffix(".dat").exists())
        if not records:
            continue
        c = load_annotated(records, kind="beats", cache_dir=cache / f"beats_{db}", progress=False)
        idx = c.index.with_row_index("row").filter(pl.col("aami").is_in(["N", "V"]))
        sig = np.stack([np.asarray(c[i])[:2] for i in idx["row"].to_list()])
        parts.append(_fixed_length(sig, 252))  # 0.7 s at 360 Hz
        frames.append(idx.select(pl.col("patient_id").cast(pl.Utf8), pl.col("record_id").cast(pl.Utf8),
                                 (pl.col("aami") == "V").cast(pl.Int8).alias("V"), pl.lit(db).alias("database")))
        notes.append(f"{db}: {len(records)} record(s), {idx.height} N/V beats, first 2 channels, 0.7 s windows "
                     "resampled to 252 samples (360 Hz)")
    if not parts:
        raise FileNotFoundError(root / "physionet" / "mitdb")
    idx = pl.concat(frames)
    idx = idx.with_columns((pl.col("database") + "/" + pl.col("patient_id")).alias("patient_id"))
    return np.concatenate(parts), idx, notes


def _cpsc2021(root: Path, cache: Path):
    from tscl.loaders.annotations import load_annotated

    records = sorted(p.with_suffix("") for p in (root / "physionet" / "cpsc2021").glob("*.atr"))
    c = load_annotated(records, kind="rhythm", cache_dir=cache / "cpsc2021_rhythm", progress=False,
                       window_s=10.0, default_rhythm="N")
    idx = c.index.with_row_index("row").filter(pl.col("rhythm").is_in(["N", "AFIB"]))
    X = np.stack([np.asarray(c[i]) for i in idx["row"].to_list()])
    notes = [f"{len(records)} records, 10 s windows inside one rhythm interval; AFIB vs N (other rhythms left out); "
             "records without rhythm annotations count as N"]
    return X, idx.with_columns(pl.col("afib").cast(pl.Int8)), notes


def _eegmat(root: Path, cache: Path):
    from tscl.loaders.edf import load_eegmat

    c = load_eegmat(root / "physionet" / "eegmat", cache_dir=cache / "eegmat_10s", epoch_s=10.0, progress=False)
    return np.asarray(c.stack()), c.index, [f"{c.index['patient_id'].n_unique()} subject(s), 10 s epochs, 19 10-20 "
                                              "leads, z-scored per channel and epoch before embedding"]


def _sim_cohort(root: Path, cache: Path):
    """The simulated cohort written by ``tscl simulate`` / ``tscl demo``: ``root`` is the cohort folder
    (its ``metadata.csv``), or a folder holding it as ``cohort/``."""
    from tscl.loaders import load_wfdb_cohort

    folder = root if (root / "metadata.csv").exists() else root / "cohort"
    if not (folder / "metadata.csv").exists():
        raise FileNotFoundError(f"{root}: no metadata.csv of a simulated cohort here or in {root / 'cohort'} "
                                "(write one with: tscl simulate --out DIR)")
    c = load_wfdb_cohort(folder, progress=False)
    notes = [f"simulated cohort {folder}: {len(c)} recordings of {c.index['patient_id'].n_unique()} patients; labels "
             "are the simulator's ground truth (lvh, bbb, tachy, brady, mace per patient; af per recording)"]
    return np.asarray(c.stack()), c.index, notes


# --- MIMIC-IV -> MEDS -------------------------------------------------------------------------------------

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


def _mimic(label: str):
    def load(root: Path, cache: Path):
        from tscl.loaders.meds import scan_meds
        from tscl.loaders.mimic_meds import mimic_iv_to_meds

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
    return load


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("sim-risk", _sim_cohort, ("lvh", "bbb", "af", "tachy", "brady", "mace"), _sim_rule, "multilabel",
         description="simulated cohort (tscl simulate/demo; --data is the cohort folder): the six risk labels, "
                     "multi-label, split by patient (the cohort's split column: test patients are never "
                     "pretrained on)"),
    Task("ptbxl-superclass", _ptbxl, ("NORM", "MI", "STTC", "CD", "HYP"), _strat_fold_rule, "multilabel",
         description="PTB-XL diagnostic superclasses, multi-label; strat_fold 1-8 train, 10 test",
         source_column="device"),
    Task("ptbxl-sex", _ptbxl, ("female",), _strat_fold_rule, "binary",
         description="PTB-XL sex (female) from the ECG; strat_fold split", source_column="device"),
    Task("ptbxl-age", _ptbxl_age, ("age",), _strat_fold_rule, "regression",
         description="PTB-XL age (years), ridge regression; strat_fold split", source_column="device"),
    Task("mitdb-beats", _mitdb_beats, ("V",), _patient_rule, "binary",
         description="AAMI V vs N beats of MIT-BIH (+ SVDB when present), split by record/patient",
         source_column="database"),
    Task("cpsc2021-af", _cpsc2021, ("afib",), _patient_rule, "binary",
         description="CPSC 2021 AF vs normal-rhythm 10 s windows, split by patient"),
    Task("eegmat-task", _eegmat, ("task",), _patient_rule, "binary", standardise=True,
         description="EEGMAT rest vs mental arithmetic 10 s epochs, split by subject"),
    Task("mimic-mortality", _mimic("mortality"), ("mortality",), _patient_rule, "binary", modality="tabular",
         description="MIMIC-IV demo in-hospital mortality at admission + 24 h, split by subject"),
    Task("mimic-readmission", _mimic("readmission"), ("readmission",), _patient_rule, "binary", modality="tabular",
         description="MIMIC-IV demo 30-day readmission (prediction at admission + 24 h), split by subject"),
]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


# --- running a task -----------------------------------------------------------------------------------------

def _standardise(X: np.ndarray) -> np.ndarray:
    mean = X.mean(axis=-1, keepdims=True)
    std = X.std(axis=-1, keepdims=True)
    return ((X - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def embed_task(data: TaskData, run: str | Path | None = None, seed: int = 0) -> dict:
    """``{encoder name: [N, d] features}``: the run's encoder and its random-init twin, or without a run a
    random-init ``resnet1d`` (width 0.25); tabular tasks give their features as they are."""
    if data.modality == "tabular":
        return {"tabular": data.X}
    import torch

    from tscl.embed import embed_signals

    X = _standardise(data.X) if data.standardise else np.asarray(data.X, dtype=np.float32)
    if run is not None:
        from tscl.train import load_encoder

        return {Path(run).name: embed_signals(load_encoder(run), X, progress=False),
                "random-init": embed_signals(load_encoder(run, random_init=True, seed=seed), X, progress=False)}
    from tscl.encoders import build_encoder
    from tscl.encoders.resnet1d import CPU_WIDTH

    torch.manual_seed(seed)
    enc = build_encoder("resnet1d", X.shape[1], width=CPU_WIDTH).eval()
    return {"random-init resnet1d": embed_signals(enc, X, progress=False)}


@dataclass
class TaskRun:
    data: TaskData
    features: dict
    result: object  # tscl.probes.evaluate.EvalResult
    audits: dict
    predictors: dict = field(default_factory=dict)  # name -> model trained on the labels (supervised baseline)

    def to_markdown(self) -> str:
        from tscl.probes.audit import audit_markdown

        lines = [f"## {self.data.name}", "", self.data.summary(), ""]
        lines += [f"- {n}" for n in self.data.notes] + [""]
        lines += [self.result.to_markdown(), "", audit_markdown(self.audits)]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"task": self.data.name, "summary": self.data.summary(), "notes": self.data.notes,
                           "probe": json.loads(self.result.to_json()), "audit": self.audits}, indent=1, default=float)


def supervised_baseline(data: TaskData, run: str | Path | None = None, progress: bool = False, **kwargs):
    """The task's supervised-from-scratch baseline: the run's encoder architecture (or the default
    random-init ``resnet1d``, width 0.25) for waveforms, the ``tabular`` MLP encoder for tabular features."""
    from tscl.probes.supervised import SupervisedBaseline

    X = _standardise(data.X) if data.standardise else data.X
    if data.modality == "waveform" and run is not None:
        return SupervisedBaseline.like_run(X, run, data.kind, progress=progress, **kwargs)
    return SupervisedBaseline(X, data.kind, progress=progress, **kwargs)


def run_task(name: str, root: str | Path, *, run: str | Path | None = None, cache_dir: str | Path | None = None,
             probe: str = "linear", n_boot: int = 500, seed: int = 0, supervised: bool = True,
             progress: bool = False, allow_test_overlap: bool = False) -> TaskRun:
    """Load task ``name`` from ``root``, embed, probe and audit it; with ``supervised`` the encoder
    architecture is also trained from scratch on the task's training labels (:func:`supervised_baseline`)."""
    from tscl.probes.audit import audit_embeddings
    from tscl.probes.evaluate import evaluate_probe

    task = get_task(name)
    cache_dir = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "tscl" / "tasks"
    data = task.load(root, cache_dir, seed)
    if run is not None:
        from tscl.probes.linear import check_pretraining_overlap, pretrained_patients

        overlap = check_pretraining_overlap(pretrained_patients(run), data.patient_ids[data.test],
                                            allow=allow_test_overlap, what=f"the encoder of {run}")
        if overlap:
            data.notes.append(f"the encoder was pretrained on {len(overlap)} of the test patients (allowed by "
                              "--allow-test-overlap): its test numbers are optimistic")
    features = embed_task(data, run, seed)
    predictors = {SUPERVISED: supervised_baseline(data, run, progress)} if supervised else {}
    result = evaluate_probe(features, data.Y, data.labels, data.patient_ids, (data.train, data.test), kind=data.kind,
                            probe=probe, n_boot=n_boot, seed=seed, predictors=predictors,
                            reference="random-init" if "random-init" in features and len(features) > 1 else None)
    audits = {k: audit_embeddings(v, data.patient_ids, source=data.source, seed=seed) for k, v in features.items()}
    n_test = len(np.unique(data.patient_ids[data.test]))
    if n_test < 5:
        data.notes.append(f"only {n_test} test patient(s): the patient-level bootstrap cannot show between-patient "
                          "variation, so the CIs are far too narrow (degenerate with 1 patient)")
    for j, lab in enumerate(data.labels):
        if data.kind != "regression" and not 0 < data.Y[data.test, j].sum() < len(data.test):
            data.notes.append(f"label {lab!r} has a single class on the test side: its metrics are n/a")
        elif data.kind != "regression" and min(data.Y[data.test, j].sum(), len(data.test) - data.Y[data.test, j].sum()) < 5:
            data.notes.append(f"label {lab!r}: the test side has fewer than 5 rows of its rarer class; AUROC/AUPRC "
                              "rest on them alone")
    return TaskRun(data, features, result, audits, predictors)


def write_report(names, root: str | Path, out: str | Path, *, run: str | Path | None = None,
                 cache_dir: str | Path | None = None, probe: str = "linear", fractions=(0.1, 0.5, 1.0),
                 n_boot: int = 500, seed: int = 0, supervised: bool = True, progress: bool = False,
                 allow_test_overlap: bool = False) -> Path:
    """Run tasks ``names`` and write ``out/``: ``summary.md`` (probe and audit tables per task),
    ``report.json``, and per task ``<task>_label_efficiency.png`` (linear probe, macro AUROC with 95 % CI
    bands against the fraction of training patients), ``<task>_reliability.png`` and
    ``<task>_embedding_<encoder>.png`` (PCA map coloured by label and by patient)."""
    import re

    from tscl.plots import plot_embedding_map, plot_label_efficiency, plot_reliability
    from tscl.probes import run_probe

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts, payload, efficiency = ["# Downstream evaluation", ""], {}, {}
    for name in names:
        tr = run_task(name, root, run=run, cache_dir=cache_dir, probe=probe, n_boot=n_boot, seed=seed,
                      supervised=supervised, progress=progress, allow_test_overlap=allow_test_overlap)
        d = tr.data
        slug = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", s)  # noqa: E731
        figures = []
        if d.kind != "regression":
            if not any(0 < d.Y[d.test, j].sum() < len(d.test) for j in range(len(d.labels))):
                d.notes.append("label-efficiency curve not drawn: no label has both classes on the test side")
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    eff = run_probe(tr.features, d.Y.astype(int), d.labels, d.patient_ids, fractions=fractions,
                                    repeats=3, n_boot=n_boot, seed=seed, split=(d.train, d.test),
                                    predictors=tr.predictors,
                                    reference="random-init" if "random-init" in tr.features else None)
                efficiency[name] = eff
                figures.append(plot_label_efficiency(eff.rows, out / f"{name}_label_efficiency.png",
                                                     title=f"{name}: linear probe"))
            y = tr.result.y_test
            figures.append(plot_reliability(y, {k: v for k, v in tr.result.predictions.items()},
                                            out / f"{name}_reliability.png", title=f"{name}: reliability ({probe} probe)"))
            colour = ["+".join(lab for lab, v in zip(d.labels, row) if v) or "none" for row in d.Y]
        else:
            colour = [f"{10 * int(v // 10)}s" for v in d.Y[:, 0]]
        for enc, z in tr.features.items():
            figures.append(plot_embedding_map(z, colour, d.patient_ids, out / f"{name}_embedding_{slug(enc)}.png",
                                              title=f"{name}: {enc} (PCA)"))
        parts += [tr.to_markdown(), ""]
        if name in efficiency:
            parts += [f"Label efficiency (macro AUROC, linear probe; the supervised baseline is trained on the same "
                      f"label subsamples; {len(fractions)} fractions of the training patients, 3 subsamples below "
                      f"100 %):", "", efficiency[name].to_markdown(), ""]
        parts += [f"![{f.stem}]({f.name})" for f in figures] + [""]
        payload[name] = json.loads(tr.to_json())
        if name in efficiency:
            payload[name]["label_efficiency"] = json.loads(efficiency[name].to_json())
    (out / "summary.md").write_text("\n".join(parts))
    (out / "report.json").write_text(json.dumps(payload, indent=1, default=float))
    return out
