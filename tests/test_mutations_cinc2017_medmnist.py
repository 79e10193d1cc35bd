"""Generated faults for the ``cinc2017`` and ``medmnist`` sources through the installed CLI.

cinc2017: a training2017/-like folder (MAT v4 + WFDB header per record, REFERENCE.csv) written the way
PhysioNet published it; mutated copies drop, cut, corrupt or retype record files, change the header's
gain, rate or length, and repeat, reorder, re-space or re-encode the reference table. Correct reads are
compared with scipy reading the MAT files and the header's gain directly.

medmnist: a small MedMNIST-layout ``.npz``; mutated copies drop or retype arrays, mismatch image and
label counts, put NaN or out-of-range pixels in, write labels of another shape, cut the file or add a
second one beside it. Correct reads are compared with numpy reading the arrays directly.
"""
from __future__ import annotations

import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from mutation_kit import Case, Cases, dir_in_place, flip_bytes, needs_cli, outside, run_cases, same_items
from test_source_cinc2017 import make_training2017

pytestmark = needs_cli
LENGTH_S = 10  # seconds per item (option length_s): records of 9-21 s are cut or zero-padded
FS = 300


# ---- cinc2017 ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cinc2017_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("cinc2017") / "base"
    make_training2017(root / "training2017", per_class=3, seed=5)
    return root


def _gain(hea: Path) -> float:
    """adu per mV from the signal line of a challenge header (``A00001.mat 16+24 1000/mV ...``)."""
    return float(hea.read_text().splitlines()[1].split()[2].split("/")[0])


def cinc2017_expected(root: Path) -> dict:
    """Record id -> (patient, ``[1, LENGTH_S * 300]`` mV): every record the reference table lists, read by scipy."""
    folder = root / "training2017"
    lines = (folder / "REFERENCE.csv").read_text().splitlines()[1:]
    out = {}
    for line in lines:
        name = line.split(",")[0].strip()
        val = scipy.io.loadmat(folder / f"{name}.mat")["val"].astype(np.float64)[0]
        x = np.zeros(LENGTH_S * FS)
        n = min(len(val), x.size)
        x[:n] = val[:n] / _gain(folder / f"{name}.hea")
        out[name] = (name, x[None])
    return out


def _reference(root: Path, fn) -> None:
    path = root / "training2017" / "REFERENCE.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


def _header(root: Path, name: str, fn) -> None:
    path = root / "training2017" / f"{name}.hea"
    lines = path.read_bytes().decode().split("\r\n")
    path.write_bytes("\r\n".join(fn(lines)).encode())


