"""The device checks behind ``benchmarks/gpu_check.sh``: correctness at real sizes, the loss
benchmark, and an end-to-end training step.

Subcommands (each writes JSON, and a PNG where it plots, into ``--out``)::

    python benchmarks/gpu_check.py correctness --out DIR [--dry-run]
    python benchmarks/gpu_check.py bench-info-nce -- <bench_info_nce.py arguments>
    python benchmarks/gpu_check.py train --out DIR [--dry-run]

``correctness``: the fused kernel on bf16 (and fp32) inputs at real sizes against the
reference run in float64 on the same inputs (already normalised and rounded, so only
accumulation differs): per-row loss error, relative-norm error of dq, dk and dtau, and a NaN
placed in the bank must give a NaN loss. Exit status 1 on any failure.

``train``: ``benchmarks/bench_train.py`` where its imports (polars, wfdb) are present;
otherwise a self-contained training step at the same setting: xresnet1d50 on 12 x 1000
inputs already on the device, batch 1024 (two views of 512 recordings), bf16 autocast,
compiled encoder, AdamW, SimCLR's NT-Xent through the fused kernel against the eager
reference loss: steps/s and the GPU-busy fraction from the profiler.

Nothing here imports polars or wfdb, and ``tscl.kernels`` is found from a plain checkout
(the project need not be installed): the repository root is put on ``tscl``'s package path.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if "--dry-run" in sys.argv or ("--device" in sys.argv and "cpu" in sys.argv):
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported


def bootstrap() -> None:
    """Make ``tscl.kernels`` (``kernels/``) and ``tscl.benchmarks`` importable from a checkout."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if importlib.util.find_spec("tscl.kernels") is None:
        import tscl

        tscl.__path__.append(str(ROOT))  # tscl.kernels -> kernels/, tscl.benchmarks -> benchmarks/


bootstrap()

import torch  # noqa: E402


