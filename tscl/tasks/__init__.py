"""Named downstream tasks: a source, its options, label columns, the rows they apply to, a split and a kind.

A :class:`Task` is a tuple, nothing more: the data is opened with :func:`tscl.datasets.open_dataset`
like every command opens it, and the labels are columns of the source's index. What a label means
and how it is read lives in the source module (PTB-XL's superclasses in ``tscl.datasets.waveform``
and ``loaders/ptbxl.py``, AAMI beat classes in ``tscl.datasets.annotated``, MIMIC-IV's admission
outcomes in ``tscl.datasets.ehr``), and each source module registers its own tasks with
:func:`register_task`, so a new dataset with a downstream task is one module.

Fields:

- ``source`` and ``options`` (``--dataset-kwargs``: window length, sampling rate, cohort);
- ``labels``: index columns holding 0/1 (or numbers for ``kind="regression"``), or ``COLUMN=VALUE``
  for the indicator of a categorical column (``aami=V``);
- ``rows``: ``{column: allowed values}`` restricting the task to the rows it is defined on
  (PTB-XL's superdiagnostic task: the ECGs with a superclass code, ``{"has:super": [1]}``); rows whose
  label is null are left out in any case, and the report says how many;
- ``split``: ``"dataset"`` (the source's ``split`` column: ``train`` trains, ``val`` chooses the
  probe's hyper-parameters when it holds enough patients, ``test`` tests; ``test_splits`` may name more
  sides to test on) or ``"random"`` (a patient-level split, 30 % of the patients, stratified so both
  sides hold both classes when a seed among 200 gives it: for samples whose own split has no test side);
- ``kind``: ``binary``, ``multilabel``, ``multiclass`` (one class per row: the label columns are the classes'
  indicators, exactly one set per row; the decision is the argmax) or ``regression``;
- ``fits`` (optional): what an encoder must take (``in_channels``, ``fs``), so a run that cannot is refused
  before any data loads.

:func:`tscl.probes.evaluate` runs a task (``EvalSpec(task=..., root=..., encoders=[...])``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tscl.datasets import get_source, list_sources

__all__ = ["Task", "TASKS", "KINDS", "SPLIT_RULES", "register_task", "get_task", "list_tasks", "task_names"]

KINDS = ("binary", "multilabel", "multiclass", "regression")
SPLIT_RULES = ("dataset", "random")


@dataclass(frozen=True)
class Task:
    """A downstream task: ``source`` opened with ``options``, ``labels`` on ``rows``, split by ``split``."""

    name: str
    source: str
    labels: tuple
    kind: str
    split: str = "dataset"
    options: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)
    test_splits: tuple = ("test",)
    description: str = ""
    source_column: str | None = None  # a column naming where an item comes from (device, database): the audit's
    # source-shortcut probe
    fits: dict = field(default_factory=dict)  # what an encoder must take ({"in_channels", "fs"}): checked against a
    # run before any data loads


TASKS: dict[str, Task] = {}


def register_task(name: str, source: str, labels, kind: str, *, split: str = "dataset", options: dict | None = None,
                  rows: dict | None = None, test_splits=("test",), description: str = "",
                  source_column: str | None = None, fits: dict | None = None) -> Task:
    """Declare task ``name`` (called by the source module that knows the labels); returns the :class:`Task`."""
    if kind not in KINDS:
        raise ValueError(f"task {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if split not in SPLIT_RULES:
        raise ValueError(f"task {name!r}: split must be one of {SPLIT_RULES}, got {split!r}")
    labels = (labels,) if isinstance(labels, str) else tuple(labels)
    if not labels:
        raise ValueError(f"task {name!r}: no label column")
    task = Task(name, source, labels, kind, split, dict(options or {}), {k: list(v) for k, v in (rows or {}).items()},
                tuple(test_splits), description, source_column, dict(fits or {}))
    TASKS[name] = task
    return task


def _load_sources() -> None:
    """Import every source module (each registers its tasks as it is imported)."""
    for name in list_sources():
        get_source(name)


def task_names() -> list[str]:
    """Every registered task name, sorted."""
    _load_sources()
    return sorted(TASKS)


def list_tasks() -> list[Task]:
    """Every registered task, by name."""
    return [TASKS[n] for n in task_names()]


def get_task(name: str) -> Task:
    """The task called ``name``; ``ValueError`` naming the known tasks otherwise."""
    if name not in TASKS:
        _load_sources()
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]
