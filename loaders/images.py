"""Read a folder of medical images (.npy or PNG) described by a CSV index.

The CSV has one row per image: ``path`` (relative to the folder, or absolute),
``patient_id``, and label columns (every other column, unless ``label_columns`` is given)::

    path,patient_id,cardiomegaly,effusion
    img/p001_a.png,p001,1,0
    img/p001_b.npy,p001,1,1

Images come back as float32 ``[channels, height, width]``: a 2-D array is one channel; a
PNG's ``[H, W, C]`` becomes ``[C, H, W]`` (values in [0, 1] as ``matplotlib.image.imread``
gives them; ``drop_alpha`` removes an RGBA alpha plane); a .npy array must be ``[H, W]`` or
``[C, H, W]``. Problems raise :class:`LoaderError` naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from .identity import check_unique, clean_ids, csv_line
from .recording import LoaderError

__all__ = ["read_image", "ImageTable", "load_image_table", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".npy", ".png")


def _read_png(path: Path, drop_alpha: bool) -> np.ndarray:
    """A PNG as matplotlib reads it (values in [0, 1]), planes first. With ``drop_alpha`` an alpha plane
    (RGBA, or gray + alpha) is removed when it is fully opaque; an image that is transparent anywhere
    is refused, since dropping its alpha would change what it shows."""
    import matplotlib.image as mpimg

    arr = mpimg.imread(path, format="png")
    if arr.ndim == 3 and drop_alpha and arr.shape[-1] in (2, 4):
        clear = int((arr[..., -1] < 1.0).sum())
        if clear:
            raise LoaderError(path, f"{'RGBA' if arr.shape[-1] == 4 else 'gray+alpha'} image with {clear} pixels not "
                                    "fully opaque; dropping the alpha plane would change the image: flatten it onto a "
                                    "background first")
        arr = arr[..., :-1]
    return np.moveaxis(arr, -1, 0) if arr.ndim == 3 else arr


def read_image(path: str | Path, drop_alpha: bool = True) -> np.ndarray:
    """One image file -> float32 ``[C, H, W]``; :class:`LoaderError` for a missing, unreadable,
    badly shaped or non-finite image."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise LoaderError(path, f"unsupported image type {suffix!r}; expected one of {IMAGE_SUFFIXES}")
    if not path.is_file():
        raise LoaderError(path, "image file not found")
    try:
        arr = np.load(path, allow_pickle=False) if suffix == ".npy" else _read_png(path, drop_alpha)
    except Exception as err:  # truncated file, wrong magic bytes, pickled object, ...
        raise LoaderError(path, f"could not read image ({type(err).__name__}: {err})") from err
    if arr.dtype.kind not in "biuf":
        raise LoaderError(path, f"image must hold numbers, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or min(arr.shape) == 0:
        raise LoaderError(path, f"image must be [H, W] or [C, H, W], got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise LoaderError(path, f"{int((~np.isfinite(arr)).sum())} non-finite pixels")
    return arr


class ImageTable:
    """The rows of an image CSV with resolved paths; images are read on access.

    ``index`` is a polars DataFrame (``path`` resolved, ``patient_id`` as string, label
    columns); ``table[i]`` is a dict with ``image [C, H, W]``, ``patient_id``, ``labels``
    and ``path``; ``table.stack(rows)`` returns ``(images [N, C, H, W], patient_ids)``.
    """

    def __init__(self, index: pl.DataFrame, label_columns: Sequence[str], drop_alpha: bool = True):
        self.index = index
        self.label_columns = tuple(label_columns)
        self.drop_alpha = drop_alpha

    def __len__(self) -> int:
        return self.index.height

    def __getitem__(self, i: int) -> dict:
        row = self.index.row(i, named=True)
        return {
            "image": read_image(row["path"], self.drop_alpha),
            "patient_id": row["patient_id"],
            "labels": {c: row[c] for c in self.label_columns},
            "path": row["path"],
        }

    def stack(self, rows: Sequence[int] | None = None) -> tuple[np.ndarray, list[str]]:
        """Read ``rows`` (default all) into one ``[N, C, H, W]`` array; images must share a shape."""
        rows = range(len(self)) if rows is None else rows
        images, pids, first = [], [], None
        for i in rows:
            item = self[i]
            if first is None:
                first = item
            elif item["image"].shape != first["image"].shape:
                raise LoaderError(
                    item["path"], f"shape {item['image'].shape} differs from {first['image'].shape} of {first['path']}; resize first"
                )
            images.append(item["image"])
            pids.append(item["patient_id"])
        if not images:
            raise ValueError("no rows to stack")
        return np.stack(images), pids


def load_image_table(
    folder: str | Path,
    csv: str | Path = "labels.csv",
    label_columns: Sequence[str] | None = None,
    check_files: bool = True,
    read_all: bool = False,
    drop_alpha: bool = True,
) -> ImageTable:
    """Index a folder of images from its CSV (``csv`` relative to ``folder`` unless absolute).

    Raises :class:`LoaderError` naming the CSV for missing columns or a bad row (an empty id, ids
    differing only in whitespace, a path listed twice; ids lose surrounding whitespace, see
    :mod:`.identity`), and naming the image when it is missing (``check_files``) or corrupt
    (``read_all`` reads every image once up front instead of failing mid-training).
    """
    folder = Path(folder)
    csv_path = Path(csv) if Path(csv).is_absolute() else folder / csv
    if not csv_path.is_file():
        raise LoaderError(csv_path, "image index CSV not found")
    try:
        df = pl.read_csv(csv_path, schema_overrides={"path": pl.Utf8, "patient_id": pl.Utf8}, infer_schema_length=None)
    except Exception as err:
        raise LoaderError(csv_path, f"could not parse CSV ({type(err).__name__}: {err})") from err
    missing = [c for c in ("path", "patient_id") if c not in df.columns]
    if label_columns is None:
        label_columns = [c for c in df.columns if c not in ("path", "patient_id")]
    missing += [c for c in label_columns if c not in df.columns]
    if missing:
        raise LoaderError(csv_path, f"missing column(s) {missing}; found {df.columns}")
    patients = clean_ids(df["patient_id"].to_list(), csv_path, "patient_id")
    written = clean_ids(df["path"].to_list(), csv_path, "path")
    resolved = [str(p if Path(p).is_absolute() else folder / p) for p in written]
    check_unique([os.path.normpath(p) for p in resolved], csv_path, "path", what="is listed twice; one image would "
                 "become two records")
    df = df.select(["path", "patient_id", *label_columns]).with_columns(pl.Series("path", resolved),
                                                                        pl.Series("patient_id", patients))
    if check_files:
        absent = [(i, p) for i, p in enumerate(resolved) if not Path(p).is_file()]
        if absent:
            raise LoaderError(absent[0][1], f"image file not found (listed in {csv_path.name}, {csv_line(absent[0][0])}; "
                                            f"{len(absent)} missing in all)")
    table = ImageTable(df, label_columns, drop_alpha)
    if read_all:
        for i in range(len(table)):
            table[i]
    return table
