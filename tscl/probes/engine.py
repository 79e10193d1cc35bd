"""``evaluate(EvalSpec) -> EvalReport``: the one evaluation every command and benchmark runs.

A specification names the data (a source and its root, or a named task of :mod:`tscl.tasks`), the
labels, the encoders (run folders and/or embeddings files), the rows beside them and the protocol;
:func:`evaluate` opens the data with :func:`tscl.datasets.open_dataset`, embeds it with each run's
encoder, and hands every row to :func:`tscl.probes.table.run_probe`:

- **rows**: one per encoder (named by the run folder or the file's stem), ``random-init`` (the first
  run's architecture with untrained weights; the reference of every comparison), ``supervised (from
  scratch)`` (the same architecture trained end to end on the labels, :class:`SupervisedBaseline`),
  ``fine-tune (<run>)`` (a run's encoder trained end to end from its pretrained weights, the same loop),
  and the feature baselines the dataset offers (MIMIC-IV admissions: ``tabular``);
- **split**: the source's own (``train`` trains; ``val`` chooses the probe's hyper-parameters when it
  holds at least 10 patients, else its rows train too and the choice is nested by patient inside the
  training rows; the task's test splits test), or ``random`` (a stratified patient-level split of 30 %);
- **labels**: index columns (``col``, ``col=value`` for a class of a categorical column, ``prefix*`` for a
  family), on the rows that have a value for every one of them (the report says how many had not);
- **label fractions** of the training patients (``repeats`` subsamples below 100 %), patient-level
  bootstrap CIs and paired differences with ``random-init``;
- **external validation** (``test_dataset`` / ``test_root``): the probes trained on this dataset also
  predict the test split (or every row, ``test_split="all"``) of a second one, scored beside the internal
  estimate. The second may be another source whose labels have other names (``test_task``: a task of it whose
  label columns, in order, stand for this one's, on its own rows, e.g. PTB-XL's ``rhythm:AFIB`` for CinC
  2017's ``af``). When both come from the same source their patient ids share one space, and no patient of the
  second may be among the first's training or validation patients, nor among a run's pretraining patients;
- pretraining overlap: a run (or embeddings file) pretrained on any test patient is refused
  (:class:`~tscl.probes.protocol.PretrainingOverlapError`) unless ``allow_test_overlap``.

:class:`EvalReport` is the one report format: :meth:`~EvalReport.to_markdown`, :meth:`~EvalReport.to_json`
and :meth:`~EvalReport.write` (markdown, JSON, label-efficiency and reliability figures, and with
``audit`` the representation audit and its embedding maps).
"""
from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tscl.catalog import DEFAULT_ENCODER
from tscl.datasets import _ID_COLUMNS, cat_payloads, get_source, open_dataset
from tscl.datasets.waveform import channel_names
from tscl.embed import embed_dataset
from tscl.embeddings import load_embeddings
from tscl.encoders import build_encoder, encoder_defaults
from tscl.plots import plot_embedding_map, plot_label_efficiency, plot_reliability
from tscl.tasks import KINDS, Task, get_task
from tscl.train import check_encoder_fits, load_config, load_encoder

from .audit import audit_embeddings, audit_markdown
from .metrics import METRIC_NAMES, PER_CLASS, check_metrics, metrics_for
from .models import PROBES
from .protocol import (MIN_TUNING_PATIENTS, PatientLeakageError, check_pretraining_overlap, pretrained_patients,
                       stratified_patient_split)
from .supervised import SupervisedBaseline
from .table import INTERNAL, ProbeResult, infer_kind, run_probe

__all__ = ["EvalSpec", "EvalReport", "evaluate", "SUPERVISED", "RANDOM_INIT", "EXTERNAL"]

SUPERVISED = "supervised (from scratch)"
RANDOM_INIT = "random-init"
EXTERNAL = "external"
SPLITS = ("dataset", "random")
# the architecture of the random-init and supervised rows when no run folder gives one: the modality's default
# encoder with its declared defaults (resnet1d at width 0.25, ehr_sequence, resnet2d18), as tscl pretrain uses
DEFAULT_ARCHITECTURE = {m: (name, encoder_defaults(name)) for m, name in DEFAULT_ENCODER.items() if m != "tabular"}
TEST_SPLITS = ("test", "all")
EMBEDDING_SUFFIXES = (".npz", ".parquet")


