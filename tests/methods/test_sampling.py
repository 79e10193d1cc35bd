"""The methods' batch samplers (tscl/methods/sampling.py)."""
import numpy as np

from tscl.methods.sampling import RecordBatchSampler, TrialShuffleSampler


def test_trial_shuffle_batches_hold_several_recordings_of_one_patient():
    pids = np.repeat(np.arange(10), 4)
    s = TrialShuffleSampler(pids, batch_size=8, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 5 and sorted(sum(batches, [])) == list(range(40))
    assert all(np.bincount(pids[b]).max() >= 2 for b in batches)
    s.set_epoch(1)
    assert list(s) != batches
    r = RecordBatchSampler(10, batch_size=4, seed=0)  # the last, partial batch is dropped: every batch is full
    batches = list(r)
    assert len(r) == len(batches) == 2 and all(len(b) == 4 for b in batches)
    assert len(set(sum(batches, []))) == 8 and set(sum(batches, [])) <= set(range(10))
    r = RecordBatchSampler(10, batch_size=4, seed=0, drop_last=False)
    assert len(r) == 3 and sorted(sum(list(r), [])) == list(range(10))
    assert len(RecordBatchSampler(9, batch_size=4, drop_last=False)) == 2  # a last batch of one has no negatives
