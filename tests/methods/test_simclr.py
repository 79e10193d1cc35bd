"""SimCLR (tscl/methods/simclr.py): two views of each recording, ids = record ids."""
import torch

from tscl.methods import build_method

from .conftest import N, enc, ids_of, make_batch


def test_simclr_hands_two_views_with_record_ids(spy):
    x, batch = make_batch()
    build_method("simclr", enc(), proj_dim=16)(x, batch)
    (call,) = spy.calls
    q, k = call["args"][:2]
    qi, ki = ids_of(call)
    assert q is k and q.shape == (2 * N, 16) and call["kw"]["exclude_self"] is True
    # view i and i + N share the recording's global id (global so ranks cannot collide under DDP)
    assert torch.equal(qi, batch["record_ids"].repeat(2)) and torch.equal(qi, ki)
