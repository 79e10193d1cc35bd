"""The ``annotated`` source: WFDB records with ``.atr`` annotations (MIT-BIH, SVDB, CPSC 2021) as beat or rhythm windows.

=============  ===========================================================================
``annotated``  a database folder: the records its ``RECORDS`` file lists, else every record
               with ``.hea`` + ``.atr`` (:func:`tscl.loaders.annotations.annotated_records`)
=============  ===========================================================================

``kind=beats``: one window per annotated beat, ``before_s`` before to ``after_s`` after the R
peak (0.25 / 0.45 s), labelled ``aami`` (N/S/V/F/Q, AAMI EC57 as de Chazal et al. 2004 map the
MIT-BIH symbols), ``symbol`` and one 0/1 column per class, ``aami_N`` ... ``aami_Q``.
``kind=rhythm``: ``window_s`` windows inside one rhythm episode, labelled ``rhythm`` and ``afib``.
Ids: ``patient_id`` is the record's subject (CPSC 2021 ``data_<subject>_<n>``; in MIT-BIH,
whose records 201 and 202 come from one subject, 202 is patient 201), ``record_id`` is
``<record>:<sample>``, ``record`` the record name.

All records must share their leads (MIT-BIH's second lead varies: V1, V2, V4 or V5, and the
paced records 102 and 104 have no MLII): ``channels=MLII`` keeps one lead by name, else the
records' lead sets must agree. ``fs`` resamples each record first.

``split_rule`` (the index's ``split`` column):

- ``patients`` (default): :func:`~tscl.datasets.hash_split` of the patient, 70 / 15 / 15 %;
- ``dechazal`` (MIT-BIH only): de Chazal, O'Dwyer & Reilly 2004's inter-patient division, DS1
  ``train``, DS2 ``test`` (22 records each, no ``val``), the paced records 102, 104, 107 and 217
  not read; with ``kind=beats`` the Q beats are left out (N/S/V/F, ``aami_Q`` dropped). DS1's
  record 201 is the subject of DS2's 202, so it is left out of training: no test patient is
  trained on, and the test side stays de Chazal's DS2 exactly;
- ``beats``: the intra-patient ("random beat") protocol, kept to measure how much it inflates
  results: every window is its own patient (``patient_id`` = ``record_id``; the subject stays in
  ``subject``) and the split is a hash of the window, so each record's beats fall on both sides;
- ``dechazal-beats``: ``beats`` over ``dechazal``'s records and classes (records 201 and 202
  both kept), the leaky counterpart of ``dechazal`` on the same beats.

Tasks (:mod:`tscl.tasks`): ``mitdb-beats``, V against N beats (``aami_V`` on the N and V beats) split by
patient; ``mitdb-dechazal``, the four AAMI classes N/S/V/F on de Chazal's DS1 / DS2; ``cpsc2021-af``, AF
against normal-rhythm 10 s windows (unannotated stretches count as N), split by patient.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from tscl.loaders import LoaderError, load_annotated
from tscl.loaders.annotations import AAMI_CLASSES, MITDB_DS1, MITDB_DS2, MITDB_RECORDS, MITDB_SAME_SUBJECT, annotated_records
from tscl.tasks import register_task

from . import declare_source, hash_split
from .waveform import _COMMON, WaveformDataset, _cache_dir, cache_notes

__all__ = ["SPLIT_RULES", "KINDS"]

SPLIT_RULES = ("patients", "dechazal", "beats", "dechazal-beats")
KINDS = ("beats", "rhythm")


def _choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _positive(name: str, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not 0 < out < float("inf"):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return out


def _channels(channels) -> tuple[str, ...] | None:
    if channels in (None, "", "all"):
        return None
    names = channels.split(",") if isinstance(channels, str) else list(channels)
    names = tuple(str(n).strip() for n in names if str(n).strip())
    return names or None


def _dechazal_records(records: list[Path], root: Path) -> list[Path]:
    """De Chazal's DS1 and DS2 records among ``records`` (in that order); one missing is named."""
    by_name = {r.name: r for r in records}
    missing = [n for n in MITDB_DS1 + MITDB_DS2 if n not in by_name]
    if missing:
        raise LoaderError(root / f"{missing[0]}.hea", f"split_rule=dechazal needs MIT-BIH's 44 DS1 and DS2 records; "
                                                      f"{len(missing)} are not in this folder (first: {missing[0]})")
    return [by_name[n] for n in MITDB_DS1 + MITDB_DS2]


def _orphan_annotations(root: Path, on_error: str) -> list[dict]:
    """Annotation files without their record header: refused, or with ``on_error="skip"`` listed as left out."""
    orphans = [{"path": str(p), "problem": "annotation file without its record header (.hea); left out"}
               for p in sorted(root.rglob("*.atr")) if not p.with_suffix(".hea").is_file()]
    if orphans and on_error == "raise":
        raise LoaderError(orphans[0]["path"], f"annotation file without its record header "
                                              f"{Path(orphans[0]['path']).stem}.hea ({len(orphans)} such; "
                                              "on_error=skip leaves them out, listed)")
    return orphans


def _check_one_lead_set(index: pl.DataFrame, root: Path) -> None:
    sets = index.group_by("channels").agg(pl.col("record").first(), pl.len()).sort("len", descending=True)
    if sets.height > 1:
        (a, ra, _), (b, rb, _) = sets.rows()[:2]
        raise ValueError(f"{root}: records differ in leads ({sets.height} lead sets: {ra} has {a}, {rb} has {b}); pass "
                         "channels=NAME (a lead every record has, e.g. channels=MLII) so each item means one lead")


