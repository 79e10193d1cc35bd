"""Generated faults for the WFDB sources (``wfdb``, ``ptbxl``, ``cinc``, ``annotated``) through the installed CLI.

Each source gets a small valid dataset written with ``wfdb.wrsamp`` / ``wfdb.wrann``, and a seeded
generator derives mutated copies (tests/mutation_kit.py says what counts as a refusal and as a
correct read). Correct reads are compared with ``wfdb.rdrecord`` / ``wfdb.rdann`` and Python's
``csv`` module reading the mutated files directly.
"""
from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb

from mutation_kit import (Case, Cases, copy_of, dir_in_place, needs_cli, one_refusal, outside, run_cases, same_items,
                          unreadable)

pytestmark = needs_cli
LEADS2 = ["I", "II"]
LEADS12 = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def write_record(folder: Path, name: str, *, n: int = 250, fs: float = 100, leads=LEADS2, seed: int = 0,
                 fmt: str = "16", comments=None, signal=None) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    sig = signal if signal is not None else np.random.default_rng(seed).normal(size=(n, len(leads)))
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), p_signal=sig, fmt=[fmt] * len(leads),
                comments=comments, write_dir=str(folder))
    return sig


def read_table(path: Path) -> list[dict]:
    """The table as Python's csv module reads it (BOM removed), ids without surrounding whitespace."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for c in ("patient_id", "record_id", "path"):
            if c in r:
                r[c] = r[c].strip()
    return rows


def signal_of(record: Path) -> np.ndarray:
    return wfdb.rdrecord(str(record)).p_signal.T.astype(np.float32)


# ---- wfdb: a folder of records + a metadata table ------------------------------------------------

def wfdb_expected(root: Path, table: str = "metadata.csv") -> dict:
    rows = read_table(root / table)
    records = {r["record_id"]: root / r.get("path", r["record_id"]) for r in rows}
    return {rid: (r["patient_id"], signal_of(records[rid])) for rid, r in zip(records, rows)
            if records[rid].with_suffix(".hea").exists()}


@pytest.fixture(scope="module")
def wfdb_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("wfdb") / "base"
    rows = ["patient_id,record_id,path,visit_time,label"]
    for i in range(6):
        write_record(root / "rec", f"r{i}", seed=i)
        rows.append(f"p{i // 2},r{i},rec/r{i},2020-01-0{i + 1} 10:00:00,{i % 2}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def _edit_table(root: Path, fn, name: str = "metadata.csv") -> None:
    lines = (root / name).read_text().splitlines()
    (root / name).write_text("\n".join(fn(lines)) + "\n")


def _patient(line: str, value: str) -> str:
    return ",".join([value, *line.split(",")[1:]])


def wfdb_cases(base: Path, where: Path, rng: random.Random) -> list[Case]:
    case = Cases(base, where, lambda root, r: same_items(r, _without_skipped(wfdb_expected(root), r)))
    cases = case.cases
    k = rng.randrange(6)  # the record each mutation hits
    case("baseline", "correct")
    case("rows reordered", "correct", edit=lambda r: _edit_table(r, lambda ls: [ls[0], *rng.sample(ls[1:], 6)]))
    case("CRLF line ends and a BOM", "correct",
         edit=lambda r: (r / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + (r / "metadata.csv").read_bytes()
                                                         .replace(b"\n", b"\r\n")))
    case("trailing space on a patient id", "correct",
         edit=lambda r: _edit_table(r, lambda ls: [*ls[:k + 1], _patient(ls[k + 1], f"p{k // 2} "), *ls[k + 2:]]))
    case("ids differing only in inner whitespace", "refuse", "metadata.csv",
         edit=lambda r: _edit_table(r, lambda ls: [*ls[:k + 1], _patient(ls[k + 1], f"p {k // 2}"), *ls[k + 2:]]))
    case("leading zeros in numeric patient ids", "correct",
         edit=lambda r: _edit_table(r, lambda ls: [ls[0], *[_patient(ln, f"00{i // 2}") for i, ln in enumerate(ls[1:])]]))
    case("a row duplicated", "refuse", "metadata.csv", edit=lambda r: _edit_table(r, lambda ls: [*ls, ls[k + 1]]))
    case("two rows naming one record", "refuse", "metadata.csv",
         edit=lambda r: _edit_table(r, lambda ls: [*ls, ls[k + 1].replace(f",r{k},", ",r99,", 1)]))
    case("table cut at a row boundary", "correct", edit=lambda r: _edit_table(r, lambda ls: ls[:4]))
    case("a listed record's header removed", "refuse", f"r{k}.hea", edit=lambda r: (r / f"rec/r{k}.hea").unlink())
    case("a listed record's header removed, on_error=skip", "correct", options="on_error=skip", note="1 left out",
         edit=lambda r: (r / f"rec/r{k}.hea").unlink())
    case("a listed record's signal file removed", "refuse", f"r{k}.dat", edit=lambda r: (r / f"rec/r{k}.dat").unlink())
    case("signal file cut short", "refuse", f"r{k}.dat",
         edit=lambda r: (r / f"rec/r{k}.dat").write_bytes((r / f"rec/r{k}.dat").read_bytes()[:-rng.randrange(1, 300)]))
    case("signal file grown", "refuse", f"r{k}.dat",
         edit=lambda r: (r / f"rec/r{k}.dat").write_bytes((r / f"rec/r{k}.dat").read_bytes() + b"\0" * 4))
    case("sampling rate in the header garbled", "refuse", f"r{k}.hea",
         edit=lambda r: (r / f"rec/r{k}.hea").write_text((r / f"rec/r{k}.hea").read_text().replace(" 100 ", " x1 ", 1)))
    for fmt in ("212", "24", "32", "80"):  # re-encoded in another storage format: the same mV, to the format's step
        case(f"record re-encoded as format {fmt}", "correct",
             edit=lambda r, fmt=fmt: write_record(r / "rec", f"r{k}", seed=k, fmt=fmt))
    case("a record at another sampling rate", "refuse", f"r{k}.hea",
         edit=lambda r: write_record(r / "rec", f"r{k}", seed=k, fs=250))
    case("a record with another lead set", "refuse", f"r{k}.hea",
         edit=lambda r: write_record(r / "rec", f"r{k}", seed=k, leads=["I", "V1"]))
    case("a record holding NaN samples", "refuse", f"r{k}.hea",
         edit=lambda r: write_record(r / "rec", f"r{k}", signal=np.where(np.arange(250)[:, None] == 7, np.nan,
                                                                          np.ones((250, 2)))))
    case("two sites, one file name", "correct", edit=_two_sites)
    case("signal file replaced by a folder", "refuse", f"r{k}.dat", edit=lambda r: dir_in_place(r / f"rec/r{k}.dat"))
    parquet = case("metadata as parquet with integer ids", "correct", options="metadata=", edit=_parquet_table)
    parquet.options = f"metadata={parquet.root / 'metadata.parquet'}"
    perm = copy_of(base, where, "no_read_permission")
    if unreadable(perm / f"rec/r{k}.dat", "wfdb"):
        cases.append(Case("signal file without read permission", perm, "refuse", f"r{k}.dat"))
    return cases


def _without_skipped(expected: dict, result: dict) -> dict:
    gone = {Path(s["path"]).stem for s in result["notes"].get("skipped", [])}
    return {k: v for k, v in expected.items() if k.split("/")[-1] not in gone}


def _two_sites(root: Path) -> None:
    """siteA/r0 and siteB/r0: two recordings of one file name in two folders, told apart by the table."""
    for site, seed in (("siteA", 10), ("siteB", 11)):
        write_record(root / site, "r0", seed=seed)
    _edit_table(root, lambda ls: [*ls, "p7,siteA-r0,siteA/r0,2020-02-01 10:00:00,0",
                                  "p8,siteB-r0,siteB/r0,2020-02-01 10:00:00,1"])


def _parquet_table(root: Path) -> None:
    """The table as parquet, patient ids as integers (their text is the integer's); metadata.csv kept for the check."""
    import polars as pl

    rows = read_table(root / "metadata.csv")
    pl.DataFrame({"patient_id": [int(r["patient_id"][1:]) for r in rows], "record_id": [r["record_id"] for r in rows],
                  "path": [r["path"] for r in rows], "label": [int(r["label"]) for r in rows]}
                 ).write_parquet(root / "metadata.parquet")
    _edit_table(root, lambda ls: [ls[0], *[_patient(ln, ln.split(",")[0][1:]) for ln in ls[1:]]])


def test_wfdb_mutations(wfdb_base, tmp_path):
    cwd = outside(tmp_path)
    cases = wfdb_cases(wfdb_base, cwd, random.Random(23))
    outcomes = run_cases("wfdb", cases, cwd)
    assert outcomes["baseline"] == "correct" and outcomes["ids differing only in inner whitespace"] == "refused"
    one_refusal(cwd, "wfdb", cases[[c.name for c in cases].index("a row duplicated")].root, "metadata.csv")


# ---- ptbxl: records100/ + ptbxl_database.csv + scp_statements.csv --------------------------------------

_SCP = ("description,diagnostic,form,rhythm,diagnostic_class,diagnostic_subclass\n"
        "NORM,normal ECG,1,,,NORM,NORM\nIMI,inferior MI,1,,,MI,IMI\nSR,sinus rhythm,,,1,,\n")


@pytest.fixture(scope="module")
def ptbxl_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptbxl") / "base"
    rows = ["ecg_id,patient_id,age,sex,recording_date,scp_codes,strat_fold,filename_lr,filename_hr"]
    for i in range(1, 9):
        write_record(root / "records100" / "00000", f"{i:05d}_lr", n=120, leads=LEADS12, seed=i)
        codes = "{'NORM': 100.0, 'SR': 0.0}" if i % 2 else "{'IMI': 80.0}"
        rows.append(f'{i},{1000 + i // 2}.0,{50 + i},{i % 2},2000-01-0{i} 09:00:00,"{codes}",{[1, 5, 9, 10][i % 4]},'
                    f"records100/00000/{i:05d}_lr,records500/00000/{i:05d}_hr")
    (root / "ptbxl_database.csv").write_text("\n".join(rows) + "\n")
    (root / "scp_statements.csv").write_text("," + _SCP)
    return root


def _set_field(path: Path, row: int, column: str, value: str) -> None:
    """Set one cell (data row ``row``, 1-based) of a CSV file, quoting as the csv module does."""
    import io

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows[row][rows[0].index(column)] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    path.write_text(out.getvalue())


def ptbxl_expected(root: Path) -> dict:
    rows = read_table(root / "ptbxl_database.csv")
    out = {}
    for r in rows:
        record = root / r["filename_lr"]
        if record.with_suffix(".hea").exists():
            out[str(int(r["ecg_id"]))] = (r["patient_id"].strip().removesuffix(".0"), signal_of(record))
    return out


def ptbxl_cases(base: Path, where: Path, rng: random.Random) -> list[Case]:
    case = Cases(base, where, lambda root, r: same_items(r, ptbxl_expected(root)))
    db = "ptbxl_database.csv"
    k = rng.randrange(1, 9)
    rec = f"records100/00000/{k:05d}_lr"
    case("baseline", "correct")
    case("rows reordered", "correct", edit=lambda r: _edit_table(r, lambda ls: [ls[0], *rng.sample(ls[1:], 8)], db))
    case("CRLF line ends", "correct",
         edit=lambda r: (r / db).write_bytes((r / db).read_bytes().replace(b"\n", b"\r\n")))
    case("a listed record's files removed", "refuse", f"{k:05d}_lr",
         edit=lambda r: [(r / f"{rec}{s}").unlink() for s in (".hea", ".dat")])
    case("a listed record's files removed, on_error=skip", "correct", options="on_error=skip", note="1 left out",
         edit=lambda r: [(r / f"{rec}{s}").unlink() for s in (".hea", ".dat")])
    case("an ecg_id listed twice", "refuse", db, edit=lambda r: _edit_table(r, lambda ls: [*ls, ls[k]], db))
    case("two ecg_ids naming one record", "refuse", f"{k:05d}_lr",
         edit=lambda r: _edit_table(r, lambda ls: [*ls, "99" + ls[k][ls[k].index(","):]], db))
    case("strat_fold out of range", "refuse", db, edit=lambda r: _set_field(r / db, k, "strat_fold", "11"))
    case("patient id with surrounding whitespace", "correct",
         edit=lambda r: (r / db).write_text((r / db).read_text().replace(f",{1000 + k // 2}.0,", f", {1000 + k // 2}.0 ,", 1)))
    case("scp_codes not a dictionary", "refuse", db,
         edit=lambda r: (r / db).write_text((r / db).read_text().replace("{'IMI': 80.0}", "{'IMI': 80.0", 1)))
    case("signal file cut short", "refuse", f"{k:05d}_lr.dat",
         edit=lambda r: (r / f"{rec}.dat").write_bytes((r / f"{rec}.dat").read_bytes()[:1000]))
    case("a record on disk listed nowhere", "correct", note="listed in no table",
         edit=lambda r: write_record(r / "records100" / "00000", "00042_lr", n=120, leads=LEADS12, seed=42))
    case("age not a number", "refuse", db, edit=lambda r: (r / db).write_text((r / db).read_text().replace(",51,", ",5l,", 1)))
    return case.cases


def test_ptbxl_mutations(ptbxl_base, tmp_path):
    cwd = outside(tmp_path)
    outcomes = run_cases("ptbxl", ptbxl_cases(ptbxl_base, cwd, random.Random(7)), cwd)
    assert outcomes["a listed record's files removed"] == "refused"  # never skipped by default


# ---- cinc: challenge headers with # Age / # Sex / # Dx -----------------------------------------------------

def _cinc_comments(i: int) -> list[str]:
    return [f"Age: {40 + i}", f"Sex: {'Female' if i % 2 else 'Male'}", f"Dx: 164934002,{426783006 + i % 2}"]


@pytest.fixture(scope="module")
def cinc_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("cinc") / "base"
    for i in range(4):
        write_record(root / ("g1" if i < 2 else "g2"), f"E{i:05d}", n=100, fs=500, leads=LEADS12, seed=i,
                     comments=_cinc_comments(i))
    return root


def cinc_expected(root: Path) -> dict:
    out = {}
    for hea in sorted(root.rglob("*.hea")):
        rid = hea.relative_to(root).with_suffix("").as_posix()
        out[rid] = (rid, signal_of(hea.with_suffix("")))
    return out


def _hea_edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def cinc_cases(base: Path, where: Path, rng: random.Random) -> list[Case]:
    case = Cases(base, where, lambda root, r: same_items(r, _without_skipped(cinc_expected(root), r)))
    k = rng.randrange(4)
    rec = f"{'g1' if k < 2 else 'g2'}/E{k:05d}"
    case("baseline", "correct")
    case("one record name in two folders", "correct",
         edit=lambda r: write_record(r / "g2", "E00000", n=100, fs=500, leads=LEADS12, seed=9, comments=_cinc_comments(0)))
    case("no Dx line", "refuse", f"E{k:05d}.hea", edit=lambda r: _hea_edit(r / f"{rec}.hea", "# Dx:", "# Diagnosis:"))
    case("a Dx code that is not a number", "refuse", f"E{k:05d}.hea",
         edit=lambda r: _hea_edit(r / f"{rec}.hea", "# Dx: 164934002", "# Dx: AF"))
    case("age not a number", "refuse", f"E{k:05d}.hea", edit=lambda r: _hea_edit(r / f"{rec}.hea", f"# Age: {40 + k}", "# Age: forty"))
    case("sex not a sex", "refuse", f"E{k:05d}.hea",
         edit=lambda r: _hea_edit(r / f"{rec}.hea", f"# Sex: {'Female' if k % 2 else 'Male'}", "# Sex: 7"))
    case("eleven leads", "refuse", f"E{k:05d}.hea",
         edit=lambda r: write_record(r / rec.split("/")[0], f"E{k:05d}", n=100, fs=500, leads=LEADS12[:11], seed=k,
                                     comments=_cinc_comments(k)))
    case("lead names upper-cased", "correct",
         edit=lambda r: (r / f"{rec}.hea").write_text((r / f"{rec}.hea").read_text().replace(" aVR", " AVR")))
    case("another sampling rate", "refuse", "E0000",
         edit=lambda r: write_record(r / rec.split("/")[0], f"E{k:05d}", n=100, fs=250, leads=LEADS12, seed=k,
                                     comments=_cinc_comments(k)))
    case("signal file cut short", "refuse", f"E{k:05d}.dat",
         edit=lambda r: (r / f"{rec}.dat").write_bytes((r / f"{rec}.dat").read_bytes()[:-50]))
    case("signal file replaced by a folder", "refuse", f"E{k:05d}.dat", edit=lambda r: dir_in_place(r / f"{rec}.dat"))
    case("re-encoded as format 32", "correct",
         edit=lambda r: write_record(r / rec.split("/")[0], f"E{k:05d}", n=100, fs=500, leads=LEADS12, seed=k,
                                     fmt="32", comments=_cinc_comments(k)))
    case("header with CRLF line ends", "either", f"E{k:05d}.hea",
         edit=lambda r: (r / f"{rec}.hea").write_bytes((r / f"{rec}.hea").read_bytes().replace(b"\n", b"\r\n")))
    case("a bad header, on_error=skip", "correct", options="on_error=skip", note="1 left out",
         edit=lambda r: _hea_edit(r / f"{rec}.hea", "# Dx:", "# Diagnosis:"))
    return case.cases


def test_cinc_mutations(cinc_base, tmp_path):
    cwd = outside(tmp_path)
    outcomes = run_cases("cinc", cinc_cases(cinc_base, cwd, random.Random(5)), cwd)
    assert outcomes["one record name in two folders"] == "correct"  # g1/E00000 and g2/E00000: two records


# ---- annotated: records with .atr beat annotations ---------------------------------------------------------

FS_ANN = 100


@pytest.fixture(scope="module")
def annotated_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("annotated") / "base"
    for i, name in enumerate(("100", "101")):
        write_record(root / "db", name, n=1000, fs=FS_ANN, leads=["MLII"], seed=i)
        beats = np.arange(30 + 7 * i, 1000, 110)
        symbols = ["N" if j % 4 else "V" for j in range(len(beats))]
        wfdb.wrann(name, "atr", beats, symbols, fs=FS_ANN, write_dir=str(root / "db"))
    return root


def annotated_expected(root: Path) -> dict:
    """One window per beat N/V with 0.25 s before and 0.45 s after inside the record, from rdrecord + rdann."""
    out = {}
    for atr in sorted(root.rglob("*.atr")):
        record = atr.with_suffix("")
        if not record.with_suffix(".hea").exists():
            continue
        sig = signal_of(record)
        ann = wfdb.rdann(str(record), "atr")
        rid = record.relative_to(root).as_posix()
        for s, sym in zip(ann.sample, ann.symbol):
            if sym in "NLRejAaJSVEF/fQ" and s - 25 >= 0 and s + 45 <= sig.shape[1]:
                out[f"{rid}:{s}"] = (record.name, sig[:, s - 25:s + 45])
    return out


def annotated_cases(base: Path, where: Path, rng: random.Random) -> list[Case]:
    case = Cases(base, where, lambda root, r: same_items(r, annotated_expected(root)))
    name = rng.choice(["100", "101"])
    atr = f"db/{name}.atr"
    case("baseline", "correct")
    case("annotation file cut", "refuse", f"{name}.atr",
         edit=lambda r: (r / atr).write_bytes((r / atr).read_bytes()[:-rng.randrange(2, 9)]))
    case("bytes after the end marker", "refuse", f"{name}.atr",
         edit=lambda r: (r / atr).write_bytes((r / atr).read_bytes() + b"\x00\x10"))
    case("annotations without their record", "refuse", f"{name}.atr",
         edit=lambda r: [(r / f"db/{name}{s}").unlink() for s in (".hea", ".dat")])
    case("annotations without their record, on_error=skip", "correct", options="on_error=skip", note="1 left out",
         edit=lambda r: [(r / f"db/{name}{s}").unlink() for s in (".hea", ".dat")])
    case("one record name in two folders", "refuse", "db2/", edit=lambda r: shutil.copytree(r / "db", r / "db2"))
    case("beats relabelled as non-beats", "correct",
         edit=lambda r: wfdb.wrann(name, "atr", np.arange(30, 1000, 110), ["~"] * 8 + ["N"], fs=FS_ANN,
                                   write_dir=str(r / "db")))
    case("a record at another rate", "refuse", ".hea",
         edit=lambda r: write_record(r / "db", name, n=2000, fs=200, leads=["MLII"], seed=3))
    case("signal file cut short", "refuse", f"{name}.dat",
         edit=lambda r: (r / f"db/{name}.dat").write_bytes((r / f"db/{name}.dat").read_bytes()[:500]))
    return case.cases


def test_annotated_mutations(annotated_base, tmp_path):
    cwd = outside(tmp_path)
    outcomes = run_cases("annotated", annotated_cases(annotated_base, cwd, random.Random(11)), cwd)
    assert outcomes["annotation file cut"] == "refused" and outcomes["one record name in two folders"] == "refused"
