"""Compile the InfoNCE kernels ahead of time for sm_90 on a machine without a GPU: registers,
spills and the SASS of every autotune config, to prune the configs that spill.

For each kernel (forward, dq, dk), head dim D, dtype and autotune config this runs
``triton.compile`` for ``GPUTarget("cuda", 90, 32)``, then the ``ptxas -v`` and
``cuobjdump -sass`` that Triton's wheel ships (``triton/backends/nvidia/bin``) on the result,
and reports registers per thread, spill stores/loads (bytes), shared memory, and the
instruction count of the innermost loops in the SASS: ``instr/elem`` is the main loop's
SASS instructions x threads per program / (BLOCK_M x BLOCK_N), i.e. thread-instructions
issued per score element (the loop with the most instructions). A loop body also holds the
``if`` blocks that run on some tiles only (the masked edge/diagonal tile of the separable path):
``instr/elem`` counts them (the masked tile), ``fast/elem`` leaves out what a conditional forward
branch inside the loop skips (the tiles without a mask, i.e. nearly all of them).
``--path`` picks where the positives are found: ``separable`` (per-id sums outside the loop,
what runs at real sizes), ``loop`` (id compare per element, small problems) or ``mask``
(bank_same_id="mask": per-element bank mask).

    python benchmarks/aot_kernels.py                       # the table, all configs, D 64..512
    python benchmarks/aot_kernels.py --dims 128 --kinds fwd --sass /tmp/sass   # also dump SASS
    python benchmarks/aot_kernels.py --json out.json       # machine-readable rows
    python benchmarks/aot_kernels.py --check               # exit 1 if an admissible config spills
    python benchmarks/aot_kernels.py --kinds fwd --dims 128 --path loop   # the in-loop positives

``--check`` compiles only what ``_prune`` keeps (what the autotuner can pick) and fails on a
spill. Works with Triton 3.6 through 3.9 (run it with that Triton's Python). No GPU needed;
``TRITON_INTERPRET`` must be unset.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # the kernels module must see the real (non-interpreted) configs
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is its default

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

try:
    from tscl.kernels import triton_info_nce as tn  # noqa: E402
except ImportError:  # a plain checkout: tscl.kernels lives in kernels/
    import tscl

    tscl.__path__.append(str(ROOT))
    from tscl.kernels import triton_info_nce as tn  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
_TY = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}

KERNELS = {  # kind -> (autotuned kernel, flags of the representative call)
    "fwd": (tn._info_nce_fwd, dict(EXCLUDE_SELF=False, HAS_BANK=True)),
    "dq": (tn._info_nce_bwd_dq, dict(EXCLUDE_SELF=False, HAS_BANK=True, SYMMETRIC=True)),
    "dk": (tn._info_nce_bwd_dk, dict(EXCLUDE_SELF=False, HAS_BANK=True, SYMMETRIC=True)),
}
PATHS = {  # --path -> flags: where the positives are found (bank with ids, bank_same_id="positive")
    "separable": dict(POS_IN_LOOP=False, BANK_MODE=0),  # per-id sums outside the loop (auto at real sizes)
    "loop": dict(POS_IN_LOOP=True, BANK_MODE=1),        # id compare per score element (small problems)
    "mask": dict(POS_IN_LOOP=False, BANK_MODE=2),       # bank_same_id="mask": per-element bank mask
}


def _tool(name):
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.exists() else name


def _jit(kernel):
    return kernel.fn if hasattr(kernel, "fn") else kernel


def _divisible():
    try:
        from triton.compiler import make_backend

        return make_backend(TARGET).parse_attr("D")
    except Exception:  # older Tritons spell the attribute directly
        return [["tt.divisibility", 16]]


def source(kind, dtype, d, cfg, flags=None, path="separable"):
    """The ASTSource of one kernel specialised as the JIT would for contiguous inputs."""
    kernel, base = KERNELS[kind]
    fn = _jit(kernel)
    flags = dict(base, **PATHS[path], **(flags or {}))
    consts = dict(flags, PRECISION=tn._precision(dtype), UPCAST_DOT=False, IDX64=False,
                  BLOCK_D=tn._block_d(d), **cfg.kwargs)
    signature, constexprs, attrs = {}, {}, {}
    div = _divisible()
    for i, name in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            signature[name] = "constexpr"
            if name in consts:
                constexprs[name] = consts[name]
            else:  # a flag this kernel does not take under that name
                raise KeyError(f"{kind}: no value for constexpr {name}")
        elif name.endswith("d") and name.startswith("stride_"):
            signature[name] = "constexpr"  # unit stride: specialised to 1 by the JIT
            constexprs[name] = 1
        elif name in ("Q", "K", "BANK", "DQ", "DK"):
            signature[name] = _TY[dtype]
            attrs[(i,)] = div
        elif name in ("QID", "KID", "BID", "NPOS", "NPOS_C"):
            signature[name] = "*i64"
            attrs[(i,)] = div
        elif name == "PCNT":
            signature[name] = "*i32"
            attrs[(i,)] = div
        elif name.isupper() and name not in ("N", "M", "B", "D", "SIZE_KEY"):
            signature[name] = "*fp32"
            attrs[(i,)] = div
        else:  # N, M, B, D, row strides
            signature[name] = "i32"
            if name == "D" or name.startswith("stride_"):
                attrs[(i,)] = div if d % 16 == 0 else attrs.get((i,), [])
    attrs = {k: v for k, v in attrs.items() if v}
    return ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)


_PTXAS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _ptxas():
    """The ptxas this Triton uses for sm_90 (3.9 ships a CUDA 13 one as ``ptxas-blackwell``)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        tool = get_ptxas(TARGET.arch)
        return tool.path if hasattr(tool, "path") else tool[0]
    except Exception:
        return _tool("ptxas")


