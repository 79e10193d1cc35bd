"""Named tasks are (source, options, labels, rows, split, kind) tuples over the sources' label columns, and the
engine runs them; the MIMIC-IV admission features never see the future."""
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tscl.datasets import get_source
from tscl.datasets.ehr import ehr_features, mimic_admissions
from tscl.probes import EvalSpec, evaluate, stratified_patient_split
from tscl.tasks import KINDS, SPLIT_RULES, TASKS, get_task, list_tasks

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent")


def test_every_task_names_a_source_its_options_and_labels():
    tasks = list_tasks()
    assert {"ptbxl-superclass", "ptbxl-superdiagnostic", "ptbxl-sex", "ptbxl-age", "mitdb-beats", "cpsc2021-af",
            "eegmat-task", "mimic-mortality", "mimic-readmission", "mimic-long-stay", "sim-risk"} <= set(TASKS)
    for task in tasks:
        src = get_source(task.source)  # a registered source, opened like every command opens it
        assert set(task.options) <= set(src.options), task.name
        assert task.kind in KINDS and task.split in SPLIT_RULES and task.labels and task.description
    assert get_task("ptbxl-superclass").labels == ("NORM", "MI", "STTC", "CD", "HYP")
    assert get_task("ptbxl-age").kind == "regression"
    with pytest.raises(ValueError, match="known tasks"):
        get_task("nope")


def test_stratified_patient_split_keeps_patients_whole_and_both_classes_per_side():
    pids = np.repeat(np.arange(12), 4).astype(str)
    y = np.zeros((48, 1))
    y[pids == "3"] = 1  # one positive patient in twelve: a random split rarely leaves one on each side
    y[pids == "7"] = 1
    train, test = stratified_patient_split(pids, y, 0.3, seed=0)
    assert set(pids[train]).isdisjoint(pids[test]) and len(train) + len(test) == 48
    assert 0 < y[train].sum() < len(train) and 0 < y[test].sum() < len(test)


# --- EHR features: nothing at or after the prediction time may enter ------------------------------------

def _events():
    t0 = datetime(2150, 1, 1)
    rows = [(1, None, "GENDER//F", None), (1, datetime(2100, 1, 1), "MEDS_BIRTH", None),
            (2, datetime(2090, 6, 1), "MEDS_BIRTH", None)]
    for s in (1, 2):
        for h in range(0, 48, 6):
            rows.append((s, t0 + timedelta(hours=h), "LAB//1//mg", float(h + s)))
            rows.append((s, t0 + timedelta(hours=h + 1), "MEDICATION//aspirin", None))
    return pl.DataFrame(rows, schema={"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.Utf8,
                                      "numeric_value": pl.Float64}, orient="row").sort("subject_id", "time")


def _cohort():
    pt = datetime(2150, 1, 2)
    return pl.DataFrame({"subject_id": [1, 2], "prediction_time": [pt, pt]},
                        schema={"subject_id": pl.Int64, "prediction_time": pl.Datetime("us")})


def test_planted_future_event_does_not_change_ehr_features():
    events, cohort = _events(), _cohort()
    X, names = ehr_features(events, cohort, train_subjects={1, 2})
    pt = datetime(2150, 1, 2)
    planted = pl.DataFrame(
        [(1, pt, "LAB//1//mg", 999.0), (1, pt + timedelta(hours=1), "LAB//1//mg", -999.0),
         (2, pt + timedelta(days=3), "MEDS_DEATH", None), (2, pt, "LAB//NEW//x", 5.0),
         (1, pt - timedelta(hours=1) + timedelta(hours=1), "MEDICATION//aspirin", None)],
        schema=events.schema, orient="row")
    X2, names2 = ehr_features(pl.concat([events, planted]).sort("subject_id", "time"), cohort, train_subjects={1, 2})
    assert names2 == names
    np.testing.assert_array_equal(X2, X)
    # the same edit one microsecond *before* the prediction time does change the features
    before = planted.with_columns(pl.col("time") - pl.duration(microseconds=1))
    X3, names3 = ehr_features(pl.concat([events, before]).sort("subject_id", "time"), cohort, train_subjects={1, 2})
    assert names3 != names or not np.array_equal(X3, X)