def _with_split(index: pl.DataFrame, rule: str, kind: str) -> pl.DataFrame:
    """The index under ``rule`` (rows it leaves out removed), with ``split`` and, for beats, ``aami_<class>``."""
    index = index.with_row_index("_row")
    classes = AAMI_CLASSES
    if rule.startswith("dechazal") and kind == "beats":
        classes = tuple(c for c in AAMI_CLASSES if c != "Q")
        index = index.filter(pl.col("aami") != "Q")
    if kind == "beats":
        index = index.with_columns((pl.col("aami") == c).cast(pl.Int64).alias(f"aami_{c}") for c in classes)
    if rule.endswith("beats"):
        ids = index["record_id"].to_list()
        return index.with_columns(pl.col("patient_id").alias("subject"), pl.col("record_id").alias("patient_id"),
                                  pl.Series("split", hash_split(ids)))
    if rule == "patients":
        return index.with_columns(pl.Series("split", hash_split(index["patient_id"].to_list())))
    index = index.with_columns(pl.when(pl.col("record").is_in(MITDB_DS1)).then(pl.lit("train"))
                               .otherwise(pl.lit("test")).alias("split"))
    tested = index.filter(pl.col("split") == "test")["patient_id"].unique()
    return index.filter((pl.col("split") == "test") | ~pl.col("patient_id").is_in(tested.to_list()))


@declare_source("annotated", "waveform", "WFDB records with .atr annotations (MIT-BIH, SVDB, CPSC 2021): the records "
                 "of RECORDS (else every .hea + .atr) as beat windows (AAMI classes, aami_N..aami_Q) or rhythm windows "
                 "(AF); split_rule=dechazal for MIT-BIH's inter-patient DS1/DS2",
                 options={**_COMMON, "kind": "beats | rhythm",
                          "window_s": "rhythm window length in seconds (default 10)",
                          "default_rhythm": "rhythm of unannotated stretches (e.g. N); default: left out",
                          "before_s": "beat window start before the R peak in s (default 0.25)",
                          "after_s": "beat window end after the R peak in s (default 0.45)",
                          "channels": "lead(s) to keep by name, e.g. MLII (default: every lead; records must agree)",
                          "fs": "resample every record to this rate in Hz first (default: as recorded)",
                          "split_rule": "patients | dechazal | beats | dechazal-beats: hash of the patient (default), "
                                        "de Chazal's DS1 train / DS2 test (MIT-BIH, N/S/V/F beats), or the leaky "
                                        "random-beat split over every record or over dechazal's"})
def _annotated(root: Path, *, cache=None, progress=True, kind="beats", normalize="none", on_error="raise",
               window_s=10.0, default_rhythm=None, before_s=0.25, after_s=0.45, channels=None, fs=None,
               split_rule="patients"):
    kind, rule = _choice("kind", kind, KINDS), _choice("split_rule", split_rule, SPLIT_RULES)
    records = annotated_records(root)
    orphans = _orphan_annotations(root, on_error)
    if not records:
        raise FileNotFoundError(f"{root}: no record with both .hea and .atr")
    mitdb = {r.name for r in records} <= set(MITDB_RECORDS)
    if rule.startswith("dechazal"):
        records = _dechazal_records(records, root)
    if kind == "rhythm":
        extra = {"window_s": _positive("window_s", window_s), "default_rhythm": default_rhythm}
    else:
        extra = {"before_s": _positive("before_s", before_s), "after_s": _positive("after_s", after_s)}
    if fs not in (None, "", "none"):
        extra["fs"] = _positive("fs", fs)
    chans = _channels(channels)
    key = {"kind": kind, "channels": chans, "records": [r.name for r in records], **extra}
    c = load_annotated(records, kind=kind, cache_dir=_cache_dir(cache, "annotated", root, **key), channels=chans,
                       on_error=on_error, progress=progress, root=root, **extra)
    index = c.index.with_columns(pl.col("record_id").str.replace(r":\d+$", "").alias("record"))
    if mitdb:
        index = index.with_columns(pl.col("patient_id").replace(MITDB_SAME_SUBJECT))
    _check_one_lead_set(index, root)
    index = _with_split(index, rule, kind)
    rows = index["_row"].to_numpy().astype(np.int64)
    index = index.drop("_row")
    cache_rows = c if len(rows) == len(c) and np.array_equal(rows, np.arange(len(c))) else c.subset(rows)
    notes = cache_notes(c.report)
    notes["skipped"] = [*orphans, *notes.get("skipped", [])]
    return WaveformDataset(cache_rows, normalize=normalize, index=index, notes=notes)


register_task("mitdb-beats", "annotated", ("aami_V",), "binary", split="random", rows={"aami": ["N", "V"]},
              description="MIT-BIH-style beats: AAMI V against N, 0.7 s windows around the R peak, a random "
                          "patient-level split (30 % of the patients, stratified)")
register_task("mitdb-dechazal", "annotated", ("aami_N", "aami_S", "aami_V", "aami_F"), "multilabel",
              options={"split_rule": "dechazal", "channels": "MLII"},
              description="MIT-BIH beats, AAMI N/S/V/F one-vs-rest, de Chazal et al. 2004's inter-patient DS1 train / "
                          "DS2 test (paced records left out), lead MLII")
register_task("cpsc2021-af", "annotated", ("afib",), "binary", split="random", rows={"rhythm": ["N", "AFIB"]},
              options={"kind": "rhythm", "window_s": 10, "default_rhythm": "N"},
              description="CPSC 2021-style rhythm windows: AF against normal rhythm, 10 s windows, a random "
                          "patient-level split (30 % of the patients, stratified)")