@dataclass
class EvalSpec:
    """What :func:`evaluate` measures. Paths may be text; every field has the default the CLI uses.

    - ``dataset``, ``root``, ``dataset_kwargs``: the source (``tscl datasets``), its root and options; with
      ``task`` the task's source and options are the defaults;
    - ``task``: a name of :mod:`tscl.tasks` (its labels, rows, split and kind), or None;
    - ``labels``: label columns (None: the task's); ``kind``: ``binary`` / ``multilabel`` / ``regression`` /
      ``multiclass`` (one class per row; None: the task's, else from the values); ``metrics``: what each cell
      reports (None: the kind's, :func:`~tscl.probes.metrics.metrics_for`; the first is the tables' primary);
    - ``encoders``: run folders and/or embeddings files (``.npz`` / ``.parquet`` written by ``tscl embed``),
      one row each, named by the folder or the file's stem;
    - ``random_init`` (the first run's architecture, untrained), ``supervised`` (trained from scratch on
      the labels), ``finetune`` (``True``: the first run; or a run folder: its encoder trained end to end),
      ``baselines`` (the dataset's own feature baselines, e.g. MIMIC-IV's tabular features);
    - ``probe``: ``linear``, ``knn`` or ``mlp`` (ridge for regression); ``grid``: its hyper-parameters to
      try (None: the probe's grid); ``fractions``, ``repeats``: label fractions of the training patients
      and subsamples per fraction below 100 %; ``n_boot``: bootstrap resamples; ``seed``; ``metrics``: what
      each cell reports (None: the kind's, AUROC, AUPRC, Brier, ECE or MAE, R²; classification may add
      ``accuracy``, at the threshold 0.5); the first is the one the tables and comparisons lead with;
    - ``split``: ``dataset`` or ``random`` (None: the task's, else ``dataset``);
    - ``test_dataset``, ``test_root``, ``test_dataset_kwargs``: external validation on a second dataset's
      ``test_split`` (``test`` or ``all``); ``test_task``: a task of the second dataset whose labels (in order),
      rows, test splits, source and options stand for this one's there (None: the same label columns);
    - ``allow_test_overlap``: report an encoder pretrained on test patients (said in the notes) instead of
      refusing it; ``cache``: the sources' cache folder; ``audit``: the representation audit and its
      embedding maps; ``supervised_kwargs`` / ``finetune_kwargs``: :class:`SupervisedBaseline`'s training
      budget; ``reference``: the row every other row is compared with; ``pairs``: further ``(row, reference)``
      paired comparisons by row name; ``progress``: progress bars.

    Without a run folder among the encoders the random-init and supervised rows use the modality's default
    architecture (``resnet1d`` at width 0.25 for waveforms, ``ehr_sequence``, ``resnet2d18``); with one, the
    source options default to those the first run was pretrained with when it read the same source.
    """

    dataset: str | None = None
    root: str | Path | None = None
    dataset_kwargs: dict = field(default_factory=dict)
    task: str | None = None
    labels: list | None = None
    encoders: list = field(default_factory=list)
    random_init: bool = True
    supervised: bool = False
    finetune: bool | str | Path = False
    probe: str = "linear"
    fractions: tuple = (0.01, 0.1, 1.0)
    repeats: int = 3
    n_boot: int = 1000
    seed: int = 0
    cache: str | Path | None = None
    allow_test_overlap: bool = False
    test_dataset: str | None = None
    test_root: str | Path | None = None
    test_dataset_kwargs: dict | None = None
    test_split: str = "test"
    split: str | None = None
    progress: bool = False
    kind: str | None = None
    metrics: tuple | None = None
    test_task: str | None = None
    grid: list | None = None
    baselines: bool = True
    audit: bool = False
    supervised_kwargs: dict = field(default_factory=dict)
    finetune_kwargs: dict = field(default_factory=dict)
    reference: str = RANDOM_INIT
    pairs: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class EvalReport:
    """What :func:`evaluate` measured: ``result`` (:class:`~tscl.probes.table.ProbeResult`: ``rows`` and
    ``comparisons``), the data it read (``data``), ``notes`` and, with ``audit``, the representation audit."""

    spec: EvalSpec
    result: ProbeResult
    data: dict
    notes: list = field(default_factory=list)
    audit: dict | None = None
    embeddings: dict = field(default_factory=dict, repr=False)  # {row: [n, d]} of the internal rows, for maps
    colours: list = field(default_factory=list, repr=False)
    patient_ids: np.ndarray | None = field(default=None, repr=False)
    y_test: np.ndarray | None = field(default=None, repr=False)  # the internal test targets, for the reliability plot

    @property
    def rows(self) -> list:
        return self.result.rows

    @property
    def comparisons(self) -> list:
        return self.result.comparisons

    @property
    def title(self) -> str:
        what = self.spec.task or ", ".join(self.result.labels)
        return f"{what} on {self.data['dataset']} ({self.data['root']})"

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", "", self.data["summary"], ""]
        lines += [f"- {n}" for n in self.notes] + ([""] if self.notes else [])
        lines += [self.result.to_markdown()]
        if self.audit:
            lines += ["", "Representation audit (internal rows):", "", audit_markdown(self.audit)]
        return "\n".join(lines)

    def to_json(self) -> str:
        out = {"spec": self.spec.to_dict(), "data": self.data, "notes": self.notes,
               **json.loads(self.result.to_json()), "audit": self.audit}
        return json.dumps(out, indent=1, default=_json_value)

    def write(self, out_dir: str | Path, stem: str = "report") -> Path:
        """``<stem>.md`` (with the figures linked), ``<stem>.json``, ``label_efficiency.png`` and
        ``reliability.png`` (classification) and, with the audit,
        ``embedding_<row>.png`` maps in ``out_dir``; returns the folder."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        figures = self._figures(out)
        text = self.to_markdown() + ("\n\n" + "\n".join(f"![{f.stem}]({f.name})" for f in figures) if figures else "")
        (out / f"{stem}.md").write_text(text + "\n")
        (out / f"{stem}.json").write_text(self.to_json())
        return out

    def _figures(self, out: Path) -> list:
        res, figures = self.result, []
        classification = res.kind != "regression"
        internal = [r for r in res.rows if r.get("test", INTERNAL) == INTERNAL]
        scored = [r for r in internal if not r.get("n/a")]
        if classification and internal:  # n/a cells are left as gaps
            figures.append(plot_label_efficiency(internal, out / "label_efficiency.png", title=f"{self.title}: "
                                                 f"{res.probe} probe"))
        preds = res.predictions.get(INTERNAL, {})
        if classification and preds and scored and self.y_test is not None:
            top = max(r["fraction"] for r in res.rows)
            figures.append(plot_reliability(self.y_test, preds, out / "reliability.png",
                                            title=f"reliability ({res.probe} probe, {100 * top:g} % labels)"))
        for name, z in self.embeddings.items():
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
            figures.append(plot_embedding_map(z, self.colours, self.patient_ids, out / f"embedding_{slug}.png",
                                              title=f"{name} (PCA)"))
        return figures


def _json_value(v):
    return v.tolist() if isinstance(v, np.ndarray) else float(v) if isinstance(v, np.floating) else str(v)


# --- the data ------------------------------------------------------------------------------------------

@dataclass
class _Side:
    """One dataset read for the evaluation: the opened dataset, the rows that carry every label, ``Y`` there."""

    name: str
    data: object
    rows: np.ndarray
    Y: np.ndarray
    patient_ids: np.ndarray
    left_out: int


def _resolve(spec: EvalSpec) -> tuple[Task | None, str, dict, str]:
    """The task (or None), the source name, its options and the split rule; bad values are refused in one line."""
    task = get_task(spec.task) if spec.task else None
    name = spec.dataset or (task.source if task else None)
    if name is None:
        raise ValueError("EvalSpec: give a dataset (a source name) or a task")
    if task and spec.dataset and spec.dataset != task.source:
        raise ValueError(f"EvalSpec: task {task.name!r} is defined on source {task.source!r}, not {spec.dataset!r}")
    if spec.root is None:
        raise ValueError("EvalSpec: give the root of the data (root=...)")
    options = {**(task.options if task else {}), **_run_options(spec, name), **dict(spec.dataset_kwargs or {})}
    split = spec.split or (task.split if task else "dataset")
    checks = [("split", split, SPLITS), ("test_split", spec.test_split, TEST_SPLITS),
              ("probe", spec.probe, tuple(p for p in PROBES if p != "ridge"))] + \
        ([("kind", spec.kind, KINDS)] if spec.kind is not None else [])
    for what, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"EvalSpec: {what} {value!r} is not one of {', '.join(allowed)}")
    if not spec.fractions or any(not 0 < float(f) <= 1 for f in spec.fractions):
        raise ValueError(f"EvalSpec: fractions {list(spec.fractions)} must lie in (0, 1]")
    unknown = [m for m in (spec.metrics or ()) if m not in METRIC_NAMES and m.partition(":")[0] not in PER_CLASS]
    if unknown or (spec.metrics is not None and not spec.metrics):
        raise ValueError(f"EvalSpec: metrics {list(spec.metrics)} must name at least one of {', '.join(METRIC_NAMES)} "
                         f"(multi-class also {', '.join(k + ':<class>' for k in PER_CLASS)})")
    if int(spec.repeats) < 1 or int(spec.n_boot) < 1:
        raise ValueError(f"EvalSpec: repeats ({spec.repeats}) and n_boot ({spec.n_boot}) must be at least 1")
    if spec.test_task is not None:
        ext = get_task(spec.test_task)
        if spec.test_dataset and spec.test_dataset != ext.source:
            raise ValueError(f"EvalSpec: test_task {ext.name!r} is defined on source {ext.source!r}, not "
                             f"{spec.test_dataset!r}")
        if spec.test_root is None:
            raise ValueError("EvalSpec: test_task needs test_root (the external dataset's root)")
    return task, name, options, split


def _check_runs_fit(spec: EvalSpec, task: Task | None, name: str, options: dict) -> None:
    """A run whose encoder cannot take the task's data (modality; channels and rate the task declares) is refused
    before any data loads."""
    runs = [Path(e) for e in spec.encoders if _is_run(Path(e))]
    runs += [Path(spec.finetune)] if spec.finetune not in (True, False, None) and _is_run(Path(spec.finetune)) else []
    fits = dict(task.fits) if task else {}
    if "fs" in options:
        fits["fs"] = float(options["fs"])
    chosen = channel_names(options.get("channels"))  # a lead selection (e.g. ptbxl channels=I)
    if chosen is not None:
        fits["in_channels"] = len(chosen)
    for run in runs:
        check_encoder_fits(load_config(run).data_info, modality=get_source(name).modality,
                           in_channels=fits.get("in_channels"), fs=fits.get("fs"),
                           what=f"task {task.name}" if task else f"{name} data", run=run)


def _run_options(spec: EvalSpec, name: str) -> dict:
    """The source options the first run folder among the encoders was pretrained with, when it read ``name``."""
    run = next((Path(e) for e in spec.encoders if _is_run(Path(e))), None)
    saved = load_config(run).dataset if run is not None else {}
    return dict(saved.get("options") or {}) if saved.get("dataset") == name else {}


def _label_columns(index: pl.DataFrame, labels, where: str) -> list[str]:
    """``labels`` with ``prefix*`` patterns expanded; every one must be a column (``col=value``: ``col``)."""
    out = []
    for lab in labels:
        if "*" in lab:
            found = [c for c in index.columns if fnmatch.fnmatchcase(c, lab)]
            if not found:
                raise ValueError(f"{where}: no label column matches {lab!r}")
            out += found
            continue
        column = lab.split("=", 1)[0]
        if column not in index.columns:
            known = [c for c in index.columns if c not in _ID_COLUMNS]
            raise ValueError(f"{where}: label column {column!r} is not in the index; label columns: "
                             f"{', '.join(known[:40])}{', ...' if len(known) > 40 else ''}")
        out.append(lab)
    return out


def _targets(index: pl.DataFrame, labels: list, where: str) -> np.ndarray:
    """``[n, L]`` float targets (NaN where a row has no value): a column as numbers, ``col=value`` as 0/1."""
    cols = []
    for lab in labels:
        column, eq, value = lab.partition("=")
        s = index[column]
        if eq:
            y = (s.cast(pl.Utf8) == value).cast(pl.Float64).to_numpy()
            y = np.where(s.is_null().to_numpy(), np.nan, y)
        else:
            try:
                y = s.cast(pl.Float64).to_numpy()
            except pl.exceptions.InvalidOperationError:
                raise ValueError(f"{where}: label column {column!r} holds text ({s.drop_nulls()[0]!r}); name a class "
                                 f"of it as {column}=VALUE") from None
        cols.append(np.asarray(y, dtype=np.float64))
    return np.column_stack(cols) if cols else np.zeros((index.height, 0))


def _side(name: str, data, task: Task | None, labels: list, where: str) -> _Side:
    """The rows of ``data`` the task applies to (its ``rows`` filter) that hold every label."""
    index = data.index
    keep = np.ones(index.height, dtype=bool)
    for column, allowed in (task.rows if task else {}).items():
        if column not in index.columns:
            raise ValueError(f"{where}: the task's row filter names column {column!r}, not in the index")
        keep &= index[column].cast(pl.Utf8).is_in([str(a) for a in allowed]).fill_null(False).to_numpy()
    Y = _targets(index, labels, where)
    filtered = int(keep.sum())
    keep &= np.isfinite(Y).all(axis=1)
    rows = np.flatnonzero(keep)
    return _Side(name, data, rows, Y[rows], np.asarray(index["patient_id"].cast(pl.Utf8).to_list())[rows],
                 left_out=filtered - len(rows))


def _check_kind(kind: str, Y: np.ndarray, labels: list, where: str) -> None:
    if kind == "regression":
        return
    bad = [(lab, v) for j, lab in enumerate(labels) for v in np.unique(Y[:, j]) if v not in (0.0, 1.0)][:1]
    if bad:
        raise ValueError(f"{where}: label {bad[0][0]!r} holds {bad[0][1]:g}, not 0/1; a {kind} task needs 0/1 labels "
                         "(kind='regression' for numbers)")
    ones = Y.sum(axis=1) if len(labels) else np.zeros(0)
    if kind == "multiclass" and (ones != 1).any():
        row = int(np.flatnonzero(ones != 1)[0])
        raise ValueError(f"{where}: kind multiclass needs exactly one of {', '.join(labels)} set per row; "
                         f"{int((ones != 1).sum())} labelled rows have {int(ones[row])} (e.g. the {row + 1}th)")


def _split(side: _Side, split: str, test_splits, seed: int, notes: list) -> tuple:
    """``(train, val or None, test)`` local rows of ``side``; see the module docstring."""
    if split == "random":
        train, test = stratified_patient_split(side.patient_ids, side.Y, 0.3, seed)
        notes.append(f"split random: {len(np.unique(side.patient_ids[test]))} of {len(np.unique(side.patient_ids))} "
                     "patients drawn for the test side (stratified by label where a seed gives both classes)")
        return np.sort(train), None, np.sort(test)
    if "split" not in side.data.index.columns:
        raise ValueError(f"{side.name}: the index has no split column; use split='random'")
    sides = np.asarray(side.data.index["split"].cast(pl.Utf8).to_list())[side.rows]
    test = np.flatnonzero(np.isin(sides, list(test_splits)))
    val = np.flatnonzero(sides == "val") if "val" not in test_splits else np.zeros(0, dtype=np.int64)
    train = np.flatnonzero(~np.isin(sides, [*test_splits, "val"]))
    if not len(train) or not len(test):
        raise ValueError(f"{side.name}: its split column gives {len(train)} training and {len(test)} test rows with "
                         "labels; both sides need rows (split='random' draws a patient-level split)")
    n_val = len(np.unique(side.patient_ids[val]))
    if n_val >= MIN_TUNING_PATIENTS:
        return train, val, test
    if len(val):
        notes.append(f"the validation split holds {n_val} patient(s), fewer than {MIN_TUNING_PATIENTS}: its "
                     f"{len(val)} rows train with the training split")
        train = np.sort(np.concatenate([train, val]))
    return train, None, test


# --- the rows ------------------------------------------------------------------------------------------

@dataclass
class _Encoder:
    """One ``encoders`` entry: a run folder or an embeddings file."""

    name: str
    path: Path
    run: Path | None  # the run folder behind it (a file's ``run``, when that folder exists)
    features: np.ndarray | None = None  # a file's features, aligned with the internal dataset's index
    pretrained: list | None = None


def _is_run(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def _read_embeddings(path: Path):
    """``(features, record_id, run, pretrained_patients)`` of an embeddings file (:mod:`tscl.embeddings`)."""
    e = load_embeddings(path)
    return e.features, list(e.record_id), e.run, list(e.pretrained_patients)


def _encoders(spec: EvalSpec, internal: _Side) -> list[_Encoder]:
    """The ``encoders`` entries, checked: existing, uniquely named, files aligned with the dataset's records."""
    out, names = [], set()
    for entry in spec.encoders:
        path = Path(entry)
        name = path.name if path.is_dir() else path.stem
        if name in names or name in (RANDOM_INIT, SUPERVISED):
            raise ValueError(f"encoders: two rows would be called {name!r} ({path}); rename the folder or file")
        names.add(name)
        if _is_run(path):
            out.append(_Encoder(name, path, path, pretrained=sorted(pretrained_patients(path) or [])))
            continue
        if path.suffix not in EMBEDDING_SUFFIXES or not path.is_file():
            raise FileNotFoundError(f"{path}: neither a run folder (config.json) nor an embeddings file "
                                    f"({' or '.join(EMBEDDING_SUFFIXES)})")
        features, ids, run, seen = _read_embeddings(path)
        out.append(_Encoder(name, path, Path(run) if run and _is_run(Path(run)) else None,
                            _aligned(features, ids, internal.data.index, path), seen))
    return out


