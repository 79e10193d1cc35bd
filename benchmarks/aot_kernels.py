"""Compile the InfoNCE kernels ahead of time for sm_90 on a machine without a GPU: registers,
spills and the SASS of every tile config, to build and check the static config table.

For each kernel (``fwd``, ``fwd_loop``, ``dq``, ``dk``, ``segsum``), head dim D, dtype, tile config and kernel
variant (the flags a call can set) this runs ``triton.compile`` for ``GPUTarget("cuda", 90, 32)``,
then the ``cuobjdump -res-usage`` and ``cuobjdump -sass`` that Triton's wheel ships on the cubin, and
reports registers per thread, the stack frame and local memory per thread (bytes: spilled
registers, a Triton kernel has nothing else there) and the innermost loops of the SASS:
``instr/elem`` is the main loop's SASS instructions x threads per program / (BLOCK_M x BLOCK_N),
i.e. thread-instructions issued per score element (the loop with the most instructions). A loop
body also holds the ``if`` blocks that run on some tiles only (the masked edge and diagonal
tiles): ``instr/elem`` counts them, ``fast/elem`` leaves out what a conditional forward branch
inside the loop skips (the cost of the unmasked tiles, i.e. nearly all of them).

Variants (``VARIANTS``): the first of each kernel is the representative call the table is
ranked on (fwd: keys and a bank with ids, positives separable; fwd_loop: the same forward with
the positives found in the loop, exclude_self; dq and dk: symmetric with a bank whose same-id
entries are positives); the others are the flags that add registers (the bank mask,
exclude_self, int64 offsets, a float temperature, D below BLOCK_D). A config is admitted when
every variant compiles without a spill. (int64 offsets need an operand of 2**31 elements, where
the automatic rule always takes the separable path, so fwd_loop is measured with int32 offsets.)

    python benchmarks/aot_kernels.py --kinds dq --dims 128            # every candidate, main variant
    python benchmarks/aot_kernels.py --write-table                    # measure and (re)write this Triton's rows
    python benchmarks/aot_kernels.py --check                          # the table's configs, every variant
    python benchmarks/aot_kernels.py --check --cache rows.json        # reuse rows compiled before (same source)
    python benchmarks/aot_kernels.py --kinds fwd --dims 128 --sass /tmp/sass   # also dump SASS

``--write-table`` ranks the candidates of each (kernel, dtype, D) by ``instr/elem`` on the main
variant (spill-free ones only), then compiles the other variants of the best ones in that order
until two pass (one for fwd_loop, fp16 and fp32); they become the table's admitted list (what ``TSCL_INFO_NCE_AUTOTUNE=1`` tunes
over) and the first its chosen config, written to ``kernels/config_table.py`` under this Triton
version (other versions' rows are kept; ``--resume`` also keeps this version's). fp16 tries bf16's
ranking (the same SASS but for the conversions) and checks it on every variant. ``--check`` compiles each admitted config of the
table for this Triton version on every variant, prints the chosen config per kernel with its
``instr/elem``, and exits 1 on a spill, an error, or a missing row. Works with Triton 3.6 through
3.9 (run it with that Triton's Python). No GPU needed; ``TRITON_INTERPRET`` must be unset.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pprint
import re
import subprocess
import sys
import tempfile
import time
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
ARCH = "sm_90"
TABLE_PATH = ROOT / "kernels" / "config_table.py"
DIMS = (64, 128, 256, 512)
_TY = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}

KERNELS = {"fwd": tn._info_nce_fwd, "fwd_loop": tn._info_nce_fwd, "dq": tn._info_nce_bwd_dq,
           "dk": tn._info_nce_bwd_dk, "segsum": tn._segment_sum_kernel}
_BASE = dict(TAU_PTR=True, IDX64=False, EVEN_D=True)
VARIANTS = {  # kind -> [(name, flags)], the first is the representative call the table is ranked on
    "fwd": [  # positives separable (every call with N * (M + B) >= 2**20), and the column pass of CLIP
        ("separable", dict(EXCLUDE_SELF=False, HAS_BANK=True, BANK_MODE=0, POS_IN_LOOP=False)),
        ("mask", dict(EXCLUDE_SELF=False, HAS_BANK=True, BANK_MODE=2, POS_IN_LOOP=False)),
        ("exclude-self-int64", dict(EXCLUDE_SELF=True, HAS_BANK=True, BANK_MODE=0, POS_IN_LOOP=False, TAU_PTR=False,
                                    IDX64=True, EVEN_D=False)),
    ],
    "fwd_loop": [  # positives found in the loop (smaller problems)
        ("loop", dict(EXCLUDE_SELF=True, HAS_BANK=True, BANK_MODE=1, POS_IN_LOOP=True)),
        ("loop-mask", dict(EXCLUDE_SELF=False, HAS_BANK=True, BANK_MODE=2, POS_IN_LOOP=True, TAU_PTR=False,
                           EVEN_D=False)),
    ],
    "dq": [
        ("symmetric-bank", dict(EXCLUDE_SELF=False, HAS_BANK=True, BANK_MODE=1, SYMMETRIC=True)),
        ("exclude-self-mask", dict(EXCLUDE_SELF=True, HAS_BANK=True, BANK_MODE=2, SYMMETRIC=True, TAU_PTR=False)),
        ("plain-int64", dict(EXCLUDE_SELF=False, HAS_BANK=True, BANK_MODE=0, SYMMETRIC=False, IDX64=True,
                             EVEN_D=False)),
    ],
    "dk": [
        ("symmetric", dict(EXCLUDE_SELF=False, SYMMETRIC=True)),
        ("exclude-self-int64", dict(EXCLUDE_SELF=True, SYMMETRIC=True, IDX64=True, TAU_PTR=False)),
        ("plain", dict(EXCLUDE_SELF=False, SYMMETRIC=False, EVEN_D=False)),
    ],
    "segsum": [("bank", dict(HAS_Y=True)), ("int64", dict(HAS_Y=True, IDX64=True))],
}
_POINTERS = {"Q", "K", "BANK", "DQ", "DK", "X", "Y"}  # in the compute dtype
_I32 = {"QC", "KC", "BC", "PCNT", "START", "CNT"}
_I64 = {"ORDER"}
_INTS = {"N", "M", "B", "D"}


def _tool(name):
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.exists() else name


def _divisible():
    try:
        from triton.compiler import make_backend

        return make_backend(TARGET).parse_attr("D")
    except Exception:  # older Tritons spell the attribute directly
        return [["tt.divisibility", 16]]


def source(kind, dtype, d, cfg, flags):
    """The ASTSource of one kernel specialised as the JIT would for contiguous inputs."""
    fn = KERNELS[kind]
    consts = dict(_BASE, PRECISION=tn._precision(dtype), UPCAST_DOT=False, BLOCK_D=tn._block_d(d), **flags,
                  BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"])
    signature, constexprs, attrs = {}, {}, {}
    div = _divisible()
    for i, name in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            signature[name] = "constexpr"
            if name not in consts:  # a flag this kernel does not take under that name
                raise KeyError(f"{kind}: no value for constexpr {name}")
            constexprs[name] = consts[name]
        elif name.startswith("stride_") and name.endswith("d"):
            signature[name] = "constexpr"  # unit stride: specialised to 1 by the JIT
            constexprs[name] = 1
        elif name == "tau_value":
            signature[name] = "fp32"
        elif name in _INTS or name.startswith("stride_"):
            signature[name] = "i32"
            if name == "D" or name.startswith("stride_"):
                if d % 16 == 0:
                    attrs[(i,)] = div
        else:
            signature[name] = (_TY[dtype] if name in _POINTERS else "*i32" if name in _I32
                               else "*i64" if name in _I64 else "*fp32")
            attrs[(i,)] = div
    return ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)


_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _ptxas():
    """The ptxas this Triton uses for sm_90 (3.9 ships a CUDA 13 one as ``ptxas-blackwell``)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        tool = get_ptxas(TARGET.arch)
        return tool.path if hasattr(tool, "path") else tool[0]
    except Exception:
        return _tool("ptxas")


