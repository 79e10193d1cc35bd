"""Identity from the data: how every loader turns table cells and file paths into patient and record ids.

One rule for every source (docs/datasets.md says how each one forms its ids):

- an id read from a table is text as written, with surrounding whitespace removed (``"p1 "``
  and ``"p1"`` are one patient, in every source); an id left empty is refused naming its line;
- two ids that differ only in whitespace inside them (``"p 1"`` and ``"p1"``) are refused naming
  both lines: nothing can tell whether they are one patient or two;
- a record id taken from a file is the file's path relative to the dataset root, without its
  suffix (``siteA/rec01``), so two files of one name in two folders stay two records;
- a patient id taken from a file *name* (a stem, a subject number in the name) is refused when two
  files of that name sit in two folders, naming both: the folder may or may not be a patient.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

import polars as pl

from .recording import LoaderError

__all__ = ["clean_ids", "check_unique", "relative_id", "check_unique_names", "csv_line", "row_locator",
           "clean_id_column", "check_unique_column", "posix_path_column"]

_SPACE = re.compile(r"\s+")


def csv_line(i: int) -> str:
    """Where data row ``i`` (0-based) of a CSV with one header line is: ``line i + 2``."""
    return f"line {i + 2}"


def row_locator(path: str | Path) -> Callable[[int], str]:
    """How a table's data row ``i`` is named in messages: ``line i + 2`` of a CSV, ``row i + 1`` of a parquet file."""
    return (lambda i: f"row {i + 1}") if Path(path).suffix == ".parquet" else csv_line


def clean_ids(values: Sequence, path: str | Path, column: str, where: Callable[[int], str] = csv_line) -> list[str]:
    """``values`` as id text without surrounding whitespace.

    Raises :class:`LoaderError` naming ``path``, the column and the line (``where(i)``) for an empty
    id, and naming both lines for two ids that differ only in whitespace inside them."""
    out: list[str] = []
    squeezed: dict[str, tuple[str, int]] = {}
    for i, value in enumerate(values):
        text = "" if value is None else str(value).strip()
        if not text:
            raise LoaderError(path, f"{where(i)}: empty {column}")
        key = _SPACE.sub("", text)
        seen = squeezed.setdefault(key, (text, i))
        if seen[0] != text:
            raise LoaderError(path, f"{column} {seen[0]!r} ({where(seen[1])}) and {text!r} ({where(i)}) differ only in "
                                    "whitespace; write one id the same way everywhere")
        out.append(text)
    return out


def check_unique(values: Sequence, path: str | Path, column: str, where: Callable[[int], str] = csv_line,
                 what: str = "appears twice") -> None:
    """Refuse a repeated value of ``column``, naming its first two lines."""
    seen: dict = {}
    for i, value in enumerate(values):
        if value in seen:
            raise LoaderError(path, f"{column} {value!r} {what} ({where(seen[value])} and {where(i)})")
        seen[value] = i


# Text whose whitespace Python and polars agree on: tab, newline, VT, FF, CR and printable ASCII. Other text
# (non-ASCII, other control characters) takes the Python path above, so the two give the same ids.
_PLAIN = r"^[\t\n\x0b\x0c\r\x20-\x7e]*$"


def clean_id_column(values: pl.Series, path: str | Path, column: str,
                    where: Callable[[int], str] = csv_line) -> pl.Series:
    """:func:`clean_ids` of a column, as a text column: the same ids and the same refusals, computed on the
    column (no Python object per row for ASCII text)."""
    text = values.cast(pl.Utf8)
    plain = text.str.contains(_PLAIN).fill_null(True)
    clean = text.str.strip_chars()
    key = clean.str.replace_all(r"\s+", "")
    if not plain.all():  # the few other rows as Python reads them
        rows = (~plain).arg_true()
        odd = ["" if v is None else str(v).strip() for v in text.gather(rows).to_list()]
        clean = clean.scatter(rows, odd)
        key = key.scatter(rows, [_SPACE.sub("", v) for v in odd])
    frame = pl.DataFrame({"text": clean, "key": key}).with_row_index("i")
    empty = frame.filter(pl.col("text").is_null() | (pl.col("text") == ""))["i"].head(1).to_list()
    clash = frame.filter(pl.col("text") != pl.col("text").first().over("key")).head(1)
    first = clash["i"].to_list()
    if empty and (not first or empty[0] < first[0]):
        raise LoaderError(path, f"{where(empty[0])}: empty {column}")
    if first:
        i, text_i, k = first[0], clash["text"][0], clash["key"][0]
        j, text_j = frame.filter(pl.col("key") == k).row(0)[:2]
        raise LoaderError(path, f"{column} {text_j!r} ({where(j)}) and {text_i!r} ({where(i)}) differ only in "
                                "whitespace; write one id the same way everywhere")
    return clean.alias(values.name)


def check_unique_column(values: pl.Series, path: str | Path, column: str, where: Callable[[int], str] = csv_line,
                        what: str = "appears twice") -> None:
    """:func:`check_unique` of a column: refuse a repeated value, naming its first two lines."""
    again = (~values.is_first_distinct()).arg_true()
    if len(again):
        i = int(again[0])
        value = values[i]
        j = int((values == value).arg_true()[0])
        raise LoaderError(path, f"{column} {value!r} {what} ({where(j)} and {where(i)})")


def posix_path_column(paths: pl.Series) -> pl.Series:
    """``Path(p).as_posix()`` of each text in a column: the few paths holding ``//``, ``.`` segments or a trailing
    ``/`` go through :class:`~pathlib.Path`, the others are already in that form."""
    odd = paths.str.contains(r"//|/$|(^|/)\.(/|$)|^$").fill_null(False)
    if not odd.any():
        return paths
    rows = odd.arg_true()
    return paths.scatter(rows, [Path(p).as_posix() for p in paths.gather(rows).to_list()])


def relative_id(path: str | Path, root: str | Path) -> str:
    """A file's record id: its path relative to ``root``, POSIX separators, without the suffix (``siteA/rec01``)."""
    rel = Path(path).relative_to(root)
    return rel.with_suffix("").as_posix() if rel.suffix else rel.as_posix()


def check_unique_names(files: Iterable[str | Path], name: Callable[[Path], str] = lambda p: p.stem,
                       why: str = "the patient id comes from the file name, so the two would be one patient: "
                                  "rename one") -> None:
    """Refuse two files in two folders whose ``name`` (default the stem) is the same, naming both and ``why``."""
    seen: dict[str, Path] = {}
    for f in map(Path, files):
        key = name(f)
        if key in seen and seen[key] != f:
            raise LoaderError(f, f"has the name {key!r} of {seen[key]} too; {why}")
        seen.setdefault(key, f)
