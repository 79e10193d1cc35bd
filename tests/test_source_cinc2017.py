"""The cinc2017 source on folders laid out as the challenge's training2017/ (MAT v4 + .hea + a reference table).

The records are written here the way PhysioNet wrote them (scipy's MAT v4 writer gives the same
24-byte preamble as the challenge's files, ``16+24`` in the header). The real data set is read only
when ``TSCL_CINC2017_ROOT`` names a training2017/ folder (CI has none: that test skips, saying so).
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st

from test_cli_installed import REPO, TSCL, tscl  # the installed console script, run outside the repository
from tscl.cli import main
from tscl.datasets import open_dataset
from tscl.datasets.cinc2017 import FRACTIONS, stratified_hash_split
from tscl.loaders import LoaderError
from tscl.loaders.cinc2017 import (CINC2017_CLASSES, find_reference, read_cinc2017, read_reference,
                                    records_folder)

REAL = os.environ.get("TSCL_CINC2017_ROOT")
CLASSES = list(CINC2017_CLASSES)  # N A O ~


def write_record(folder: Path, name: str, signal_mv: np.ndarray, fs: int = 300) -> np.ndarray:
    """One challenge record: ``val`` int16 in a MAT v4 file (1000 adu/mV) and its WFDB header (CRLF, as published)."""
    digital = np.round(np.asarray(signal_mv) * 1000).astype(np.int16)[None]
    scipy.io.savemat(folder / f"{name}.mat", {"val": digital}, format="4")
    (folder / f"{name}.hea").write_bytes(f"{name} 1 {fs} {digital.shape[1]} 05:05:15 1/05/2000 \r\n{name}.mat 16+24 "
                                         f"1000/mV 16 0 {digital[0, 0]} 0 0 ECG \r\n".encode())
    return digital


def ecg(cls: str, seconds: float, rng, fs: int = 300) -> np.ndarray:
    """R peaks every ~0.8 s (irregular for AF, random noise for '~')."""
    t = np.arange(int(seconds * fs)) / fs
    if cls == "~":
        return rng.normal(0, 0.5, t.size)
    gaps = rng.uniform(0.4, 1.2, 200) if cls == "A" else np.full(200, 0.8 if cls == "N" else 0.55)
    peaks = np.cumsum(gaps)
    x = sum(np.exp(-((t - p) ** 2) / (2 * 0.012 ** 2)) for p in peaks[peaks < seconds + 1])
    return x + rng.normal(0, 0.02, t.size)


def make_training2017(folder: Path, per_class: int = 12, seed: int = 0, header: bool = True) -> dict:
    """A training2017/-like folder: ``per_class`` records of each class, 9-21 s long, and REFERENCE.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    table = {}
    for i in range(per_class * len(CLASSES)):
        name, cls = f"A{i + 1:05d}", CLASSES[i % len(CLASSES)]
        write_record(folder, name, ecg(cls, 9 + (i % 5) * 3, rng))
        table[name] = cls
    lines = (["data_source,class"] if header else []) + [f"{k},{v}" for k, v in table.items()]
    (folder / "REFERENCE.csv").write_text("\n".join(lines) + "\n")
    return table


def test_records_read_as_written_cut_padded_and_windowed(tmp_path):
    rng = np.random.default_rng(1)
    digital = write_record(tmp_path, "A00007", rng.normal(0, 1, 300 * 25))  # 25 s
    short = write_record(tmp_path, "A00008", rng.normal(0, 1, 300 * 9 + 17))  # 9.06 s
    val = scipy.io.loadmat(tmp_path / "A00007.mat")["val"]
    np.testing.assert_array_equal(val, digital)  # the MAT v4 file holds what the header describes
    (rec,) = read_cinc2017(tmp_path / "A00007.hea", "A", length_s=10)
    assert rec.channels == ("I",) and rec.fs == 300 and rec.signal.shape == (1, 3000) and rec.units == ("mV",)
    np.testing.assert_allclose(rec.signal[0], digital[0, :3000] / 1000, rtol=0, atol=1e-6)
    assert rec.labels == {"class": "A", "normal": 0, "af": 1, "other": 0, "noisy": 0, "duration_s": 25.0,
                          "window_start": 0, "valid_s": 10.0}
    assert rec.patient_id == rec.record_id == "A00007"
    (padded,) = read_cinc2017(tmp_path / "A00008.hea", "~", length_s=10)
    n = short.shape[1]
    np.testing.assert_allclose(padded.signal[0, :n], short[0] / 1000, atol=1e-6)
    assert not padded.signal[0, n:].any() and padded.labels["valid_s"] == round(n / 300, 4)
    windows = read_cinc2017(tmp_path / "A00007.hea", "A", length_s=10, windows="all")
    assert [w.record_id for w in windows] == ["A00007:0", "A00007:3000"]  # the last 5 s make no whole window
    np.testing.assert_allclose(windows[1].signal[0], digital[0, 3000:6000] / 1000, atol=1e-6)
    assert len(read_cinc2017(tmp_path / "A00008.hea", "~", length_s=10, windows="all")) == 1
    (slow,) = read_cinc2017(tmp_path / "A00007.hea", "A", fs=100, length_s=10)
    assert slow.fs == 100 and slow.signal.shape == (1, 1000)


