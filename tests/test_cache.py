"""The sharded waveform cache: lossless int16 payloads, parallel and resumable builds, stats-only opens,
one listing per folder, the node-local build guard, and I/O faults that end in one line and a rebuild."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import wfdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tscl.loaders import LoaderError, Recording, WaveformCache, load_wfdb_cohort, read_wfdb
from tscl.loaders import cache as cache_mod
from tscl.loaders import shards, sources, wfdb_dir
from tscl.loaders.wfdb_write import write_wfdb

REPO = Path(__file__).resolve().parents[1]


def physionet_like(root: Path, n: int, per_folder: int = 10, seed: int = 0, leads=("I", "II")) -> Path:
    """``n`` records in folders of ``per_folder`` (``p00/r0000`` ...) and a metadata table listing them by path."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rel = f"p{i // per_folder:02d}/r{i:04d}"
        write_wfdb(root / rel, rng.normal(scale=0.5, size=(len(leads), 200)), 100, list(leads))
        rows.append({"patient_id": f"p{i // 2}", "record_id": f"r{i:04d}", "path": rel, "y": i % 2})
    pl.DataFrame(rows).write_csv(root / "metadata.csv")
    return root


def folder_bytes(folder: Path) -> dict:
    """Every file under ``folder`` (but the lock and the per-machine sources table), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (".lock", "sources.parquet")}


# ---- lossless encodings --------------------------------------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gain=st.one_of(st.sampled_from([1.0, 200.0, 1000.0, 6.25, 0.5, float(np.float32(204.8))]),
                      st.floats(0.0010000000474974513, 1e5, width=32)),
       baseline=st.integers(-(2**22), 2**22), unit=st.sampled_from([1.0, 1e-3, 1e3]))
def test_float32_decoding_equals_the_float64_formula_for_every_int16(gain, baseline, unit):
    """Where gain is a float32 number and the baseline an integer, decoding divides in float32 (double rounding
    through float64 is innocuous for division): checked on all 65,536 digital values."""
    d = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)
    u = np.float32(unit)
    expected = ((d - float(baseline)) / gain).astype(np.float32) * u
    got = shards._decode_i16(d, np.float64(gain), np.float64(baseline), u)
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=st.integers(1, 3), t=st.integers(1, 40), data=st.data(),
       gain=st.one_of(st.sampled_from([1.0, 200.0, 1000.0, 204.8, 6.25, 0.5]), st.floats(1e-3, 1e5),
                      st.floats(0.0010000000474974513, 1e5, width=32)),
       baseline=st.integers(-2000, 2000), unit=st.sampled_from([1.0, 1e-3, 1e3]))
def test_int16_round_trip_gives_back_the_adc_values_and_the_samples(c, t, data, gain, baseline, unit):
    digital = np.array(data.draw(st.lists(st.integers(-32767, 32767), min_size=c * t, max_size=c * t)),
                       dtype=np.int64).reshape(c, t)
    # what read_wfdb returns: float32((d - baseline) / gain), then times the unit factor in float32
    signal = ((digital - float(baseline)) / gain).astype(np.float32) * np.float32(unit)
    rec = Recording(signal, 100.0, tuple(f"c{i}" for i in range(c)), "p", "r",
                    adc=tuple((gain, float(baseline), unit) for _ in range(c)))
    code, payload = shards.encode(rec)
    assert code == shards.I16 and len(payload) == shards.payload_bytes(code, c, t) < 4 * c * t + 20 * c
    buf = np.frombuffer(payload + bytes(-len(payload) % 16), np.uint8)
    np.testing.assert_array_equal(shards.decode_one(buf, 0, code, c, t), signal)
    assert np.array_equal(buf[20 * c: 20 * c + 2 * c * t].view("<i2").reshape(c, t), digital)
    np.testing.assert_array_equal(shards.decode_rows(np.concatenate([buf, buf]), np.array([0, len(buf)]), code, c, t),
                                  np.stack([signal, signal]))


@settings(max_examples=60, deadline=None)
@given(x=st.lists(st.one_of(st.floats(width=32, allow_nan=True, allow_infinity=True), st.integers(-4, 4)),
                  min_size=1, max_size=60),
       adc=st.one_of(st.none(), st.tuples(st.floats(-1e6, 1e6), st.floats(-1e4, 1e4), st.sampled_from([1.0, 1e-3]))))
def test_any_float_signal_comes_back_exactly_whatever_the_adc_hint(x, adc):
    """Float sources without ADC information (or with a wrong one) stay float32, or float16 only when exact."""
    signal = np.array(x, dtype=np.float32)[None, :]
    rec = Recording(signal, 50.0, ("a",), "p", "r", adc=(adc,) if adc else None)
    code, payload = shards.encode(rec)
    buf = np.frombuffer(payload + bytes(-len(payload) % 16), np.uint8)
    back = shards.decode_one(buf, 0, code, 1, signal.shape[1])
    assert np.array_equal(back, signal, equal_nan=True)
    if code == shards.F16:
        assert np.array_equal(signal.astype(np.float16).astype(np.float32), signal, equal_nan=True)


@pytest.mark.parametrize("fmt", ["16", "212", "80"])
def test_wfdb_digital_values_and_samples_round_trip_exactly(tmp_path, fmt):
    root = tmp_path / "cohort"
    root.mkdir()
    rng = np.random.default_rng(int(fmt))
    for i in range(3):
        wfdb.wrsamp(f"r{i}", fs=250, units=["mV", "uV"], sig_name=["I", "II"], fmt=[fmt, fmt],
                    p_signal=rng.normal(scale=[0.3, 300.0], size=(300, 2)), write_dir=str(root))
    (root / "metadata.csv").write_text("patient_id,record_id\np0,r0\np0,r1\np1,r2\n")
    cache = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    assert cache.encodings() == {"f32": 0, "f16": 0, "i16": 3}
    assert cache.nbytes < 3 * 2 * 300 * 4 * 0.55  # about half of float32
    for i in range(3):
        assert np.array_equal(cache[i], read_wfdb(root / f"r{i}").signal)  # exactly what the reader gives
        stored = cache.stored(i)
        raw = wfdb.rdrecord(str(root / f"r{i}"), physical=False)
        np.testing.assert_array_equal(stored["digital"], raw.d_signal.T)  # the ADC values, losslessly
        np.testing.assert_array_equal(stored["gain"], raw.adc_gain)
        np.testing.assert_array_equal(stored["unit"], np.float32([1.0, 1e-3]))
    np.testing.assert_array_equal(cache.read([2, 0]), np.stack([cache[2], cache[0]]))


def test_resampled_and_interpolated_signals_stay_float32(tmp_path):
    root = physionet_like(tmp_path / "d", 4)
    cache = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False, fs=64)
    assert cache.encodings()["f32"] == 4 and cache.fs == 64.0


# ---- parallel, resumable builds ------------------------------------------------------------------

def test_parallel_build_equals_serial_build_byte_for_byte(tmp_path):
    root = physionet_like(tmp_path / "d", 70, per_folder=9)
    serial = load_wfdb_cohort(root, cache_dir=tmp_path / "serial", progress=False, workers=0)
    parallel = load_wfdb_cohort(root, cache_dir=tmp_path / "parallel", progress=False, workers=2)
    assert len(serial._manifest["shards"]) == 35 and serial.encodings()["i16"] == 70  # 2 records each: >= 64 shards
    assert folder_bytes(serial.dir) == folder_bytes(parallel.dir)
    assert serial.index.equals(parallel.index)
    np.testing.assert_array_equal(np.asarray(serial.stack()), np.asarray(parallel.stack()))
    with cache_mod.cache_options(shard_bytes=1000):  # one record per shard: other shards, the same samples
        small = load_wfdb_cohort(root, cache_dir=tmp_path / "small", progress=False, workers=0)
    assert len(small._manifest["shards"]) == 70
    np.testing.assert_array_equal(np.asarray(small.stack()), np.asarray(serial.stack()))


_KILLED_BUILD = """
import sys, time
from tscl.loaders import wfdb_dir
real = wfdb_dir.read_wfdb
def slow(*a, **k):
    time.sleep(0.15)
    return real(*a, **k)
wfdb_dir.read_wfdb = slow
wfdb_dir.load_wfdb_cohort(sys.argv[1], cache_dir=sys.argv[2], progress=False, workers=0)
"""


def test_killed_build_resumes_from_its_finished_shards(tmp_path, monkeypatch):
    root = physionet_like(tmp_path / "d", 40)
    target = tmp_path / "c"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(root), str(target)])
    try:
        deadline = time.monotonic() + 120
        while len(list(target.glob(".build-*/*.json"))) < 6:
            assert child.poll() is None and time.monotonic() < deadline, "the build ended before it was killed"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    done = len(list(target.glob(".build-*/*.json")))
    assert 6 <= done < 40 and not (target / "manifest.json").exists()
    calls = []
    real = wfdb_dir.read_wfdb
    monkeypatch.setattr(wfdb_dir, "read_wfdb", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    resumed = load_wfdb_cohort(root, cache_dir=target, progress=False, workers=0)
    assert len(calls) == 40 - done + 1  # the unfinished shards, and the first record (the cohort's reference)
    assert not list(target.glob(".build-*"))
    monkeypatch.undo()
    fresh = load_wfdb_cohort(root, cache_dir=tmp_path / "fresh", progress=False, workers=0)
    assert folder_bytes(resumed.dir) == folder_bytes(fresh.dir)


# ---- opens: one listing per folder, stats and no reads --------------------------------------------

def _count_listings(monkeypatch, under: Path) -> list:
    seen = []
    real_scandir, real_listdir = os.scandir, os.listdir

    def scandir(path="."):
        if str(path).startswith(str(under)):
            seen.append(str(path))
        return real_scandir(path)

    def listdir(path="."):
        if str(path).startswith(str(under)):
            seen.append(str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", listdir)
    return seen


def test_an_open_lists_each_folder_once_and_no_record_folder_per_record(tmp_path, monkeypatch):
    root = physionet_like(tmp_path / "d", 60, per_folder=20)
    (root / "p00" / "notes.txt").write_text("not a record")
    seen = _count_listings(monkeypatch, root)
    first = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False, workers=0)
    assert sorted(seen) == sorted(str(root / f"p{k:02d}") for k in range(3))
    seen.clear()
    again = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False, workers=0)
    assert sorted(seen) == sorted(str(root / f"p{k:02d}") for k in range(3)) and again.fingerprint == first.fingerprint


def test_record_files_match_glob_with_one_listing_per_folder(tmp_path):
    for name in ("a.hea", "a.dat", "a.b.hea", "a.b.dat", "ab.hea", "b.hea", ".a.hea"):
        (tmp_path / name).write_text("x")
    records = [tmp_path / n for n in ("a", "a.b", "ab", "b", "missing")]
    assert sources.record_files(records) == {r: sorted(tmp_path.glob(f"{r.name}.*")) for r in records}


def test_second_open_stats_and_reads_no_source_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TSCL_CACHE", str(tmp_path / "user"))
    root = physionet_like(tmp_path / "d", 12)
    hashed = []
    real = sources.hash_file
    monkeypatch.setattr(sources, "hash_file", lambda p: hashed.append(p) or real(p))
    first = load_wfdb_cohort(root, progress=False, workers=0)
    assert len(hashed) == 2 * 12 + 1  # every .hea, .dat and the table, once
    hashed.clear()
    opened = []
    import builtins

    real_open = builtins.open

    def spy_open(file, *args, **kwargs):
        if str(file).startswith(str(root)):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    again = load_wfdb_cohort(root, progress=False, workers=0)
    assert again.dir == first.dir and hashed == [] and opened == []
    monkeypatch.setattr(builtins, "open", real_open)
    with cache_mod.cache_options(verify=True):  # --verify: every source file and cache file hashed again
        load_wfdb_cohort(root, progress=False, workers=0)
    assert len(hashed) == 2 * 12 + 1


def test_moved_copy_is_hashed_once_then_opened_by_stats(tmp_path, monkeypatch):
    monkeypatch.setenv("TSCL_CACHE", str(tmp_path / "user"))
    root = physionet_like(tmp_path / "d", 6)
    first = load_wfdb_cohort(root, progress=False, workers=0)
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, moved)
    hashed = []
    real = sources.hash_file
    monkeypatch.setattr(sources, "hash_file", lambda p: hashed.append(p) or real(p))
    monkeypatch.setattr(wfdb_dir, "read_wfdb", lambda *a, **k: pytest.fail("the cache should have been reused"))
    assert load_wfdb_cohort(moved, progress=False).dir == first.dir and len(hashed) == 13  # re-hash decides
    hashed.clear()
    assert load_wfdb_cohort(moved, progress=False).dir == first.dir and hashed == []


def test_a_changed_file_is_hashed_again_and_rebuilds(tmp_path):
    root = physionet_like(tmp_path / "d", 5)
    first = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    write_wfdb(root / "p00" / "r0003", np.full((2, 200), 0.25), 100, ["I", "II"])
    again = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    assert again.fingerprint != first.fingerprint and np.allclose(again[3], 0.25)


def test_split_column_equals_hash_split(tmp_path):
    from tscl.datasets import hash_split, hash_split_column

    ids = pl.Series(["7", "007", "p1", "p1", "", "x y", "7"])
    assert hash_split_column(ids).to_list() == hash_split(ids.to_list())


# ---- faults: one line naming the path, and a rebuild that says so --------------------------------

def _cohort_cache(tmp_path: Path, n: int = 4):
    root = physionet_like(tmp_path / "d", n)
    cache = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    return root, cache, np.asarray(cache.stack())


@pytest.mark.parametrize("damage", ["manifest-garbage", "manifest-old-format", "index-truncated", "shard-missing",
                                    "shard-truncated", "index-corrupt-verify"])
def test_a_damaged_cache_is_found_and_rebuilt_saying_so(tmp_path, damage):
    root, cache, expected = _cohort_cache(tmp_path)
    folder = cache.dir
    shard = sorted((folder / "shards").glob("*.bin"))[1]
    if damage == "manifest-garbage":
        (folder / "manifest.json").write_text("{not json")
        match = r"manifest\.json: damaged \(not valid JSON\).*rebuilding"
    elif damage == "manifest-old-format":
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))
        (folder / "signals.f32").write_bytes(b"old")
        match = r"manifest\.json: written by another version of tscl \(cache format 2.*rebuilding"
    elif damage == "index-truncated":
        (folder / "index.parquet").write_bytes((folder / "index.parquet").read_bytes()[:100])
        match = r"index\.parquet: truncated: 100 bytes.*rebuilding"
    elif damage == "shard-missing":
        shard.unlink()
        match = rf"{shard.name}: cache file missing.*rebuilding"
    elif damage == "shard-truncated":
        shard.write_bytes(shard.read_bytes()[:-16])
        match = rf"{shard.name}: truncated.*rebuilding"
    else:
        data = bytearray((folder / "index.parquet").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / "index.parquet").write_bytes(bytes(data))
        match = r"index\.parquet: content differs from the hash.*rebuilding"
    del cache
    with pytest.raises(LoaderError, match=match.split(".*rebuilding")[0]):
        WaveformCache(folder, verify=True)
    with cache_mod.cache_options(verify=damage.endswith("verify")), pytest.warns(UserWarning, match=match):
        again = load_wfdb_cohort(root, cache_dir=folder, progress=False)
    np.testing.assert_array_equal(np.asarray(again.stack()), expected)
    assert not (folder / "signals.f32").exists() and not list(folder.glob(".build-*"))
    assert WaveformCache(folder, verify=True).fingerprint == again.fingerprint


def test_disk_full_during_a_parallel_plan_build_leaves_the_old_cache_and_no_staging(tmp_path, monkeypatch):
    import errno

    root, cache, expected = _cohort_cache(tmp_path, n=6)
    before = folder_bytes(cache.dir)
    write_wfdb(root / "p00" / "r0002", np.zeros((2, 200)), 100, ["I", "II"])  # new content: a rebuild is due
    calls = {"n": 0}

    def disk_full(f, data):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(data)

    monkeypatch.setattr(shards, "write_bytes", disk_full)
    with pytest.raises(LoaderError, match=r"/c: no space left on device while writing the cache; free space there "
                                          r"or point --cache / \$TSCL_CACHE"):
        load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False, workers=0)
    assert folder_bytes(tmp_path / "c") == before and not list((tmp_path / "c").glob(".build-*"))
    np.testing.assert_array_equal(np.asarray(WaveformCache(tmp_path / "c", verify=True).stack()), expected)


def test_unwritable_cache_folder_is_one_line_naming_it(tmp_path, monkeypatch):
    import errno

    root = physionet_like(tmp_path / "d", 3)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(LoaderError, match=r"a-file/sub: cannot create the cache folder.*writable folder"):
        load_wfdb_cohort(root, cache_dir=tmp_path / "a-file" / "sub", progress=False)
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")) and ".build-" in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(LoaderError, match=r"\.build-\w+: cannot write the cache here \(Read-only file system\); "
                                          r"point --cache / \$TSCL_CACHE at a writable folder"):
        load_wfdb_cohort(root, cache_dir=tmp_path / "ro", progress=False)


def test_cli_options_set_how_caches_are_built(tmp_path, monkeypatch):
    from tscl import cli

    seen = {}
    monkeypatch.setattr(cli, "cmd_embed", lambda args: seen.update(vars(cache_mod._OPTIONS)))
    previous = cache_mod.configure()
    try:
        assert cli.main(["embed", "--data", str(tmp_path), "--run", "r", "--out", "o.npz", "--workers", "3",
                         "--verify", "--shard-mb", "8"]) == 0
        assert seen == {"workers": 3, "verify": True, "shard_bytes": 8 << 20}
    finally:
        cache_mod.configure(**vars(previous))
    root = physionet_like(tmp_path / "d", 3)
    (tmp_path / "a-file").write_text("x")
    proc = subprocess.run([str(Path(sys.executable).parent / "tscl"), "pretrain", "--data", str(root), "--out",
                           str(tmp_path / "run"), "--epochs", "1", "--cache", str(tmp_path / "a-file"), "--quiet"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{tmp_path / 'a-file'}/wfdb-" in proc.stderr and "cannot create the cache folder" in proc.stderr
    # a full disk under the cache folder, in the shard-writing worker processes too (tests/faultshim)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent / "faultshim"),
           "TSCL_FAULT": f"ENOSPC:{tmp_path / 'full'}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "tscl"), "pretrain", "--data", str(root), "--out",
                           str(tmp_path / "run2"), "--epochs", "1", "--cache", str(tmp_path / "full"), "--workers", "2",
                           "--quiet"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{tmp_path / 'full'}/wfdb-" in proc.stderr and "no space left on device while writing the cache" in \
        proc.stderr
    assert not list((tmp_path / "full").rglob("manifest.json")) and not list((tmp_path / "full").rglob(".build-*"))


# ---- the node-local guard -------------------------------------------------------------------------

def _node_rank(rank: int, world: int, port: int, root: str, caches: list[str], out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank % 2), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), TSCL_CACHE=caches[rank // 2])
    from tscl.datasets import open_dataset
    from tscl.distributed import init_distributed, node_local_first, shutdown
    from tscl.loaders import wfdb_dir as wd

    calls, real = [], wd.read_wfdb

    def slow(*a, **k):
        calls.append(1)
        time.sleep(0.1)
        return real(*a, **k)

    wd.read_wfdb = slow
    looked = []  # metadata tables read and source files stat'ed
    for name in ("read_metadata", "stat_records", "stat_files"):
        def spy(*a, _real=getattr(wd, name), _name=name, **k):
            looked.append(_name)
            return _real(*a, **k)

        setattr(wd, name, spy)
    init_distributed("cpu")
    with node_local_first():
        start = time.time()
        ds = open_dataset("wfdb", root, progress=False)
        end = time.time()
    Path(out).write_text(json.dumps({"rank": rank, "reads": len(calls), "start": start, "end": end,
                                     "dir": str(ds.cache.dir), "n": len(ds), "looked": looked,
                                     "rows": ds.index.select("record_id", "split").rows()}))
    shutdown()


def test_node_local_guard_builds_once_per_node_and_nodes_at_once(tmp_path):
    root = physionet_like(tmp_path / "d", 8)
    caches = [str(tmp_path / "node0"), str(tmp_path / "node1")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_node_rank, args=(r, 4, port, str(root), caches, str(tmp_path / f"r{r}.json")))
             for r in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
        assert p.exitcode == 0
    res = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(4)]
    assert [r["reads"] for r in res] == [9, 0, 9, 0]  # each node's first rank reads (8 records + the reference)
    assert all(r["n"] == 8 for r in res) and all(r["rows"] == res[0]["rows"] for r in res)
    # the others open the cache their node's first rank checked: no metadata read, no source file stat'ed
    assert [sorted(set(r["looked"])) for r in res] == [["read_metadata", "stat_files", "stat_records"], [],
                                                       ["read_metadata", "stat_files", "stat_records"], []]
    assert res[0]["dir"] == res[1]["dir"] != res[2]["dir"] == res[3]["dir"]  # one cache per node
    assert res[2]["start"] < res[0]["end"] and res[0]["start"] < res[2]["end"]  # the nodes built at the same time
    assert min(res[1]["start"], res[3]["start"]) >= max(res[0]["end"], res[2]["end"])


def test_a_handed_over_cache_opens_without_the_sources_and_a_damaged_one_is_checked_again(tmp_path, monkeypatch):
    root = physionet_like(tmp_path / "d", 6)
    with cache_mod.recording_opens() as opened:
        first = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    assert list(opened.values()) == [str(first.dir)]
    want = np.array(first.stack())  # a copy: the shard damaged below is mapped by ``first``
    looked = []
    for name in ("read_metadata", "stat_records"):
        real = getattr(wfdb_dir, name)
        monkeypatch.setattr(wfdb_dir, name, lambda *a, _real=real, _n=name, **k: looked.append(_n) or _real(*a, **k))
    with cache_mod.trusting(opened):
        again = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
        assert looked == [] and again.dir == first.dir
        np.testing.assert_array_equal(np.asarray(again.stack()), want)
        other = load_wfdb_cohort(root, cache_dir=tmp_path / "c2", progress=False)  # another load: from the sources
        assert looked == ["read_metadata", "stat_records"] and other.dir != first.dir
        looked.clear()
        shard = sorted((first.dir / "shards").glob("*.bin"))[0]
        shard.write_bytes(shard.read_bytes()[:-16])
        with pytest.warns(UserWarning, match=rf"{shard.name}: truncated.*opening it from the sources instead"):
            rebuilt = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    assert looked == ["read_metadata", "stat_records"]
    np.testing.assert_array_equal(np.asarray(rebuilt.stack()), want)
