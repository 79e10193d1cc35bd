"""Images through the one pipeline: the ``images`` source, 2-D augmentations, SimCLR / MoCo / SupCon /
PCLR (MICLe) pretraining with resnet2d18, exact resume, and clear errors for bad input."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from tscl.augment import build_augment
from tscl.datasets import open_dataset
from tscl.loaders import LoaderError
from tscl.simulate_images import ImageSetConfig, write_image_set
from tscl.train import PretrainConfig, load_encoder, pretrain


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    root = tmp_path_factory.mktemp("films")
    write_image_set(root, ImageSetConfig(n_patients=16, size=32, seed=3))
    return root


TINY = {"width": 0.0625, "small_input": True}
KWARGS = {"simclr": {"batch_size": 8}, "moco": {"batch_size": 8, "queue_size": 32},
          "supcon": {"batch_size": 8, "label": "cardiomegaly"}, "pclr": {"patients_per_batch": 4}}


def _config(tmp_path, name, method, **kw):
    kw = {"epochs": 2, **kw}
    return PretrainConfig(out_dir=str(tmp_path / name), method=method, encoder="resnet2d18", encoder_kwargs=TINY,
                          method_kwargs=KWARGS[method], lr=1e-2, device="cpu", progress=False, **kw)


def _curve(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "step" in r]


# ---- the source ----------------------------------------------------------------------------------

def test_image_source_index_split_and_payload(films):
    ds = open_dataset("images", films)
    assert ds.modality == "image" and ds.in_channels == 1
    assert ds.info["height"] == ds.info["width"] == 32
    assert set(ds.index["split"].unique()) <= {"train", "val", "test"}
    per_patient = ds.index.group_by("patient_id").agg(pl.col("split").n_unique())
    assert per_patient["split"].max() == 1  # every film of a patient on one side
    assert ds.label_columns == ["cardiomegaly", "effusion"]
    x = ds.fetch(np.array([3, 0, 1]))
    assert x.shape == (3, 1, 32, 32) and x.dtype == torch.float32
    np.testing.assert_array_equal(x[1, 0].numpy(), np.load(ds.index["path"][0]))
    train = open_dataset("images", films, split="train")
    assert 0 < len(train) < len(ds) and set(train.index["split"]) == {"train"}
    torch.testing.assert_close(train.fetch(np.array([0])), ds.fetch(np.flatnonzero(ds.index["split"] == "train")[:1]))
    assert train.array().shape == (len(train), 1, 32, 32)


def test_image_source_split_column_resize_and_png(tmp_path):
    csv = write_image_set(tmp_path, ImageSetConfig(n_patients=6, size=24, fmt="png", seed=1))
    table = pl.read_csv(csv)
    table = table.with_columns(pl.when(pl.col("patient_id") < "I0003").then(pl.lit("train"))
                               .otherwise(pl.lit("test")).alias("split"))
    table.write_csv(csv)
    ds = open_dataset("images", tmp_path, size="16x20")
    assert ds.fetch(np.arange(2)).shape == (2, 1, 16, 20)
    assert set(ds.split("test").index["patient_id"]) == {"I0003", "I0004", "I0005"}
    assert open_dataset("images", tmp_path, channels=3).fetch(np.arange(1)).shape == (1, 3, 24, 24)
    z = open_dataset("images", tmp_path, normalize="zscore").fetch(np.arange(2))
    assert abs(float(z.mean())) < 1e-4 and abs(float(z[0].std()) - 1) < 1e-3


def test_bad_image_input_errors_are_clear(tmp_path):
    write_image_set(tmp_path, ImageSetConfig(n_patients=3, size=16))
    np.save(tmp_path / "images" / "I0001_f0.npy", np.zeros((20, 16), np.float32))
    with pytest.raises(LoaderError, match=r"I0001_f0.npy.*20x16 but .*16x16.*size=HxW"):
        open_dataset("images", tmp_path)
    assert open_dataset("images", tmp_path, size=16).fetch(np.arange(3)).shape == (3, 1, 16, 16)
    table = pl.read_csv(tmp_path / "labels.csv")
    table.drop("patient_id").write_csv(tmp_path / "nopatient.csv")
    with pytest.raises(LoaderError, match=r"nopatient.csv.*missing column.*patient_id"):
        open_dataset("images", tmp_path, csv="nopatient.csv")
    table.with_columns(pl.lit("holdout").alias("split")).write_csv(tmp_path / "badsplit.csv")
    with pytest.raises(LoaderError, match=r"split value 'holdout' at data row 1"):
        open_dataset("images", tmp_path, csv="badsplit.csv", size=16)
    table.with_columns(pl.Series("split", ["train", "test"] * (table.height // 2) + ["train"] * (table.height % 2))) \
        .write_csv(tmp_path / "twosides.csv")
    with pytest.raises(LoaderError, match=r"films in several splits"):
        open_dataset("images", tmp_path, csv="twosides.csv", size=16)
    with pytest.raises(ValueError, match="size must be H or HxW"):
        open_dataset("images", tmp_path, size="big")
    (tmp_path / "images" / "I0002_f0.npy").write_bytes(b"not an array")
    with pytest.raises(LoaderError, match="I0002_f0.npy"):
        open_dataset("images", tmp_path, size=16).fetch(np.arange(len(table)))
    with pytest.raises(ValueError, match="trains on waveform data, not image"):
        from tscl.methods import build_method
        from tscl.encoders import build_encoder

        build_method("polywindow", build_encoder("resnet2d18", 1, **TINY)).set_modality("image")


# ---- augmentations -------------------------------------------------------------------------------

def test_image_augmentations_are_batched_seeded_and_shape_preserving():
    from tscl.augment import spec_modality
    from tscl.augment_image import IMAGE_AUGMENT, IMAGE_OPS

    x = torch.rand(6, 1, 20, 28, generator=torch.Generator().manual_seed(0))
    for name in IMAGE_OPS:
        y = build_augment(name, modality="image")(x)
        assert y.shape == x.shape and torch.isfinite(y).all(), name
    aug = build_augment(IMAGE_AUGMENT, modality="image", seed=5)
    v1, v2 = aug(x), aug(x)
    assert not torch.equal(v1, v2)  # the generator advances
    assert not torch.equal(v1[0], v1[1] - x[1] + x[0])  # each image its own draw
    again = build_augment(IMAGE_AUGMENT, modality="image", seed=5)
    assert torch.equal(again(x), v1) and torch.equal(again(x), v2)
    state = aug.generator("cpu").get_state()
    v3 = aug(x)
    aug.generator("cpu").set_state(state)
    assert torch.equal(aug(x), v3)  # a restored generator state gives the same views
    # identity settings leave the image alone
    for spec in ("rrc:scale=1.0:ratio=1.0", "rotate:degrees=0", "flip:p=0", "blur:p=0", "jitter:brightness=0:contrast=0"):
        torch.testing.assert_close(build_augment(spec, modality="image")(x), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(build_augment("flip:p=1", modality="image")(x), x.flip(-1))
    assert spec_modality("rrc,flip") == "image" and spec_modality(ECG := "noise,scale") == "waveform", ECG
    with pytest.raises(ValueError, match="unknown augmentation 'noise' for image data"):
        build_augment("noise", modality="image")
    with pytest.raises(ValueError, match=r"takes images \[B, C, H, W\]"):
        build_augment("flip", modality="image")(torch.rand(2, 3, 10))


@pytest.mark.parametrize("method", ["simclr", "moco", "supcon", "pclr"])
def test_methods_default_to_the_image_augmentation_on_images(method):
    from tscl.augment_image import IMAGE_AUGMENT
    from tscl.encoders import build_encoder
    from tscl.methods import build_method

    m = build_method(method, build_encoder("resnet2d18", 1, **TINY), **KWARGS[method])
    m.set_modality("image")
    assert m.augment.modality == "image" and repr(m.augment) == repr(build_augment(IMAGE_AUGMENT, modality="image"))
    own = build_method(method, build_encoder("resnet2d18", 1, **TINY), **KWARGS[method], augment="rrc:scale=0.8,flip")
    own.set_modality("image")
    assert own.augment.modality == "image" and repr(own.augment) == "Augment(rrc:scale=0.8,flip)"


# ---- pretraining ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["simclr", "moco", "supcon", "pclr"])
def test_image_methods_pretrain_with_resnet2d18(films, tmp_path, method):
    train = open_dataset("images", films, split="train")
    run = pretrain(train, _config(tmp_path, method, method))
    curve = _curve(run)
    assert len(curve) >= 2 and all(np.isfinite(v) for _, v in curve)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data_info"]["modality"] == "image" and cfg["dataset"]["dataset"] == "images"
    enc = load_encoder(run)
    with torch.no_grad():
        assert enc(train.fetch(np.arange(3))).shape == (3, enc.embed_dim)


def test_micle_positives_are_two_films_of_one_patient(films):
    from tscl.encoders import build_encoder
    from tscl.methods import build_method

    train = open_dataset("images", films, split="train")
    m = build_method("pclr", build_encoder("resnet2d18", 1, **TINY), patients_per_batch=4)
    m.set_modality("image")
    sampler = m.make_sampler(train.index, seed=0)
    pids = train.index["patient_id"].to_numpy()
    for rows in sampler:
        _, counts = np.unique(pids[rows], return_counts=True)
        assert (counts == 2).all() and len(set(rows)) == len(rows)


def test_killed_image_run_resumes_step_for_step(films, tmp_path, kill_and_resume):
    train = open_dataset("images", films, split="train")
    # moco: augmentation draws, a momentum encoder and a queue: every kind of state
    kill_and_resume(train, lambda name, **kw: _config(tmp_path, name, "moco", epochs=3, **kw), kill_at=4, ckpt_every=3)



def test_cli_pretrains_on_images(films, tmp_path):
    from tscl.cli import main

    out = tmp_path / "cli"
    assert main(["pretrain", "--dataset", "images", "--root", str(films), "--out", str(out), "--method", "pclr",
                 "--encoder", "resnet2d18", "--encoder-kwargs", "width=0.0625,small_input=true",
                 "--method-kwargs", "patients_per_batch=4,proj_dim=16", "--epochs", "1", "--quiet"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"]["dataset"] == "images" and cfg["dataset"]["split"] == "train"
    assert cfg["data_info"]["modality"] == "image" and load_encoder(out).in_channels == 1


def test_cli_takes_an_image_augment_spec_and_refuses_a_waveform_one(films, tmp_path, capsys):
    from tscl.cli import main

    out = tmp_path / "cli"
    assert main(["pretrain", "--dataset", "images", "--root", str(films), "--out", str(out), "--method", "simclr",
                 "--encoder", "resnet2d18", "--encoder-kwargs", "width=0.0625,small_input=true",
                 "--method-kwargs", "batch_size=8,proj_dim=16", "--augment", "rrc:scale=0.6,flip,blur:p=0.3",
                 "--epochs", "1", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["method_kwargs"]["augment"] == "rrc:scale=0.6,flip,blur:p=0.3"
    code = main(["pretrain", "--dataset", "images", "--root", str(films), "--out", str(tmp_path / "bad"), "--method",
                 "simclr", "--encoder", "resnet2d18", "--augment", "noise:snr=20,wander", "--quiet"])
    assert code == 2 and "holds waveform ops; this dataset is image data" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_pclr_on_images_keeps_an_explicit_no_augmentation(films):
    from tscl.datasets import open_dataset
    from tscl.encoders import build_encoder
    from tscl.methods import build_method

    enc = build_encoder("resnet2d18", 1, width=0.0625, small_input=True)
    chosen = build_method("pclr", enc, augment="none")
    chosen.set_modality("image")
    assert not chosen.augment  # "none" stays none
    default = build_method("pclr", enc)
    default.set_modality("image")
    assert default.augment and default.augment.modality == "image"  # MICLe's default image ops
    assert open_dataset("images", films).modality == "image"