def ptxas_stats(ptx: str, workdir: Path):
    src = workdir / "k.ptx"
    src.write_text(ptx)
    arch = re.search(r"\.target (sm_\w+)", ptx).group(1)
    out = subprocess.run([_ptxas(), "-v", f"--gpu-name={arch}", str(src), "-o", str(workdir / "k.cubin")],
                         capture_output=True, text=True, check=True)
    log = out.stderr + out.stdout
    regs = max(int(r) for r in _PTXAS.findall(log))
    spills = [tuple(map(int, s)) for s in _SPILL.findall(log)]
    store, load = (max(s[0] for s in spills), max(s[1] for s in spills)) if spills else (0, 0)
    return regs, store, load, log


def sass_of(cubin: bytes, workdir: Path) -> str:
    path = workdir / "k2.cubin"
    path.write_bytes(cubin)
    return subprocess.run([_tool("cuobjdump"), "-sass", str(path)], capture_output=True, text=True, check=True).stdout


_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


def loops(sass: str):
    """Innermost loops as (first, last) instruction indices from backward branches, with opcodes,
    and for each loop the instructions that a conditional forward branch inside it can skip
    (an ``if`` block such as the masked-tile path); returns ``([(first, last, ops, skippable)], ops)``."""
    addr, ops = [], []
    for m in _INSTR.finditer(sass):
        addr.append(int(m.group(1), 16))
        ops.append(m.group(3))
    index = {a: i for i, a in enumerate(addr)}
    found, forward = [], []
    for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?BRA(\.\w+)*\s+(`\(\.L_x_\d+\)|0x[0-9a-f]+)", sass):
        src = int(m.group(1), 16)
        label = m.group(4)
        if label.startswith("0x"):
            dst = int(label, 16)
        else:  # cuobjdump prints labels: find the label's address
            lab = re.search(re.escape(label.strip("`()")) + r":\s*\n\s*/\*([0-9a-f]{4,})\*/", sass)
            if not lab:
                continue
            dst = int(lab.group(1), 16)
        if dst < src and dst in index and src in index:
            found.append((index[dst], index[src]))
        elif dst > src and m.group(2) and dst in index and src in index:
            forward.append((index[src], index[dst]))
    inner = [lp for lp in found if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in found)]
    out = []
    for a, b in sorted(inner):
        skipped = set()
        for i, t in forward:
            if a <= i < t <= b:
                skipped.update(range(i + 1, t))
        out.append((a, b, ops[a:b + 1], len(skipped)))
    return out, ops


