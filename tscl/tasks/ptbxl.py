"""PTB-XL tasks: the 100 Hz records with the database's age, sex, device and diagnostic superclasses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl


def load(root: Path, cache: Path):
    from tscl.loaders.ptbxl import load_ptbxl

    c = load_ptbxl(root / "ptbxl", rate=100, cache_dir=cache / "ptbxl_100", on_error="skip", labels="database",
                   progress=False)  # age, sex and superclasses come from the database rows
    idx = c.index
    db = pl.read_csv(root / "ptbxl" / "ptbxl_database.csv", infer_schema_length=None)
    if "device" in db.columns:
        dev = db.select(pl.col("ecg_id").cast(pl.Int64), pl.col("device").cast(pl.Utf8))
        idx = idx.with_columns(pl.col("ecg_id").cast(pl.Int64)).join(dev, on="ecg_id", how="left",
                                                                     maintain_order="left")
    idx = idx.with_columns((pl.col("sex") == 1).cast(pl.Int8).alias("female"))
    skipped = len(c.report.get("skipped", []))
    notes = [f"PTB-XL loaded with on_error='skip': {skipped} of {c.report.get('rows_in_table', '?')} database rows "
             "have no record files in this sample and are left out"]
    return np.asarray(c.stack()), idx, notes


def load_age(root: Path, cache: Path):
    X, idx, notes = load(root, cache)
    keep = (idx["age"].is_not_null() & (idx["age"] < 120)).to_numpy()
    if (~keep).any():
        notes.append(f"{int((~keep).sum())} rows without a usable age (null, or PTB-XL's 300 for >89 y) left out")
    return X[keep], idx.filter(pl.Series(keep)), notes
