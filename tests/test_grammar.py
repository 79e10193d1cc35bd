"""The three option grammars (tscl.grammar): generated round trips and the one-line refusals of bad text."""
import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tscl.datasets import select_split
from tscl.grammar import SPLITS, UsageError, parse_floats, parse_ints, parse_kwargs, parse_split

KEYS = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
SCALARS = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False, width=32),
                    st.booleans(), st.none(), st.from_regex(r"[a-z][a-z0-9_.*/-]{0,10}", fullmatch=True))
VALUES = st.one_of(SCALARS, st.lists(st.one_of(st.integers(-99, 99), st.floats(-1e3, 1e3)), max_size=4))


def _text(value) -> str:
    """How a person types ``value`` after ``key=``: JSON, or plain text for a word that is not JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=5))
def test_kwargs_round_trip(kwargs):
    text = ",".join(f"{k}={_text(v)}" for k, v in kwargs.items())
    parsed = parse_kwargs(text, "--encoder-kwargs")
    assert parsed.keys() == kwargs.keys()
    for key, value in kwargs.items():
        if isinstance(value, str):  # "true", "null", "12" typed as words become JSON, as the CLI documents
            assert parsed[key] == (json.loads(value) if _is_json(value) else value)
        elif isinstance(value, float):
            assert parsed[key] == pytest.approx(value)
        else:
            assert parsed[key] == value


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("text, message", [
    ("widths=[8,16", "unbalanced brackets"),
    ("widths", "is not key=value"),
    ("=3", "is not key=value"),
    ("1x=3", "is not key=value"),
    ('name="abc', "is not valid JSON"),
    ("a={1:2}", "is not valid JSON"),
])
def test_bad_kwargs_are_refused_naming_the_option(text, message):
    with pytest.raises(UsageError, match=message) as err:
        parse_kwargs(text, "--method-kwargs")
    assert "--method-kwargs" in str(err.value) and "\n" not in str(err.value)


def test_empty_kwargs_are_nothing():
    assert parse_kwargs(None) == parse_kwargs("") == parse_kwargs("  ") == {}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=1.0), min_size=1, max_size=6))
def test_fractions_round_trip(values):
    assert parse_floats(",".join(repr(v) for v in values), low=0, high=1) == values


@pytest.mark.parametrize("text", ["0", "0.5,0", "1.5", "-0.1", "nan", "inf", "a", ",", ""])
def test_bad_fractions_are_refused(text):
    with pytest.raises(UsageError, match="--fractions"):
        parse_floats(text, "--fractions", low=0, high=1)


def test_ints():
    assert parse_ints("1, 5,10") == [1, 5, 10]
    for bad in ("0", "1.5", "x", ""):
        with pytest.raises(UsageError, match="--k"):
            parse_ints(bad, "--k")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(SPLITS), min_size=1, max_size=3, unique=True),
       st.lists(st.sampled_from(SPLITS), min_size=1, max_size=40), st.lists(st.integers(1, 10), min_size=1, max_size=5))
def test_split_grammar_selects_the_rows_it_names(names, column, folds):
    index = pl.DataFrame({"split": column, "strat_fold": [(i % 10) + 1 for i in range(len(column))]})
    assert parse_split("+".join(names)) == ("names", names)
    rows = select_split(index, "+".join(names))
    assert rows.tolist() == [i for i, s in enumerate(column) if s in names]
    text = "folds:" + ",".join(map(str, folds))
    assert parse_split(text) == ("folds", sorted(set(folds)))
    assert select_split(index, text).tolist() == [i for i in range(len(column)) if (i % 10) + 1 in folds]
    assert np.array_equal(select_split(index, None), np.arange(len(column)))


def test_fold_ranges_and_bad_splits():
    assert parse_split("folds:1-3,8") == ("folds", [1, 2, 3, 8])
    assert parse_split("all") == parse_split(None) == ("all", [])
    for bad, message in (("folds:a", "folds must be numbers"), ("folds:5-2", "is empty"), ("training", "unknown split"),
                         ("train+tset", "unknown split 'tset'")):
        with pytest.raises(UsageError, match=message):
            parse_split(bad)
    with pytest.raises(ValueError, match="no strat_fold column"):
        select_split(pl.DataFrame({"split": ["train"]}), "folds:1")
