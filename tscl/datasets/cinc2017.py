"""The ``cinc2017`` source: PhysioNet/CinC Challenge 2017 single-lead AF recordings (``training2017/``).

=============  ===========================================================================
``cinc2017``   ``training2017/`` (or its parent): ``A00001.hea`` + ``A00001.mat`` per record
               and a reference table (:mod:`tscl.loaders.cinc2017`): one item per record
               (``windows=first``) or per whole window (``windows=all``), lead ``I``
=============  ===========================================================================

Ids: the challenge gives no patient ids, so ``patient_id`` is the record (``A00001``); with
``windows=all`` the windows of a record share it and ``record_id`` is ``A00001:<start sample>``.
Labels: ``class`` (N/A/O/~ as the table writes it) and one 0/1 column per class, ``normal``,
``af``, ``other``, ``noisy`` (``--labels af,normal,other,noisy`` probes all four), plus
``duration_s`` and ``valid_s``. Records last 9-61 s, so each item is cut or zero-padded to
``length_s`` (default 30 s, the length of 5,977 of the 8,528 records); ``fs=100`` resamples to
PTB-XL's records100 rate, so a lead-I encoder reads both.

Split (no official one exists for the public training set): within each class the records
are ordered by the SHA-256 of their name; the first 20 % (rounded) are ``test``, the next 10 %
``val``, the rest ``train`` (:func:`stratified_hash_split`). It is stratified exactly, the same
on every machine and run, and a record's side depends only on its name, its class and the
other records of its class in the table: the label version (``labels=``) can move a relabelled
record, and its neighbours, to another side.

Tasks (:mod:`tscl.tasks`), on that split: ``cinc2017-rhythm``, the four classes one-vs-rest (``normal``,
``af``, ``other``, ``noisy``); ``cinc2017-classes``, the same four as one class per record (multi-class: the
decision is the argmax, scored as the challenge scores it with the metric ``f1:normal+af+other``, the mean F1
of N, AF and Other); ``cinc2017-af``, AF against normal rhythm (the Other and Noisy records left out).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

from tscl.loaders.cinc2017 import load_cinc2017
from tscl.tasks import register_task

from . import declare_source
from .waveform import _COMMON, WaveformDataset, _cache_dir

__all__ = ["stratified_hash_split", "FRACTIONS"]

FRACTIONS = {"test": 0.2, "val": 0.1}  # the rest is train


def stratified_hash_split(ids, strata, fractions: dict = FRACTIONS) -> list[str]:
    """``train`` / ``val`` / ``test`` per id: in each stratum the ids are ordered by the SHA-256 of their
    text and the first ``round(test * n)`` go to ``test``, the next ``round(val * n)`` to ``val``."""
    ids, strata = [str(i) for i in ids], list(strata)
    if len(ids) != len(strata):
        raise ValueError(f"{len(ids)} ids for {len(strata)} strata")
    out = ["train"] * len(ids)
    for stratum in dict.fromkeys(strata):
        members = sorted((hashlib.sha256(ids[i].encode()).digest(), i) for i in range(len(ids)) if strata[i] == stratum)
        n_test = int(round(fractions.get("test", 0) * len(members)))
        n_val = int(round(fractions.get("val", 0) * len(members)))
        for rank, (_, i) in enumerate(members):
            out[i] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


@declare_source("cinc2017", "waveform", "PhysioNet/CinC 2017 training2017/ (or its parent): A00001.hea + .mat (MAT "
                 "v4) per record and a reference table (REFERENCE-v3.csv, REFERENCE.csv or REFERENCE-original.csv); "
                 "lead 'I', patient = record, labels class + normal/af/other/noisy, split stratified by class "
                 "(20 % test, 10 % val, hash of the record name)",
                 options={**_COMMON,
                          "labels": "auto | v3 | reference | v1 | a file name: the reference table (auto: "
                                    "REFERENCE-v3.csv if present, else REFERENCE.csv, else REFERENCE-original.csv)",
                          "fs": "resample to this rate in Hz (default: as recorded, 300; 100 matches PTB-XL records100)",
                          "length_s": "seconds per item: cut, or zero-pad at the end (default 30)",
                          "windows": "first | all: the first length_s of each record, or every whole window"})
def _cinc2017(root: Path, *, cache=None, progress=True, labels="auto", fs=None, length_s=30.0, windows="first",
              normalize="none", on_error="raise"):
    fs = _seconds_or_hz("fs", fs) if fs not in (None, "", "none") else None
    length_s = _seconds_or_hz("length_s", length_s)
    options = {"labels": labels, "fs": fs, "length_s": length_s, "windows": windows, "on_error": on_error}
    c = load_cinc2017(root, str(labels), _cache_dir(cache, "cinc2017", root, **options), fs=fs, length_s=length_s,
                      windows=windows, on_error=on_error, progress=progress)
    records = c.index.unique(subset="patient_id", keep="first", maintain_order=True)
    side = dict(zip(records["patient_id"], stratified_hash_split(records["patient_id"], records["class"])))
    index = c.index.with_columns(pl.col("patient_id").replace_strict(side).alias("split"))
    return WaveformDataset(c, normalize=normalize, index=index)


def _seconds_or_hz(name: str, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not out > 0 or out == float("inf"):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return out


register_task("cinc2017-rhythm", "cinc2017", ("normal", "af", "other", "noisy"), "multilabel",
              description="CinC 2017 single-lead recordings: normal / AF / other rhythm / noisy one-vs-rest; the "
                          "source's split stratified by class (20 % test, 10 % validation)")
register_task("cinc2017-classes", "cinc2017", ("normal", "af", "other", "noisy"), "multiclass",
              description="CinC 2017 single-lead recordings: normal / AF / other rhythm / noisy as one class per record "
                          "(argmax decision; the challenge score is the mean F1 of normal, af and other); the source's "
                          "split stratified by class (20 % test, 10 % validation)")
register_task("cinc2017-af", "cinc2017", ("af",), "binary", rows={"class": ["N", "A"]},
              description="CinC 2017 AF against normal rhythm (the Other and Noisy records left out); the source's "
                          "split stratified by class (20 % test, 10 % validation)")
