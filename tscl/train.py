"""Pretraining loop: one config per run, saved beside the weights; one process or torchrun's W.

``pretrain(dataset, config)`` trains ``config.method`` with ``config.encoder`` on a
:class:`~tscl.datasets.Dataset` of any modality (or a ``WaveformCache``) and writes to
``config.out_dir``:

- ``config.json``   the full :class:`PretrainConfig`, the data source included (``tscl pretrain
  --config`` re-makes the run from it);
- ``patients.json`` the patients pretraining saw, so probes refuse a test side that shares one;
- ``environment.json`` one entry per start (fresh or resumed): versions, device, CPU vector
  ISA and threads. The same seed gives bit-identical runs only on the same kind of machine:
  PyTorch's CPU kernels differ between AVX2 and AVX-512, and the rounding differences grow
  over training;
- ``metrics.jsonl`` one JSON line per step (loss, lr, samples/s, data_wait_frac) and per epoch;
- ``checkpoint.safetensors``  everything needed to continue (``resume=True``, see
  :mod:`tscl.checkpoint`): written every ``ckpt_every`` steps and at the end;
- ``encoder.safetensors`` / ``method.safetensors``  weights (no pickle on load);
- ``loss.png``      the loss curve; ``tb/`` TensorBoard events when tensorboard is installed.

Step (:func:`pretrain`'s ``train_step``): a batch fetched by a background thread
(:mod:`tscl.prefetch`; pinned memory on CUDA, copied with ``non_blocking``), bf16 autocast on
CUDA (fp32 on CPU), backward, gradient clipping, AdamW, linear warm-up + cosine LR, the
method's ``after_step`` (EMA encoders, queues). ``data_wait_frac`` is the share of the step
spent waiting for that thread. A non-finite loss stops the run at its step, naming the cause.

Data parallel: under ``torchrun`` every rank joins the process group (:mod:`tscl.distributed`),
the method is wrapped in DistributedDataParallel (BatchNorm → SyncBatchNorm on CUDA), each
rank gets its own rows of every global batch (disjoint patients for the patient sampler,
:class:`~tscl.samplers.RankBatches` for other samplers), and augmentation generators are
seeded per rank. Methods gather embeddings across ranks, so the loss is the global-batch loss.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tscl import distributed
from tscl.checkpoint import (CHECKPOINT, check_identity, environment, load_checkpoint, nonfinite_state,
                             record_environment, rng_state, run_identity, save_checkpoint, set_rng_state)
from tscl.datasets import payload_len, to_device
from tscl.encoders import build_encoder
from tscl.encoders.resnet1d import CPU_WIDTH
from tscl.methods import build_method
from tscl.prefetch import Prefetcher
from tscl.samplers import RankBatches, encode_ids

# environment, save_checkpoint, load_checkpoint and CHECKPOINT live in tscl.checkpoint; re-exported here
__all__ = ["PretrainConfig", "pretrain", "load_encoder", "load_config", "seed_everything", "cosine_with_warmup",
           "save_checkpoint", "load_checkpoint", "CHECKPOINT", "environment"]


@dataclass
class PretrainConfig:
    out_dir: str = "runs/pretrain"
    method: str = "pclr"
    encoder: str = "resnet1d"
    encoder_kwargs: dict = field(default_factory=lambda: {"width": CPU_WIDTH})
    method_kwargs: dict = field(default_factory=dict)
    epochs: int = 20
    lr: float = 3e-3
    weight_decay: float = 1e-2
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA; CPU runs in fp32
    compile: bool = False  # torch.compile the encoder
    ckpt_every: int = 500  # steps between checkpoints (0: only at the end)
    resume: bool = False  # continue from out_dir/checkpoint.safetensors when it exists
    max_steps: int = 0  # stop after this many steps (0: all epochs); the LR schedule still spans all epochs
    prefetch: int = 2  # batches the loader thread prepares ahead
    progress: bool = True
    in_channels: int = 12
    channels: list = field(default_factory=list)
    dataset: dict = field(default_factory=dict)  # source: dataset, root, split, options (tscl pretrain --config)
    data_info: dict = field(default_factory=dict)  # modality, in_channels, channels, fs, normalize


def load_config(run_dir: str | Path) -> PretrainConfig:
    """The :class:`PretrainConfig` saved in a run folder (the one reader of ``config.json``)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a tscl run folder (config.json missing)")
    saved = json.loads(path.read_text())
    return PretrainConfig(**{f.name: saved[f.name] for f in fields(PretrainConfig) if f.name in saved})


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


