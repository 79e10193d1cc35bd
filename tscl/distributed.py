"""Data-parallel helpers: process group from torchrun's environment, gathers that keep gradients.

``torchrun --nproc-per-node=W -m tscl pretrain ...`` starts W processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`init_distributed` joins them (NCCL on CUDA,
Gloo on CPU). Without those variables every function here is the identity, so methods call
them unconditionally.

Why the loss of a data-parallel step equals the single-process loss on the global batch:
each rank encodes its own rows, then :func:`gather_embeddings` concatenates every rank's
``z`` (and ids) in rank order, so each rank computes the same global-batch loss L. In the
backward pass rank s's copy of the gather hands back dL/dz_r for every rank r's slice; the
gather's backward sums these over the W ranks (an all-reduce) and keeps its own slice, so
rank r's ``z_r`` receives W · dL/dz_r. DistributedDataParallel then averages parameter
gradients over the W ranks: (1/W) Σ_r J_rᵀ (W · dL/dz_r) = Σ_r J_rᵀ dL/dz_r = dL/dθ, the
single-process gradient, with no extra factor. (A gather whose backward only kept its own
slice, without the sum, would give dL/dθ / W.) BatchNorm statistics stay per rank unless the
trainer converts them to SyncBatchNorm (it does on CUDA).
"""
from __future__ import annotations

import atexit
import gc
import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["init_distributed", "is_distributed", "rank", "world_size", "all_gather", "gather_embeddings",
           "rank_zero_first", "node_local_first", "local_rank", "barrier", "shutdown", "check_ranks", "pg_timeout", "SilentRankError"]

_MONITOR = None  # a gloo group for monitored barriers (names the ranks that do not answer)


class SilentRankError(RuntimeError):
    """Some ranks did not reach a synchronisation point within the process-group timeout."""


def pg_timeout() -> float:
    """Seconds a rank waits for the others: ``$TSCL_PG_TIMEOUT`` (default 600; PyTorch's own is 1800)."""
    text = os.environ.get("TSCL_PG_TIMEOUT", "600")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"TSCL_PG_TIMEOUT must be a number of seconds, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"TSCL_PG_TIMEOUT must be > 0, got {value}")
    return value


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_distributed(device: str = "auto") -> torch.device:
    """Join the process group torchrun describes (once) and return this rank's device.

    ``device``: "auto" (this rank's GPU when CUDA is available, else CPU), "cuda" (this rank's
    GPU, ``LOCAL_RANK``), "cpu" or a full name such as "cuda:1" (used as given)."""
    n = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:  # an explicit index: generators and RNG states are keyed by it
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if n > 1 and not dist.is_initialized():
        global _MONITOR
        timeout = timedelta(seconds=pg_timeout())
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None,
                                timeout=timeout)
        _MONITOR = dist.new_group(backend="gloo", timeout=timeout) if dev.type == "cuda" else None
        atexit.register(shutdown)
    return dev


def check_ranks(where: str, timeout_s: float | None = None) -> None:
    """Wait until every rank reaches ``where``; a rank that stays silent (frozen, stopped) for
    ``timeout_s`` (default :func:`pg_timeout`) raises :class:`SilentRankError` naming it, instead
    of blocking the others until the collective's own timeout. Identity in one process."""
    if not is_distributed():
        return

    seconds = timeout_s if timeout_s is not None else pg_timeout()
    try:
        dist.monitored_barrier(group=_MONITOR, timeout=timedelta(seconds=seconds), wait_all_ranks=True)
    except RuntimeError as err:
        raise SilentRankError(f"rank {rank()}: not every rank reached {where} within {seconds:g} s "
                              f"(TSCL_PG_TIMEOUT): {err}") from err


def shutdown() -> None:
    """Leave the process group. Garbage is collected first so that no DDP wrapper (its reducer
    holds the group) survives into interpreter shutdown, where gloo's teardown can abort the
    process with SIGABRT after the work is done."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def rank_zero_first():
    """Rank 0 runs the block first, the others after it finished."""
    if rank() != 0:
        barrier()
    yield
    if rank() == 0:
        barrier()


def local_rank() -> int:
    """This process's rank on its node (torchrun's ``LOCAL_RANK``; 0 outside torchrun)."""
    text = os.environ.get("LOCAL_RANK", "0")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"LOCAL_RANK must be an integer, got {text!r}") from None


@contextmanager
def node_local_first():
    """On every node at once, ``LOCAL_RANK`` 0 runs the block first (e.g. builds or checks the node's cache
    with all its cores); each node's other ranks run it after every node's first rank finished. With caches on
    node-local disks every node builds its own, concurrently, and no two ranks of one node build the same cache;
    a cache folder shared by several nodes is built by their first ranks together (the cache's shard claims
    share the work). Identity in one process.

    The caches the first rank opened (``tscl.loaders.cache.recording_opens``) are handed to its node's other
    ranks (``trusting``), which open them from their manifest and index alone: the first rank checked the
    sources, so the others read no metadata table and stat no source file. A rank's node is told by torchrun's
    numbering (the ranks of a node are ``RANK - LOCAL_RANK`` onwards) and checked by host name."""
    if not is_distributed():
        yield
        return
    from tscl.loaders import cache as _cache

    if local_rank() == 0:
        opened: dict = {}
        try:
            with _cache.recording_opens() as opened:
                yield
        finally:  # also when the block failed: the others then open from the sources (and say why themselves)
            _handoff(opened)
    else:
        with _cache.trusting(_handoff({})):
            yield


def _handoff(mine: dict) -> dict:
    """Every rank's ``mine`` gathered (one collective, after which every node's first rank has finished); returns
    this node's first rank's."""
    import socket

    every: list = [None] * world_size()
    dist.all_gather_object(every, (socket.gethostname(), local_rank(), mine), group=_MONITOR)
    first = rank() - local_rank()
    if not 0 <= first < len(every) or every[first][:2] != (socket.gethostname(), 0):
        return {}  # not numbered as torchrun numbers ranks: nothing is trusted, every rank checks the sources
    return every[first][2]


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's ``x [n_r, ...]`` in rank order; backward: all-reduce (sum) the
    gradient of the concatenation and return this rank's slice."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int]) -> Tensor:
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def _sizes(n: int, device) -> list[int]:
    mine = torch.tensor([n], device=device)
    every = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(every, mine)
    return [int(s) for s in every]


def all_gather(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order, differentiable (see the module
    docstring for the gradient). Ranks may hold different row counts. Identity when not distributed."""
    if not is_distributed():
        return x
    return _AllGather.apply(x, sizes or _sizes(x.shape[0], x.device))


def gather_embeddings(z: Tensor, ids: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The global batch: ``(z [N_global, D], ids [N_global])`` from every rank's ``z [n, D]``, ``ids [n]``.

    ``z`` keeps its gradient (every rank's anchors see every rank's keys). ``ids`` must be
    global (patient ids, record ids from the batch dict), never a per-rank ``arange``."""
    if not is_distributed():
        return z, ids
    sizes = _sizes(z.shape[0], z.device)
    return all_gather(z, sizes), (all_gather(ids, sizes) if ids is not None else None)
