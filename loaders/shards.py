"""Shard files of a waveform cache: how one recording's samples are stored, and how a shard is written.

A shard is the recordings' payloads back to back, each starting on a 16-byte boundary. A
payload is stored in the smallest of three encodings that gives back the reader's float32
samples exactly (``np.array_equal``, NaN equal to NaN):

=====  ==========  ==================================================================================
code   name        payload
=====  ==========  ==================================================================================
2      ``i16``     per channel: ADC gain (float64), baseline (float64), unit factor (float32); then the
                   ``[C, T]`` digital values as int16. Decoded as ``float32((d - baseline) / gain) *
                   unit``, the very arithmetic of ``wfdb`` and :func:`~loaders.wfdb_dir.read_wfdb`, so
                   the source's ADC values are kept losslessly (half the bytes of float32).
1      ``f16``     ``[C, T]`` float16, when every sample is a float16 number (no ADC information needed).
0      ``f32``     ``[C, T]`` float32: everything else (resampled, filtered or interpolated signals,
                   digital values outside the int16 range, sources without ADC information).
=====  ==========  ==================================================================================

``i16`` needs the reader's ADC description (``Recording.adc``); it is tried, then checked by
decoding, so a wrong or stale description only costs bytes, never a changed sample.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from .recording import LoaderError, Recording

__all__ = ["ENCODINGS", "encode", "decode_one", "decode_rows", "ShardWriter", "RowBuffer", "index_row", "Plan"]

ENCODINGS = {0: "f32", 1: "f16", 2: "i16"}
F32, F16, I16 = 0, 1, 2
ALIGN = 16
_QUALITY_NOTES = ("frame_averaged",)  # what a reader did to the samples that the cache's report must carry


# ---- one recording -------------------------------------------------------------------------------

def _decode_i16(d: np.ndarray, gain: np.ndarray, baseline: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """``float32((d - baseline) / gain) * unit`` with ``gain``/``baseline`` float64 and ``unit`` float32,
    broadcast over the channel axis (``[..., C, 1]``)."""
    gain32 = np.asarray(gain, dtype=np.float32)
    if (gain32 == gain).all() and (baseline == np.round(baseline)).all() and (np.abs(baseline) < 2**23).all():
        # d - baseline and gain are exact float32 numbers, and float64 has at least 2 * 24 + 2 bits: rounding the
        # float64 quotient to float32 equals dividing in float32 (double rounding is innocuous), at half the bytes
        out = d.astype(np.float32)
        if np.any(baseline):
            out -= np.asarray(baseline, dtype=np.float32)
        out /= gain32
    else:
        x = np.subtract(d, baseline, dtype=np.float64)
        x /= gain
        out = x.astype(np.float32)
    if np.any(unit != 1):  # times 1.0 changes no float32 number
        out *= unit
    return out


def _try_i16(x: np.ndarray, adc) -> bytes | None:
    a = np.asarray(adc, dtype=np.float64)
    if a.shape != (x.shape[0], 3) or not np.isfinite(a).all() or not (a[:, 0] != 0).all() or not (a[:, 2] != 0).all():
        return None
    gain, baseline, unit = a[:, :1], a[:, 1:2], a[:, 2:3].astype(np.float32)
    with np.errstate(all="ignore"):
        d = np.rint((x / unit).astype(np.float64) * gain + baseline)
    if not np.isfinite(d).all() or d.min() < -32768 or d.max() > 32767:
        return None
    d16 = d.astype("<i2")
    if not np.array_equal(_decode_i16(d16, gain, baseline, unit), x):
        return None
    return a[:, 0].astype("<f8").tobytes() + a[:, 1].astype("<f8").tobytes() + unit[:, 0].astype("<f4").tobytes() \
        + d16.tobytes()


def encode(rec: Recording) -> tuple[int, bytes]:
    """``(encoding code, payload bytes)`` of one recording (module docstring)."""
    x = rec.signal
    if x.size and rec.adc is not None and np.isfinite(x).all():
        payload = _try_i16(x, rec.adc)
        if payload is not None:
            return I16, payload
    if x.size:
        with np.errstate(all="ignore"):
            half = x.astype("<f2")
        if np.array_equal(half.astype(np.float32), x, equal_nan=True):
            return F16, half.tobytes()
    return F32, np.ascontiguousarray(x, dtype="<f4").tobytes()


def payload_bytes(code: int, c: int, t: int) -> int:
    return {F32: 4 * c * t, F16: 2 * c * t, I16: 20 * c + 2 * c * t}[code]


def decode_one(buf: np.ndarray, offset: int, code: int, c: int, t: int) -> np.ndarray:
    """Recording ``[c, t]`` float32 from a shard's bytes ``buf`` (uint8) at ``offset``; a view for ``f32``."""
    end = offset + payload_bytes(code, c, t)
    raw = buf[offset:end]
    if code == F32:
        return raw.view("<f4").reshape(c, t)
    if code == F16:
        return raw.view("<f2").astype(np.float32).reshape(c, t)
    gain = raw[: 8 * c].view("<f8")[:, None]
    baseline = raw[8 * c: 16 * c].view("<f8")[:, None]
    unit = raw[16 * c: 20 * c].view("<f4")[:, None]
    return _decode_i16(raw[20 * c:].view("<i2").reshape(c, t), gain, baseline, unit)


