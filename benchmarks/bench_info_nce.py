"""Fused Triton InfoNCE against the PyTorch reference, eager and compiled: time and peak memory.

Each measurement is one training step of the loss alone: ``info_nce(...)`` forward plus
``backward()`` into q, k (and a learnable temperature), median of ``--reps`` (>= 10) timed
runs after ``--warmup`` runs, timed with CUDA events. Peak memory is
``torch.cuda.max_memory_allocated()`` during the step minus what was allocated before it
(inputs and the bank). A step that runs out of memory is recorded as ``"oom"``.

Variants (bf16 embeddings, L2-normalised inside the call, N anchors per call):

=========  =====================================================================================
clip       q [N,D], k [N,D], pair i <-> i, symmetric (row and column losses)
ntxent     z [N,D] = N/2 samples x 2 views, ids = sample index, q = k = z, exclude_self
multipos   q [N,D], k [N,D], ids = patient with 2 recordings each (2 positives per anchor)
moco       q [N,D] with grad, k [N,D] momentum keys without grad, bank [65,536, D] of negatives
=========  =====================================================================================

Achieved TFLOP/s counts ``2 N M D`` per N x M x D matrix product, with the matmuls that the
fused kernel performs per direction: forward 1 over every column (keys and bank); backward
3 over the keys (recompute S, dS K, dS^T Q) and 2 over the bank (recompute S, dS B; the bank
gets no gradient), 2 over keys that need no gradient (MoCo's momentum keys)::

    flops = 2 D N [ M (1 + 3) + B (1 + 2) ]     per direction (keys needing a gradient)
    flops = 2 D N [ M (1 + 2) + B (1 + 2) ]     per direction (keys without a gradient)

summed over both directions for ``clip`` (the column direction has no bank). This nominal
count is used for every implementation, so TFLOP/s compares time (the fused symmetric loss
folds the column log-sum-exp into the row pass and shares the backward's recomputed tiles
between the two directions: 5 of the 8 nominal ``clip`` matmuls; the eager reference performs 3
per direction without recomputing).
The ceiling is a measured bf16 ``8192^3`` matmul on the same GPU.

    python benchmarks/bench_info_nce.py --out runs/bench_info_nce           # GPU, full sizes
    python benchmarks/bench_info_nce.py --quick --out runs/bench_info_nce   # GPU, small sizes
    TRITON_INTERPRET=1 python benchmarks/bench_info_nce.py --quick --device cpu --out /tmp/b   # smoke

Writes ``bench_info_nce.json`` (with ``kernel_configs``: the tile configs the fused kernels
launched, one per kernel, dtype and D) and ``bench_info_nce.png`` into ``--out``.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before Triton is imported

import torch  # noqa: E402

from tscl.kernels import info_nce  # noqa: E402


def environment(device):
    """``tscl.train.environment`` where it imports (it needs polars), else the same core fields."""
    try:
        from tscl.train import environment as env
    except ImportError:
        try:
            import triton
            triton_version = triton.__version__
        except ImportError:
            triton_version = None
        out = {"torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
               "device": str(device), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if device.type == "cuda":
            out["gpu"] = torch.cuda.get_device_name(device)
        return out
    return env(device)

VARIANTS = ("clip", "ntxent", "multipos", "moco")
IMPLS = ("fused", "eager", "compiled")


def make_inputs(variant, n, d, bank_size, dtype, device, seed=0):
    """Tensors and keyword arguments of one ``info_nce`` call; ``grads`` are the leaves that learn."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def emb(rows, grad=True):
        return torch.randn(rows, d, generator=gen, device=device, dtype=dtype).requires_grad_(grad)

    tau = torch.tensor(0.07, device=device, requires_grad=True)
    if variant == "clip":
        q, k = emb(n), emb(n)
        kw = dict(symmetric=True)
        return (q, k, None, None), kw, [q, k, tau], tau
    if variant == "ntxent":
        z = emb(n)
        ids = torch.arange(n, device=device) // 2
        return (z, z, ids, ids), dict(exclude_self=True), [z, tau], tau
    if variant == "multipos":
        q, k = emb(n), emb(n)
        ids = torch.arange(n, device=device) // 2
        return (q, k, ids, ids), {}, [q, k, tau], tau
    if variant == "moco":
        q, k = emb(n), emb(n, grad=False)
        bank = torch.randn(bank_size, d, generator=gen, device=device, dtype=dtype)
        return (q, k, None, None), dict(bank=bank), [q, tau], tau
    raise ValueError(variant)


