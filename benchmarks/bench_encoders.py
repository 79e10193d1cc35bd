"""Encoder sizes and forward throughput on standard inputs.

Every registered encoder at its default size, on the inputs it is meant for:

=========  ======================================================
ecg        12 leads x 1000 samples (10 s at 100 Hz)
eeg        19 electrodes x 3000 samples (e.g. 30 s at 100 Hz)
ehr        256 events (vocabulary 10,000, half with values)
tabular    32 features, 20 % missing
image      3 x 64 x 64
=========  ======================================================

Throughput is samples/s of ``encoder(x)`` in eval mode under ``torch.no_grad`` (batch
``--batch``, median of ``--repeat`` timed calls after one warm-up), on CPU and, when one is
present, on CUDA. Results go to ``--out`` (JSON) and the same path with ``.md`` (table).

    python benchmarks/bench_encoders.py --out bench_encoders.json
    python benchmarks/bench_encoders.py --quick --out bench_encoders.json   # batch 8, 2 repeats
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tscl.encoders import build_encoder, list_encoders
from tscl.train import environment

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
EEG = ("Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "T3", "C3", "Cz", "C4", "T4", "T5", "P3", "Pz", "P4", "T6", "O1", "O2")
TIME_SERIES = ("cnn1d", "resnet1d", "xresnet1d18", "xresnet1d34", "xresnet1d50", "xresnet1d101", "transformer1d")


def cases():
    """(encoder, input name, in_channels, build kwargs, make_inputs(batch, device) -> tuple)."""
    out = []
    for name in TIME_SERIES:
        for kind, names, t in (("ecg", LEADS, 1000), ("eeg", EEG, 3000)):
            kw = {"channel_names": names} if name == "transformer1d" else {}
            out.append((name, f"{kind} {len(names)}x{t}", len(names), kw, lambda b, d, c=len(names), t=t: (torch.randn(b, c, t, device=d),)))

    def ehr(b, d, length=256, vocab=10_000):
        codes = torch.randint(1, vocab, (b, length), device=d)
        values = torch.randn(b, length, device=d)
        vmask = torch.rand(b, length, device=d) < 0.5
        times = torch.cumsum(torch.rand(b, length, device=d) * 24, dim=1)
        return codes, values, vmask, times

    out.append(("ehr_sequence", "ehr L=256", 10_000, {}, ehr))

    def tab(b, d):
        x = torch.randn(b, 32, device=d)
        return x, torch.rand(b, 32, device=d) > 0.2

    out.append(("tabular", "tabular 32 (mlp)", 32, {"kind": "mlp"}, tab))
    out.append(("tabular", "tabular 32 (ft_transformer)", 32, {"kind": "ft_transformer"}, tab))
    for name in ("resnet2d18", "resnet2d50", "vit_small"):
        out.append((name, "image 3x64x64", 3, {}, lambda b, d: (torch.randn(b, 3, 64, 64, device=d),)))
    covered = {c[0] for c in out}
    missing = sorted(set(list_encoders()) - covered)
    if missing:
        print(f"note: no standard input for {missing}; not benchmarked")
    return out


def throughput(model, inputs, batch: int, repeat: int, device) -> float:
    def call():
        model(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        call()  # warm-up (kernel selection, allocator)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="batch 8, 2 repeats")
    ap.add_argument("--only", nargs="*", default=None, help="encoder names to run")
    ap.add_argument("--out", type=Path, default=Path("bench_encoders.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.repeat = 8, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for name, input_name, c, kw, make in cases():
        if args.only and name not in args.only:
            continue
        torch.manual_seed(0)
        model = build_encoder(name, c, **kw).eval()
        row = {
            "encoder": name,
            "input": input_name,
            "params": sum(p.numel() for p in model.parameters()),
            "embed_dim": model.embed_dim,
        }
        for dev in devices:
            model.to(dev)
            row[f"{dev.type}_samples_per_s"] = round(throughput(model, make(args.batch, dev), args.batch, args.repeat, dev), 1)
        rows.append(row)
        print(row, flush=True)
    meta = {
        "batch": args.batch,
        "repeat": args.repeat,
        "environment": environment(devices[-1]),
    }
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    cols = ["encoder", "input", "params", "embed_dim"] + [f"{d.type}_samples_per_s" for d in devices]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k] / 1e6:.2f} M" if k == "params" else str(r[k]) for k in cols) + " |")
    md = f"Encoder throughput (forward, eval, no_grad; batch {args.batch}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads)\n\n" + "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
