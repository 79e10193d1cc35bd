"""``tscl probe``: linear probes over embeddings files (:mod:`tscl.embeddings`) on a dataset's own split.

:func:`probe_embeddings` aligns each file with the dataset's rows, refuses an encoder pretrained on any
test patient, leaves out rows without a value for the labels (saying how many), and writes
``probe.json``, ``probe.md`` and ``label_efficiency.png`` into ``out``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from tscl.embeddings import load_embeddings
from tscl.grammar import UsageError
from tscl.plots import plot_label_efficiency

from .linear import run_probe
from .protocol import check_pretraining_overlap, patient_split

__all__ = ["probe_embeddings", "probe_sides"]


def probe_sides(index: pl.DataFrame, split: str | None, seed: int = 0) -> np.ndarray:
    """``"train"`` / ``"test"`` per row: the dataset's own ``split`` column (``split`` None or ``dataset``), or
    ``random``: a random patient-level split with 30 % of the patients on the test side."""
    if split == "random":  # a sample too small for its own split to have a test side
        train_rows, test_rows = patient_split(index["patient_id"].to_numpy(), 0.3, seed)
        side = np.full(len(index), "train", dtype=object)
        side[test_rows] = "test"
        print(f"--split random: {len(np.unique(index['patient_id'].to_numpy()[test_rows]))} test patients drawn at "
              "random instead of the dataset's split")
        return side
    if split in (None, "dataset"):
        return index["split"].to_numpy()
    raise UsageError(f"--split: the probe takes 'dataset' (the source's test split) or 'random', got {split!r}")


def _features(paths, index, test_patients, allow_test_overlap: bool) -> dict:
    ids = index["record_id"].to_list()
    features = {}
    for path in paths:
        emb = load_embeddings(path)
        if emb.record_id != [str(i) for i in ids]:
            raise UsageError(f"{path}: embeddings are not aligned with the cohort's records (re-run tscl embed)")
        check_pretraining_overlap(emb.pretrained_patients, test_patients, allow=allow_test_overlap,
                                  what=f"the encoder behind {path}")
        features[emb.name] = emb.features
    return features


def probe_embeddings(data, embeddings: list, labels: list, out: str | Path, *, fractions=(0.01, 0.1, 1.0),
                     reference: str | None = None, n_boot: int = 1000, seed: int = 0, split: str | None = None,
                     allow_test_overlap: bool = False):
    """Linear probes of every embeddings file on ``data`` (a :class:`~tscl.datasets.Dataset`, every row),
    tested on its test split; returns the :class:`~tscl.probes.linear.ProbeResult` and writes its report."""
    index = data.index
    side = probe_sides(index, split, seed)
    if not (side == "test").any() or not (side != "test").any():
        raise UsageError(f"the dataset's split column gives {(side != 'test').sum()} training and "
                         f"{(side == 'test').sum()} test rows; both sides need rows (--split random draws a "
                         "patient-level split)")
    features = _features(embeddings, index, index["patient_id"].to_numpy()[side == "test"], allow_test_overlap)
    missing = [lab for lab in labels if lab not in index.columns]
    if missing:
        raise UsageError(f"--labels: column(s) {missing} not in the cohort metadata; available: {data.label_columns}")
    present = pl.all().is_not_null() & pl.all().cast(pl.Float64, strict=False).is_not_nan().fill_null(True)
    keep = np.flatnonzero(index.select(labels).with_columns(present).to_numpy().all(axis=1))
    if len(keep) < len(index):  # e.g. PTB-XL rows a label table leaves out: not negatives, not probed
        print(f"{len(index) - len(keep)} of {len(index)} rows have no value for {', '.join(labels)} and are left "
              "out of the probe")
        side, index, features = side[keep], index[keep.tolist()], {k: v[keep] for k, v in features.items()}
    train, test = np.flatnonzero(side != "test"), np.flatnonzero(side == "test")
    result = run_probe(features, index.select(labels).to_numpy(), list(labels), index["patient_id"].to_numpy(),
                       fractions=list(fractions), reference=reference, n_boot=n_boot, seed=seed, split=(train, test))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(result.to_json())
    (out / "probe.md").write_text(f"# Linear probe, macro AUROC over {', '.join(labels)}\n\n{result.to_markdown()}\n")
    plot_label_efficiency(result.rows, out / "label_efficiency.png", title="linear probe")
    return result