def _aligned(features: np.ndarray, ids: list, index: pl.DataFrame, path: Path) -> np.ndarray:
    """``features`` in the order of ``index``'s record ids (the same set, in any order)."""
    want = [str(r) for r in index["record_id"].to_list()]
    if ids == want:
        return features
    where = {r: i for i, r in enumerate(ids)}
    missing = [r for r in want if r not in where]
    if missing or len(ids) != len(want):
        raise ValueError(f"{path}: embeddings are not aligned with the dataset's records ({len(ids)} rows, "
                         f"{len(missing)} of the dataset's {len(want)} record ids missing, e.g. {missing[:2]}); re-run "
                         "tscl embed on this dataset")
    return features[[where[r] for r in want]]


def _embed(run: Path, side: _Side, spec: EvalSpec, random_init: bool = False) -> np.ndarray:
    """Features of ``side``'s rows by ``run``'s encoder (its weights, or untrained with ``random_init``)."""
    data = side.data
    check_encoder_fits(load_config(run).data_info, modality=data.modality, in_channels=data.in_channels,
                       fs=data.info.get("fs"), what=f"{side.name}", run=run)
    encoder = load_encoder(run, random_init=random_init, seed=spec.seed)
    return embed_dataset(encoder, data.subset(side.rows), progress=spec.progress)


