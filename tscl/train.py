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
- ``data_report.json`` what the dataset left out while reading (counted and listed; also printed);
- ``checkpoint.safetensors``  everything needed to continue (``resume=True``, see
  :mod:`tscl.checkpoint`): written every ``ckpt_every`` steps, at the end of every epoch, every
  ``ckpt_every_min`` minutes of wall time, when SIGINT (Ctrl-C) or SIGTERM stops the run, and at the end;
- ``encoder.safetensors`` / ``method.safetensors``  weights (no pickle on load);
- ``loss.png``      the loss curve; ``tb/`` TensorBoard events when tensorboard is installed;
- ``FAILED.json``   only when training failed after a checkpoint was written: the one-line reason, the
  step and the traceback (a failed new run with no checkpoint is removed instead); a resume that
  finishes removes it.

The folder is made only after every check that can run before training has passed (config
values, method/encoder/modality, augmentations against the recordings' length, one item through
the encoder, a batch per step, a resume's checkpoint and identity), under a lock that refuses a
second writer (:class:`~tscl.checkpoint.RunLock`). ``resume=True`` on a finished run changes
nothing; on a run stopped before its first checkpoint it says so and restarts from step 0,
keeping the old ``metrics.jsonl`` aside.

Step (:func:`pretrain`'s ``train_step``): a batch fetched by a background thread
(:mod:`tscl.prefetch`; pinned memory on CUDA, copied with ``non_blocking``), bf16 autocast on
CUDA (fp32 on CPU), backward, gradient clipping, AdamW, linear warm-up + cosine LR, the
method's ``after_step`` (EMA encoders, queues). ``data_wait_frac`` is the share of the step
spent waiting for that thread. A non-finite loss stops the run at its step, naming the cause. The
first SIGINT or SIGTERM lets the current step finish, writes a checkpoint and raises
:class:`Interrupted` (the CLI prints one line and exits 130 / 143); a second SIGINT stops at once.

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
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from tscl import distributed
from tscl.catalog import default_encoder
from tscl.checkpoint import (CHECKPOINT, LOCK, RunFileError, RunLock, check_identity, environment, load_checkpoint,
                             nonfinite_state, record_environment, rng_state, run_identity, save_checkpoint, save_weights,
                             set_rng_state, write_file)
from tscl.config import PretrainConfig, check_config, load_config
from tscl.datasets import Dataset, payload_len, to_device
from tscl.datasets.waveform import WaveformDataset
from tscl.encoders import build_encoder, encoder_defaults
from tscl.methods import build_method
from tscl.plots import plot_loss_curve
from tscl.prefetch import Prefetcher
from tscl.progress import progress_bar
from tscl.runs import load_encoder
from tscl.samplers import RankBatches, encode_ids

# environment, save_checkpoint, load_checkpoint and CHECKPOINT live in tscl.checkpoint; re-exported here
__all__ = ["PretrainConfig", "pretrain", "load_encoder", "load_config", "check_config", "seed_everything",
           "cosine_with_warmup", "save_checkpoint", "load_checkpoint", "CHECKPOINT", "environment", "Interrupted",
           "check_encoder_fits", "left_out", "resolve_encoder"]


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


def note(message: str) -> None:
    """One line for the person running the command (stderr, rank 0 only): what the run did that they
    should know (data left out, a lock taken over, a resume that restarts)."""
    if distributed.rank() == 0:
        print(f"note: {message}", file=sys.stderr, flush=True)


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM after writing a checkpoint; ``exit_code`` is 128 + the signal."""

    def __init__(self, signum: int, step: int, total: int, run: Path):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step} of {total}; checkpoint written: resume with "
                         f"tscl pretrain --resume {run}")
        self.signum, self.step, self.exit_code = signum, step, 128 + signum


class _Signals:
    """SIGINT and SIGTERM handlers for the training loop (main thread only): the first signal is recorded
    (``received``) and the loop stops after its step; a second SIGINT raises ``KeyboardInterrupt`` at once."""

    def __init__(self):
        self.received, self.previous = 0, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _agree(flags: list[int], world: int, device) -> list[int]:
    """The largest value of each flag over all ranks (every rank checkpoints and stops at the same step)."""
    if world == 1:
        return flags
    t = torch.tensor(flags, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _read_metrics(path: Path) -> tuple[list[dict], list[tuple[int, str]]]:
    """The whole step and epoch records of ``path``, and its damaged lines as ``(line number, text)``."""
    good, bad = [], []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            r = json.loads(line)
        except ValueError:
            r = None
        step_line = isinstance(r, dict) and type(r.get("step")) is int and isinstance(r.get("loss"), (int, float))
        epoch_line = isinstance(r, dict) and "step" not in r and type(r.get("epoch")) is int
        if step_line or epoch_line:
            good.append(r)
        else:
            bad.append((n, line))
    return good, bad


def _numbers(values: list[int], most: int = 8) -> str:
    shown = ", ".join(map(str, values[:most]))
    return shown + (f", ... ({len(values) - most} more)" if len(values) > most else "")


def _restart_metrics(path: Path, start: int, steps_per_epoch: int) -> list[dict]:
    """Rewrite ``path`` keeping the lines of the steps before ``start`` and of the epochs finished
    by then (a killed run may have logged past its last checkpoint); returns the kept lines.

    Damaged lines (torn by a kill mid-write, edited, garbled) are never dropped silently: they are
    counted and named on the terminal and appended, with their line numbers, to ``metrics.jsonl.damaged``."""
    lines = []
    if start and path.exists():
        lines, bad = _read_metrics(path)
        if bad:
            aside = path.with_name(path.name + ".damaged")
            try:
                with open(aside, "a") as f:
                    f.write("".join(f"{n}\t{text}\n" for n, text in bad))
            except OSError as err:
                raise RunFileError(f"{aside}: cannot write ({err.strerror})") from None
            note(f"{path}: {len(bad)} damaged line(s) left out (line {_numbers([n for n, _ in bad])}); "
                 f"kept in {aside.name}")
    kept = [r for r in lines if (r["step"] < start if "step" in r else (r["epoch"] + 1) * steps_per_epoch <= start)]
    write_file(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def as_dataset(data):
    """A :class:`~tscl.datasets.Dataset` for ``data`` (a dataset already, or a ``WaveformCache`` or its subset)."""
    return data if isinstance(data, Dataset) else WaveformDataset(data)


def resolve_encoder(config: PretrainConfig, modality: str) -> PretrainConfig:
    """``config`` with its encoder named (the modality's default when ``encoder`` is None) and its keyword
    arguments given (the encoder's declared defaults when ``encoder_kwargs`` is None), as ``config.json``
    records them."""
    encoder = config.encoder or default_encoder(modality)
    kwargs = encoder_defaults(encoder) if config.encoder_kwargs is None else config.encoder_kwargs
    return replace(config, encoder=encoder, encoder_kwargs=kwargs)


def _build_method(config: "PretrainConfig", dataset, device):
    encoder = build_encoder(config.encoder, dataset.in_channels, **config.encoder_kwargs)
    method = build_method(config.method, encoder, **config.method_kwargs)
    method.set_modality(dataset.modality)
    return method.to(device)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_items_fit(method, dataset, config, device) -> None:
    """Two items of ``dataset`` through the encoder (eval mode, no gradient, every random state restored):
    an encoder that cannot take the dataset's items is refused before the run folder is made."""
    if not len(dataset):
        return
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if device.type == "cuda" else None)
    was_training = method.encoder.training
    x = dataset.sample_items(2)
    shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
    try:
        method.encoder.eval()
        with torch.no_grad():
            method.encoder(to_device(x, device))
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        raise ValueError(f"encoder {config.encoder} ({config.encoder_kwargs}) cannot take this dataset's items "
                         f"(a batch {shape}): {_first_line(err)}") from None
    finally:
        method.encoder.train(was_training)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


def check_encoder_fits(info: dict, *, modality: str, in_channels: int | None = None, fs: float | None = None,
                       what: str = "this data", run: str | Path = "the run") -> None:
    """Refuse (``ValueError``, one line naming both sides) data whose modality, channel count or sampling rate
    differs from what a run's encoder was pretrained on (``info``: the run's ``data_info``); a value either
    side does not know is not compared."""
    have = {"modality": info.get("modality"), "channels": info.get("in_channels"), "rate": info.get("fs")}
    want = {"modality": modality, "channels": in_channels, "rate": fs}
    diff = [k for k in have if have[k] is not None and want[k] is not None and
            (float(have[k]) != float(want[k]) if k != "modality" else have[k] != want[k])]
    if diff:
        def side(d):
            rate = f" at {float(d['rate']):g} Hz" if d["rate"] else ""
            chans = f"{d['channels']}-channel " if d["channels"] else ""
            return f"{chans}{d['modality'] or ''} data{rate}".strip()

        raise ValueError(f"{run}: its encoder was pretrained on {side(have)}; {what} is {side(want)} ({', '.join(diff)} "
                         "differ): use a run pretrained on data like it")


def left_out(dataset) -> list:
    """What ``dataset`` left out while reading (unreadable or excluded items), as a JSON-able list: the
    dataset's own ``skipped`` list when it has one, else its cache's ``report["skipped"]``."""
    own = getattr(dataset, "skipped", None)
    if own is not None:
        return list(own)
    report = getattr(getattr(dataset, "cache", None), "report", None)
    return list((report or {}).get("skipped") or []) if isinstance(report, dict) else []


def _example(item) -> str:
    if isinstance(item, dict):
        return ", ".join(f"{k}: {v}" for k, v in list(item.items())[:2])
    return str(item)


class _Log:
    """metrics.jsonl (+ TensorBoard when installed) on rank 0; nothing on the other ranks. A write that fails
    (a full disk) raises :class:`~tscl.checkpoint.RunFileError` naming the file."""

    def __init__(self, out: Path, step: int, steps_per_epoch: int, main: bool):
        self.file = self.tb = None
        self.path = out / "metrics.jsonl"
        self.losses: list = []
        if not main:
            return
        kept = _restart_metrics(self.path, step, steps_per_epoch)
        self.losses = [(r["step"], r["loss"]) for r in kept if "step" in r]
        self.file = self._io(open, self.path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"), purge_step=step)
        except ImportError:
            pass

    def _io(self, fn, *args):
        try:
            return fn(*args)
        except OSError as err:
            raise RunFileError(f"{self.path}: cannot write ({err.strerror}); free some space or make the folder "
                               f"writable, then resume with tscl pretrain --resume {self.path.parent}") from None

    def step(self, record: dict) -> None:
        if self.file is None:
            return
        self.losses.append((record["step"], record["loss"]))
        self._io(self.file.write, json.dumps(record) + "\n")
        if self.tb is not None:
            for name in ("loss", "lr", "samples_per_s", "data_wait_frac"):
                self.tb.add_scalar(f"train/{name}", record[name], record["step"])

    def epoch(self, epoch: int, first: int, last: int) -> None:
        if self.file is None:
            return
        values = [v for s, v in self.losses if first <= s < last]
        self._io(self.file.write, json.dumps({"epoch": epoch, "mean_loss": float(np.mean(values))}) + "\n")
        self.flush()

    def flush(self) -> None:
        if self.file is not None:
            self._io(self.file.flush)

    def close(self) -> None:
        """Close quietly (a failure to flush was raised where it happened, or is raised by :meth:`flush`)."""
        for f in (self.file, self.tb):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


def _prepare_out(out: Path, config: "PretrainConfig", resuming: bool, device, world: int, dataset) -> None:
    write_file(out / "config.json", json.dumps(asdict(config), indent=2))
    record_environment(out / "environment.json", device, world, resumed=resuming)
    # who pretraining saw: probes refuse a test side that shares a patient with it
    write_file(out / "patients.json", json.dumps({"split": config.dataset.get("split", "all"),
                                                  "patients": dataset.patients()}))
    skipped = left_out(dataset)
    write_file(out / "data_report.json", json.dumps({"dataset": config.dataset, "items": len(dataset),
                                                     "described": dataset.describe(), "left_out": skipped},
                                                    indent=1, default=str))
    if skipped:
        note(f"{len(skipped)} item(s) of {config.dataset.get('dataset', 'the dataset')} were left out while reading "
             f"(e.g. {_example(skipped[0])}); all are listed in {out / 'data_report.json'}")


def _clear_or_refuse(out: Path, overwrite: bool) -> None:
    """A new run in ``out``: refuse a folder holding a run (or anything else) unless ``overwrite``, which
    empties it (the lock stays); stale temporary files of a dead writer are removed."""
    entries = [p for p in out.iterdir() if p.name != LOCK]
    if not entries:
        return
    if not (out / "config.json").exists():
        raise ValueError(f"{out}: folder exists and is not a tscl run; choose another folder")
    if not overwrite:
        raise ValueError(f"{out}: a run is already there; resume it (tscl pretrain --resume {out}) or replace it "
                         "(--overwrite)")
    for p in entries:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _aside(path: Path) -> Path:
    n = 1
    while path.with_name(f"{path.name}.{n}.old").exists():
        n += 1
    return path.with_name(f"{path.name}.{n}.old")


def _resume_point(out: Path, config, identity: dict, world: int, stop: int, main: bool, overwrite: bool,
                  state: tuple) -> int | None:
    """The step training starts from (0 for a new run), or None when a resumed run is already finished.

    ``state`` is ``(method, opt, sched, device, rank)``: a resume loads the checkpoint into them after
    checking its identity; nothing here writes a run file except a restart's move of the old metrics."""
    method, opt, sched, device, rank = state
    for tmp in out.glob("*.tmp") if main else ():  # written by a process that died: we hold the lock
        tmp.unlink(missing_ok=True)
    ckpt = out / CHECKPOINT
    if not config.resume:
        if main:
            _clear_or_refuse(out, overwrite)
        return 0
    if not ckpt.exists():
        metrics = out / "metrics.jsonl"
        kept = ""
        if main and metrics.exists():
            aside = _aside(metrics)
            metrics.rename(aside)
            kept = f" (the previous metrics.jsonl is kept as {aside.name})"
        note(f"{out}: no checkpoint yet: restarting from step 0{kept}")
        return 0
    meta = load_checkpoint(ckpt, method, opt, sched)
    check_identity(ckpt, meta.get("identity"), identity)
    if meta["world_size"] != world:
        raise ValueError(f"{ckpt} was written by {meta['world_size']} rank(s); resume it with as many")
    if meta["step"] >= stop and (out / "encoder.safetensors").exists():
        return None
    set_rng_state(meta["rng"][rank], method, device)
    failed = out / "FAILED.json"
    if failed.exists():
        try:
            reason = json.loads(failed.read_text())["error"]
        except (OSError, ValueError, KeyError, TypeError):
            reason = "see FAILED.json"
        note(f"{out}: the previous attempt failed ({reason}); resuming from the checkpoint of step {meta['step']}")
    return meta["step"]


def _mark_failed(out: Path, err: BaseException, step: int, created: bool) -> None:
    """A failure during training: a new run with no checkpoint is removed; otherwise FAILED.json says why
    (best effort: a full disk may refuse even that; the terminal line says it anyway)."""
    if created and not (out / CHECKPOINT).exists():
        shutil.rmtree(out, ignore_errors=True)
        return
    record = {"error": _first_line(err), "type": type(err).__name__, "step": step,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "resume": f"tscl pretrain --resume {out}",
              "traceback": traceback.format_exc()}
    try:
        write_file(out / "FAILED.json", json.dumps(record, indent=1))
    except RunFileError:
        pass


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


def pretrain(data, config: PretrainConfig, *, overwrite: bool = False) -> Path:
    """Pretrain on every item of ``data`` (a :class:`~tscl.datasets.Dataset`, or a ``WaveformCache``);
    returns the run folder. Restrict ``data`` to the training split first (``dataset.split("train")``).

    A folder that already holds a run is refused unless ``config.resume`` (continue it) or ``overwrite``
    (replace it). Every check that can run before training runs before the folder is made or touched."""
    check_config(asdict(config), "PretrainConfig")
    device = distributed.init_distributed(config.device)
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    seed_everything(config.seed)
    dataset = as_dataset(data)
    out = Path(config.out_dir)
    index = dataset.index
    config = resolve_encoder(config, dataset.modality)
    config = replace(config, in_channels=dataset.in_channels, channels=list(dataset.info.get("channels", [])),
                     data_info=dataset.info, dataset=config.dataset or dataset.source)
    identity = run_identity(config, dataset.fingerprint)

    method = _build_method(config, dataset, device)
    sampler = method.make_sampler(index, seed=config.seed)  # checks the augmentations against the data first
    _check_items_fit(method, dataset, config, device)
    if hasattr(dataset, "batch_plan"):  # streamed shards: the method's sampler applied shard by shard
        sampler = dataset.batch_plan(sampler, config.seed)
    if world > 1:
        if hasattr(sampler, "world_size"):
            sampler.rank, sampler.world_size = rank, world
        else:
            sampler = RankBatches(sampler, rank, world)
        method.seed_rank(rank)  # same rows never meet twice, but draws should differ across ranks
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise ValueError(f"the sampler yields no batch of the {len(dataset)} item(s) on {world} rank(s); lower the "
                         "batch size")
    total = config.epochs * steps_per_epoch
    stop = min(total, config.max_steps) if config.max_steps else total
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(total, int(config.warmup_frac * total)))

    lock = RunLock.acquire(out) if main else None  # makes a new folder: every check above has passed
    try:
        if lock is not None and lock.taken_over:
            note(f"{out}: taking over the lock left by {lock.taken_over}, which is no longer running")
        step = _resume_point(out, config, identity, world, stop, main, overwrite, (method, opt, sched, device, rank))
        if step is None:
            note(f"{out}: this run is finished (step {stop} of {stop}); nothing to do")
            return out
        if main:
            _prepare_out(out, config, step > 0, device, world, dataset)
        progress = {"step": step}
        try:
            _train(out, config, dataset, method, sampler, (opt, sched, params), (step, stop, total, steps_per_epoch),
                   identity, device, progress)
        except Exception as err:
            if main:
                _mark_failed(out, err, progress["step"], lock.created)
            raise
    finally:
        if lock is not None:
            lock.release()
            if lock.created and out.exists() and not any(out.iterdir()):
                out.rmdir()  # refused before anything was written: leave no empty folder behind
    distributed.barrier()
    return out


def _train(out: Path, config, dataset, method, sampler, optim: tuple, steps: tuple, identity: dict, device,
           progress: dict) -> None:
    """The training loop from ``steps = (step, stop, total, steps_per_epoch)``, checkpoints, the weights.
    ``progress["step"]`` follows the loop (for FAILED.json)."""
    opt, sched, params = optim
    step, stop, total, steps_per_epoch = steps
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    index = dataset.index
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
            log.flush()
            save_checkpoint(out / CHECKPOINT, method, opt, sched, step, states, identity, total=total)

    log = _Log(out, step, steps_per_epoch, main)
    bar = progress_bar(total=stop, initial=step, desc=f"pretrain {config.method}/{config.encoder}",
               disable=not config.progress or not main)
    loader = Prefetcher(_schedule(sampler, step, steps_per_epoch, stop), dataset.fetch, columns,
                        pin=device.type == "cuda", depth=config.prefetch)
    signals = _Signals()
    method.train()
    t_prev = last_ckpt = time.perf_counter()
    try:
        for epoch, x, batch in loader:
            value = train_step(to_device(x, device, non_blocking=True),
                               {k: v.to(device, non_blocking=True) for k, v in batch.items()})
            now = time.perf_counter()
            dt, t_prev = now - t_prev, now
            log.step({"step": step, "epoch": epoch, "loss": value, "lr": sched.get_last_lr()[0],
                      "samples_per_s": payload_len(x) * world / dt, "data_wait_frac": min(1.0, loader.wait / dt)})
            step = progress["step"] = step + 1
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)  # drawn with the next update, not every step
            bar.update()
            if step % steps_per_epoch == 0:
                log.epoch(epoch, step - steps_per_epoch, step)
            stop_signal, by_time = _agree([signals.received, int(0 < config.ckpt_every_min * 60 <= now - last_ckpt)],
                                          world, device)
            if (step == stop or by_time or stop_signal or step % steps_per_epoch == 0
                    or (config.ckpt_every and step % config.ckpt_every == 0)):
                checkpoint()
                last_ckpt = time.perf_counter()
            if stop_signal and step < stop:
                raise Interrupted(stop_signal, step, stop, out)
        log.flush()
    finally:
        signals.restore()
        loader.close()
        bar.close()
        log.close()
    if main:
        _save_weights(out, method, log.losses, config)
        (out / "FAILED.json").unlink(missing_ok=True)  # an earlier attempt's failure, now resumed to the end


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
    then = f"; the final checkpoint is written: resume with tscl pretrain --resume {out} to write the weights"
    save_weights(out / "method.safetensors", method, then)
    save_weights(out / "encoder.safetensors", method.encoder, then)  # last: its presence marks a finished run
    if losses:
        try:
            plot_loss_curve(*zip(*losses), out / "loss.png", title=f"{config.method} / {config.encoder}")
        except OSError as err:
            raise RunFileError(f"{out / 'loss.png'}: cannot write ({err.strerror}); the weights are written") from None