def test_reference_tables_and_label_versions(tmp_path):
    (tmp_path / "REFERENCE-original.csv").write_text("A00001,N\nA00002,~\n")
    assert find_reference(tmp_path).name == "REFERENCE-original.csv"  # the only one: v1
    (tmp_path / "REFERENCE.csv").write_text("data_source,class\r\nA00001,N\r\nA00002,O\r\n")
    assert find_reference(tmp_path).name == "REFERENCE.csv"
    assert read_reference(tmp_path / "REFERENCE.csv") == {"A00001": "N", "A00002": "O"}  # header row, CRLF
    parent = tmp_path.parent / (tmp_path.name + "-parent")
    (parent / "training2017").mkdir(parents=True)
    for f in tmp_path.iterdir():
        shutil.copy(f, parent / "training2017")
    (parent / "REFERENCE-v3.csv").write_text("A00001,A\nA00002,O\n")  # beside the folder, as PhysioNet has it
    assert find_reference(parent).name == "REFERENCE-v3.csv"
    assert find_reference(parent, "v1").name == "REFERENCE-original.csv"
    assert find_reference(parent, "reference").name == "REFERENCE.csv"
    with pytest.raises(LoaderError, match="no reference table REFERENCE-v3.csv"):
        find_reference(tmp_path, "v3")


@pytest.mark.parametrize("text, problem", [
    ("A00001,N\nA00002,X\n", "line 2: class 'X' of record A00002 is not one of N, A, O, ~"),
    ("A00001,N\nA00001,A\n", "line 2: record A00001 is listed twice"),
    ("A00001,N,extra\n", "line 1: 'A00001,N,extra' is not 'record,class'"),
    ("data_source,class\n", "lists no record"),
    ("A00001,N\nrecord,class\n", "line 2: class 'class' of record record"),  # only the first line may be a header
])
def test_bad_reference_tables_are_named(tmp_path, text, problem):
    (tmp_path / "REFERENCE.csv").write_text(text)
    with pytest.raises(LoaderError, match=problem.replace("(", r"\(")) as err:
        read_reference(tmp_path / "REFERENCE.csv")
    assert "REFERENCE.csv" in str(err.value)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"A\d{5}", fullmatch=True), st.sampled_from(CLASSES)), min_size=1,
                max_size=80, unique_by=lambda t: t[0]), st.randoms(use_true_random=False))
def test_split_is_exactly_stratified_and_independent_of_order(pairs, rnd):
    ids, classes = [p[0] for p in pairs], [p[1] for p in pairs]
    split = dict(zip(ids, stratified_hash_split(ids, classes)))
    for cls in set(classes):
        members = [i for i, c in zip(ids, classes) if c == cls]
        sides = [split[i] for i in members]
        assert sides.count("test") == round(FRACTIONS["test"] * len(members))
        assert sides.count("val") == round(FRACTIONS["val"] * len(members))
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    again = dict(zip([p[0] for p in shuffled], stratified_hash_split(*zip(*shuffled))))
    assert again == split


def test_source_index_labels_and_splits(tmp_path):
    table = make_training2017(tmp_path / "training2017")
    ds = open_dataset("cinc2017", tmp_path, cache=tmp_path / "cache", progress=False, length_s=10, fs=100)
    idx = ds.index
    assert ds.info["channels"] == ["I"] and ds.info["fs"] == 100 and ds.info["n_samples"] == 1000
    assert idx["record_id"].to_list() == list(table) and (idx["patient_id"] == idx["record_id"]).all()
    assert dict(zip(idx["record_id"], idx["class"])) == table
    onehot = idx.select("normal", "af", "other", "noisy").to_numpy()
    assert (onehot.sum(axis=1) == 1).all()
    assert (onehot.argmax(axis=1) == [CLASSES.index(c) for c in idx["class"]]).all()
    assert dict(zip(idx["record_id"], idx["split"])) == dict(zip(table, stratified_hash_split(table, table.values())))
    assert ds.split("test").index.group_by("class").len()["len"].to_list() == [2] * 4  # round(0.2 * 12)
    whole = open_dataset("cinc2017", tmp_path / "training2017", progress=False, length_s=5, windows="all")
    per_record = whole.index.group_by("patient_id").agg(pl.col("split").n_unique().alias("sides"), pl.len())
    assert (per_record["sides"] == 1).all() and per_record["len"].min() >= 1 and whole.info["n_samples"] == 1500
    sides = dict(zip(idx["record_id"], idx["split"]))
    assert all(sides[p] == s for p, s in zip(whole.index["patient_id"], whole.index["split"]))


