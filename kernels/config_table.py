"""Tile config per (arch, Triton version, dtype, D) for the fused InfoNCE kernels.

Interim rows: the configs the previous autotune rules measured best on sm_90 (docs/kernels.md,
Triton 3.9), for every Triton version and dtype, until ``benchmarks/aot_kernels.py
--write-table`` measures the current kernels. Do not edit by hand.

``TABLE[(arch, triton, dtype, D)][kind] = (BLOCK_M, BLOCK_N, num_warps, num_stages, admitted,
instr_per_elem, regs)``.
"""

MEASURED = {}

_ROWS = {
    64: {"fwd": (128, 64, 8, 3), "fwd_loop": (64, 64, 4, 2), "dq": (128, 32, 4, 3), "dk": (128, 64, 8, 2)},
    128: {"fwd": (128, 64, 8, 3), "fwd_loop": (64, 64, 4, 2), "dq": (128, 64, 8, 2), "dk": (128, 64, 8, 2)},
    256: {"fwd": (64, 64, 4, 3), "fwd_loop": (64, 64, 4, 2), "dq": (64, 64, 8, 3), "dk": (64, 64, 8, 2)},
    512: {"fwd": (32, 32, 4, 3), "fwd_loop": (32, 32, 4, 2), "dq": (32, 32, 8, 3), "dk": (32, 64, 8, 2)},
}
TABLE = {
    ("sm_90", version, dtype, d): {kind: cfg + ((cfg,), None, None) for kind, cfg in row.items()}
    for version in ("3.6", "3.9") for dtype in ("bfloat16", "float16", "float32") for d, row in _ROWS.items()
}
