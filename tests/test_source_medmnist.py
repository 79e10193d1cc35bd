"""The medmnist source on MedMNIST-layout .npz files written here (every label and image layout the project uses).

The real file is read only when ``TSCL_MEDMNIST_ROOT`` names a MedMNIST .npz or a folder holding one
(CI has none: that test skips, saying so).
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_cli_installed import REPO, TSCL, tscl  # the installed console script, run outside the repository
from tscl.cli import main
from tscl.datasets import open_dataset
from tscl.loaders import LoaderError
from tscl.loaders.medmnist import read_medmnist

REAL = os.environ.get("TSCL_MEDMNIST_ROOT")
SPLITS = ("train", "val", "test")


def write_npz(path: Path, sizes=(30, 10, 10), hw=(12, 12), rgb=False, labels="flat", n_classes=2, seed=0,
              drop=None, **override) -> dict:
    """A MedMNIST-layout file: uint8 images, labels [N] ('flat'), [N, 1] ('column') or [N, K] 0/1 ('multi')."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(SPLITS, sizes):
        y = rng.integers(0, 2, size=(n, n_classes)) if labels == "multi" else rng.integers(0, n_classes, size=n)
        if labels != "multi":  # every class present in every split
            y[: min(n, n_classes)] = np.arange(min(n, n_classes))
        images = rng.integers(0, 256, size=(n, *hw, 3) if rgb else (n, *hw)).astype(np.uint8)
        first = y[:, 0] if y.ndim == 2 else y
        images[:, :4, :4] = (np.minimum(first, 1) * 200).astype(np.uint8).reshape(n, *[1] * (images.ndim - 1))
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = y[:, None] if labels == "column" else y
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if k != drop}
    np.savez(path, **arrays)
    return arrays


@settings(max_examples=25, deadline=None)
@given(st.tuples(st.integers(0, 6), st.integers(0, 4), st.integers(1, 5)), st.integers(3, 9), st.booleans(),
       st.sampled_from(["flat", "column", "multi"]), st.integers(2, 5))
def test_every_layout_gives_its_index_labels_and_payload(tmp_path_factory, sizes, side, rgb, labels, n_classes):
    path = tmp_path_factory.mktemp("npz") / "anymnist.npz"
    arrays = write_npz(path, sizes=sizes, hw=(side, side + 1), rgb=rgb, labels=labels, n_classes=n_classes)
    ds = open_dataset("medmnist", path, progress=False)
    idx = ds.index
    assert idx["split"].to_list() == [s for s, n in zip(SPLITS, sizes) for _ in range(n)]
    assert (idx["patient_id"] == idx["record_id"]).all() and idx["record_id"].n_unique() == sum(sizes)
    y = np.concatenate([arrays[f"{s}_labels"] if labels != "flat" else arrays[f"{s}_labels"][:, None]
                        for s in SPLITS])
    if labels == "multi":
        assert ds.label_columns == [f"label_{k}" for k in range(n_classes)]
        np.testing.assert_array_equal(idx.select(ds.label_columns).to_numpy(), y)
    else:
        np.testing.assert_array_equal(idx["label"].to_numpy(), y[:, 0])
        k = int(y.max()) + 1
        expected = ["label"] + ([f"label_{c}" for c in range(k)] if k > 2 else [])
        assert ds.label_columns == expected
        if k > 2:
            np.testing.assert_array_equal(idx.select(expected[1:]).to_numpy().argmax(axis=1), y[:, 0])
    x = ds.fetch(np.arange(len(ds)))
    assert x.shape == (sum(sizes), 3 if rgb else 1, side, side + 1) and str(x.dtype) == "torch.float32"
    pixels = np.concatenate([arrays[f"{s}_images"] for s in SPLITS])
    expected_x = np.moveaxis(pixels, -1, 1) if rgb else pixels[:, None]
    np.testing.assert_allclose(x.numpy(), expected_x / 255.0, rtol=1e-6)
    assert ds.info == {"modality": "image", "in_channels": 3 if rgb else 1, "height": side, "width": side + 1,
                       "normalize": "none", "size": None}


def test_subsets_options_and_a_folder_root(tmp_path):
    arrays = write_npz(tmp_path / "breastmnist.npz", rgb=True)
    ds = open_dataset("medmnist", tmp_path, progress=False, channels=1, size="8x6", normalize="zscore")
    assert ds.info["in_channels"] == 1 and (ds.info["height"], ds.info["width"]) == (8, 6)
    test = ds.split("test")
    assert len(test) == 10 and set(test.index["split"]) == {"test"}
    picked = test.subset([3, 0])
    assert picked.index["record_id"].to_list() == ["test-00003", "test-00000"]
    x = picked.fetch([0, 1])
    assert x.shape == (2, 1, 8, 6)
    np.testing.assert_allclose(x.mean(dim=(1, 2, 3)).numpy(), 0, atol=1e-5)
    raw = open_dataset("medmnist", tmp_path / "breastmnist.npz", progress=False, channels=3).split("test").subset([3])
    np.testing.assert_allclose(raw.fetch([0])[0].numpy(), np.moveaxis(arrays["test_images"][3], -1, 0) / 255, atol=1e-6)
    write_npz(tmp_path / "pneumoniamnist.npz")
    with pytest.raises(LoaderError, match="2 .npz files"):
        open_dataset("medmnist", tmp_path, progress=False)
    assert len(open_dataset("medmnist", tmp_path, file="pneumoniamnist.npz", progress=False)) == 50


