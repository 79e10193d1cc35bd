"""PCLR (tscl/methods/pclr.py): two recordings of one patient are positives, ids = patient ids."""
import torch

from tscl.methods import build_method

from .conftest import PIDS, N, enc, ids_of, make_batch


def test_pclr_ids_are_the_patients_and_the_recordings_go_in_unaugmented(spy):
    x, batch = make_batch()
    m = build_method("pclr", enc(), proj_dim=16)
    seen = []
    m.encoder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    m(x, batch)
    (call,) = spy.calls
    q, k = call["args"][:2]
    qi, ki = ids_of(call)
    assert q is k and q.shape == (N, 16) and call["kw"]["exclude_self"] is True
    # the pairing replaces augmentation: each row is one recording, its positives the patient's other ones
    assert torch.equal(qi, PIDS) and torch.equal(ki, PIDS)
    assert len(seen) == 1 and torch.equal(seen[0], x)


def test_pclr_group_pairs_items_of_one_source_and_keeps_patients_as_negatives(spy):
    import polars as pl
    import pytest

    # two patients, two files each, three windows per file: positives are windows of one file
    index = pl.DataFrame({"patient_id": ["p"] * 6 + ["q"] * 6,
                          "source": [f"{p}_{k}.edf" for p in "pq" for k in (1, 2) for _ in range(3)]})
    m = build_method("pclr", enc(), proj_dim=16, group="source", patients_per_batch=4)
    sampler = m.make_sampler(index, seed=0)
    (rows,) = list(sampler)  # four files x two windows
    sources = index["source"].to_numpy()[rows]
    assert sorted(set(sources)) == ["p_1.edf", "p_2.edf", "q_1.edf", "q_2.edf"]
    assert all((sources == s).sum() == 2 for s in set(sources))
    extras = m.batch_extras(index)
    x, _ = make_batch()
    batch = {"patient_ids": torch.tensor([0] * 6 + [1] * 6)[rows], "record_ids": torch.tensor(rows),
             "group_ids": extras["group_ids"][rows]}
    m(x[: len(rows)], batch)
    qi, ki = ids_of(spy.calls[-1])
    assert torch.equal(qi, batch["group_ids"]) and torch.equal(ki, batch["group_ids"])
    assert len(set(qi.tolist())) == 4  # a patient's other file is a negative, not a positive
    assert build_method("pclr", enc(), proj_dim=16).batch_extras(index) == {}
    with pytest.raises(ValueError, match="group='visit'"):
        build_method("pclr", enc(), proj_dim=16, group="visit").make_sampler(index, seed=0)
