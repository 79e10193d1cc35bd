"""EEGMAT task: rest vs mental-arithmetic 10 s EEG epochs."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load(root: Path, cache: Path):
    from tscl.loaders.edf import load_eegmat

    c = load_eegmat(root / "physionet" / "eegmat", cache_dir=cache / "eegmat_10s", epoch_s=10.0, progress=False)
    return np.asarray(c.stack()), c.index, [f"{c.index['patient_id'].n_unique()} subject(s), 10 s epochs, 19 10-20 "
                                              "leads, z-scored per channel and epoch before embedding"]
