"""Source files of a cache: their stats, their content fingerprint, and one listing per folder.

Opening a cache stats its source files (one ``os.stat`` each; no file is read) and compares
each file's (path relative to the dataset root, size, mtime_ns, ctime_ns, inode, device) with
the tables recorded when the content was last hashed: the cache's own ``sources.parquet``
(written with the cache) and the per-file-set table ``cache_root()/sources/<key>.parquet``
(updated whenever a file had to be hashed again). A file whose stats all match keeps its
recorded SHA-256; any other file is hashed again. ``ctime`` cannot be set back by a user, so a
file rewritten with its size and mtime restored is hashed again too.

The content fingerprint is the SHA-256 over every file's (relative path, size, SHA-256) and the
loader's options. A dataset that was moved, copied or mounted read-only elsewhere has new stats
but the same names, sizes and bytes: its files are hashed once more (a full re-hash decides,
never a sample), it gets the same fingerprint and reuses its cache, and the new stats are
recorded so that the next open reads nothing. ``verify=True`` hashes every file whatever its stats.
There is no global memo: one small table per file set, never evicted.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import polars as pl

from .recording import LoaderError

__all__ = ["hash_file", "stat_files", "files_key", "content_fingerprint", "read_table", "write_table",
           "record_files", "stat_records", "combine_stats", "folder_files", "merge_tables", "file_paths"]

_CHUNK = 1 << 22
_STATS = ("rel", "size", "mtime_ns", "ctime_ns", "ino", "dev")


def hash_file(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 4 MiB chunks (SHA-256 runs in hardware on current x86 and ARM CPUs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stat_chunk(files: list[str], root: str, rel: list[str] | None = None) -> pl.DataFrame:
    n = len(files)
    cols = {k: np.zeros(n, np.int64) for k in ("size", "mtime_ns", "ctime_ns")}
    ino, dev = np.zeros(n, np.uint64), np.zeros(n, np.uint64)
    for i, f in enumerate(files):
        try:
            st = os.stat(f)
        except OSError as err:
            raise LoaderError(f, f"cannot read source file: {err.strerror or err}") from None
        cols["size"][i], cols["mtime_ns"][i], cols["ctime_ns"][i] = st.st_size, st.st_mtime_ns, st.st_ctime_ns
        ino[i], dev[i] = st.st_ino, st.st_dev
    if rel is None:
        rel = [_relative(f, root) for f in files] if root else files
    # the root once per table (a categorical: 4 bytes a row), not an absolute path per file: see file_paths()
    return pl.DataFrame({"rel": pl.Series(rel, dtype=pl.Utf8), **cols, "ino": ino, "dev": dev}).with_columns(
        root=pl.lit(root, dtype=pl.Categorical))


def file_paths(table: pl.DataFrame) -> pl.Series:
    """The absolute path of each file of a stats table (its ``root`` joined with its ``rel``)."""
    return table.select(pl.when(pl.col("root").cast(pl.Utf8) == "").then(pl.col("rel"))
                        .otherwise(pl.concat_str(pl.col("root").cast(pl.Utf8), pl.lit("/"), pl.col("rel")))
                        .alias("path"))["path"]


def _relative(path: str, root: str) -> str:
    """``path`` relative to ``root``, POSIX-style (a string cut where it can be, ``os.path.relpath`` elsewhere)."""
    head = root.rstrip(os.sep) + os.sep
    rel = path[len(head):] if path.startswith(head) else os.path.relpath(path, root)
    return rel.replace(os.sep, "/") if os.sep != "/" else rel


def _frame(parts: list[pl.DataFrame]) -> pl.DataFrame:
    if not parts:
        return _stat_chunk([], "")
    return pl.concat(parts).unique(subset=["root", "rel"], keep="first", maintain_order=True).sort("rel")


def combine_stats(*tables: pl.DataFrame) -> pl.DataFrame:
    """One stats table of several (each file once, sorted by ``rel``)."""
    return _frame(list(tables))


def stat_files(paths: Iterable[str | Path], root: str | Path | None = None) -> pl.DataFrame:
    """One row per distinct file: ``rel`` (relative to ``root``, POSIX), size, mtime_ns, ctime_ns, ino, dev and
    ``root`` (categorical; :func:`file_paths` gives the absolute paths); sorted by ``rel``. ``root`` defaults to
    the deepest folder holding every file. A file that cannot be stat'ed raises a :class:`LoaderError` naming it."""
    files = [os.path.abspath(p) for p in paths]
    if root is None:
        root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    root = os.path.abspath(root) if root else ""
    return _frame([_stat_chunk(files[i:i + (1 << 16)], root) for i in range(0, len(files), 1 << 16)])


