"""Pretraining loop: one config per run, saved beside the weights; one process or torchrun's W.

``pretrain(cache, config)`` trains ``config.method`` with ``config.encoder`` on a
:class:`~tscl.loaders.WaveformCache` and writes to ``config.out_dir``:

- ``config.json``   the full :class:`PretrainConfig` (re-run the folder from it);
- ``environment.json`` one entry per start (fresh or resumed): versions, device, CPU vector
  ISA and threads. The same seed gives bit-identical runs only on the same kind of machine:
  PyTorch's CPU kernels differ between AVX2 and AVX-512, and the rounding differences grow
  over training;
- ``metrics.jsonl`` one JSON line per step (loss, lr, samples/s, data_wait_frac) and per epoch;
- ``checkpoint.safetensors``  everything needed to continue (``resume=True``), see below;
- ``encoder.safetensors`` / ``method.safetensors``  weights (no pickle on load);
- ``loss.png``      the loss curve; ``tb/`` TensorBoard events when tensorboard is installed.

Step: rows gathered from the memmap by a background thread (pinned memory on CUDA, copied
with ``non_blocking``), bf16 autocast on CUDA (fp32 on CPU), backward, gradient clipping,
AdamW, linear warm-up + cosine LR, the method's ``after_step`` (EMA encoders, queues).
``data_wait_frac`` is the share of the step spent waiting for that thread.

Data parallel: under ``torchrun`` every rank joins the process group (:mod:`tscl.distributed`),
the method is wrapped in DistributedDataParallel (BatchNorm → SyncBatchNorm on CUDA), each
rank gets its own rows of every global batch (disjoint patients for the patient sampler,
:class:`~tscl.samplers.RankBatches` for other samplers), and augmentation generators are
seeded per rank. Methods gather embeddings across ranks, so the loss is the global-batch loss.

Checkpoint: ``checkpoint.safetensors`` holds the method's state_dict (queues and EMA encoders
included) and the optimizer's tensors; its metadata holds, as JSON, the step, the optimizer's
param groups, the LR scheduler and every rank's random states (python, numpy, torch, CUDA,
augmentation generators). The sampler position is the step (epoch, step within epoch). It is
written to a temporary name then renamed, every ``ckpt_every`` steps and at the end; loading
it unpickles nothing. ``resume=True`` continues from it step for step.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import queue
import random
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tscl import distributed
from tscl.augment import Augment
from tscl.encoders import build_encoder
from tscl.methods import build_method
from tscl.samplers import RankBatches, encode_ids

__all__ = ["PretrainConfig", "pretrain", "load_encoder", "load_config", "seed_everything", "cosine_with_warmup",
           "save_checkpoint", "load_checkpoint", "CHECKPOINT"]

CHECKPOINT = "checkpoint.safetensors"


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
    amp: bool = True  # bf16 autocast on CUDA; CPU runs in fp32
    compile: bool = False  # torch.compile the encoder
    ckpt_every: int = 500  # steps between checkpoints (0: only at the end)
    resume: bool = False  # continue from out_dir/checkpoint.safetensors when it exists
    max_steps: int = 0  # stop after this many steps (0: all epochs); the LR schedule still spans all epochs
    prefetch: int = 2  # batches the loader thread prepares ahead
    progress: bool = True
    in_channels: int = 12
    channels: list = field(default_factory=list)


def load_config(run_dir: str | Path) -> PretrainConfig:
    """The :class:`PretrainConfig` saved in a run folder."""
    saved = json.loads((Path(run_dir) / "config.json").read_text())
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


class Prefetcher:
    """Batches ``(x [B,C,T], {name: [B]})`` read from the memmap in a background thread, ``depth`` ahead.

    ``wait`` is how long the last ``next`` blocked. Rows are read in sorted order (sequential
    in the memmap) and put back in the sampler's order."""

    def __init__(self, batches, signals: np.ndarray, columns: dict, pin: bool, depth: int = 2):
        self.signals, self.columns, self.pin = signals, columns, pin
        self.queue: queue.Queue = queue.Queue(max(1, depth))
        self.stop, self.wait = threading.Event(), 0.0
        self.thread = threading.Thread(target=self._fill, args=(batches,), daemon=True)
        self.thread.start()

    def _load(self, rows):
        rows = np.asarray(rows)
        order = np.argsort(rows)
        x = torch.from_numpy(np.ascontiguousarray(self.signals[rows[order]]))[torch.from_numpy(np.argsort(order))]
        batch = {name: col[rows] for name, col in self.columns.items()}
        if self.pin:
            x, batch = x.pin_memory(), {k: v.pin_memory() for k, v in batch.items()}
        return x, batch

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _fill(self, batches):
        try:
            for rows in batches:
                if not self._put(self._load(rows)):
                    return
            self._put(None)
        except BaseException as err:  # handed to the training thread
            self._put(err)

    def __iter__(self):
        while True:
            t0 = time.perf_counter()
            item = self.queue.get()
            self.wait = time.perf_counter() - t0
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def _augments(method) -> list[Augment]:
    """The method's augmentation pipelines (each owns a seeded generator per device)."""
    found = {id(v): v for m in method.modules() for v in vars(m).values() if isinstance(v, Augment)}
    return list(found.values())


