"""The embeddings file: what ``tscl embed`` writes and ``tscl probe`` reads, as ``.npz`` or ``.parquet``.

One row per item of the dataset that was embedded, in its index order:

============================  =========================================================================
``.npz`` (NumPy)              ``features [N, D]`` float32, ``record_id [N]``, ``patient_id [N]`` (text),
                              ``run`` (the run folder, ``""`` for none) and ``pretrained_patients``
                              (every patient the run's encoder was pretrained on; empty for random init)
``.parquet`` (polars, pandas) columns ``record_id``, ``patient_id``, ``run``, ``pretrained`` (bool: this row's
                              patient was in pretraining) and ``feature_0`` ... ``feature_{D-1}`` (float32)
============================  =========================================================================

The format follows the file's suffix and the file is written under exactly the name given. Reading
it back::

    from tscl.embeddings import load_embeddings
    emb = load_embeddings("runs/ptbxl-simclr.parquet")     # emb.features [N, D], emb.record_id, ...

    import polars as pl                                    # or pandas.read_parquet
    df = pl.read_parquet("runs/ptbxl-simclr.parquet")

The probes refuse an embeddings file whose ``pretrained_patients`` include one of their test patients.
A file that cannot be read, lacks a column or holds non-finite features is refused in one line
(:class:`~tscl.grammar.UsageError`) naming the file.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tscl.grammar import UsageError

__all__ = ["Embeddings", "save_embeddings", "load_embeddings", "FORMATS"]

FORMATS = (".npz", ".parquet")
_PREFIX = "feature_"


@dataclass
class Embeddings:
    """Features of a dataset's items, aligned with its index (``record_id``, ``patient_id``)."""

    features: np.ndarray  # [N, D] float32
    record_id: list
    patient_id: list
    run: str = ""
    pretrained_patients: list = field(default_factory=list)
    path: str = ""

    def __post_init__(self):
        self.features = np.asarray(self.features, dtype=np.float32)
        self.record_id, self.patient_id = [str(v) for v in self.record_id], [str(v) for v in self.patient_id]
        if self.features.ndim != 2 or not len(self.record_id) == len(self.patient_id) == len(self.features):
            raise ValueError(f"embeddings: features {list(self.features.shape)} must be [N, D] with N = "
                             f"{len(self.record_id)} record ids and {len(self.patient_id)} patient ids")

    @property
    def name(self) -> str:
        """The file's stem (``runs/pclr.npz`` -> ``pclr``): the row name probes give this encoder."""
        return Path(self.path).stem if self.path else "embeddings"


def _format(path: Path, what: str) -> str:
    if path.suffix not in FORMATS:
        raise UsageError(f"{path}: {what} must end in {' or '.join(FORMATS)} (the format follows the suffix)")
    return path.suffix


def save_embeddings(path: str | Path, emb: Embeddings) -> Path:
    """Write ``emb`` to ``path`` (``.npz`` or ``.parquet``, by its suffix), under exactly that name."""
    path = Path(path)
    kind = _format(path, "the embeddings file")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == ".npz":
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name without it
            np.savez(f, features=emb.features, record_id=np.array(emb.record_id, dtype=str),
                     patient_id=np.array(emb.patient_id, dtype=str), run=str(emb.run),
                     pretrained_patients=np.array(sorted(emb.pretrained_patients), dtype=str))
        return path
    import polars as pl

    seen = set(emb.pretrained_patients)
    columns = {"record_id": emb.record_id, "patient_id": emb.patient_id, "run": [str(emb.run)] * len(emb.record_id),
               "pretrained": [p in seen for p in emb.patient_id]}
    frame = pl.DataFrame(columns, schema={"record_id": pl.Utf8, "patient_id": pl.Utf8, "run": pl.Utf8,
                                          "pretrained": pl.Boolean})
    features = pl.DataFrame(emb.features, schema=[f"{_PREFIX}{j}" for j in range(emb.features.shape[1])], orient="row")
    frame.hstack(features).write_parquet(path)
    return path


def load_embeddings(path: str | Path) -> Embeddings:
    """Read an embeddings file written by :func:`save_embeddings` (or ``tscl embed``); refused in one line
    when it cannot be read, lacks its arrays or columns, or holds non-finite features (naming the rows)."""
    from tscl.probes.cells import check_finite

    path = Path(path)
    kind = _format(path, "an embeddings file")
    if not path.exists():
        raise UsageError(f"{path}: embeddings file not found (tscl embed --run RUN --out {path} writes it)")
    emb = _read_npz(path) if kind == ".npz" else _read_parquet(path)
    try:
        check_finite(emb.features, f"{path}: features", record_ids=emb.record_id)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return emb


def _unreadable(path: Path, err: BaseException) -> UsageError:
    text = " ".join(str(err).split())
    return UsageError(f"{path}: not a readable {path.suffix} of tscl embed ({type(err).__name__}: {text}); re-run "
                      "tscl embed")


def _read_npz(path: Path) -> Embeddings:
    try:
        z = np.load(path)
        missing = [k for k in ("features", "record_id") if k not in z.files]
        if missing:
            raise UsageError(f"{path}: no {missing[0]!r} array; an .npz written by tscl embed has features and "
                             "record_id")
        features, record_id = z["features"], z["record_id"].tolist()  # a cut file fails only when read
        patient_id = z["patient_id"].tolist() if "patient_id" in z.files else [""] * len(record_id)
        run = str(z["run"]) if "run" in z.files else ""
        seen = z["pretrained_patients"].tolist() if "pretrained_patients" in z.files else []
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        if isinstance(err, UsageError):
            raise
        raise _unreadable(path, err) from None
    return _checked(path, features, record_id, patient_id, run, seen)


def _read_parquet(path: Path) -> Embeddings:
    import polars as pl

    try:
        frame = pl.read_parquet(path)
    except Exception as err:  # polars raises its own error types for a damaged file
        raise _unreadable(path, err) from None
    missing = [c for c in ("record_id", "patient_id") if c not in frame.columns]
    cols = [c for c in frame.columns if c.startswith(_PREFIX)]
    if missing or not cols:
        what = repr(missing[0]) if missing else f"'{_PREFIX}0'"
        raise UsageError(f"{path}: no {what} column; a .parquet written by tscl embed has record_id, patient_id and "
                         f"{_PREFIX}0 ... {_PREFIX}{{D-1}}")
    cols.sort(key=lambda c: int(c[len(_PREFIX):]) if c[len(_PREFIX):].isdigit() else -1)
    features = frame.select(cols).to_numpy().astype(np.float32)
    pids = frame["patient_id"].cast(pl.Utf8).to_list()
    pretrained = frame["pretrained"].to_list() if "pretrained" in frame.columns else [False] * len(pids)
    seen = sorted({p for p, flag in zip(pids, pretrained) if flag})
    run = frame["run"][0] if "run" in frame.columns and frame.height else ""
    return _checked(path, features, frame["record_id"].cast(pl.Utf8).to_list(), pids, run or "", seen)


def _checked(path: Path, features, record_id, patient_id, run, seen) -> Embeddings:
    try:
        return Embeddings(features, record_id, patient_id, run=run, pretrained_patients=seen, path=str(path))
    except ValueError as err:
        raise UsageError(f"{path}: {err}") from None