@dataclass
class _Arch:
    """The architecture of the random-init and supervised rows: a run's encoder, or the modality's default."""

    run: Path | None
    encoder: str
    kwargs: dict

    @classmethod
    def of(cls, encoders: list, data) -> "_Arch | None":
        run = next((e.run for e in encoders if e.run is not None), None)
        if run is not None:
            cfg = load_config(run)
            return cls(run, cfg.encoder, dict(cfg.encoder_kwargs))
        if encoders or data.modality not in DEFAULT_ARCHITECTURE:  # files alone: no architecture to trust
            return None
        name, kwargs = DEFAULT_ARCHITECTURE[data.modality]
        return cls(None, name, dict(kwargs))

    @property
    def what(self) -> str:
        kw = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.encoder}" + (f" ({kw})" if kw else "") + (f" of {self.run.name}" if self.run else "")

    def random_features(self, side: _Side, spec: EvalSpec) -> np.ndarray:
        if self.run is not None:
            return _embed(self.run, side, spec, random_init=True)
        torch.manual_seed(spec.seed)
        encoder = build_encoder(self.encoder, side.data.in_channels, **self.kwargs)
        return embed_dataset(encoder, side.data.subset(side.rows), progress=spec.progress)


class _Stacked:
    """The payloads of the internal rows, then the external ones, as one row space for trained rows."""

    def __init__(self, sides: list):
        self.sides = [s.data.subset(s.rows) for s in sides]
        self.bounds = np.cumsum([0] + [len(s) for s in self.sides])
        self.in_channels = self.sides[0].in_channels

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def fetch(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.sides) == 1:
            return self.sides[0].fetch(rows)
        part = np.searchsorted(self.bounds, rows, side="right") - 1
        order = np.argsort(part, kind="stable")
        pieces = [self.sides[k].fetch(rows[part == k] - self.bounds[k]) for k in np.unique(part)]
        return cat_payloads(pieces)[torch.from_numpy(np.argsort(order))]


