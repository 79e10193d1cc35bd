"""Loader throughput on PTB-XL: cache build (records/s) and training reads (windows/s).

The shared PTB-XL sample (230 records at 100 Hz) is copied ``--copies`` times into a temporary
folder with a matching ``ptbxl_database.csv`` (ecg_ids and patient ids renumbered per copy), so
the cache build parses real WFDB files. Then a torch DataLoader (``--loader-workers`` worker
processes) reads random 2.5 s crops from the memory-mapped cache for ``--epochs`` epochs.

    python benchmarks/bench_loaders.py --out bench_loaders.json            # >= 20,000 records
    python benchmarks/bench_loaders.py --quick --out bench_loaders.json    # ~1,000 records
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tscl.loaders import WaveformCache, load_ptbxl
from tscl.train import environment

DEFAULT_PTBXL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ptbxl"


def scaled_ptbxl(src: Path, dst: Path, copies: int) -> int:
    """Write ``copies`` copies of the sample's present 100 Hz records and a matching database csv; return the record count."""
    db = pl.read_csv(src / "ptbxl_database.csv", infer_schema_length=None)
    db = db.filter(pl.col("filename_lr").map_elements(lambda f: (src / f"{f}.hea").exists(), return_dtype=pl.Boolean))
    shutil.copy(src / "scp_statements.csv", dst / "scp_statements.csv")
    parts = []
    for k in range(copies):
        folder = dst / "records100" / f"{k:05d}"
        folder.mkdir(parents=True)
        for name in db["filename_lr"]:
            for ext in ("hea", "dat"):
                stem = Path(name).name
                shutil.copyfile(src / f"{name}.{ext}", folder / f"{stem}.{ext}")
        parts.append(db.with_columns(
            (pl.col("ecg_id") + k * 100_000).alias("ecg_id"),
            (pl.col("patient_id") + k * 100_000).alias("patient_id"),
            pl.col("filename_lr").str.replace(r"records100/\d+/", f"records100/{k:05d}/"),
        ))
    table = pl.concat(parts)
    table.write_csv(dst / "ptbxl_database.csv")
    return table.height


class RandomCrops(Dataset):
    """Random ``length``-sample crops of every cached recording, with the patient index as id."""

    def __init__(self, cache: WaveformCache, length: int):
        self.cache, self.length = cache, length
        patients = cache.index["patient_id"].to_list()
        ids = {p: i for i, p in enumerate(dict.fromkeys(patients))}
        self.patient = np.array([ids[p] for p in patients], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int):
        x = self.cache[i]
        start = np.random.randint(0, x.shape[1] - self.length + 1)
        return torch.from_numpy(np.array(x[:, start:start + self.length])), int(self.patient[i])


def read_throughput(cache: WaveformCache, workers: int, batch_size: int, epochs: int, length: int) -> dict:
    loader = DataLoader(RandomCrops(cache, length), batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, drop_last=False)
    next(iter(loader))  # start the workers before timing
    n, t0 = 0, time.perf_counter()
    checksum = 0.0
    for _ in range(epochs):
        for x, _ids in loader:
            n += x.shape[0]
            checksum += float(x[:, 0, 0].sum())
    seconds = time.perf_counter() - t0
    return {"windows": n, "seconds": round(seconds, 3), "windows_per_s": round(n / seconds, 1),
            "loader_workers": workers, "batch_size": batch_size, "window_samples": length}


