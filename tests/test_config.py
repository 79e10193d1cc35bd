"""One typed config with per-encoder defaults held by the encoder, and one set of defaults for the CLI and Python."""
import json
from dataclasses import asdict

import pytest

from tscl import catalog
from tscl.config import DemoConfig, PretrainConfig, defaults, load_config
from tscl.encoders import encoder_defaults, list_encoders
from tscl.train import resolve_encoder


@pytest.mark.parametrize("name", list_encoders())
def test_a_config_naming_any_encoder_gets_that_encoders_defaults(name):
    cfg = PretrainConfig(encoder=name)  # resnet1d's width once leaked into every encoder: cnn1d raised TypeError
    assert cfg.encoder_kwargs == encoder_defaults(name)
    assert PretrainConfig(encoder=name, encoder_kwargs={}).encoder_kwargs == {}  # given kwargs are kept as given


@pytest.mark.parametrize("modality", ["waveform", "ehr", "image"])
def test_no_encoder_means_the_modalitys_default(modality):
    cfg = resolve_encoder(PretrainConfig(), modality)
    assert cfg.encoder == catalog.DEFAULT_ENCODER[modality] and cfg.encoder_kwargs == encoder_defaults(cfg.encoder)
    assert resolve_encoder(PretrainConfig(encoder="cnn1d"), modality).encoder == "cnn1d"


def test_pretraining_images_without_naming_an_encoder_uses_the_image_encoder(tmp_path):
    from tscl.datasets import open_dataset
    from tscl.simulate_images import ImageSetConfig, write_image_set
    from tscl.train import pretrain

    write_image_set(tmp_path / "films", ImageSetConfig(n_patients=6, size=16))
    run = pretrain(open_dataset("images", tmp_path / "films", split="all", progress=False),
                   PretrainConfig(out_dir=str(tmp_path / "run"), method="simclr", method_kwargs={"batch_size": 4},
                                  epochs=1, max_steps=1, device="cpu", progress=False))
    saved = load_config(run)
    assert saved.encoder == "resnet2d18" and saved.encoder_kwargs == {}  # recorded as resolved, for a fresh process
    assert json.loads((run / "config.json").read_text())["encoder"] == "resnet2d18"


def test_cli_and_python_share_their_defaults():
    from tscl.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices
    pre = defaults(PretrainConfig)
    for command in ("pretrain", "demo"):
        got = vars(sub[command].parse_args(["--out", "x"] if command == "pretrain" else []))
        assert got["epochs"] == pre["epochs"] == DemoConfig.epochs == 40 and got["lr"] == pre["lr"]
        assert got["seed"] == pre["seed"] and got["device"] == pre["device"]
    demo = vars(sub["demo"].parse_args([]))
    assert demo["patients"] == DemoConfig.patients and demo["batch_patients"] == DemoConfig.batch_patients
    assert demo["bootstrap"] == DemoConfig.n_boot and demo["out"] == DemoConfig.out
    assert vars(sub["pretrain"].parse_args(["--out", "x"]))["method"] == pre["method"]


def test_defaults_are_fresh_copies():
    a, b = defaults(PretrainConfig), defaults(PretrainConfig)
    a["method_kwargs"]["x"] = 1
    assert b["method_kwargs"] == {} and asdict(PretrainConfig())["method_kwargs"] == {}


def test_the_cli_shows_the_evaluation_engines_defaults():
    """tscl probe shows EvalDefaults without importing the engine; EvalSpec, the engine's own, must agree."""
    from dataclasses import fields

    from tscl.config import EvalDefaults
    from tscl.probes import EvalSpec

    spec = {f.name: f.default for f in fields(EvalSpec)}
    for f in fields(EvalDefaults):
        assert spec[f.name] == f.default, f.name
