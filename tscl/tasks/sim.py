"""The simulated-cohort task (``tscl simulate`` / ``tscl demo``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load(root: Path, cache: Path):
    """The simulated cohort written by ``tscl simulate`` / ``tscl demo``: ``root`` is the cohort folder
    (its ``metadata.csv``), or a folder holding it as ``cohort/``."""
    from tscl.loaders import load_wfdb_cohort

    folder = root if (root / "metadata.csv").exists() else root / "cohort"
    if not (folder / "metadata.csv").exists():
        raise FileNotFoundError(f"{root}: no metadata.csv of a simulated cohort here or in {root / 'cohort'} "
                                "(write one with: tscl simulate --out DIR)")
    c = load_wfdb_cohort(folder, progress=False)
    notes = [f"simulated cohort {folder}: {len(c)} recordings of {c.index['patient_id'].n_unique()} patients; labels "
             "are the simulator's ground truth (lvh, bbb, tachy, brady, mace per patient; af per recording)"]
    return np.asarray(c.stack()), c.index, notes
