"""The momentum key branch and the FIFO key queue shared by MoCo and PMQ.

Key branch: a copy f_k of the query modules that gets no gradient and follows them by an
exponential moving average after every optimiser step::

    θ_k ← m θ_k + (1 − m) θ_q

Queue: a ring buffer of the last K normalised keys ``queue [K, D]`` (optionally with their ids
``queue_ids [K]``), a write pointer ``queue_ptr`` and a fill count ``queue_filled``. All of them
are registered buffers of the method itself (no submodule), so a method's ``state_dict`` holds
them under those names and checkpoints of earlier runs load unchanged. Until the first wrap the
valid entries are ``queue[:queue_filled]``.

A momentum method (MoCo, PMQ) holds ``encoder``, ``head``, their :func:`key_copy` ``key_encoder``,
``key_head``, a ``momentum`` and, between its forward and the optimiser step, the keys to enqueue
in ``_pending = (keys [B, D], ids [B] or None)``; its ``after_step`` is :func:`update_key_branch`.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["key_copy", "encode_keys", "momentum_update", "update_key_branch", "register_queue", "queue_bank", "enqueue",
           "enqueue_keys"]


def key_copy(*modules: nn.Module) -> tuple[nn.Module, ...]:
    """Deep copies of ``modules`` with every parameter frozen (``requires_grad=False``): the key branch."""
    copies = tuple(copy.deepcopy(m) for m in modules)
    for c in copies:
        for p in c.parameters():
            p.requires_grad_(False)
    return copies


@torch.no_grad()
def encode_keys(method: nn.Module, views) -> Tensor:
    """The key branch's keys of ``views``: ``normalize(key_head(key_encoder(views)))`` in float32, ``[B, D]``."""
    return nn.functional.normalize(method.key_head(method.key_encoder(views)).float(), dim=1)


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


@torch.no_grad()
def update_key_branch(method: nn.Module) -> None:
    """A momentum method's ``after_step``: the key branch follows the query branch by EMA (``momentum``),
    then the keys of the last forward (``_pending``) enter the queue."""
    momentum_update(method.key_encoder, method.encoder, method.momentum)
    momentum_update(method.key_head, method.head, method.momentum)
    if method._pending is not None:
        enqueue_keys(method, *method._pending)
        method._pending = None
