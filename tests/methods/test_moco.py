"""MoCo (tscl/methods/moco.py): the momentum key branch and the queue of negatives."""
import torch

from tscl.methods import build_method

from .conftest import N, enc, make_batch


def test_moco_key_branch_gets_no_gradient_and_follows_the_ema(spy):
    x, batch = make_batch()
    m = build_method("moco", enc(), proj_dim=16, momentum=0.9, queue_size=20)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    key_before = [p.detach().clone() for p in [*m.key_encoder.parameters(), *m.key_head.parameters()]]
    loss = m(x, batch)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in [*m.key_encoder.parameters(), *m.key_head.parameters()])
    opt.step()
    online = [p.detach().clone() for p in [*m.encoder.parameters(), *m.head.parameters()]]
    m.after_step()
    for pk, k0, pq in zip([*m.key_encoder.parameters(), *m.key_head.parameters()], key_before, online):
        torch.testing.assert_close(pk, 0.9 * k0 + 0.1 * pq, rtol=0, atol=1e-6)
    assert spy.calls[0]["kw"]["bank"] is None  # empty queue at the first step
    m(x, batch)
    bank = spy.calls[1]["kw"]["bank"]
    assert bank.shape == (N, 16) and spy.calls[1]["kw"].get("bank_ids") is None
    state = m.state_dict()
    assert {"queue", "queue_ptr", "queue_filled"} <= set(state) and int(state["queue_ptr"]) == N