def decode_rows(buf: np.ndarray, offsets: np.ndarray, code: int, c: int, t: int) -> np.ndarray:
    """Recordings ``[len(offsets), c, t]`` float32 of one encoding from one shard. Every payload starts on a
    16-byte boundary, so the shard seen as overlapping rows of one payload every 16 bytes gives all of them
    with one row gather (a copy of each payload, not an element-wise gather)."""
    n, size = len(offsets), payload_bytes(code, c, t)
    rows = np.lib.stride_tricks.as_strided(buf, shape=((len(buf) - size) // ALIGN + 1, size), strides=(ALIGN, 1),
                                           writeable=False)
    raw = rows[np.asarray(offsets, dtype=np.int64) // ALIGN]
    if code == F32:
        return raw.view("<f4").reshape(n, c, t)
    if code == F16:
        return raw.view("<f2").astype(np.float32).reshape(n, c, t)
    head = raw[:, : 16 * c].view("<f8")
    unit = raw[:, 16 * c: 20 * c].view("<f4")
    return _decode_i16(raw[:, 20 * c:].view("<i2").reshape(n, c, t), head[:, :c, None], head[:, c:, None],
                       unit[:, :, None])


# ---- one shard -----------------------------------------------------------------------------------

def write_bytes(f, data: bytes) -> None:
    """Every payload byte of a shard goes through here (a test replaces it to simulate a full disk)."""
    f.write(data)


class ShardWriter:
    """Append recordings' payloads to one shard file, hashing the bytes as they are written."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "wb")
        self.size = 0
        self.hash = hashlib.sha256()

    def add(self, rec: Recording) -> tuple[int, int]:
        """Write ``rec``; return ``(byte offset, encoding code)``."""
        code, payload = encode(rec)
        pad = -len(payload) % ALIGN
        data = payload + bytes(pad)
        write_bytes(self.file, data)
        self.hash.update(data)
        offset, self.size = self.size, self.size + len(data)
        return offset, code

    def close(self) -> tuple[int, str]:
        """Flush to disk and close; ``(bytes, sha256)``. A short file (a full disk) raises ``ENOSPC``."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        size = self.path.stat().st_size
        if size != self.size:
            import errno

            raise OSError(errno.ENOSPC, f"wrote {size} of {self.size} bytes", str(self.path))
        return self.size, self.hash.hexdigest()

    def abandon(self) -> None:
        if not self.file.closed:
            self.file.close()


def index_row(rec: Recording, offset: int, shard: int, code: int) -> dict:
    return {
        "patient_id": rec.patient_id,
        "record_id": rec.record_id,
        "fs": float(rec.fs),
        "n_channels": rec.n_channels,
        "n_samples": rec.n_samples,
        "offset": offset,
        "channels": ",".join(rec.channels),
        "visit_time": rec.start_time,
        "source": rec.source,
        **{f"label:{k}": v for k, v in rec.labels.items()},
        "nan_samples": int(rec.quality.get("nan_samples", 0)),
        "missing_channels": ",".join(rec.quality.get("missing_channels", ())),
        "shard": shard,
        "encoding": code,
    }


class RowBuffer:
    """Index rows gathered column-wise: every ``chunk`` rows become a polars frame, so a builder holds at
    most ``chunk`` rows as Python dicts, never the whole index."""

    def __init__(self, chunk: int = 4096):
        self.chunk, self.rows, self.frames = chunk, [], []
        self.label_cols: list[str] = []
        self.height = 0

    def add(self, row: dict) -> None:
        self.label_cols += [k[6:] for k in row if k.startswith("label:") and k[6:] not in self.label_cols]
        self.rows.append(row)
        self.height += 1
        if len(self.rows) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.frames.append(pl.DataFrame(self.rows, infer_schema_length=None))
            self.rows = []

    def frame(self) -> pl.DataFrame:
        self._flush()
        return concat_index(self.frames)


def concat_index(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Index parts, one after the other; a label missing from a part is null there; columns in first-seen order."""
    frames = [f for f in frames if f.height]
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]


def finish_index(index: pl.DataFrame) -> pl.DataFrame:
    """Labels without their ``label:`` prefix; quality and storage columns last."""
    index = index.rename({c: c.removeprefix("label:") for c in index.columns if c.startswith("label:")})
    tail = ["nan_samples", "missing_channels", "shard", "encoding"]
    return index.select([c for c in index.columns if c not in tail] + tail).with_columns(
        pl.col("shard").cast(pl.Int32), pl.col("encoding").cast(pl.UInt8), pl.col("offset").cast(pl.Int64))


# ---- a build that worker processes can split -----------------------------------------------------

@dataclass
class Plan:
    """A build whose items worker processes read, one contiguous run of items per shard.

    ``read_one(item)`` returns a recording, or a list of recordings and report dicts (the dicts go
    to ``report["records"]``), and raises :class:`LoaderError` for bad input. ``items`` is a list or
    a polars frame (then ``read_one`` gets each row as a dict); both must pickle for worker processes.
    ``check(rec, first)`` (``first`` None while looking for the first recording) returns None to
    keep ``rec``, or ``(report key, problem, fatal)``: a fatal problem raises unless ``on_error ==
    "skip"``; either way the recording is listed under ``report[key]``. Recordings at another rate
    than the first are treated the same way (fatal, under ``"skipped"``) unless ``allow_mixed_rates``.
    """

    items: Any
    read_one: Callable
    report: dict = field(default_factory=dict)
    on_error: str = "raise"
    check: Callable | None = None
    allow_mixed_rates: bool = False
    desc: str = "building cache"
    progress: bool = True

    def __len__(self) -> int:
        return len(self.items)

    def rows(self, start: int, stop: int):
        part = self.items[start:stop]
        return part.iter_rows(named=True) if isinstance(part, pl.DataFrame) else iter(part)


@dataclass(frozen=True)
class Ref:
    """The first recording, which every other must match (rate; channels, when a check asks)."""

    fs: float
    channels: tuple
    record_id: str
    source: str


def rate_problem(rec, first) -> str:
    return (f"sampled at {rec.fs:g} Hz, but {first.record_id} ({first.source or 'first recording'}) is at "
            f"{first.fs:g} Hz; one cache holds one rate (pass fs= to resample, or load each rate separately)")


def _recordings(out) -> list:
    return [out] if isinstance(out, Recording) else list(out)


def problem_of(plan: Plan, rec: Recording, first: Ref | None) -> tuple[str, str, bool] | None:
    if plan.check is not None:
        problem = plan.check(rec, first)
        if problem is not None:
            return problem
    if first is not None and rec.fs != first.fs and not plan.allow_mixed_rates:
        return "skipped", rate_problem(rec, first), True
    return None


def find_first(plan: Plan) -> tuple[Ref | None, int]:
    """The first recording that passes the plan's checks (read in this process) and its encoded size in bytes
    per item; the items read here are read again by the shard that holds them, which reports them."""
    for item in plan.rows(0, len(plan)):
        try:
            recs = [r for r in _recordings(plan.read_one(item)) if isinstance(r, Recording)]
        except LoaderError:
            continue
        for rec in recs:
            if problem_of(plan, rec, None) is None:
                size = sum(payload_bytes(encode(r)[0], r.n_channels, r.n_samples) + ALIGN for r in recs)
                return Ref(float(rec.fs), tuple(rec.channels), rec.record_id, rec.source), size
    return None, 0


def _listed(report: dict, key: str, err: LoaderError) -> None:
    report.setdefault(key, []).append({"path": err.path, "problem": err.problem})


def _note_quality(notes: dict, rec: Recording) -> None:
    for key in (k for k in _QUALITY_NOTES if k in rec.quality):  # once per source file (its windows share it)
        notes.setdefault(key, {}).setdefault(rec.source or rec.record_id, rec.quality[key])


def write_shard(plan: Plan, first: Ref | None, start: int, stop: int, shard: int, path: Path,
                allow_skip_first: bool = True) -> dict:
    """Read items ``start:stop`` of ``plan`` into the shard file ``path`` and its index ``path.parquet``;
    return what the merge needs: ``{"rows", "bytes", "sha256", "report", "notes"}`` (JSON-serialisable)."""
    writer = ShardWriter(path)
    rows, report, notes = RowBuffer(), {}, {}
    try:
        for item in plan.rows(start, stop):
            try:
                out = _recordings(plan.read_one(item))
            except LoaderError as err:
                if plan.on_error == "raise":
                    raise
                _listed(report, "skipped", err)
                continue
            for rec in out:
                if isinstance(rec, dict):
                    report.setdefault("records", []).append(rec)
                    continue
                problem = problem_of(plan, rec, first)
                if problem is not None:
                    _report_problem(plan, rec, problem, report)
                    continue
                _note_quality(notes, rec)
                offset, code = writer.add(rec)
                rows.add(index_row(rec, offset, shard, code))
        size, digest = writer.close()
    except BaseException:
        writer.abandon()
        raise
    index = rows.frame()
    index.write_parquet(path.with_suffix(".parquet"))
    return {"rows": index.height, "bytes": size, "sha256": digest, "report": report, "notes": notes,
            "labels": rows.label_cols}


def _report_problem(plan: Plan, rec, problem: tuple, report: dict) -> None:
    """A recording ``problem_of`` refused: raise it (fatal under ``on_error="raise"``) or list it in ``report``."""
    key, text, fatal = problem
    err = LoaderError(rec.source or rec.record_id, text)
    if fatal and plan.on_error == "raise":
        raise err
    if key != "skipped" or not any(s["path"] == err.path for s in report.get(key, ())):
        _listed(report, key, err)  # the windows of one record make one entry


def write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)