def test_records_on_disk_but_not_in_the_table_are_left_out_with_a_warning(tmp_path):
    make_training2017(tmp_path, per_class=2)
    write_record(tmp_path, "A09999", np.zeros(3000))
    with pytest.warns(UserWarning, match=r"1 record\(s\) .* are not in REFERENCE.csv .*first: A09999"):
        ds = open_dataset("cinc2017", tmp_path, progress=False, length_s=10)
    assert "A09999" not in ds.index["record_id"].to_list() and len(ds) == 8


def _bad_folder(tmp_path: Path, kind: str) -> tuple[Path, list, str]:
    root = tmp_path / kind
    make_training2017(root, per_class=2)
    options = []
    if kind == "no-reference":
        (root / "REFERENCE.csv").unlink()
        return root, options, "no reference table REFERENCE-v3.csv or REFERENCE.csv or REFERENCE-v1.csv"
    if kind == "unknown-class":
        (root / "REFERENCE.csv").write_text("A00001,N\nA00002,B\n")
        return root, options, "REFERENCE.csv: line 2: class 'B' of record A00002 is not one of N, A, O, ~"
    if kind == "listed-but-missing":
        (root / "A00003.mat").unlink()
        return root, options, "A00003.mat: record A00003 is listed in REFERENCE.csv but this file is missing"
    if kind == "truncated":
        data = (root / "A00004.mat").read_bytes()
        (root / "A00004.mat").write_bytes(data[: len(data) // 2])
        return root, options, "A00004.mat: truncated: 5388 data bytes"
    if kind == "v3-asked":
        return root, ["--dataset-kwargs", "labels=v3"], "no reference table REFERENCE-v3.csv (labels=v3)"
    if kind == "bad-length":
        return root, ["--dataset-kwargs", "length_s=-3"], "length_s must be a positive number, got -3"
    return root, ["--dataset-kwargs", "windows=some"], "windows must be one of ('first', 'all'), got 'some'"


@pytest.mark.parametrize("kind", ["no-reference", "unknown-class", "listed-but-missing", "truncated", "v3-asked",
                                  "bad-length", "bad-windows"])
def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys, kind):
    root, options, message = _bad_folder(tmp_path, kind)
    code = main(["pretrain", "--dataset", "cinc2017", "--root", str(root), *options, "--encoder", "cnn1d", "--epochs",
                 "1", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


@pytest.mark.skipif(TSCL is None, reason="the tscl console script is not installed (pip install -e .)")
def test_pretrain_embed_probe_through_the_installed_cli(tmp_path):
    assert REPO not in tmp_path.parents
    make_training2017(tmp_path / "data" / "training2017")
    data = ["--dataset", "cinc2017", "--root", "data", "--dataset-kwargs", "fs=100,length_s=10"]
    tscl("pretrain", *data, "--method", "simclr", "--method-kwargs", "batch_size=8", "--encoder", "cnn1d",
          "--encoder-kwargs", "widths=[8,16]", "--epochs", "1", "--quiet", "--out", "run", cwd=tmp_path)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data_info"]["channels"] == ["I"] and cfg["data_info"]["fs"] == 100
    seen = json.loads((tmp_path / "run" / "patients.json").read_text())["patients"]
    assert len(seen) == 48 - 2 * 4 - 4 * 1  # train only: 12 per class minus 2 test and 1 val
    tscl("embed", "--run", "run", "--out", "run.npz", "--quiet", cwd=tmp_path)
    tscl("embed", "--run", "run", "--random-init", "--out", "random.npz", "--quiet", cwd=tmp_path)
    tscl("probe", *data, "--embeddings", "run.npz", "random.npz", "--labels", "af,normal,other,noisy", "--fractions",
          "1", "--bootstrap", "20", "--reference", "random", "--out", "probe", "--quiet", cwd=tmp_path)
    report = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert {r["encoder"] for r in report["rows"]} == {"run", "random", "random-init"}  # random init by default
    assert report["split"]["test_patients"] == report["split"]["test_records"] == 8  # the test split: 2 per class


@pytest.mark.skipif(not REAL, reason="set TSCL_CINC2017_ROOT to a training2017/ folder to read the real data set "
                                     "(local verification; CI has no copy)")
def test_real_training2017():
    root = Path(REAL)
    reference = find_reference(root)
    table = read_reference(reference)
    ds = open_dataset("cinc2017", root, progress=False)
    idx = ds.index
    assert len(ds) == len(table) and dict(zip(idx["record_id"], idx["class"])) == table
    assert ds.info["n_samples"] == 9000 and ds.info["fs"] == 300
    for cls, n in pl.Series(list(table.values())).value_counts().iter_rows():
        sides = idx.filter(pl.col("class") == cls)["split"].value_counts()
        assert dict(sides.iter_rows())["test"] == round(0.2 * n)
    lengths = idx["duration_s"].to_numpy()
    assert 8.9 < lengths.min() and lengths.max() < 61.5
    val = scipy.io.loadmat(records_folder(root) / f"{idx['record_id'][0]}.mat")["val"][0]
    np.testing.assert_allclose(ds.fetch([0])[0, 0, : min(9000, val.size)], val[:9000] / 1000, atol=1e-6)
