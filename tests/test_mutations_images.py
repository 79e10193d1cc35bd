"""Generated faults for the ``images`` source through the installed CLI.

A folder of small gray PNG and .npy films with a labels.csv is written here; a seeded generator
derives mutated copies (transparent and opaque RGBA, NaN pixels, cut and corrupted PNGs, another
size, retyped and reshaped arrays, files missing or replaced by folders, rows repeated, reordered or
re-spaced, one file name in two folders, a re-encoded table). Every image is checked when the
dataset is opened, so a bad one is refused then, not mid-training. Correct reads are compared with
Pillow and numpy reading the mutated files directly.
"""
from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mutation_kit import Case, Cases, dir_in_place, flip_bytes, needs_cli, outside, run_cases, same_items

pytestmark = needs_cli
N = 8


def write_png(path: Path, pixels: np.ndarray) -> None:
    """uint8 ``[H, W]`` gray, ``[H, W, 4]`` RGBA, or uint16 ``[H, W]`` 16-bit gray (Pillow infers the mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def image_of(path: Path) -> np.ndarray:
    """``[C, H, W]`` float32 as the file holds it: PNG by Pillow (8-bit / 255, 16-bit / 65535), .npy by numpy."""
    if path.suffix == ".npy":
        arr = np.load(path).astype(np.float32)
        return arr[None] if arr.ndim == 2 else arr
    img = Image.open(path)
    arr = np.asarray(img).astype(np.float32) / (65535.0 if img.mode.startswith("I") else 255.0)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


@pytest.fixture(scope="module")
def images_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("images") / "base"
    rng = np.random.default_rng(0)
    rows = ["path,patient_id,effusion"]
    for i in range(N):
        if i % 2:
            name = f"films/f{i}.png"
            write_png(root / name, rng.integers(0, 256, (16, 16), dtype=np.uint8))
        else:
            name = f"films/f{i}.npy"
            (root / "films").mkdir(parents=True, exist_ok=True)
            np.save(root / name, rng.random((1, 16, 16)).astype(np.float32))
        rows.append(f"{name},p{i // 2},{i % 3 == 0:d}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def images_expected(root: Path, left_out: set[str] = frozenset()) -> dict:
    """Record id -> (patient, image) for every listed image on disk, but those the read says it left out."""
    with open(root / "labels.csv", newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for r in rows:
        path = root / r["path"].strip()
        if path.is_file() and str(path) not in left_out:
            out[Path(r["path"].strip()).with_suffix("").as_posix()] = (r["patient_id"].strip(), image_of(path))
    return out


def _edit_table(root: Path, fn) -> None:
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join(fn(lines)) + "\n")


def _patient(line: str, value: str) -> str:
    path, _, rest = line.split(",", 2)
    return ",".join([path, value, rest])


def _rgba(root: Path, name: str, alpha: int) -> None:
    gray = np.asarray(Image.open(root / name))
    write_png(root / name, np.dstack([gray, gray, gray, np.full_like(gray, alpha)]))


def _gone(result: dict) -> set[str]:
    return {s["path"] for s in result["notes"].get("skipped", [])}


def images_cases(base: Path, where: Path, rng: random.Random) -> list[Case]:
    case = Cases(base, where, lambda root, r: same_items(r, images_expected(root, _gone(r)), atol=1e-6))
    png = f"films/f{rng.choice([1, 3, 5, 7])}.png"
    npy = f"films/f{rng.choice([2, 4, 6])}.npy"
    k = int(png[7])
    case("baseline", "correct")
    case("RGBA with transparent pixels", "refuse", png, edit=lambda r: _rgba(r, png, 128))
    case("fully opaque RGBA among gray films", "refuse", png, edit=lambda r: _rgba(r, png, 255))
    case("a NaN pixel", "refuse", npy,
         edit=lambda r: np.save(r / npy, np.where(np.arange(256).reshape(1, 16, 16) == 77, np.nan, np.load(r / npy))))
    case("PNG cut short", "refuse", png, edit=lambda r: (r / png).write_bytes((r / png).read_bytes()[:60]))
    case("PNG bytes corrupted", "either", png, edit=lambda r: flip_bytes(r / png, rng, 4, head=40))
    case("another size", "refuse", png,
         edit=lambda r: write_png(r / png, np.zeros((20, 20), np.uint8)))
    case("an array of objects", "refuse", npy, edit=lambda r: np.save(r / npy, np.array([{"a": 1}]), allow_pickle=True))
    case("a 4-D array", "refuse", npy, edit=lambda r: np.save(r / npy, np.zeros((1, 1, 16, 16), np.float32)))
    case("re-encoded as a 16-bit PNG", "correct",
         edit=lambda r: write_png(r / png, np.asarray(Image.open(r / png)).astype(np.uint16) * 257))
    case("an image missing", "refuse", png, edit=lambda r: (r / png).unlink())
    case("an image missing, on_error=skip", "correct", options="on_error=skip", note="1 left out",
         edit=lambda r: (r / png).unlink())
    case("a corrupt image, on_error=skip", "correct", options="on_error=skip", note="1 left out",
         edit=lambda r: (r / png).write_bytes((r / png).read_bytes()[:60]))
    case("an image replaced by a folder", "refuse", png, edit=lambda r: dir_in_place(r / png))
    case("a row repeated", "refuse", "labels.csv", edit=lambda r: _edit_table(r, lambda ls: [*ls, ls[k + 1]]))
    case("rows reordered", "correct", edit=lambda r: _edit_table(r, lambda ls: [ls[0], *rng.sample(ls[1:], N)]))
    case("a patient id with a trailing space", "correct",
         edit=lambda r: _edit_table(r, lambda ls: [*ls[:k + 1], _patient(ls[k + 1], f"p{k // 2} "), *ls[k + 2:]]))
    case("patient ids differing only inside", "refuse", "labels.csv",
         edit=lambda r: _edit_table(r, lambda ls: [*ls[:k + 1], _patient(ls[k + 1], f"p {k // 2}"), *ls[k + 2:]]))
    case("one file name in two folders", "correct", edit=_two_sites)
    case("labels.csv with CRLF line ends and a BOM", "either", "labels.csv",
         edit=lambda r: (r / "labels.csv").write_bytes(b"\xef\xbb\xbf" + (r / "labels.csv").read_bytes()
                                                       .replace(b"\n", b"\r\n")))
    return case.cases


def _two_sites(root: Path) -> None:
    (root / "site2").mkdir()
    shutil.copy(root / "films" / "f1.png", root / "site2" / "f1.png")
    _edit_table(root, lambda ls: [*ls, "site2/f1.png,p9,1"])


def test_images_mutations(images_base, tmp_path):
    cwd = outside(tmp_path)
    outcomes = run_cases("images", images_cases(images_base, cwd, random.Random(31)), cwd)
    assert outcomes["RGBA with transparent pixels"] == "refused" and outcomes["a NaN pixel"] == "refused"
