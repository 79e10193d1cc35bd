"""What makes a run resumable and reproducible: the checkpoint, every random state, the run identity, the machine.

``checkpoint.safetensors`` holds the method's state_dict (queues and EMA encoders included) and
the optimizer's tensors; its metadata holds, as JSON, the step, the optimizer's param groups, the
LR scheduler, every rank's random states (python, numpy, torch, CUDA and the method's own
streams, :meth:`tscl.methods.base.Method.rng_state`) and the run's identity (method, encoder,
a digest of the options that change the computation, the data's fingerprint). It is written to
a temporary name, flushed to disk, then renamed; loading it unpickles nothing; non-finite
weights are never written. ``environment.json`` records, per start, what decides a run's numbers
besides its config.

Every file of a run folder is written through :func:`write_file` (temporary name, ``fsync``,
rename): a full disk or an unwritable folder ends in one :class:`RunFileError` naming the file
and what to do, and never leaves a half-written file under the real name. A damaged checkpoint
or weights file is refused the same way (:func:`read_checkpoint_meta`, :func:`load_weights`).
:class:`RunLock` keeps a second process from writing a run folder that one is writing.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import os
import platform
import random
import socket
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from tscl import __version__
from tscl.config import RunFileError  # defined with the config, which imports no torch

__all__ = ["CHECKPOINT", "LOCK", "save_checkpoint", "load_checkpoint", "read_checkpoint_meta", "load_weights",
           "save_weights", "write_file", "RunFileError", "RunLock", "RunLockedError", "rng_state", "set_rng_state",
           "run_identity", "check_identity", "nonfinite_state", "environment", "record_environment"]

CHECKPOINT = "checkpoint.safetensors"
LOCK = ".lock"  # the writer's pid, held under flock while a process writes the run folder


class RunLockedError(ValueError):
    """Another live process holds the run folder's lock."""


def _why(err: OSError) -> str:
    return err.strerror or str(err)


def _advice(err: OSError) -> str:
    if err.errno == errno.ENOSPC or err.errno == errno.EDQUOT:
        return "free some space"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "make the folder writable or choose another --out"
    return "fix the folder"


def write_file(path: Path, data: bytes | str, then: str = "") -> None:
    """Write ``data`` to ``path`` atomically: a temporary name in the same folder, flushed and fsynced,
    then renamed. On any OS error the temporary file is removed, a previous ``path`` is left as it was,
    and :class:`RunFileError` names the file, the reason and what to do (``then`` is appended: e.g. how
    to resume)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise RunFileError(f"{path}: cannot write ({_why(err)}); {_advice(err)}{then}") from None


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
_NOT_IDENTITY = ("out_dir", "resume", "device", "progress", "ckpt_every", "ckpt_every_min", "max_steps", "prefetch",
                 "compile")
# where the data is, not what it is: the content fingerprint stands for the data, so a moved dataset resumes
_DATA_PLACE = ("root", "cache")


def _digest(options: dict) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _options(config, legacy: bool = False) -> dict:
    options = {k: v for k, v in asdict(config).items() if k not in _NOT_IDENTITY}
    if legacy:  # identities written before version 2 hashed the data's place too
        return options
    data = dict(options.get("dataset") or {})
    for key in _DATA_PLACE:
        data.pop(key, None)
    data["options"] = {k: v for k, v in (data.get("options") or {}).items() if k != "metadata"}
    options["dataset"] = data
    return options


def run_identity(config, data_fingerprint: str) -> dict:
    """Method, encoder, a digest of every option that changes the computation (not where the data lies: its
    content fingerprint ``data`` stands for it), and the data's fingerprint."""
    return {"version": 2, "method": config.method, "encoder": config.encoder, "config_digest": _digest(_options(config)),
            "data": data_fingerprint, "legacy_digest": _digest(_options(config, legacy=True))}