def _digest_rows(h, frame: pl.DataFrame, columns: list[str]) -> None:
    """Feed ``frame``'s rows (columns joined by NUL, one row per line) to the hash ``h``, in chunks."""
    for chunk in frame.select(columns).iter_slices(1 << 16):
        text = chunk.select(pl.concat_str([pl.col(c).cast(pl.Utf8) for c in columns], separator="\0")).to_series()
        h.update(("\n".join(text.to_list()) + "\n").encode())


def files_key(stats: pl.DataFrame, extra: str = "") -> str:
    """A key for the set of files by name and size alone (what a moved copy keeps), with ``extra``."""
    h = hashlib.sha256(f"tscl-files-v1\0{extra}\0".encode())
    _digest_rows(h, stats, ["rel", "size"])
    return h.hexdigest()


def _matching(table: pl.DataFrame, known: pl.DataFrame) -> pl.Series:
    """Each row's SHA-256 from ``known`` where a row of it has the same stats (rel, size, mtime_ns, ctime_ns,
    inode, device), else null."""
    k = known.select(*_STATS, "sha256").with_columns(pl.col(c).cast(table.schema[c]) for c in _STATS)
    found = table.select(_STATS).join(k, on=list(_STATS), how="left", maintain_order="left")["sha256"]
    if len(found) != table.height:  # a table holding one file's stats twice
        found = table.select(_STATS).join(k.unique(subset=list(_STATS)), on=list(_STATS), how="left",
                                          maintain_order="left")["sha256"]
    return found


def _matching_file(table: pl.DataFrame, path: Path) -> pl.Series | None:
    """:func:`_matching` against a recorded table on disk, or None where it is absent or unreadable. A table of
    the same files in the same order (the usual open) is compared one column at a time, so that at most one of
    its columns is in memory besides ``table``; any other is joined."""
    try:
        columns = set(pl.read_parquet_schema(path))
        if not {*_STATS, "sha256"} <= columns:
            return None
        if pl.scan_parquet(path).select(pl.len()).collect().item() != table.height:
            return _matching(table, pl.read_parquet(path))
        same = pl.Series(np.ones(table.height, dtype=bool))
        for c in _STATS:
            same &= (table[c] == pl.read_parquet(path, columns=[c])[c].cast(table.schema[c])).fill_null(False)
        if not same.any():
            return None
        sha = pl.read_parquet(path, columns=["sha256"])["sha256"].cast(pl.Utf8)
    except Exception:  # absent, truncated or not parquet: only costs a re-hash
        return None
    return sha if same.all() else pl.DataFrame({"same": same, "sha256": sha}).select(
        pl.when("same").then("sha256"))["sha256"]


def content_fingerprint(stats: pl.DataFrame, extra: str = "", known=(), verify: bool = False
                        ) -> tuple[str, pl.DataFrame, int]:
    """``(fingerprint, stats with a sha256 column, files hashed)``.

    A file whose stats equal a row of a ``known`` table (same rel, size, mtime_ns, ctime_ns, inode,
    device) takes that row's SHA-256; every other file (every file with ``verify``) is hashed. Each of
    ``known`` is a table, None, or the path of a table written by :func:`write_table` (read only while
    some file still lacks a hash, one column at a time)."""
    table = stats.with_columns(sha256=pl.lit(None, pl.Utf8))
    for k in known if not verify else ():
        if not table["sha256"].is_null().any():
            break
        if isinstance(k, (str, Path)):
            found = _matching_file(table, Path(k))
        elif k is not None and {*_STATS, "sha256"} <= set(k.columns):
            found = _matching(table, k)
        else:
            found = None
        if found is not None:
            table = table.with_columns(pl.coalesce(pl.col("sha256"), found))
        del found
    missing = table["sha256"].is_null()
    hashed = int(missing.sum())
    if hashed:
        rows = missing.arg_true().to_numpy()
        digests = table["sha256"].to_list()
        for i, path in zip(rows, file_paths(table[rows]).to_list()):
            try:
                digests[i] = hash_file(path)
            except OSError as err:
                raise LoaderError(path, f"cannot read source file for the cache fingerprint: {err.strerror or err}") \
                    from None
        table = table.with_columns(sha256=pl.Series(digests, dtype=pl.Utf8))
    h = hashlib.sha256(f"tscl-fingerprint-v3\0{extra}\0".encode())
    _digest_rows(h, table, ["rel", "size", "sha256"])
    return h.hexdigest(), table, hashed


