"""Cache build and open at scale, on synthetic WFDB folders laid out as PhysioNet lays out large sets.

Each size gets ``n`` records of 1 lead x 10 s x 100 Hz (format 16, 2,000 data bytes each) in
folders of 100 records (``g000/p00000/r0000000``), written straight by
:func:`write_synthetic_wfdb` (header text + int16 ``.dat``; ``wfdb.rdrecord`` reads them), and
a ``metadata.csv``. Per size it measures, each open in a fresh process: the first open (the
build, every core), the second open (the cache reused), their wall time and peak RSS (and the
RSS after the imports, so the open's own share shows), bytes per recording (shards; whole cache
folder), and ``wfdb.rdrecord``'s records/s on up to 2,000 of the same files, for the ratio.
``--flat N`` measures opens of one flat folder of N records instead (quadratic when every record
lists its folder). ``--code DIR`` runs the opens with another checkout's package (e.g. an older
commit exported with ``git archive``) for a before/after table.

    python benchmarks/bench_cache.py --sizes 1000,10000,100000 --out cache.json
    python benchmarks/bench_cache.py --flat 20000 --out flat.json
    python benchmarks/bench_cache.py --quick --out cache.json          # 300 records, for the tests
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["write_synthetic_wfdb", "measure_open", "main"]


def _record_path(i: int, per_folder: int | None) -> str:
    if per_folder is None:
        return f"r{i:07d}"
    folder = i // per_folder
    return f"g{folder // 100:03d}/p{folder:05d}/r{i:07d}"


def write_synthetic_wfdb(root: str | Path, n: int, *, per_folder: int | None = 100, seconds: float = 10.0,
                         fs: int = 100, leads: int = 1, patients_every: int = 4, seed: int = 0) -> Path:
    """Write ``n`` WFDB records (format 16, ``leads`` x ``seconds`` at ``fs`` Hz) under ``root`` and a
    ``metadata.csv`` (patient_id: one patient per ``patients_every`` records, record_id, path, label ``y``).

    Layout: ``g<k>/p<folder>/r<i>`` with ``per_folder`` records per folder and 100 folders per group
    (PhysioNet's large sets nest like this), or one flat folder with ``per_folder=None``. Samples are a
    record-specific sine plus noise, as int16 with gain 1000 (mV); headers carry correct checksums. About
    20 us of CPU per record beyond the file system's cost of creating two files."""
    import polars as pl

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    t = int(round(seconds * fs))
    rng = np.random.default_rng(seed)
    wave = np.sin(np.linspace(0, 2 * np.pi * seconds, t))
    made: set[str] = set()
    paths = []
    for start in range(0, n, 4096):
        k = min(4096, n - start)
        amp = rng.uniform(200, 800, size=(k, leads, 1))
        digital = (amp * wave + rng.normal(0, 40, size=(k, leads, t))).round().astype("<i2")
        sums = digital.astype(np.int64).sum(axis=2) % 65536
        for j in range(k):
            i = start + j
            rel = _record_path(i, per_folder)
            folder = os.path.dirname(rel)
            if folder not in made:
                (root / folder).mkdir(parents=True, exist_ok=True)
                made.add(folder)
            name = os.path.basename(rel)
            digital[j].T.tofile(root / f"{rel}.dat")
            lines = [f"{name} {leads} {fs} {t}"] + [
                f"{name}.dat 16 1000(0)/mV 16 0 {int(digital[j, c, 0])} {int(sums[j, c])} 0 {'I II III'.split()[c % 3]}"
                for c in range(leads)]
            (root / f"{rel}.hea").write_text("\n".join(lines) + "\n")
            paths.append(rel)
    idx = np.arange(n)
    pl.DataFrame({"patient_id": [f"p{i // patients_every:07d}" for i in idx], "record_id": [f"r{i:07d}" for i in idx],
                  "path": paths, "y": (idx % 2).tolist()}).write_csv(root / "metadata.csv")
    return root


_CHILD = r"""
import json, os, resource, sys, time
code = sys.argv[4]
if code:  # another checkout's package: ahead of the installed one
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower()]
    sys.path.insert(0, code)
import numpy, polars, wfdb  # noqa: F401  (imports first, so the RSS after them is the baseline)
from tscl.datasets.waveform import WaveformDataset
from tscl.loaders import load_wfdb_cohort
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kwargs = {} if sys.argv[3] == "default" else {"workers": int(sys.argv[3])}
t0 = time.perf_counter()
cache = load_wfdb_cohort(sys.argv[1], cache_dir=sys.argv[2], progress=False, **kwargs)
data = WaveformDataset(cache)
seconds = time.perf_counter() - t0
x = data.fetch(numpy.arange(min(len(data), 256)))
now = [int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmRSS:")] if os.path.exists(
    "/proc/self/status") else [0]
print(json.dumps({"seconds": seconds, "records": len(data), "rss_after_imports_mb": rss0 / 1024,
                  "rss_after_open_mb": now[0] / 1024,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "fetch_shape": list(x.shape), "shard_bytes": getattr(cache, "nbytes", None),
                  "encodings": cache.encodings() if hasattr(cache, "encodings") else None,
                  "package": os.path.dirname(__import__("tscl").__file__)}))
"""


def measure_open(root: Path, cache_dir: Path, workers: str = "default", code: str = "") -> dict:
    """One open of the cohort at ``root`` (cache in ``cache_dir``) in a fresh process: seconds, peak RSS, ..."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(root), str(cache_dir), workers, code], capture_output=True,
                         text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"open of {root} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def rdrecord_rate(root: Path, limit: int = 2000) -> dict:
    import polars as pl
    import wfdb

    paths = pl.read_csv(root / "metadata.csv", columns=["path"])["path"].to_list()
    pick = [paths[i] for i in np.linspace(0, len(paths) - 1, min(limit, len(paths))).astype(int)]
    t0 = time.perf_counter()
    for p in pick:
        wfdb.rdrecord(str(root / p))
    seconds = time.perf_counter() - t0
    return {"records": len(pick), "seconds": round(seconds, 3), "records_per_s": round(len(pick) / seconds, 1)}


def bench_size(base: Path, n: int, per_folder: int | None, workers: str, code: str) -> dict:
    root = base / f"data-{n}"
    t0 = time.perf_counter()
    write_synthetic_wfdb(root, n, per_folder=per_folder)
    made = time.perf_counter() - t0
    source_bytes = _folder_bytes(root)
    rd = rdrecord_rate(root)
    cache_dir = base / f"cache-{n}"
    first = measure_open(root, cache_dir, workers, code)
    second = measure_open(root, cache_dir, workers, code)
    build_rate = n / first["seconds"]
    row = {"records": n, "layout": "flat" if per_folder is None else f"{per_folder} records per folder",
           "write_seconds": round(made, 1), "source_bytes_per_recording": round(source_bytes / n, 1),
           "rdrecord": rd, "first_open": first, "second_open": second,
           "build_records_per_s": round(build_rate, 1), "build_over_rdrecord": round(build_rate / rd["records_per_s"], 2),
           "cache_bytes_per_recording": round(_folder_bytes(cache_dir) / n, 1),
           "shard_bytes_per_recording": round(first["shard_bytes"] / n, 1) if first["shard_bytes"] else None}
    shutil.rmtree(root)
    shutil.rmtree(cache_dir)
    return row


def _table(rows: list[dict]) -> str:
    lines = ["| records | layout | build (first open) | records/s | ÷ rdrecord | second open | peak RSS first / second "
             "(after imports; after the second open) | bytes/recording: shards, cache folder (source) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, s = r["first_open"], r["second_open"]
        lines.append(f"| {r['records']:,} | {r['layout']} | {f['seconds']:.1f} s | {r['build_records_per_s']:,.0f} | "
                     f"{r['build_over_rdrecord']:.2f} | {s['seconds']:.2f} s | {f['peak_rss_mb']:.0f} / "
                     f"{s['peak_rss_mb']:.0f} MB ({s['rss_after_imports_mb']:.0f}; {s.get('rss_after_open_mb', 0):.0f} MB) | "
                     f"{r['shard_bytes_per_recording'] or 0:,.0f}, {r['cache_bytes_per_recording']:,.0f} "
                     f"({r['source_bytes_per_recording']:,.0f}) |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000", help="comma-separated record counts")
    ap.add_argument("--flat", type=int, default=None, help="one flat folder of this many records instead")
    ap.add_argument("--quick", action="store_true", help="300 records (the test)")
    ap.add_argument("--workers", default="default", help="build workers for the opens (default: the cache's own)")
    ap.add_argument("--code", default="", help="a checkout's root to import tscl from (before/after comparisons)")
    ap.add_argument("--tmp", type=Path, default=None, help="where to write the data (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    sizes = [300] if args.quick else [args.flat] if args.flat else [int(s) for s in args.sizes.split(",")]
    free = shutil.disk_usage(args.tmp or tempfile.gettempdir()).free
    need = max(sizes) * 12_000  # two 4 KiB-block files per record, the cache, headroom
    if need > free:
        raise SystemExit(f"needs about {need / 1e9:.1f} GB of free disk, {free / 1e9:.1f} GB free")
    result: dict = {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                    "python": sys.version.split()[0], "code": args.code or "installed", "sizes": []}
    with tempfile.TemporaryDirectory(prefix="tscl_bench_cache_", dir=args.tmp) as tmp:
        for n in sizes:
            row = bench_size(Path(tmp), n, None if args.flat else 100, args.workers, args.code)
            result["sizes"].append(row)
            print(_table([row]).splitlines()[-1], flush=True)
    result["table"] = _table(result["sizes"])
    print(result["table"])
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
