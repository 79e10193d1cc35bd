"""Cost of every stage against the number of recordings: synthetic WFDB datasets at 1k ... 1M.

Each size N is a real WFDB folder written as PhysioNet lays datasets out (``records/NNNNN/`` with
``--per-folder`` records each, a ``.hea`` + ``.dat`` per record, ``metadata.csv`` with patient
ids, 1-5 recordings per patient and two patient-level labels), by default 1 lead x 10 s at
100 Hz (2 KB of int16 per record) so that 1M recordings fit in ~10 GB. Every stage runs in its
own subprocess, so its peak memory is its own:

- ``build``     first open of the ``wfdb`` source with an empty cache (the cache is built);
                records/s, and the same files read one by one with ``wfdb.rdrecord``;
                bytes per recording of the cache and of the source files;
- ``open``      the built cache opened twice in a fresh process (first and second open);
- ``pretrain``  PCLR on the train split, ``--steps`` steps of 64 patients x 2 recordings
                (``cnn1d`` widths 8,16): median step time, data-wait share, the trainer's time
                outside its steps (sampler, model, checkpoint, weights), and the epoch's cost =
                that + steps/epoch x step. Opening the dataset is timed apart (``open_s``);
- ``embed``     every recording through the trained encoder (the open timed apart);
- ``probe``     linear probe of both labels on the source's split, 1,000 patient-level bootstrap
                resamples (C fixed at 1, 100 % labels).

Memory: ``peak_rss_mb`` is the process's high-water mark (VmHWM), which counts pages of
memory-mapped cache files the process touched; ``peak_anon_mb`` samples RssAnon every 20 ms and
keeps the maximum, so **mapped shard pages are not counted** there. Both are in the JSON.

Sizes are resumable: ``OUT/scale-N.json`` is kept and the size skipped unless ``--force``; every
JSON carries a UTC time stamp and ``tscl.train.environment()``. The log-log plot ``scale.png``
fits the slope of cost vs N per stage (from 10k up when two such sizes exist). A shape probe
(``--shape``: 1,000 records of 12 leads x 10 s at 500 Hz) gives the per-record build cost and
bytes at the size of MIMIC-IV-ECG and PCLR's cohort, from which ``scale_table.md`` projects
800k and 3.2M recordings.

    python benchmarks/bench_scale.py --sizes 1000,10000 --out docs/benchmarks
    python benchmarks/bench_scale.py --sizes 1000,10000,100000,1000000 --out docs/benchmarks --work /big/disk
    python benchmarks/bench_scale.py --sizes none --probe-rows 150000 --out docs/benchmarks     # the probe alone
    python benchmarks/bench_scale.py --quick --out /tmp/scale     # the test: 200 recordings
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

STAGES = ("build", "open", "pretrain", "embed", "probe")
PROJECT = (800_000, 3_200_000)
SHAPE = {"leads": 12, "seconds": 10.0, "fs": 500.0}
FILE_BLOCK = 4096  # a small file takes at least one filesystem block


# ---- memory -------------------------------------------------------------------------------------------

class PeakMemory:
    """Samples ``/proc/self/status`` every ``interval`` s: the maximum RssAnon (anonymous memory: heap,
    arrays; not file-backed mapped pages) and, at the end, VmHWM (every resident page, mapped ones too)."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.anon_kb, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _status() -> dict:
        try:
            lines = Path("/proc/self/status").read_text().splitlines()
        except OSError:
            return {}
        return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in lines) if v.strip().endswith("kB")}

    def _run(self):
        while not self._stop.is_set():
            self.anon_kb = max(self.anon_kb, self._status().get("RssAnon", 0))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        status = self._status()
        self.anon_kb = max(self.anon_kb, status.get("RssAnon", 0))
        import resource

        self.hwm_kb = status.get("VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    def record(self) -> dict:
        return {"peak_rss_mb": self.hwm_kb / 1024, "peak_anon_mb": self.anon_kb / 1024}


# ---- the synthetic dataset ------------------------------------------------------------------------------

def patients_of(n: int, seed: int) -> np.ndarray:
    """Patient number of each of ``n`` recordings: 1-5 recordings per patient (mean 3), in order."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, size=n // 2 + 1)
    return np.repeat(np.arange(len(counts)), counts)[:n]


def _write_folder(job) -> None:
    from tscl.loaders.wfdb_write import write_wfdb

    root, folder, first, latent, leads, seconds, fs, seed = job  # latent [records, 2]: each record's patient's
    rng = np.random.default_rng((seed, folder))
    t = np.arange(int(round(seconds * fs))) / fs
    names = ["II"] if leads == 1 else ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"][:leads]
    for k, (z_a, z_b) in enumerate(latent):
        rate = 1.0 + 0.3 * z_a  # a heart-rate-like frequency carries label a, the amplitude label b
        base = np.sin(2 * np.pi * rate * t) * (1.0 + 0.3 * z_b)
        signal = base[None] + 0.1 * rng.standard_normal((leads, len(t)))
        write_wfdb(Path(root) / "records" / f"{folder:05d}" / f"r{first + k:08d}", signal, fs, names)


def generate(root: Path, n: int, *, leads: int, seconds: float, fs: float, per_folder: int, workers: int,
             seed: int = 0) -> float:
    """Write the dataset (skipped when ``root/metadata.csv`` already lists ``n`` records); returns seconds."""
    import polars as pl

    meta = root / "metadata.csv"
    if meta.exists() and pl.scan_csv(meta).select(pl.len()).collect().item() == n:
        return 0.0
    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    pid = patients_of(n, seed)
    latent = np.random.default_rng(seed + 1).standard_normal((int(pid.max()) + 1, 2))
    jobs = [(str(root), f, f * per_folder, latent[pid[f * per_folder:(f + 1) * per_folder]], leads, seconds, fs, seed)
            for f in range(-(-n // per_folder))]
    if workers > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            pool.map(_write_folder, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
    else:
        for job in jobs:
            _write_folder(job)
    rows = np.arange(n)
    pl.DataFrame({
        "patient_id": [f"P{p:07d}" for p in pid], "record_id": [f"r{i:08d}" for i in rows],
        "path": [f"records/{i // per_folder:05d}/r{i:08d}" for i in rows],
        "label_a": (latent[pid, 0] > 0).astype(np.int8), "label_b": (latent[pid, 1] > 0.5).astype(np.int8),
    }).write_csv(meta)
    return time.perf_counter() - t0


def folder_bytes(path: Path) -> tuple[int, int]:
    """(bytes in files, bytes on disk rounded up to filesystem blocks) under ``path``."""
    total = blocks = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            total += st.st_size
            blocks += getattr(st, "st_blocks", -(-st.st_size // 512)) * 512
    return total, blocks


# ---- stages (each in its own process) ------------------------------------------------------------------

def _open(args, root: Path):
    from tscl.datasets import open_dataset

    return open_dataset("wfdb", root, cache=Path(args.work) / f"cache-{root.name}", progress=False)


def stage_build(args, root: Path, n: int) -> dict:
    cache = Path(args.work) / f"cache-{root.name}"
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    ds = _open(args, root)
    build_s = time.perf_counter() - t0
    assert len(ds) == n, f"{len(ds)} rows for {n} records"
    cache_bytes, _ = folder_bytes(cache)
    source_bytes, source_disk = folder_bytes(root / "records")
    return {"build_s": build_s, "records_per_s": n / build_s, "cache_bytes_per_record": cache_bytes / n,
            "source_bytes_per_record": source_bytes / n, "source_disk_bytes_per_record": source_disk / n}


def stage_rdrecord(args, root: Path, n: int) -> dict:
    """``wfdb.rdrecord`` on a random sample of the same files, one by one (the per-record reading cost)."""
    import wfdb

    m = min(n, args.rdrecord_sample)
    rows = np.sort(np.random.default_rng(0).choice(n, size=m, replace=False))
    t0 = time.perf_counter()
    for i in rows:
        wfdb.rdrecord(str(root / "records" / f"{i // args.per_folder:05d}" / f"r{i:08d}"))
    seconds = time.perf_counter() - t0
    return {"rdrecord_records": int(m), "rdrecord_per_s": m / seconds}


def stage_open(args, root: Path, n: int) -> dict:
    t0 = time.perf_counter()
    ds = _open(args, root)
    t1 = time.perf_counter()
    again = _open(args, root)
    t2 = time.perf_counter()
    assert len(ds) == len(again) == n
    return {"open1_s": t1 - t0, "open2_s": t2 - t1}


def _pretrain_config(args, out: Path):
    from tscl.train import PretrainConfig

    return PretrainConfig(out_dir=str(out), method="pclr", encoder="cnn1d", encoder_kwargs={"widths": [8, 16]},
                          method_kwargs={"patients_per_batch": args.patients_per_batch}, epochs=1,
                          max_steps=args.steps, ckpt_every=0, device="cpu", progress=False)


def stage_pretrain(args, root: Path, n: int) -> dict:
    from tscl.samplers import PatientBatchSampler, encode_ids
    from tscl.train import pretrain

    run = Path(args.work) / f"run-{root.name}"
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    train = _open(args, root).split("train")
    t1 = time.perf_counter()
    pretrain(train, _pretrain_config(args, run))
    total = time.perf_counter() - t1
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "step" in s]
    batch = 2 * args.patients_per_batch
    dt = np.array([batch / s["samples_per_s"] for s in steps])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # patients with one recording are left out of pairing: expected here
        per_epoch = len(PatientBatchSampler(encode_ids(train.index["patient_id"].to_list()), args.patients_per_batch))
    step_s = float(np.median(dt[1:] if len(dt) > 1 else dt))
    setup_s = total - float(dt.sum())
    return {"open_s": t1 - t0, "steps": len(steps), "step_s": step_s,
            "data_wait_frac": float(np.mean([s["data_wait_frac"] for s in steps[1:]] or [np.nan])),
            "setup_s": setup_s, "steps_per_epoch": per_epoch, "epoch_s": setup_s + per_epoch * step_s,
            "train_records": len(train)}


def stage_embed(args, root: Path, n: int) -> dict:
    from tscl.embed import embed_dataset
    from tscl.train import load_encoder

    t0 = time.perf_counter()
    ds = _open(args, root)
    t1 = time.perf_counter()
    z = embed_dataset(load_encoder(Path(args.work) / f"run-{root.name}"), ds, batch_size=1024, progress=False)
    seconds = time.perf_counter() - t1
    index = ds.index
    np.savez(Path(args.work) / f"features-{root.name}.npz", features=z,
             patient_id=index["patient_id"].to_numpy().astype(str), split=index["split"].to_numpy().astype(str),
             Y=index.select(["label_a", "label_b"]).to_numpy())
    return {"open_s": t1 - t0, "embed_s": seconds, "embed_records_per_s": n / seconds}


def stage_probe(args, root: Path, n: int) -> dict:
    from tscl.probes import run_probe

    f = np.load(Path(args.work) / f"features-{root.name}.npz", allow_pickle=False)
    side = f["split"]
    train, test = np.flatnonzero(side != "test"), np.flatnonzero(side == "test")
    t0 = time.perf_counter()
    res = run_probe({"pclr": f["features"]}, f["Y"], ["label_a", "label_b"], f["patient_id"], fractions=(1.0,),
                    n_boot=args.bootstrap, C_grid=[1.0], split=(train, test))
    row = res.rows[0]
    return {"probe_s": time.perf_counter() - t0, "test_records": int(len(test)), "bootstrap": args.bootstrap,
            "auroc": row["auroc"], "ci": [row["ci_low"], row["ci_high"]]}


def stage_probe_rows(args, root: Path, n: int) -> dict:
    """The probe alone at ``n`` test rows (synthetic 64-d features, 2 labels, 2 recordings per patient)."""
    from tscl.probes import run_probe

    n_train = 2 * max(500, n // 6)
    rng = np.random.default_rng(0)
    pid = np.repeat(np.arange((n_train + n) // 2 + 1), 2)[:n_train + n]
    Y = rng.integers(0, 2, (len(pid), 2))
    X = (Y @ rng.normal(size=(2, 64)) + 2 * rng.normal(size=(len(pid), 64))).astype(np.float32)
    t0 = time.perf_counter()
    res = run_probe({"x": X}, Y, ["a", "b"], pid, fractions=(1.0,), n_boot=args.bootstrap, C_grid=[1.0],
                    split=(np.arange(n_train), np.arange(n_train, len(pid))))
    return {"probe_s": time.perf_counter() - t0, "test_records": n, "train_records": n_train,
            "bootstrap": args.bootstrap, "auroc": res.rows[0]["auroc"]}


STAGE_FNS = {"build": [stage_build, stage_rdrecord], "open": [stage_open], "pretrain": [stage_pretrain],
             "embed": [stage_embed], "probe": [stage_probe], "probe-rows": [stage_probe_rows]}


def run_stage(args) -> None:
    """``--stage NAME``: one stage in this process; prints its JSON record as the last line."""
    import torch

    import tscl.datasets.waveform  # noqa: F401  (imports are not part of any stage's time)
    from tscl.datasets import list_sources

    list_sources()
    torch.set_num_threads(args.threads)
    root = Path(args.work) / args.dataset_dir
    out = {}
    for fn in STAGE_FNS[args.stage]:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            out.update(fn(args, root, args.size))
            out[f"{fn.__name__}_wall_s"] = time.perf_counter() - t0
        if fn is STAGE_FNS[args.stage][0]:
            out.update(mem.record())
    print(json.dumps(out))


def _subprocess_stage(args, stage: str, n: int, dataset_dir: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--size", str(n), "--work", str(args.work),
           "--dataset-dir", dataset_dir, "--per-folder", str(args.per_folder), "--steps", str(args.steps),
           "--patients-per-batch", str(args.patients_per_batch), "--bootstrap", str(args.bootstrap),
           "--rdrecord-sample", str(args.rdrecord_sample), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TSCL_CACHE": str(Path(args.work) / "tscl-cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} at N={n} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- sizes, disk check, resume -------------------------------------------------------------------------

def needed_bytes(n: int, leads: int, seconds: float, fs: float) -> int:
    """Disk a size needs: the WFDB files (two per record, each at least a block) and a float32 cache, +25 %."""
    samples = int(round(seconds * fs)) * leads
    files = 2 * max(FILE_BLOCK, -(-2 * samples // FILE_BLOCK) * FILE_BLOCK) + FILE_BLOCK
    return int(1.25 * n * (files + 4 * samples + 512))


def check_disk(work: Path, n: int, leads: int, seconds: float, fs: float) -> None:
    work.mkdir(parents=True, exist_ok=True)
    free, need = shutil.disk_usage(work).free, needed_bytes(n, leads, seconds, fs)
    if free < need:
        raise SystemExit(f"bench_scale: N={n} needs about {need / 2**30:.1f} GiB in {work}, only "
                         f"{free / 2**30:.1f} GiB free; give --work on a larger disk or leave this size out")


def measure_size(args, n: int, *, leads: int, seconds: float, fs: float, name: str, stages=STAGES) -> dict:
    from tscl.train import environment

    import torch

    check_disk(Path(args.work), n, leads, seconds, fs)
    root = Path(args.work) / name
    gen_s = generate(root, n, leads=leads, seconds=seconds, fs=fs, per_folder=args.per_folder, workers=args.workers)
    record = {"n": n, "leads": leads, "seconds": seconds, "fs": fs, "per_folder": args.per_folder,
              "generate_s": gen_s, "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "load_average_at_start": os.getloadavg(),
              "environment": environment(torch.device("cpu")), "threads": args.threads, "stages": {}}
    for stage in stages:
        t0 = time.perf_counter()
        record["stages"][stage] = _subprocess_stage(args, stage, n, name)
        print(f"N={n:,} {stage}: {time.perf_counter() - t0:.1f} s", flush=True)
    if not args.keep:
        for path in (root, Path(args.work) / f"cache-{name}", Path(args.work) / f"run-{name}",
                     Path(args.work) / f"features-{name}.npz"):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return record


# ---- fits, plot, tables ----------------------------------------------------------------------------------

COSTS = {  # what is plotted against N per stage: (stage, field, label)
    "build": ("build", "build_s", "build (first open, cache built)"),
    "open1": ("open", "open1_s", "first open of the built cache"),
    "open2": ("open", "open2_s", "second open"),
    "pretrain": ("pretrain", "epoch_s", "pretraining epoch (trainer setup + steps x step)"),
    "embed": ("embed", "embed_s", "embed every recording"),
    "probe": ("probe", "probe_s", "probe with bootstrap CIs"),
}


def fit_slopes(records: list[dict], low: int = 10_000) -> dict:
    """Slope of log cost vs log N per stage, over sizes >= ``low`` when two exist, else over all sizes."""
    out = {}
    for key, (stage, field, _) in COSTS.items():
        pts = sorted((r["n"], r["stages"][stage][field]) for r in records if stage in r["stages"])
        use = [p for p in pts if p[0] >= low]
        use = use if len(use) >= 2 else pts
        if len(use) >= 2:
            x, y = np.log10([p[0] for p in use]), np.log10([max(p[1], 1e-9) for p in use])
            out[key] = {"slope": float(np.polyfit(x, y, 1)[0]), "from": use[0][0], "to": use[-1][0]}
    return out


def plot(records: list[dict], slopes: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, mx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, (stage, field, label) in COSTS.items():
        pts = sorted((r["n"], r["stages"][stage][field]) for r in records if stage in r["stages"])
        if pts:
            s = slopes.get(key, {}).get("slope")
            ax.plot(*zip(*pts), "o-", label=f"{label}" + (f" (slope {s:.2f})" if s is not None else ""))
    ax.set(xscale="log", yscale="log", xlabel="recordings N", ylabel="seconds", title="cost per stage vs N")
    ax.legend(fontsize=7, loc="upper left")
    for stage in STAGES:
        pts = sorted((r["n"], r["stages"][stage]["peak_anon_mb"]) for r in records if stage in r["stages"])
        if pts:
            mx.plot(*zip(*pts), "o-", label=stage)
    mx.set(xscale="log", yscale="log", xlabel="recordings N", ylabel="MB",
           title="peak anonymous RSS per stage (mapped pages not counted)")
    mx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _linear(records, stage, field) -> tuple[float, float]:
    """(intercept, per-record slope) of ``field`` against N, least squares over the measured sizes."""
    pts = sorted((r["n"], r["stages"][stage][field]) for r in records if stage in r["stages"])
    if len(pts) < 2:
        n, v = pts[0]
        return 0.0, v / n
    b, a = np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)
    return float(a), float(b)


def projection(records: list[dict], shape: dict | None, cores: int = 32) -> list[dict]:
    """800k and 3.2M recordings of 12 leads x 10 s at 500 Hz from the measured per-record figures."""
    rows = []
    big = max(records, key=lambda r: r["n"])
    per_sample = (SHAPE["leads"] * SHAPE["seconds"] * SHAPE["fs"]) / (big["leads"] * big["seconds"] * big["fs"])
    if shape is not None:  # measured at the target shape
        cache_b = shape["stages"]["build"]["cache_bytes_per_record"]
        source_b = shape["stages"]["build"]["source_disk_bytes_per_record"]
        rps = shape["stages"]["build"]["records_per_s"]
        basis = f"shape probe: {shape['n']:,} records of 12 leads x 10 s at 500 Hz"
    else:  # scaled by the number of samples from the largest size
        cache_b = big["stages"]["build"]["cache_bytes_per_record"] * per_sample
        source_b = big["stages"]["build"]["source_disk_bytes_per_record"] * per_sample
        rps = big["stages"]["build"]["records_per_s"] / per_sample
        basis = f"N={big['n']:,} scaled by samples per record (x{per_sample:g})"
    open_a, open_b = _linear(records, "open", "open1_s")
    rss_a, rss_b = _linear(records, "open", "peak_anon_mb")
    for n in PROJECT:
        rows.append({"n": n, "cache_gb": n * cache_b / 1e9, "source_gb": n * source_b / 1e9,
                     "build_h_1core": n / rps / 3600, f"build_h_{cores}cores": n / rps / cores / 3600,
                     "open_rss_mb_per_rank": rss_a + rss_b * n, "open_s": open_a + open_b * n, "basis": basis})
    return rows


def table(records: list[dict], slopes: dict, proj: list[dict]) -> str:
    lines = ["| N | build s (rec/s; x rdrecord) | cache B/rec | open 1st / 2nd s | RSS anon MB: open / pretrain / "
             "probe | step ms (data wait) | epoch s (steps) | embed s | probe s (test rows) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: r["n"]):
        s = r["stages"]
        b, o, p, e, q = (s.get(k, {}) for k in STAGES)
        ratio = b["records_per_s"] / b["rdrecord_per_s"] if b else float("nan")
        lines.append(
            f"| {r['n']:,} | {b.get('build_s', np.nan):.1f} ({b.get('records_per_s', np.nan):,.0f}; {ratio:.2f}) | "
            f"{b.get('cache_bytes_per_record', np.nan):,.0f} | {o.get('open1_s', np.nan):.2f} / "
            f"{o.get('open2_s', np.nan):.2f} | {o.get('peak_anon_mb', np.nan):.0f} / {p.get('peak_anon_mb', np.nan):.0f}"
            f" / {q.get('peak_anon_mb', np.nan):.0f} | {1000 * p.get('step_s', np.nan):.0f} "
            f"({100 * p.get('data_wait_frac', np.nan):.1f} %) | {p.get('epoch_s', np.nan):.0f} "
            f"({p.get('steps_per_epoch', 0):,}) | {e.get('embed_s', np.nan):.1f} | {q.get('probe_s', np.nan):.1f} "
            f"({q.get('test_records', 0):,}) |")
    lines += ["", "| stage | fitted slope of log cost vs log N | sizes |", "|---|---|---|"]
    for key, v in slopes.items():
        lines.append(f"| {COSTS[key][2]} | {v['slope']:.2f} | {v['from']:,} - {v['to']:,} |")
    if proj:
        lines += ["", "| recordings (12 leads x 10 s, 500 Hz) | cache GB | WFDB files GB | build h, 1 core / "
                  "32 cores | open s | RSS anon per rank at open MB |", "|---|---|---|---|---|---|"]
        for p in proj:
            lines.append(f"| {p['n']:,} | {p['cache_gb']:,.0f} | {p['source_gb']:,.0f} | {p['build_h_1core']:.1f} / "
                         f"{p['build_h_32cores']:.2f} | {p['open_s']:,.0f} | {p['open_rss_mb_per_rank']:,.0f} |")
        lines.append(f"\nPer-record figures from the {proj[0]['basis']}; open time and RSS from a straight-line fit "
                     "over the measured sizes.")
    return "\n".join(lines)


def write_outputs(out: Path, records: list[dict], shape: dict | None, probes=()) -> dict:
    slopes = fit_slopes(records)
    proj = projection(records, shape) if records else []
    summary = {"sizes": [r["n"] for r in records], "slopes": slopes, "projection": proj, "records": records,
               "shape_probe": shape, "probe_alone": list(probes)}
    (out / "scale.json").write_text(json.dumps(summary, indent=1, default=float))
    lines = [table(records, slopes, proj)] if records else []
    for p in probes:
        q = p["stages"]["probe"]
        lines.append(f"\nThe probe alone at {q['test_records']:,} test rows ({q['train_records']:,} training rows, "
                     f"2 labels, {q['bootstrap']:,} resamples): {q['probe_s']:.1f} s, peak RSS {q['peak_rss_mb']:,.0f} "
                     f"MB (anonymous {q['peak_anon_mb']:,.0f} MB).")
    (out / "scale_table.md").write_text("\n".join(lines) + "\n")
    if records:
        plot(records, slopes, out / "scale.png")
    return summary


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000,1000000")
    p.add_argument("--out", default="docs/benchmarks", help="scale-N.json per size, scale.json, scale_table.md, "
                   "scale.png")
    p.add_argument("--work", default=None, help="where the datasets and caches go (default: a folder under $TMPDIR)")
    p.add_argument("--leads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fs", type=float, default=100.0)
    p.add_argument("--per-folder", type=int, default=1000, help="records per folder (PhysioNet-like layout)")
    p.add_argument("--steps", type=int, default=30, help="pretraining steps measured per size")
    p.add_argument("--patients-per-batch", type=int, default=64)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--rdrecord-sample", type=int, default=2000, help="records read with wfdb.rdrecord per size")
    p.add_argument("--workers", type=int, default=1, help="processes writing the synthetic files")
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS threads of each stage")
    p.add_argument("--shape", action="store_true", help="also the shape probe (1,000 records of 12 x 10 s at 500 Hz)")
    p.add_argument("--force", action="store_true", help="re-measure sizes whose JSON exists")
    p.add_argument("--keep", action="store_true", help="keep each size's data, cache and run after measuring it")
    p.add_argument("--quick", action="store_true", help="200 recordings, 3 steps, 100 resamples (the test)")
    p.add_argument("--probe-rows", type=int, default=0, help="also the probe alone at this many test rows "
                   "(synthetic features; scale-probe-N.json)")
    p.add_argument("--stage", choices=[*STAGES, "probe-rows"], help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dataset-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import tempfile

    args.work = str(Path(args.work or Path(tempfile.gettempdir()) / "tscl-bench-scale").resolve())
    if args.stage:
        return run_stage(args)
    if args.quick:
        args.sizes, args.steps, args.bootstrap, args.patients_per_batch, args.per_folder = "200", 3, 100, 8, 50
    try:
        sizes = [] if args.sizes == "none" else sorted({int(s) for s in args.sizes.split(",") if s})
    except ValueError:
        raise SystemExit(f"bench_scale: --sizes {args.sizes!r}: give comma-separated record counts or none") from None
    if (not sizes and not args.probe_rows) or min(sizes, default=50) < 50:
        raise SystemExit("bench_scale: every size must be at least 50 recordings (--sizes none with --probe-rows)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for n in sizes:
        path = out / f"scale-{n}.json"
        if path.exists() and not args.force:
            print(f"N={n:,}: {path} exists, skipped (--force re-measures)")
            continue
        record = measure_size(args, n, leads=args.leads, seconds=args.seconds, fs=args.fs, name=f"data-{n}")
        path.write_text(json.dumps(record, indent=1, default=float))
    shape_path = out / "scale-shape.json"
    if args.shape and (args.force or not shape_path.exists()):
        record = measure_size(args, 1000, name="data-shape", stages=("build", "open"), **SHAPE)
        shape_path.write_text(json.dumps(record, indent=1, default=float))
    if args.probe_rows:
        path = out / f"scale-probe-{args.probe_rows}.json"
        stage = _subprocess_stage(args, "probe-rows", args.probe_rows, "none")
        path.write_text(json.dumps({"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                    "threads": args.threads, "stages": {"probe": stage}}, indent=1, default=float))
        print(f"probe alone at {args.probe_rows:,} test rows, {args.bootstrap} resamples: {stage['probe_s']:.1f} s, "
              f"peak RSS {stage['peak_rss_mb']:.0f} MB (anonymous {stage['peak_anon_mb']:.0f} MB)")
    records = [json.loads(f.read_text()) for f in sorted(out.glob("scale-[0-9]*.json"))]
    probes = [json.loads(f.read_text()) for f in sorted(out.glob("scale-probe-*.json"))]
    summary = write_outputs(out, records, json.loads(shape_path.read_text()) if shape_path.exists() else None, probes)
    print((out / "scale_table.md").read_text())
    return summary


if __name__ == "__main__":
    main()
