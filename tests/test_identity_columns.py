"""The column forms of the identity checks give the same ids and the same refusals as the per-row ones.

``read_metadata`` cleans and checks its id columns on the polars columns (no Python object per row, so
that a table of a million recordings opens in memory proportional to the table); these tests generate
id columns, including whitespace of every kind, non-ASCII text, empty cells and repeats, and compare
with :func:`clean_ids` / :func:`check_unique` / ``Path(p).as_posix()`` row by row."""
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tscl.loaders import LoaderError
from tscl.loaders.identity import (check_unique, check_unique_column, clean_id_column, clean_ids, posix_path_column,
                                   row_locator)

# few letters and many kinds of whitespace, so that clashes, empties and repeats are common
_CHARS = st.sampled_from(list("ab1 ") + ["\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2003", "é",
                                         "\u3000", "/", "."])
_IDS = st.lists(st.one_of(st.none(), st.text(_CHARS, max_size=5)), min_size=1, max_size=30)


def _outcome(fn):
    try:
        return "ok", fn()
    except LoaderError as err:
        return "refused", str(err)


@settings(max_examples=300, deadline=None)
@given(_IDS, st.sampled_from(["metadata.csv", "table.parquet"]))
def test_clean_id_column_equals_clean_ids(values, name):
    where = row_locator(name)
    want = _outcome(lambda: clean_ids(values, name, "patient_id", where))
    got = _outcome(lambda: clean_id_column(pl.Series("patient_id", values, dtype=pl.Utf8), name, "patient_id",
                                           where).to_list())
    assert got == want


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(st.sampled_from(list("ab1 é")), max_size=3), min_size=1, max_size=30))
def test_check_unique_column_equals_check_unique(values):
    want = _outcome(lambda: check_unique(values, "m.csv", "record_id"))
    got = _outcome(lambda: check_unique_column(pl.Series(values, dtype=pl.Utf8), "m.csv", "record_id"))
    assert got == want


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(st.sampled_from(list("ab/.")), min_size=1, max_size=8), min_size=1, max_size=30))
def test_posix_path_column_equals_pathlib(values):
    assert posix_path_column(pl.Series(values, dtype=pl.Utf8)).to_list() == [Path(v).as_posix() for v in values]


def test_the_refusals_name_the_lines():
    with pytest.raises(LoaderError, match=r"m\.csv: line 3: empty patient_id"):
        clean_id_column(pl.Series(["p1", "  ", "p 2"]), "m.csv", "patient_id")
    with pytest.raises(LoaderError, match=r"'p 1' \(line 2\) and 'p1' \(line 4\) differ only in whitespace"):
        clean_id_column(pl.Series(["p 1", "x", "p1"]), "m.csv", "patient_id")
    with pytest.raises(LoaderError, match=r"record_id 'r' appears twice \(row 2 and row 4\)"):
        check_unique_column(pl.Series(["q", "r", "s", "r", "q"]), "t.parquet", "record_id", row_locator("t.parquet"))
