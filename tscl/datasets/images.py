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
all films of a patient are on one side. Images are read when a batch is fetched (the trainer's
loader thread), or held in memory after the first read when they fit (``preload=auto``: under
1 GiB). Importing this module registers the image augmentations (:mod:`tscl.augment_image`).

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

import tscl.augment_image  # noqa: F401  (registers the image ops)

from . import SPLITS, Dataset, hash_split, register_source

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
    from tscl.loaders import LoaderError

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
                 _memory: dict | None = None):
        super().__init__(index, source=source)
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
        from tscl.loaders import LoaderError
        from tscl.loaders.images import read_image

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


def _image_index(table, csv: Path) -> pl.DataFrame:
    from tscl.loaders import LoaderError

    index = table.index
    if "record_id" in index.columns:
        index = index.with_columns(pl.col("record_id").cast(pl.Utf8))
        if index["record_id"].null_count():
            raise LoaderError(csv, "empty record_id value(s)")
        dup = index.filter(pl.col("record_id").is_duplicated())["record_id"]
        if len(dup):
            raise LoaderError(csv, f"record_id {dup[0]!r} appears {int((index['record_id'] == dup[0]).sum())} times")
    else:
        index = index.with_columns(pl.Series("record_id", [Path(p).stem for p in index["path"]]))
        if index["record_id"].is_duplicated().any():  # two folders with the same file name
            index = index.with_columns(pl.Series("record_id", [f"row{i}" for i in range(index.height)]))
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


@register_source("images", "image", "a folder of .npy/.png images and a CSV (labels.csv) with path and patient_id "
                 "columns (optional record_id, split, label columns); one image size, or size=HxW to resize",
                 options={"csv": "the index CSV, relative to the root (default labels.csv)",
                          "size": "H or HxW: resize every image to it (default: all images must share one size)",
                          "channels": "1 (average RGB to gray) or 3 (repeat gray); default: as stored",
                          "normalize": "none | zscore: standardise each image (default none)",
                          "preload": "auto | true | false: keep images in memory after the first read (auto: < 1 GiB)"})
def _images(root: Path, *, cache=None, progress=True, csv="labels.csv", size=None, channels=None, normalize="none",
            preload="auto"):
    from tscl.loaders import LoaderError
    from tscl.loaders.images import load_image_table, read_image
    from tscl.loaders.cache import fingerprint_files

    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
    channels = int(channels) if channels not in (None, "") else None
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    size = parse_size(size)
    table = load_image_table(root, csv)
    csv_path = Path(csv) if Path(csv).is_absolute() else root / csv
    if not len(table):
        raise LoaderError(csv_path, "lists no image")
    paths = table.index["path"].to_list()
    if size is None:
        shapes: dict[tuple[int, int], str] = {}
        for p in paths:
            shapes.setdefault(image_shape(p), p)
            if len(shapes) > 1:
                (s0, p0), (s1, p1) = shapes.items()
                raise LoaderError(p1, f"is {s1[0]}x{s1[1]} but {p0} is {s0[0]}x{s0[1]}; images of one dataset must "
                                      "share a size: resize them, or open with size=HxW")
    first = read_image(paths[0], table.drop_alpha)
    c = channels or first.shape[0]
    hw = size or first.shape[1:]
    shape = (int(c), int(hw[0]), int(hw[1]))
    if preload in ("auto", None, ""):
        preload = len(paths) * 4 * np.prod(shape) < _PRELOAD_BYTES
    elif isinstance(preload, str):
        if preload.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"preload must be auto, true or false, got {preload!r}")
        preload = preload.lower() in ("true", "1")
    fp = fingerprint_files([*paths, csv_path], extra=f"images;{size};{channels};{normalize}", root=root)
    ds = ImageDataset(table, _image_index(table, csv_path), shape=shape, size=size, channels=channels,
                      normalize=normalize, preload=bool(preload), fingerprint=fp)
    ds.fetch(np.arange(min(1, len(ds))))  # the first image read through the same path as training
    return ds
