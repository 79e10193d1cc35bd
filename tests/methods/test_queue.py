"""The FIFO key queue of MoCo and PMQ (tscl/methods/queue.py)."""
import torch

from tscl.methods.queue import enqueue


def test_queue_fifo_pointer_semantics():
    q, ptr, filled = torch.zeros(10, 2), torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.long)
    ids = torch.full((10,), -1)
    for step in range(3):
        keys = torch.arange(8.0).reshape(4, 2) + 100 * step
        enqueue(q, ptr, filled, keys, ids, torch.arange(4) + 10 * step)
    # step 0 -> rows 0..3, step 1 -> 4..7, step 2 -> 8, 9, then wraps to 0, 1
    assert int(ptr) == 2 and int(filled) == 10
    assert torch.equal(q[8:10], torch.tensor([[200.0, 201], [202, 203]]))
    assert torch.equal(q[0:2], torch.tensor([[204.0, 205], [206, 207]]))
    assert torch.equal(q[2:4], torch.tensor([[4.0, 5], [6, 7]]))
    assert ids.tolist() == [22, 23, 2, 3, 10, 11, 12, 13, 20, 21]