def _check_overlaps(spec: EvalSpec, encoders: list, sides: list, test_rows: list, notes: list) -> None:
    """No encoder (nor the fine-tuned run) pretrained on a test patient (of the internal test split, and of the
    external one when its ids share the internal space) unless ``allow_test_overlap``, which is then said."""
    tuned = Path(spec.finetune) if spec.finetune not in (True, False, None) else None
    if tuned is not None and _is_run(tuned) and all(e.run != tuned for e in encoders):
        encoders = [*encoders, _Encoder(f"fine-tune ({tuned.name})", tuned, tuned,
                                        pretrained=sorted(pretrained_patients(tuned) or []))]
    for enc in encoders:
        for side, rows in zip(sides, test_rows):
            overlap = check_pretraining_overlap(enc.pretrained, side.patient_ids[rows], allow=spec.allow_test_overlap,
                                                what=f"the encoder {enc.name} ({enc.path})")
            if overlap:
                notes.append(f"{enc.name} was pretrained on {len(overlap)} test patient(s) of {side.name} (allowed by "
                             "allow_test_overlap): its numbers there are optimistic")


def _predictors(spec: EvalSpec, kind: str, arch: _Arch | None, sides: list) -> dict:
    """The rows trained on the labels: the supervised baseline and fine-tuning (over the internal rows, then the
    external ones)."""
    out = {}
    if not (spec.supervised or spec.finetune):
        return out
    rows_source = _Stacked(sides)
    if spec.supervised:
        if arch is None:
            raise ValueError("supervised: no architecture to train (the encoders are embeddings files without "
                             "their run folder)")
        out[SUPERVISED] = SupervisedBaseline(rows_source, kind, arch.encoder, arch.kwargs, progress=spec.progress,
                                             **spec.supervised_kwargs)
    if spec.finetune:
        run = (arch.run if arch else None) if spec.finetune is True else Path(spec.finetune)
        if run is None or not _is_run(run):
            raise ValueError(f"finetune: {spec.finetune if spec.finetune is not True else 'no run'} is not a run folder "
                             "(config.json) whose encoder can be fine-tuned")
        out[f"fine-tune ({run.name})"] = SupervisedBaseline.like_run(rows_source, run, kind, pretrained=True,
                                                                     progress=spec.progress, **spec.finetune_kwargs)
    return out