def check_identity(path: Path, saved: dict | None, current: dict) -> None:
    """Refuse to resume ``path`` into another run, naming what differs on both sides."""
    if saved is None:
        raise ValueError(f"{path} records no run identity (written by an older tscl); start a new run or "
                         "--overwrite this one")
    if saved.get("version") is None:  # written before the data's place left the digest
        current = {**current, "config_digest": current["legacy_digest"]}
    keys = ("method", "encoder", "config_digest", "data")
    diff = [f"{k}: checkpoint {saved.get(k)!r}, this run {current[k]!r}" for k in keys if saved.get(k) != current[k]]
    if diff:
        raise ValueError(f"{path} belongs to another run ({'; '.join(diff)}); resume it with its own config "
                         "(tscl pretrain --resume RUN_DIR) or start a new run with --overwrite")


def nonfinite_state(module) -> str | None:
    """The first non-finite parameter or buffer of ``module`` (its name), or None."""
    for name, t in itertools.chain(module.named_parameters(), module.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


def save_checkpoint(path: Path, method, opt, sched, step: int, rng_states: list[dict], identity: dict | None = None,
                    total: int | None = None) -> None:
    """Write the training state to ``path`` atomically (:func:`write_file`); ``total`` is the run's step
    count (a checkpoint with ``step == total`` is a finished run).

    Refuses (``FloatingPointError`` naming the step and tensor) to write non-finite weights: the
    previous checkpoint stays the one to resume from. A write that fails (a full disk, a read-only
    folder) leaves the previous checkpoint too, and raises :class:`RunFileError`."""
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
    meta = {"step": step, "total": total, "world_size": len(rng_states), "param_groups": opt_state["param_groups"],
            "optim_extra": extra, "scheduler": sched.state_dict(), "rng": rng_states, "identity": identity}
    data = safetensors_bytes({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()},
                             metadata={"tscl": json.dumps(meta)})
    then = (f"; the previous checkpoint is kept: resume with tscl pretrain --resume {path.parent}" if path.exists()
            else "; no checkpoint was written")
    write_file(path, data, then)


def _damaged(path: Path, err: Exception, what: str) -> RunFileError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return RunFileError(f"{path}: damaged {what} ({reason}); {_REMEDY[what].format(run=path.parent)}")


_REMEDY = {
    "checkpoint": "it cannot be resumed from: move it away and tscl pretrain --resume {run} restarts the run from "
                  "step 0, or start anew with --overwrite",
    "weights": "resume the run to rewrite them (tscl pretrain --resume {run}), or pretrain it again",
}


def read_checkpoint_meta(path: Path) -> dict:
    """The metadata of checkpoint ``path`` (step, total, identity, ...) without loading a tensor; a file that
    is not a whole tscl checkpoint raises :class:`RunFileError` naming it."""
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = json.loads(f.metadata()["tscl"])
    except Exception as err:  # safetensors raises its own error type for a cut or garbled header
        raise _damaged(Path(path), err, "checkpoint") from None
    if not isinstance(meta, dict) or "step" not in meta:
        raise _damaged(Path(path), ValueError("no training state in its metadata"), "checkpoint")
    return meta


def load_checkpoint(path: Path, method, opt=None, sched=None) -> dict:
    """Load weights (and optimizer/scheduler when given) from ``path``; returns its metadata. A damaged file
    (cut short, garbled) raises :class:`RunFileError` naming it and what to do."""
    meta = read_checkpoint_meta(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise _damaged(Path(path), err, "checkpoint") from None
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


def save_weights(path: Path, module, then: str = "") -> None:
    """``module``'s state_dict as safetensors, written atomically (:func:`write_file`)."""
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}
    write_file(path, safetensors_bytes(tensors), then)


def load_weights(path: Path, device: str = "cpu") -> dict:
    """The tensors of a weights file of a run folder; a missing file says the run did not finish (and why,
    when ``FAILED.json`` tells), a damaged one raises :class:`RunFileError` naming it and what to do."""
    path = Path(path)
    if not path.exists():
        failed = path.parent / "FAILED.json"
        why = ""
        if failed.exists():
            try:
                why = f" (FAILED.json: {json.loads(failed.read_text())['error']})"
            except (OSError, ValueError, KeyError, TypeError):
                why = " (see FAILED.json)"
        raise FileNotFoundError(f"{path}: missing; the run's pretraining has not finished{why}: resume it with "
                                f"tscl pretrain --resume {path.parent}")
    try:
        return load_file(path, device=device)
    except Exception as err:  # a cut or garbled file: safetensors' own error type
        raise _damaged(path, err, "weights") from None


def environment(device: torch.device, world: int = 1) -> dict:
    """What decides the numbers of a run besides its config: versions, device, CPU ISA, threads."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {"tscl": __version__, "torch": torch.__version__, "triton": triton_version,
           "python": platform.python_version(), "device": str(device), "world_size": world,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def record_environment(path: Path, device: torch.device, world: int, resumed: bool) -> None:
    entries = []
    if resumed and path.exists():
        try:
            entries = json.loads(path.read_text())
        except ValueError:  # a damaged history is restarted, not a reason to refuse the resume
            entries = [{"note": f"{path.name} was unreadable at this resume; earlier entries lost"}]
    entries.append({**environment(device, world), "resumed": resumed})
    write_file(path, json.dumps(entries, indent=2))


# ---- the run folder's lock ---------------------------------------------------------------------------

class RunLock:
    """Exclusive ownership of a run folder by one process: ``RUN/.lock`` holds the owner's pid under an
    ``flock`` that the kernel releases when the process ends, however it ends.

    :meth:`acquire` refuses (:class:`RunLockedError`) a folder whose lock a live process holds, naming its
    pid. A lock file left by a process that died (its flock is gone) is taken over and ``taken_over`` names
    that pid. A folder that does not exist is created with the lock already inside (``created``), made
    under a temporary name and renamed into place, so two processes starting the same new run cannot both
    win. :meth:`release` removes the lock file."""

    def __init__(self, out: Path, fd: int, created: bool, taken_over: str | None):
        self.out, self.fd, self.created, self.taken_over = out, fd, created, taken_over

    @classmethod
    def acquire(cls, out: str | Path) -> "RunLock":
        out = Path(out)
        created = False
        if not out.exists():
            created = cls._create(out)
        for _ in range(20):  # retried when the lock file was replaced between open and flock
            path = out / LOCK
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise RunFileError(f"{path}: cannot lock the run folder ({_why(err)}); {_advice(err)}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunLockedError(f"{out}: another tscl process is writing this run ({_describe(holder)}); wait "
                                     "for it to finish, stop it, or choose another --out") from None
            if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
                previous = os.pread(fd, 256, 0).decode(errors="replace").strip()
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()} since={time.strftime('%Y-%m-%dT%H:%M:%S')}"
                          .encode(), 0)
                return cls(out, fd, created, _describe(previous) if previous and not created else None)
            os.close(fd)
        raise RunLockedError(f"{out}: its lock file keeps changing; another process is starting on it")

    @staticmethod
    def holder(out: str | Path) -> str | None:
        """Who holds the lock of ``out`` now (``pid N, since ...``), or None; takes nothing."""
        path = Path(out) / LOCK
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except OSError:
            return _describe(os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown")
        finally:
            os.close(fd)

    @staticmethod
    def _create(out: Path) -> bool:
        """Make ``out`` with an empty lock file inside, atomically; False when another process made it first."""
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.parent / f".{out.name}.{os.getpid()}.new"
            tmp.mkdir()
            (tmp / LOCK).touch()
        except OSError as err:
            raise RunFileError(f"{out}: cannot create the run folder ({_why(err)}); {_advice(err)}") from None
        try:
            os.rename(tmp, out)  # fails when out appeared meanwhile and is not empty
            return True
        except OSError:
            (tmp / LOCK).unlink(missing_ok=True)
            tmp.rmdir()
            return False

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            (self.out / LOCK).unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _describe(holder: str) -> str:
    """``pid=12 host=h since=...`` -> ``pid 12 (on h, since ...)``."""
    fields = dict(part.split("=", 1) for part in holder.split() if "=" in part)
    if "pid" not in fields:
        return holder
    where = [f"on {fields['host']}"] if fields.get("host") and fields["host"] != socket.gethostname() else []
    since = [f"since {fields['since']}"] if "since" in fields else []
    return f"pid {fields['pid']}" + (f" ({', '.join(where + since)})" if where or since else "")
