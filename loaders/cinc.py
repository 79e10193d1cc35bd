"""PhysioNet/CinC Challenge 2020/2021 12-lead ECGs: ``.hea`` + ``.mat`` (WFDB format ``16x1+24``).

Each header carries comment lines ``# Age: 59``, ``# Sex: Female`` and ``# Dx: 164934002,426783006``
(SNOMED CT codes). The record name's letter prefix tells the source database:
A = CPSC 2018, Q = CPSC 2018 extra, I = St Petersburg INCART, S = PTB, HR = PTB-XL,
E = Georgia, JS = Chapman-Shaoxing and Ningbo. The challenge data carry no patient ids, so
each record is its own patient (``patient_id = record_id``); the record id is the header's path
relative to the root without ``.hea`` (``E07500``, or ``georgia/g1/E07500`` in nested folders), so
one name in two folders is two records.
"""
from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path

from .cache import ON_ERROR, WaveformCache, cached_load, check_same_rate, read_all
from .filters import check_same_channels
from .identity import relative_id
from .recording import ECG_LEADS, LoaderError, Recording
from .sources import record_files
from .transforms import prepare
from .wfdb_dir import read_wfdb

__all__ = ["read_cinc", "read_cinc_header", "load_cinc", "CINC_LEADS", "CINC_DATABASES"]

CINC_LEADS = ECG_LEADS
CINC_DATABASES = {"A": "CPSC", "Q": "CPSC-Extra", "I": "INCART", "S": "PTB", "HR": "PTB-XL",
                  "E": "Georgia", "JS": "Chapman-Shaoxing-Ningbo"}


def _age(text: str, path: Path) -> float | None:
    if text.lower() in ("", "nan", "unknown", "none", "?"):
        return None
    try:
        age = float(text)
    except ValueError:
        raise LoaderError(path, f"# Age: {text!r} is not a number") from None
    return None if math.isnan(age) else age


def _sex(text: str, path: Path) -> str | None:
    key = text.strip().lower()
    if key in ("male", "m"):
        return "M"
    if key in ("female", "f"):
        return "F"
    if key in ("", "unknown", "nan", "none", "?"):
        return None
    raise LoaderError(path, f"# Sex: {text!r} is neither male nor female nor unknown")


def read_cinc_header(path: str | Path) -> dict:
    """``{"age", "sex", "dx", "database"}`` from a challenge header's comments.

    ``age`` is a float or None, ``sex`` "M"/"F"/None, ``dx`` a tuple of SNOMED CT code strings
    (a header without a ``# Dx:`` line, or with a code that is not a number, raises),
    ``database`` the record name's letter prefix.
    """
    path = Path(path)
    hea = path if path.suffix == ".hea" else path.with_suffix(".hea")
    if not hea.exists():
        raise LoaderError(hea, "header file not found")
    fields = {}
    for line in hea.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("#") and ":" in line:
            key, _, value = line.lstrip("#").partition(":")
            fields[key.strip().lower()] = value.strip()
    if "dx" not in fields:
        raise LoaderError(hea, "no '# Dx:' comment line (SNOMED CT diagnosis codes)")
    dx = tuple(c.strip() for c in fields["dx"].split(",") if c.strip())
    bad = [c for c in dx if not c.isdigit()]
    if bad or not dx:
        raise LoaderError(hea, f"# Dx: {fields['dx']!r} is not a comma-separated list of SNOMED CT codes")
    prefix = re.match(r"[A-Za-z]*", hea.stem).group(0)
    return {"age": _age(fields.get("age", ""), hea), "sex": _sex(fields.get("sex", ""), hea), "dx": dx,
            "database": prefix}


def read_cinc(path: str | Path, *, channels=CINC_LEADS, dx_codes=None, nan_policy: str = "fail",
              record_id: str | None = None) -> Recording:
    """One challenge record as a :class:`Recording` in mV with normalised lead names.

    Labels: age, sex, dx (codes joined by commas), database (record prefix) and, when
    ``dx_codes`` is given, one 0/1 column ``dx_<code>`` per code. ``record_id`` (default the
    record name) is also the patient id: the challenge data carry no patient ids.
    """
    path = Path(path)
    meta = read_cinc_header(path)
    labels = {"age": meta["age"], "sex": meta["sex"], "dx": ",".join(meta["dx"]), "database": meta["database"]}
    for code in dx_codes or ():
        labels[f"dx_{code}"] = int(str(code) in meta["dx"])
    hea = path if path.suffix == ".hea" else path.with_suffix(".hea")
    record_id = record_id or hea.stem
    return read_wfdb(hea, channels=channels, patient_id=record_id, record_id=record_id, labels=labels,
                     nan_policy=nan_policy)


def _read_prepared(channels, dx_codes, fs, leads, root, path) -> Recording:
    rec = read_cinc(path, channels=channels, dx_codes=dx_codes, record_id=relative_id(path, root))
    return prepare(rec, fs=fs, channels=leads)


def _codes_seen(headers, on_error: str, skipped: list) -> list:
    """Every Dx code in the headers, numerically sorted; an unreadable header raises or is listed in ``skipped``."""
    seen = set()
    for hea in headers:
        try:
            seen.update(read_cinc_header(hea)["dx"])
        except LoaderError as err:
            if on_error == "raise":
                raise
            skipped.append({"path": err.path, "problem": err.problem})
    return sorted(seen, key=int)


def load_cinc(root: str | Path, cache_dir: str | Path | None = None, *, channels=CINC_LEADS, dx_codes=None,
              on_error: str = "raise", progress: bool = True, workers: int = 0, fs: float | None = None,
              leads=None) -> WaveformCache:
    """Load every challenge record under ``root`` (searched recursively) into a :class:`WaveformCache`.

    ``dx_codes``: codes to expand into 0/1 ``dx_<code>`` columns; default every code seen in
    the headers. Record (and patient) ids are the headers' paths relative to ``root``. Unreadable
    records raise naming the file, or with ``on_error="skip"`` are left
    out and listed in ``cache.report["skipped"]``. The cache (default :func:`default_cache_dir`
    ``("cinc", fingerprint)``, never inside ``root``) is rebuilt only when a source file's content changes. ``fs`` resamples every record to one rate
    (:func:`resample`; the databases differ: INCART is 257 Hz, PTB 1000 Hz); without it a record at
    another rate than the first raises naming both (or is skipped and listed). ``leads``
    harmonises to that lead set instead of requiring ``channels``: missing leads are zeros and
    listed in the index column ``missing_channels`` (see ``WaveformCache.channel_mask``).
    """
    root = Path(root)
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    headers = sorted(p for p in root.rglob("*.hea") if ".tscl_cache" not in p.parts)
    if not headers:
        raise LoaderError(root, "no .hea files found")
    skipped: list = []
    if dx_codes is None:
        dx_codes = _codes_seen(headers, on_error, skipped)
        headers = [h for h in headers if str(h) not in {s["path"] for s in skipped}]
    sources = [f for files in record_files(h.with_suffix("") for h in headers).values() for f in files]
    if leads is not None:
        channels = None

    def build():
        recs = read_all(partial(_read_prepared, channels, list(dx_codes), fs, leads, root), headers, workers=workers,
                        progress=progress, desc=f"reading {root.name}", on_error=on_error, skipped=skipped)
        recs = check_same_channels(recs, leads or channels, on_error, skipped)
        return check_same_rate(recs, on_error, skipped), {"skipped": skipped}

    return cached_load("cinc", sources, f"cinc;channels={channels};dx={list(dx_codes)};on_error={on_error};fs={fs};"
                       f"leads={leads};ids=relative", cache_dir, build, root=root)