def cinc2017_cases(base: Path, where: Path, rng: random.Random) -> list[Case]:
    case = Cases(base, where, lambda root, r: same_items(r, cinc2017_expected(root), atol=1e-6),
                 options=f"length_s={LENGTH_S}")
    k = rng.randrange(1, 12)
    name = f"A{k:05d}"
    mat, hea = f"training2017/{name}.mat", f"training2017/{name}.hea"
    case("baseline", "correct")
    case("a .mat missing", "refuse", name, edit=lambda r: (r / mat).unlink())
    case("a header missing", "refuse", name, edit=lambda r: (r / hea).unlink())
    case(".mat cut short", "refuse", name, edit=lambda r: (r / mat).write_bytes((r / mat).read_bytes()[:100]))
    case(".mat bytes corrupted", "either", name, edit=lambda r: flip_bytes(r / mat, rng, 6, head=40))
    case(".mat replaced by a folder", "refuse", name, edit=lambda r: dir_in_place(r / mat))
    case("the header's gain 2000/mV", "correct",
         edit=lambda r: _header(r, name, lambda ls: [ls[0], ls[1].replace("1000/mV", "2000/mV"), *ls[2:]]))
    case("the header's rate 500 Hz", "refuse", name,
         edit=lambda r: _header(r, name, lambda ls: [ls[0].replace(" 300 ", " 500 ", 1), *ls[1:]]))
    case("the header's sample count wrong", "refuse", name,
         edit=lambda r: _header(r, name, lambda ls: [" ".join(w if i != 3 else str(int(w) + 7)
                                                             for i, w in enumerate(ls[0].split(" "))), *ls[1:]]))
    case("a reference row repeated", "refuse", "REFERENCE.csv", edit=lambda r: _reference(r, lambda ls: [*ls, ls[k]]))
    case("a reference row with an unknown class", "refuse", "REFERENCE.csv",
         edit=lambda r: _reference(r, lambda ls: [*ls[:k], f"{name},X", *ls[k + 1:]]))
    case("reference rows reordered", "correct", edit=lambda r: _reference(r, lambda ls: [ls[0], *rng.sample(ls[1:], 12)]))
    case("a reference row for a record with no files", "refuse", "A09999",
         edit=lambda r: _reference(r, lambda ls: [*ls, "A09999,N"]))
    case("REFERENCE.csv with CRLF line ends and a BOM", "either", "REFERENCE.csv",
         edit=lambda r: (r / "training2017" / "REFERENCE.csv").write_bytes(
             b"\xef\xbb\xbf" + (r / "training2017" / "REFERENCE.csv").read_bytes().replace(b"\n", b"\r\n")))
    case("no reference table", "refuse", "training2017",
         edit=lambda r: (r / "training2017" / "REFERENCE.csv").unlink())
    return case.cases


def test_cinc2017_mutations(cinc2017_base, tmp_path):
    cwd = outside(tmp_path)
    outcomes = run_cases("cinc2017", cinc2017_cases(cinc2017_base, cwd, random.Random(17)), cwd)
    assert outcomes["a .mat missing"] == "refused" and outcomes["the header's gain 2000/mV"] == "correct"


# ---- medmnist ------------------------------------------------------------------------------------

SPLITS = {"train": 6, "val": 2, "test": 3}


def _arrays(rng) -> dict:
    out = {}
    for split, n in SPLITS.items():
        out[f"{split}_images"] = rng.integers(0, 256, (n, 12, 12), dtype=np.uint8)
        out[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    return out


@pytest.fixture(scope="module")
def medmnist_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("medmnist") / "base"
    root.mkdir()
    np.savez(root / "breastmnist.npz", **_arrays(np.random.default_rng(3)))
    return root


def medmnist_expected(root: Path) -> dict:
    """Record id -> (patient, ``[1, H, W]``): every image of the file, split by split, as numpy reads it."""
    with np.load(root / "breastmnist.npz") as z:
        out = {}
        for split in SPLITS:
            for i, img in enumerate(z[f"{split}_images"]):
                rid = f"{split}-{i:05d}"
                scale = 255.0 if img.dtype == np.uint8 else 1.0  # uint8 pixels read as [0, 1], others as stored
                arr = np.asarray(img, dtype=np.float64) / scale
                out[rid] = (rid, arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0))  # [H, W, C] -> [C, H, W]
    return out


def _rewrite(root: Path, **changes) -> None:
    """The .npz with arrays replaced (a value of None drops the array)."""
    path = root / "breastmnist.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value(arrays[key]) if callable(value) else value
    np.savez(path, **arrays)