def read_table(path: Path) -> pl.DataFrame | None:
    """A recorded sources table, or None when absent or unreadable (then the files are hashed again)."""
    try:
        return pl.read_parquet(path)
    except Exception:  # absent, truncated or not parquet: only costs a re-hash
        return None


def merge_tables(table: pl.DataFrame, older: pl.DataFrame | None) -> pl.DataFrame:
    """``table`` plus the rows of ``older`` for other stats (another copy of the same files), for the record."""
    if older is None or not set(_STATS) <= set(older.columns) or "sha256" not in older.columns:
        return table
    cols = [*_STATS, "sha256"]
    older = older.select(cols).join(table.select(_STATS), on=list(_STATS), how="anti")
    return pl.concat([table.select(*cols), older], how="diagonal_relaxed")


def write_table(table: pl.DataFrame, path: Path) -> bool:
    """Write ``table`` to ``path`` atomically; False (nothing written) where the folder is not writable."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        table.drop("root", "path", strict=False).write_parquet(tmp)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        return False


def _list_files(folder: str) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return [e.name for e in it if e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _by_prefix(names: list[str]) -> dict[str, list[str]]:
    """``{record name: its files}`` for one folder's listing: ``a.b.hea`` belongs to record ``a`` and to ``a.b``, as
    ``glob("a.*")`` and ``glob("a.b.*")`` see it."""
    out: dict[str, list[str]] = {}
    for name in sorted(names):
        dot = name.find(".")
        while dot >= 0:
            out.setdefault(name[:dot], []).append(name)
            dot = name.find(".", dot + 1)
    return out


def folder_files(folders: Iterable[str | Path]) -> list[Path]:
    """Every file of each distinct folder (one listing each), sorted."""
    return sorted(Path(f) / n for f in {str(f) for f in folders} for n in _list_files(f))


def record_files(records: Iterable[str | Path]) -> dict[Path, list[Path]]:
    """The files of each WFDB record (``folder/name`` without extension), as ``sorted(folder.glob(name + ".*"))``
    gives them, with one listing per folder instead of one per record (listing a folder of n files for each of
    its records is quadratic in a flat folder)."""
    records = [Path(r) for r in records]
    listing = {folder: _by_prefix(_list_files(folder)) for folder in {str(r.parent) for r in records}}
    return {r: [r.parent / n for n in listing[str(r.parent)].get(r.name, [])] for r in records}


def stat_records(root: str | Path, records: pl.Series, need: str = ".hea") -> tuple[pl.DataFrame, list[int]]:
    """Stats (:func:`stat_files` columns, ``rel`` relative to ``root``) of every file of the WFDB records
    ``root/<record>`` (``records``: paths relative to ``root``, without extension), and the positions (sorted)
    of the records without their ``need`` file, whose files are left out: one listing per folder, one
    ``os.stat`` per file, no per-record listing and no Python object per record kept beyond a chunk."""
    root = os.path.abspath(root)
    recs = pl.DataFrame({"rec": records.cast(pl.Utf8)}).with_row_index("i").with_columns(
        folder=pl.col("rec").str.replace(r"/?[^/]*$", ""), name=pl.col("rec").str.replace(r"^.*/", ""))
    recs = recs.sort("folder", maintain_order=True)
    parts, missing, listed = [], [], ("", {})
    for chunk in recs.iter_slices(1 << 13):  # Python objects for one chunk of records at a time
        rels = []
        for i, folder, name in zip(chunk["i"].to_list(), chunk["folder"].to_list(), chunk["name"].to_list()):
            if listed[0] != folder or not listed[1]:
                where = os.path.join(root, folder) if folder else root
                listed = (folder, _by_prefix(_list_files(where)) or {"": []})
            have = listed[1].get(name, [])
            if f"{name}{need}" not in have:
                missing.append(i)
                continue
            for n in have:
                rels.append(f"{folder}/{n}" if folder else n)
        head = root.rstrip(os.sep) + os.sep
        parts.append(_stat_chunk([head + r for r in rels], root, rels))
    return _frame(parts), sorted(missing)
