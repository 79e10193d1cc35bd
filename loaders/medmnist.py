"""MedMNIST 2-D datasets (Yang et al., Scientific Data 2023) as the project publishes them: one ``.npz`` each.

A file (``breastmnist.npz``, ``pathmnist_64.npz``, ...) holds six arrays: ``train_images``,
``train_labels``, ``val_images``, ``val_labels``, ``test_images``, ``test_labels`` (the official
split). Images are uint8 ``[N, H, W]`` (grayscale) or ``[N, H, W, 3]`` (RGB), 28 px or, for
MedMNIST+, 64 / 128 / 224 px; labels are ``[N, 1]`` class indices (``[N]`` in some copies),
or ``[N, K]`` 0/1 for the multi-label ChestMNIST. The class names are in the ``medmnist``
package's ``INFO[flag]["label"]``, not in the file. MedMNIST gives no patient ids.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .recording import LoaderError

__all__ = ["MEDMNIST_SPLITS", "read_medmnist", "find_medmnist_file"]

MEDMNIST_SPLITS = ("train", "val", "test")


def find_medmnist_file(root: str | Path, file: str | None = None) -> Path:
    """``root`` itself when it is a file; else ``file`` in it, or its one ``.npz``."""
    root = Path(root)
    if root.is_file():
        return root
    if file:
        path = Path(file) if Path(file).is_absolute() else root / file
        if not path.is_file():
            raise LoaderError(path, "MedMNIST .npz file not found")
        return path
    found = sorted(root.glob("*.npz"))
    if len(found) != 1:
        what = "no .npz file" if not found else f"{len(found)} .npz files ({', '.join(p.name for p in found[:4])}...)"
        raise LoaderError(root, f"{what}; give the .npz as the root, or file=NAME.npz")
    return found[0]


def _labels(path: Path, split: str, labels: np.ndarray, n: int) -> np.ndarray:
    """``[N, K]`` int64 labels; K = 1 for single-label files."""
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape[0] != n:
        raise LoaderError(path, f"{split}_labels has shape {labels.shape}; {split}_images holds {n} images, so the "
                                f"labels must be [{n}], [{n}, 1] or [{n}, K]")
    if labels.dtype.kind not in "biuf" or (labels.dtype.kind == "f" and not np.all(np.mod(labels, 1) == 0)):
        raise LoaderError(path, f"{split}_labels must hold whole class numbers, got dtype {labels.dtype}")
    if n and labels.min() < 0:
        raise LoaderError(path, f"{split}_labels holds a negative class {int(labels.min())}")
    if labels.shape[1] > 1 and n and labels.max() > 1:
        raise LoaderError(path, f"{split}_labels is multi-label [{n}, {labels.shape[1]}], so its values must be 0 or "
                                f"1; found {int(labels.max())}")
    return labels.astype(np.int64)


def _images(path: Path, split: str, images: np.ndarray) -> np.ndarray:
    """``[N, C, H, W]`` (C = 1 or 3), the stored dtype kept."""
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        images = np.moveaxis(images, -1, 1)
    else:
        raise LoaderError(path, f"{split}_images has shape {images.shape}; MedMNIST images are [N, H, W] (gray) or "
                                "[N, H, W, 3] (RGB)")
    if images.dtype != np.uint8 and images.dtype.kind != "f":
        raise LoaderError(path, f"{split}_images has dtype {images.dtype}; MedMNIST pixels are uint8 (0-255, read "
                                "as [0, 1]) or floats in [0, 1]")
    if images.dtype.kind == "f":
        if not np.isfinite(images).all():
            raise LoaderError(path, f"{split}_images holds {int((~np.isfinite(images)).sum())} non-finite pixels")
        if images.size and (images.min() < 0 or images.max() > 1):
            raise LoaderError(path, f"{split}_images holds float pixels from {images.min():g} to {images.max():g}; "
                                    "float pixels must lie in [0, 1] (0-255 pixels are stored as uint8)")
    return images


def read_medmnist(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images [N, C, H, W], labels [N, K] int64)}`` for train, val and test of a MedMNIST ``.npz``.

    A missing array, images that are not ``[N, H, W]`` / ``[N, H, W, 3]``, pixels that are neither uint8 nor
    floats in [0, 1], splits of different pixel types, image shapes or label widths, labels that do not match the images in number, or that are not
    whole non-negative numbers (0/1 when multi-label), raise a :class:`LoaderError` naming the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [f"{s}_{k}" for s in MEDMNIST_SPLITS for k in ("images", "labels") if f"{s}_{k}" not in z.files]
            if missing:
                raise LoaderError(path, f"no {missing[0]!r} array (it holds {sorted(z.files)}); a MedMNIST .npz holds "
                                        "train/val/test _images and _labels")
            arrays = {k: z[k] for k in z.files if k.endswith(("_images", "_labels"))}
    except LoaderError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise LoaderError(path, f"cannot read the .npz ({type(err).__name__}: {err})") from err
    out = {}
    for split in MEDMNIST_SPLITS:
        images = _images(path, split, arrays[f"{split}_images"])
        out[split] = (images, _labels(path, split, arrays[f"{split}_labels"], len(images)))
    dtypes = {s: out[s][0].dtype for s in MEDMNIST_SPLITS}
    for split in MEDMNIST_SPLITS[1:]:
        if dtypes[split] != dtypes["train"]:  # one scale for the file: uint8 / 255, floats as stored
            raise LoaderError(path, f"{split}_images are {dtypes[split]} but train_images {dtypes['train']}; one "
                                    "file holds one pixel type")
    shapes = {s: out[s][0].shape[1:] for s in MEDMNIST_SPLITS}
    widths = {s: out[s][1].shape[1] for s in MEDMNIST_SPLITS}
    for split in MEDMNIST_SPLITS[1:]:
        if shapes[split] != shapes["train"]:
            raise LoaderError(path, f"{split}_images are {shapes[split]} (C, H, W) but train_images are "
                                    f"{shapes['train']}; one file holds one image size")
        if widths[split] != widths["train"]:
            raise LoaderError(path, f"{split}_labels has {widths[split]} column(s) but train_labels "
                                    f"{widths['train']}")
    return out