def medmnist_cases(base: Path, where: Path, rng: random.Random) -> list[Case]:
    case = Cases(base, where, lambda root, r: same_items(r, medmnist_expected(root), atol=1e-6))
    npz = "breastmnist.npz"
    split = rng.choice(list(SPLITS))
    case("baseline", "correct")
    case("test labels missing", "refuse", npz, edit=lambda r: _rewrite(r, test_labels=None))
    case("train images missing", "refuse", npz, edit=lambda r: _rewrite(r, train_images=None))
    case("one label too few", "refuse", npz, edit=lambda r: _rewrite(r, **{f"{split}_labels": lambda a: a[:-1]}))
    case("one split's images as float64 in [0, 255]", "refuse", npz,
         edit=lambda r: _rewrite(r, **{f"{split}_images": lambda a: a.astype(np.float64)}))
    case("one split's images as float32 in [0, 1]", "refuse", npz,
         edit=lambda r: _rewrite(r, **{f"{split}_images": lambda a: (a / 255).astype(np.float32)}))
    case("every split's images as float32 in [0, 1]", "correct",
         edit=lambda r: _rewrite(r, **{f"{s}_images": lambda a: (a / 255).astype(np.float32) for s in SPLITS}))
    case("every split's images as float32 in [0, 255]", "refuse", npz,
         edit=lambda r: _rewrite(r, **{f"{s}_images": lambda a: a.astype(np.float32) for s in SPLITS}))
    case("a NaN pixel", "refuse", npz,
         edit=lambda r: _rewrite(r, **{f"{split}_images": lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5,
                                                                            np.nan, a.astype(np.float32))}))
    case("negative int16 pixels", "refuse", npz,
         edit=lambda r: _rewrite(r, **{f"{split}_images": lambda a: a.astype(np.int16) - 300}))
    case("labels as text", "refuse", npz,
         edit=lambda r: _rewrite(r, **{f"{split}_labels": lambda a: a.astype(str)}))
    case("images of another size in one split", "refuse", npz,
         edit=lambda r: _rewrite(r, **{f"{split}_images": lambda a: np.zeros((len(a), 10, 10), np.uint8)}))
    case("a 4-D image array of one channel", "either", npz,
         edit=lambda r: _rewrite(r, **{f"{split}_images": lambda a: a[..., None]}))
    case("file cut short", "refuse", npz, edit=lambda r: (r / npz).write_bytes((r / npz).read_bytes()[:200]))
    case("an array member corrupted", "refuse", npz, edit=_corrupt_member)
    case("not a zip at all", "refuse", npz, edit=lambda r: (r / npz).write_bytes(b"MedMNIST" * 40))
    case("a second .npz beside it", "refuse", "breastmnist",
         edit=lambda r: np.savez(r / "pneumoniamnist.npz", **_arrays(np.random.default_rng(4))))
    return case.cases


def _corrupt_member(root: Path) -> None:
    """Flip bytes inside the stored data of one member (the zip's CRC no longer matches)."""
    path = root / "breastmnist.npz"
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("val_images.npy")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + 80  # inside the member's array bytes
    for i in range(start, start + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_medmnist_mutations(medmnist_base, tmp_path):
    cwd = outside(tmp_path)
    outcomes = run_cases("medmnist", medmnist_cases(medmnist_base, cwd, random.Random(23)), cwd)
    assert outcomes["test labels missing"] == "refused" and outcomes["a NaN pixel"] == "refused"
    assert outcomes["one split's images as float64 in [0, 255]"] == "refused"  # was read unscaled, every split


# ---- webdataset ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def webdataset_base(tmp_path_factory):
    from tscl.cli import main
    from tscl.datasets import open_dataset
    from tscl.datasets.stream import export_webdataset

    root = tmp_path_factory.mktemp("webdataset")
    assert main(["simulate", "--out", str(root / "cohort"), "--patients", "6", "--seed", "2", "--quiet"]) == 0
    source = open_dataset("wfdb", root / "cohort", progress=False, cache=root / "cache")
    export_webdataset(source, root / "base", shard_bytes=150_000, seed=1, progress=False)
    assert len(list((root / "base").glob("shard-*.tar"))) >= 3
    return root / "base"


def _tar_items(path: Path) -> dict:
    """``{key: array}`` of one shard, read with tarfile and numpy (members ``<key>.npy``)."""
    import io
    import tarfile

    out = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".npy"):
                out[int(member.name.split(".")[0])] = np.load(io.BytesIO(tar.extractfile(member).read()))
    return out


