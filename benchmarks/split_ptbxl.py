"""Split a PTB-XL folder by patient into two folders of other patients, laid out as PhysioNet publishes PTB-XL.

Each patient goes to ``site_a`` or ``site_b`` by a hash of its id (``--fraction`` of them to ``site_b``), so no
patient is in both. Each folder holds symlinks to its ECGs' records (``records100/``, and ``records500/`` where
present), ``scp_statements.csv``, and its own subsets of ``ptbxl_database.csv`` and of every label table in
``labels/``: a second PTB-XL folder for external validation (develop at one site, validate at another)::

    python benchmarks/split_ptbxl.py --root ../shared/data/ptbxl --out runs/ptbxl_sites
    # then: train on site_a, test on site_b (tscl.probes.evaluate with test_dataset/test_root; docs/probes.md)

Nothing is copied or written inside ``--root``. Prints one line per folder: ECGs listed, 100 Hz records linked
(the sample lacks some), patients.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import polars as pl

SITES = ("site_a", "site_b")


def patient_text(value) -> str:
    """A PTB-XL patient id as text: ``15709.0`` (the label tables' spelling) -> ``15709``."""
    text = str(value or "").strip()
    m = re.fullmatch(r"(-?\d+)\.0*", text)
    return m.group(1) if m else text


def site_of(patient: str, fraction: float, seed: int) -> str:
    """``site_b`` for a ``fraction`` of the patients, by the SHA-256 of the seed and the id (stable, order-free)."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{patient}".encode()).digest()[:8], "big") / 2**64
    return SITES[1] if u < fraction else SITES[0]


def _tables(root: Path) -> list[Path]:
    """The CSVs listing ECGs: ptbxl_database.csv and the label tables (relative paths kept)."""
    found = [root / "ptbxl_database.csv"] if (root / "ptbxl_database.csv").exists() else []
    return found + sorted((root / "labels").glob("ptbxl_*.csv")) if (root / "labels").is_dir() else found


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        dst.symlink_to(src.resolve())


def split(root: Path, out: Path, fraction: float = 0.5, seed: int = 0) -> dict:
    """Write ``out/site_a`` and ``out/site_b``; returns ``{site: {"ecgs", "records", "patients"}}``."""
    root, out = Path(root), Path(out)
    tables = _tables(root)
    if not tables:
        raise SystemExit(f"{root}: neither ptbxl_database.csv nor labels/ptbxl_<task>_<part>.csv: not a PTB-XL folder")
    if out.resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"--out {out}: inside --root {root}; the data folder stays as published")
    counts = {s: {"ecgs": set(), "records": 0, "patients": set()} for s in SITES}
    files: dict = {s: set() for s in SITES}
    for path in tables:
        table = pl.read_csv(path, infer_schema=False)  # every column as written
        sites = [site_of(patient_text(p), fraction, seed) for p in table["patient_id"]]
        for site in SITES:
            keep = table.filter(pl.Series([s == site for s in sites]))
            target = out / site / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            keep.write_csv(target)
            counts[site]["ecgs"] |= set(keep["ecg_id"].to_list())
            counts[site]["patients"] |= {patient_text(p) for p in keep["patient_id"]}
            files[site] |= {f for col in ("filename_lr", "filename_hr") if col in keep.columns for f in keep[col]}
    for site in SITES:
        if (root / "scp_statements.csv").exists():
            _link(root / "scp_statements.csv", out / site / "scp_statements.csv")
        for name in sorted(f for f in files[site] if f):
            for ext in (".hea", ".dat"):
                if (root / f"{name}{ext}").exists():
                    _link(root / f"{name}{ext}", out / site / f"{name}{ext}")
                    counts[site]["records"] += ext == ".hea" and name.startswith("records100/")
    return {s: {"ecgs": len(c["ecgs"]), "records": c["records"], "patients": len(c["patients"])}
            for s, c in counts.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="a PTB-XL folder (records100/, ptbxl_database.csv and/or labels/)")
    p.add_argument("--out", required=True, help="folder for site_a/ and site_b/ (created)")
    p.add_argument("--fraction", type=float, default=0.5, help="share of the patients in site_b")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 0 < args.fraction < 1:
        p.error(f"--fraction {args.fraction}: a share strictly between 0 and 1")
    for site, c in split(Path(args.root), Path(args.out), args.fraction, args.seed).items():
        print(f"{Path(args.out) / site}: {c['ecgs']} ECGs listed, {c['records']} records100 records linked, "
              f"{c['patients']} patients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