def nominal_flops(variant, n, d, bank_size):
    """The formula of the module docstring."""
    if variant == "clip":
        return 2 * (2 * d * n * n * 4)
    if variant in ("ntxent", "multipos"):
        return 2 * d * n * n * 4
    return 2 * d * n * (n * 3 + bank_size * 3)  # moco: keys without grad, bank


def step_fn(impl, compile_backend):
    def step(args, kw, tau):
        return info_nce(*args, temperature=tau, backend="triton" if impl == "fused" else "reference", **kw)

    if impl == "compiled":
        torch._dynamo.reset()  # one compilation per configuration, never the recompile limit
        return torch.compile(step, backend=compile_backend, dynamic=False)
    return step


class Timer:
    def __init__(self, device):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t0)


def measure(impl, variant, n, d, bank_size, args):
    """Median fwd+bwd milliseconds and peak memory (MiB above the inputs) of one configuration."""
    device, dtype = args.device, torch.bfloat16
    row = dict(impl=impl, variant=variant, N=n, D=d, bank=bank_size if variant == "moco" else 0)
    cuda = device.startswith("cuda")
    call_args = kw = leaves = tau = fn = None
    try:
        call_args, kw, leaves, tau = make_inputs(variant, n, d, bank_size, dtype, device)
        fn = step_fn(impl, args.compile_backend)

        def run():
            for t in leaves:
                t.grad = None
            fn(call_args, kw, tau).backward()

        for _ in range(args.warmup):
            run()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        timer = Timer(device)
        times = [timer(run) for _ in range(args.reps)]
        ms = statistics.median(times)
        row.update(status="ok", ms=ms, ms_all=times,
                   tflops=nominal_flops(variant, n, d, row["bank"]) / (ms * 1e-3) / 1e12)
        if args.ceiling:
            row["frac_of_matmul_ceiling"] = row["tflops"] / args.ceiling
        if cuda:
            row["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    except torch.OutOfMemoryError:
        row.update(status="oom")
    except Exception as err:  # a failed compilation must not end the sweep
        row.update(status="error", error=f"{type(err).__name__}: {str(err)[:300]}")
    finally:
        call_args = kw = leaves = tau = fn = None  # free this configuration's tensors first
        if cuda:
            torch.cuda.empty_cache()
    return row


def matmul_ceiling(device, size, reps):
    """Measured bf16 matmul TFLOP/s (median of ``reps``) on this device."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    timer = Timer(device)
    for _ in range(3):
        a @ b
    ms = statistics.median(timer(lambda: a @ b) for _ in range(reps))
    return 2 * size**3 / (ms * 1e-3) / 1e12


def compiles_per_kernel():
    """The fused kernels' distinct launch configs per (kind, dtype, BLOCK_D) so far: 1 each unless
    runtime autotuning was opted into (``TSCL_INFO_NCE_AUTOTUNE=1``)."""
    try:
        from tscl.kernels.triton_info_nce import launch_log
    except ImportError:  # no Triton here
        return {}
    return {"/".join(map(str, key)): sorted(configs) for key, configs in sorted(launch_log().items())}


def _report(info, results):
    return json.dumps(dict(info=info, results=results, speedups=speedups(results),
                           kernel_configs=compiles_per_kernel()), indent=1)


def speedups(results):
    """fused time over eager and compiled time per (variant, N, D): the ratios a report quotes."""
    out = []
    ok = {(r["impl"], r["variant"], r["N"], r["D"]): r for r in results if r["status"] == "ok"}
    for (impl, variant, n, d), r in ok.items():
        if impl != "fused":
            continue
        row = dict(variant=variant, N=n, D=d)
        for other in ("eager", "compiled"):
            if (other, variant, n, d) in ok:
                row[f"{other}_over_fused_time"] = ok[(other, variant, n, d)]["ms"] / r["ms"]
                if "peak_mib" in r and "peak_mib" in ok[(other, variant, n, d)]:
                    row[f"{other}_over_fused_memory"] = ok[(other, variant, n, d)]["peak_mib"] / max(r["peak_mib"], 1e-9)
        out.append(row)
    return out


def _plot_line(column, rows, label):
    """One implementation's time, TFLOP/s and peak memory over N in one column of panels."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return
    xs = [r["N"] for r in ok]
    column[0].plot(xs, [r["ms"] for r in ok], marker="o", label=label)
    column[1].plot(xs, [r["tflops"] for r in ok], marker="o", label=label)
    if all("peak_mib" in r for r in ok):
        column[2].plot(xs, [r["peak_mib"] for r in ok], marker="o", label=label)
    for r in rows:
        if r["status"] == "oom":
            column[0].annotate("oom", (r["N"], column[0].get_ylim()[1]), fontsize=7)


def plot(results, ceiling, path):
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib missing: {path} not written")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(VARIANTS), figsize=(4.2 * len(VARIANTS), 10), squeeze=False)
    dims = sorted({r["D"] for r in results})
    for col, variant in enumerate(VARIANTS):
        for impl, d in [(impl, d) for impl in IMPLS for d in dims]:
            rows = [r for r in results if r["variant"] == variant and r["impl"] == impl and r["D"] == d]
            _plot_line([row[col] for row in axes], rows, f"{impl} D={d}")
        if ceiling:
            axes[1][col].axhline(ceiling, color="k", ls="--", lw=0.8, label="bf16 matmul")
        axes[0][col].set_title(variant)
        for row, ylabel in enumerate(("fwd+bwd ms", "TFLOP/s", "peak MiB")):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            if row != 1:
                ax.set_yscale("log")
            ax.set_xlabel("N")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_info_nce.json/.png")
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (interpreter smoke run)")
    parser.add_argument("--sizes", type=int, nargs="*", help="N values (default by --quick/--device)")
    parser.add_argument("--dims", type=int, nargs="*", help="D values")
    parser.add_argument("--bank", type=int, help="MoCo bank size (default 65,536)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--impls", nargs="*", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--reps", type=int, default=None, help="timed runs (median; default 10, 3 on cpu)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from an existing JSON in --out")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend of the reference (default inductor; aot_eager on cpu)")
    args = parser.parse_args(argv)

    cpu = args.device == "cpu"
    if not cpu and not torch.cuda.is_available():
        parser.error("no CUDA device; use --quick --device cpu with TRITON_INTERPRET=1 for a smoke run")
    if cpu:
        sizes, dims, bank = [32, 48], [16], 64
        args.warmup = min(args.warmup, 1)
    elif args.quick:
        sizes, dims, bank = [1024, 4096], [128], 8192
    else:
        sizes, dims, bank = [4096, 16384, 32768, 65536], [128, 256], 65536
    args.sizes, args.dims = args.sizes or sizes, args.dims or dims
    args.bank = args.bank or bank
    args.reps = args.reps or (3 if cpu else 10)
    args.compile_backend = args.compile_backend or ("aot_eager" if cpu else "inductor")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "bench_info_nce.json"
    if args.plot_only:
        saved = json.loads(json_path.read_text())
        plot(saved["results"], saved["info"]["matmul_ceiling_tflops"], args.out / "bench_info_nce.png")
        return 0

    ceiling = args.ceiling = matmul_ceiling(args.device, 256 if cpu else 8192, 3 if cpu else 20)
    info = dict(
        device=torch.cuda.get_device_name() if not cpu else platform.processor() or "cpu",
        environment=environment(torch.device(args.device)), interpreter=os.environ.get("TRITON_INTERPRET") == "1",
        dtype="bfloat16", reps=args.reps, warmup=args.warmup, bank=args.bank,
        matmul_ceiling_tflops=ceiling,
        flops_formula="per direction 2*D*N*[M*(1+3) + B*(1+2)] (keys with grad), 2*D*N*[M*(1+2) + B*(1+2)] "
                      "(keys without grad); clip sums both directions",
    )
    print(json.dumps(info), flush=True)
    results = []
    for variant in args.variants:
        for d in args.dims:
            for n in args.sizes:
                for impl in args.impls:
                    row = measure(impl, variant, n, d, args.bank, args)
                    results.append(row)
                    shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "ms_all"}
                    print(json.dumps(shown), flush=True)
                    # rewritten after every row: a sweep stopped by a time limit keeps what it measured
                    json_path.write_text(_report(info, results))
    json_path.write_text(_report(info, results))
    plot(results, ceiling, args.out / "bench_info_nce.png")
    print(f"wrote {args.out / 'bench_info_nce.json'} and {args.out / 'bench_info_nce.png'}")
    failed = [r for r in results if r["status"] == "error"]
    return 1 if failed and cpu else 0


if __name__ == "__main__":
    sys.exit(main())