def test_ehr_features_age_sex_and_excluded_death_code():
    events = pl.concat([_events(), pl.DataFrame([(2, datetime(2150, 1, 1, 0, 0), "MEDS_DEATH", None)],
                                                schema=_events().schema, orient="row")]).sort("subject_id", "time")
    X, names = ehr_features(events, _cohort(), train_subjects={1, 2})
    assert "age" in names and "female" in names
    assert not any("MEDS_DEATH" in n for n in names)
    assert X[0, names.index("female")] > X[1, names.index("female")]  # z-scored, subject 1 is female
    assert X[1, names.index("age")] > X[0, names.index("age")]  # subject 2 is older


def test_mimic_admissions_cohort_and_labels(tmp_path):
    (tmp_path / "hosp").mkdir()
    adm = pl.DataFrame({
        "subject_id": [1, 1, 2, 3], "hadm_id": [10, 11, 20, 30],
        "admittime": ["2150-01-01 00:00:00", "2150-01-20 00:00:00", "2150-01-01 00:00:00", "2150-01-01 00:00:00"],
        "dischtime": ["2150-01-05 00:00:00", "2150-01-25 00:00:00", "2150-01-01 12:00:00", "2150-01-04 00:00:00"],
        "deathtime": [None, None, None, "2150-01-04 00:00:00"], "hospital_expire_flag": [0, 0, 0, 1]})
    adm.write_csv(tmp_path / "hosp" / "admissions.csv")
    import gzip

    (tmp_path / "hosp" / "admissions.csv.gz").write_bytes(gzip.compress((tmp_path / "hosp" / "admissions.csv").read_bytes()))
    c = mimic_admissions(tmp_path).sort("hadm_id")
    assert c["hadm_id"].to_list() == [10, 11, 30]  # 20 is discharged before admission + 24 h
    assert c["readmission"].to_list() == [1, 0, 0] and c["mortality"].to_list() == [0, 0, 1]
    assert c["prediction_time"][0] == datetime(2150, 1, 2)


# --- a task on a simulated cohort, through the engine ------------------------------------------------------

@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from tscl.simulate import CohortConfig, write_cohort

    folder = tmp_path_factory.mktemp("sim") / "cohort"
    write_cohort(folder, CohortConfig(n_patients=40, seed=3), progress=False)
    return folder


def test_sim_risk_without_a_run_uses_the_default_architecture_untrained(cohort):
    meta = pl.read_csv(cohort / "metadata.csv")
    rep = evaluate(EvalSpec(task="sim-risk", root=cohort, fractions=(1.0,), n_boot=30))
    assert [r["encoder"] for r in rep.rows] == ["random-init"]
    assert any("resnet1d" in n and "untrained" in n for n in rep.notes)
    test_patients = meta.filter(pl.col("split") == "test")["patient_id"].n_unique()
    assert rep.result.split["test_patients"] == test_patients  # the cohort's own split column
    assert rep.result.labels == ["lvh", "bbb", "af", "tachy", "brady", "mace"]


def test_bad_specifications_are_one_line_naming_the_field(cohort, tmp_path):
    cases = [(EvalSpec(task="sim-risk", root=cohort, probe="svm"), "probe 'svm'"),
             (EvalSpec(task="sim-risk", root=cohort, fractions=(0,)), "fractions"),
             (EvalSpec(dataset="wfdb", root=cohort, labels=["nope"]), "label column 'nope'"),
             (EvalSpec(dataset="wfdb", root=cohort, labels=["lvh"], encoders=[tmp_path / "none"]), "encoder not found"),
             (EvalSpec(task="sim-risk", dataset="ptbxl", root=cohort), "defined on source 'wfdb'"),
             (EvalSpec(dataset="wfdb", root=cohort, labels=["lvh"], test_split="train"), "test_split"),
             (EvalSpec(dataset="wfdb", root=cohort, labels=["lvh"], reference="x", fractions=(1.0,), n_boot=5),
              "reference 'x' is not a row")]
    for spec, words in cases:
        with pytest.raises((ValueError, FileNotFoundError)) as err:
            evaluate(spec)
        assert words in str(err.value) and "\n" not in str(err.value), (words, str(err.value))


