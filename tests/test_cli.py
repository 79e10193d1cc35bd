import json
import subprocess
import sys

import numpy as np
import pytest

from tscl.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert main(["simulate", "--out", str(root / "cohort"), "--patients", "16", "--seed", "2", "--quiet"]) == 0
    return root


def test_simulate_pretrain_embed_probe(tiny):
    data = str(tiny / "cohort")
    assert main(["pretrain", "--data", data, "--out", str(tiny / "run"), "--epochs", "2", "--encoder", "cnn1d",
                 "--encoder-kwargs", "widths=[8,16]", "--method-kwargs", "patients_per_batch=8", "--quiet"]) == 0
    run = tiny / "run"
    for name in ("config.json", "metrics.jsonl", "encoder.safetensors", "loss.png"):
        assert (run / name).exists(), name
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(s.get("loss", s.get("mean_loss"))) for s in steps)
    assert main(["embed", "--data", data, "--run", str(run), "--out", str(tiny / "pclr.npz"), "--quiet"]) == 0
    assert main(["embed", "--data", data, "--run", str(run), "--random-init", "--out", str(tiny / "rand.npz"), "--quiet"]) == 0
    z = np.load(tiny / "pclr.npz")
    assert z["features"].shape[0] == len(z["record_id"]) and np.isfinite(z["features"]).all()
    assert not np.allclose(z["features"], np.load(tiny / "rand.npz")["features"])
    assert main(["probe", "--data", data, "--embeddings", str(tiny / "pclr.npz"), str(tiny / "rand.npz"),
                 "--labels", "lvh,bbb", "--fractions", "0.5,1", "--bootstrap", "50", "--reference", "rand",
                 "--out", str(tiny / "probe"), "--quiet"]) == 0
    report = json.loads((tiny / "probe" / "probe.json").read_text())
    assert {r["encoder"] for r in report["rows"]} == {"pclr", "rand", "random-init"}  # random init by default
    assert (tiny / "probe" / "label_efficiency.png").stat().st_size > 1000


def test_demo_runs_end_to_end_and_prints_the_table(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "tscl", "demo", "--out", str(out), "--patients", "24", "--epochs", "1",
         "--encoder", "cnn1d", "--encoder-kwargs", "widths=[8,16]", "--batch-patients", "8", "--bootstrap", "50",
         "--fractions", "0.5,1", "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| pclr |" in proc.stdout and "| random-init |" in proc.stdout
    assert "| supervised (from scratch) |" in proc.stdout
    assert "pclr − random-init" in proc.stdout and "supervised (from scratch) − random-init" in proc.stdout
    summary = (out / "report" / "report.md").read_text()
    assert "# sim-risk" in summary and "supervised (from scratch)" in summary and "re-id [chance]" in summary
    report = json.loads((out / "report" / "report.json").read_text())
    assert {r["encoder"] for r in report["rows"]} == {"pclr", "random-init", "supervised (from scratch)"}
    for fig in ("label_efficiency.png", "reliability.png", "embedding_pclr.png"):
        assert (out / "report" / fig).stat().st_size > 1000, fig


def test_encoder_kwargs_default_to_the_chosen_encoders_own(tiny):
    """Without --encoder-kwargs, resnet1d gets the CPU-sized width 0.25 and any other encoder its defaults
    (a resnet1d-only default would make `--encoder cnn1d` fail)."""
    data = str(tiny / "cohort")
    for enc, want in (("cnn1d", {}), ("resnet1d", {"width": 0.25})):
        out = tiny / f"default-{enc}"
        assert main(["pretrain", "--data", data, "--out", str(out), "--epochs", "1", "--encoder", enc,
                     "--method", "simclr", "--method-kwargs", "batch_size=16", "--quiet"]) == 0
        assert json.loads((out / "config.json").read_text())["encoder_kwargs"] == want


def test_bad_metadata_is_reported_with_the_file(tiny, capsys):
    meta = tiny / "bad.csv"
    meta.write_text("record_id,lvh\nP00000_v0,1\n")
    code = main(["pretrain", "--data", str(tiny / "cohort"), "--metadata", str(meta), "--out", str(tiny / "x"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "patient_id" in err


def test_unknown_label_is_a_clear_error(tiny, capsys):
    assert main(["probe", "--data", str(tiny / "cohort"), "--embeddings", str(tiny / "pclr.npz"), "--labels", "nope",
                 "--out", str(tiny / "p2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "label column 'nope' is not in the index; label columns: " in err and "lvh" in err
