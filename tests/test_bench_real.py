"""Real-data benchmark in --quick mode on folders of the same layout holding other patients (symlinked subsets)."""
import json
from pathlib import Path

import numpy as np
import pytest

from tscl.benchmarks.bench_real import check_pretraining_rows, main, supcon_column
from tscl.probes import assert_no_patient_leakage  # noqa: F401  (the check the benchmark relies on)
from tscl.probes.protocol import PatientLeakageError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PTBXL, EEGMAT = DATA / "ptbxl", DATA / "physionet" / "eegmat"


def test_pretraining_rows_of_a_held_out_fold_or_patient_are_refused():
    pids = np.array(["a", "b", "c", "c", "d"])
    folds = np.array([1, 2, 9, 3, 10])
    check_pretraining_rows(pids, folds, [0, 1], (9, 10))
    with pytest.raises(AssertionError, match="held-out fold"):
        check_pretraining_rows(pids, folds, [0, 2], (9, 10))
    with pytest.raises(PatientLeakageError, match="'c'"):  # fold 3 row of a patient who also has a fold-9 ECG
        check_pretraining_rows(pids, folds, [0, 3], (9, 10))


def test_supcon_column_is_null_without_labels():
    import polars as pl

    idx = pl.DataFrame({"super:A": [1, 0, None], "super:B": [0, 1, None]})
    assert supcon_column(idx, ["super:A", "super:B"]).to_list() == ["10", "01", None]


def _ptbxl_subset(tmp_path: Path) -> Path:
    root = tmp_path / "ptbxl_other"
    (root / "labels").mkdir(parents=True)
    for f in (PTBXL / "labels").glob("*.csv"):
        (root / "labels" / f.name).symlink_to(f)
    heas = sorted((PTBXL / "records100").rglob("*_lr.hea"))[::5]
    for hea in heas:
        sub = root / hea.parent.relative_to(PTBXL)
        sub.mkdir(parents=True, exist_ok=True)
        for ext in (".hea", ".dat"):
            (sub / (hea.stem + ext)).symlink_to(hea.with_suffix(ext))
    return root


@pytest.mark.skipif(not (PTBXL / "labels").is_dir(), reason=f"shared PTB-XL records and label tables not at {PTBXL}")
def test_ptbxl_quick_on_a_records_and_labels_folder(tmp_path):
    root = _ptbxl_subset(tmp_path)
    out = tmp_path / "out"
    assert main(["--dataset", "ptbxl", "--root", str(root), "--out", str(out), "--cache", str(tmp_path / "c"),
                 "--quick", "--methods", "simclr", "--tasks", "superdiagnostic,rhythm"]) == 0
    res = json.loads((out / "ptbxl.json").read_text())
    from tscl.loaders.ptbxl import ptbxl_records

    table, _ = ptbxl_records(root)
    present = {int(p.name[:5]) for p in (root / "records100").rglob("*_lr.hea")}
    listed = table.filter(table["ecg_id"].is_in(list(present)))
    assert res["pretrain_rows"] == int((listed["strat_fold"] <= 8).sum())
    sup = res["tasks"]["superdiagnostic"]
    names = {r["encoder"] for r in sup["rows"]}
    assert {"random-init", "simclr", "supervised (from scratch)", "fine-tune (simclr)"} <= names
    assert all(0 <= r["auroc"] <= 1 for r in sup["rows"])
    assert sup["split"]["test_records"] == int(((listed["strat_fold"] == 10) & (listed["has:super"] == 1)).sum())
    assert (out / "ptbxl.md").read_text().count("| random-init |") == 2
    assert (out / "ptbxl_superdiagnostic.png").exists()


@pytest.mark.skipif(not EEGMAT.is_dir(), reason=f"shared EEGMAT recordings not at {EEGMAT}")
def test_eegmat_quick_on_a_folder_of_subject_files(tmp_path):
    root = tmp_path / "eegmat_other"
    root.mkdir()
    subjects = sorted({p.name[:9] for p in EEGMAT.glob("Subject*_1.edf")} & {p.name[:9] for p in EEGMAT.glob("Subject*_2.edf")})[-4:]
    for s in subjects:
        for k in (1, 2):
            (root / f"{s}_{k}.edf").symlink_to(EEGMAT / f"{s}_{k}.edf")
    out = tmp_path / "out"
    assert main(["--dataset", "eegmat", "--root", str(root), "--out", str(out), "--cache", str(tmp_path / "c"),
                 "--quick", "--methods", "simclr", "--encoders", "cnn1d", "--epoch-s", "30", "--fs", "50"]) == 0
    res = json.loads((out / "eegmat.json").read_text())
    for level, n in (("epoch", None), ("recording", 2 * len(subjects))):
        p = res["levels"][level]["cnn1d"]
        assert p["groups"] == len(subjects) and (n is None or p["records"] == n)
        assert {r["encoder"] for r in p["rows"]} == {"random-init", "supervised", "simclr"}
    assert "Subject" in res["notes"][1]