# --- real data -------------------------------------------------------------------------------------------

def _listed(root: Path, pattern: str, fold=None) -> set:
    """ecg_ids of the CSVs matching ``pattern`` under ``root`` (of ``fold`` only, when given), from the files."""
    out = set()
    for path in root.glob(pattern):
        t = pl.read_csv(path, infer_schema=False)
        out |= {int(float(e)) for e, f in zip(t["ecg_id"], t["strat_fold"]) if fold is None or int(float(f)) == fold}
    return out


def _fold10_labelled(root: Path) -> set:
    """The fold-10 ECGs with records on disk that some label source gives a superclass (computed from the files)."""
    ids = _listed(root, "ptbxl_database.csv", 10) | _listed(root, "labels/ptbxl_super_class_*.csv", 10)
    return ids & {int(p.name[:5]) for p in (root / "records100").rglob("*_lr.hea")}


@needs_data
def test_ptbxl_superclass_tests_on_every_labelled_fold10_ecg(tmp_path):
    """The README's PTB-XL probe: labels from the label tables and the database, so every labelled fold-10 ECG."""
    from tscl.datasets import open_dataset

    root = DATA / "ptbxl"
    data = open_dataset("ptbxl", root, cache=tmp_path, on_error="skip", progress=False)
    idx = data.index.filter((pl.col("strat_fold") == 10) & pl.all_horizontal(
        pl.col(c).is_not_null() for c in ("NORM", "MI", "STTC", "CD", "HYP")))
    db_only = data.index.filter((pl.col("strat_fold") == 10) & (pl.col("in_database") == 1))
    assert set(map(int, idx["record_id"])) == _fold10_labelled(root) and idx.height > 3 * db_only.height
    listed = _listed(root, "ptbxl_database.csv") | _listed(root, "labels/ptbxl_*.csv")
    on_disk = {int(p.name[:5]) for p in (root / "records100").rglob("*_lr.hea")}
    assert len(data.notes.get("unlisted", [])) == len(on_disk - listed)  # "listed in no label source" is true


@needs_data
def test_cli_task_run_cpsc2021_af_and_a_source_too_small_to_split(tmp_path, capsys):
    from tscl.cli import main

    physionet = DATA / "physionet"
    assert main(["task", "run", "cpsc2021-af", "--data", str(physionet / "cpsc2021"), "--cache", str(tmp_path / "c"),
                 "--bootstrap", "50", "--no-supervised", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "AUROC" in out and "re-id" in out
    saved = json.loads((tmp_path / "o" / "cpsc2021-af.json").read_text())
    subjects = {p.name.split("_")[1] for p in (physionet / "cpsc2021").glob("*.atr")}
    assert saved["spec"]["task"] == "cpsc2021-af" and saved["data"]["labels"] == ["afib"]
    assert saved["split"]["train_patients"] + saved["split"]["test_patients"] == len(subjects)
    assert saved["audit"]["random-init"]["reid"]["queries"] > 0 and (tmp_path / "o" / "label_efficiency.png").exists()
    scored = [r for r in saved["rows"] if not r["n/a"]]  # a sample this small may hold one class on the test side
    assert (tmp_path / "o" / "reliability.png").exists() == bool(scored)
    assert all(f"n/a ({r['n/a']})" in out for r in saved["rows"] if r["n/a"])
    records = {p.stem for p in (physionet / "mitdb").glob("*.atr")}
    code = main(["task", "run", "mitdb-beats", "--data", str(physionet / "mitdb"), "--cache", str(tmp_path / "c"),
                 "--quiet"])
    err = capsys.readouterr().err
    if len(records) < 2:  # one record is one patient: no split, said in one line
        assert code == 2 and "needs at least 2 patients, got 1" in err and len(err.strip().splitlines()) == 1
    else:
        assert code == 0
