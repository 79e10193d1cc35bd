"""Memory-mapped waveform cache: shards of int16/float16/float32 payloads plus a parquet index.

A cache folder holds ``shards/<key>-NNNNN.bin`` (recordings' samples back to back, each in the
smallest lossless encoding: int16 with per-channel ADC gain/baseline where the source's
resolution allows, see :mod:`.shards`), ``index.parquet`` (one row per recording: patient_id,
record_id, fs, n_channels, n_samples, offset, channels, visit_time, source, label columns,
nan_samples, missing_channels, shard, encoding), ``labels.json``, ``fingerprint.txt``,
``report.json``, ``sources.parquet`` (each source file's relative path, stats and SHA-256) and
``manifest.json`` (format version, source fingerprint, every file's and shard's size and SHA-256),
written last. Opening parses no header and reads no sample: the index is read and the shards mapped.

Integrity: every open checks each file's and shard's size against the manifest (cheap: no data
is read); ``verify=True`` also checks the hashes. A cache whose manifest is missing, damaged or
of another format, or whose files fail the check, is refused naming the file; the loaders then
rebuild it and say so in a warning. Builders stage their files in a folder ``.build-<key>`` of
the cache folder and commit by renaming under an exclusive ``flock`` on ``.lock`` (readers open
under a shared one), so concurrent builders of one cache both succeed and leave one consistent
cache; staged files are removed on any error, and ones left by a killed builder are removed by
the next build, except the finished shards of a :class:`~.shards.Plan` build, which the next
build of the same sources resumes from.

Builds: :class:`~.shards.Plan` builds (``load_wfdb_cohort``, ``load_wfdb_windows``) split the
items into shards of about ``shard_bytes`` (default 1 GiB; at least 64 shards where the items
allow, so that every core has work) and write them in worker processes (default: every core,
for builds of at least 1,024 items), each shard from its own items, so the result is the same
bytes whatever the number of workers. Other loaders hand a stream of recordings, written by one
process into shards of ``shard_bytes``.
"""
from __future__ import annotations

import errno
import gc
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import polars as pl

from tscl.progress import progress_bar

from . import shards as _shards
from .recording import LoaderError, Recording
from .shards import Plan, RowBuffer, ShardWriter, concat_index, finish_index, index_row, rate_problem
from .sources import content_fingerprint, files_key, hash_file, merge_tables, read_table, stat_files, write_table

try:
    import fcntl
except ImportError:  # not POSIX: no locking (unique staging folders still keep builders apart)
    fcntl = None

__all__ = ["WaveformCache", "build_cache", "fingerprint_files", "open_fresh_cache", "read_all", "ON_ERROR",
           "hash_file", "cache_root", "default_cache_dir", "check_same_rate", "cached_load", "Plan", "configure",
           "cache_options", "CacheOptions", "handed_over", "recording_opens", "trusting", "handoff_key"]

ON_ERROR = ("raise", "skip")

_INDEX = "index.parquet"
_LABELS = "labels.json"
_FINGERPRINT = "fingerprint.txt"
_REPORT = "report.json"
_SOURCES = "sources.parquet"
_MANIFEST = "manifest.json"
_LOCK = ".lock"
_SHARDS = "shards"
_LEGACY = ("signals.f32",)  # files of older formats, removed when a cache is rebuilt over them
_MANIFEST_VERSION = 3
_MIN_SHARDS = 64
_PARALLEL_FROM = 1024  # items: below this, the default build runs in this process


# ---- options -------------------------------------------------------------------------------------

@dataclass
class CacheOptions:
    """How caches are built and checked (the CLI's ``--workers``, ``--verify`` and ``--shard-mb``).

    ``workers``: processes that write shards (None: every core for builds of >= 1,024 items; 0 or 1: this
    process). ``verify``: hash every source file and every cache file on open. ``shard_bytes``: target size
    of a shard."""

    workers: int | None = None
    verify: bool = False
    shard_bytes: int = 1 << 30


_OPTIONS = CacheOptions()


def configure(**changes) -> CacheOptions:
    """Set cache options for this process (:class:`CacheOptions` fields); returns the previous options."""
    global _OPTIONS
    previous = _OPTIONS
    changed = replace(_OPTIONS, **changes)
    if changed.workers is not None and changed.workers < 0:
        raise ValueError(f"workers must be >= 0, got {changed.workers}")
    if changed.shard_bytes <= 0:
        raise ValueError(f"shard_bytes must be > 0, got {changed.shard_bytes}")
    _OPTIONS = changed
    return previous


@contextmanager
def cache_options(**changes):
    """``configure(**changes)`` for the duration of a ``with`` block."""
    previous = configure(**changes)
    try:
        yield _OPTIONS
    finally:
        configure(**vars(previous))


