"""Contrastive methods: each a small module mapping a batch to (q, k, ids, bank) for ``info_nce``.

A method is an ``nn.Module`` with:

- ``encoder`` (the backbone that is exported and probed) and whatever heads it needs;
- ``make_sampler(index, seed)``: a batch sampler over the cohort index (polars DataFrame);
- ``forward(x [B, C, T], batch)``: the loss for one batch, ``batch`` holding int64 tensors
  such as ``patient_ids`` and ``record_ids`` aligned with ``x``;
- optional ``after_step()`` for state updated outside autograd (EMA encoders, queues);
- optional ``batch_extras(index)``: per-row tensors ``{name: [N]}`` the trainer slices into
  every batch (SupCon's ``labels``).

Data parallel (``torchrun``, see :mod:`tscl.distributed`): each rank holds its own rows of
the global batch. A method encodes them, then calls
``z, ids = gather_embeddings(z, ids)`` before ``info_nce`` so that every rank's anchors see
every rank's keys; the result is the single-process loss on the global batch, and the
gradients after DistributedDataParallel equal the single-process gradients. Ids must be
global: ``batch["patient_ids"]``, ``batch["record_ids"]`` (never a per-rank ``arange``). Keys
without gradient (momentum encoders) go through ``all_gather(k)``; queues and banks are
updated in ``after_step`` with the gathered keys, so every rank holds the same queue. All
helpers are the identity in a single process.

=================  ==========================  ================================================
name               paper                       positives (ids) / bank
=================  ==========================  ================================================
``simclr``         Chen et al. 2020            two augmented views of one recording
``moco``           He et al. 2020 (v2)         own momentum key; FIFO queue = negatives
``supcon``         Khosla et al. 2020          same class label
``pclr``           Diamant et al. 2022         two recordings of one patient
``polywindow``     Yuan et al. 2025            K windows of one record
``pmq``            Sun, Yang, Dong 2025        own key + same patient, queue with patient ids
``clocs-cmsc``     Kiyasseh et al. 2021        adjacent segments / same patient
``clocs-cmlc``     Kiyasseh et al. 2021        different leads, same segment / same patient
``clocs-cmsmlc``   Kiyasseh et al. 2021        different segment and lead / same patient
``comet``          Wang et al. 2023            observation, sample, trial, patient levels
``clip``           Radford et al. 2021         the visit's other modality (tabular columns), symmetric
=================  ==========================  ================================================
"""
from tscl import catalog

from .base import Method
from .clip import CLIP
from .clocs import CLOCS
from .comet import COMET
from .moco import MoCo
from .pclr import PCLR
from .pmq import PMQ
from .polywindow import PolyWindow
from .simclr import SimCLR
from .supcon import SupCon

# the built-in methods, by name, as tscl.catalog lists them; entry points (group tscl.methods) and
# module:Name join it when first used
METHODS = {name: catalog.load("methods", name) for name in catalog.builtin_names("methods")}


def get_method(name: str):
    """The class of method ``name``: built in, an entry point of group ``tscl.methods``, or ``module:Name``
    (a :class:`~tscl.methods.base.Method` subclass); an unknown name raises ``ValueError`` naming the known ones."""
    if name not in METHODS:
        cls = catalog.load("methods", name)
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise ValueError(f"method {name!r} is not a tscl Method subclass (tscl.methods.base.Method)")
        METHODS[name] = cls
    return METHODS[name]


def method_class(name: str):
    """The class behind method ``name`` (CLOCS modes are ``functools.partial`` s of :class:`CLOCS`)."""
    cls = get_method(name)
    return getattr(cls, "func", cls)


def build_method(name: str, encoder, **kwargs):
    method = get_method(name)(encoder, **kwargs)
    method.augment_given = "augment" in kwargs  # set_modality keeps a chosen augmentation, "none" included
    return method


__all__ = ["METHODS", "get_method", "method_class", "build_method", "Method", "PCLR", "SimCLR", "MoCo", "SupCon",
           "PolyWindow", "PMQ", "CLOCS", "COMET", "CLIP"]