@functools.lru_cache(maxsize=None)
def _ptxas_version():
    out = subprocess.run([_ptxas(), "--version"], capture_output=True, text=True).stdout
    found = re.search(r"release ([\d.]+)", out)
    return found.group(1) if found else "?"


def resource_usage(cubin: bytes, workdir: Path):
    """Registers per thread, stack frame and local memory per thread (bytes) and shared memory of the
    compiled kernel, from ``cuobjdump -res-usage`` (the cubin Triton's own ptxas made). A Triton
    kernel has no local arrays or calls, so a stack frame or local memory means spilled registers."""
    path = workdir / "k.cubin"
    path.write_bytes(cubin)
    out = subprocess.run([_tool("cuobjdump"), "-res-usage", str(path)], capture_output=True, text=True,
                         check=True).stdout
    regs, stack, shared, local = (int(v) for v in _USAGE.search(out).groups())
    return regs, stack, local, shared


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


def _cfg_key(cfg):
    return (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_warps"], cfg["num_stages"])


CACHE: dict = {}  # --cache: measured rows by what determines them (see cache_key)


def cache_key(kind, dtype, d, cfg, flags):
    """The kernel's source hash (Triton's own ``cache_key``: the jit function and every jit function
    it calls), this Triton and ptxas, and the specialisation: a row measured under the same key is
    the same compile."""
    return json.dumps([KERNELS[kind].cache_key, triton.__version__, _ptxas_version(), kind, tn._dtype_name(dtype),
                       tn._block_d(d), d, _cfg_key(cfg), sorted(flags.items())])


def analyse(kind, dtype, d, cfg, variant, sass_dir=None):
    """Compile one (kernel, dtype, D, config, variant); a row of measurements (``error`` if it failed).
    With ``--cache`` a row measured before for the same source, tools and specialisation is reused."""
    key = cache_key(kind, dtype, d, cfg, variant[1])
    if key in CACHE and sass_dir is None:
        return dict(CACHE[key], variant=variant[0], cached=True)
    row = _analyse(kind, dtype, d, cfg, variant, sass_dir)
    if "error" not in row:
        CACHE[key] = row
    return row


def _analyse(kind, dtype, d, cfg, variant, sass_dir):
    name, flags = variant
    row = dict(kind=kind, variant=name, dtype=tn._dtype_name(dtype), D=d, BLOCK_M=cfg["BLOCK_M"],
               BLOCK_N=cfg["BLOCK_N"], warps=cfg["num_warps"], stages=cfg["num_stages"])
    try:
        compiled = triton.compile(source(kind, dtype, d, cfg, flags), target=TARGET,
                                  options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            regs, stack, local, _ = resource_usage(compiled.asm["cubin"], tmp)
            sass = sass_of(compiled.asm["cubin"], tmp)
    except Exception as err:  # an out-of-resources config fails to compile: report it
        row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        return row
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    inner, ops = loops(sass)
    main = max(inner, key=lambda lp: len(lp[2]), default=None)
    threads = 32 * cfg["num_warps"]
    row.update(regs=regs, stack=stack, local=local, sass_total=len(ops), loops=[len(lp[2]) for lp in inner],
               main_loop=len(main[2]) if main else None,
               instr_per_elem=round(len(main[2]) * threads / (bm * bn), 2) if main and kind != "segsum" else None,
               fast_per_elem=round((len(main[2]) - main[3]) * threads / (bm * bn), 2)
               if main and kind != "segsum" else None,
               mma=sum(op.startswith(("HGMMA", "HMMA", "WGMMA")) for op in main[2]) if main else None,
               mufu=sum(op.startswith("MUFU") for op in main[2]) if main else None)
    if sass_dir is not None:
        sass_dir.mkdir(parents=True, exist_ok=True)
        (sass_dir / f"{kind}_{name}_{row['dtype']}_D{d}_{bm}x{bn}_w{cfg['num_warps']}_s{cfg['num_stages']}.sass"
         ).write_text(sass)
    return row


def spill_free(row):
    return "error" not in row and not row.get("stack") and not row.get("local")


# Tiles compiled per kernel (each compile takes seconds on a CPU; the register rules below drop
# those that cannot fit): the wide tiles below D = 512, the narrow ones at 512, a small set for the
# in-loop forward (small problems, where speed matters least), small score tiles for fp32 (whose
# ``ieee`` dots run on the CUDA cores: Triton 3.9 spilled every fp32 tile above 16 x 16 at D = 128).
_WIDE = [(128, 128, 8), (128, 64, 8), (64, 128, 4), (64, 64, 4), (64, 64, 8)]
_NARROW = [(64, 64, 8), (32, 64, 4), (32, 64, 8), (32, 32, 4), (32, 32, 8)]
_LOOP = [(64, 64, 4), (64, 32, 4), (32, 64, 4), (32, 32, 4)]
_FP32 = [(32, 32, 4), (32, 16, 4), (16, 32, 4), (16, 16, 4)]
# fp32 on 8 warps (half the registers per thread), compiled only where no tile above passes every
# variant (Triton 3.6 spilled every 4-warp fp32 dq tile at D = 256)
_FP32_8W = [(32, 16, 8), (16, 16, 8)]


def candidates(kind, dtype, d, fallback=False):
    """The configs worth compiling for (kernel, dtype, D): the tile lists above at 2 and 3 stages
    (fp32 and the in-loop forward: 2), minus tiles that cannot fit 255 registers per thread next to the loop's other live
    values: for dq/dk the fp32 score tile plus the ``[BLOCK_M, D]`` fp32 accumulator at most 128
    per thread, for the forward the resident q tile at most 64 registers (fp32 at D = 512: 16-row
    tiles only; a 32-row one took minutes per compile and spilled 12.7 KB on Triton 3.9)."""
    if kind == "segsum":
        return [dict(tn._SEGSUM_CONFIG)]
    block_d = tn._block_d(d)
    tiles = _FP32 if dtype == torch.float32 else _LOOP if kind == "fwd_loop" else _NARROW if block_d >= 512 else _WIDE
    if fallback:
        tiles = _FP32_8W if dtype == torch.float32 else []
    out = []
    for bm, bn, warps in tiles:
        threads = 32 * warps
        score, acc = bm * bn / threads, bm * block_d / threads
        resident = acc if dtype == torch.float32 else acc / 2  # the forward's q tile, registers per thread
        if kind in ("dq", "dk") and score + acc > 128 or kind.startswith("fwd") and resident > 64:
            continue
        for stages in ((2,) if dtype == torch.float32 or kind == "fwd_loop" else (2, 3)):
            out.append(dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages))
    return out


HEADER = ("kind", "variant", "dtype", "D", "BLOCK_M", "BLOCK_N", "warps", "stages", "regs", "stack",
          "local", "main_loop", "instr_per_elem", "fast_per_elem")


def _print(row, log):
    line = " ".join(f"{str(row.get(h, '-')):>9}" for h in HEADER) + (f"  {row['error']}" if "error" in row else "")
    print(line, flush=True)
    log.append(row)


def choose(kind, dtype, d, log, ranked=None, keep=2, fallback=False):
    """Rank spill-free configs on the main variant by instr/elem (or take ``ranked``), then keep the
    first ``keep`` that compile spill-free on every other variant. Returns (admitted rows, ranked)."""
    variants = VARIANTS[kind]
    if ranked is None:
        rows = []
        for cfg in candidates(kind, dtype, d, fallback):
            row = analyse(kind, dtype, d, cfg, variants[0])
            _print(row, log)
            if spill_free(row):
                rows.append(row)
        rows.sort(key=lambda r: (r["instr_per_elem"] if r["instr_per_elem"] is not None else 0, r["regs"]))
        ranked = [dict(BLOCK_M=r["BLOCK_M"], BLOCK_N=r["BLOCK_N"], num_warps=r["warps"], num_stages=r["stages"])
                  for r in rows]
    admitted = []
    for cfg in ranked:
        rows = [analyse(kind, dtype, d, cfg, v) for v in variants]
        for row in rows:
            _print(row, log)
        if all(spill_free(r) for r in rows):
            admitted.append(rows[0])
            if len(admitted) == keep:
                break
    return admitted, ranked


def load_table():
    namespace = {}
    if TABLE_PATH.exists():
        exec(compile(TABLE_PATH.read_text(), str(TABLE_PATH), "exec"), namespace)
    return namespace.get("TABLE", {}), namespace.get("MEASURED", {})


def write_table(table, measured):
    text = f'''"""Tile config per (arch, Triton version, dtype, D) for the fused InfoNCE kernels, measured by
``benchmarks/aot_kernels.py --write-table`` (sm_90 compiles on a machine without a GPU). Do not edit
by hand: rerun the tool with the Triton whose rows should change.

``TABLE[(arch, triton, dtype, D)][kind] = (BLOCK_M, BLOCK_N, num_warps, num_stages, admitted,
instr_per_elem, regs)``: the chosen config (fewest SASS instructions per score element on the
kernel's representative variant among those that compile without a spill in every variant), the
admitted configs in rank order (what opt-in autotuning may pick), and the chosen config's
measurements. ``MEASURED[(arch, triton)]``: when and with which tools the rows were made.
"""

MEASURED = {pprint.pformat(measured, width=110, sort_dicts=True)}

TABLE = {pprint.pformat(table, width=110, sort_dicts=True)}
'''
    TABLE_PATH.write_text(text)


def _grid(args):
    """Every (dtype name, kind, D) the arguments ask for."""
    return [(dtype_name, kind, d) for dtype_name in args.dtypes for kind in args.kinds for d in args.dims]


def _check_row(table, kind, dtype_name, d, log, problems):
    """Compile every admitted config of one table row on every variant; the chosen config's main row."""
    key = (ARCH, tn._version_key(), dtype_name, tn._block_d(d))
    if key not in table or kind not in table[key]:
        problems.append(f"no table row for {kind} {key}")
        return None, None
    entry = table[key][kind]
    chosen, admitted = tuple(entry[:4]), [tuple(a) for a in entry[4]]
    if chosen not in admitted:
        problems.append(f"{kind} {key}: the chosen config {chosen} is not admitted")
    main = None
    for cfg, variant in [(c, v) for c in admitted for v in VARIANTS[kind]]:
        cfg = dict(zip(("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"), cfg))
        row = analyse(kind, getattr(torch, dtype_name), d, cfg, variant)
        _print(row, log)
        if not spill_free(row):
            problems.append(f"{kind} {key} {cfg} {variant[0]}: "
                            f"{row.get('error') or ('stack', row['stack'], 'local', row['local'])}")
        if _cfg_key(cfg) == chosen and variant is VARIANTS[kind][0]:
            main = row
    return chosen, main


def _check(args, log):
    """Every admitted config of this Triton's table rows on every variant; returns the problems."""
    table, _ = load_table()
    problems, summary = [], []
    for dtype_name, kind, d in _grid(args):
        chosen, main = _check_row(table, kind, dtype_name, d, log, problems)
        if chosen is not None:
            summary.append((kind, dtype_name, d, chosen, main or {}))
    print(f"\nchosen config per kernel (triton {triton.__version__}, {ARCH}; instr/elem on the main variant):")
    for kind, dtype_name, d, chosen, row in summary:
        print(f"  {kind:6} {dtype_name:8} D={d:<4} {chosen[0]:>3} x {chosen[1]:<3} warps {chosen[2]} stages "
              f"{chosen[3]}  regs {row.get('regs', '?'):>3}  instr/elem {row.get('instr_per_elem')}  "
              f"fast/elem {row.get('fast_per_elem')}")
    return problems


def _write_table(args, log):
    """Measure each (dtype, kind, D) and write its row (after every row: a cut run keeps what it did)."""
    table, measured = load_table()
    version = tn._version_key()
    ranked_bf16, status = {}, 0
    for dtype_name, kind, d in _grid(args):
        key = (ARCH, version, dtype_name, tn._block_d(d))
        if args.resume and kind in table.get(key, {}):
            continue
        reuse = ranked_bf16.get((kind, d)) if dtype_name == "float16" else None
        bf16_row = table.get((ARCH, version, "bfloat16", tn._block_d(d)), {}).get(kind)
        if dtype_name == "float16" and reuse is None and bf16_row is not None:  # bf16's admitted, in order
            reuse = [dict(zip(("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"), a)) for a in bf16_row[4]]
        admitted, ranked = choose(kind, getattr(torch, dtype_name), d, log, ranked=reuse,
                                  keep=2 if dtype_name == "bfloat16" and kind in ("fwd", "dq", "dk") else 1)
        if dtype_name == "bfloat16":
            ranked_bf16[(kind, d)] = ranked
        if not admitted and dtype_name == "float32":
            admitted, _ = choose(kind, torch.float32, d, log, keep=1, fallback=True)
        if not admitted:
            print(f"NO spill-free config for {kind} {dtype_name} D={d}")
            status = 1
            continue
        best = admitted[0]
        table.setdefault(key, {})[kind] = (
            best["BLOCK_M"], best["BLOCK_N"], best["warps"], best["stages"],
            tuple((r["BLOCK_M"], r["BLOCK_N"], r["warps"], r["stages"]) for r in admitted),
            best.get("instr_per_elem"), best["regs"])
        measured[(ARCH, version)] = dict(triton=triton.__version__, ptxas=_ptxas_version(),
                                         date=time.strftime("%Y-%m-%d"))
        write_table(table, measured)
        if args.cache:
            args.cache.write_text(json.dumps(CACHE))
    return status


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", nargs="*", default=list(KERNELS), choices=list(KERNELS))
    p.add_argument("--dims", type=int, nargs="*", default=list(DIMS))
    p.add_argument("--dtypes", nargs="*", default=["bfloat16", "float16", "float32"],
                   choices=["bfloat16", "float16", "float32"])
    p.add_argument("--variant", help="measure this variant (default: each kernel's first)")
    p.add_argument("--write-table", action="store_true", help="measure and write this Triton's table rows")
    p.add_argument("--check", action="store_true", help="compile the table's admitted configs; exit 1 on a spill")
    p.add_argument("--resume", action="store_true", help="with --write-table: keep the rows this Triton already has")
    p.add_argument("--cache", type=Path, help="JSON file of measured rows to reuse and extend (same source and tools)")
    p.add_argument("--sass", type=Path, help="folder to write each config's SASS into")
    p.add_argument("--json", type=Path, help="write the rows as JSON")
    args = p.parse_args(argv)

    log = []
    if args.cache and args.cache.exists():
        CACHE.update(json.loads(args.cache.read_text()))
    print(f"triton {triton.__version__}, target {ARCH}, ptxas {_ptxas()} ({_ptxas_version()})")
    print(" ".join(f"{h:>9}" for h in HEADER), flush=True)
    started = time.time()
    status = 0
    if args.check:
        problems = _check(args, log)
        for problem in problems:
            print("PROBLEM:", problem)
        print(f"{len(log)} compiles, {len(problems)} problems, {time.time() - started:.0f} s")
        status = 1 if problems else 0
    elif args.write_table:
        status = _write_table(args, log)
        print(f"{len(log)} compiles, {time.time() - started:.0f} s; wrote {TABLE_PATH}")
    else:
        for dtype_name, kind, d in _grid(args):
            variant = next((v for v in VARIANTS[kind] if v[0] == args.variant), VARIANTS[kind][0])
            for cfg in candidates(kind, getattr(torch, dtype_name), d):
                _print(analyse(kind, getattr(torch, dtype_name), d, cfg, variant, args.sass), log)
    if args.json:
        args.json.write_text(json.dumps(dict(triton=triton.__version__, rows=log), indent=1))
    if args.cache:
        args.cache.write_text(json.dumps(CACHE))
    print(f"{sum(bool(r.get('cached')) for r in log)} of {len(log)} rows from the cache")
    return status


if __name__ == "__main__":
    sys.exit(main())
