"""The three small string grammars of the command line, and its one error.

- ``K=V,...`` (``--dataset-kwargs``, ``--encoder-kwargs``, ``--method-kwargs``): :func:`parse_kwargs`;
- comma-separated numbers (``--fractions``, ``--k``): :func:`parse_floats`, :func:`parse_ints`;
- splits (``--split``: ``all``, ``train``, ``train+val``, ``folds:1-8``): :func:`parse_split`, which
  :func:`tscl.datasets.select_split` applies to an index.

Each refuses bad text with a :class:`UsageError` naming the option and the value: the command line
prints it as one line and exits with status 2. Standard library only, so ``tscl --help`` stays fast.
"""
from __future__ import annotations

import json
import math
import re

__all__ = ["UsageError", "parse_kwargs", "parse_floats", "parse_ints", "parse_split", "SPLITS"]

SPLITS = ("train", "val", "test")


class UsageError(ValueError):
    """A bad value given by the person running a command (an option, a config key, a file they named):
    printed by ``tscl`` as one line naming it, exit status 2."""


def parse_kwargs(text: str | None, option: str = "--kwargs") -> dict:
    """``width=0.25,widths=[8,16],name=abc`` -> ``{'width': 0.25, 'widths': [8, 16], 'name': 'abc'}``.

    Values are JSON where they parse as JSON (numbers, lists, true/false/null, quoted strings) and
    plain text otherwise; an unbalanced bracket, an item without ``=`` or a key that is not a Python
    identifier is a :class:`UsageError` naming ``option``."""
    out: dict = {}
    if text is None or not text.strip():
        return out
    if text.count("[") != text.count("]") or text.count("{") != text.count("}"):
        raise UsageError(f"{option} {text!r}: unbalanced brackets")
    for item in filter(None, re.split(r",(?![^\[\{]*[\]\}])", text)):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key or not key.isidentifier():
            raise UsageError(f"{option} {text!r}: {item!r} is not key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            if value.strip().startswith(("[", "{", '"')):
                raise UsageError(f"{option}: {key}={value!r} is not valid JSON") from None
            out[key] = value.strip()
    return out


def parse_floats(text: str, option: str = "--fractions", low: float | None = None,
                 high: float | None = None) -> list[float]:
    """``"0.01,0.1,1"`` -> ``[0.01, 0.1, 1.0]``: finite numbers, each within ``[low, high]`` when given
    (``low`` excluded when it is 0: a fraction of 0 selects nothing)."""
    out = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise UsageError(f"{option} {text!r}: {part!r} is not a number (expected comma-separated numbers)") from None
        if not math.isfinite(v) or low is not None and (v < low or low == 0 and v == 0) or high is not None and v > high:
            bounds = f"in ({low:g}, {high:g}]" if low == 0 else f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
            raise UsageError(f"{option} {text!r}: {part} must be a finite number {bounds}")
        out.append(v)
    if not out:
        raise UsageError(f"{option} {text!r}: expected at least one number")
    return out


def parse_ints(text: str, option: str = "--k", low: int = 1) -> list[int]:
    """``"1,5,10"`` -> ``[1, 5, 10]``: integers >= ``low``."""
    out = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if not re.fullmatch(r"[+-]?\d+", part) or int(part) < low:
            raise UsageError(f"{option} {text!r}: {part!r} is not an integer >= {low}")
        out.append(int(part))
    if not out:
        raise UsageError(f"{option} {text!r}: expected at least one integer")
    return out


def parse_split(text: str | None, option: str = "--split") -> tuple[str, list]:
    """A split's text as ``("all", [])``, ``("names", ["train", "val"])`` or ``("folds", [1, ..., 8])``.

    ``None``, ``""`` and ``"all"`` mean every row; ``train``, ``val``, ``test`` or a ``+`` of them
    (``train+val``) name the index's ``split`` column; ``folds:1-8`` / ``folds:1,3,5`` name PTB-XL's
    ``strat_fold`` numbers (ranges and lists)."""
    if text in (None, "", "all"):
        return "all", []
    if text.startswith("folds:"):
        folds: set[int] = set()
        for part in text[len("folds:"):].split(","):
            lo, _, hi = part.partition("-")
            try:
                first, last = int(lo), int(hi or lo)
            except ValueError:
                raise UsageError(f"{option} {text!r}: folds must be numbers or ranges such as 1-8") from None
            if last < first:
                raise UsageError(f"{option} {text!r}: the range {part} is empty")
            folds.update(range(first, last + 1))
        return "folds", sorted(folds)
    names = text.split("+")
    bad = [n for n in names if n not in SPLITS]
    if bad:
        raise UsageError(f"{option}: unknown split {bad[0]!r}; use all, {', '.join(SPLITS)}, a '+' of them "
                         "(train+val) or folds:1-8")
    return "names", names
