"""What makes a run resumable and reproducible: the checkpoint, every random state, the run identity, the machine.

``checkpoint.safetensors`` holds the method's state_dict (queues and EMA encoders included) and
the optimizer's tensors; its metadata holds, as JSON, the step, the optimizer's param groups, the
LR scheduler, every rank's random states (python, numpy, torch, CUDA and the method's own
streams, :meth:`tscl.methods.base.Method.rng_state`) and the run's identity (method, encoder,
a digest of the options that change the computation, the data's fingerprint). It is written to
a temporary name then renamed; loading it unpickles nothing; non-finite weights are never
written. ``environment.json`` records, per start, what decides a run's numbers besides its config.
"""
from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["CHECKPOINT", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "run_identity",
           "check_identity", "nonfinite_state", "environment", "record_environment"]

CHECKPOINT = "checkpoint.safetensors"


def rng_state(method, device) -> dict:
    """This process's random states as JSON-able lists (python, numpy, torch, CUDA, the method's own)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    state = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])],
        "torch": torch.get_rng_state().tolist(),
        "method": method.rng_state(device),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return state


def set_rng_state(state: dict, method, device) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    method.set_rng_state(state["method"], device)
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8), device)


# what a run is: a checkpoint resumes only into the same identity
_NOT_IDENTITY = ("out_dir", "resume", "device", "progress", "ckpt_every", "max_steps", "prefetch", "compile")


def run_identity(config, data_fingerprint: str) -> dict:
    """Method, encoder, a digest of every option that changes the computation, and the data's fingerprint."""
    import hashlib

    options = {k: v for k, v in asdict(config).items() if k not in _NOT_IDENTITY}
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"method": config.method, "encoder": config.encoder, "config_digest": digest, "data": data_fingerprint}


def check_identity(path: Path, saved: dict | None, current: dict) -> None:
    """Refuse to resume ``path`` into another run, naming what differs on both sides."""
    if saved is None:
        raise ValueError(f"{path} records no run identity (written by an older tscl); start a new run or "
                         "--overwrite this one")
    diff = [f"{k}: checkpoint {saved.get(k)!r}, this run {current[k]!r}" for k in current if saved.get(k) != current[k]]
    if diff:
        raise ValueError(f"{path} belongs to another run ({'; '.join(diff)}); resume it with its own config "
                         "(tscl pretrain --resume RUN_DIR) or start a new run with --overwrite")


def nonfinite_state(module) -> str | None:
    """The first non-finite parameter or buffer of ``module`` (its name), or None."""
    for name, t in itertools.chain(module.named_parameters(), module.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


def save_checkpoint(path: Path, method, opt, sched, step: int, rng_states: list[dict], identity: dict | None = None) -> None:
    """Write the training state to ``path`` atomically (temporary name, then ``os.replace``).

    Refuses (``FloatingPointError`` naming the step and tensor) to write non-finite weights: the
    previous checkpoint stays the one to resume from."""
    bad = nonfinite_state(method)
    if bad is not None:
        raise FloatingPointError(f"step {step}: {bad} holds NaN/inf; the checkpoint was not written (the last "
                                 f"finite one in {path} is kept); lower the lr or check the data")
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
            "optim_extra": extra, "scheduler": sched.state_dict(), "rng": rng_states, "identity": identity}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
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


def record_environment(path: Path, device: torch.device, world: int, resumed: bool) -> None:
    entries = json.loads(path.read_text()) if resumed and path.exists() else []
    entries.append({**environment(device, world), "resumed": resumed})
    path.write_text(json.dumps(entries, indent=2))
