"""The evaluation engine end to end on simulated cohorts: rows beside the encoder, fine-tuning from a run's weights,
external validation with its patient checks, and the one report format."""
import json

import numpy as np
import polars as pl
import pytest
import torch

from tscl.probes import EvalSpec, PatientLeakageError, SupervisedBaseline, evaluate
from tscl.simulate import CohortConfig, write_cohort
from tscl.train import PretrainConfig, pretrain

TINY = {"epochs": 1, "max_steps": 4}


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """Two cohorts of other patients (site B's ids renamed, as another hospital's would be) and a run pretrained on
    site A's training split."""
    root = tmp_path_factory.mktemp("sites")
    write_cohort(root / "a", CohortConfig(n_patients=36, seed=1), progress=False)
    write_cohort(root / "b", CohortConfig(n_patients=24, seed=2), progress=False)
    meta = pl.read_csv(root / "b" / "metadata.csv", infer_schema=False)
    meta.with_columns(("B" + pl.col("patient_id")).alias("patient_id")).write_csv(root / "b" / "metadata.csv")
    from tscl.datasets import open_dataset

    train = open_dataset("wfdb", root / "a", split="train", progress=False)
    run = pretrain(train, PretrainConfig(out_dir=str(root / "pclr"), method="pclr", encoder="cnn1d",
                                         encoder_kwargs={"widths": [8, 16]}, method_kwargs={"patients_per_batch": 8},
                                         epochs=1, device="cpu", progress=False))
    return root, run


def test_external_validation_scores_the_same_probes_on_the_other_site_beside_the_internal_estimate(sites, tmp_path):
    root, run = sites
    spec = EvalSpec(dataset="wfdb", root=root / "a", labels=["lvh", "bbb"], encoders=[run], fractions=(0.5, 1.0),
                    repeats=2, n_boot=40, test_dataset="wfdb", test_root=root / "b", test_split="all",
                    supervised=True, finetune=True, supervised_kwargs=TINY, finetune_kwargs=TINY)
    report = evaluate(spec)
    meta_b = pl.read_csv(root / "b" / "metadata.csv")
    ext = report.result.tests["external"]
    assert ext["test_records"] == meta_b.height and ext["test_patients"] == meta_b["patient_id"].n_unique()
    names = {"pclr", "random-init", "supervised (from scratch)", "fine-tune (pclr)"}
    for test in ("internal", "external"):
        assert {r["encoder"] for r in report.rows if r["test"] == test and r["fraction"] == 1.0} == names
    # one fit serves both test sets: the external cell's training patients are the internal cell's
    for r in (r for r in report.rows if r["test"] == "external"):
        assert r["train_patients"] == report.result.cell(r["encoder"], r["fraction"])["train_patients"]
    text = report.to_markdown()
    assert "100 % labels (internal) | 100 % labels (external)" in text and "| external |" in text
    out = report.write(tmp_path / "ext")
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["tests"]) == {"internal", "external"} and saved["data"]["external"]["rows"] == meta_b.height
    assert (out / "label_efficiency.png").exists() and "external validation" in " ".join(report.notes)


def test_external_patients_of_the_training_site_are_refused(sites):
    root, run = sites
    base = dict(dataset="wfdb", root=root / "a", labels=["lvh"], encoders=[run], fractions=(1.0,), n_boot=10,
                test_root=root / "a")
    ok = evaluate(EvalSpec(**base))  # the site's own test split: other patients than its training ones
    assert ok.result.tests["external"]["test_records"] == ok.result.split["test_records"]
    with pytest.raises(PatientLeakageError, match="training patients"):  # every row of the site: its training ones
        evaluate(EvalSpec(**base, test_split="all"))


def test_fine_tuning_starts_from_the_runs_weights_and_supervised_from_scratch(sites):
    root, run = sites
    from tscl.datasets import open_dataset
    from tscl.train import load_encoder

    data = open_dataset("wfdb", root / "a", progress=False)
    tuned = SupervisedBaseline.like_run(data, run, "multilabel", pretrained=True)
    scratch = SupervisedBaseline.like_run(data, run, "multilabel")
    pretrained = load_encoder(run).state_dict()
    torch.manual_seed(0)
    start = tuned._network(2).encoder.state_dict()
    assert all(torch.equal(start[k], pretrained[k]) for k in pretrained)
    torch.manual_seed(0)
    fresh = scratch._network(2).encoder.state_dict()
    assert not all(torch.equal(fresh[k], pretrained[k]) for k in pretrained if fresh[k].is_floating_point())
    Y = data.index.select("lvh", "bbb").to_numpy().astype(float)
    pids = np.asarray(data.index["patient_id"].to_list())
    rows, test = np.flatnonzero(data.index["split"] == "train"), np.flatnonzero(data.index["split"] == "test")
    P = tuned(Y, rows, test, pids, 0)
    assert P.shape == (len(test), 2) and ((P > 0) & (P < 1)).all() and tuned.last_info["steps"] > 0
