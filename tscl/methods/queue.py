"""The momentum key branch and the FIFO key queue shared by MoCo and PMQ.

Key branch: a copy f_k of the query modules that gets no gradient and follows them by an
exponential moving average after every optimiser step::

    θ_k ← m θ_k + (1 − m) θ_q

Queue: a ring buffer of the last K normalised keys ``queue [K, D]`` (optionally with their ids
``queue_ids [K]``), a write pointer ``queue_ptr`` and a fill count ``queue_filled``. All of them
are registered buffers of the method itself (no submodule), so a method's ``state_dict`` holds
them under those names and checkpoints of earlier runs load unchanged. Until the first wrap the
valid entries are ``queue[:queue_filled]``.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["key_copy", "momentum_update", "register_queue", "queue_bank", "enqueue", "enqueue_keys"]


def key_copy(*modules: nn.Module) -> tuple[nn.Module, ...]:
    """Deep copies of ``modules`` with every parameter frozen (``requires_grad=False``): the key branch."""
    copies = tuple(copy.deepcopy(m) for m in modules)
    for c in copies:
        for p in c.parameters():
            p.requires_grad_(False)
    return copies


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, m: float) -> None:
    """θ_k ← m θ_k + (1 − m) θ_q for every parameter (buffers such as BN statistics are the key branch's own)."""
    for pk, pq in zip(key.parameters(), query.parameters()):
        pk.mul_(m).add_(pq.detach(), alpha=1 - m)


def register_queue(method: nn.Module, size: int, dim: int, ids: bool = False) -> None:
    """Register the queue buffers on ``method``: ``queue [size, dim]`` (random unit rows),
    ``queue_ids [size]`` (−1, when ``ids``), ``queue_ptr`` and ``queue_filled`` (0)."""
    method.register_buffer("queue", nn.functional.normalize(torch.randn(size, dim), dim=1))
    if ids:
        method.register_buffer("queue_ids", torch.full((size,), -1, dtype=torch.long))
    method.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
    method.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))


def queue_bank(method: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    """The filled part of ``method``'s queue as the kernel's ``(bank [n, D], bank_ids [n])``
    (copies; ``bank_ids`` None without ids), or ``(None, None)`` while the queue is empty."""
    n = int(method.queue_filled)
    if not n:
        return None, None
    ids = getattr(method, "queue_ids", None)
    return method.queue[:n].clone(), (ids[:n].clone() if ids is not None else None)


@torch.no_grad()
def enqueue(queue: Tensor, ptr: Tensor, filled: Tensor, keys: Tensor, queue_ids: Tensor | None = None,
            ids: Tensor | None = None) -> None:
    """Write ``keys [B, D]`` (and their ``ids [B]``) into the ring buffer ``queue [K, D]`` at ``ptr``.

    ``ptr ← (ptr + B) mod K`` and ``filled ← min(filled + B, K)``; until the first wrap the
    valid entries are ``queue[:filled]``. More than K keys: only the last K are kept."""
    size = queue.shape[0]
    if keys.shape[0] > size:
        keys = keys[-size:]
        ids = ids[-size:] if ids is not None else None
    b = keys.shape[0]
    rows = (int(ptr) + torch.arange(b, device=queue.device)) % size
    queue[rows] = keys.to(queue.dtype)
    if queue_ids is not None:
        queue_ids[rows] = ids.to(queue_ids.dtype)
    ptr.fill_((int(ptr) + b) % size)
    filled.fill_(min(int(filled) + b, size))


@torch.no_grad()
def enqueue_keys(method: nn.Module, keys: Tensor, ids: Tensor | None = None) -> None:
    """:func:`enqueue` into ``method``'s registered queue buffers (``queue_ids`` where it has them)."""
    enqueue(method.queue, method.queue_ptr, method.queue_filled, keys, getattr(method, "queue_ids", None), ids)
