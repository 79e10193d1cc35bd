"""Generated faults for the EDF sources (``edf``, ``eegmat``) through the installed CLI.

Small EDF+ files are written with pyedflib; a seeded generator derives mutated copies (header
record counts that disagree with the file, cut and grown files, EDF+D, garbled fields, renamed
channels and files, one name in two folders, metadata rows that are missing, repeated, re-spaced or
absent). Correct reads are compared with ``pyedflib.EdfReader`` reading the mutated files directly.
A property test holds the size check to every declared record count.
"""
from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

import numpy as np
import pyedflib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mutation_kit import Case, Cases, needs_cli, outside, run_cases, same_items

FS = 100
EEG_1020 = ("Fp1", "Fp2", "F3", "F4", "F7", "F8", "T3", "T4", "C3", "C4", "T5", "T6", "P3", "P4", "O1", "O2", "Fz",
            "Cz", "Pz")
THREE = ("Fp1", "Fp2", "Cz")
EDF_OPTIONS = 'channels=["Fp1","Fp2","Cz"],epoch_s=2,normalize=none'


def write_edf(path: Path, channels=THREE, seconds: int = 10, fs: int = FS, seed: int = 0, prefix: str = "EEG ",
              physical: float = 500.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with pyedflib.EdfWriter(str(path), len(channels), file_type=pyedflib.FILETYPE_EDFPLUS) as w:
        w.setSignalHeaders([{"label": f"{prefix}{c}", "dimension": "uV", "sample_frequency": fs,
                             "physical_max": physical, "physical_min": -physical, "digital_max": 32767,
                             "digital_min": -32768} for c in channels])
        w.writeSamples([np.clip(rng.normal(size=seconds * fs) * 40, -physical, physical) for _ in channels])


def set_header(path: Path, start: int, stop: int, text: str) -> None:
    data = bytearray(path.read_bytes())
    data[start:stop] = text.ljust(stop - start).encode()
    path.write_bytes(bytes(data))


def edf_signals(path: Path, channels) -> np.ndarray:
    """The file's channels, physical units, as pyedflib reads them (names matched without their prefix)."""
    with pyedflib.EdfReader(str(path)) as f:
        labels = [lb.replace("EEG ", "").split("-")[0].upper() for lb in f.getSignalLabels()]
        rows = [f.readSignal(labels.index(c.upper())) for c in channels]
    return np.stack(rows).astype(np.float32)


def epochs_of(path: Path, record: str, patient: str, channels, size: int) -> dict:
    sig = edf_signals(path, channels)
    return {f"{record}:{s}": (patient, sig[:, s:s + size]) for s in range(0, sig.shape[1] - size + 1, size)}


# ---- edf: any folder of EDF files, optionally with metadata.csv ---------------------------------------

def edf_expected(root: Path) -> dict:
    """Epochs of 2 s of every listed (or, without a table, every) file, from pyedflib; ids as docs/datasets.md says."""
    meta = root / "metadata.csv"
    if meta.exists():
        with open(meta, newline="") as f:
            rows = list(csv.DictReader(f))
        listed = {(root / r["file"].strip()): r["patient_id"].strip() for r in rows}
        files = {p: pid for p, pid in listed.items() if p.is_file()}
    else:
        files = {p: p.stem for p in sorted(root.rglob("*.edf"))}
    out = {}
    for path, patient in files.items():
        out.update(epochs_of(path, path.relative_to(root).with_suffix("").as_posix(), patient, THREE, 2 * FS))
    return out


@pytest.fixture(scope="module")
def edf_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("edf") / "base"
    for i, name in enumerate(("night1", "night2", "day1")):
        write_edf(root / f"{name}.edf", seed=i, seconds=10 + i)
    return root


def _table(root: Path, rows: list[str]) -> None:
    (root / "metadata.csv").write_text("file,patient_id,arousal\n" + "\n".join(rows) + "\n")


def edf_cases(base: Path, where: Path, rng: random.Random) -> list[Case]:
    case = Cases(base, where, lambda root, r: same_items(r, edf_expected(root), atol=1e-3), EDF_OPTIONS)
    name = rng.choice(["night1", "night2", "day1"])
    f = f"{name}.edf"
    n_records = lambda r: int((r / f).read_bytes()[236:244])  # noqa: E731
    case("baseline", "correct")
    case("header declares fewer data records", "refuse", f,
         edit=lambda r: set_header(r / f, 236, 244, str(n_records(r) - rng.randrange(1, 4))))
    case("header declares more data records", "refuse", f,
         edit=lambda r: set_header(r / f, 236, 244, str(n_records(r) + rng.randrange(1, 4))))
    case("header declares -1 data records", "refuse", f, edit=lambda r: set_header(r / f, 236, 244, "-1"))
    case("file cut inside a record", "refuse", f,
         edit=lambda r: (r / f).write_bytes((r / f).read_bytes()[:-rng.randrange(1, 200)]))
    case("bytes appended", "refuse", f, edit=lambda r: (r / f).write_bytes((r / f).read_bytes() + b"\0" * 10))
    case("number of signals garbled", "refuse", f, edit=lambda r: set_header(r / f, 252, 256, "x3"))
    case("marked discontinuous (EDF+D)", "refuse", f, edit=lambda r: set_header(r / f, 192, 197, "EDF+D"))
    case("a channel missing", "refuse", f, edit=lambda r: write_edf(r / f, channels=("Fp1", "Cz"), seed=9))
    case("channel labels in another spelling", "correct",
         edit=lambda r: write_edf(r / f, channels=("FP1-REF", "FP2-REF", "CZ-REF"), seed=9, prefix=""))
    case("re-encoded with another physical range", "correct",
         edit=lambda r: write_edf(r / f, seed=3, seconds=12, physical=200.0))
    case("another sampling rate", "refuse", ".edf", edit=lambda r: write_edf(r / f, fs=128, seed=4))
    case("a folder named like an EDF file", "refuse", "x.edf", edit=lambda r: (r / "x.edf").mkdir())
    case("one file name in two folders", "refuse", f,
         edit=lambda r: (r / "site2").mkdir() or shutil.copy(r / f, r / "site2" / f))
    case("one file name in two folders, told apart by metadata.csv", "correct",
         edit=lambda r: (r / "site2").mkdir() or shutil.copy(r / f, r / "site2" / f) and _table(
             r, ["night1.edf,s1,0", "night2.edf,s1,1", "day1.edf,s1,0", f"site2/{f},s2,1"]))
    case("metadata.csv naming a file two folders hold", "refuse", "metadata.csv", edit=_one_name_in_two_sites(f))
    case("metadata.csv lists an absent file", "refuse", "gone.edf",
         edit=lambda r: _table(r, ["night1.edf,a,0", "night2.edf,a,1", "day1.edf,b,0", "gone.edf,b,1"]))
    case("metadata.csv lists an absent file, on_error=skip", "correct", note="1 left out",
         options=EDF_OPTIONS + ",on_error=skip",
         edit=lambda r: _table(r, ["night1.edf,a,0", "night2.edf,a,1", "day1.edf,b,0", "gone.edf,b,1"]))
    case("metadata.csv patient ids with surrounding spaces", "correct",
         edit=lambda r: _table(r, ["night1.edf, a,0", "night2.edf,a ,1", "day1.edf,b,0"]))
    case("metadata.csv ids differing only inside", "refuse", "metadata.csv",
         edit=lambda r: _table(r, ["night1.edf,a b,0", "night2.edf,ab,1", "day1.edf,b,0"]))
    case("metadata.csv lists one file twice", "refuse", "metadata.csv",
         edit=lambda r: _table(r, ["night1.edf,a,0", "night2.edf,a,1", "day1.edf,b,0", f"{f},c,1"]))
    case("a file on disk that metadata.csv does not list", "correct", note="listed in no table",
         edit=lambda r: _table(r, ["night1.edf,a,0", "night2.edf,a,1", "day1.edf,b,0"]) or write_edf(
             r / "extra.edf", seed=8))
    return case.cases


def _one_name_in_two_sites(f: str):
    def edit(root: Path) -> None:
        for site in ("site1", "site2"):
            (root / site).mkdir()
            shutil.copy(root / f, root / site / f)
        (root / f).unlink()
        _table(root, [f"{f},s1,0"])
    return edit


@needs_cli
def test_edf_mutations(edf_base, tmp_path):
    cwd = outside(tmp_path)
    outcomes = run_cases("edf", edf_cases(edf_base, cwd, random.Random(3)), cwd)
    assert outcomes["header declares fewer data records"] == "refused"


# ---- eegmat: SubjectNN_1.edf / SubjectNN_2.edf, 19 channels --------------------------------------------

EEGMAT_OPTIONS = "epoch_s=4,normalize=none"


@pytest.fixture(scope="module")
def eegmat_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("eegmat") / "base"
    for i, name in enumerate(("Subject00_1", "Subject00_2", "Subject01_1")):
        write_edf(root / f"{name}.edf", channels=EEG_1020, seconds=12, seed=i)
    return root


def eegmat_expected(root: Path) -> dict:
    out = {}
    for path in sorted(root.glob("*.edf")):
        out.update(epochs_of(path, path.stem, path.stem.split("_")[0], EEG_1020, 4 * FS))
    return out


def eegmat_cases(base: Path, where: Path, rng: random.Random) -> list[Case]:
    case = Cases(base, where, lambda root, r: same_items(r, _listed(eegmat_expected(root), r), atol=1e-3),
                 EEGMAT_OPTIONS)
    name = rng.choice(["Subject00_1", "Subject00_2", "Subject01_1"])
    f = f"{name}.edf"
    case("baseline", "correct")
    case("a file not named SubjectNN_K", "refuse", "Subject1_3.edf",
         edit=lambda r: shutil.copy(r / f, r / "Subject1_3.edf"))
    case("a file not named SubjectNN_K, on_error=skip", "correct", note="1 left out",
         options=EEGMAT_OPTIONS + ",on_error=skip", edit=lambda r: shutil.copy(r / f, r / "Subject1_3.edf"))
    case("header declares fewer data records", "refuse", f, edit=lambda r: set_header(r / f, 236, 244, "9"))
    case("a channel missing", "refuse", f, edit=lambda r: write_edf(r / f, channels=EEG_1020[:-1], seconds=12))
    case("file cut short", "refuse", f, edit=lambda r: (r / f).write_bytes((r / f).read_bytes()[:5000]))
    case("an EDF file in a subfolder", "correct", note="listed in no table",
         edit=lambda r: (r / "more").mkdir() or shutil.copy(r / f, r / "more" / "Subject05_1.edf"))
    case("another sampling rate", "refuse", ".edf", edit=lambda r: write_edf(r / f, channels=EEG_1020, fs=128,
                                                                                seconds=12))
    return case.cases


def _listed(expected: dict, result: dict) -> dict:
    gone = {Path(s["path"]).stem for s in result["notes"].get("skipped", [])}
    return {k: v for k, v in expected.items() if k.split(":")[0] not in gone}


@needs_cli
def test_eegmat_mutations(eegmat_base, tmp_path):
    cwd = outside(tmp_path)
    run_cases("eegmat", eegmat_cases(eegmat_base, cwd, random.Random(4)), cwd)


# ---- the size check, for every declared count -------------------------------------------------------------

@pytest.fixture(scope="module")
def one_edf(tmp_path_factory):
    path = tmp_path_factory.mktemp("edf1") / "one.edf"
    write_edf(path, seconds=6)
    return path


@settings(max_examples=60, deadline=None)
@given(declared=st.integers(min_value=-1, max_value=10**7), cut=st.integers(min_value=0, max_value=3000))
def test_edf_size_check_accepts_only_the_true_record_count(one_edf, tmp_path_factory, declared, cut):
    from tscl.loaders import LoaderError
    from tscl.loaders.edf import check_edf_layout

    data = bytearray(one_edf.read_bytes())
    true_count = int(data[236:244])
    data[236:244] = str(declared).ljust(8).encode()
    path = tmp_path_factory.mktemp("e") / "m.edf"
    path.write_bytes(bytes(data[:len(data) - cut]))
    if declared == true_count and cut == 0:
        assert check_edf_layout(path) == true_count
    else:
        with pytest.raises(LoaderError, match=r"m\.edf: "):
            check_edf_layout(path)