def _baselines(spec: EvalSpec, internal: _Side, train: np.ndarray, external: _Side | None, notes: list) -> dict:
    """``{name: [n, d]}`` feature baselines the dataset offers (``data.feature_baselines(rows, train_rows)``)."""
    make = getattr(internal.data, "feature_baselines", None) if spec.baselines else None
    if make is None:
        return {}
    if external is not None:
        notes.append("the dataset's feature baselines are left out: they are built from its own training rows and "
                     "cannot describe the external dataset")
        return {}
    return make(internal.rows, internal.rows[train])


# --- evaluate ------------------------------------------------------------------------------------------

def evaluate(spec: EvalSpec) -> EvalReport:
    """Run the evaluation ``spec`` describes (see :class:`EvalSpec` and the module docstring) and return its
    :class:`EvalReport`. Bad values are refused before any data loads, in one line naming the field and value."""
    task, name, options, split_rule = _resolve(spec)
    labels_given = list(spec.labels) if spec.labels else list(task.labels if task else [])
    if not labels_given:
        raise ValueError("EvalSpec: give labels (label columns of the index) or a task")
    for entry in spec.encoders:
        if not Path(entry).exists():
            raise FileNotFoundError(f"{entry}: encoder not found (a run folder or an embeddings file)")
    _check_runs_fit(spec, task, name, options)
    notes: list = []
    data = open_dataset(name, spec.root, cache=spec.cache, progress=spec.progress, **options)
    where = f"{name} at {spec.root}"
    labels = _label_columns(data.index, labels_given, where)
    internal = _side(where, data, task, labels, where)
    kind = spec.kind or (task.kind if task else infer_kind(internal.Y))
    _check_kind(kind, internal.Y, labels, where)
    metrics = check_metrics(spec.metrics or metrics_for(kind), kind, labels)
    _data_notes(data, internal, labels, notes)
    train, val, test = _split(internal, split_rule, task.test_splits if task else ("test",), spec.seed, notes)
    external, ext_rows = _external(spec, name, options, task, labels, kind, internal, train, val, notes)
    encoders = _encoders(spec, internal)
    sides, tests = [internal] + ([external] if external else []), [test] + ([ext_rows] if external else [])
    _check_overlaps(spec, encoders, sides, tests, notes)
    arch = _Arch.of(encoders, data)
    features = _features(spec, encoders, arch, sides, notes)
    predictors = _predictors(spec, kind, arch, sides)
    features.update({k: v for k, v in _baselines(spec, internal, train, external, notes).items() if k not in features})
    pids = np.concatenate([s.patient_ids for s in sides])
    Y = np.concatenate([s.Y for s in sides])
    ext = {EXTERNAL: len(internal.rows) + ext_rows} if external else None
    result = run_probe(features, Y, labels, pids, fractions=tuple(float(f) for f in spec.fractions),
                       repeats=int(spec.repeats), n_boot=int(spec.n_boot), seed=int(spec.seed),
                       reference=_reference(spec, features, predictors), split=(train, test), val=val,
                       external=ext, predictors=predictors, kind=kind, probe=spec.probe, grid=spec.grid,
                       metrics=metrics, pairs=[tuple(p) for p in spec.pairs])
    _tuning_note(result, notes)
    report = EvalReport(spec, result, _data_summary(name, spec, internal, external, labels, train, val, test, ext_rows,
                                                    kind, task), notes)
    report.y_test = internal.Y[test]
    if spec.audit:
        _audit(report, features, internal, task, labels, spec.seed)
    return report