def _rng_state(augments, device) -> dict:
    """This process's random states as JSON-able lists."""
    py_state, np_state = random.getstate(), np.random.get_state()
    state = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])],
        "torch": torch.get_rng_state().tolist(),
        "augment": [a.generator(device).get_state().tolist() for a in augments],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return state


def _set_rng_state(state: dict, augments, device) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    for a, s in zip(augments, state["augment"]):
        a.generator(device).set_state(torch.tensor(s, dtype=torch.uint8))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8), device)


def save_checkpoint(path: Path, method, opt, sched, step: int, rng_states: list[dict]) -> None:
    """Write the training state to ``path`` atomically (temporary name, then ``os.replace``)."""
    tensors = {f"model.{k}": v for k, v in method.state_dict().items()}
    opt_state = opt.state_dict()
    extra = defaultdict(dict)
    for i, state in opt_state["state"].items():
        for name, v in state.items():
            if torch.is_tensor(v):
                tensors[f"optim.{i}.{name}"] = v
            else:
                extra[i][name] = v
    meta = {"step": step, "world_size": len(rng_states), "param_groups": opt_state["param_groups"],
            "optim_extra": extra, "scheduler": sched.state_dict(), "rng": rng_states}
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, tmp,
              metadata={"tscl": json.dumps(meta)})
    os.replace(tmp, path)