def _restart_metrics(path: Path, start: int, steps_per_epoch: int) -> list[dict]:
    """Rewrite ``path`` keeping the lines of the steps before ``start`` and of the epochs finished
    by then (a killed run may have logged past its last checkpoint); returns the kept lines."""
    lines = []
    if start and path.exists():
        for line in path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill mid-write: dropped, the rest kept
                continue
    kept = [r for r in lines if (r["step"] < start if "step" in r else (r["epoch"] + 1) * steps_per_epoch <= start)]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept


def as_dataset(data):
    """A :class:`~tscl.datasets.Dataset` for ``data`` (a dataset already, or a ``WaveformCache`` or its subset)."""
    from tscl.datasets import Dataset
    from tscl.datasets.waveform import WaveformDataset

    return data if isinstance(data, Dataset) else WaveformDataset(data)


def _build_method(config: "PretrainConfig", dataset, device):
    encoder = build_encoder(config.encoder, dataset.in_channels, **config.encoder_kwargs)
    method = build_method(config.method, encoder, **config.method_kwargs)
    method.set_modality(dataset.modality)
    return method.to(device)


class _Log:
    """metrics.jsonl (+ TensorBoard when installed) on rank 0; nothing on the other ranks."""

    def __init__(self, out: Path, step: int, steps_per_epoch: int, main: bool):
        self.file = self.tb = None
        self.losses: list = []
        if not main:
            return
        kept = _restart_metrics(out / "metrics.jsonl", step, steps_per_epoch)
        self.losses = [(r["step"], r["loss"]) for r in kept if "step" in r]
        self.file = open(out / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"), purge_step=step)
        except ImportError:
            pass

    def step(self, record: dict) -> None:
        if self.file is None:
            return
        self.losses.append((record["step"], record["loss"]))
        self.file.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for name in ("loss", "lr", "samples_per_s", "data_wait_frac"):
                self.tb.add_scalar(f"train/{name}", record[name], record["step"])

    def epoch(self, epoch: int, first: int, last: int) -> None:
        if self.file is None:
            return
        values = [v for s, v in self.losses if first <= s < last]
        self.file.write(json.dumps({"epoch": epoch, "mean_loss": float(np.mean(values))}) + "\n")
        self.file.flush()

    def close(self) -> None:
        for f in (self.file, self.tb):
            if f is not None:
                f.close()


def _prepare_out(out: Path, config: "PretrainConfig", resuming: bool, device, world: int, dataset) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
    record_environment(out / "environment.json", device, world, resumed=resuming)
    # who pretraining saw: probes refuse a test side that shares a patient with it
    (out / "patients.json").write_text(json.dumps({"split": config.dataset.get("split", "all"),
                                                   "patients": dataset.patients()}))


def _nonfinite_message(loss, step: int, method, x) -> str:
    """Why the loss of ``step`` is not finite: a non-finite input item, parameter or buffer (a queue: the
    kernel's bank), or, when all of those are finite, the forward pass itself (embeddings that overflowed)."""
    bad_items = []  # EHR payloads are NaN where an event has no value: only tensors are checked
    if torch.is_tensor(x) and x.is_floating_point():
        bad_items = torch.nonzero(~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)).flatten().tolist()
    if bad_items:
        where = f"the input batch holds NaN/inf in {len(bad_items)} item(s) (batch rows {bad_items[:5]})"
    else:
        bad = nonfinite_state(method)
        where = (f"{bad} holds NaN/inf" if bad is not None else
                 "inputs, weights and queues are finite, so the forward pass overflowed (embeddings or logits)")
    return f"non-finite loss {loss.item()} at step {step}: {where}; lower the lr or check the data"