def environment(device: str) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {"torch": torch.__version__, "triton": triton_version, "device": device,
           "interpreter": os.environ.get("TRITON_INTERPRET") == "1", "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["sms"] = torch.cuda.get_device_properties(0).multi_processor_count
    return env


# ----------------------------------------------------------------------------- correctness
def _cases(dry: bool):
    """(name, N, M, D, bank, options, dtype): the methods' call shapes at real sizes.

    ``positives`` / ``split`` in the options force the kernel's path (``tn.POSITIVES``) and its
    column split count (``tn.FORCE_SPLIT``); otherwise the sizes choose (at these sizes: the
    positives out of the loop, split-K where the row programs do not fill the SMs, e.g. MoCo)."""
    if dry:
        return [
            ("clip", 40, 40, 16, 0, dict(symmetric=True, ids=None), torch.bfloat16),
            ("ntxent", 48, 48, 16, 0, dict(exclude_self=True, ids="pairs"), torch.bfloat16),
            ("moco", 24, 24, 16, 80, dict(ids=None), torch.bfloat16),
            ("pmq-mask", 32, 32, 16, 40, dict(ids="patients", bank_ids=True, bank_same_id="mask"), torch.bfloat16),
            ("multipos-fp32", 33, 33, 24, 0, dict(ids="patients"), torch.float32),
            ("moco-separable-split3", 24, 24, 16, 80, dict(ids=None, positives="separable", split=3), torch.bfloat16),
            ("pmq-positive-loop-split2", 32, 32, 16, 40, dict(ids="patients", bank_ids=True, positives="loop",
                                                            split=2), torch.bfloat16),
            ("sym-ntxent-separable-split2", 30, 30, 16, 0, dict(symmetric=True, exclude_self=True, ids="pairs",
                                                              positives="separable", split=2), torch.float32),
        ]
    return [
        ("clip", 8192, 8192, 128, 0, dict(symmetric=True, ids=None), torch.bfloat16),
        ("ntxent", 8192, 8192, 256, 0, dict(exclude_self=True, ids="pairs"), torch.bfloat16),
        ("multipos", 4096, 4096, 128, 0, dict(ids="patients"), torch.bfloat16),
        ("moco", 256, 256, 128, 65536, dict(ids=None), torch.bfloat16),
        ("pmq-positive", 1024, 1024, 128, 16384, dict(ids="patients", bank_ids=True), torch.bfloat16),
        ("pmq-mask", 1024, 1024, 128, 16384, dict(ids="patients", bank_ids=True, bank_same_id="mask"),
         torch.bfloat16),
        ("symmetric-ntxent-d512", 2048, 2048, 512, 0, dict(symmetric=True, exclude_self=True, ids="pairs"),
         torch.bfloat16),
        ("multipos-fp32", 2048, 2048, 128, 4096, dict(ids="patients"), torch.float32),
        # the same shapes on the other paths: positives in the loop, and split-K off / forced
        ("moco-loop-nosplit", 256, 256, 128, 65536, dict(ids=None, positives="loop", split=1), torch.bfloat16),
        ("multipos-split16", 4096, 4096, 128, 0, dict(ids="patients", split=16), torch.bfloat16),
        ("symmetric-ntxent-split8", 2048, 2048, 256, 0, dict(symmetric=True, exclude_self=True, ids="pairs",
                                                             split=8), torch.bfloat16),
    ]


def _kernel_path(n, m, d, nb, opts, device):
    """Force (and report) the fused kernel's path for one case; returns the previous settings."""
    from tscl.kernels import triton_info_nce as tn

    saved = (tn.POSITIVES, tn.FORCE_SPLIT)
    tn.POSITIVES = opts.get("positives", "auto")
    tn.FORCE_SPLIT = opts.get("split")
    info = dict(positives="separable" if tn._separable(n, m, nb) else "loop",
                split=tn._split(n, m + nb, d, torch.device(device)))
    return saved, info


def _inputs(n, m, d, nb, opts, dtype, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def unit(rows):  # normalised in float64, then rounded once: both sides see the same values
        x = torch.randn(rows, d, generator=gen, dtype=torch.float64)
        return torch.nn.functional.normalize(x, dim=-1).to(dtype).to(device)

    q = unit(n)
    k = q if opts.get("exclude_self") else unit(m)
    ids = opts.get("ids")
    if ids == "pairs":
        q_ids = k_ids = (torch.arange(n) // 2).to(device)
    elif ids == "patients":
        q_ids = torch.randint(0, max(2, n // 4), (n,), generator=gen).to(device)
        k_ids = q_ids if opts.get("exclude_self") else torch.randint(0, max(2, n // 4), (m,), generator=gen).to(device)
    else:
        q_ids = k_ids = None
    bank = unit(nb) if nb else None
    bank_ids = torch.randint(0, max(2, n // 4), (nb,), generator=gen).to(device) if nb and opts.get("bank_ids") else None
    return q, k, q_ids, k_ids, bank, bank_ids


def _run(backend, q, k, q_ids, k_ids, bank, bank_ids, opts, weight, tau=0.07):
    q = q.detach().clone().requires_grad_()
    k = q if opts.get("exclude_self") else k.detach().clone().requires_grad_()
    t = torch.tensor(tau, device=q.device, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
                     requires_grad=True)
    from tscl.kernels import info_nce

    out = info_nce(q, k, q_ids, k_ids, temperature=t, symmetric=opts.get("symmetric", False),
                   exclude_self=opts.get("exclude_self", False), bank=bank, bank_ids=bank_ids,
                   bank_same_id=opts.get("bank_same_id", "positive"), normalize=False, reduction="none",
                   backend=backend)
    (out * weight.to(out.dtype)).sum().backward()
    grads = [q.grad, None if opts.get("exclude_self") else k.grad, t.grad]
    return out.detach(), grads


def _rel(a, b):
    if a is None or b is None:
        return 0.0
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def correctness(args) -> int:
    device = "cpu" if args.dry_run else "cuda"
    results, failed = [], 0
    for name, n, m, d, nb, opts, dtype in _cases(args.dry_run):
        t0 = time.perf_counter()
        q, k, q_ids, k_ids, bank, bank_ids = _inputs(n, m, d, nb, opts, dtype, device)
        total = n + m if opts.get("symmetric") else n
        weight = torch.randn(total, generator=torch.Generator().manual_seed(1)).to(device)
        saved, path = _kernel_path(n, m, d, nb, opts, device)
        try:
            got, got_g = _run("triton", q, k, q_ids, k_ids, bank, bank_ids, opts, weight)
        finally:
            from tscl.kernels import triton_info_nce as tn

            tn.POSITIVES, tn.FORCE_SPLIT = saved
        as64 = [t.double() if t is not None else None for t in (q, k, bank)]
        want, want_g = _run("reference", as64[0], as64[1], q_ids, k_ids, as64[2], bank_ids, opts, weight.double())
        # tolerances: fp32 accumulation against float64; gradients are stored in the input dtype
        loss_err = float((got.double() - want).abs().max())
        errs = {g: _rel(a, b) for g, a, b in zip(("dq", "dk", "dtau"), got_g, want_g)}
        grad_tol = 1e-2 if dtype == torch.bfloat16 else 1e-4
        ok = loss_err < 2e-3 and all(e < grad_tol for e in errs.values()) and bool(torch.isfinite(got).all())
        row = dict(case=name, N=n, M=m, D=d, bank=nb, dtype=str(dtype).replace("torch.", ""), **path,
                   loss_max_abs_err=loss_err, **{f"{g}_rel_err": e for g, e in errs.items()},
                   ok=ok, seconds=time.perf_counter() - t0)
        failed += not ok
        results.append(row)
        print(json.dumps(row), flush=True)
    # a NaN only in the bank (MoCo's queue) must make the loss NaN, not a finite wrong number
    n, m, d, nb, opts, dtype = _cases(args.dry_run)[2][1:]
    q, k, q_ids, k_ids, bank, bank_ids = _inputs(n, m, d, nb, opts, dtype, device)
    bank[nb // 3, 0] = float("nan")
    from tscl.kernels import info_nce, nonfinite_inputs

    loss = info_nce(q, k, temperature=0.07, bank=bank, backend="triton")
    nan_ok = bool(torch.isnan(loss)) and nonfinite_inputs(q=q, k=k, bank=bank) == ["bank"]
    failed += not nan_ok
    print(json.dumps(dict(case="nan-in-bank", ok=nan_ok)), flush=True)
    report = dict(environment=environment(device), results=results, nan_in_bank_ok=nan_ok, failed=failed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "correctness.json").write_text(json.dumps(report, indent=1))
    print(f"correctness: {len(results) + 1 - failed}/{len(results) + 1} ok -> {args.out / 'correctness.json'}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- train step
def train_step_bench(args) -> dict:
    from tscl.benchmarks.profiling import gpu_busy
    from tscl.encoders import ProjectionHead, build_encoder
    from tscl.kernels import info_nce

    dry = args.dry_run
    device = torch.device("cpu" if dry else "cuda")
    batch, length = (8, 250) if dry else (args.batch, args.length)
    steps, warmup, profiled = (3, 1, 0) if dry else (args.steps, args.warmup, 3)
    results = []
    for loss_impl in ("fused", "eager"):
        torch.manual_seed(0)
        encoder = build_encoder("xresnet1d50", 12).to(device)
        head = ProjectionHead(encoder.embed_dim, encoder.embed_dim, 128).to(device)
        opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-3)
        run_encoder = encoder if dry or args.no_compile else torch.compile(encoder)
        x = torch.randn(batch, 12, length, device=device)
        ids = torch.arange(batch // 2, device=device).repeat(2)
        backend = "triton" if loss_impl == "fused" else "reference"

        def step(head=head, run_encoder=run_encoder, x=x, opt=opt):  # bound now: the loop deletes them
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not dry):
                z = head(run_encoder(x))
                loss = info_nce(z, z, ids, ids, temperature=0.1, exclude_self=True, backend=backend)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            loss = step()
            float(loss.detach())  # the trainer logs the loss every step
            times.append(time.perf_counter() - t0)
        busy = None
        if profiled and device.type == "cuda":
            torch.cuda.synchronize()
            acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            with torch.profiler.profile(activities=acts) as prof:
                for _ in range(profiled):
                    float(step().detach())
            busy = gpu_busy(prof)
        timed = times[warmup:] or times
        row = dict(loss=loss_impl, batch=batch, length=length, steps=steps, warmup=warmup,
                   samples_per_s=batch / statistics.median(timed), step_ms=1e3 * statistics.median(timed),
                   gpu_busy=busy, final_loss=float(loss), compile=not (dry or args.no_compile))
        results.append(row)
        print(json.dumps(row), flush=True)
        del encoder, head, opt, run_encoder, x
        if device.type == "cuda":
            torch.cuda.empty_cache()
    fused, eager = results
    report = dict(environment=environment(str(device)), encoder="xresnet1d50", method="simclr (NT-Xent)",
                  amp="bf16" if not dry else "off (cpu dry run)", results=results,
                  fused_over_eager_samples_per_s=fused["samples_per_s"] / eager["samples_per_s"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_step.json").write_text(json.dumps(report, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(7, 3))
        names = [r["loss"] for r in results]
        axes[0].bar(names, [r["samples_per_s"] for r in results])
        axes[0].set_ylabel("samples/s")
        axes[1].bar(names, [r["gpu_busy"] or 0 for r in results])
        axes[1].set_ylabel("GPU-busy fraction")
        fig.suptitle(f"xresnet1d50 12x{length}, batch {batch}, {report['amp']}", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.out / "train_step.png", dpi=120)
        plt.close(fig)
    except ImportError:
        print("matplotlib missing: train_step.png not written")
    return report


def train(args) -> int:
    def importable(name):
        try:
            return importlib.util.find_spec(name) is not None
        except ImportError:
            return False

    have = importable("polars") and importable("wfdb")
    if have and not args.dry_run and not args.step_only:
        import runpy

        sys.argv = ["bench_train.py", "--out", str(args.out), "--lengths", str(args.length), "--batch",
                    str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--no-search"]
        try:
            runpy.run_path(str(ROOT / "benchmarks" / "bench_train.py"), run_name="__main__")
        except Exception as err:  # the self-contained step below still runs
            print(f"bench_train.py failed: {type(err).__name__}: {err}", flush=True)
    else:
        print("bench_train.py needs polars and wfdb (absent here, or --dry-run/--step-only): "
              "running the self-contained training step instead", flush=True)
    train_step_bench(args)
    return 0


def bench_info_nce(argv) -> int:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_info_nce as b

    return b.main(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench-info-nce":
        rest = argv[1:]
        return bench_info_nce(rest[1:] if rest[:1] == ["--"] else rest)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=("correctness", "train"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, Triton interpreter")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--length", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=6)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--step-only", action="store_true", help="skip bench_train.py even where it can run")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device: use --dry-run")
    return correctness(args) if args.command == "correctness" else train(args)


if __name__ == "__main__":
    sys.exit(main())
