"""Data and cache faults: nothing lost, nothing merged, nothing silently wrong (docs/faults.md).

Each test reproduces one fault on tiny synthetic data (or a copy of a small shared sample)
and checks the loader refuses it, reports it, or repairs it.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import wfdb

from tscl.loaders import LoaderError, load_wfdb_cohort, read_metadata

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHYSIONET = DATA / "physionet"
needs_physionet = pytest.mark.skipif(not PHYSIONET.exists(), reason=f"shared PhysioNet sample not found at {PHYSIONET}")

LEADS = ["I", "II"]


def write_record(folder: Path, name: str, n: int = 400, fs: int = 100, leads=LEADS, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sig = np.random.default_rng(seed).normal(size=(n, len(leads)))
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), p_signal=sig, fmt=["16"] * len(leads),
                write_dir=str(folder))


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- data identity: ids are text from the first byte read ---------------------------------------

def test_ids_are_text_leading_zeros_and_decimals_kept(tmp_path):
    meta = write_csv(tmp_path / "metadata.csv",
                     "patient_id,record_id,y\n007,001,0\n7,1,1\n3,a,0\n3.0,b,1\n")
    table = read_metadata(meta)
    assert table["patient_id"].to_list() == ["007", "7", "3", "3.0"]
    assert table["record_id"].to_list() == ["001", "1", "a", "b"]
    assert table["patient_id"].n_unique() == 4  # four patients, none merged


def test_ids_are_text_through_the_cohort_cache(tmp_path):
    root = tmp_path / "cohort"
    for i, name in enumerate(("001", "1", "a", "b")):
        write_record(root, name, seed=i)
    write_csv(root / "metadata.csv", "patient_id,record_id,y\n007,001,0\n7,1,1\n3,a,0\n3.0,b,1\n")
    cache = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    assert cache.index["patient_id"].to_list() == ["007", "7", "3", "3.0"]
    assert cache.index["record_id"].to_list() == ["001", "1", "a", "b"]
    assert cache.index["patient_id"].dtype == pl.Utf8


def test_column_that_turns_to_text_late_still_loads(tmp_path):
    rows = "".join(f"{i},r{i},{i}\n" for i in range(150))
    meta = write_csv(tmp_path / "metadata.csv", "patient_id,record_id,site\n" + rows + "X120,r150,X120\n")
    table = read_metadata(meta)
    assert table.height == 151 and table["patient_id"][-1] == "X120" and table["site"][-1] == "X120"
    assert table["patient_id"][0] == "0"


def test_duplicate_record_ids_are_compared_as_text(tmp_path):
    meta = write_csv(tmp_path / "metadata.csv", "patient_id,record_id\np,001\np,1\np,001\n")
    with pytest.raises(LoaderError, match=r"metadata\.csv: record_id '001' appears twice \(line 2 and line 4\)"):
        read_metadata(meta)


def test_image_table_ids_and_late_text_labels(tmp_path):
    from tscl.loaders.images import load_image_table

    rows = "".join(f"img{i}.npy,{i:03d},{i}\n" for i in range(10050))
    write_csv(tmp_path / "labels.csv", "path,patient_id,site\nimg.npy,7,1\n" + rows + "imgx.npy,X120,X120\n")
    table = load_image_table(tmp_path, check_files=False)
    assert table.index["patient_id"][:3].to_list() == ["7", "000", "001"]
    assert table.index["site"][-1] == "X120"


def test_mimic_subject_ids_that_are_not_canonical_integers_refused(tmp_path):
    import gzip

    from tscl.loaders.mimic_meds import mimic_iv_to_meds

    (tmp_path / "hosp").mkdir()
    with gzip.open(tmp_path / "hosp" / "patients.csv.gz", "wt") as f:
        f.write("subject_id,gender,anchor_age,anchor_year,dod\n007,F,50,2100,\n7,M,60,2100,\n")
    with pytest.raises(LoaderError, match=r"patients\.csv\.gz.*subject_id.*'007'"):
        mimic_iv_to_meds(tmp_path, tmp_path / "out", tables=("hosp/patients",))


# --- caches: concurrent builders, integrity, temporary files -------------------------------------

def _tiny_recordings(seed: int, n: int = 6, jitter: float = 0.0):
    from tscl.loaders import Recording

    rng = np.random.default_rng(seed)
    delay = np.random.default_rng()  # timing differs between processes; the data does not
    for i in range(n):
        if jitter:
            time.sleep(delay.uniform(0, jitter))
        yield Recording(rng.normal(size=(2, 300)).astype(np.float32), 100.0, ("I", "II"), f"p{i // 2}", f"r{i}",
                        labels={"y": i % 2})


def _digest(cache) -> str:
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(cache.stack()).tobytes()
                           + cache.index.drop("source").write_csv().encode()).hexdigest()


def _concurrent_build(args):
    """One builder process: sleep a random while, build the cache with random pauses, report what it opened."""
    from tscl.loaders import build_cache

    cache_dir, seed = args
    time.sleep(np.random.default_rng().uniform(0, 0.02))
    cache = build_cache(_tiny_recordings(seed, jitter=0.004), cache_dir, fingerprint=f"fp{seed}",
                        report={"seed": seed})
    return _digest(cache)


def _concurrent_cohort(args):
    root, cache_dir = args
    time.sleep(np.random.default_rng().uniform(0, 0.02))
    return _digest(load_wfdb_cohort(root, cache_dir=cache_dir, progress=False))


def _folder_bytes(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def test_concurrent_builders_both_succeed_with_the_same_bytes(tmp_path):
    import multiprocessing as mp

    from tscl.loaders import WaveformCache, build_cache

    root = tmp_path / "cohort"
    for i in range(3):
        write_record(root, f"r{i}", seed=i)
    write_csv(root / "metadata.csv", "patient_id,record_id\np0,r0\np0,r1\np1,r2\n")
    with mp.get_context("spawn").Pool(2) as pool:
        for trial in range(20):  # even trials build a fresh folder, odd ones rebuild over it from other data
            cache_dir, seed = str(tmp_path / f"c{trial // 2}"), trial
            a, b = pool.map(_concurrent_build, [(cache_dir, seed), (cache_dir, seed)], chunksize=1)
            assert a == b, f"trial {trial}: the two builders opened different caches"
            assert not list(Path(cache_dir).glob("*.tmp")), f"trial {trial}: temporary files left"
            single = build_cache(_tiny_recordings(seed), tmp_path / "single", fingerprint=f"fp{seed}",
                                 report={"seed": seed})
            assert _folder_bytes(Path(cache_dir)) == _folder_bytes(single.dir), f"trial {trial}: bytes differ"
            assert _digest(WaveformCache(cache_dir)) == a
        for trial in range(3):
            a, b = pool.map(_concurrent_cohort, [(str(root), str(tmp_path / f"k{trial}"))] * 2, chunksize=1)
            assert a == b and not list((tmp_path / f"k{trial}").glob("*.tmp"))
    WaveformCache(tmp_path / "c9", verify=True)


def test_truncated_shard_is_refused_naming_the_file_and_the_loader_rebuilds(tmp_path):
    from tscl.loaders import WaveformCache, build_cache

    build_cache(_tiny_recordings(0), tmp_path / "c", fingerprint="fp")
    (shard,) = (tmp_path / "c" / "shards").glob("*.bin")
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(LoaderError, match=r"c/shards/\w+-00000\.bin.*truncated: 1000 bytes.*14400"):
        WaveformCache(tmp_path / "c")

    root = tmp_path / "cohort"
    for i in range(2):
        write_record(root, f"r{i}", seed=i)
    write_csv(root / "metadata.csv", "patient_id,record_id\np0,r0\np1,r1\n")
    first = load_wfdb_cohort(root, cache_dir=tmp_path / "k", progress=False)
    expected = np.array(first.stack())
    del first
    shard = sorted((tmp_path / "k" / "shards").glob("*.bin"))[-1]
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.warns(UserWarning, match=r"k/shards/\w+-\d{5}\.bin.*truncated.*rebuilding"):
        again = load_wfdb_cohort(root, cache_dir=tmp_path / "k", progress=False)
    np.testing.assert_array_equal(again.stack(), expected)


def test_corrupted_shard_of_the_same_size_is_found_by_verify(tmp_path):
    from tscl.loaders import WaveformCache, build_cache, open_fresh_cache

    build_cache(_tiny_recordings(0), tmp_path / "c", fingerprint="fp")
    (shard,) = (tmp_path / "c" / "shards").glob("*.bin")
    data = bytearray(shard.read_bytes())
    data[4000:4400] = bytes(400)  # partly zeroed, size unchanged
    shard.write_bytes(bytes(data))
    WaveformCache(tmp_path / "c")  # the cheap open checks sizes only
    with pytest.raises(LoaderError, match=r"c/shards/\w+-00000\.bin.*differs from the hash"):
        WaveformCache(tmp_path / "c", verify=True)
    with pytest.raises(LoaderError, match=r"\.bin.*differs from the hash"):
        WaveformCache(tmp_path / "c").verify()
    with pytest.warns(UserWarning, match="rebuilding"):
        assert open_fresh_cache(tmp_path / "c", "fp", verify=True) is None


def _failing_recordings(n_good: int):
    yield from _tiny_recordings(0, n=n_good)
    raise LoaderError("bad.hea", "unreadable")


def test_temporary_files_removed_on_any_error_and_the_old_cache_kept(tmp_path, monkeypatch):
    import errno

    from tscl.loaders import WaveformCache, build_cache
    from tscl.loaders import shards as shards_mod

    old = build_cache(_tiny_recordings(7), tmp_path / "c", fingerprint="old")
    before = _folder_bytes(tmp_path / "c")
    with pytest.raises(LoaderError, match="bad.hea"):
        build_cache(_failing_recordings(3), tmp_path / "c", fingerprint="new")
    assert _folder_bytes(tmp_path / "c") == before

    calls = {"n": 0}

    def disk_full(f, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(data)

    monkeypatch.setattr(shards_mod, "write_bytes", disk_full)
    with pytest.raises(LoaderError, match=r"/c: no space left on device.*free space.*--cache"):
        build_cache(_tiny_recordings(1), tmp_path / "c", fingerprint="new")
    assert _folder_bytes(tmp_path / "c") == before
    monkeypatch.undo()

    def parquet_disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", parquet_disk_full)
    with pytest.raises(LoaderError, match=r"c: no space left on device"):
        build_cache(_tiny_recordings(1), tmp_path / "c", fingerprint="new")
    monkeypatch.undo()
    assert _folder_bytes(tmp_path / "c") == before
    assert WaveformCache(tmp_path / "c", verify=True).fingerprint == old.fingerprint == "old"


def test_temporary_files_of_a_killed_builder_are_swept_but_live_ones_kept(tmp_path):
    import fcntl
    import os

    from tscl.loaders import build_cache

    folder = tmp_path / "c"
    folder.mkdir()
    dead = folder / ".signals.f32.dead.tmp"
    dead.write_bytes(b"x" * 100)
    live = folder / ".signals.f32.live.tmp"
    live.write_bytes(b"y")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a builder still writing
    try:
        build_cache(_tiny_recordings(0), folder, fingerprint="fp")
        assert not dead.exists() and live.exists()
    finally:
        os.close(fd)
    build_cache(_tiny_recordings(0), folder, fingerprint="fp2")
    assert not list(folder.glob("*.tmp"))


# --- source fingerprints and where caches live ------------------------------------------------------

def _cohort(root: Path, n: int = 3) -> Path:
    for i in range(n):
        write_record(root, f"r{i}", seed=i)
    write_csv(root / "metadata.csv", "patient_id,record_id\n" + "".join(f"p{i},r{i}\n" for i in range(n)))
    return root


def _no_reading(monkeypatch):
    from tscl.loaders import wfdb_dir

    def refuse(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(wfdb_dir, "read_wfdb", refuse)
    monkeypatch.setattr(wfdb, "rdrecord", refuse)


def test_content_change_with_mtime_restored_rebuilds(tmp_path):
    import os

    root = _cohort(tmp_path / "cohort")
    first = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    old = np.array(first[1])
    dat = root / "r1.dat"
    st = dat.stat()
    data = bytearray(dat.read_bytes())
    data[100:110] = bytes(10)  # same size, other samples
    dat.write_bytes(bytes(data))
    os.utime(dat, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert dat.stat().st_mtime_ns == st.st_mtime_ns and dat.stat().st_size == st.st_size
    again = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    assert again.fingerprint != first.fingerprint
    assert not np.array_equal(np.array(again[1]), old)
    np.testing.assert_allclose(again[1], wfdb.rdrecord(str(root / "r1")).p_signal.T, rtol=1e-6, atol=1e-6)


def test_moved_dataset_reuses_its_cache(tmp_path, monkeypatch):
    import shutil

    root = _cohort(tmp_path / "here" / "cohort")
    first = load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(root, moved, copy_function=shutil.copyfile)  # new paths, new mtimes, same bytes
    _no_reading(monkeypatch)
    again = load_wfdb_cohort(moved, cache_dir=tmp_path / "c", progress=False)
    assert again.fingerprint == first.fingerprint and len(again) == 3


def test_default_cache_dir_is_per_user_never_the_data_folder(tmp_path, monkeypatch):
    from tscl.loaders import cache_root, default_cache_dir

    monkeypatch.setenv("TSCL_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir("cinc", "ab" * 32) == tmp_path / "mine" / "cinc" / ("ab" * 8)
    monkeypatch.delenv("TSCL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "tscl"
    with pytest.raises(ValueError, match="plain folder name"):
        default_cache_dir("../x", "ab")

    monkeypatch.setenv("TSCL_CACHE", str(tmp_path / "mine"))
    root = _cohort(tmp_path / "cohort")
    cache = load_wfdb_cohort(root, progress=False)
    assert cache.dir == default_cache_dir("wfdb_cohort", cache.fingerprint)
    assert cache.dir.is_relative_to(tmp_path / "mine")
    assert sorted(p.name for p in root.iterdir()) == ["metadata.csv", "r0.dat", "r0.hea", "r1.dat", "r1.hea",
                                                      "r2.dat", "r2.hea"]


def _tree(root: Path) -> list:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def _set_writable(root: Path, writable: bool) -> None:
    import os
    import stat

    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        os.chmod(p, mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_read_only_dataset_works_end_to_end(tmp_path, monkeypatch):
    """A dataset on a read-only mount (here: a copy with write permission removed; the tree is
    also compared before and after, since root may write anyway) loads, caches elsewhere and reuses."""
    import shutil

    monkeypatch.setenv("TSCL_CACHE", str(tmp_path / "user_cache"))
    ro = tmp_path / "ro"
    root = _cohort(ro / "cohort")
    if PHYSIONET.exists():
        (ro / "cinc").mkdir()
        for name in ("E07500", "HR06000"):
            for ext in ("hea", "mat"):
                shutil.copy(PHYSIONET / "challenge-2021" / f"{name}.{ext}", ro / "cinc")
        (ro / "mitdb").mkdir()
        for ext in ("hea", "dat", "atr"):
            shutil.copy(PHYSIONET / "mitdb" / f"100.{ext}", ro / "mitdb")
    before = _tree(ro)
    _set_writable(ro, False)
    try:
        cohort = load_wfdb_cohort(root, progress=False)
        assert len(cohort) == 3 and cohort.dir.is_relative_to(tmp_path / "user_cache")
        assert load_wfdb_cohort(root, progress=False).dir == cohort.dir
        if PHYSIONET.exists():
            from tscl.loaders import load_annotated, load_cinc

            cinc = load_cinc(ro / "cinc", progress=False)
            assert len(cinc) == 2 and cinc.dir.is_relative_to(tmp_path / "user_cache")
            beats = load_annotated([ro / "mitdb" / "100"], "beats", progress=False)
            assert len(beats) > 2000 and beats.dir.is_relative_to(tmp_path / "user_cache")
        assert _tree(ro) == before  # nothing written into the dataset
    finally:
        _set_writable(ro, True)


# --- sampling rates -------------------------------------------------------------------------------

@pytest.mark.parametrize("fs", ["0", "-250", "nan"])
def test_header_rate_not_positive_is_refused_naming_the_file(tmp_path, fs):
    from tscl.loaders import read_wfdb

    write_record(tmp_path, "rate")
    hea = tmp_path / "rate.hea"
    lines = hea.read_text().splitlines()
    fields = lines[0].split()
    fields[2] = fs
    hea.write_text("\n".join([" ".join(fields), *lines[1:]]) + "\n")
    with pytest.raises(LoaderError, match=r"rate\.hea.*sampling frequency.*positive"):
        read_wfdb(tmp_path / "rate")


def test_recording_with_rate_not_positive_is_refused():
    from tscl.loaders import Recording

    with pytest.raises(LoaderError, match=r"x\.hea.*sampling frequency 0"):
        Recording(np.zeros((1, 10), np.float32), 0.0, ("I",), "p", "r", source="x.hea")


def test_mixed_rates_in_one_cohort_refused_or_resampled(tmp_path):
    from tscl.loaders import Recording, build_cache

    root = tmp_path / "cohort"
    write_record(root, "r0", fs=100, n=400)
    write_record(root, "r1", fs=250, n=1000, seed=1)
    write_csv(root / "metadata.csv", "patient_id,record_id\np0,r0\np1,r1\n")
    with pytest.raises(LoaderError, match=r"r1\.hea.*250(\.0)? Hz.*r0.*100(\.0)? Hz"):
        load_wfdb_cohort(root, cache_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "c" / "manifest.json").exists()
    skipped = load_wfdb_cohort(root, cache_dir=tmp_path / "s", progress=False, on_error="skip")
    assert skipped.index["record_id"].to_list() == ["r0"] and "250" in skipped.report["skipped"][0]["problem"]
    same = load_wfdb_cohort(root, cache_dir=tmp_path / "r", progress=False, fs=100)
    assert set(same.index["fs"]) == {100.0} and same.fs == 100.0 and same.stack().shape == (2, 2, 400)
    # the cache itself refuses to mix rates, whoever builds it
    recs = [Recording(np.zeros((1, 100), np.float32), fs, ("I",), "p", f"r{fs}", source=f"r{fs}.hea")
            for fs in (100, 360)]
    with pytest.raises(LoaderError, match=r"r360\.hea.*360(\.0)? Hz.*r100.*100(\.0)? Hz"):
        build_cache(recs, tmp_path / "b")
    mixed = build_cache(recs, tmp_path / "b", allow_mixed_rates=True)
    with pytest.raises(LoaderError, match=r"r360.*360(\.0)? Hz.*r100.*100(\.0)? Hz"):
        mixed.fs


@needs_physionet
def test_annotated_records_of_two_rates_refused_or_resampled(tmp_path):
    from tscl.loaders import load_annotated

    records = [PHYSIONET / "mitdb" / "100", PHYSIONET / "svdb" / "800"]  # 360 Hz and 128 Hz
    with pytest.raises(LoaderError, match=r"800\.hea.*128(\.0)? Hz.*100.*360(\.0)? Hz"):
        load_annotated(records, "beats", tmp_path / "a", progress=False)
    cache = load_annotated(records, "beats", tmp_path / "b", progress=False, fs=128)
    assert cache.fs == 128.0 and cache.stack().shape[1:] == (2, 90)  # 0.25 s + 0.45 s at 128 Hz
    alone = load_annotated(records[1:], "beats", tmp_path / "c", progress=False)
    n800 = int((cache.index["patient_id"] == "800").sum())
    assert n800 == len(alone)
    np.testing.assert_array_equal(cache.stack()[len(cache) - n800:], alone.stack())


# --- annotations ------------------------------------------------------------------------------------

def _copy_record(src: Path, dst: Path, exts=("hea", "dat", "atr")) -> Path:
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for ext in exts:
        shutil.copy(src.parent / f"{src.name}.{ext}", dst)
    return dst / src.name


@needs_physionet
@pytest.mark.parametrize("keep", [0.5, 0.999, 2])
def test_truncated_annotation_file_is_refused_naming_the_file(tmp_path, keep):
    from tscl.loaders import load_annotated, read_beats

    rec = _copy_record(PHYSIONET / "mitdb" / "100", tmp_path / "mitdb")
    atr = rec.parent / "100.atr"
    data = atr.read_bytes()
    cut = data[: int(len(data) * keep) & ~1] if keep < 1 else data[:-keep]  # mid-file, near the end, the marker
    atr.write_bytes(cut)
    assert len(wfdb.rdann(str(rec), "atr").sample) > 0  # wfdb reads what is left without complaint
    with pytest.raises(LoaderError, match=r"100\.atr.*truncated"):
        read_beats(rec)
    _copy_record(PHYSIONET / "svdb" / "800", tmp_path / "svdb")
    cache = load_annotated([tmp_path / "svdb" / "800", rec], "beats", tmp_path / "c", progress=False, on_error="skip")
    assert set(cache.index["patient_id"]) == {"800"}
    assert [Path(s["path"]).name for s in cache.report["skipped"]] == ["100.atr"]


@needs_physionet
def test_every_real_annotation_file_passes_the_check():
    from tscl.loaders.annotations import check_annotation_file

    files = sorted(PHYSIONET.rglob("*.atr"))
    assert len(files) >= 6
    for atr in files:
        assert check_annotation_file(atr) == len(wfdb.rdann(str(atr.with_suffix("")), "atr").sample), atr


# --- what windowing leaves out is counted ---------------------------------------------------------

def _rhythm_record(folder: Path, name: str = "af") -> Path:
    """60 s at 100 Hz: unannotated 0-5 s, N 5-20 s, AFIB 20-25 s (shorter than a 10 s window), N 25-60 s."""
    write_record(folder, name, n=6000, fs=100)
    wfdb.wrann(name, "atr", np.array([500, 2000, 2500]), symbol=["+"] * 3, aux_note=["(N", "(AFIB", "(N"],
               write_dir=str(folder))
    return folder / name


def test_short_af_episode_and_unannotated_part_are_counted(tmp_path):
    from tscl.loaders import load_annotated

    rec = _rhythm_record(tmp_path / "rec")
    with pytest.warns(UserWarning, match=r"1 AFIB episode\(s\) \(5\.0 s\) shorter than a window.*5\.0 s before"):
        cache = load_annotated([rec], "rhythm", tmp_path / "c", progress=False, window_s=10)
    assert cache.index["rhythm"].to_list() == ["N", "N", "N", "N"]  # 5-15, 25-35, 35-45, 45-55
    r = cache.report["records"][0]
    assert r["short_intervals"] == {"AFIB": {"intervals": 1, "samples": 500, "seconds": 5.0}}
    assert r["unannotated_s"] == 5.0
    assert r["samples"] == {"kept": 4000, "nan": 0, "tail": 500 + 500, "short_intervals": 500, "unannotated": 500}
    assert sum(r["samples"].values()) == r["n_samples"] == 6000  # every sample accounted for
    d = cache.report["dropped"]
    assert d["short_intervals"] == {"AFIB": {"intervals": 1, "seconds": 5.0}} and d["tail_s"] == 10.0
    assert "shorter than one 10 s window" in d["why"]["short_intervals"]


@needs_physionet
def test_cpsc_rhythm_windows_account_for_every_sample(tmp_path):
    from tscl.loaders import load_annotated

    records = sorted(p.with_suffix("") for p in (PHYSIONET / "cpsc2021").glob("*.hea"))
    with pytest.warns(UserWarning, match="before the first rhythm annotation"):
        cache = load_annotated(records, "rhythm", tmp_path / "c", progress=False, window_s=10, default_rhythm=None)
    for r in cache.report["records"]:
        assert sum(r["samples"].values()) == r["n_samples"], r["source"]
    non_af = next(r for r in cache.report["records"] if r["source"].endswith("data_21_7.hea"))
    assert non_af["kept"] == 0 and non_af["unannotated_s"] == 47201 / 200
    assert any(s.endswith("data_21_7.hea") for s in cache.report["dropped"]["records_without_windows"])


# --- MEDS codes missing from codes.parquet ----------------------------------------------------------

def _meds_folder(root: Path, codes: list[str], known: list[str]) -> Path:
    from datetime import datetime

    (root / "data").mkdir(parents=True)
    (root / "metadata").mkdir()
    pl.DataFrame({"subject_id": [1] * len(codes), "time": [datetime(2020, 1, 1, i) for i in range(len(codes))],
                  "code": codes, "numeric_value": [None] * len(codes)},
                 schema={"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.Utf8,
                         "numeric_value": pl.Float32}).write_parquet(root / "data" / "0.parquet")
    pl.DataFrame({"code": known, "description": ["x"] * len(known)}).write_parquet(root / "metadata" / "codes.parquet")
    return root


def test_meds_codes_absent_from_codes_parquet_are_reported(tmp_path):
    import warnings

    from tscl.loaders.meds import scan_meds, unknown_codes

    root = _meds_folder(tmp_path / "m", ["HR", "LAB//A", "LAB//A", "LAB//B", "HR"], ["HR"])
    with pytest.warns(UserWarning, match=r"2 code\(s\).*3 events.*not in metadata/codes\.parquet.*'LAB//A'"):
        events = scan_meds(root).collect()
    assert events.height == 5  # MEDS allows them: nothing is dropped
    assert unknown_codes(root).rows() == [("LAB//A", 2), ("LAB//B", 1)]
    known = _meds_folder(tmp_path / "k", ["HR"], ["HR"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scan_meds(known).collect()


# --- channels averaged down to the frame rate ---------------------------------------------------------

@needs_physionet
def test_multi_rate_mimic_record_averaged_to_the_frame_rate_is_recorded(tmp_path):
    from tscl.loaders import read_wfdb

    base = PHYSIONET / "mimicdb" / "03700181"  # MCL1 at 4 samples per frame (500 Hz), ABP and RESP at 125 Hz
    rec = read_wfdb(base, allow_nan=True)
    assert rec.fs == 125.0 and rec.signal.shape == (3, 75000)
    assert rec.quality["frame_averaged"] == {"MCL1": {"samples_per_frame": 4, "rate_hz": 500.0}}
    assert "frame_averaged" not in read_wfdb(base, channels=["ABP"], allow_nan=True).quality
    root = _copy_record(base, tmp_path / "mimicdb", exts=("hea", "dat"))
    write_csv(root.parent / "metadata.csv", "patient_id,record_id,path\np,r,03700181\n")
    with pytest.warns(UserWarning, match=r"1 recording.*frame rate, averaged.*MCL1 \(500 Hz\) read at 125 Hz"):
        cache = load_wfdb_cohort(root.parent, cache_dir=tmp_path / "c", progress=False, nan_policy="interpolate")
    assert cache.report["quality"]["frame_averaged"] == [
        {"source": str(root) + ".hea", "value": {"MCL1": {"samples_per_frame": 4, "rate_hz": 500.0}}}]


def test_source_hashes_are_remembered_across_processes_until_a_file_changes(tmp_path, monkeypatch):
    from tscl.loaders import fingerprint_files
    from tscl.loaders import sources as sources_mod

    monkeypatch.setenv("TSCL_CACHE", str(tmp_path / "user_cache"))
    root = _cohort(tmp_path / "cohort", n=2)
    files = sorted(root.iterdir())
    first = fingerprint_files(files)

    def no_hashing(path):
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(sources_mod, "hash_file", no_hashing)
    assert fingerprint_files(files) == first
    monkeypatch.undo()
    monkeypatch.setenv("TSCL_CACHE", str(tmp_path / "user_cache"))
    write_record(root, "r1", seed=5)
    assert fingerprint_files(files) != first
