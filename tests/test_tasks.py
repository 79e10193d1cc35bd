import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tscl.tasks import TASKS, TaskData, ehr_features, embed_task, get_task, mimic_admissions, stratified_patient_split

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent")


def test_registry_has_the_named_tasks():
    assert {"ptbxl-superclass", "ptbxl-sex", "ptbxl-age", "mitdb-beats", "cpsc2021-af", "eegmat-task",
            "mimic-mortality", "mimic-readmission"} <= set(TASKS)
    assert get_task("ptbxl-superclass").labels == ("NORM", "MI", "STTC", "CD", "HYP")
    assert get_task("ptbxl-age").kind == "regression"
    with pytest.raises(KeyError, match="known tasks"):
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


# --- embedding -----------------------------------------------------------------------------------------

def _toy_waveforms(n=12):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 2, 256)).astype(np.float32)
    pids = np.repeat(np.arange(n // 2), 2).astype(str)
    return TaskData("toy", "binary", "waveform", X, (np.arange(n) % 2)[:, None].astype(float), ["y"], pids,
                    np.arange(n // 2), np.arange(n // 2, n))


def test_embed_task_with_a_run_and_without(tmp_path):
    import torch
    from safetensors.torch import save_file

    from tscl.encoders import build_encoder

    data = _toy_waveforms()
    base = embed_task(data)
    assert list(base) == ["random-init resnet1d"] and base["random-init resnet1d"].shape[0] == 12
    torch.manual_seed(123)
    enc = build_encoder("resnet1d", 2, width=0.25)
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, tmp_path / "encoder.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"encoder": "resnet1d", "in_channels": 2,
                                                      "encoder_kwargs": {"width": 0.25}}))
    feats = embed_task(data, run=tmp_path)
    assert set(feats) == {tmp_path.name, "random-init"}
    assert not np.allclose(feats[tmp_path.name], feats["random-init"])
    tab = TaskData("t", "binary", "tabular", np.ones((4, 3)), np.zeros((4, 1)), ["y"], np.arange(4), np.arange(2),
                   np.arange(2, 4))
    assert embed_task(tab)["tabular"] is tab.X


# --- real data -------------------------------------------------------------------------------------------

@needs_data
def test_ptbxl_superclass_uses_strat_folds_and_reports_skipped_rows(tmp_path):
    data = get_task("ptbxl-superclass").load(DATA, tmp_path)
    assert data.X.shape[1:] == (12, 1000) and data.Y.shape[1] == 5
    assert any("on_error='skip'" in n for n in data.notes)
    assert set(data.patient_ids[data.train]).isdisjoint(data.patient_ids[data.test])
    assert len(data.test) > 0 and data.source is not None


@needs_data
def test_mimic_real_features_ignore_a_planted_future_event(tmp_path):
    from tscl.loaders.meds import scan_meds
    from tscl.loaders.mimic_meds import mimic_iv_to_meds

    root = DATA / "meds_demo" / "mimic-iv-clinical-database-demo-2.2"
    with pytest.warns(UserWarning):
        mimic_iv_to_meds(root, tmp_path / "meds", tables=("hosp/patients", "hosp/admissions", "hosp/labevents",
                                                          "icu/chartevents"))
    events = scan_meds(tmp_path / "meds").collect()
    cohort = mimic_admissions(root).head(20)
    subjects = set(cohort["subject_id"].to_list())
    X, names = ehr_features(events, cohort, subjects, top_k=30)
    # the subject's last admission in the cohort: a planted event after its prediction time is after every
    # prediction time of that subject (an earlier admission's future is a later admission's past)
    last = cohort.sort("prediction_time").group_by("subject_id", maintain_order=True).last()
    s, pt = last["subject_id"][0], last["prediction_time"][0]
    lab = next(n.split("//", 1)[1] for n in names if n.startswith("last//"))
    planted = pl.DataFrame({"subject_id": [s, s], "time": [pt, pt + timedelta(hours=2)], "code": [lab, "MEDS_DEATH"],
                            "numeric_value": [1e6, None]},
                           schema={"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.Utf8,
                                   "numeric_value": pl.Float64})
    X2, names2 = ehr_features(pl.concat([events.select(planted.columns), planted]), cohort, subjects, top_k=30)
    assert names2 == names
    np.testing.assert_allclose(X2, X)


@needs_data
def test_cli_task_run_mitdb_beats(tmp_path, capsys):
    from tscl.cli import main

    assert main(["task", "run", "mitdb-beats", "--data", str(DATA), "--cache", str(tmp_path / "c"),
                 "--bootstrap", "50", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "AUROC" in out and "re-id" in out
    saved = json.loads((tmp_path / "o" / "mitdb-beats.json").read_text())
    assert saved["task"] == "mitdb-beats" and saved["audit"]["random-init resnet1d"]["reid"]["queries"] > 0


@needs_data
def test_cli_report_writes_summary_json_and_figures(tmp_path):
    from tscl.cli import main

    out = tmp_path / "report"
    assert main(["report", "--tasks", "mimic-mortality", "--data", str(DATA), "--cache", str(tmp_path / "c"),
                 "--bootstrap", "50", "--fractions", "0.5,1", "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert "## mimic-mortality" in summary and "re-id" in summary
    rep = json.loads((out / "report.json").read_text())
    assert rep["mimic-mortality"]["probe"]["rows"][0]["encoder"] == "tabular"
    from tscl.probes.cells import label_problem

    positives = int(rep["mimic-mortality"]["summary"].rsplit("/", 1)[1])  # "... positives train/test: mortality a/b"
    why = label_problem([1] * positives + [0] * 50)
    figures = ["mimic-mortality_reliability.png", "mimic-mortality_embedding_tabular.png"]
    if why:  # the demo's test side holds too few deaths for an AUROC: n/a with the reason, no curve
        assert f"n/a ({why})" in summary and "label-efficiency curve not drawn" in summary
        assert not (out / "mimic-mortality_label_efficiency.png").exists()
    else:
        figures.append("mimic-mortality_label_efficiency.png")
    for png in figures:
        assert (out / png).stat().st_size > 1000 and f"({png})" in summary
