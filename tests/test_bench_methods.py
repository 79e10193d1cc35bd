"""The method benchmark's run list: variants parse strictly and rows never collide."""
from types import SimpleNamespace

import pytest

from tscl.benchmarks.bench_methods import parse_variant, runs_to_make


def test_variant_parses_into_a_row_with_extra_kwargs():
    assert parse_variant('comet-no-trial=comet:{"weights": {"trial": 0}}') == (
        "comet-no-trial", "comet", {"weights": {"trial": 0}})


@pytest.mark.parametrize("text", ["comet", "x=comet", "x=nope:{}", "x=comet:[1, 2]", "=comet:{}", "x=comet:{bad"])
def test_malformed_variants_are_refused(text):
    with pytest.raises(ValueError):
        parse_variant(text)


def test_runs_to_make_lists_methods_fraction_run_and_variants():
    args = SimpleNamespace(methods=["simclr", "polywindow"], epochs=20, polywindow_fraction=0.25,
                           variant=['pclr-wide=pclr:{"patients_per_batch": 64}'])
    assert runs_to_make(args) == [("simclr", "simclr", 20, {}), ("polywindow", "polywindow", 20, {}),
                                  ("polywindow@5ep", "polywindow", 5, {}),
                                  ("pclr-wide", "pclr", 20, {"patients_per_batch": 64})]
    args.variant = ["simclr=moco:{}"]
    with pytest.raises(ValueError, match="duplicate"):
        runs_to_make(args)