def _external(spec, name, options, task, labels, kind, internal, train, val, notes):
    """The external test set (or ``(None, None)``): opened, labelled like the internal one, its test rows and the
    checks that its patients are not the internal training patients when the two share an id space."""
    if spec.test_dataset is None and spec.test_root is None:
        return None, None
    ext_task = get_task(spec.test_task) if spec.test_task else task
    ext_name = spec.test_dataset or (ext_task.source if spec.test_task else name)
    if spec.test_root is None:
        raise ValueError("EvalSpec: test_dataset needs test_root (the external dataset's root)")
    ext_options = dict(spec.test_dataset_kwargs) if spec.test_dataset_kwargs is not None else \
        dict(ext_task.options) if spec.test_task else (dict(options) if ext_name == name else {})
    data = open_dataset(ext_name, spec.test_root, cache=spec.cache, progress=spec.progress, **ext_options)
    where = f"{ext_name} at {spec.test_root}"
    ext_labels = _label_columns(data.index, list(ext_task.labels) if spec.test_task else labels, where)
    if len(ext_labels) != len(labels):
        raise ValueError(f"{where}: test_task {ext_task.name!r} has {len(ext_labels)} label(s) ({', '.join(ext_labels)})"
                         f" for the {len(labels)} trained on ({', '.join(labels)}); they are matched in order")
    side = _side(where, data, ext_task, ext_labels, where)
    _check_kind(kind, side.Y, ext_labels, where)
    if spec.test_task:
        notes.append(f"external labels: {', '.join(f'{b} for {a}' for a, b in zip(labels, ext_labels))} "
                     f"(task {ext_task.name})")
    if spec.test_split == "all":
        rows = np.arange(len(side.rows))
    else:
        sides = np.asarray(data.index["split"].cast(pl.Utf8).to_list())[side.rows]
        rows = np.flatnonzero(np.isin(sides, list(ext_task.test_splits if ext_task else ("test",))))
    if not len(rows):
        raise ValueError(f"{where}: no labelled row in its {spec.test_split} split to test on")
    if ext_name == name:  # one id space: a patient of both would be trained on and tested
        seen = set(internal.patient_ids[train]) | (set(internal.patient_ids[val]) if val is not None else set())
        shared = sorted(seen & set(side.patient_ids[rows]))
        if shared:
            raise PatientLeakageError(f"{where}: {len(shared)} of its test patients are training patients of "
                                      f"{internal.name} (e.g. {shared[:3]}); external validation needs other patients")
    else:  # separate id spaces: keep equal ids of two sources apart
        side.patient_ids = np.asarray([f"{ext_name}:{p}" for p in side.patient_ids])
    notes.append(f"external validation: trained on {internal.name}, also tested on {len(rows)} rows of "
                 f"{len(np.unique(side.patient_ids[rows]))} patients of {where} ({spec.test_split} split"
                 + ("; same source, patient ids checked disjoint from the training patients)" if ext_name == name
                    else "; another source: its patient ids are its own)"))
    if side.left_out:
        notes.append(f"{where}: {side.left_out} row(s) without a value for every label left out")
    return side, rows


