"""Every method under 2-process DDP (gloo, CPU): loss, gradients and queues equal one process on the global batch.

Each rank encodes its half of the batch; the methods gather embeddings (with gradients) and ids
across ranks, so the loss is the global-batch loss and, after DistributedDataParallel averages
the gradients, the gradients are the single-process ones. Momentum methods enqueue the gathered
keys, so both ranks end with the queue one process would hold. Modules run in eval mode
(BatchNorm on running statistics) with augmentations off so both sides see identical inputs.
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from tscl import distributed
from tscl.encoders import build_encoder
from tscl.methods import METHODS, build_method

N, C, T = 8, 2, 128
PIDS = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])  # same-patient pairs straddle the ranks
KWARGS = {
    "simclr": {"augment": "none"}, "supcon": {"augment": "none"}, "pclr": {},
    "moco": {"augment": "none", "queue_size": 32, "momentum": 0.9},
    "pmq": {"augment": "none", "queue_size": 32, "momentum": 0.9},
    "polywindow": {"augment": "none", "n_windows": 4, "window_len": 32, "stride": 32},
    "clocs-cmsc": {}, "clocs-cmlc": {"leads": [0, 1]}, "clocs-cmsmlc": {"leads": [0, 1]},
    "comet": {"augment": "none"}, "clip": {"b_channels": 3},
}
assert set(KWARGS) == set(METHODS), "every method is checked under DDP"


def _method(name):
    torch.manual_seed(0)
    return build_method(name, build_encoder("cnn1d", C, widths=[8, 16]), proj_dim=8, **KWARGS[name]).eval()


def _batch(rows=slice(None)):
    x = torch.randn(N, C, T, generator=torch.Generator().manual_seed(1))
    batch = {"patient_ids": PIDS, "record_ids": torch.arange(N) + 100, "labels": PIDS % 2,
             "tabular": torch.randn(N, 3, generator=torch.Generator().manual_seed(2))}
    return x[rows], {k: v[rows] for k, v in batch.items()}


def _step(model, method, x, batch, steps=2):
    """Two optimiser-free steps: loss + backward, then the method's after_step (EMA, enqueue)."""
    out = {}
    for s in range(steps):
        model.zero_grad(set_to_none=True)
        loss = model(x, batch)
        loss.backward()
        if hasattr(method, "after_step"):
            method.after_step()
        out[f"loss{s}"] = loss.detach().reshape(1)
    out.update({f"grad.{k}": p.grad for k, p in method.named_parameters() if p.grad is not None})
    out.update({f"buf.{k}": b.float() for k, b in method.named_buffers() if k.startswith("queue")})
    return out


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, batch = _batch(slice(rank * N // world, (rank + 1) * N // world))
    for name in METHODS:
        method = _method(name)
        model = torch.nn.parallel.DistributedDataParallel(method)
        save_file(_step(model, method, x, batch), f"{out}/{name}.rank{rank}.safetensors")
        del model, method
    distributed.shutdown()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_methods")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("name", list(METHODS))
def test_ddp_equals_single_process_on_the_global_batch(ranks, name):
    torch.set_num_threads(1)
    method = _method(name)
    ref = _step(method, method, *_batch())
    assert any(k.startswith("grad.") for k in ref)
    for r in range(2):
        got = load_file(ranks / f"{name}.rank{r}.safetensors")
        assert set(got) == set(ref), f"rank {r}: {sorted(set(got) ^ set(ref))}"
        for k, v in ref.items():
            torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name} rank {r} {k}: {m}")
    if name in ("moco", "pmq"):
        assert int(ref["buf.queue_filled"]) == 2 * N * (2 if name == "pmq" else 1)  # gathered keys, 2 steps
