"""What every method must do (each entry of ``METHODS``, picked up by itself): the loss decreases
on a fixed batch, one trainer epoch runs and saves its state, the CLI passes method and augmentation
through (the augmentation ops themselves: tests/test_augment.py)."""
import json
import math
import warnings

import pytest
import torch
from safetensors.torch import load_file

from tscl.methods import METHODS, build_method

from .conftest import enc, make_batch

SMALL = {"proj_dim": 16}
NO_AUG = {"simclr": "scale", "moco": "scale", "supcon": "scale", "comet": "scale", "pmq": "none"}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_decreases_on_a_fixed_batch(name):
    torch.manual_seed(0)
    x, batch = make_batch()
    kw = dict(SMALL)
    if name in NO_AUG:
        kw["augment"] = NO_AUG[name]
    if name in ("moco", "pmq"):
        kw.update(momentum=0.99, queue_size=64)
    if name in ("clocs-cmlc", "clocs-cmsmlc"):
        kw["leads"] = [1, 7, 9]
    if name == "clip":
        kw["b_channels"] = 3
    m = build_method(name, enc(), **kw)

    def evaluate():
        torch.manual_seed(123)
        if hasattr(m, "augment") and m.augment:
            m.augment._gens.clear()
        for attr in ("_gen",):
            if getattr(m, attr, None) is not None:
                setattr(m, attr, torch.Generator().manual_seed(7))
        filled = m.queue_filled.clone() if hasattr(m, "queue_filled") else None
        if filled is not None:
            m.queue_filled.zero_()
        with torch.no_grad():
            value = float(m(x, batch))
        if filled is not None:
            m.queue_filled.copy_(filled)
        return value

    before = evaluate()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(12):
        loss = m(x, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(m, "after_step"):
            m.after_step()  # EMA of the key branch
            if hasattr(m, "queue_filled"):  # one fixed batch: queued copies of its own keys are not negatives to learn from
                m.queue_filled.zero_()
    after = evaluate()
    assert math.isfinite(before) and after < before - 0.05 * abs(before), (name, before, after)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_pretrain_epoch_per_method(cohort, tmp_path, name):
    from tscl.train import PretrainConfig, load_encoder, pretrain

    _, cache = cohort
    kw = {"proj_dim": 16, **({"patients_per_batch": 6} if name == "pclr" else {"batch_size": 16})}
    if name == "supcon":
        kw["label"] = "lvh,bbb"
    cfg = PretrainConfig(out_dir=str(tmp_path / name), method=name, encoder="cnn1d", encoder_kwargs={"widths": [8, 16]},
                         method_kwargs=kw, epochs=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = pretrain(cache, cfg)
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in s for s in lines) and all(math.isfinite(s.get("loss", s.get("mean_loss"))) for s in lines)
    state = load_file(run / "method.safetensors")
    if name in ("moco", "pmq"):
        assert int(state["queue_filled"]) > 0 and "queue" in state
    if name == "pmq":
        assert (state["queue_ids"][: int(state["queue_filled"])] >= 0).all()
    assert load_encoder(run).embed_dim == 16


def test_cli_pretrain_with_method_and_augment(cohort, tmp_path):
    from tscl.cli import main

    root, _ = cohort
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(root / "cohort"), "--out", str(out), "--method", "simclr", "--epochs", "1",
                 "--encoder", "cnn1d", "--encoder-kwargs", "widths=[8,16]", "--method-kwargs", "batch_size=16,proj_dim=16",
                 "--augment", "noise:snr=20,scale,crop:len=300", "--quiet"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method_kwargs"]["augment"] == "noise:snr=20,scale,crop:len=300"