def batched_read_throughput(cache: WaveformCache, batch_size: int, epochs: int, seed: int = 0) -> dict:
    """The trainer's read path: random batches of whole recordings gathered from the shards' memory maps
    with one sorted gather per batch (``WaveformDataset.fetch`` does exactly this), single process."""
    signals = cache.stack()
    rng = np.random.default_rng(seed)
    n, checksum, t0 = 0, 0.0, time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(signals))
        for start in range(0, len(order), batch_size):
            x = torch.from_numpy(signals[np.sort(order[start:start + batch_size])])
            n += x.shape[0]
            checksum += float(x[:, 0, 0].sum())
    seconds = time.perf_counter() - t0
    return {"windows": n, "seconds": round(seconds, 3), "windows_per_s": round(n / seconds, 1),
            "batch_size": batch_size, "window_shape": list(signals.shape[1:]), "processes": 1}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ptbxl", type=Path, default=DEFAULT_PTBXL, help="the PTB-XL sample folder")
    ap.add_argument("--copies", type=int, default=None, help="copies of the sample (default: enough for 20,000 records)")
    ap.add_argument("--quick", action="store_true", help="a small run (5 copies, ~1,150 records)")
    ap.add_argument("--build-workers", type=int, default=2)
    ap.add_argument("--loader-workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--serial-subset", type=int, default=None,
                    help="records for the single-process build comparison (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if not (args.ptbxl / "ptbxl_database.csv").exists():
        raise SystemExit(f"PTB-XL sample not found at {args.ptbxl}")
    present = sum(1 for _ in (args.ptbxl / "records100").rglob("*.hea"))
    copies = args.copies or (5 if args.quick else -(-20_000 // present))
    result: dict = {"environment": {**environment(torch.device("cpu")), "cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory(prefix="tscl_bench_ptbxl_") as tmp:
        root = Path(tmp) / "ptbxl"
        root.mkdir()
        t0 = time.perf_counter()
        n = scaled_ptbxl(args.ptbxl, root, copies)
        result["dataset"] = {"records": n, "copies": copies, "copy_seconds": round(time.perf_counter() - t0, 2)}
        print(f"scaled PTB-XL: {n} records in {root}")

        t0 = time.perf_counter()
        cache = load_ptbxl(root, rate=100, cache_dir=Path(tmp) / "cache", workers=args.build_workers, progress=False)
        build = time.perf_counter() - t0
        assert len(cache) == n
        result["build"] = {"records": n, "seconds": round(build, 2), "records_per_s": round(n / build, 1),
                           "workers": args.build_workers,
                           "cache_bytes": cache.nbytes, "encodings": cache.encodings()}
        print(f"cache build ({args.build_workers} workers): {n / build:.0f} records/s")

        t0 = time.perf_counter()
        again = load_ptbxl(root, rate=100, cache_dir=Path(tmp) / "cache", progress=False)
        result["reopen_seconds"] = round(time.perf_counter() - t0, 3)
        assert again.fingerprint == cache.fingerprint

        subset = n if args.serial_subset is None else min(args.serial_subset, n)
        if subset:
            sub_root = Path(tmp) / "subset"
            sub_root.mkdir()
            shutil.copy(root / "scp_statements.csv", sub_root)
            pl.read_csv(root / "ptbxl_database.csv", infer_schema_length=None).head(subset).write_csv(
                sub_root / "ptbxl_database.csv")
            (sub_root / "records100").symlink_to(root / "records100")
            t0 = time.perf_counter()
            load_ptbxl(sub_root, rate=100, cache_dir=Path(tmp) / "cache_serial", workers=0, progress=False)
            serial = time.perf_counter() - t0
            result["build_serial"] = {"records": subset, "seconds": round(serial, 2),
                                      "records_per_s": round(subset / serial, 1), "workers": 0}
            print(f"cache build (1 process, {subset} records): {subset / serial:.0f} records/s")

        reads = read_throughput(cache, args.loader_workers, args.batch_size, args.epochs, length=250)
        result["read"] = {**reads, "epochs": args.epochs}
        print(f"training reads ({args.loader_workers} workers): {reads['windows_per_s']:.0f} windows/s")
        batched = batched_read_throughput(cache, args.batch_size, args.epochs)
        result["read_batched"] = {**batched, "epochs": args.epochs}
        print(f"batched memmap reads (trainer path, 1 process): {batched['windows_per_s']:.0f} windows/s "
              f"of {batched['window_shape'][0]}x{batched['window_shape'][1]}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
