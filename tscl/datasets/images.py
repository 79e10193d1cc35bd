"""Image sources: a folder of images (.npy or PNG) + a CSV index -> :class:`ImageDataset` (``[B, C, H, W]``).

=============  ===========================================================================
``images``     ``<root>/labels.csv`` (``csv=`` another name): ``path`` (relative to root or
               absolute), ``patient_id``; optional ``record_id``, ``split`` (train/val/test),
               ``visit_time``; every other column is a label
=============  ===========================================================================

Every image of a dataset has one shape ``[C, H, W]``: mixed sizes are refused, naming two files
and their sizes, unless ``size=H`` or ``size=HxW`` resizes each image as it is read (bilinear,
antialiased). ``channels=1`` averages RGB films to one plane, ``channels=3`` repeats a gray one.
``normalize="zscore"`` standardises each image (all its pixels) when it is fetched.

Without a ``split`` column the split is :func:`~tscl.datasets.hash_split` of the patient id, so
all films of a patient are on one side. Ids: ``patient_id`` as written without surrounding
whitespace; ``record_id`` as written, or the image's path relative to the root without its suffix
(``siteA/img1``); a path or record id listed twice is refused naming both lines.

Every image is read once when the dataset is opened (decoded, converted, checked finite and of
the dataset's shape), so a missing, corrupt, transparent (RGBA with alpha < 1), NaN or odd-sized
image is refused then, naming it, not found mid-training; ``on_error=skip`` leaves such images out
and lists them in ``dataset.notes["skipped"]``. Images are read when a batch is fetched (the trainer's
loader thread), or held in memory after the first read when they fit (``preload=auto``: under
1 GiB).

MICLe (Azizi et al., "Big Self-Supervised Models Advance Medical Image Classification", ICCV
2021: two films of one patient as positives) is ``--method pclr`` on an image dataset: PCLR's
patient sampler draws two films per patient and the image augmentation is applied to each.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tscl.loaders import LoaderError
from tscl.loaders.cache import fingerprint_files
from tscl.loaders.identity import check_unique, clean_ids, csv_line, relative_id
from tscl.loaders.images import ImageTable, load_image_table, read_image
from tscl.progress import progress_bar
from . import SPLITS, Dataset, hash_split, declare_source

__all__ = ["ImageDataset", "image_shape", "parse_size"]

_NORMALIZE = ("none", "zscore")
_PRELOAD_BYTES = 1 << 30


def parse_size(size) -> tuple[int, int] | None:
    """``None``, ``64``, ``"64"``, ``"64x48"`` (H x W) or ``(64, 48)`` -> ``(H, W)`` or None."""
    if size in (None, "", "none", 0):
        return None
    if isinstance(size, (tuple, list)):
        h, w = size
    elif isinstance(size, str):
        h, _, w = size.lower().partition("x")
        w = w or h
    else:
        h = w = size
    try:
        h, w = int(h), int(w)
    except ValueError:
        raise ValueError(f"size must be H or HxW (e.g. 64 or 64x48), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def image_shape(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header, without decoding the pixels."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as f:
                major, _ = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape = read(f)[0]
            if len(shape) not in (2, 3):
                raise LoaderError(path, f"image must be [H, W] or [C, H, W], got shape {shape}")
            return int(shape[-2]), int(shape[-1])
        with open(path, "rb") as f:
            head = f.read(24)
        if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
            raise LoaderError(path, "not a PNG file (bad signature)")
        w, h = struct.unpack(">II", head[16:24])
        return int(h), int(w)
    except LoaderError:
        raise
    except Exception as err:
        raise LoaderError(path, f"could not read the image header ({type(err).__name__}: {err})") from err


class ImageDataset(Dataset):
    """The rows of an image table as ``[B, C, H, W]`` float32 batches (one shape for all)."""

    modality = "image"

    def __init__(self, table, index: pl.DataFrame, *, shape: tuple[int, int, int], size=None, channels=None,
                 normalize: str = "none", preload: bool = False, fingerprint: str = "", source: dict | None = None,
                 _memory: dict | None = None, notes: dict | None = None):
        super().__init__(index, source=source, notes=notes)
        self.table, self.shape, self.size, self.channels = table, shape, size, channels
        self.normalize, self.preload, self._fingerprint = normalize, preload, fingerprint
        self._memory = {} if _memory is None else _memory  # path -> [C, H, W], shared by subsets

    @property
    def in_channels(self) -> int:
        return self.shape[0]

    @property
    def info(self) -> dict:
        return {**super().info, "height": self.shape[1], "width": self.shape[2], "normalize": self.normalize,
                "size": list(self.size) if self.size else None}

    @property
    def label_columns(self) -> list[str]:
        return [c for c in super().label_columns if c != "path"]

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def _read(self, path: str) -> np.ndarray:
        img = self._memory.get(path)
        if img is not None:
            return img
        img = read_image(path, self.table.drop_alpha)
        if self.channels and img.shape[0] != self.channels:
            if self.channels == 1:
                img = img.mean(axis=0, keepdims=True)
            elif img.shape[0] == 1:
                img = np.repeat(img, self.channels, axis=0)
            else:
                raise LoaderError(path, f"has {img.shape[0]} channels; channels={self.channels} can only average "
                                        "to 1 or repeat 1")
        if self.size and img.shape[1:] != self.size:
            t = torch.from_numpy(img)[None]
            img = torch.nn.functional.interpolate(t, size=self.size, mode="bilinear", antialias=True,
                                                  align_corners=False)[0].numpy()
        if img.shape != self.shape:
            raise LoaderError(path, f"image shape {img.shape} differs from the dataset's {self.shape}; open it with "
                                    "size=HxW to resize, or channels=1/3 to convert")
        if self.preload:
            self._memory[path] = img
        return img

    def fetch(self, rows) -> torch.Tensor:
        paths = self.index["path"].to_list()
        x = np.stack([self._read(paths[int(r)]) for r in np.asarray(rows).reshape(-1)]) if len(rows) else \
            np.zeros((0, *self.shape), np.float32)
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.normalize == "zscore":
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-6)
        return x

    def array(self) -> np.ndarray:
        """Every image as one ``[N, C, H, W]`` array, as ``fetch`` gives them (for embedding and probes)."""
        return self.fetch(np.arange(len(self))).numpy()

    def _take(self, rows):
        index = self.index[rows.tolist()] if len(rows) else self.index.clear()
        return ImageDataset(self.table, index, shape=self.shape, size=self.size, channels=self.channels,
                            normalize=self.normalize, preload=self.preload, fingerprint=self._fingerprint,
                            source=self.source, _memory=self._memory)


def _image_index(table, csv: Path, root: Path) -> pl.DataFrame:
    index = table.index
    if "record_id" in index.columns:
        ids = clean_ids(index["record_id"].cast(pl.Utf8).to_list(), csv, "record_id")
        check_unique(ids, csv, "record_id")
        index = index.with_columns(pl.Series("record_id", ids, dtype=pl.Utf8))
    else:  # the image's path relative to the root, without its suffix: two folders' img1.png stay two records
        index = index.with_columns(pl.Series("record_id", [_relative_record(p, root) for p in index["path"]],
                                             dtype=pl.Utf8))
    if "split" in index.columns:
        index = index.with_columns(pl.col("split").cast(pl.Utf8).str.strip_chars().str.to_lowercase())
        bad = sorted(set(index["split"].to_list()) - set(SPLITS), key=str)
        if bad:
            row = index.with_row_index("row").filter(~pl.col("split").is_in(SPLITS) | pl.col("split").is_null())["row"][0]
            raise LoaderError(csv, f"split value {bad[0]!r} at data row {row + 1}; use {', '.join(SPLITS)}")
        both = index.group_by("patient_id").agg(pl.col("split").n_unique().alias("n")).filter(pl.col("n") > 1)
        if both.height:
            raise LoaderError(csv, f"patient {both['patient_id'][0]!r} has films in several splits "
                                   f"({both.height} such patients); a patient must be on one side")
    else:
        index = index.with_columns(pl.Series("split", hash_split(index["patient_id"].to_list())))
    first = ["patient_id", "record_id", "split", "path"]
    return index.select([*first, *[c for c in index.columns if c not in first]])


def _relative_record(path: str, root: Path) -> str:
    try:
        return relative_id(path, root)
    except ValueError:  # an absolute path outside the root: the path itself
        return Path(path).with_suffix("").as_posix()


@declare_source("images", "image", "a folder of .npy/.png images and a CSV (labels.csv) with path and patient_id "
                 "columns (optional record_id, split, label columns); one image size, or size=HxW to resize",
                 options={"csv": "the index CSV, relative to the root (default labels.csv)",
                          "size": "H or HxW: resize every image to it (default: all images must share one size)",
                          "channels": "1 (average RGB to gray) or 3 (repeat gray); default: as stored",
                          "normalize": "none | zscore: standardise each image (default none)",
                          "preload": "auto | true | false: keep images in memory after the first read (auto: < 1 GiB)",
                          "on_error": "raise | skip: a missing, unreadable, transparent, non-finite or odd-sized image "
                                      "stops the load, or is left out and listed"})
def _images(root: Path, *, cache=None, progress=True, csv="labels.csv", size=None, channels=None, normalize="none",
            preload="auto", on_error="raise"):
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be raise or skip, got {on_error!r}")
    channels = int(channels) if channels not in (None, "") else None
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    size = parse_size(size)
    table = load_image_table(root, csv, check_files=False)
    csv_path = Path(csv) if Path(csv).is_absolute() else root / csv
    if not len(table):
        raise LoaderError(csv_path, "lists no image")
    _image_index(table, csv_path, root)  # ids and splits checked on every row, so messages name the table's lines
    skipped = [{"path": p, "problem": f"listed in {csv_path.name} ({csv_line(i)}) but not found"}
               for i, p in enumerate(table.index["path"].to_list()) if not Path(p).is_file()]
    _raise_first(skipped, on_error, len(table))
    table = _without(table, {s["path"] for s in skipped})
    paths = table.index["path"].to_list()
    if size is None:
        _check_one_size(paths, on_error, skipped)
        table = _without(table, {s["path"] for s in skipped})
        paths = table.index["path"].to_list()
    if not paths:
        raise LoaderError(csv_path, f"no readable image: {len(skipped)} left out (first: {skipped[0]['path']}: "
                                    f"{skipped[0]['problem']})")
    if preload in ("auto", None, ""):
        preload = None
    elif isinstance(preload, str):
        if preload.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"preload must be auto, true or false, got {preload!r}")
        preload = preload.lower() in ("true", "1")
    ds = _validated(table, csv_path, root, size, channels, normalize, preload, on_error, skipped, progress)
    ds._fingerprint = fingerprint_files([*ds.index["path"].to_list(), csv_path],
                                        extra=f"images;{size};{channels};{normalize}", root=root)
    return ds


def _raise_first(skipped: list[dict], on_error: str, n: int) -> None:
    if skipped and on_error == "raise":
        first = skipped[0]
        raise LoaderError(first["path"], f"{first['problem']}" + (f"; {len(skipped)} of {n} images cannot be used "
                                                                  "(on_error=skip leaves them out, listed)"
                                                                  if len(skipped) > 1 else ""))


def _without(table, paths: set):
    if not paths:
        return table

    return ImageTable(table.index.filter(~pl.col("path").is_in(sorted(paths))), table.label_columns, table.drop_alpha)


def _check_one_size(paths: list[str], on_error: str, skipped: list[dict]) -> None:
    """Every image's size from its header (no decoding): the first size is the dataset's; another one is refused
    naming both files, or with ``on_error="skip"`` left out and listed, as are headers that cannot be read."""
    first = None
    for p in paths:
        try:
            shape = image_shape(p)
        except LoaderError as err:
            _raise_first([{"path": err.path, "problem": err.problem}], on_error, len(paths))
            skipped.append({"path": err.path, "problem": err.problem})
            continue
        first = first or (shape, p)
        if shape != first[0]:
            (s0, p0), s1 = first, shape
            problem = (f"is {s1[0]}x{s1[1]} but {p0} is {s0[0]}x{s0[1]}; images of one dataset must share a size: "
                       "resize them, or open with size=HxW")
            _raise_first([{"path": p, "problem": problem}], on_error, len(paths))
            skipped.append({"path": p, "problem": problem})


def _validated(table, csv_path, root, size, channels, normalize, preload, on_error, skipped, progress):
    """The dataset over every image that reads as the dataset's shape, each read once now (decoded, channels
    and size converted, finite): a corrupt, transparent, NaN or odd-shaped image is refused here, naming it,
    or with ``on_error="skip"`` left out and listed, instead of being found mid-training."""
    paths = table.index["path"].to_list()
    shape = None
    for p in paths:  # the dataset's shape: that of the first image that reads
        try:
            first = read_image(p, table.drop_alpha)
        except LoaderError as err:
            _raise_first([{"path": err.path, "problem": err.problem}], on_error, len(paths))
            skipped.append({"path": err.path, "problem": err.problem})
            continue
        hw = size or first.shape[1:]
        shape = (int(channels or first.shape[0]), int(hw[0]), int(hw[1]))
        break
    if shape is None:
        raise LoaderError(csv_path, f"no readable image: {len(skipped)} left out (first: {skipped[0]['path']}: "
                                    f"{skipped[0]['problem']})")
    if preload is None:
        preload = len(paths) * 4 * int(np.prod(shape)) < _PRELOAD_BYTES
    table = _without(table, {s["path"] for s in skipped})
    ds = ImageDataset(table, _image_index(table, csv_path, root), shape=shape, size=size, channels=channels,
                      normalize=normalize, preload=bool(preload), notes={"skipped": skipped})
    bad = []
    for p in progress_bar(ds.index["path"].to_list(), desc=f"checking {root.name}", disable=not progress):
        try:
            ds._read(p)
        except LoaderError as err:
            _raise_first([{"path": err.path, "problem": err.problem}], on_error, len(paths))
            bad.append({"path": err.path, "problem": err.problem})
    if bad:
        skipped.extend(bad)
        keep = ~ds.index["path"].is_in([b["path"] for b in bad]).to_numpy()
        ds = ds.subset(keep)
        if not len(ds):
            raise LoaderError(csv_path, f"no readable image: {len(skipped)} left out (first: {skipped[0]['path']}: "
                                        f"{skipped[0]['problem']})")
    return ds