def cache_root() -> Path:
    """Where caches go by default: ``$TSCL_CACHE`` if set, else ``~/.cache/tscl`` (never a data folder)."""
    env = os.environ.get("TSCL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tscl"


def default_cache_dir(kind: str, fingerprint: str) -> Path:
    """The per-user cache folder for a loader (``kind``, e.g. ``"cinc"``) and a source fingerprint:
    ``cache_root() / kind / fingerprint[:16]``. Keyed by content, so a moved or read-only
    dataset finds its cache, and two datasets never share one."""
    if not kind or any(c in kind for c in "/\\") or kind.startswith("."):
        raise ValueError(f"cache kind must be a plain folder name, got {kind!r}")
    return cache_root() / kind / fingerprint[:16]


# ---- locks, manifest, integrity ------------------------------------------------------------------

@contextmanager
def _locked(cache_dir: Path, exclusive: bool):
    """Hold ``cache_dir/.lock`` (exclusive for committing a build, shared for opening)."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(cache_dir / _LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        try:  # a read-only cache folder: lock the existing file, or nobody can be writing here
            fd = os.open(cache_dir / _LOCK, os.O_RDONLY)
        except OSError:
            yield
            return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _manifest_text(cache_dir: Path) -> str | None:
    try:
        return (cache_dir / _MANIFEST).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _parse_manifest(cache_dir: Path, text: str | None) -> dict | LoaderError | None:
    """The manifest; None where there is none (never built, or a build still under way); a
    :class:`LoaderError` naming it where it is damaged or of another format."""
    path = cache_dir / _MANIFEST
    if text is None:
        return LoaderError(path, "unreadable; rebuild the cache") if path.exists() else None
    try:
        manifest = json.loads(text)
    except ValueError:
        return LoaderError(path, "damaged (not valid JSON); rebuild the cache")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return LoaderError(path, "damaged (not a cache manifest); rebuild the cache")
    if manifest.get("version") != _MANIFEST_VERSION:
        return LoaderError(path, f"written by another version of tscl (cache format {manifest.get('version')}, this "
                                 f"one reads {_MANIFEST_VERSION}); rebuild the cache")
    if not isinstance(manifest.get("shards"), list):
        return LoaderError(path, "damaged (no shard list); rebuild the cache")
    return manifest


def _read_manifest(cache_dir: Path) -> dict | LoaderError | None:
    return _parse_manifest(cache_dir, _manifest_text(cache_dir))


def _entries(cache_dir: Path, manifest: dict) -> Iterator[tuple[Path, dict]]:
    for name, want in sorted(manifest["files"].items()):
        yield cache_dir / name, want
    for shard in manifest["shards"]:
        yield cache_dir / _SHARDS / shard["name"], shard


def _check_files(cache_dir: Path, manifest: dict, hashes: bool) -> None:
    """Sizes (and with ``hashes`` the SHA-256 hashes) of the cache files and shards against the manifest."""
    for path, want in _entries(cache_dir, manifest):
        try:
            size = path.stat().st_size
        except OSError:
            raise LoaderError(path, "cache file missing; rebuild the cache") from None
        if size != want["bytes"]:
            raise LoaderError(path, f"{'truncated' if size < want['bytes'] else 'grown'}: {size} bytes, the manifest "
                                    f"records {want['bytes']}; rebuild the cache")
        if hashes and hash_file(path) != want["sha256"]:
            raise LoaderError(path, f"content differs from the hash in {_MANIFEST} (corrupted); rebuild the cache")


def open_fresh_cache(cache_dir: str | Path, fingerprint: str, *, verify: bool = False) -> "WaveformCache | None":
    """The cache in ``cache_dir`` if it was built from sources with this ``fingerprint``, else None.

    A cache that fails its checks (a missing, damaged or older-format manifest; a file or shard of
    the wrong size or, with ``verify``, hash; an unreadable index) is not served: a warning names
    the file and says it is being rebuilt, and None is returned, so the caller rebuilds it. A
    folder without a manifest (never finished) is not fresh, without a warning.
    """
    cache_dir = Path(cache_dir)
    manifest = _read_manifest(cache_dir)
    if manifest is None or (isinstance(manifest, dict) and manifest.get("fingerprint") != fingerprint):
        return None
    if isinstance(manifest, LoaderError):
        warnings.warn(f"{manifest}; rebuilding it", stacklevel=2)
        return None
    try:
        return WaveformCache(cache_dir, verify=verify)
    except LoaderError as err:
        warnings.warn(f"{err}; rebuilding it", stacklevel=2)
        return None


# ---- the read side -------------------------------------------------------------------------------

def _map(path: Path, size: int) -> np.ndarray:
    return np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)


class WaveformCache:
    """Read side of a cache folder. ``cache[i]`` is recording i's ``[C,T]`` float32 samples (a memmap view for
    float32 payloads, decoded for int16/float16 ones); ``cache.read(rows)`` a batch ``[B,C,T]``."""

    def __init__(self, cache_dir: str | Path, *, verify: bool = False):
        self.dir = Path(cache_dir)
        with _locked(self.dir, exclusive=False):
            manifest = _read_manifest(self.dir)
            if manifest is None:
                raise LoaderError(self.dir / _MANIFEST, "missing (an unfinished build, or not a cache); rebuild "
                                                        "the cache")
            if isinstance(manifest, LoaderError):
                raise manifest
            _check_files(self.dir, manifest, hashes=verify)
            try:
                index = pl.read_parquet(self.dir / _INDEX)
            except Exception as err:  # polars raises several types for a damaged file
                raise LoaderError(self.dir / _INDEX, f"damaged ({type(err).__name__}); rebuild the cache") from None
            self._manifest = manifest
            self._maps = [_map(self.dir / _SHARDS / s["name"], s["bytes"]) for s in manifest["shards"]]
        self._set_index(index)
        self._check_index()

    def _set_index(self, index: pl.DataFrame) -> None:
        self.index = index
        arrays = index.select("shard", "offset", "encoding", "n_channels", "n_samples").to_numpy().astype(np.int64)
        self._shard, self._offsets, self._codes, self._shapes = arrays[:, 0], arrays[:, 1], arrays[:, 2], arrays[:, 3:]

    def _check_index(self) -> None:
        if self.index.height != self._manifest.get("recordings"):
            raise LoaderError(self.dir / _INDEX, f"{self.index.height} rows, the manifest records "
                                                 f"{self._manifest.get('recordings')}; rebuild the cache")
        if not len(self):
            return
        c, t = self._shapes[:, 0], self._shapes[:, 1]
        size = np.select([self._codes == 0, self._codes == 1, self._codes == 2], [4 * c * t, 2 * c * t, 20 * c + 2 * c * t],
                         -1)
        sizes = np.array([len(m) for m in self._maps], dtype=np.int64)
        bad = ((self._shard < 0) | (self._shard >= len(sizes)) | (size < 0) | (self._offsets < 0)
               | (self._offsets % 16 != 0))
        bad[~bad] |= self._offsets[~bad] + size[~bad] > sizes[self._shard[~bad]]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise LoaderError(self.dir / _INDEX, f"row {i} ({self.index['record_id'][i]}) points outside its shard; "
                                                 "rebuild the cache")

    def verify(self) -> None:
        """Hash every cache file and shard and compare with the manifest; :class:`LoaderError` naming the first
        that differs."""
        _check_files(self.dir, self._manifest, hashes=True)

    def __len__(self) -> int:
        return self.index.height

    def __getitem__(self, i: int) -> np.ndarray:
        c, t = self._shapes[i]
        return _shards.decode_one(self._maps[self._shard[i]], int(self._offsets[i]), int(self._codes[i]), int(c), int(t))

    def stored(self, i: int) -> dict:
        """How recording ``i`` is stored: ``{"encoding"}``, and for ``i16`` also ``digital`` (the ``[C, T]`` int16
        values) and per channel ``gain``, ``baseline`` and ``unit``."""
        code, c, t = int(self._codes[i]), *(int(v) for v in self._shapes[i])
        out: dict = {"encoding": _shards.ENCODINGS[code]}
        if code == _shards.I16:
            raw = self._maps[self._shard[i]][int(self._offsets[i]):]
            out.update(gain=raw[: 8 * c].view("<f8").copy(), baseline=raw[8 * c: 16 * c].view("<f8").copy(),
                       unit=raw[16 * c: 20 * c].view("<f4").copy(),
                       digital=raw[20 * c: 20 * c + 2 * c * t].view("<i2").reshape(c, t).copy())
        return out

    def read(self, rows) -> np.ndarray:
        """Recordings ``rows`` (all of one shape) as one float32 ``[B, C, T]`` array: one gather per shard and
        encoding."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not rows.size:
            c, t = (self._shapes[0] if len(self) else (0, 0))
            return np.zeros((0, int(c), int(t)), np.float32)
        shapes = self._shapes[rows]
        if (shapes != shapes[0]).any():
            raise ValueError(f"{self.dir}: recordings differ in shape; read them one by one")
        c, t = (int(v) for v in shapes[0])
        keys = self._shard[rows] * 4 + self._codes[rows]
        if (keys == keys[0]).all():  # one shard, one encoding: no second copy
            return _shards.decode_rows(self._maps[keys[0] // 4], self._offsets[rows], int(keys[0] % 4), c, t)
        out = np.empty((rows.size, c, t), np.float32)
        for key in np.unique(keys):
            sel = np.flatnonzero(keys == key)
            out[sel] = _shards.decode_rows(self._maps[key // 4], self._offsets[rows[sel]], int(key % 4), c, t)
        return out

    @property
    def fingerprint(self) -> str:
        """The source fingerprint the cache was built from (as recorded in its manifest)."""
        return self._manifest.get("fingerprint", "")

    @property
    def nbytes(self) -> int:
        """Bytes of samples on disk (every shard)."""
        return int(sum(s["bytes"] for s in self._manifest["shards"]))

    def encodings(self) -> dict[str, int]:
        """How many recordings each encoding stores (``{"i16": n, "f16": n, "f32": n}``)."""
        counts = np.bincount(self._codes, minlength=3)
        return {name: int(counts[code]) for code, name in _shards.ENCODINGS.items()}

    @property
    def fs(self) -> float:
        """The cache's one sampling rate; a cache holding several raises, naming two recordings and their rates."""
        rates = self.index["fs"]
        if rates.len() == 0:
            raise LoaderError(self.dir, "empty cache has no sampling rate")
        other = rates != rates[0]
        if other.any():
            i = int(other.arg_true()[0])
            raise LoaderError(self.dir, f"recordings differ in sampling rate: {self.index['record_id'][i]} at "
                                        f"{rates[i]:g} Hz, {self.index['record_id'][0]} at {rates[0]:g} Hz")
        return float(rates[0])

    @property
    def report(self) -> dict[str, Any]:
        """What the loader skipped or repaired while building (``{"skipped": [{"path", "problem"}], ...}``)."""
        path = self.dir / _REPORT
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def label_columns(self) -> list[str]:
        return json.loads((self.dir / _LABELS).read_text())

    def channel_mask(self) -> np.ndarray:
        """``[N, C]`` bool, True where a channel is present (False for zero-filled missing leads)."""
        names = [c.split(",") for c in self.index["channels"].to_list()]
        missing = ([set(m.split(",")) - {""} for m in self.index["missing_channels"].to_list()]
                   if "missing_channels" in self.index.columns else [set()] * len(self))
        width = max((len(n) for n in names), default=0)
        mask = np.zeros((len(self), width), dtype=bool)
        for i, (n, m) in enumerate(zip(names, missing)):
            mask[i, : len(n)] = [c not in m for c in n]
        return mask

    def stack(self) -> "_Rows":
        """All recordings as one ``[N,C,T]`` array-like (requires one shape for the cohort): indexing it
        (an int, a slice, rows) reads only those rows; ``np.asarray`` reads them all."""
        if len(self) and (self._shapes != self._shapes[0]).any():
            raise ValueError(f"{self.dir}: recordings differ in shape; read them one by one")
        return _Rows(self)

    def subset(self, rows) -> "WaveformCache":
        """A view of the rows ``rows`` (indices or a boolean mask) sharing this cache's memory maps.

        Used to restrict pretraining or probing to a split (e.g. PTB-XL folds 1-8); the view's
        ``index`` is the selected rows, in the given order, and ``stack()`` reads only them."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise ValueError(f"boolean row mask must have {len(self)} entries, got {rows.shape}")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for a cache of {len(self)} recordings")
        view = object.__new__(WaveformCache)
        view.dir, view._maps, view._manifest = self.dir, self._maps, self._manifest
        view.index = self.index[rows] if rows.size else self.index.clear()
        view._shard, view._offsets, view._codes = self._shard[rows], self._offsets[rows], self._codes[rows]
        view._shapes = self._shapes[rows]
        return view


class _Rows:
    """``[N, C, T]`` float32 rows of a cache, read on indexing (an int, a slice, an array of rows)."""

    def __init__(self, cache: WaveformCache):
        self._cache = cache
        c, t = (int(v) for v in cache._shapes[0]) if len(cache) else (0, 0)
        self.shape, self.dtype = (len(cache), c, t), np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        if isinstance(rows, (int, np.integer)):
            return np.asarray(self._cache[int(rows) % len(self) if rows < 0 else int(rows)], dtype=np.float32)
        if isinstance(rows, slice):
            return self._cache.read(np.arange(len(self))[rows])
        return self._cache.read(np.arange(len(self))[rows] if np.asarray(rows).dtype == bool else rows)

    def __array__(self, dtype=None, copy=None):
        out = self._cache.read(np.arange(len(self)))
        return out.astype(dtype) if dtype is not None else out


# ---- building ------------------------------------------------------------------------------------

def _io_error(err: OSError, where: Path) -> LoaderError:
    """One line for an I/O fault while writing a cache: the path, what happened, what to do."""
    path = err.filename or where
    code = err.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        what = ("no space left on device while writing the cache; free space there or point --cache / $TSCL_CACHE "
                "at a disk with room (nothing was committed; the previous cache, if any, is kept)")
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = (f"cannot write the cache here ({err.strerror or 'not writable'}); point --cache / $TSCL_CACHE at a "
                "writable folder")
    else:
        what = f"{err.strerror or err} while writing the cache; check the folder, or point --cache / $TSCL_CACHE elsewhere"
    return LoaderError(path, what)


def _writable_dir(cache_dir: Path) -> Path:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LoaderError(cache_dir, f"cannot create the cache folder ({err.strerror or err}); point --cache / "
                                     "$TSCL_CACHE at a writable folder") from None
    return cache_dir


def _sweep_stale_tmp(cache_dir: Path, keep: str = "") -> None:
    """Remove temporary files and staging folders of builds that died (their flock is free); live builders hold
    theirs. ``keep``: this build's staging folder (a resumed build keeps its finished shards)."""
    if fcntl is None:
        return
    for path in [*cache_dir.glob(".*.tmp"), *cache_dir.glob(".build-*")]:
        if path.name == keep:
            continue
        target = path / ".active" if path.is_dir() else path
        try:
            fd = os.open(target, os.O_RDONLY)
        except OSError:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        finally:
            os.close(fd)


class _Staging:
    """A build's folder inside the cache folder, held under a shared flock on its ``.active`` while the build
    lives (so a sweep leaves it alone and two builders of one plan share it)."""

    def __init__(self, cache_dir: Path, name: str | None = None):
        self.dir = cache_dir / (name or f".build-{os.getpid()}-{os.urandom(4).hex()}")
        self.dir.mkdir(exist_ok=True)
        self.fd = os.open(self.dir / ".active", os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_SH)

    def release(self, remove: bool) -> None:
        """Stop holding the folder; remove it (when asked) unless another builder still holds it."""
        if self.fd is None:
            return
        try:
            if remove and fcntl is not None:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    remove = False  # another builder of the same plan is still working in it
            if remove:
                shutil.rmtree(self.dir, ignore_errors=True)
        finally:
            os.close(self.fd)
            self.fd = None


def _shard_prefix(fingerprint: str) -> str:
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:12]


def _commit(cache_dir: Path, staging: Path, fingerprint: str, index: pl.DataFrame, shard_infos: list[dict],
            label_cols: list[str], report: dict, sources: pl.DataFrame | None, stale: str | None) -> bool:
    """Write the index and small files into a folder of this builder's own in ``staging``, then move everything
    into place under the folder's exclusive lock, the manifest last. False (nothing moved) when another builder
    committed this fingerprint first (a cache other than the damaged one this build replaces): keep theirs."""
    shards_from = staging
    staging = Path(tempfile.mkdtemp(dir=staging, prefix="commit-"))  # builders of one plan share `staging`
    try:
        return _commit_files(cache_dir, shards_from, staging, fingerprint, index, shard_infos, label_cols, report,
                             sources, stale)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _commit_files(cache_dir: Path, shards_from: Path, staging: Path, fingerprint: str, index: pl.DataFrame,
                  shard_infos: list[dict], label_cols: list[str], report: dict, sources: pl.DataFrame | None,
                  stale: str | None) -> bool:
    index.write_parquet(staging / _INDEX)
    (staging / _LABELS).write_text(json.dumps(label_cols))
    (staging / _FINGERPRINT).write_text(fingerprint)
    (staging / _REPORT).write_text(json.dumps(report, indent=1, default=str))
    top = [_INDEX, _LABELS, _FINGERPRINT, _REPORT]
    if sources is not None and write_table(sources, staging / _SOURCES):
        top.append(_SOURCES)
    prefix = _shard_prefix(fingerprint)
    names = [f"{prefix}-{i:05d}.bin" for i in range(len(shard_infos))]
    manifest = {"version": _MANIFEST_VERSION, "fingerprint": fingerprint, "recordings": index.height,
                "files": {n: {"bytes": (staging / n).stat().st_size, "sha256": hash_file(staging / n)} for n in top},
                "shards": [{"name": n, "bytes": s["bytes"], "sha256": s["sha256"], "rows": s["rows"]}
                           for n, s in zip(names, shard_infos)]}
    (staging / _MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    with _locked(cache_dir, exclusive=True):
        text = _manifest_text(cache_dir)
        current = _parse_manifest(cache_dir, text)
        if (fingerprint and isinstance(current, dict) and current.get("fingerprint") == fingerprint
                and text != stale and _sizes_ok(cache_dir, current)):
            return False
        (cache_dir / _MANIFEST).unlink(missing_ok=True)  # no manifest = not a cache, until the last rename
        (cache_dir / _SHARDS).mkdir(exist_ok=True)
        for i, name in enumerate(names):
            os.replace(shards_from / f"{i:05d}.bin", cache_dir / _SHARDS / name)
        for name in top:
            os.replace(staging / name, cache_dir / name)
        for name in (_SOURCES, *_LEGACY):
            if name not in top:
                (cache_dir / name).unlink(missing_ok=True)
        for old in (cache_dir / _SHARDS).iterdir():
            if old.name not in names:  # an older build's shards (a reader that mapped them keeps its mapping)
                old.unlink(missing_ok=True)
        os.replace(staging / _MANIFEST, cache_dir / _MANIFEST)
    return True


def _sizes_ok(cache_dir: Path, manifest: dict) -> bool:
    try:
        _check_files(cache_dir, manifest, hashes=False)
    except LoaderError:
        return False
    return True


def _warn_quality(notes: dict, fs: float) -> None:
    averaged = notes.get("frame_averaged")
    if averaged:
        source, channels = next(iter(averaged.items()))
        example = ", ".join(f"{c} ({v['rate_hz']:g} Hz)" for c, v in channels.items())
        warnings.warn(f"{len(averaged)} recording(s) hold channels sampled faster than the frame rate, averaged down "
                      f"to it (e.g. {example} read at {fs:g} Hz in {source}); see cache.report['quality']",
                      stacklevel=4)


def _with_quality(report: dict, notes: dict, fs: float) -> dict:
    report = dict(report or {})
    if notes:
        report["quality"] = {k: [{"source": src, "value": v} for src, v in d.items()] for k, d in notes.items()}
        _warn_quality(notes, fs)
    return report


def check_same_rate(recordings: Iterable[Recording], on_error: str = "raise",
                    skipped: list | None = None) -> Iterator[Recording]:
    """Yield recordings sampled at the first one's rate. Another rate raises a :class:`LoaderError`
    naming both recordings and their rates, or with ``on_error="skip"`` is left out and listed in ``skipped``
    (once per source file, so the windows of one record make one entry)."""
    first, listed = None, set()
    for rec in recordings:
        if first is None:
            first = rec
        elif rec.fs != first.fs:
            err = LoaderError(rec.source or rec.record_id, rate_problem(rec, first))
            if on_error == "raise":
                raise err
            if skipped is not None and err.path not in listed:  # windows of one record: listed once
                listed.add(err.path)
                skipped.append({"path": err.path, "problem": err.problem})
            continue
        yield rec


def build_cache(recordings: Iterable[Recording] | Plan, cache_dir: str | Path, fingerprint: str = "",
                report: dict[str, Any] | None = None, *, verify: bool = True, allow_mixed_rates: bool = False,
                sources: pl.DataFrame | None = None, workers: int | None = None,
                shard_bytes: int | None = None, stale: str | None = None) -> WaveformCache:
    """Write recordings to a cache folder atomically; return the cache opened.

    ``recordings`` is a stream of recordings (written by this process into shards of ``shard_bytes``) or
    a :class:`~.shards.Plan` (shards written by ``workers`` processes, resumable: see the module
    docstring); ``workers`` and ``shard_bytes`` default to :func:`configure`'s. Every shard is hashed
    while written and, with ``verify`` (default), read back and checked before the commit; the manifest
    lists every file's and shard's size and hash. The commit takes the folder's exclusive lock and
    renames the files into place with the manifest last; if a cache with this fingerprint was
    committed meanwhile by another builder, this build's files are discarded and that cache is opened.
    On any error (an unreadable recording, a full disk) the staged files are removed and the error
    propagates (an I/O fault as one :class:`LoaderError` naming the path and what to do); the
    previous cache, if any, is left as it was.

    Recordings must share one sampling rate (a recording at another rate raises a
    :class:`LoaderError` naming it, the first recording and both rates), unless
    ``allow_mixed_rates``; then ``WaveformCache.fs`` refuses and consumers read ``index["fs"]``.

    ``report`` (JSON-serialisable; read back as ``WaveformCache.report``) is written after the
    recordings are consumed, so a generator may fill it while it yields. Notes a reader left in
    ``Recording.quality`` that change what the samples mean (``frame_averaged``) are added to
    it under ``report["quality"]``, once per source file, with a warning. ``sources`` (a
    :func:`~.sources.stat_files` table with hashes) is kept as the cache's ``sources.parquet``.
    """
    cache_dir = _writable_dir(Path(cache_dir))
    shard_bytes = shard_bytes or _OPTIONS.shard_bytes
    try:
        if isinstance(recordings, Plan):
            plan = replace(recordings, allow_mixed_rates=recordings.allow_mixed_rates or allow_mixed_rates)
            committed = _build_plan(plan, cache_dir, fingerprint, sources, workers, shard_bytes, verify, stale)
        else:
            committed = _build_stream(recordings, cache_dir, fingerprint, report, allow_mixed_rates, sources,
                                      shard_bytes, verify, stale)
    except OSError as err:
        raise _io_error(err, cache_dir) from None
    return committed


def _verify_shard(path: Path, info: dict) -> None:
    if hash_file(path) != info["sha256"]:
        raise LoaderError(path, "the shard read back differs from what was written; not committing it")


def _build_stream(recordings, cache_dir: Path, fingerprint: str, report, allow_mixed_rates: bool, sources,
                  shard_bytes: int, verify: bool, stale: str | None) -> WaveformCache:
    _sweep_stale_tmp(cache_dir)
    staging = _Staging(cache_dir)
    writer = None
    try:
        rows, infos, notes, first = RowBuffer(), [], {}, None
        for rec in recordings:
            if first is None:
                first = rec
            elif rec.fs != first.fs and not allow_mixed_rates:
                raise LoaderError(rec.source or rec.record_id, rate_problem(rec, first))
            _shards._note_quality(notes, rec)
            if writer is None or writer.size >= shard_bytes:
                if writer is not None:
                    infos.append(_close_shard(writer, verify))
                writer = ShardWriter(staging.dir / f"{len(infos):05d}.bin")
            offset, code = writer.add(rec)
            rows.add(index_row(rec, offset, len(infos), code))
        if writer is not None:
            infos.append(_close_shard(writer, verify))
        if not rows.height:
            raise LoaderError(cache_dir, f"no recordings to cache{_skipped_note(report)}")
        index = finish_index(rows.frame())
        infos = [{**info, "rows": int(n)} for info, n in
                 zip(infos, np.bincount(index["shard"].to_numpy(), minlength=len(infos)))]
        report = _with_quality(report, notes, first.fs if first else 0.0)
        _commit(cache_dir, staging.dir, fingerprint, index, infos, rows.label_cols, report, sources, stale)
    finally:
        if writer is not None:
            writer.abandon()
        staging.release(remove=True)
    return WaveformCache(cache_dir)


def _close_shard(writer: ShardWriter, verify: bool) -> dict:
    size, digest = writer.close()
    info = {"bytes": size, "sha256": digest}
    if verify:
        _verify_shard(writer.path, info)
    return info


# ---- plan builds: shards written by worker processes, resumable ----------------------------------

def _resolve_workers(workers: int | None, n_items: int, n_shards: int) -> int:
    if workers is None:
        workers = _OPTIONS.workers
    if workers is None:
        workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) \
            if n_items >= _PARALLEL_FROM else 0
    return min(workers, n_shards) if workers > 1 else 0


def _shard_done(staging: Path, i: int) -> dict | None:
    try:
        info = json.loads((staging / f"{i:05d}.json").read_text())
    except (OSError, ValueError):
        return None
    ok = ((staging / f"{i:05d}.bin").exists() and (staging / f"{i:05d}.bin").stat().st_size == info.get("bytes")
          and (staging / f"{i:05d}.parquet").exists())
    return info if ok else None


def _shard_job(plan: Plan, first, staging: Path, i: int, verify: bool, wait: bool) -> dict | None:
    """Build shard ``i`` of ``plan`` (its items only) into ``staging``, unless it is done or another builder
    holds it (then None, or with ``wait`` wait for it). Runs in a worker process or in the builder."""
    fd = os.open(staging / f"{i:05d}.claim", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return None
        info = _shard_done(staging, i)
        if info is not None:
            return info
        part = staging / f".{i:05d}.bin.part"
        info = _shards.write_shard(plan, first, 0, len(plan), i, part)
        if verify:
            _verify_shard(part, info)
        os.replace(part.with_suffix(".parquet"), staging / f"{i:05d}.parquet")
        os.replace(part, staging / f"{i:05d}.bin")
        _shards.write_json(staging / f"{i:05d}.json", info)  # the shard is done once this file exists
        return info
    finally:
        os.close(fd)


def _plan_shards(plan: Plan, est: int, shard_bytes: int) -> list[tuple[int, int]]:
    n = len(plan)
    per = max(1, min(-(-n // _MIN_SHARDS), shard_bytes // max(est, 1)))
    return [(a, min(a + per, n)) for a in range(0, n, per)]


def _committed_as(cache_dir: Path, fingerprint: str, stale: str | None) -> bool:
    text = _manifest_text(cache_dir)
    manifest = _parse_manifest(cache_dir, text)
    return (text != stale and isinstance(manifest, dict) and manifest.get("fingerprint") == fingerprint
            and _sizes_ok(cache_dir, manifest))


def _shards_in_pool(jobs: dict, todo: list, workers: int, infos: dict, busy: list, bar) -> None:
    """Run the shard jobs ``todo`` in ``workers`` processes: each finished shard's info into ``infos``, the ones
    another builder holds into ``busy``; a failure cancels what has not started."""
    # spawn: a forked child of a process whose polars thread pool is running can deadlock in polars
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(jobs[i], False): i for i in todo}
        try:
            for fut in as_completed(futures):
                info = fut.result()
                (busy.append(futures[fut]) if info is None else infos.__setitem__(futures[fut], info))
                bar.update(info is not None)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _run_shards(plan: Plan, first, bounds, staging: Path, workers: int, verify: bool, cache_dir: Path,
                fingerprint: str, stale: str | None) -> list[dict] | None:
    """Every shard's info, in order (None when another builder committed this cache meanwhile)."""
    infos: dict[int, dict] = {i: info for i in range(len(bounds)) if (info := _shard_done(staging, i))}
    todo = [i for i in range(len(bounds)) if i not in infos]
    bar = progress_bar(total=len(bounds), initial=len(infos), desc=plan.desc, unit="shard", disable=not plan.progress)
    jobs = {i: partial(_shard_job, replace(plan, items=plan.items[a:b]), first, staging, i, verify) for i, (a, b) in
            enumerate(bounds) if i in todo}
    try:
        busy = []
        if workers:
            _shards_in_pool(jobs, todo, workers, infos, busy, bar)
        else:
            for i in todo:
                if _committed_as(cache_dir, fingerprint, stale):
                    return None
                info = jobs[i](False)
                (busy.append(i) if info is None else infos.__setitem__(i, info))
                bar.update(info is not None)
        for i in sorted(busy):  # held by another builder: wait for it, then build it if that one died
            if _committed_as(cache_dir, fingerprint, stale):
                return None
            infos[i] = jobs[i](True)
            bar.update(1)
    finally:
        bar.close()
    return [infos[i] for i in range(len(bounds))]


def _merge_reports(base: dict, infos: list[dict]) -> tuple[dict, dict]:
    report = json.loads(json.dumps(base, default=str))
    notes: dict = {}
    for info in infos:
        for key, entries in info["report"].items():
            report.setdefault(key, []).extend(entries)
        for key, per_source in info["notes"].items():
            for src, value in per_source.items():
                notes.setdefault(key, {}).setdefault(src, value)
    return report, notes


def _build_plan(plan: Plan, cache_dir: Path, fingerprint: str, sources, workers: int | None, shard_bytes: int,
                verify: bool, stale: str | None) -> WaveformCache:
    first, est = _shards.find_first(plan)
    bounds = _plan_shards(plan, est, shard_bytes)
    key = hashlib.sha256(f"{fingerprint}|{_MANIFEST_VERSION}|{bounds[-1:]}|{len(bounds)}|{shard_bytes}|{first}"
                         .encode()).hexdigest()[:16]
    _sweep_stale_tmp(cache_dir, keep=f".build-{key}")
    staging = _Staging(cache_dir, f".build-{key}")
    remove = True
    try:
        infos = _run_shards(plan, first, bounds, staging.dir, _resolve_workers(workers, len(plan), len(bounds)),
                            verify, cache_dir, fingerprint, stale)
        if infos is None:  # another builder committed it
            return WaveformCache(cache_dir)
        report, notes = _merge_reports(plan.report, infos)
        index = concat_index([pl.read_parquet(staging.dir / f"{i:05d}.parquet") for i in range(len(infos))])
        if not index.height:
            raise LoaderError(cache_dir, f"no recordings to cache{_skipped_note(report)}")
        index = finish_index(index)
        labels: list[str] = []
        for info in infos:
            labels += [c for c in info["labels"] if c not in labels]
        report = _with_quality(report, notes, first.fs if first else 0.0)
        _commit(cache_dir, staging.dir, fingerprint, index, infos, labels, report, sources, stale)
    except (KeyboardInterrupt, SystemExit):
        remove = False  # interrupted: the finished shards stay for the next build to resume from
        raise
    finally:
        staging.release(remove=remove)
    return WaveformCache(cache_dir)


# ---- fingerprints and the loaders' template ------------------------------------------------------

def _memo_path(key: str) -> Path:
    return cache_root() / "sources" / f"{key[:32]}.parquet"


def fingerprint_files(paths: Iterable[str | Path] | pl.DataFrame, extra: str = "", *, root: str | Path | None = None,
                      verify: bool | None = None, cache_dir: str | Path | None = None) -> str:
    """Content fingerprint of source files: each file's name relative to ``root``, its size and the
    SHA-256 of its bytes, plus ``extra`` (the loader's options); see :mod:`.sources`.

    ``root`` defaults to the deepest folder holding every path, so a dataset that is moved, copied or
    mounted elsewhere (read-only included) keeps its fingerprint and reuses its cache, while any
    change of content rebuilds it, whatever the files' modification times say. A file is read only
    when its stats differ from those recorded with its hash (in ``cache_dir``'s ``sources.parquet``
    or the per-file-set table under ``cache_root()/sources``), or with ``verify`` (default: the
    ``verify`` cache option)."""
    return _fingerprint(paths, extra, root, verify, cache_dir)[0]


def _fingerprint(paths, extra: str, root, verify: bool | None, cache_dir) -> tuple[str, pl.DataFrame]:
    stats = paths if isinstance(paths, pl.DataFrame) else stat_files(paths, root)
    memo = _memo_path(files_key(stats, extra))
    known = [Path(cache_dir) / _SOURCES if cache_dir is not None else None, memo]
    fp, table, hashed = content_fingerprint(stats, extra, known, verify=_OPTIONS.verify if verify is None else verify)
    if hashed:  # best effort: an unwritable cache root only costs a re-hash next time
        write_table(merge_tables(table, read_table(memo)), memo)  # every copy of the files seen so far keeps its stats
    return fp, table


def cached_load(kind: str, sources: Iterable[str | Path] | pl.DataFrame, extra: str, cache_dir: str | Path | None,
                build: Callable[[], tuple[Iterable[Recording], dict[str, Any]] | Plan], *,
                root: str | Path | None = None, workers: int | None = None, key: str | None = None) -> WaveformCache:
    """What every loader does around its reading: fingerprint the ``sources``' content (paths, or a
    :func:`~.sources.stat_files` table; with ``extra``, the loader's options; :func:`fingerprint_files`:
    stats, not reads, for files seen before), open the cache in ``cache_dir`` (default
    :func:`default_cache_dir` ``(kind, fingerprint)``) if it was built from them, else call ``build()``
    and write what it returns: ``(recordings, report)`` (a lazy stream; ``report`` is written after it
    is consumed) or a :class:`~.shards.Plan` (built in parallel by ``workers`` processes, resumable).
    See :func:`build_cache`. ``key`` (from :func:`handed_over`) records the cache for :func:`recording_opens`."""
    fp, table = _fingerprint(sources, extra, root, None, cache_dir)
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir(kind, fp)
    cache = open_fresh_cache(target, fp, verify=_OPTIONS.verify)
    if cache is not None:
        del table
        gc.collect()  # the open's cyclic garbage (about 1 KB per source file) goes before training starts
        return _opened(key, cache)
    stale = _manifest_text(target)
    what = build()
    if isinstance(what, Plan):
        return _opened(key, build_cache(what, target, fingerprint=fp, sources=table, stale=stale, workers=workers))
    recordings, report = what
    return _opened(key, build_cache(recordings, target, fingerprint=fp, report=report, sources=table, stale=stale))


# ---- handing a checked cache to the other processes of a node ------------------------------------

_OPENED: dict[str, str] | None = None  # key -> cache folder, for every cache opened while recording_opens() runs
_HANDED: dict[str, str] = {}  # key -> cache folder that another process of this node opened and checked


def handoff_key(kind: str, **parts) -> str:
    """What names one load for :func:`handed_over`: the loader and its arguments (paths made absolute)."""
    def text(v):
        return os.path.abspath(v) if isinstance(v, Path) else repr(v)

    return json.dumps([kind, {k: text(v) for k, v in sorted(parts.items())}])


@contextmanager
def recording_opens():
    """Within the block, every cache a loader opens or builds is recorded as ``{key: folder}`` in the dict yielded
    (what :func:`tscl.distributed.node_local_first` hands from a node's first rank to its other ranks)."""
    global _OPENED
    previous, _OPENED = _OPENED, {}
    try:
        yield _OPENED
    finally:
        _OPENED = previous


@contextmanager
def trusting(handed: dict[str, str]):
    """Within the block, a load named by a key of ``handed`` opens that cache folder from its manifest and index
    alone: no metadata table is read, no source file listed or stat'ed. Only for caches another process of this
    machine opened or built moments ago, whose sources it checked (a node's first rank under torchrun)."""
    global _HANDED
    previous, _HANDED = _HANDED, {**_HANDED, **handed}
    try:
        yield
    finally:
        _HANDED = previous


def handed_over(kind: str, **parts) -> tuple[str, WaveformCache | None]:
    """``(key, cache)``: the cache handed over for this load (see :func:`trusting`), else None, and the key to
    give :func:`cached_load`. A handed-over folder that fails its checks is named in a warning and the load
    goes on from the sources."""
    key = handoff_key(kind, **parts)
    folder = _HANDED.get(key)
    if folder is None:
        return key, None
    try:
        return key, WaveformCache(folder)
    except LoaderError as err:
        warnings.warn(f"{err}; opening it from the sources instead", stacklevel=3)
        return key, None


def _opened(key: str | None, cache: WaveformCache) -> WaveformCache:
    if key is not None and _OPENED is not None:
        _OPENED[key] = str(cache.dir)
    return cache


def _skipped_note(report) -> str:
    skipped = (report or {}).get("skipped") or []
    return f" ({len(skipped)} skipped, first: {skipped[0]})" if skipped else ""


# ---- reading many items -------------------------------------------------------------------------

def _attempt(read_one: Callable, item):
    try:
        return read_one(item)
    except LoaderError as err:
        return err


def _raise_or_skip(err: LoaderError, on_error: str, skipped: list | None) -> None:
    """Raise ``err`` (``on_error="raise"``), or list it as ``{"path", "problem"}`` in ``skipped``."""
    if on_error == "raise":
        raise err
    if skipped is not None:
        skipped.append({"path": err.path, "problem": err.problem})


def read_all(read_one: Callable[[Any], Recording | list[Recording]], items: list, *, workers: int = 0,
             progress: bool = True, desc: str = "reading", on_error: str = "raise",
             skipped: list | None = None) -> Iterator[Recording]:
    """Apply ``read_one`` to every item (in order), yielding recordings; optionally in worker processes.

    ``read_one`` returns a recording or a list of them (windows) and raises :class:`LoaderError`
    for bad input. With ``on_error="raise"`` the first error propagates; with ``"skip"`` the item
    is left out and ``{"path", "problem"}`` is appended to ``skipped``. ``workers > 0`` reads in
    that many processes (``read_one`` and the items must be picklable).
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    attempt = partial(_attempt, read_one)
    pool = ProcessPoolExecutor(workers) if workers and workers > 0 else None
    try:
        results = (pool.map(attempt, items, chunksize=max(1, min(64, len(items) // (8 * workers)))) if pool
                   else map(attempt, items))
        for result in progress_bar(results, total=len(items), desc=desc, disable=not progress):
            if isinstance(result, LoaderError):
                _raise_or_skip(result, on_error, skipped)
                continue
            if isinstance(result, Recording):
                yield result
            else:
                yield from result
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
