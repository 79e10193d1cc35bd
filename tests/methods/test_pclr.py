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
