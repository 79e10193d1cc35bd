"""SupCon (tscl/methods/supcon.py): ids = class labels from the cohort index."""
import polars as pl
import pytest
import torch

from tscl.methods import build_method

from .conftest import enc, ids_of, make_batch


def test_supcon_ids_are_the_labels(spy):
    x, batch = make_batch()
    build_method("supcon", enc(), proj_dim=16)(x, batch)
    (call,) = spy.calls
    qi, _ = ids_of(call)
    assert torch.equal(qi, batch["labels"].repeat(2)) and call["kw"]["exclude_self"] is True


def test_supcon_batch_extras_from_label_columns():
    m = build_method("supcon", enc(), label="lvh,af")
    index = pl.DataFrame({"lvh": [0, 1, 0, None], "af": [1, 1, 1, 0]})
    labels = m.batch_extras(index)["labels"]
    assert labels[0] == labels[2] and len({int(v) for v in labels}) == 3
    with pytest.raises(ValueError, match="not in the cohort index"):
        build_method("supcon", enc(), label="nope").batch_extras(index)
