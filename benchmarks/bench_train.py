"""End-to-end pretraining throughput: a plain PyTorch loop against the tscl engine.

SimCLR on xresnet1d50 (``build_encoder("xresnet1d50", 12)``), 12-lead inputs of 1000 and
5000 samples, ``--batch`` encoder samples per step (two augmented views of batch/2
recordings), read from a memory-mapped cache of synthetic recordings:

=========  ======================================================================
plain      main-thread reads, augmentations on the CPU, fp32, eager encoder, full-matrix
           loss ``info_nce(..., backend="reference")``, AdamW
tscl       ``tscl.train.pretrain``: background prefetch into pinned memory, augmentations
           on the GPU, bf16 autocast, ``torch.compile``d encoder, fused loss (``backend="auto"``)
=========  ======================================================================

Reported per (length, pipeline): samples/s (median over the steps after ``--warmup``), the
GPU-busy fraction (kernel time / wall time over ``--profile`` profiled steps, CUDA only) and
the largest batch that fits (doubling, then bisection to 64, one full training step per try
with out-of-memory caught; eager, without compile, CUDA only). JSON and PNG go to ``--out``.

    python benchmarks/bench_train.py --out runs/bench_train            # GPU
    python benchmarks/bench_train.py --quick --out runs/bench_train    # tiny CPU smoke test
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import tscl.train
from tscl.benchmarks.profiling import gpu_busy
from tscl.augment import build_augment
from tscl.encoders import ProjectionHead, build_encoder
from tscl.kernels import info_nce
from tscl.loaders import Recording, build_cache
from tscl.methods.simclr import ECG_AUGMENT
from tscl.train import PretrainConfig, pretrain

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def synthetic_cache(folder: Path, n: int, length: int):
    rng = np.random.default_rng(0)
    recs = (Recording(rng.standard_normal((12, length), dtype=np.float32), 100.0, LEADS, f"p{i // 2}", f"r{i}")
            for i in range(n))
    return build_cache(recs, folder)


def _profiler(device, warmup: int, active: int):
    if device.type != "cuda" or not active:
        return None
    return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
                                  schedule=torch.profiler.schedule(wait=warmup, warmup=1, active=active))


def plain_loop(cache, batch: int, steps: int, device, prof=None):
    """The baseline: everything in the main thread, fp32, reference loss. Returns per-step seconds."""
    torch.manual_seed(0)
    encoder = build_encoder("xresnet1d50", 12).to(device)
    head = ProjectionHead(encoder.embed_dim, encoder.embed_dim, 128).to(device)
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    augment = build_augment(ECG_AUGMENT, fs=100.0, seed=0)
    signals, rng, times = cache.stack(), np.random.default_rng(0), []
    for _ in range(steps):
        t0 = time.perf_counter()
        rows = np.sort(rng.choice(len(signals), batch // 2, replace=False))
        x = torch.from_numpy(np.ascontiguousarray(signals[rows]))
        views = torch.cat([augment(x), augment(x)]).to(device)
        z = head(encoder(views))
        ids = torch.arange(batch // 2, device=device).repeat(2)
        loss = info_nce(z, z, ids, ids, temperature=0.1, exclude_self=True, backend="reference")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        times.append(time.perf_counter() - t0)
        if prof is not None:
            prof.step()
    return times


def tscl_loop(cache, batch: int, steps: int, device, folder: Path, compile: bool, prof=None):
    """``tscl.train.pretrain`` on the cache; returns per-step seconds and data-wait fractions."""
    n_batches = len(cache) // (batch // 2)
    cfg = PretrainConfig(out_dir=str(folder), method="simclr", encoder="xresnet1d50", encoder_kwargs={},
                         method_kwargs={"batch_size": batch // 2}, epochs=-(-steps // n_batches), max_steps=steps,
                         lr=1e-3, device=str(device), compile=compile, ckpt_every=0, progress=False)
    if prof is not None:  # advance the profiler once per step through the method's after_step hook
        build = tscl.train.build_method

        def build_with_hook(*args, **kw):
            method = build(*args, **kw)
            method.after_step = prof.step
            return method

        tscl.train.build_method = build_with_hook
    try:
        pretrain(cache, cfg, overwrite=True)
    finally:
        if prof is not None:
            tscl.train.build_method = build
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps_ = [r for r in lines if "step" in r]
    seconds = [(batch // 2) / r["samples_per_s"] for r in steps_]  # the engine logs recordings/s
    return seconds, [r["data_wait_frac"] for r in steps_]


def one_step_fits(batch: int, length: int, device, fast: bool) -> bool:
    """One training step at ``batch`` on synthetic device data; False on CUDA out-of-memory."""
    encoder = head = opt = x = z = loss = None
    try:
        torch.manual_seed(0)
        encoder = build_encoder("xresnet1d50", 12).to(device)
        head = ProjectionHead(encoder.embed_dim, encoder.embed_dim, 128).to(device)
        opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-3)
        x = torch.randn(batch, 12, length, device=device)
        ids = torch.arange(batch // 2, device=device).repeat(2)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            z = head(encoder(x))
            loss = info_nce(z, z, ids, ids, temperature=0.1, exclude_self=True, backend="auto" if fast else "reference")
        loss.backward()
        opt.step()
        torch.cuda.synchronize(device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        del encoder, head, opt, x, z, loss
        gc.collect()
        torch.cuda.empty_cache()


def largest_batch(length: int, device, fast: bool, start: int = 256, cap: int = 1 << 16, step: int = 64) -> int:
    lo, hi = 0, start
    while hi <= cap and one_step_fits(hi, length, device, fast):
        lo, hi = hi, hi * 2
    if hi > cap:
        return lo
    while hi - lo > step:
        mid = (lo + hi) // 2 // 2 * 2
        lo, hi = (mid, hi) if one_step_fits(mid, length, device, fast) else (lo, mid)
    return lo


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/bench_train")
    p.add_argument("--lengths", default="1000,5000")
    p.add_argument("--batch", type=int, default=1024, help="encoder samples per step (two views of batch/2 recordings)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--warmup", type=int, default=8, help="steps left out of the median (compile, cudnn autotune)")
    p.add_argument("--profile", type=int, default=3, help="steps profiled for the GPU-busy fraction")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-search", action="store_true", help="skip the largest-batch search")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: length 250, batch 8, 3 steps, no compile/search")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    if args.quick:
        args.lengths, args.batch, args.steps, args.warmup, args.no_compile, args.no_search = "250", 8, 3, 1, True, True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for length in map(int, args.lengths.split(",")):
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            cache = synthetic_cache(Path(tmp) / "cache", n=4 * (args.batch // 2), length=length)
            for name in ("plain", "tscl"):
                prof = _profiler(device, args.warmup, args.profile)
                if prof is not None:
                    prof.start()
                if name == "plain":
                    times, wait = plain_loop(cache, args.batch, args.steps, device, prof), None
                else:
                    times, wait = tscl_loop(cache, args.batch, args.steps, device, Path(tmp) / "run",
                                            compile=not args.no_compile, prof=prof)
                if prof is not None:
                    prof.stop()
                timed = times[args.warmup:] or times
                row = {"length": length, "pipeline": name, "batch": args.batch,
                       "samples_per_s": args.batch / statistics.median(timed),
                       "gpu_busy": gpu_busy(prof) if prof is not None else None,
                       "data_wait_frac": statistics.median(wait[args.warmup:] or wait) if wait else None,
                       "max_batch": None if args.no_search or device.type != "cuda"
                       else largest_batch(length, device, fast=name == "tscl")}
                results.append(row)
                print(json.dumps(row))
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "environment": tscl.train.environment(device), "encoder": "xresnet1d50", "method": "simclr", "quick": args.quick,
              "steps": args.steps, "warmup": args.warmup, "compile": not args.no_compile, "results": results}
    (out / "bench_train.json").write_text(json.dumps(report, indent=2))
    plot(results, out / "bench_train.png", report["device"])
    return report


def plot(results, path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["length"] for r in results})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for k, (key, label) in enumerate((("samples_per_s", "samples/s"), ("max_batch", "largest batch"))):
        for j, name in enumerate(("plain", "tscl")):
            vals = [next((r[key] or 0 for r in results if r["length"] == n and r["pipeline"] == name), 0) for n in lengths]
            axes[k].bar(np.arange(len(lengths)) + 0.4 * j, vals, width=0.4, label=name)
        axes[k].set_xticks(np.arange(len(lengths)) + 0.2, [f"12×{n}" for n in lengths])
        axes[k].set_ylabel(label)
    axes[0].legend()
    fig.suptitle(f"xresnet1d50 SimCLR pretraining, {device}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
