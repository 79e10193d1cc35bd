"""Memory-mapped waveform cache: one flat float32 shard plus a parquet index.

A cache folder holds ``signals.f32`` (every recording's ``[C,T]`` samples back to back),
``index.parquet`` (one row per recording: patient_id, record_id, fs, n_channels,
n_samples, offset, channels, visit_time, label columns), ``labels.json``, ``fingerprint.txt``,
``report.json`` and ``manifest.json`` (the source fingerprint and every other file's size and
SHA-256 hash). Opening it parses no header; reading a recording is a slice of the memory map.

Integrity: every open checks each file's size against the manifest and the shard's size
against the index (cheap: no data is read), so a truncated or partly copied cache is refused
naming the file; ``verify=True`` (and every build, before it is committed) also checks the
hashes. Builders write to unique temporary names in the cache folder, each held under an
exclusive ``flock`` while written, and commit by renaming under an exclusive lock on
``.lock`` (readers open under a shared one), so concurrent builders of one cache both succeed
and leave one consistent cache; temporary files are removed on any error, and ones left by a
killed builder (their lock released) are removed by the next build.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import polars as pl

from tscl.progress import progress_bar

from .recording import LoaderError, Recording

try:
    import fcntl
except ImportError:  # not POSIX: no locking (unique temporary names still keep builders apart)
    fcntl = None

__all__ = ["WaveformCache", "build_cache", "fingerprint_files", "open_fresh_cache", "read_all", "ON_ERROR",
           "hash_file", "cache_root", "default_cache_dir", "check_same_rate", "cached_load"]

ON_ERROR = ("raise", "skip")

_SIGNALS = "signals.f32"
_INDEX = "index.parquet"
_LABELS = "labels.json"
_FINGERPRINT = "fingerprint.txt"
_REPORT = "report.json"
_MANIFEST = "manifest.json"
_LOCK = ".lock"
_FILES = (_SIGNALS, _INDEX, _LABELS, _FINGERPRINT, _REPORT)
_MANIFEST_VERSION = 2
_CHUNK = 1 << 22


def hash_file(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 4 MiB chunks (SHA-256 runs in hardware on current x86 and ARM CPUs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


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


def _read_manifest(cache_dir: Path) -> dict | None:
    try:
        manifest = json.loads((cache_dir / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("version") == _MANIFEST_VERSION else None


def _check_files(cache_dir: Path, manifest: dict, hashes: bool) -> None:
    """Sizes (and with ``hashes`` the SHA-256 hashes) of the cache files against the manifest."""
    for name in _FILES:
        path = cache_dir / name
        want = manifest["files"].get(name)
        if want is None:
            raise LoaderError(path, f"not listed in {_MANIFEST}; rebuild the cache")
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

    A cache whose files fail the size (or, with ``verify``, hash) check against its manifest is
    not served: a warning names the file and None is returned, so the caller rebuilds it. A
    folder without a manifest (never finished, or built by an older version) is not fresh.
    """
    cache_dir = Path(cache_dir)
    manifest = _read_manifest(cache_dir)
    if manifest is None or manifest.get("fingerprint") != fingerprint:
        return None
    try:
        return WaveformCache(cache_dir, verify=verify)
    except LoaderError as err:
        warnings.warn(f"{err}; rebuilding it", stacklevel=2)
        return None


_HASH_MEMO: dict[str, str] = {}
_MEMO_FILE = "file-hashes.json"
_MEMO_MAX = 200_000  # entries (~200 bytes each); past it the memo starts again


def _memo_key(path: str) -> str:
    """A file's identity for the hash memo: path, device, inode, size, mtime and ctime.

    ctime cannot be set back by a user (``touch``/``utime`` restore mtime only, and update
    ctime), so a file rewritten with its mtime restored misses the memo and is hashed again."""
    st = os.stat(path)
    return f"{path}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"


