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

from .recording import LoaderError

__all__ = ["clean_ids", "check_unique", "relative_id", "check_unique_names", "csv_line", "row_locator"]

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