def webdataset_expected(root: Path) -> dict:
    """Record id -> (patient, item): every row of index.parquet, its item read from its shard's tar directly."""
    import json

    import polars as pl

    shards = [s["name"] for s in json.loads((root / "manifest.json").read_text())["shards"]]
    index = pl.read_parquet(root / "index.parquet")
    items = {s: _tar_items(root / shards[s]) for s in set(index["shard"].to_list())}
    return {r["record_id"]: (r["patient_id"], items[r["shard"]][r["key"]]) for r in index.iter_rows(named=True)}


def _shards(root: Path) -> list[str]:
    import json

    return [s["name"] for s in json.loads((root / "manifest.json").read_text())["shards"]]


def _rewrite_member(root: Path, shard: str, fn) -> None:
    """Rewrite the shard's first ``.npy`` member through ``fn(array) -> array`` (the other members as they were)."""
    import io
    import tarfile

    path = root / shard
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    first = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".npy"))
    buf = io.BytesIO()
    np.save(buf, fn(np.load(io.BytesIO(members[first][1]))))
    members[first] = (members[first][0], buf.getvalue())
    with tarfile.open(path, "w") as tar:
        for m, data in members:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def _index(root: Path, fn) -> None:
    import polars as pl

    path = root / "index.parquet"
    fn(pl.read_parquet(path)).write_parquet(path)


def webdataset_cases(base: Path, where: Path, rng: random.Random) -> list[Case]:
    import json

    case = Cases(base, where, lambda root, r: same_items(r, webdataset_expected(root), atol=0))
    shard = rng.choice(_shards(base))
    case("baseline", "correct")
    case("manifest.json missing", "refuse", "manifest.json", edit=lambda r: (r / "manifest.json").unlink())
    case("manifest.json of another format", "refuse", "manifest.json",
         edit=lambda r: (r / "manifest.json").write_text(json.dumps({**json.loads((r / "manifest.json").read_text()),
                                                                   "format": "other/0"})))
    case("manifest.json cut short", "refuse", "manifest.json",
         edit=lambda r: (r / "manifest.json").write_text((r / "manifest.json").read_text()[:40]))
    case("index.parquet missing", "refuse", "index.parquet", edit=lambda r: (r / "index.parquet").unlink())
    case("index.parquet cut short", "refuse", "index.parquet",
         edit=lambda r: (r / "index.parquet").write_bytes((r / "index.parquet").read_bytes()[:100]))
    case("an index row repeated", "refuse", "index.parquet", edit=lambda r: _index(r, lambda t: t.vstack(t[:1])))
    case("index rows reordered", "correct", edit=lambda r: _index(r, lambda t: t.sample(fraction=1.0, seed=5)))
    case("a shard missing", "refuse", shard, edit=lambda r: (r / shard).unlink())
    case("a shard cut short", "refuse", shard, edit=lambda r: (r / shard).write_bytes((r / shard).read_bytes()[:700]))
    case("a shard replaced by a folder", "refuse", shard, edit=lambda r: dir_in_place(r / shard))
    case("a shard without its items", "refuse", shard, edit=lambda r: _empty_tar(r / shard))
    case("an item of another shape", "refuse", shard,
         edit=lambda r: _rewrite_member(r, shard, lambda a: a[:1]))
    case("an item of another length", "refuse", shard,
         edit=lambda r: _rewrite_member(r, shard, lambda a: a[:, : a.shape[1] // 2]))
    case("an item as float64", "correct", edit=lambda r: _rewrite_member(r, shard, lambda a: a.astype(np.float64)))
    case("an item with a NaN", "either", shard,
         edit=lambda r: _rewrite_member(r, shard, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a)))
    return case.cases


def _empty_tar(path: Path) -> None:
    import tarfile

    path.unlink()
    with tarfile.open(path, "w"):
        pass


def test_webdataset_mutations(webdataset_base, tmp_path):
    cwd = outside(tmp_path)
    outcomes = run_cases("webdataset", webdataset_cases(webdataset_base, cwd, random.Random(29)), cwd)
    assert outcomes["an item of another shape"] == "refused" and outcomes["an index row repeated"] == "refused"