def _load_memo() -> dict[str, str]:
    try:
        memo = json.loads((cache_root() / _MEMO_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _save_memo(new: dict[str, str]) -> None:
    """Merge ``new`` into the per-user memo (atomic rename; a lost race only costs a re-hash)."""
    path = cache_root() / _MEMO_FILE
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        memo = {**_load_memo(), **new}
        if len(memo) > _MEMO_MAX:
            memo = dict(new)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{_MEMO_FILE}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(memo, f)
        os.replace(tmp, path)
    except OSError:  # an unwritable cache root: hashes are simply recomputed next time
        if tmp:
            Path(tmp).unlink(missing_ok=True)


def fingerprint_files(paths: Iterable[str | Path], extra: str = "", *, root: str | Path | None = None) -> str:
    """Content fingerprint of source files: each file's name relative to ``root``, its size and
    the SHA-256 of its bytes, plus ``extra`` (the loader's options).

    ``root`` defaults to the deepest folder holding every path, so a dataset that is moved,
    copied or mounted elsewhere (read-only included) keeps its fingerprint and reuses its cache,
    while any change of content rebuilds it, whatever the files' modification times say.
    Hashing reads each file's bytes once: its hash is remembered (in the process and in
    ``cache_root()/file-hashes.json``) while its path, inode, size, mtime and ctime are unchanged.
    """
    files = [os.path.abspath(p) for p in paths]
    if root is None:
        root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    root = os.path.abspath(root) if root else ""
    h = hashlib.sha256(f"tscl-fingerprint-v2\0{extra}\0".encode())
    new: dict[str, str] = {}
    loaded = False
    for rel, f in sorted({(os.path.relpath(f, root) if root else f, f) for f in files}):
        try:
            key = _memo_key(f)
            if key not in _HASH_MEMO and not loaded:
                _HASH_MEMO.update(_load_memo())
                loaded = True
            digest = _HASH_MEMO.get(key)
            if digest is None:
                digest = _HASH_MEMO[key] = new[key] = hash_file(f)
        except OSError as err:
            raise LoaderError(f, f"cannot read source file for the cache fingerprint: {err}") from err
        size = key.split("\0")[3]
        h.update(f"{Path(rel).as_posix()}\0{size}\0{digest}\n".encode())
    if new:
        _save_memo(new)
    return h.hexdigest()


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


class WaveformCache:
    """Read side of a cache folder. ``cache[i]`` is recording i's ``[C,T]`` float32 memmap view."""

    def __init__(self, cache_dir: str | Path, *, verify: bool = False):
        self.dir = Path(cache_dir)
        for name in (_SIGNALS, _INDEX):
            if not (self.dir / name).exists():
                raise LoaderError(self.dir / name, "cache file missing; rebuild the cache")
        with _locked(self.dir, exclusive=False):
            manifest = _read_manifest(self.dir)
            if manifest is None:
                raise LoaderError(self.dir / _MANIFEST, "missing or unreadable (an unfinished build, or one by an "
                                                        "older version); rebuild the cache")
            _check_files(self.dir, manifest, hashes=verify)
            self.index = pl.read_parquet(self.dir / _INDEX)
            self._manifest = manifest
            self._shapes = self.index.select("n_channels", "n_samples").to_numpy()
            self._offsets = self.index["offset"].to_numpy()
            expected = int((self._shapes[:, 0].astype(np.int64) * self._shapes[:, 1]).sum()) * 4
            size = (self.dir / _SIGNALS).stat().st_size
            if size != expected:
                raise LoaderError(self.dir / _SIGNALS, f"{size} bytes, but {_INDEX} describes {expected} bytes of "
                                                       "samples; rebuild the cache")
            self._signals = (np.memmap(self.dir / _SIGNALS, dtype=np.float32, mode="r") if size
                             else np.zeros(0, np.float32))

    def verify(self) -> None:
        """Hash every cache file and compare with the manifest; :class:`LoaderError` naming the first that differs."""
        _check_files(self.dir, self._manifest, hashes=True)

    def __len__(self) -> int:
        return self.index.height

    def __getitem__(self, i: int) -> np.ndarray:
        c, t = self._shapes[i]
        o = self._offsets[i]
        return self._signals[o : o + c * t].reshape(c, t)

    @property
    def fingerprint(self) -> str:
        """The source fingerprint the cache was built from (as recorded in its manifest)."""
        return self._manifest.get("fingerprint", "")

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
        return json.loads((self.dir / "labels.json").read_text())

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

    def stack(self) -> np.ndarray:
        """All recordings as one ``[N,C,T]`` array view (requires one shape for the cohort)."""
        if len({tuple(s) for s in self._shapes}) != 1:
            raise ValueError(f"{self.dir}: recordings differ in shape; read them one by one")
        c, t = self._shapes[0]
        if np.array_equal(self._offsets, np.arange(len(self)) * c * t):  # the whole cache, in order
            return self._signals[: len(self) * c * t].reshape(len(self), c, t)
        return _RowView(self._signals, self._offsets, c, t)

    def subset(self, rows) -> "WaveformCache":
        """A view of the rows ``rows`` (indices or a boolean mask) sharing this cache's memory map.

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
        view.dir, view._signals, view._manifest = self.dir, self._signals, self._manifest
        view.index = self.index[rows.tolist()] if rows.size else self.index.clear()
        view._offsets, view._shapes = self._offsets[rows], self._shapes[rows]
        return view


class _RowView:
    """``[N, C, T]`` rows of a memory map at arbitrary offsets (a cache subset): indexing reads only
    the requested rows, as the trainer's and ``embed_signals``' batch reads do."""

    def __init__(self, signals: np.ndarray, offsets: np.ndarray, c: int, t: int):
        self._signals, self._offsets, self.shape = signals, np.asarray(offsets), (len(offsets), int(c), int(t))
        self.dtype = signals.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        c, t = self.shape[1:]
        if isinstance(rows, (int, np.integer)):
            o = int(self._offsets[rows])
            return np.asarray(self._signals[o : o + c * t]).reshape(c, t)
        offs = self._offsets[rows]
        idx = offs[:, None] + np.arange(c * t)[None, :]
        return np.asarray(self._signals[idx]).reshape(len(offs), c, t)

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(len(self))]
        return out.astype(dtype) if dtype is not None else out


def _write_bytes(f, data: bytes) -> None:
    f.write(data)


def _index_row(rec: Recording, offset: int) -> dict:
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
    }


class _Staging:
    """Unique temporary files in the cache folder, each under an exclusive flock while this build lives."""

    def __init__(self, cache_dir: Path):
        self.dir = cache_dir
        self.files: dict[str, tuple[Path, int]] = {}

    def new(self, name: str) -> Path:
        fd, path = tempfile.mkstemp(dir=self.dir, prefix=f".{name}.", suffix=".tmp")
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        self.files[name] = (Path(path), fd)
        return Path(path)

    def discard(self) -> None:
        for path, fd in self.files.values():
            try:
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        self.files.clear()

    def close(self) -> None:
        for _, fd in self.files.values():
            os.close(fd)
        self.files.clear()


def _sweep_stale_tmp(cache_dir: Path) -> None:
    """Remove temporary files of builds that died (their flock is free); live builders hold theirs."""
    if fcntl is None:
        return
    for path in cache_dir.glob(".*.tmp"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)


_QUALITY_NOTES = ("frame_averaged",)  # what a reader did to the samples that the cache's report must carry


def _warn_quality(notes: dict, fs: float) -> None:
    averaged = notes.get("frame_averaged")
    if averaged:
        source, channels = next(iter(averaged.items()))
        example = ", ".join(f"{c} ({v['rate_hz']:g} Hz)" for c, v in channels.items())
        warnings.warn(f"{len(averaged)} recording(s) hold channels sampled faster than the frame rate, averaged down "
                      f"to it (e.g. {example} read at {fs:g} Hz in {source}); see cache.report['quality']",
                      stacklevel=3)


def _rate_problem(rec: Recording, first: Recording) -> str:
    return (f"sampled at {rec.fs:g} Hz, but {first.record_id} ({first.source or 'first recording'}) is at "
            f"{first.fs:g} Hz; one cache holds one rate (pass fs= to resample, or load each rate separately)")


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
            err = LoaderError(rec.source or rec.record_id, _rate_problem(rec, first))
            if on_error == "raise":
                raise err
            if skipped is not None and err.path not in listed:  # windows of one record: listed once
                listed.add(err.path)
                skipped.append({"path": err.path, "problem": err.problem})
            continue
        yield rec


def build_cache(recordings: Iterable[Recording], cache_dir: str | Path, fingerprint: str = "",
                report: dict[str, Any] | None = None, *, verify: bool = True,
                allow_mixed_rates: bool = False) -> WaveformCache:
    """Write recordings to a cache folder atomically; return the cache opened.

    Every file is written under a unique temporary name in ``cache_dir`` (so builders of the
    same cache never share one), hashed while written, and listed with its size and hash in
    the manifest. With ``verify`` (default) the written shard is read back and its hash
    checked before the commit. The commit takes the folder's exclusive lock, and renames the
    files into place with the manifest last; if a cache with this fingerprint was committed
    meanwhile by another builder, this build's files are discarded and that cache is opened.
    On any error (an unreadable recording, a full disk) the temporary files are removed and
    the error propagates; the previous cache, if any, is left as it was.

    Recordings must share one sampling rate (a recording at another rate raises a
    :class:`LoaderError` naming it, the first recording and both rates), unless
    ``allow_mixed_rates``; then ``WaveformCache.fs`` refuses and consumers read ``index["fs"]``.

    ``report`` (JSON-serialisable; read back as ``WaveformCache.report``) is written after the
    recordings are consumed, so a generator may fill it while it yields. Notes a reader left in
    ``Recording.quality`` that change what the samples mean (``frame_averaged``) are added to
    it under ``report["quality"]``, once per source file, with a warning.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _sweep_stale_tmp(cache_dir)
    staging = _Staging(cache_dir)
    try:
        tmp_sig = staging.new(_SIGNALS)
        rows, offset, label_cols, digest, first, notes = _write_shard(recordings, tmp_sig, allow_mixed_rates)
        if not rows:
            raise LoaderError(cache_dir, f"no recordings to cache{_skipped_note(report)}")
        files = {_SIGNALS: {"bytes": offset * 4, "sha256": digest}}
        if tmp_sig.stat().st_size != offset * 4:
            raise LoaderError(tmp_sig, f"wrote {tmp_sig.stat().st_size} bytes of {offset * 4}; the disk may be full")
        if verify and hash_file(tmp_sig) != files[_SIGNALS]["sha256"]:
            raise LoaderError(tmp_sig, "the shard read back differs from what was written; not committing it")
        index = pl.DataFrame(rows, infer_schema_length=None)
        index = index.rename({c: c.removeprefix("label:") for c in index.columns if c.startswith("label:")})
        index = index.select([c for c in index.columns if c not in ("nan_samples", "missing_channels")]
                             + ["nan_samples", "missing_channels"])
        index.write_parquet(staging.new(_INDEX))
        staging.new(_LABELS).write_text(json.dumps(label_cols))
        staging.new(_FINGERPRINT).write_text(fingerprint)
        report = dict(report or {})
        if notes:
            report["quality"] = {k: [{"source": src, "value": v} for src, v in d.items()] for k, d in notes.items()}
            _warn_quality(notes, first.fs)
        staging.new(_REPORT).write_text(json.dumps(report, indent=1, default=str))
        for name in (_INDEX, _LABELS, _FINGERPRINT, _REPORT):
            path = staging.files[name][0]
            files[name] = {"bytes": path.stat().st_size, "sha256": hash_file(path)}
        manifest = {"version": _MANIFEST_VERSION, "fingerprint": fingerprint, "recordings": len(rows),
                    "files": files}
        staging.new(_MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if _commit(cache_dir, staging, fingerprint):
            staging.close()
        else:
            staging.discard()
    except BaseException:
        staging.discard()
        raise
    return WaveformCache(cache_dir)


def _write_shard(recordings: Iterable[Recording], path: Path, allow_mixed_rates: bool):
    """Stream the recordings' signals into ``path``: ``(index rows, samples written, label columns, sha256 of
    the bytes, first recording, quality notes once per source file)``."""
    rows, offset, label_cols, first, notes = [], 0, [], None, {}
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for rec in recordings:
            for key in (k for k in _QUALITY_NOTES if k in rec.quality):  # once per source file (its windows share it)
                notes.setdefault(key, {}).setdefault(rec.source or rec.record_id, rec.quality[key])
            if first is None:
                first = rec
            elif rec.fs != first.fs and not allow_mixed_rates:
                raise LoaderError(rec.source or rec.record_id, _rate_problem(rec, first))
            data = np.ascontiguousarray(rec.signal, dtype="<f4").tobytes()
            _write_bytes(f, data)
            h.update(data)
            label_cols += [key for key in rec.labels if key not in label_cols]
            rows.append(_index_row(rec, offset))
            offset += rec.signal.size
    return rows, offset, label_cols, h.hexdigest(), first, notes


def _commit(cache_dir: Path, staging: _Staging, fingerprint: str) -> bool:
    """Rename the staged files into place under the folder's exclusive lock, the manifest last; False (nothing
    moved) when another builder committed an intact cache with this fingerprint first: keep theirs."""
    with _locked(cache_dir, exclusive=True):
        current = _read_manifest(cache_dir)
        if (fingerprint and current is not None and current.get("fingerprint") == fingerprint
                and _intact(cache_dir, current)):
            return False
        (cache_dir / _MANIFEST).unlink(missing_ok=True)  # no manifest = not a cache, until the last rename
        for name in (*_FILES, _MANIFEST):
            os.replace(staging.files[name][0], cache_dir / name)
    return True


def _intact(cache_dir: Path, manifest: dict) -> bool:
    try:
        _check_files(cache_dir, manifest, hashes=True)
    except LoaderError:
        return False
    return True


def cached_load(kind: str, sources: Iterable[str | Path], extra: str, cache_dir: str | Path | None,
                build: Callable[[], tuple[Iterable[Recording], dict[str, Any]]], *,
                root: str | Path | None = None) -> WaveformCache:
    """What every loader does around its reading: fingerprint the ``sources``' content (with ``extra``,
    the loader's options; :func:`fingerprint_files`), open the cache in ``cache_dir`` (default
    :func:`default_cache_dir` ``(kind, fingerprint)``) if it was built from them, else call
    ``build() -> (recordings, report)`` and write them (:func:`build_cache`: locked, atomic, manifest last).
    ``recordings`` may be a lazy stream: ``report`` is written after it is consumed."""
    fp = fingerprint_files(sources, extra=extra, root=root)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(kind, fp)
    cache = open_fresh_cache(cache_dir, fp)
    if cache is not None:
        return cache
    recordings, report = build()
    return build_cache(recordings, cache_dir, fingerprint=fp, report=report)


def _skipped_note(report) -> str:
    skipped = (report or {}).get("skipped") or []
    return f" ({len(skipped)} skipped, first: {skipped[0]})" if skipped else ""


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
