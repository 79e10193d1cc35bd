import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tscl.methods.sampling import RecordBatchSampler, TrialShuffleSampler
from tscl.samplers import PatientBatchSampler, encode_ids


def _cohort(counts):
    """patient p has counts[p] recordings; returns per-row patient ids."""
    return np.repeat(np.arange(len(counts)), counts)


def test_batches_hold_distinct_patients_with_two_distinct_recordings_each():
    pids = _cohort([2, 3, 4, 5, 6, 2, 3, 2, 4, 2])
    sampler = PatientBatchSampler(pids, patients_per_batch=4, recordings_per_patient=2, seed=1, drop_last=False)
    seen_patients = []
    for batch in sampler:
        batch = np.asarray(batch)
        assert len(set(batch.tolist())) == len(batch), "a recording was drawn twice"
        pairs = pids[batch].reshape(-1, 2)
        assert (pairs[:, 0] == pairs[:, 1]).all(), "the two recordings of a pair belong to different patients"
        assert len(set(pairs[:, 0])) == len(pairs), "a patient appears twice in one batch"
        seen_patients.extend(pairs[:, 0].tolist())
    assert sorted(seen_patients) == list(range(10)), "every eligible patient is visited once per epoch"
    assert len(sampler) == 3
    assert len(PatientBatchSampler(pids, patients_per_batch=4, seed=1)) == 2  # by default the partial batch is left out


def test_single_recording_patients_are_excluded_explicitly():
    pids = _cohort([1, 2, 1, 3, 2])
    with pytest.warns(UserWarning, match="2 of 5 patients"):
        sampler = PatientBatchSampler(pids, patients_per_batch=8)
    assert sorted(sampler.excluded_patients) == [0, 2]
    drawn = {int(pids[i]) for b in sampler for i in b}
    assert drawn == {1, 3, 4}


def test_cannot_find_two_patients_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot build a batch: 1 patient"):
        PatientBatchSampler(_cohort([1, 3, 1]), patients_per_batch=4)
    with pytest.raises(ValueError, match="patients_per_batch"):
        PatientBatchSampler(_cohort([2, 2]), patients_per_batch=1)


def test_order_is_seeded_and_changes_with_epoch():
    pids = _cohort([3] * 20)
    a = PatientBatchSampler(pids, patients_per_batch=5, seed=7)
    b = PatientBatchSampler(pids, patients_per_batch=5, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_last_batch_with_one_patient_is_dropped():
    sampler = PatientBatchSampler(_cohort([2] * 5), patients_per_batch=4)
    sizes = [len(b) for b in sampler]
    assert sizes == [8]
    assert len(sampler) == 1


def test_encode_ids_dense_codes():
    assert encode_ids(["b", "a", "b", "c"]).tolist() == [0, 1, 0, 2]


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 4), min_size=2, max_size=40), per_batch=st.integers(2, 9),
       seed=st.integers(0, 5))
def test_every_batch_of_every_epoch_has_the_same_size(counts, per_batch, seed):
    """drop_last: the last, partial batch is left out (so the loss has as many negatives at the end of an epoch as
    at its start), unless the data fill no batch, when the one batch holds them all."""
    pids = _cohort(counts)
    eligible = sum(c >= 2 for c in counts)
    samplers = [RecordBatchSampler(len(pids), batch_size=per_batch, seed=seed),
                TrialShuffleSampler(pids, batch_size=per_batch, seed=seed)]
    if eligible >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            samplers.append(PatientBatchSampler(pids, patients_per_batch=per_batch, seed=seed))
    for sampler in samplers:
        n = getattr(sampler, "n_patients", len(pids))
        unit = 2 if isinstance(sampler, PatientBatchSampler) else 1  # rows per patient in a PCLR batch
        want = per_batch if n >= per_batch else n
        for epoch in range(3):
            sampler.set_epoch(epoch)
            sizes = [len(b) for b in sampler]
            assert len(sizes) == len(sampler) == max(1, n // per_batch)
            assert set(sizes) == {want * unit}, (type(sampler).__name__, sizes)


def test_drop_last_can_be_turned_off():
    assert [len(b) for b in RecordBatchSampler(10, batch_size=4)] == [4, 4]
    assert [len(b) for b in RecordBatchSampler(10, batch_size=4, drop_last=False)] == [4, 4, 2]
    assert len(RecordBatchSampler(9, batch_size=4, drop_last=False)) == 2  # a last batch of one has no negatives


def test_a_dropped_remainder_is_a_different_set_of_items_each_epoch():
    sampler = RecordBatchSampler(10, batch_size=4, seed=0)
    seen = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        seen |= {i for b in sampler for i in b}
    assert seen == set(range(10))