def _features(spec: EvalSpec, encoders: list, arch: _Arch | None, sides: list, notes: list) -> dict:
    """``{row: [n_internal + n_external, d]}`` for every encoder and the random-init row."""
    features = {}
    for enc in encoders:
        if enc.features is not None:
            if len(sides) > 1:
                raise ValueError(f"{enc.path}: an embeddings file covers one dataset; external validation needs run "
                                 "folders (their encoders embed the external dataset)")
            features[enc.name] = enc.features[sides[0].rows]
        else:
            features[enc.name] = np.concatenate([_embed(enc.run, s, spec) for s in sides])
    if spec.random_init and arch is not None:
        features[RANDOM_INIT] = np.concatenate([arch.random_features(s, spec) for s in sides])
        if arch.run is None:
            notes.append(f"random-init: {arch.what}, untrained (no run folder among the encoders)")
    elif spec.random_init:
        notes.append("no random-init row: no encoder names a run folder to take the architecture from")
    return features


def _reference(spec: EvalSpec, features: dict, predictors: dict) -> str | None:
    """The row compared with: ``spec.reference`` (refused when there is no such row, unless it is the default)."""
    if spec.reference in features or spec.reference in predictors:
        return spec.reference
    if spec.reference != RANDOM_INIT:
        raise ValueError(f"reference {spec.reference!r} is not a row; rows: {', '.join([*features, *predictors])}")
    return None


def _data_notes(data, side: _Side, labels: list, notes: list) -> None:
    line = data.notes_line()
    if line:
        notes.append(f"the source left out: {line}")
    sources = (data.notes.get("sources") or []) if isinstance(data.notes, dict) else []
    if sources:
        notes.append("labels from: " + ", ".join(Path(s).name for s in sources))
    if side.left_out:
        notes.append(f"{side.left_out} row(s) without a value for every label ({', '.join(labels[:8])}"
                     f"{', ...' if len(labels) > 8 else ''}) left out")


def _tuning_note(result: ProbeResult, notes: list) -> None:
    """How the probes' hyper-parameters were chosen, once per distinct way."""
    ways: dict = {}
    for r in result.rows:
        if r.get("tuning"):
            ways.setdefault(r["tuning"], set()).add(r["fraction"])
    for how, fractions in ways.items():
        notes.append(f"{result.probe} probe hyper-parameters at {', '.join(f'{100 * f:g} %' for f in sorted(fractions))}"
                     f": {how}")


def _count(side: _Side, rows) -> str:
    return f"{len(rows)} rows / {len(np.unique(side.patient_ids[rows]))} patients"


def _data_summary(name, spec, internal, external, labels, train, val, test, ext_rows, kind, task) -> dict:
    parts = [f"train {_count(internal, train)}"] + ([f"val {_count(internal, val)}"] if val is not None else [])
    parts.append(f"test {_count(internal, test)}")
    if external is not None:
        parts.append(f"external test {_count(external, ext_rows)}")
    text = (f"{len(internal.rows)} labelled rows of {len(np.unique(internal.patient_ids))} patients "
            f"({internal.data.modality}); " + ", ".join(parts))
    positives = {}
    if kind != "regression":
        positives = {lab: {"train": int(internal.Y[train, j].sum()), "test": int(internal.Y[test, j].sum()),
                           **({"external": int(external.Y[ext_rows, j].sum())} if external is not None else {})}
                     for j, lab in enumerate(labels)}
        text += "; positives train/test" + ("/external" if external is not None else "") + ": " + "; ".join(
            f"{lab} " + "/".join(str(v) for v in p.values()) for lab, p in positives.items())
    return {"dataset": name, "root": str(spec.root), "task": task.name if task else None, "labels": labels,
            "kind": kind, "rows": int(len(internal.rows)), "left_out_rows": int(internal.left_out), "summary": text,
            "positives": positives,
            "external": None if external is None else {"dataset": spec.test_dataset or name,
                                                       "root": str(spec.test_root), "rows": int(len(ext_rows))}}


def _audit(report: EvalReport, features: dict, internal: _Side, task, labels, seed: int) -> None:
    """The representation audit of every feature set on the internal rows, and the maps' colours."""
    n = len(internal.rows)
    col = task.source_column if task else None
    source = None
    if col and col in internal.data.index.columns:
        source = np.asarray(internal.data.index[col].cast(pl.Utf8).fill_null("unknown").to_list())[internal.rows]
    report.audit = {k: audit_embeddings(v[:n], internal.patient_ids, source=source, seed=seed)
                    for k, v in features.items()}
    report.embeddings = {k: v[:n] for k, v in features.items()}
    report.patient_ids = internal.patient_ids
    if report.result.kind == "regression":
        report.colours = [f"{10 * int(v // 10)}s" for v in internal.Y[:, 0]]
    else:
        report.colours = ["+".join(lab for lab, v in zip(labels, row) if v) or "none" for row in internal.Y]
