"""The annotated source on MIT-BIH: de Chazal's inter-patient DS1/DS2, the leaky random-beat split, RECORDS, leads.

The database is written here with MIT-BIH's record names, leads (record 114's MLII is its second
signal, the paced 102 and 104 have none) and a RECORDS file beside an ``x_mitdb/`` folder it does
not list. The real database is read only when ``TSCL_MITDB_ROOT`` names it (CI has none: those
tests skip, saying so).
"""
import collections
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import wfdb

from test_cli_installed import REPO, TSCL, tscl  # the installed console script, run outside the repository
from tscl.cli import main
from tscl.datasets import open_dataset
from tscl.loaders import load_annotated
from tscl.loaders.annotations import AAMI_MAP, MITDB_DS1, MITDB_DS2, MITDB_PACED, MITDB_RECORDS, read_beats

REAL = os.environ.get("TSCL_MITDB_ROOT")
SYMBOLS = list("NNLAVNFRQejaSJE/f")  # every AAMI class in every record
FS = 360


def leads_of(name: str) -> list[str]:
    return ["V5", "MLII"] if name == "114" else ["V5", "V2"] if name in ("102", "104") else ["MLII", "V1"]


def write_record(folder: Path, name: str, seconds: float = 30.0, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = int(seconds * FS)
    beats = np.arange(int(0.1 * FS), n - 10, int(0.8 * FS))  # the first is too close to the start for a window
    signal = rng.normal(0, 0.05, (n, 2))
    for k, b in enumerate(beats):
        signal[max(0, b - 5):b + 5, 0] += 1.0 + 0.5 * (SYMBOLS[k % len(SYMBOLS)] in "VE")
    wfdb.wrsamp(name, fs=FS, units=["mV", "mV"], sig_name=leads_of(name), p_signal=signal, fmt=["212", "212"],
                adc_gain=[200.0, 200.0], baseline=[1024, 1024], write_dir=str(folder))
    wfdb.wrann(name, "atr", beats, symbol=[SYMBOLS[k % len(SYMBOLS)] for k in range(len(beats))],
               write_dir=str(folder))


@pytest.fixture(scope="module")
def mitdb(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mitdb")
    for i, name in enumerate(MITDB_RECORDS):
        write_record(folder, name, seed=i)
    (folder / "RECORDS").write_text("\n".join(MITDB_RECORDS) + "\n")
    (folder / "x_mitdb").mkdir()
    write_record(folder / "x_mitdb", "x_108", seed=99)  # an extra excerpt of record 108's tape: not a record
    return folder


def expected_windows(folder: Path, names) -> collections.Counter:
    """AAMI classes of the beats at least 0.25 s after the start and 0.45 s before the end, from the .atr files."""
    count = collections.Counter()
    for name in names:
        n = wfdb.rdheader(str(folder / name)).sig_len
        ann = wfdb.rdann(str(folder / name), "atr")
        count.update(AAMI_MAP[s] for s, b in zip(ann.symbol, ann.sample)
                     if s in AAMI_MAP and b - 90 >= 0 and b + 162 <= n)
    return count


def test_dechazal_inter_patient_split(mitdb):
    ds = open_dataset("annotated", mitdb, progress=False, split_rule="dechazal", channels="MLII")
    idx = ds.index
    assert ds.info["channels"] == ["MLII"] and ds.info["n_samples"] == 252
    by_side = dict(idx.group_by("split").agg(pl.col("record").unique().sort()).iter_rows())
    assert by_side["test"] == sorted(MITDB_DS2)  # DS2 exactly
    assert by_side["train"] == sorted(set(MITDB_DS1) - {"201"})  # 201 is 202's subject, on the test side
    assert set(by_side) == {"train", "test"}
    assert idx.filter(pl.col("record") == "202")["patient_id"].unique().to_list() == ["201"]
    assert not set(idx.filter(pl.col("split") == "train")["patient_id"]) & set(idx.filter(pl.col("split") == "test")
                                                                                ["patient_id"])
    assert "Q" not in set(idx["aami"]) and "aami_Q" not in idx.columns
    onehot = idx.select("aami_N", "aami_S", "aami_V", "aami_F").to_numpy()
    assert (onehot.sum(axis=1) == 1).all() and (np.array(list("NSVF"))[onehot.argmax(axis=1)] == idx["aami"].to_numpy()).all()
    for side, names in (("test", MITDB_DS2), ("train", set(MITDB_DS1) - {"201"})):
        got = collections.Counter(idx.filter(pl.col("split") == side)["aami"].to_list())
        want = expected_windows(mitdb, names)
        assert got == {c: n for c, n in want.items() if c != "Q"}, side
    # record 114 stores MLII second: the window is that lead, picked by name
    row = idx.with_row_index("i").filter(pl.col("record") == "114").row(0, named=True)
    full = wfdb.rdrecord(str(mitdb / "114")).p_signal[:, 1]
    np.testing.assert_allclose(ds.fetch([row["i"]])[0, 0], full[row["beat_sample"] - 90:row["beat_sample"] + 162],
                               atol=1e-5)


def test_paced_records_are_not_read_under_dechazal(mitdb, tmp_path):
    for f in mitdb.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path)
    for name in MITDB_PACED:
        (tmp_path / f"{name}.dat").write_bytes(b"\x00")  # unreadable: never opened
    ds = open_dataset("annotated", tmp_path, progress=False, split_rule="dechazal", channels="MLII")
    assert not set(ds.index["record"]) & set(MITDB_PACED) and ds.index["record"].n_unique() == 43


def test_random_beat_splits_put_every_window_on_its_own(mitdb):
    leaky = open_dataset("annotated", mitdb, progress=False, split_rule="dechazal-beats", channels="MLII")
    idx = leaky.index
    assert set(idx["record"]) == set(MITDB_DS1) | set(MITDB_DS2) and "Q" not in set(idx["aami"])
    assert (idx["patient_id"] == idx["record_id"]).all()  # a beat is its own "patient": the leak, on purpose
    assert set(idx.filter(pl.col("record") == "202")["subject"]) == {"201"}
    sides = idx.group_by("record").agg(pl.col("split").n_unique().alias("n"))
    assert (sides["n"] > 1).all()  # every record's beats fall on both sides
    share = idx["split"].value_counts().sort("split")
    assert abs(dict(share.iter_rows())["test"] / len(idx) - 0.15) < 0.05
    inter = open_dataset("annotated", mitdb, progress=False, split_rule="dechazal", channels="MLII")
    assert len(leaky) == len(inter) + idx.filter(pl.col("record") == "201").height  # the same beats, and 201's


def test_records_file_leads_and_bad_options(mitdb, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"records differ in leads \(3 lead sets: .* pass channels=NAME"):
        open_dataset("annotated", mitdb, progress=False)
    ds = open_dataset("annotated", mitdb, progress=False, channels="MLII", on_error="skip")  # 102, 104: no MLII
    assert set(ds.index["record"]) == set(MITDB_RECORDS) - {"102", "104"}  # x_mitdb/x_108 is not in RECORDS
    skipped = [Path(s["path"]).name for s in ds.cache.report["skipped"]]
    assert sorted(skipped) == ["102.hea", "104.hea"]
    assert set(ds.index["split"]) == {"train", "val", "test"}
    assert (ds.index.group_by("patient_id").agg(pl.col("split").n_unique())["split"] == 1).all()
    for f in mitdb.iterdir():
        if f.is_file() and not f.name.startswith("233."):
            shutil.copy(f, tmp_path)
    unlisted = tmp_path / "unlisted"
    shutil.copytree(tmp_path, unlisted)
    (unlisted / "RECORDS").write_text("\n".join(r for r in MITDB_RECORDS if r != "233") + "\n")
    cases = [(["--root", str(unlisted), "--dataset-kwargs", "split_rule=dechazal,channels=MLII"],
              f"{unlisted}/233.hea: split_rule=dechazal needs MIT-BIH's 44 DS1 and DS2 records; 1 are not in this "
              "folder (first: 233)"),
             (["--root", str(tmp_path), "--dataset-kwargs", "split_rule=dechazal,channels=MLII"],
              f"{tmp_path}/233.hea: header file not found"),  # listed in RECORDS, not on disk
             (["--root", str(mitdb), "--dataset-kwargs", "split_rule=random"], "split_rule must be one of patients, "
                                                                              "dechazal, beats, dechazal-beats"),
             (["--root", str(mitdb), "--dataset-kwargs", "kind=beat"], "kind must be one of beats, rhythm, got 'beat'"),
             (["--root", str(mitdb), "--dataset-kwargs", "before_s=-1"], "before_s must be a positive number")]
    for args, message in cases:
        code = main(["pretrain", "--dataset", "annotated", *args, "--encoder", "cnn1d", "--quiet", "--out",
                     str(tmp_path / "run")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, (args, err)
        assert not (tmp_path / "run").exists()


@pytest.mark.skipif(TSCL is None, reason="the tscl console script is not installed (pip install -e .)")
def test_inter_patient_pipeline_through_the_installed_cli(mitdb, tmp_path):
    assert REPO not in tmp_path.parents
    data = ["--dataset", "annotated", "--root", mitdb, "--dataset-kwargs", "split_rule=dechazal,channels=MLII"]
    tscl("pretrain", *data, "--method", "simclr", "--method-kwargs", "batch_size=64", "--encoder", "cnn1d",
          "--encoder-kwargs", "widths=[8,16]", "--epochs", "1", "--quiet", "--out", "run", cwd=tmp_path)
    seen = set(json.loads((tmp_path / "run" / "patients.json").read_text())["patients"])
    assert seen == set(MITDB_DS1) - {"201"}  # DS1's patients only
    tscl("embed", "--run", "run", "--out", "run.npz", "--quiet", cwd=tmp_path)
    tscl("embed", "--run", "run", "--random-init", "--out", "random.npz", "--quiet", cwd=tmp_path)
    tscl("probe", *data, "--embeddings", "run.npz", "random.npz", "--labels", "aami_N,aami_S,aami_V,aami_F",
          "--fractions", "1", "--bootstrap", "20", "--reference", "random", "--out", "probe", "--quiet", cwd=tmp_path)
    report = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert report["split"]["test_patients"] == 22 and report["split"]["train_patients"] == 21
    assert {r["encoder"] for r in report["rows"]} == {"run", "random", "random-init"}  # random init by default


needs_real = pytest.mark.skipif(not REAL, reason="set TSCL_MITDB_ROOT to the MIT-BIH Arrhythmia Database folder to read "
                                                 "it (local verification; CI has no copy)")


@needs_real
def test_real_mitdb_files_match_sha256sums():
    """Every file SHA256SUMS.txt lists and the folder holds matches; headers once their CR line endings are
    restored (copies that lost them still read: WFDB accepts either)."""
    root = Path(REAL)
    listed = dict(reversed(line.split(None, 1)) for line in (root / "SHA256SUMS.txt").read_text().splitlines())
    checked = 0
    for name, digest in listed.items():
        path = root / name.strip()
        if not path.exists():
            continue
        data = path.read_bytes()
        if path.suffix == ".hea" and b"\r\n" not in data:
            data = data.replace(b"\n", b"\r\n")
        assert hashlib.sha256(data).hexdigest() == digest, name
        checked += 1
    assert all((root / f"{r}.{ext}").exists() for r in MITDB_RECORDS for ext in ("hea", "dat", "atr"))
    assert checked >= 3 * len(MITDB_RECORDS)


@needs_real
def test_real_mitdb_all_48_records_and_de_chazal_counts(tmp_path):
    root = Path(REAL)
    assert (root / "RECORDS").read_text().split() == list(MITDB_RECORDS)
    cache = load_annotated([root / r for r in MITDB_RECORDS], "beats", tmp_path, progress=False)
    reports = {Path(r["source"]).stem: r for r in cache.report["records"]}
    assert sorted(reports) == list(MITDB_RECORDS)
    for name in MITDB_RECORDS:
        assert reports[name]["beats"] == read_beats(root / name).height
    assert len(cache) == sum(r["kept"] for r in reports.values())
    # de Chazal et al. 2004, Table: the AAMI beats of DS1 and DS2 (this mapping reproduces them exactly)
    table = {"DS1": {"N": 45866, "S": 944, "V": 3788, "F": 415, "Q": 8},
             "DS2": {"N": 44259, "S": 1837, "V": 3221, "F": 388, "Q": 7}}
    for ds_name, records in (("DS1", MITDB_DS1), ("DS2", MITDB_DS2)):
        counts = collections.Counter(c for r in records for c in read_beats(root / r)["aami"])
        assert counts == table[ds_name], ds_name
    ds = open_dataset("annotated", root, progress=False, split_rule="dechazal", channels="MLII", cache=tmp_path)
    test = collections.Counter(ds.split("test").index["aami"].to_list())
    edge = sum(reports[r]["dropped_edge"] for r in MITDB_DS2)
    assert sum(table["DS2"][c] for c in "NSVF") - edge <= sum(test.values()) <= sum(table["DS2"][c] for c in "NSVF")