def load_checkpoint(path: Path, method, opt=None, sched=None) -> dict:
    """Load weights (and optimizer/scheduler when given) from ``path``; returns its metadata."""
    with safe_open(path, framework="pt", device="cpu") as f:
        meta = json.loads(f.metadata()["tscl"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    method.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    if opt is not None:
        state = defaultdict(dict, {int(i): dict(s) for i, s in meta["optim_extra"].items()})
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, i, name = k.split(".", 2)
                state[int(i)][name] = v
        opt.load_state_dict({"state": dict(state), "param_groups": meta["param_groups"]})
    if sched is not None:
        sched.load_state_dict(meta["scheduler"])
    return meta


def _restart_metrics(path: Path, start: int, steps_per_epoch: int) -> list[dict]:
    """Rewrite ``path`` keeping the lines of the steps before ``start`` and of the epochs finished
    by then (a killed run may have logged past its last checkpoint); returns the kept lines."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if start and path.exists() else []
    kept = [r for r in lines if (r["step"] < start if "step" in r else (r["epoch"] + 1) * steps_per_epoch <= start)]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept


def environment(device: torch.device, world: int = 1) -> dict:
    """What decides the numbers of a run besides its config: versions, device, CPU ISA, threads."""
    import platform

    import tscl

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {"tscl": tscl.__version__, "torch": torch.__version__, "triton": triton_version,
           "python": platform.python_version(), "device": str(device), "world_size": world,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _record_environment(path: Path, device: torch.device, world: int, resumed: bool) -> None:
    entries = json.loads(path.read_text()) if resumed and path.exists() else []
    entries.append({**environment(device, world), "resumed": resumed})
    path.write_text(json.dumps(entries, indent=2))


def pretrain(cache, config: PretrainConfig) -> Path:
    """Pretrain on every recording of ``cache``; returns the run folder."""
    device = distributed.init_distributed(config.device)
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    seed_everything(config.seed)
    out = Path(config.out_dir)
    index = cache.index
    config.in_channels = int(index["n_channels"][0])
    config.channels = index["channels"][0].split(",")
    resuming = bool(config.resume and (out / CHECKPOINT).exists())
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
        _record_environment(out / "environment.json", device, world, resumed=resuming)

    encoder = build_encoder(config.encoder, config.in_channels, **config.encoder_kwargs)
    method = build_method(config.method, encoder, **config.method_kwargs).to(device)
    sampler = method.make_sampler(index, seed=config.seed)
    augments = _augments(method)
    if world > 1:
        if hasattr(sampler, "world_size"):
            sampler.rank, sampler.world_size = rank, world
        else:
            sampler = RankBatches(sampler, rank, world)
        for a in augments:  # same rows never meet twice, but draws should differ across ranks
            a.seed = a.seed + rank
    columns = {"patient_ids": torch.from_numpy(encode_ids(index["patient_id"].to_list())),
               "record_ids": torch.arange(len(index))}  # global codes: equal on every rank
    if hasattr(method, "batch_extras"):
        columns.update(method.batch_extras(index))  # e.g. SupCon labels [N]
    signals = cache.stack()

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
        if meta["world_size"] != world:
            raise ValueError(f"{out / CHECKPOINT} was written by {meta['world_size']} rank(s); resume it with as many")
        step = meta["step"]
        _set_rng_state(meta["rng"][rank], augments, device)

    use_amp = config.amp and device.type == "cuda"
    log = tb = None
    losses = []
    if main:
        losses = [(r["step"], r["loss"]) for r in _restart_metrics(out / "metrics.jsonl", step, steps_per_epoch) if "step" in r]
        log = open(out / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(out / "tb"), purge_step=step)
        except ImportError:
            pass
    bar = tqdm(total=stop, initial=step, desc=f"pretrain {config.method}/{config.encoder}",
               disable=not config.progress or not main)
    method.train()
    try:
        for epoch in range(step // steps_per_epoch, config.epochs):
            if step >= stop:
                break
            sampler.set_epoch(epoch)
            skip = step - epoch * steps_per_epoch  # sampler position when resuming mid-epoch
            loader = Prefetcher(itertools.islice(iter(sampler), skip, None), signals, columns,
                                pin=device.type == "cuda", depth=config.prefetch)
            t_prev = time.perf_counter()
            try:
                for x, batch in loader:
                    x = x.to(device, non_blocking=True)
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                        loss = model(x, batch)
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
                    value = loss.item()
                    now = time.perf_counter()
                    dt, t_prev = now - t_prev, now
                    record = {"step": step, "epoch": epoch, "loss": value, "lr": sched.get_last_lr()[0],
                              "samples_per_s": x.shape[0] * world / dt, "data_wait_frac": min(1.0, loader.wait / dt)}
                    step += 1
                    if main:
                        losses.append((record["step"], value))
                        log.write(json.dumps(record) + "\n")
                        if tb is not None:
                            for name in ("loss", "lr", "samples_per_s", "data_wait_frac"):
                                tb.add_scalar(f"train/{name}", record[name], record["step"])
                        bar.set_postfix(loss=f"{value:.3f}", sps=f"{record['samples_per_s']:.0f}")
                        bar.update()
                    if step == stop or (config.ckpt_every and step % config.ckpt_every == 0):
                        states = [_rng_state(augments, device)] * world
                        if world > 1:
                            dist.all_gather_object(states, states[rank])
                        if main:
                            log.flush()
                            save_checkpoint(out / CHECKPOINT, method, opt, sched, step, states)
                    if step >= stop:
                        break
            finally:
                loader.close()
            if main and step == (epoch + 1) * steps_per_epoch:
                epoch_losses = [v for s, v in losses if epoch * steps_per_epoch <= s < step]
                log.write(json.dumps({"epoch": epoch, "mean_loss": float(np.mean(epoch_losses))}) + "\n")
                log.flush()
    finally:
        bar.close()
        if log is not None:
            log.close()
        if tb is not None:
            tb.close()
    if main:
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in method.encoder.state_dict().items()},
                  out / "encoder.safetensors")
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in method.state_dict().items()},
                  out / "method.safetensors")
        if losses:
            from tscl.plots import plot_loss_curve

            plot_loss_curve(*zip(*losses), out / "loss.png", title=f"{config.method} / {config.encoder}")
    distributed.barrier()
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