def pretrain(data, config: PretrainConfig) -> Path:
    """Pretrain on every item of ``data`` (a :class:`~tscl.datasets.Dataset`, or a ``WaveformCache``);
    returns the run folder. Restrict ``data`` to the training split first (``dataset.split("train")``)."""
    device = distributed.init_distributed(config.device)
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    seed_everything(config.seed)
    dataset = as_dataset(data)
    out = Path(config.out_dir)
    index = dataset.index
    config = replace(config, in_channels=dataset.in_channels, channels=list(dataset.info.get("channels", [])),
                     data_info=dataset.info, dataset=config.dataset or dataset.source)
    identity = run_identity(config, dataset.fingerprint)
    resuming = bool(config.resume and (out / CHECKPOINT).exists())

    method = _build_method(config, dataset, device)
    sampler = method.make_sampler(index, seed=config.seed)  # checks the augmentations against the data first
    if hasattr(dataset, "batch_plan"):  # streamed shards: the method's sampler applied shard by shard
        sampler = dataset.batch_plan(sampler, config.seed)
    if main:
        _prepare_out(out, config, resuming, device, world, dataset)
    if world > 1:
        if hasattr(sampler, "world_size"):
            sampler.rank, sampler.world_size = rank, world
        else:
            sampler = RankBatches(sampler, rank, world)
        method.seed_rank(rank)  # same rows never meet twice, but draws should differ across ranks
    columns = {"patient_ids": torch.from_numpy(encode_ids(index["patient_id"].to_list())),
               "record_ids": torch.arange(len(index)),  # global codes: equal on every rank
               **method.batch_extras(index)}  # e.g. SupCon labels [N]

    model = method
    if world > 1 and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    if config.compile:
        method.encoder.compile()
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise ValueError(f"the sampler yields no batch on {world} rank(s); lower the batch size")
    total = config.epochs * steps_per_epoch
    stop = min(total, config.max_steps) if config.max_steps else total
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(total, int(config.warmup_frac * total)))
    step = 0
    if resuming:
        meta = load_checkpoint(out / CHECKPOINT, method, opt, sched)
        check_identity(out / CHECKPOINT, meta.get("identity"), identity)
        if meta["world_size"] != world:
            raise ValueError(f"{out / CHECKPOINT} was written by {meta['world_size']} rank(s); resume it with as many")
        step = meta["step"]
        set_rng_state(meta["rng"][rank], method, device)

    use_amp = config.amp and device.type == "cuda"

    def train_step(x, batch) -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = model(x, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(_nonfinite_message(loss, step, method, x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        sched.step()
        method.after_step()
        return loss.item()

    def checkpoint() -> None:
        states = [rng_state(method, device)] * world
        if world > 1:
            distributed.check_ranks(f"the checkpoint of step {step}")  # a frozen rank is named, not waited on
            dist.all_gather_object(states, states[rank])
        if main:
            log.file.flush()
            save_checkpoint(out / CHECKPOINT, method, opt, sched, step, states, identity)

    log = _Log(out, step, steps_per_epoch, main)
    bar = tqdm(total=stop, initial=step, desc=f"pretrain {config.method}/{config.encoder}",
               disable=not config.progress or not main)
    loader = Prefetcher(_schedule(sampler, step, steps_per_epoch, stop), dataset.fetch, columns,
                        pin=device.type == "cuda", depth=config.prefetch)
    method.train()
    t_prev = time.perf_counter()
    try:
        for epoch, x, batch in loader:
            value = train_step(to_device(x, device, non_blocking=True),
                               {k: v.to(device, non_blocking=True) for k, v in batch.items()})
            now = time.perf_counter()
            dt, t_prev = now - t_prev, now
            log.step({"step": step, "epoch": epoch, "loss": value, "lr": sched.get_last_lr()[0],
                      "samples_per_s": payload_len(x) * world / dt, "data_wait_frac": min(1.0, loader.wait / dt)})
            step += 1
            bar.set_postfix(loss=f"{value:.3f}")
            bar.update()
            if step == stop or (config.ckpt_every and step % config.ckpt_every == 0):
                checkpoint()
            if step % steps_per_epoch == 0:
                log.epoch(epoch, step - steps_per_epoch, step)
    finally:
        loader.close()
        bar.close()
        log.close()
    if main:
        _save_weights(out, method, log.losses, config)
    distributed.barrier()
    return out


def _schedule(sampler, step: int, steps_per_epoch: int, stop: int):
    """``(epoch, rows)`` for steps ``step .. stop - 1``: each epoch's sampler order (``set_epoch``), entered
    mid-epoch when resuming (the sampler position is the step)."""
    for epoch in range(step // steps_per_epoch, -(-stop // steps_per_epoch)):
        sampler.set_epoch(epoch)
        first = epoch * steps_per_epoch
        for rows in itertools.islice(iter(sampler), max(0, step - first), stop - first):
            yield epoch, rows


def _save_weights(out: Path, method, losses, config) -> None:
    bad = nonfinite_state(method)
    if bad is not None:
        raise FloatingPointError(f"{bad} holds NaN/inf at the end of training; no weights were written")
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in method.encoder.state_dict().items()},
              out / "encoder.safetensors")
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in method.state_dict().items()},
              out / "method.safetensors")
    if losses:
        from tscl.plots import plot_loss_curve

        plot_loss_curve(*zip(*losses), out / "loss.png", title=f"{config.method} / {config.encoder}")


def load_encoder(run_dir: str | Path, device: str = "cpu", random_init: bool = False, seed: int = 0):
    """Rebuild the encoder of a run folder from its config (and its weights unless ``random_init``)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    torch.manual_seed(seed)
    encoder = build_encoder(cfg.encoder, cfg.in_channels, **cfg.encoder_kwargs)
    if not random_init:
        encoder.load_state_dict(load_file(run_dir / "encoder.safetensors", device=device))
    return encoder.to(device).eval()
