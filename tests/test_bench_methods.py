"""The method benchmark's run list: variants parse strictly and rows never collide."""
from types import SimpleNamespace

import pytest

from tscl.benchmarks.bench_methods import parse_variant, runs_to_make


def test_variant_parses_into_a_row_with_extra_kwargs():
    assert parse_variant('comet-no-trial=comet:{"weights": {"trial": 0}}') == (
        "comet-no-trial", "comet", {"weights": {"trial": 0}})


@pytest.mark.parametrize("text", ["comet", "x=comet", "x=nope:{}", "x=comet:[1, 2]", "=comet:{}", "x=comet:{bad"])
def test_malformed_variants_are_refused(text):
    with pytest.raises(ValueError):
        parse_variant(text)


def test_runs_to_make_lists_methods_fraction_run_and_variants():
    args = SimpleNamespace(methods=["simclr", "polywindow"], epochs=20, polywindow_fraction=[0.25],
                           variant=['pclr-wide=pclr:{"patients_per_batch": 64}'])
    assert runs_to_make(args) == [("simclr", "simclr", 20, {}), ("polywindow", "polywindow", 20, {}),
                                  ("polywindow@5ep", "polywindow", 5, {}),
                                  ("pclr-wide", "pclr", 20, {"patients_per_batch": 64})]
    args.variant, args.polywindow_fraction = [], [0.5, 0.25, 0]
    assert [r[0] for r in runs_to_make(args)] == ["simclr", "polywindow", "polywindow@5ep", "polywindow@10ep"]
    args.polywindow_fraction = [1.5]
    with pytest.raises(ValueError, match="fraction in"):
        runs_to_make(args)
    args.variant, args.polywindow_fraction = ["simclr=moco:{}"], [0.25]
    with pytest.raises(ValueError, match="duplicate"):
        runs_to_make(args)


def test_a_finished_run_is_reused_only_with_the_same_settings(tmp_path):
    import json

    from tscl.benchmarks.bench_methods import finished_run
    from tscl.train import PretrainConfig

    cfg = PretrainConfig(out_dir=str(tmp_path), method="simclr", encoder="cnn1d",
                         encoder_kwargs={"widths": (16, 32)}, method_kwargs={"batch_size": 32}, epochs=2)
    assert finished_run(tmp_path, cfg) is None  # nothing there yet
    from dataclasses import asdict

    (tmp_path / "config.json").write_text(json.dumps(asdict(cfg)))
    (tmp_path / "done.json").write_text(json.dumps({"pretrain_s": 12.5}))
    assert finished_run(tmp_path, cfg) == 12.5
    cfg.epochs = 20
    with pytest.raises(ValueError, match="epochs: 2 there, 20 now"):
        finished_run(tmp_path, cfg)


def test_a_finished_run_made_with_other_method_code_is_refused(tmp_path):
    import json
    from dataclasses import asdict

    from tscl.benchmarks.bench_methods import code_digest, finished_run
    from tscl.train import PretrainConfig

    cfg = PretrainConfig(out_dir=str(tmp_path), method="clocs-cmlc", encoder="cnn1d", epochs=2)
    (tmp_path / "config.json").write_text(json.dumps(asdict(cfg)))
    digest = code_digest("clocs-cmlc", "cnn1d")
    assert digest != code_digest("comet", "cnn1d") != code_digest("comet", "resnet1d")
    (tmp_path / "done.json").write_text(json.dumps({"pretrain_s": 3.0, "code": digest}))
    assert finished_run(tmp_path, cfg) == 3.0
    (tmp_path / "done.json").write_text(json.dumps({"pretrain_s": 3.0, "code": "0123456789ab"}))
    with pytest.raises(ValueError, match="other code of 'clocs-cmlc'"):
        finished_run(tmp_path, cfg)


def test_supcon_sees_the_labels_of_training_patients_only():
    """SupCon's class column carries the multi-hot pattern on the probe's training rows and nothing on its
    test rows, so no test patient's label reaches pretraining; the rows line up with run_probe's split."""
    import numpy as np
    import polars as pl

    from tscl.benchmarks.bench_methods import SUPCON_LABEL, TEST_FRACTION, method_kwargs, supcon_labels
    from tscl.methods.supcon import class_ids
    from tscl.probes import patient_split

    pids = np.repeat(np.arange(20), 3)
    rng = np.random.default_rng(0)
    index = pl.DataFrame({"patient_id": pids, "lvh": rng.integers(0, 2, 60), "af": rng.integers(0, 2, 60)})
    train, test = patient_split(pids, TEST_FRACTION, 0)
    col = supcon_labels(index, ["lvh", "af"], train)
    assert col.name == SUPCON_LABEL == method_kwargs("supcon", 64)["label"]
    assert col[test].null_count() == len(test) and col[train].null_count() == 0
    want = [f"{a}{b}" for a, b in index.select("lvh", "af").rows()]
    assert col[train].to_list() == [want[i] for i in train]
    ids = class_ids(index.with_columns(col), SUPCON_LABEL)
    assert len(set(ids[test])) == len(test)  # every test row is a class of its own
    assert len(set(ids[train])) <= 4


def test_table_lists_every_simclr_reference_of_the_patient_aware_comparison():
    from tscl.benchmarks.bench_methods import FRACTIONS, table

    rows = [{"encoder": e, "fraction": f, "auroc": 0.8, "ci_low": 0.7, "ci_high": 0.9}
            for e in ("simclr", "simclr-crop", "pclr", "random-init") for f in FRACTIONS]
    comp = {"fraction": 0.1, "delta": 0.05, "ci_low": 0.01, "ci_high": 0.09}
    rec = {"labels": ["lvh"], "split": {"test_patients": 3, "test_records": 9}, "rows": rows,
           "vs_random": [{**comp, "encoder": e} for e in ("simclr", "simclr-crop", "pclr")],
           "pretrain_s": {"simclr": 10.0, "pclr": 5.0},
           "patient_level_vs_simclr": [{**comp, "encoder": "pclr", "reference": "simclr", "ci_low": -0.01},
                                       {**comp, "encoder": "pclr", "reference": "simclr-crop"}]}
    md = table("cohort", rec)
    assert "| pclr − simclr | 10 % | +0.050 [-0.010, +0.090] | no (CI spans 0) |" in md
    assert "| pclr − simclr-crop | 10 % | +0.050 [+0.010, +0.090] | yes |" in md
    assert "| random-init |" in md and md.count("| simclr-crop |") == 1


def test_benchmarks_record_the_machine_as_pretraining_runs_do(tmp_path):
    """Benchmark JSON carries the environment record of ``tscl.train.environment`` (versions, device, CPU
    kernels, threads), so a number can be traced to the machine that made it the same way a run folder can."""
    import json

    import torch

    from tscl.benchmarks import bench_encoders

    bench_encoders.main(["--quick", "--only", "cnn1d", "--out", str(tmp_path / "enc.json")])
    env = json.loads((tmp_path / "enc.json").read_text())["meta"]["environment"]
    assert env["torch"] == torch.__version__ and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["threads"] == torch.get_num_threads() and "time" in env
