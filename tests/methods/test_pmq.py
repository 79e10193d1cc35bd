"""PMQ (tscl/methods/pmq.py): the patient memory queue against a hand-written reference."""
import math

import pytest
import torch

from tscl.methods import build_method

from .conftest import PIDS, enc, ids_of, make_batch


def pmq_reference(q, k, bank, bank_ids, pids, tau, mode):
    """The PMQ loss written out with loops (per-anchor averaging of the patient term)."""
    q, k = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(k, dim=1)
    bank = torch.zeros(0, q.shape[1]) if bank is None else torch.nn.functional.normalize(bank, dim=1)
    bank_ids = torch.zeros(0, dtype=torch.long) if bank_ids is None else bank_ids
    inst, pat = [], []
    for i in range(len(q)):
        cols, same = [], []
        for j in range(len(k)):
            cols.append(float(q[i] @ k[j]) / tau)
            same.append(int(pids[j]) == int(pids[i]))
        n_batch = len(cols)
        for b in range(len(bank)):
            is_same = int(bank_ids[b]) == int(pids[i])
            if mode == "mask" and is_same:
                continue
            cols.append(float(q[i] @ bank[b]) / tau)
            same.append(is_same)
        log_d = math.log(sum(math.exp(s) for s in cols))
        inst.append(log_d - cols[i])
        pos = [s for s, p in zip(cols, same) if p]
        assert all(not p for p in same[n_batch:]) or mode == "positive"
        pat.append(log_d - sum(pos) / len(pos))
    if mode == "mask":
        return 2 * tau * sum(pat) / len(pat)
    return tau * (sum(inst) / len(inst) + sum(pat) / len(pat))


@pytest.mark.parametrize("mode", ["positive", "mask"])
def test_pmq_bank_carries_patient_ids_and_matches_the_hand_reference(spy, mode):
    x, batch = make_batch()
    m = build_method("pmq", enc(), proj_dim=16, queue_size=64, bank_same_id=mode, segments_per_record=2,
                     temperature=0.2, augment="none")
    m(x, batch)
    m.after_step()
    spy.calls.clear()
    batch2 = dict(batch, patient_ids=torch.tensor([0, 0, 5, 5, 2, 6, 7, 7]))  # patients 0 and 2 are in the queue
    loss = m(x, batch2)
    pids = batch2["patient_ids"].repeat_interleave(2)
    for call in spy.calls:
        if mode == "mask":
            assert call["kw"]["bank_same_id"] == "mask" and torch.equal(call["kw"]["bank_ids"], PIDS.repeat_interleave(2))
    pat = next(c for c in spy.calls if c["kw"].get("bank_ids") is not None)
    assert torch.equal(ids_of(pat)[0], pids)
    assert len(spy.calls) == (1 if mode == "mask" else 2)
    q, k = pat["args"][:2]
    ref = pmq_reference(q.detach(), k, pat["kw"]["bank"], pat["kw"]["bank_ids"], pids, 0.2, mode)
    assert loss.item() == pytest.approx(ref, rel=1e-4)
