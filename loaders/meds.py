"""EHR event streams in MEDS (Medical Event Data Standard) with polars.

A MEDS dataset folder holds ``data/**/*.parquet`` (one row per event: ``subject_id`` Int64,
``time`` Datetime, null for static facts, ``code`` String, ``numeric_value`` Float32/64, optional
``text_value`` String; each shard sorted by subject_id then time, static rows first),
``metadata/codes.parquet`` and ``metadata/subject_splits.parquet`` (subject_id, split: train /
tuning / held_out). This module reads and validates such a folder, builds per-subject event
sequences for sequence encoders, and a tabular view for probes; both use only events strictly
before each prediction time.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl

from .recording import LoaderError

__all__ = ["MEDS_COLUMNS", "validate_meds_shard", "scan_meds", "read_codes", "read_subject_splits", "unknown_codes",
           "build_vocabulary", "subject_sequences", "tabular_features", "EventVocabulary"]

MEDS_COLUMNS = {"subject_id": (pl.Int64,), "time": (pl.Datetime,), "code": (pl.Utf8,),
                "numeric_value": (pl.Float32, pl.Float64)}


def _type_ok(dtype, allowed) -> bool:
    return any(dtype == a or (a == pl.Datetime and isinstance(dtype, pl.Datetime)) for a in allowed)


def validate_meds_shard(path: str | Path) -> None:
    """Check one data shard: required columns with MEDS types, ``text_value`` a string when present,
    ``time`` without a time zone, every page readable, non-null subject_id/code, and rows sorted by
    subject_id then time (static rows first). Raises a :class:`LoaderError` naming the shard."""
    path = Path(path)
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as err:
        raise LoaderError(path, f"cannot read parquet schema: {err}") from err
    for col, allowed in MEDS_COLUMNS.items():
        if col not in schema:
            raise LoaderError(path, f"missing MEDS column {col!r}; has {list(schema)}")
        if not _type_ok(schema[col], allowed):
            raise LoaderError(path, f"column {col!r} has type {schema[col]}, MEDS needs {' or '.join(map(str, allowed))}")
    if "text_value" in schema and schema["text_value"] != pl.Utf8:
        raise LoaderError(path, f"column 'text_value' has type {schema['text_value']}, MEDS needs String")
    zone = getattr(schema["time"], "time_zone", None)
    if zone:
        raise LoaderError(path, f"column 'time' carries the time zone {zone!r}; MEDS times carry none (local time of "
                                "the data, as every other shard): write them without a zone")
    try:
        frame = pl.read_parquet(path)
    except Exception as err:  # a damaged page or a cut file behind an intact footer
        raise LoaderError(path, f"cannot read parquet data: {type(err).__name__}: {err}") from err
    for col in ("subject_id", "code"):
        if frame[col].null_count():
            raise LoaderError(path, f"{frame[col].null_count()} null values in {col!r}")
    key = frame.select(pl.col("subject_id"), pl.col("time").is_not_null().alias("timed"),
                       pl.col("time").fill_null(pl.datetime(1, 1, 1)).alias("t"))
    order = key.with_row_index().sort(["subject_id", "timed", "t"], maintain_order=True)["index"]
    unsorted = np.flatnonzero(order.to_numpy() != np.arange(frame.height))
    if unsorted.size:
        row = int(unsorted[0])
        raise LoaderError(path, f"rows are not sorted by subject_id then time (static first); first out of order at "
                                f"row {row} (subject_id {frame['subject_id'][row]})")


def _shards(root: Path) -> list[Path]:
    shards = sorted((root / "data").rglob("*.parquet"))
    if not shards:
        raise LoaderError(root / "data", "no MEDS parquet shards found")
    return shards


def unknown_codes(root: str | Path) -> pl.DataFrame:
    """Codes in the data shards that ``metadata/codes.parquet`` does not list (``code``, ``count``
    of events, most frequent first); empty when every code is listed or there is no codes.parquet."""
    root = Path(root)
    if not (root / "metadata" / "codes.parquet").exists():
        return pl.DataFrame(schema={"code": pl.Utf8, "count": pl.UInt32})
    known = read_codes(root).select("code").unique()
    data = pl.concat([pl.scan_parquet(s).select("code") for s in _shards(root)])
    return (data.join(known.lazy(), on="code", how="anti").group_by("code").agg(pl.len().alias("count"))
            .sort(["count", "code"], descending=[True, False]).collect())


def scan_meds(root: str | Path, *, validate: bool = True, check_codes: bool = True) -> pl.LazyFrame:
    """Every event of the dataset as one lazy frame with columns subject_id, time, code,
    numeric_value (Float64), text_value (String, null when a shard has none) and ``shard``
    (the shard's path under ``data/``). Shards are validated first unless ``validate=False``
    (:func:`validate_meds_shard`, and a subject found in two shards is refused naming both).

    With ``check_codes``, codes absent from ``metadata/codes.parquet`` (MEDS allows them; they
    have no description or parents) are reported in one warning with their count, the events
    they cover and a few examples (:func:`unknown_codes` lists them all); they are kept."""
    root = Path(root)
    frames = []
    owner: dict[int, Path] = {}
    for shard in _shards(root):
        if validate:
            validate_meds_shard(shard)
            _check_own_subjects(shard, owner)
        lf = pl.scan_parquet(shard)
        names = lf.collect_schema().names()
        frames.append(lf.select(
            "subject_id", pl.col("time").cast(pl.Datetime("us")), "code",
            pl.col("numeric_value").cast(pl.Float64),
            pl.col("text_value") if "text_value" in names else pl.lit(None, dtype=pl.Utf8).alias("text_value"),
            pl.lit(str(shard.relative_to(root / "data"))).alias("shard")))
    if check_codes:
        unknown = unknown_codes(root)
        if unknown.height:
            examples = unknown["code"].head(5).to_list()
            warnings.warn(f"{root}: {unknown.height} code(s) covering {int(unknown['count'].sum())} events are not in "
                          f"metadata/codes.parquet (MEDS allows this; they have no description), e.g. {examples}",
                          stacklevel=2)
    return pl.concat(frames)


def _check_own_subjects(shard: Path, owner: dict) -> None:
    """A subject's events are in one shard (MEDS shards by subject): one seen in an earlier shard is refused,
    naming both (a copied or re-split shard would otherwise count its events twice)."""
    subjects = pl.read_parquet(shard, columns=["subject_id"])["subject_id"].unique().to_list()
    for s in subjects:
        if s in owner:
            raise LoaderError(shard, f"subject_id {s} is also in {owner[s]}; a subject's events belong in one shard "
                                     "(a copied shard would count them twice)")
    owner.update(dict.fromkeys(subjects, shard))


def _read_table(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except Exception as err:
        raise LoaderError(path, f"cannot read parquet: {type(err).__name__}: {err}") from err


def read_codes(root: str | Path) -> pl.DataFrame:
    """``metadata/codes.parquet`` (code, description, parent_codes...)."""
    path = Path(root) / "metadata" / "codes.parquet"
    if not path.exists():
        raise LoaderError(path, "MEDS code metadata not found")
    codes = _read_table(path)
    if "code" not in codes.columns:
        raise LoaderError(path, f"missing column 'code'; has {codes.columns}")
    return codes


def read_subject_splits(root: str | Path) -> pl.DataFrame:
    """``metadata/subject_splits.parquet`` (subject_id, split), checked: one split per subject."""
    path = Path(root) / "metadata" / "subject_splits.parquet"
    if not path.exists():
        raise LoaderError(path, "MEDS subject splits not found")
    splits = _read_table(path)
    for col in ("subject_id", "split"):
        if col not in splits.columns:
            raise LoaderError(path, f"missing column {col!r}; has {splits.columns}")
    dup = splits["subject_id"].is_duplicated()
    if dup.any():
        raise LoaderError(path, f"subject(s) in several splits: {splits.filter(dup)['subject_id'].unique().to_list()[:5]}")
    return splits


@dataclass
class EventVocabulary:
    """Code ids (0 = padding, 1 = codes below the frequency cut-off or unseen) and per-code value statistics."""

    table: pl.DataFrame  # code, id, count, value_mean, value_std
    min_count: int

    @property
    def size(self) -> int:
        return self.table.height + 2

    def ids(self, codes: pl.Series) -> np.ndarray:
        mapping = dict(zip(self.table["code"], self.table["id"]))
        return np.array([mapping.get(c, 1) for c in codes], dtype=np.int64)


def build_vocabulary(events: pl.LazyFrame | pl.DataFrame, *, min_count: int = 1) -> EventVocabulary:
    """Codes seen at least ``min_count`` times get ids 2.. (most frequent first); the others share id 1.
    Value statistics (mean, std of numeric_value) are per code; fit them on the training split only."""
    lf = events.lazy()
    table = (lf.group_by("code").agg(pl.len().alias("count"), pl.col("numeric_value").mean().alias("value_mean"),
                                     pl.col("numeric_value").std().alias("value_std"))
             .filter(pl.col("count") >= min_count).sort(["count", "code"], descending=[True, False]).collect())
    table = table.with_columns((pl.int_range(pl.len()) + 2).cast(pl.Int64).alias("id"))
    return EventVocabulary(table.select("code", "id", "count", "value_mean", "value_std"), min_count)


def _before(events: pl.LazyFrame, prediction_times: pl.DataFrame | None) -> pl.LazyFrame:
    """Events strictly before each subject's prediction time (static rows kept); one row per (subject, prediction)."""
    if prediction_times is None:
        return events.with_columns(pl.lit(None, dtype=pl.Datetime("us")).alias("prediction_time"))
    pt = prediction_times.lazy().select("subject_id", pl.col("prediction_time").cast(pl.Datetime("us")))
    return events.join(pt, on="subject_id", how="inner").filter(
        pl.col("time").is_null() | (pl.col("time") < pl.col("prediction_time")))


def subject_sequences(events: pl.LazyFrame | pl.DataFrame, vocab: EventVocabulary,
                      prediction_times: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per subject (per prediction time when given) with list columns, oldest event first:
    ``code_id`` (vocabulary ids), ``value`` (numeric value z-scored per code; NaN when absent),
    ``time_h`` (hours since the subject's first timed event; static rows get 0), ``delta_h``
    (hours since the previous event). With ``prediction_times`` (subject_id, prediction_time),
    only events strictly before the prediction time are used."""
    lf = _before(events.lazy(), prediction_times)
    stats = vocab.table.lazy().select("code", "id", "value_mean", "value_std")
    lf = (lf.join(stats, on="code", how="left")
          .with_columns(pl.col("id").fill_null(1).alias("code_id"),
                        ((pl.col("numeric_value") - pl.col("value_mean"))
                         / pl.when(pl.col("value_std") > 0).then(pl.col("value_std")).otherwise(1.0))
                        .fill_null(float("nan")).alias("value")))
    keys = ["subject_id", "prediction_time"]
    lf = lf.sort([*keys, pl.col("time").is_not_null(), "time"], nulls_last=False, maintain_order=True)
    first = pl.col("time").min().over(keys)
    lf = lf.with_columns(((pl.col("time") - first).dt.total_seconds() / 3600.0).fill_null(0.0).alias("time_h"))
    lf = lf.with_columns(pl.col("time_h").diff().over(keys).fill_null(0.0).clip(0.0).alias("delta_h"))
    return lf.group_by(keys, maintain_order=True).agg("code_id", "value", "time_h", "delta_h").collect()


def tabular_features(events: pl.LazyFrame | pl.DataFrame, prediction_times: pl.DataFrame, *,
                     lookback: timedelta = timedelta(days=365), codes: list[str] | None = None) -> pl.DataFrame:
    """Wide table, one row per (subject_id, prediction_time): ``count//<code>``, ``last//<code>`` and
    ``mean//<code>`` over events in ``[prediction_time - lookback, prediction_time)``: strictly
    before the prediction time, so nothing at or after it can leak in. ``codes`` restricts the
    columns (default: every code seen in the window). Absent counts are 0, absent values null."""
    lf = _before(events.lazy(), prediction_times).filter(
        pl.col("time").is_not_null() & (pl.col("time") >= pl.col("prediction_time") - lookback))
    if codes is not None:
        lf = lf.filter(pl.col("code").is_in(codes))
    keys = ["subject_id", "prediction_time"]
    # ties at one timestamp are ordered by value, so "last" is the same event on every run
    agg = (lf.sort([*keys, "time", "numeric_value"], nulls_last=True, maintain_order=True)
           .group_by([*keys, "code"], maintain_order=True)
           .agg(pl.len().alias("count"), pl.col("numeric_value").drop_nulls().last().alias("last"),
                pl.col("numeric_value").mean().alias("mean")).collect())
    base = prediction_times.select("subject_id", pl.col("prediction_time").cast(pl.Datetime("us")))
    wanted = sorted(codes) if codes is not None else sorted(agg["code"].unique().to_list())
    out = base
    for stat in ("count", "last", "mean"):
        wide = agg.pivot(on="code", index=keys, values=stat) if agg.height else agg.select(keys)
        wide = wide.rename({c: f"{stat}//{c}" for c in wide.columns if c not in keys})
        out = out.join(wide, on=keys, how="left")
        for c in wanted:
            name = f"{stat}//{c}"
            if name not in out.columns:
                out = out.with_columns(pl.lit(None, dtype=pl.Float64).alias(name))
    counts = [f"count//{c}" for c in wanted]
    out = out.with_columns([pl.col(c).fill_null(0).cast(pl.Int64) for c in counts])
    return out.select(*keys, *[f"{s}//{c}" for c in wanted for s in ("count", "last", "mean")])
