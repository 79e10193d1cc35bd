"""``--method clip``: ECG <-> labs of one visit through the trainer, held-out retrieval with CIs,
both towers rebuilt from the run folder, exact resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tscl.datasets import open_dataset
from tscl.methods import build_method
from tscl.train import PretrainConfig, pretrain


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from tscl.simulate import CohortConfig, write_cohort

    root = tmp_path_factory.mktemp("clip") / "cohort"
    write_cohort(root, CohortConfig(n_patients=60, duration_s=5.0, seed=2), progress=False)
    return root


KW = {"batch_size": 32, "proj_dim": 32, "log": "lab_bnp", "b_encoder_kwargs": {"embed_dim": 32, "hidden_dim": 64}}


def _config(tmp_path, name, **kw):
    kw = {"epochs": 15, **kw}
    return PretrainConfig(out_dir=str(tmp_path / name), method="clip", encoder="cnn1d",
                          encoder_kwargs={"widths": [16, 32]}, method_kwargs=KW, lr=3e-3, device="cpu",
                          progress=False, **kw)


def _curve(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "step" in r]


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    return pretrain(open_dataset("wfdb", cohort, split="train", progress=False),
                    _config(tmp_path_factory.mktemp("clip_runs"), "run"))


def test_ecg_lab_clip_retrieves_held_out_visits_above_chance(cohort, trained):
    from tscl.probes.retrieval import retrieval_report

    held = open_dataset("wfdb", cohort, split="val+test", progress=False)
    report = retrieval_report(trained, held, ks=(1, 10), n_boot=500)
    assert report.n == len(held) >= 40 and report.n_patients >= 10 and report.towers == ("waveform", "tabular")
    chance = report.chance[10]
    for side in ("a_to_b", "b_to_a"):
        r = report.recall[side][10]
        assert r["ci_low"] <= r["recall"] <= r["ci_high"]
        assert r["ci_low"] > chance, (side, r, chance)  # the whole 95 % CI above chance
    table = report.to_markdown()
    assert "| waveform→tabular recall@k [95 % CI] | tabular→waveform recall@k [95 % CI] |" in table
    assert "A→B" not in table and json.loads(report.to_json())["towers"] == {"a": "waveform", "b": "tabular"}
    losses = [v for _, v in _curve(trained)]
    assert np.mean(losses[-6:]) < 0.7 * np.mean(losses[:6])
    assert report.temperature != pytest.approx(0.07, abs=1e-4)  # learned
    with pytest.raises(ValueError, match="pretrained on .* test patients"):
        retrieval_report(trained, open_dataset("wfdb", cohort, progress=False))


def test_both_towers_rebuild_from_the_run_folder(cohort, trained):
    from tscl.runs import load_clip, load_tower

    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["method"] == "clip" and cfg["method_kwargs"]["log"] == "lab_bnp"
    clip = load_clip(trained)
    assert clip.b_channels == 4 and clip.tower_b.n_features == 4
    held = open_dataset("wfdb", cohort, split="test", progress=False)
    a, b = load_tower(trained, "waveform"), load_tower(trained, "tabular")
    xa, xb = a.inputs(held), b.inputs(held)
    assert xa.shape[:2] == (len(held), 12) and xb.shape == (len(held), 4)
    with torch.no_grad():
        fa, fb = a(xa), b(xb)
        assert fa.shape == (len(held), a.embed_dim) and fb.shape == (len(held), 32)
        za, zb = load_tower(trained, "a", projected=True)(xa), load_tower(trained, "b", projected=True)(xb)
        torch.testing.assert_close(za, clip.embed_a(xa))
        torch.testing.assert_close(zb.norm(dim=1), torch.ones(len(held)))
    # tower A is the run's encoder (encoder.safetensors), as load_encoder rebuilds it
    from tscl.runs import load_encoder

    with torch.no_grad():
        torch.testing.assert_close(load_encoder(trained)(xa), fa)
    # the training rows' standardisation is saved: the train split's tabular input has mean 0
    train = open_dataset("wfdb", cohort, split="train", progress=False)
    torch.testing.assert_close(clip.tabular_inputs(train.index).mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown tower 'text'"):
        load_tower(trained, "text")


def test_clip_input_errors_are_clear(cohort, tmp_path):
    from tscl.encoders import build_encoder
    from tscl.runs import load_clip

    train = open_dataset("wfdb", cohort, split="train", progress=False)
    enc = build_encoder("cnn1d", 12, widths=[8])
    with pytest.raises(ValueError, match="'vitals_\\*' matches no column"):
        build_method("clip", enc, columns="vitals_*").make_sampler(train.index)
    with pytest.raises(ValueError, match="'source' is not numeric"):
        build_method("clip", enc, columns="lab_*,source").make_sampler(train.index)
    with pytest.raises(ValueError, match="log column.*lab_sbp.*not among"):
        build_method("clip", enc, columns="lab_bnp", log="lab_sbp").make_sampler(train.index)
    with pytest.raises(ValueError, match="takes 3 features but columns"):
        build_method("clip", enc, b_channels=3).make_sampler(train.index)
    with pytest.raises(KeyError, match=r"batch\['tabular'\]"):
        build_method("clip", enc, b_channels=4)(torch.zeros(2, 12, 50), {"record_ids": torch.arange(2)})
    with pytest.raises(ValueError, match="positives must be"):
        build_method("clip", enc, positives="visit")
    run = pretrain(train, PretrainConfig(out_dir=str(tmp_path / "pclr"), method="pclr", encoder="cnn1d",
                                         encoder_kwargs={"widths": [8]}, method_kwargs={"patients_per_batch": 8},
                                         epochs=1, max_steps=1, device="cpu", progress=False))
    with pytest.raises(ValueError, match="not clip: it has no second tower"):
        load_clip(run)


def test_clip_pairs_images_with_their_tabular_columns(tmp_path):
    from tscl.simulate_images import ImageSetConfig, write_image_set

    write_image_set(tmp_path / "films", ImageSetConfig(n_patients=8, size=16))
    train = open_dataset("images", tmp_path / "films", split="train")
    run = pretrain(train, PretrainConfig(out_dir=str(tmp_path / "run"), method="clip", encoder="resnet2d18",
                                         encoder_kwargs={"width": 0.0625, "small_input": True},
                                         method_kwargs={"batch_size": 8, "proj_dim": 8, "columns": "cardiomegaly,effusion",
                                                        "augment": "flip,jitter"},
                                         epochs=1, device="cpu", progress=False))
    assert all(np.isfinite(v) for _, v in _curve(run))


def test_killed_clip_run_resumes_step_for_step(cohort, tmp_path, kill_and_resume):
    train = open_dataset("wfdb", cohort, split="train", progress=False)
    kill_and_resume(train, lambda name, **kw: _config(tmp_path, name, epochs=2, **kw), kill_at=7, ckpt_every=4)