"""Data and cache faults: nothing lost, nothing merged, nothing silently wrong (docs/faults.md).

Each test reproduces one fault on tiny synthetic data (or a copy of a small shared sample)
and checks the loader refuses it, reports it, or repairs it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import wfdb

from tscl.loaders import LoaderError, load_wfdb_cohort, read_metadata

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHYSIONET = DATA / "physionet"
needs_physionet = pytest.mark.skipif(not PHYSIONET.exists(), reason=f"shared PhysioNet sample not found at {PHYSIONET}")

LEADS = ["I", "II"]


def write_record(folder: Path, name: str, n: int = 400, fs: int = 100, leads=LEADS, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sig = np.random.default_rng(seed).normal(size=(n, len(leads)))
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), p_signal=sig, fmt=["16"] * len(leads),
                write_dir=str(folder))


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- data identity: ids are text from the first byte read ---------------------------------------

def test_ids_are_text_leading_zeros_and_decimals_kept(tmp_path):
    meta = write_csv(tmp_path / "metadata.csv",
                     "patient_id,record_id,y\n007,001,0\n7,1,1\n3,a,0\n3.0,b,1\n")
    table = read_metadata(meta)
    assert table["patient_id"].to_list() == ["007", "7", "3", "3.0"]
    assert table["record_id"].to_list() == ["001", "1", "a", "b"]
    assert table["patient_id"].n_unique() == 4  # four patients, none merged


def test_ids_are_text_through_the_cohort_cache(tmp_path):
    root = tmp_path / "cohort"
    for i, name in enumerate(("001", "1", "a", "b")):
        write_record(root, name, seed=i)
    write_csv(root / "metadata.csv", "patient_id,record_id,y\n007,001,0\n7,1,1\n3,a,0\n3.0,b,1\n")
    cache = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    assert cache.index["patient_id"].to_list() == ["007", "7", "3", "3.0"]
    assert cache.index["record_id"].to_list() == ["001", "1", "a", "b"]
    assert cache.index["patient_id"].dtype == pl.Utf8


def test_column_that_turns_to_text_late_still_loads(tmp_path):
    rows = "".join(f"{i},r{i},{i}\n" for i in range(150))
    meta = write_csv(tmp_path / "metadata.csv", "patient_id,record_id,site\n" + rows + "X120,r150,X120\n")
    table = read_metadata(meta)
    assert table.height == 151 and table["patient_id"][-1] == "X120" and table["site"][-1] == "X120"
    assert table["patient_id"][0] == "0"


def test_duplicate_record_ids_are_compared_as_text(tmp_path):
    meta = write_csv(tmp_path / "metadata.csv", "patient_id,record_id\np,001\np,001\n")
    with pytest.raises(LoaderError, match=r"metadata\.csv.*duplicated record_id.*'001'"):
        read_metadata(meta)


def test_image_table_ids_and_late_text_labels(tmp_path):
    from tscl.loaders.images import load_image_table

    rows = "".join(f"img{i}.npy,{i:03d},{i}\n" for i in range(10050))
    write_csv(tmp_path / "labels.csv", "path,patient_id,site\nimg.npy,7,1\n" + rows + "imgx.npy,X120,X120\n")
    table = load_image_table(tmp_path, check_files=False)
    assert table.index["patient_id"][:3].to_list() == ["7", "000", "001"]
    assert table.index["site"][-1] == "X120"


def test_mimic_subject_ids_that_are_not_canonical_integers_refused(tmp_path):
    import gzip

    from tscl.loaders.mimic_meds import mimic_iv_to_meds

    (tmp_path / "hosp").mkdir()
    with gzip.open(tmp_path / "hosp" / "patients.csv.gz", "wt") as f:
        f.write("subject_id,gender,anchor_age,anchor_year,dod\n007,F,50,2100,\n7,M,60,2100,\n")
    with pytest.raises(LoaderError, match=r"patients\.csv\.gz.*subject_id.*'007'"):
        mimic_iv_to_meds(tmp_path, tmp_path / "out", tables=("hosp/patients",))
