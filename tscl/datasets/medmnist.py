"""The ``medmnist`` source: any MedMNIST 2-D ``.npz`` (official train / val / test split) as image items.

=============  ===========================================================================
``medmnist``   a MedMNIST ``.npz`` (or a folder holding one; ``file=`` picks among several):
               ``{train,val,test}_images`` and ``_labels`` (:mod:`tscl.loaders.medmnist`)
=============  ===========================================================================

Ids: MedMNIST gives no patient ids (several images of one patient may sit in different
splits of the official split), so each image is its own patient: ``patient_id`` = ``record_id``
= ``<split>-<index in that split>`` (``train-00000``). Split: the file's own.

Labels: a single-label file gives ``label`` (the class number); with more than two classes
also one 0/1 column per class, ``label_0`` ... ``label_<K-1>`` (what the probe's macro AUROC
reads); a binary file's ``label`` is already 0/1 (BreastMNIST: 0 malignant, 1 normal or
benign). A multi-label file (``[N, K]``, ChestMNIST) gives ``label_0`` ... ``label_<K-1>``.

Payload: ``[B, C, H, W]`` float32, uint8 pixels scaled to [0, 1] (as the ``images`` source reads
PNGs); ``channels=1`` averages RGB, ``channels=3`` repeats gray, ``size=H`` or ``HxW`` resizes
(bilinear, antialiased) and ``normalize=zscore`` standardises each image, all when a batch is
fetched. The file is read into memory once (uint8: 28 x 28 BreastMNIST is 0.6 MB).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from tscl.loaders.cache import fingerprint_files
from tscl.loaders.medmnist import MEDMNIST_SPLITS, find_medmnist_file, read_medmnist
from . import declare_source
from .images import _NORMALIZE, ImageDataset, parse_size

__all__ = ["ArrayImageDataset"]


class ArrayImageDataset(ImageDataset):
    """Images held in one ``[N, C, H, W]`` array (shared by subsets), fetched as ``[B, C, H', W']`` float32 batches;
    ``info``, ``in_channels`` and ``array()`` as :class:`~tscl.datasets.images.ImageDataset` gives them."""

    def __init__(self, images: np.ndarray, index: pl.DataFrame, *, rows=None, size=None, channels=None,
                 normalize: str = "none", fingerprint: str = "", source: dict | None = None):
        if normalize not in _NORMALIZE:
            raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
        h, w = size or images.shape[2:]
        super().__init__(None, index, shape=(int(channels or images.shape[1]), int(h), int(w)), size=size,
                         channels=channels, normalize=normalize, fingerprint=fingerprint, source=source)
        self.images = images
        self._rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)

    def fetch(self, rows) -> torch.Tensor:
        rows = self._rows[np.asarray(rows, dtype=np.int64).reshape(-1)]
        x = torch.from_numpy(np.ascontiguousarray(self.images[rows], dtype=np.float32))
        if self.images.dtype == np.uint8:
            x = x / 255.0
        if self.channels == 1 and x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        elif self.channels == 3 and x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if self.size and tuple(x.shape[2:]) != self.size and len(x):
            x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        if self.normalize == "zscore" and len(x):
            x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-6)
        return x

    def _take(self, rows):
        index = self.index[rows.tolist()] if len(rows) else self.index.clear()
        return ArrayImageDataset(self.images, index, rows=self._rows[rows], size=self.size, channels=self.channels,
                                 normalize=self.normalize, fingerprint=self._fingerprint, source=self.source)


def _label_table(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The index's label columns for ``[N, K]`` labels (see the module docstring)."""
    if labels.shape[1] > 1:
        return {f"label_{k}": labels[:, k] for k in range(labels.shape[1])}
    label = labels[:, 0]
    n_classes = int(label.max()) + 1 if len(label) else 0
    one_hot = {f"label_{k}": (label == k).astype(np.int64) for k in range(n_classes)} if n_classes > 2 else {}
    return {"label": label, **one_hot}


@declare_source("medmnist", "image", "a MedMNIST 2-D .npz (train/val/test _images and _labels; any size, gray or "
                 "RGB), or a folder holding one; official split, patient = image, labels 'label' (+ one-hot "
                 "label_k) or label_k for multi-label files",
                 options={"file": "the .npz to read when the root is a folder holding several",
                          "size": "H or HxW: resize every image to it (default: as stored)",
                          "channels": "1 (average RGB to gray) or 3 (repeat gray); default: as stored",
                          "normalize": "none | zscore: standardise each image (default none)"})
def _medmnist(root: Path, *, cache=None, progress=True, file=None, size=None, channels=None, normalize="none"):
    channels = None if channels in (None, "") else channels
    if channels is not None and str(channels) not in ("1", "3"):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    channels = int(channels) if channels is not None else None
    size = parse_size(size)
    path = find_medmnist_file(root, file)
    parts = read_medmnist(path)
    labels = np.concatenate([parts[s][1] for s in MEDMNIST_SPLITS])
    ids = [f"{s}-{i:05d}" for s in MEDMNIST_SPLITS for i in range(len(parts[s][0]))]
    index = pl.DataFrame({"patient_id": ids, "record_id": ids,
                          "split": [s for s in MEDMNIST_SPLITS for _ in range(len(parts[s][0]))],
                          **_label_table(labels)})
    images = np.concatenate([parts[s][0] for s in MEDMNIST_SPLITS])
    fp = fingerprint_files([path], extra=f"medmnist;{size};{channels};{normalize}")
    return ArrayImageDataset(images, index, size=size, channels=channels, normalize=normalize, fingerprint=fp)