BAD = {
    "missing-split": (dict(drop="val_labels"), "no 'val_labels' array"),
    "image-shape": (dict(train_images=np.zeros((30, 12), np.uint8)), "train_images has shape (30, 12); MedMNIST images"),
    "channels-5": (dict(test_images=np.zeros((10, 12, 12, 5), np.uint8)), "test_images has shape (10, 12, 12, 5)"),
    "split-sizes": (dict(val_images=np.zeros((10, 14, 14), np.uint8)), "val_images are (1, 14, 14) (C, H, W) but "
                                                                       "train_images are (1, 12, 12)"),
    "label-count": (dict(train_labels=np.zeros(29, np.int64)), "train_labels has shape (29, 1); train_images holds 30"),
    "negative": (dict(val_labels=-np.ones(10, np.int64)), "val_labels holds a negative class -1"),
    "fractional": (dict(val_labels=np.full(10, 0.5)), "val_labels must hold whole class numbers"),
    "multi-not-binary": (dict(test_labels=np.full((10, 3), 2)), "test_labels is multi-label [10, 3], so its values"),
}


@pytest.mark.parametrize("case", list(BAD) + ["not-a-zip", "no-npz", "bad-channels"])
def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys, case):
    path, options = tmp_path / "bloodmnist.npz", []
    if case in BAD:
        write_npz(path, **BAD[case][0])
        message = f"{path}: {BAD[case][1]}"
    elif case == "not-a-zip":
        path.write_bytes(b"PK\x03\x04 but cut")
        message = f"{path}: cannot read the .npz"
    elif case == "no-npz":
        path = tmp_path
        message = f"{tmp_path}: no .npz file; give the .npz as the root, or file=NAME.npz"
    else:
        write_npz(path)
        options, message = ["--dataset-kwargs", "channels=2"], "channels must be 1 or 3, got 2"
    code = main(["pretrain", "--dataset", "medmnist", "--root", str(path), *options, "--encoder", "resnet2d18",
                 "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


@pytest.mark.skipif(TSCL is None, reason="the tscl console script is not installed (pip install -e .)")
def test_pretrain_embed_probe_through_the_installed_cli(tmp_path):
    assert REPO not in tmp_path.parents
    write_npz(tmp_path / "breastmnist.npz", sizes=(48, 8, 24), hw=(16, 16))
    data = ["--dataset", "medmnist", "--root", "breastmnist.npz"]
    tscl("pretrain", *data, "--method", "simclr", "--method-kwargs", "batch_size=16", "--encoder", "resnet2d18",
          "--encoder-kwargs", "width=0.0625,small_input=true", "--epochs", "1", "--quiet", "--out", "run", cwd=tmp_path)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data_info"]["modality"] == "image" and cfg["data_info"]["height"] == 16
    assert len(json.loads((tmp_path / "run" / "patients.json").read_text())["patients"]) == 48  # the train split
    tscl("embed", "--run", "run", "--out", "run.npz", "--quiet", cwd=tmp_path)
    tscl("embed", "--run", "run", "--random-init", "--out", "random.npz", "--quiet", cwd=tmp_path)
    tscl("probe", *data, "--embeddings", "run.npz", "random.npz", "--labels", "label", "--fractions", "1",
          "--bootstrap", "20", "--reference", "random", "--out", "probe", "--quiet", cwd=tmp_path)
    report = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert {r["encoder"] for r in report["rows"]} == {"run", "random", "random-init"}  # random init by default
    assert report["split"]["test_records"] == 24 and report["split"]["train_records"] == 56  # train + val


@pytest.mark.skipif(not REAL, reason="set TSCL_MEDMNIST_ROOT to a MedMNIST .npz (or its folder) to read a real file "
                                     "(local verification; CI has no copy)")
def test_real_medmnist_file():
    from tscl.loaders.medmnist import find_medmnist_file

    parts = read_medmnist(find_medmnist_file(REAL))
    ds = open_dataset("medmnist", REAL, progress=False)
    counts = dict(ds.index.group_by("split").len().iter_rows())
    assert counts == {s: len(parts[s][0]) for s in SPLITS}
    for s in SPLITS:
        labels = ds.split(s).index.select([c for c in ds.label_columns if c.startswith("label_")] or ["label"])
        assert labels.height == len(parts[s][1])
    x = ds.fetch(np.arange(min(8, len(ds))))
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and x.shape[1:] == parts["train"][0].shape[1:]