def analyse(kind, dtype, d, cfg, sass_dir=None, path="separable"):
    src = source(kind, dtype, d, cfg, path=path)
    compiled = triton.compile(src, target=TARGET, options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        regs, store, load, _ = ptxas_stats(compiled.asm["ptx"], tmp)
        sass = sass_of(compiled.asm["cubin"], tmp)
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    inner, ops = loops(sass)
    main = max(inner, key=lambda lp: len(lp[2]), default=None)
    threads = 32 * cfg.num_warps
    row = dict(kind=kind, path=path, dtype=str(dtype).replace("torch.", ""), D=d, BLOCK_M=bm, BLOCK_N=bn,
               warps=cfg.num_warps, stages=cfg.num_stages, regs=regs, spill_store=store, spill_load=load,
               shared=compiled.metadata.shared if hasattr(compiled.metadata, "shared") else None,
               sass_total=len(ops), loops=[len(lp[2]) for lp in inner],
               main_loop=len(main[2]) if main else None,
               instr_per_elem=round(len(main[2]) * threads / (bm * bn), 2) if main else None,
               fast_path=len(main[2]) - main[3] if main else None,
               fast_per_elem=round((len(main[2]) - main[3]) * threads / (bm * bn), 2) if main else None,
               mma=sum(op.startswith(("HGMMA", "HMMA", "WGMMA")) for op in main[2]) if main else None,
               mufu=sum(op.startswith("MUFU") for op in main[2]) if main else None)
    if sass_dir is not None:
        sass_dir.mkdir(parents=True, exist_ok=True)
        (sass_dir / f"{kind}_{path}_{row['dtype']}_D{d}_{bm}x{bn}_w{cfg.num_warps}_s{cfg.num_stages}.sass").write_text(sass)
    return row


def admissible(kind, dtype, d, path="separable"):
    """The configs the autotuner can pick for this call (after ``_prune``)."""
    q = torch.empty(1, dtype=dtype, device="meta")
    return tn._prune(tn._configs(kind), {"Q": q, "BLOCK_D": tn._block_d(d)}, BLOCK_D=tn._block_d(d), KIND=kind,
                     **PATHS[path])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", nargs="*", default=list(KERNELS), choices=list(KERNELS))
    p.add_argument("--dims", type=int, nargs="*", default=[64, 128, 256, 512])
    p.add_argument("--dtypes", nargs="*", default=["bfloat16"], choices=["bfloat16", "float16", "float32"])
    p.add_argument("--path", nargs="*", default=["separable"], choices=list(PATHS),
                   help="where the positives are found: separable (auto at real sizes), loop, or the bank mask")
    p.add_argument("--all", action="store_true", help="every config, not only those _prune admits")
    p.add_argument("--check", action="store_true", help="exit 1 if an admissible config spills")
    p.add_argument("--sass", type=Path, help="folder to write each config's SASS into")
    p.add_argument("--json", type=Path, help="write the rows as JSON")
    args = p.parse_args(argv)

    rows = []
    print(f"triton {triton.__version__}, target sm_{TARGET.arch}, ptxas {_ptxas()}")
    header = ("kind", "path", "dtype", "D", "BLOCK_M", "BLOCK_N", "warps", "stages", "regs", "spill_store",
              "spill_load", "main_loop", "instr_per_elem", "fast_path", "fast_per_elem", "admissible")
    print(" ".join(f"{h:>8}" for h in header))
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for kind in args.kinds:
            for path in args.path:
                for d in args.dims:
                    ok = admissible(kind, dtype, d, path)
                    keys = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in ok}
                    for cfg in (tn._configs(kind) if args.all and not args.check else ok):
                        key = (cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages)
                        try:
                            row = analyse(kind, dtype, d, cfg, args.sass, path)
                        except Exception as err:  # an out-of-resources config fails to compile: report it
                            row = dict(kind=kind, path=path, dtype=dtype_name, D=d, BLOCK_M=key[0], BLOCK_N=key[1],
                                       warps=key[2], stages=key[3], error=f"{type(err).__name__}: {str(err)[:200]}")
                        row["admissible"] = key in keys
                        rows.append(row)
                        print(" ".join(f"{str(row.get(h, '-')):>8}" for h in header), flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(triton=triton.__version__, rows=rows), indent=1))
    bad = [r for r in rows if r["admissible"] and (r.get("error") or r.get("spill_store") or r.get("spill_load"))]
    for r in bad:
        print("SPILL/ERROR in an admissible config:", r)
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
