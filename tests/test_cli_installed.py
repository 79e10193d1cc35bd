"""The installed ``tscl`` command, run from a folder outside the repository, on every dataset kind.

Each test runs the console script in a fresh temporary working directory with no PYTHONPATH, so
only the installed package is importable (a module importing the repository folder ``loaders``
instead of ``tscl.loaders`` fails here although it passes from the repository root). Each kind
goes pretrain -> embed -> probe (or ``task run`` / ``report``) on its sample and leaves a run
folder and a report. The real samples live in ``../shared/data``; those tests skip without it.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TSCL = shutil.which("tscl", path=str(Path(sys.executable).parent)) or shutil.which("tscl")
pytestmark = pytest.mark.skipif(TSCL is None, reason="the tscl console script is not installed (pip install -e .)")
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"shared data not found at {DATA}")

TINY = ["--encoder", "cnn1d", "--encoder-kwargs", "widths=[8,16]", "--epochs", "1", "--quiet"]


def tscl(*args, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["TSCL_CACHE"] = str(cwd / "cache")
    proc = subprocess.run([TSCL, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, f"tscl {' '.join(map(str, args))}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture
def outside(tmp_path):
    assert REPO not in tmp_path.parents and tmp_path != REPO
    return tmp_path


def _pipeline(cwd: Path, data_args: list, method_args: list, labels: str, probe_extra=(), pretrain_split=None,
              model=TINY):
    split = ["--split", pretrain_split] if pretrain_split else []
    tscl("pretrain", *data_args, *split, *method_args, *model, "--out", "run", cwd=cwd)
    for name in ("config.json", "encoder.safetensors", "metrics.jsonl", "patients.json", "environment.json"):
        assert (cwd / "run" / name).exists(), name
    cfg = json.loads((cwd / "run" / "config.json").read_text())
    assert cfg["dataset"]["dataset"] == data_args[data_args.index("--dataset") + 1]
    tscl("embed", "--run", "run", "--out", "run.npz", "--quiet", cwd=cwd)  # the run's own dataset, every row
    tscl("embed", "--run", "run", "--random-init", "--out", "random.npz", "--quiet", cwd=cwd)
    tscl("probe", *data_args, "--embeddings", "run.npz", "random.npz", "--labels", labels, "--fractions", "1",
         "--bootstrap", "20", "--reference", "random", "--out", "probe", "--quiet", *probe_extra, cwd=cwd)
    report = json.loads((cwd / "probe" / "probe.json").read_text())
    assert {r["encoder"] for r in report["rows"]} == {"run", "random", "random-init"}  # random init by default
    assert (cwd / "probe" / "label_efficiency.png").stat().st_size > 1000
    return cfg


def test_simulated_cohort_as_a_wfdb_folder(outside):
    tscl("simulate", "--out", "cohort", "--patients", "30", "--quiet", cwd=outside)
    cfg = _pipeline(outside, ["--dataset", "wfdb", "--root", "cohort"], ["--method", "pclr", "--method-kwargs",
                    "patients_per_batch=8", "--augment", "none"], "lvh,bbb")
    assert cfg["dataset"]["split"] == "train" and cfg["method_kwargs"]["augment"] == "none"
    seen = set(json.loads((outside / "run" / "patients.json").read_text())["patients"])
    tscl("report", "--tasks", "sim-risk", "--data", "cohort", "--run", "run", "--no-supervised", "--bootstrap", "20",
         "--fractions", "1", "--out", "report", "--quiet", cwd=outside)
    assert (outside / "report" / "summary.md").exists()
    # a run pretrained on every patient is refused by the probe, naming the overlap
    tscl("pretrain", "--data", "cohort", "--split", "all", "--method", "simclr", "--method-kwargs", "batch_size=16",
         *TINY, "--out", "all", cwd=outside)
    assert set(json.loads((outside / "all" / "patients.json").read_text())["patients"]) > seen
    tscl("embed", "--run", "all", "--out", "all.npz", "--quiet", cwd=outside)
    proc = tscl("probe", "--data", "cohort", "--embeddings", "all.npz", "--labels", "lvh", "--fractions", "1",
                "--bootstrap", "20", "--out", "p2", "--quiet", cwd=outside, ok=False)
    assert proc.returncode == 2 and "pretrained on" in proc.stderr and "test patients" in proc.stderr


def test_webdataset_export_then_streamed_pretraining(outside):
    tscl("simulate", "--out", "cohort", "--patients", "30", "--quiet", cwd=outside)
    tscl("export", "--format", "webdataset", "--data", "cohort", "--shard-size", "2MB", "--out", "wds", "--quiet",
         cwd=outside)
    assert len(list((outside / "wds").glob("shard-*.tar"))) >= 2 and (outside / "wds" / "index.parquet").exists()
    cfg = _pipeline(outside, ["--dataset", "webdataset", "--root", "wds"], ["--method", "pclr", "--method-kwargs",
                    "patients_per_batch=2"], "lvh,bbb")
    assert cfg["dataset"]["split"] == "train" and cfg["data_info"]["fs"] == 100.0


@needs_data
def test_ptbxl_as_physionet_publishes_it(outside):
    # the shared sample lists 2 ECGs whose records it lacks: leaving them out is an explicit choice, said on stderr
    proc = tscl("inspect", "--dataset", "ptbxl", "--root", DATA / "ptbxl", cwd=outside, ok=False)
    assert proc.returncode == 2 and "but not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    cfg = _pipeline(outside, ["--dataset", "ptbxl", "--root", DATA / "ptbxl", "--dataset-kwargs", "on_error=skip"],
                    ["--method", "simclr", "--method-kwargs", "batch_size=64"], "NORM,MI")
    assert cfg["dataset"]["split"] == "train"
    seen = json.loads((outside / "run" / "patients.json").read_text())
    assert seen["split"] == "train" and len(seen["patients"]) > 500
    tscl("task", "run", "ptbxl-superclass", "--data", DATA / "ptbxl", "--run", "run", "--no-supervised", "--bootstrap",
         "20", "--out", "task", "--quiet", cwd=outside)
    assert (outside / "task" / "ptbxl-superclass.json").exists()


@needs_data
def test_eegmat_epochs(outside):
    _pipeline(outside, ["--dataset", "eegmat", "--root", DATA / "physionet" / "eegmat", "--dataset-kwargs",
                        "epoch_s=10,fs=100"],
              ["--method", "polywindow", "--method-kwargs", "batch_size=16"], "task", pretrain_split="train+val")
    info = json.loads((outside / "run" / "config.json").read_text())["data_info"]
    assert info["fs"] == 100 and info["n_samples"] == 1000 and info["normalize"] == "zscore"


@needs_data
def test_any_edf_folder_with_a_metadata_table(outside):
    folder = outside / "edf"
    folder.mkdir()
    rows = ["file,patient_id,arithmetic"]
    for f in sorted((DATA / "physionet" / "eegmat").glob("*.edf")):
        (folder / f"rec{len(rows):02d}.edf").symlink_to(f)  # names that say nothing: the table does
        rows.append(f"rec{len(rows):02d}.edf,{f.stem.split('_')[0]},{int(f.stem.endswith('_2'))}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    _pipeline(outside, ["--dataset", "edf", "--root", folder, "--dataset-kwargs", "epoch_s=20"],
              ["--method", "simclr", "--method-kwargs", "batch_size=16"], "arithmetic", pretrain_split="train+val")
    patients = json.loads((outside / "run" / "patients.json").read_text())["patients"]
    assert all(p.startswith("Subject") for p in patients)


@needs_data
def test_cinc_records(outside):
    # 15 records of 15 patients: too few for a patient-disjoint probe, so the pipeline is checked on every row
    root = DATA / "physionet" / "challenge-2021"
    _pipeline(outside, ["--dataset", "cinc", "--root", root], ["--method", "simclr", "--method-kwargs", "batch_size=4"],
              "age", probe_extra=["--allow-test-overlap"], pretrain_split="all")


@needs_data
def test_annotated_rhythm_windows(outside):
    root = DATA / "physionet" / "cpsc2021"
    _pipeline(outside, ["--dataset", "annotated", "--root", root, "--dataset-kwargs", "kind=rhythm,default_rhythm=N"],
              ["--method", "simclr", "--method-kwargs", "batch_size=32"], "afib",
              probe_extra=["--allow-test-overlap", "--split", "random"], pretrain_split="all")


def test_bad_inputs_are_one_line_errors_before_any_data_loads(outside):
    tscl("simulate", "--out", "cohort", "--patients", "4", "--quiet", cwd=outside)
    cases = [
        (["--method", "pcrl"], "unknown method 'pcrl'"),
        (["--encoder", "resnet9"], "unknown encoder 'resnet9'"),
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "-1"], "--epochs"),
        (["--ckpt-every", "-5"], "--ckpt-every"),
        (["--encoder-kwargs", "widths=abc"], "widths='abc' should be a list"),
        (["--encoder-kwargs", "widths=[8,16"], "unbalanced brackets"),
        (["--encoder-kwargs", "widths"], "is not key=value"),
        (["--method-kwargs", "patients_per_batch=two"], "patients_per_batch='two' should be a int"),
        (["--augment", "crop:size=3"], "crop takes no parameter 'size'"),
        (["--augment", "wobble"], "unknown augmentation 'wobble'"),
        (["--lr", "inf"], "--lr"),
        (["--dataset", "ptbx"], "unknown dataset 'ptbx'"),
        (["--dataset-kwargs", "rate=100"], "takes no option 'rate'"),
        (["--encoder", "resnet2d18"], "encodes image data; this dataset is waveform data"),
    ]
    for extra, message in cases:
        args = ["pretrain", "--data", "cohort", "--out", "bad", *extra]
        if "--encoder" not in extra:
            args += ["--encoder", "cnn1d"]
        proc = tscl(*args, cwd=outside, ok=False)
        assert proc.returncode == 2, (extra, proc.stderr[-500:])
        assert message in proc.stderr, (extra, proc.stderr[-500:])
        assert "Traceback" not in proc.stderr, extra
        assert not (outside / "bad").exists(), extra  # nothing half-made
    proc = tscl("pretrain", "--data", "cohort", "--out", "bad", "--method", "simclr", "--augment", "crop:len=99999",
                "--encoder", "cnn1d", cwd=outside, ok=False)  # needs the data's length: after loading, before the run
    assert proc.returncode == 2 and "crop:len=99999 is longer than the recordings (1000 samples)" in proc.stderr
    assert not (outside / "bad").exists()
    proc = tscl("pretrain", "--data", "cohort", "--out", "bad", "--device", "cuda", cwd=outside, ok=False)
    if proc.returncode == 2:  # on a CPU host
        assert "CUDA is not available" in proc.stderr
    proc = tscl("probe", "--data", "cohort", "--embeddings", "x.npz", "--bootstrap", "-5", "--out", "p", cwd=outside,
                ok=False)
    assert proc.returncode == 2 and "--bootstrap" in proc.stderr
    proc = tscl("simulate", "--out", "c0", "--patients", "0", cwd=outside, ok=False)
    assert proc.returncode == 2 and "--patients" in proc.stderr and not (outside / "c0").exists()


def test_runs_are_never_overwritten_silently_and_remake_from_config(outside):
    tscl("simulate", "--out", "cohort", "--patients", "20", "--quiet", cwd=outside)
    args = ["pretrain", "--data", "cohort", "--method", "simclr", "--method-kwargs", "batch_size=16", *TINY]
    tscl(*args, "--out", "run", cwd=outside)
    first = (outside / "run" / "encoder.safetensors").read_bytes()
    proc = tscl(*args, "--out", "run", cwd=outside, ok=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    tscl(*args, "--out", "run", "--overwrite", cwd=outside)
    assert (outside / "run" / "encoder.safetensors").read_bytes() == first  # same seed, same run
    tscl("pretrain", "--config", "run/config.json", "--out", "again", "--quiet", cwd=outside)
    assert (outside / "again" / "encoder.safetensors").read_bytes() == first
    a = json.loads((outside / "run" / "config.json").read_text())
    b = json.loads((outside / "again" / "config.json").read_text())
    assert {k: v for k, v in a.items() if k != "out_dir"} == {k: v for k, v in b.items() if k != "out_dir"}


EHR_TINY = ["--encoder", "ehr_sequence", "--encoder-kwargs", "dim=16,depth=1,heads=2,max_len=64", "--epochs", "1",
            "--quiet"]


@needs_data
def test_mimic_iv_ehr_pretraining_and_the_admission_probe(outside):
    root = DATA / "meds_demo" / "mimic-iv-clinical-database-demo-2.2"
    tscl("pretrain", "--dataset", "mimic-iv", "--root", root, "--dataset-kwargs", "max_len=64", "--method", "pclr",
         "--method-kwargs", "patients_per_batch=16", *EHR_TINY, "--out", "run", cwd=outside)
    cfg = json.loads((outside / "run" / "config.json").read_text())
    assert cfg["data_info"]["modality"] == "ehr" and cfg["dataset"]["split"] == "train"
    tscl("embed", "--run", "run", "--out", "run.npz", "--quiet", cwd=outside)
    tscl("mimic-probe", "--root", root, "--run", "run", "--labels", "long_stay", "--bootstrap", "50", "--out", "probe",
         "--quiet", cwd=outside)
    report = json.loads((outside / "probe" / "mimic_probe.json").read_text())
    rows = report["labels"]["long_stay"]["rows"]
    assert {r["encoder"] for r in rows} >= {"random-init", "tabular"} and len(rows) == 3
    assert all(r["ci_low"] <= r["auroc"] <= r["ci_high"] for r in rows)


@needs_data
def test_meds_ehr_pretraining(outside):
    root = DATA / "meds_demo" / "meds_example"
    tscl("pretrain", "--dataset", "meds", "--root", root, "--split", "all", "--method", "simclr", "--method-kwargs",
         "batch_size=8", *EHR_TINY, "--out", "run", cwd=outside)
    tscl("embed", "--run", "run", "--out", "run.npz", "--quiet", cwd=outside)
    import numpy as np

    z = np.load(outside / "run.npz")
    assert z["features"].shape == (len(z["record_id"]), 16) and np.isfinite(z["features"]).all()


def test_images_micle_pretraining(outside):
    tscl("simulate", "--kind", "images", "--out", "films", "--patients", "40", "--quiet", cwd=outside)
    cfg = _pipeline(outside, ["--dataset", "images", "--root", "films"],
                    ["--method", "pclr", "--method-kwargs", "patients_per_batch=8"], "cardiomegaly",
                    model=["--encoder", "resnet2d18", "--encoder-kwargs", "width=0.0625,small_input=true", "--epochs",
                           "1", "--quiet"])
    assert cfg["data_info"]["modality"] == "image" and cfg["method_kwargs"] == {"patients_per_batch": 8}


def test_clip_two_towers_and_retrieval(outside):
    tscl("simulate", "--out", "cohort", "--patients", "40", "--quiet", cwd=outside)
    tscl("pretrain", "--data", "cohort", "--method", "clip", "--method-kwargs", "batch_size=16,log=lab_bnp", *TINY,
         "--out", "run", cwd=outside)
    for tower, width in (("waveform", 16), ("tabular", None)):
        tscl("embed", "--run", "run", "--tower", tower, "--out", f"{tower}.npz", "--quiet", cwd=outside)
        import numpy as np

        z = np.load(outside / f"{tower}.npz")
        assert np.isfinite(z["features"]).all() and (width is None or z["features"].shape[1] == width)
    tscl("retrieval", "--run", "run", "--k", "1,10", "--bootstrap", "50", "--out", "retrieval", "--quiet", cwd=outside)
    report = json.loads((outside / "retrieval" / "retrieval.json").read_text())
    assert report["n"] > 10 and 0 <= report["a_to_b@10"]["ci_low"] <= report["a_to_b@10"]["recall"] <= 1
    proc = tscl("retrieval", "--run", "run", "--split", "train", "--out", "r2", "--quiet", cwd=outside, ok=False)
    assert proc.returncode == 2 and "pretrain" in proc.stderr  # the training patients are refused
