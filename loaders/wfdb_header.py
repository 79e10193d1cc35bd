"""WFDB header files: parsing (:func:`parse_wfdb_header`) and validation against the data files they
name (:func:`check_wfdb_header`), without reading a sample."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path

import numpy as np

from .recording import LoaderError

__all__ = ["WfdbHeader", "parse_wfdb_header", "check_wfdb_header"]

# Bits each sample takes on disk, per WFDB storage format (0: signal not stored). FLAC formats (508/516/524) are
# compressed, so their size cannot be checked.
_FORMAT_BITS = {"0": 0, "8": 8, "16": 16, "24": 24, "32": 32, "61": 16, "80": 8, "160": 16,
                "212": 12, "310": 32 / 3, "311": 32 / 3}
_FLAC_FORMATS = {"508", "516", "524"}
_PACKED_FORMATS = {"212", "310", "311"}  # groups of samples share bytes; the last group may be padded


def _header_lines(hea: Path) -> list[str]:
    """Non-comment, non-blank lines of a header file."""
    try:
        text = hea.read_text(errors="replace")
    except OSError as err:
        raise LoaderError(hea, f"cannot read header: {err}") from err
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@dataclass
class WfdbHeader:
    """The fields of a single-segment WFDB header that reading needs (names as in ``wfdb.Record``)."""

    record_name: str
    n_sig: int
    fs: float
    sig_len: int | None
    base_time: time | None
    base_date: date | None
    file_name: list[str]
    fmt: list[str]
    samps_per_frame: list[int]
    skew: list[int | None]
    byte_offset: list[int | None]
    adc_gain: list[float]
    baseline: list[int]
    units: list[str]
    sig_name: list[str]
    comments: list[str]


_SIGNAL_FORMAT = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")
_GAIN = re.compile(r"^([-+0-9.eE]+)(?:\(([-+]?\d+)\))?(?:/(.*))?$")


def _parse_time(text: str | None) -> time | None:
    for f in ("%H:%M:%S.%f", "%H:%M:%S", "%M:%S"):
        try:
            return datetime.strptime(text, f).time()
        except (TypeError, ValueError):
            continue
    return None


def _parse_date(text: str | None) -> date | None:
    try:
        return datetime.strptime(text, "%d/%m/%Y").date()
    except (TypeError, ValueError):
        return None


def parse_wfdb_header(hea: str | Path) -> WfdbHeader:
    """Parse a single-segment WFDB header (record line, signal lines, ``#`` comments).

    Follows the WFDB header format: missing sampling frequency -> 250 Hz; ADC gain 0 or missing
    -> 200 with baseline = ADC zero; missing units -> mV. Problems raise a :class:`LoaderError`
    naming the file: a signal count that disagrees with the signal lines, an unknown storage
    format, an unreadable field.
    """
    hea = Path(hea)
    try:
        text = hea.read_text(errors="replace")
    except OSError as err:
        raise LoaderError(hea, f"cannot read header: {err}") from err
    raw = [ln.strip() for ln in text.splitlines()]
    comments = [ln.lstrip("#").strip() for ln in raw if ln.startswith("#")]
    lines = [ln for ln in raw if ln and not ln.startswith("#")]
    if not lines:
        raise LoaderError(hea, "header is empty")
    fields = lines[0].split()
    if "/" in fields[0]:
        raise LoaderError(hea, "multi-segment record; read it with read_wfdb")
    try:
        n_sig = int(fields[1]) if len(fields) > 1 else 0
        fs = float(fields[2].split("/")[0]) if len(fields) > 2 else 250.0
        sig_len = int(fields[3]) if len(fields) > 3 else None
    except ValueError:
        raise LoaderError(hea, f"cannot parse record line {lines[0]!r}") from None
    if not (np.isfinite(fs) and fs > 0):
        raise LoaderError(hea, f"sampling frequency {fields[2]!r} in the record line is not positive")
    if n_sig != len(lines) - 1:
        raise LoaderError(hea, f"record line declares {n_sig} signals but the header has {len(lines) - 1} signal lines")
    h = WfdbHeader(fields[0], n_sig, fs, sig_len, _parse_time(fields[4] if len(fields) > 4 else None),
                   _parse_date(fields[5] if len(fields) > 5 else None), [], [], [], [], [], [], [], [], [], comments)
    for ln in lines[1:]:
        parts = ln.split(maxsplit=8)
        fm = _SIGNAL_FORMAT.match(parts[1]) if len(parts) > 1 else None
        if fm is None:
            raise LoaderError(hea, f"cannot parse the storage format of signal line {ln!r}")
        code = fm.group(1)
        if code not in _FORMAT_BITS and code not in _FLAC_FORMATS:
            raise LoaderError(hea, f"unknown WFDB storage format {code!r} in signal line {ln!r}")
        gain, baseline, units = 0.0, None, "mV"
        if len(parts) > 2:
            gm = _GAIN.match(parts[2])
            if gm is None:
                raise LoaderError(hea, f"cannot parse the ADC gain {parts[2]!r} in signal line {ln!r}")
            try:
                gain = float(gm.group(1))
            except ValueError:
                raise LoaderError(hea, f"cannot parse the ADC gain {parts[2]!r} in signal line {ln!r}") from None
            baseline = int(gm.group(2)) if gm.group(2) is not None else None
            units = gm.group(3) or "mV"
        try:
            adc_zero = int(parts[4]) if len(parts) > 4 else 0
        except ValueError:
            raise LoaderError(hea, f"cannot parse the ADC zero in signal line {ln!r}") from None
        if gain == 0:
            gain = 200.0
        h.file_name.append(parts[0])
        h.fmt.append(code)
        h.samps_per_frame.append(int(fm.group(2) or 1))
        h.skew.append(int(fm.group(3)) if fm.group(3) else None)
        h.byte_offset.append(int(fm.group(4)) if fm.group(4) else None)
        h.adc_gain.append(gain)
        h.baseline.append(baseline if baseline is not None else adc_zero)
        h.units.append(units)
        h.sig_name.append(parts[8] if len(parts) > 8 else "")
    return h


def check_wfdb_header(hea: str | Path) -> WfdbHeader:
    """Validate a single-segment WFDB header against its data files; return it parsed (:func:`parse_wfdb_header`).

    Checks, each failing with a :class:`LoaderError` naming the file: the record line's signal
    count equals the number of signal lines, every storage format is known, every data file
    exists, and each data file's size equals byte offset + samples x bits / 8 (a shorter file is
    truncated; a longer one means the header lists fewer signals or samples than the file holds).
    """
    hea = Path(hea)
    header = parse_wfdb_header(hea)
    if header.n_sig == 0:
        return header
    files: dict[str, list[int]] = {}
    for i, name in enumerate(header.file_name):
        files.setdefault(name, []).append(i)
    for name, sigs in files.items():
        if name == "~" or all(header.fmt[i] == "0" for i in sigs):
            continue
        dat = hea.parent / name
        if not dat.exists():
            raise LoaderError(dat, f"data file named in {hea.name} not found")
        fmts = {header.fmt[i] for i in sigs}
        if fmts & _FLAC_FORMATS:
            continue
        offset = int(header.byte_offset[sigs[0]] or 0)
        frame_bits = sum(_FORMAT_BITS[header.fmt[i]] * int(header.samps_per_frame[i] or 1) for i in sigs)
        size = dat.stat().st_size - offset
        if header.sig_len:
            expected = header.sig_len * frame_bits / 8
            slack = 4 if fmts & _PACKED_FORMATS else 0
            if size < int(expected):
                raise LoaderError(dat, f"truncated: {size} data bytes, {hea.name} declares {header.sig_len} samples "
                                       f"x {len(sigs)} signals = {int(np.ceil(expected))} bytes")
            if size > np.ceil(expected) + slack:
                raise LoaderError(dat, f"holds {size} data bytes but {hea.name} declares {len(sigs)} signals x "
                                       f"{header.sig_len} samples = {int(np.ceil(expected))} bytes; the header's "
                                       "signal count or length disagrees with the data")
        elif (size * 8) % frame_bits and not fmts & _PACKED_FORMATS:
            raise LoaderError(dat, f"{size} data bytes is not a whole number of {len(sigs)}-signal frames")
    return header
