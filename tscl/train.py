"""Pretraining loop: one config per run, saved beside the weights.

``pretrain(cache, config)`` trains ``config.method`` with ``config.encoder`` on a
:class:`~tscl.loaders.WaveformCache` and writes to ``config.out_dir``:

- ``config.json``   the full :class:`PretrainConfig` (re-run the folder from it);
- ``metrics.jsonl`` one JSON line per step (loss, lr, samples/s) and per epoch;
- ``encoder.safetensors`` / ``method.safetensors``  weights (no pickle on load);
- ``loss.png``      the loss curve.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tscl.encoders import build_encoder
from tscl.methods import build_method
from tscl.samplers import encode_ids

__all__ = ["PretrainConfig", "pretrain", "load_encoder", "seed_everything", "cosine_with_warmup"]


@dataclass
class PretrainConfig:
    out_dir: str = "runs/pretrain"
    method: str = "pclr"
    encoder: str = "resnet1d"
    encoder_kwargs: dict = field(default_factory=lambda: {"width": 0.25})
    method_kwargs: dict = field(default_factory=dict)
    epochs: int = 20
    lr: float = 3e-3
    weight_decay: float = 1e-2
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    progress: bool = True
    in_channels: int = 12
    channels: list = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cosine_with_warmup(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pretrain(cache, config: PretrainConfig) -> Path:
    """Pretrain on every recording of ``cache``; returns the run folder."""
    seed_everything(config.seed)
    device = _device(config.device)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = cache.index
    config.in_channels = int(index["n_channels"][0])
    config.channels = index["channels"][0].split(",")
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2))

    encoder = build_encoder(config.encoder, config.in_channels, **config.encoder_kwargs)
    method = build_method(config.method, encoder, **config.method_kwargs).to(device)
    sampler = method.make_sampler(index, seed=config.seed)
    signals = cache.stack()
    patient_ids = torch.from_numpy(encode_ids(index["patient_id"].to_list()))
    record_ids = torch.arange(len(index))
    extras = method.batch_extras(index) if hasattr(method, "batch_extras") else {}  # e.g. SupCon labels [N]

    steps_per_epoch = len(sampler)
    total = config.epochs * steps_per_epoch
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(total, int(config.warmup_frac * total)))
    use_amp = config.amp and device.type == "cuda"
    log = open(out / "metrics.jsonl", "w")
    steps, losses = [], []
    step = 0
    bar = tqdm(total=total, desc=f"pretrain {config.method}/{config.encoder}", disable=not config.progress)
    method.train()
    try:
        for epoch in range(config.epochs):
            sampler.set_epoch(epoch)
            epoch_loss = []
            for rows in sampler:
                t0 = time.perf_counter()
                rows_np = np.sort(np.asarray(rows))  # sorted reads are sequential in the memmap
                perm = np.argsort(np.argsort(rows))
                x = torch.from_numpy(np.ascontiguousarray(signals[rows_np]))[torch.from_numpy(perm)].to(device, non_blocking=True)
                batch = {"patient_ids": patient_ids[rows].to(device), "record_ids": record_ids[rows].to(device)}
                batch.update({name: v[rows].to(device) for name, v in extras.items()})
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = method(x, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}; lower the lr or check the data")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                opt.step()
                sched.step()
                if hasattr(method, "after_step"):
                    method.after_step()
                dt = time.perf_counter() - t0
                value = loss.item()
                steps.append(step)
                losses.append(value)
                epoch_loss.append(value)
                log.write(json.dumps({"step": step, "epoch": epoch, "loss": value, "lr": sched.get_last_lr()[0],
                                      "samples_per_s": len(rows) / dt}) + "\n")
                bar.set_postfix(loss=f"{value:.3f}", sps=f"{len(rows) / dt:.0f}")
                bar.update()
                step += 1
            log.write(json.dumps({"epoch": epoch, "mean_loss": float(np.mean(epoch_loss))}) + "\n")
            log.flush()
    finally:
        bar.close()
        log.close()
    save_file({k: v.contiguous() for k, v in method.encoder.state_dict().items()}, out / "encoder.safetensors")
    save_file({k: v.contiguous() for k, v in method.state_dict().items()}, out / "method.safetensors")
    if losses:
        from tscl.plots import plot_loss_curve

        plot_loss_curve(steps, losses, out / "loss.png", title=f"{config.method} / {config.encoder}")
    return out


def load_encoder(run_dir: str | Path, device: str = "cpu", random_init: bool = False, seed: int = 0):
    """Rebuild the encoder of a run folder from its config (and its weights unless ``random_init``)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: not a tscl run folder (config.json missing)")
    cfg = json.loads(cfg_path.read_text())
    torch.manual_seed(seed)
    encoder = build_encoder(cfg["encoder"], cfg["in_channels"], **cfg["encoder_kwargs"])
    if not random_init:
        encoder.load_state_dict(load_file(run_dir / "encoder.safetensors", device=device))
    return encoder.to(device).eval()
