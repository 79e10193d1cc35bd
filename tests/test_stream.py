"""WebDataset export -> streamed pretraining: the same batches and losses as the cache, resumable, disjoint
shards per rank, and two torchrun nodes (gloo, localhost) that each read half the shards and train the
single-process run to fp32 round-off.

The encoder is a BatchNorm-free transformer without dropout and PCLR does not augment waveforms,
so a rank's rows are encoded exactly as one process encodes them (CPU DDP has no SyncBatchNorm)."""
import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tscl.cli import main
from tscl.datasets import open_dataset
from tscl.datasets.stream import ShardPlan, StreamDataset, export_webdataset, open_stream, parse_size
from tscl.methods.sampling import RecordBatchSampler
from tscl.samplers import PatientBatchSampler
from tscl.train import PretrainConfig, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")
ENCODER = ["--encoder", "transformer1d", "--encoder-kwargs", "dim=16,depth=1,heads=2,dropout=0,patch_len=100"]
SHARD = 1_500_000  # bytes: ~28 recordings of 12 x 1000 float32 (6-7 patients): 36 patients make ~6 shards


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    assert main(["simulate", "--out", str(root / "cohort"), "--patients", "36", "--seed", "3", "--quiet"]) == 0
    source = open_dataset("wfdb", root / "cohort", progress=False)
    export_webdataset(source, root / "wds", shard_bytes=SHARD, seed=1, progress=False)
    return root, source


def _rows_in_source(stream, source) -> np.ndarray:
    where = {r: i for i, r in enumerate(source.index["record_id"].to_list())}
    return np.array([where[r] for r in stream.index["record_id"].to_list()])


class CacheInExportOrder(StreamDataset):
    """The export's index and batch plan, payloads read from the cache instead of the shards."""

    def __init__(self, stream: StreamDataset, source):
        super().__init__(stream.root, stream.manifest, stream.index, stream._shard, stream._key, stream.readers,
                         stream.source)
        self.cache, self.map = source, _rows_in_source(stream, source)

    def fetch(self, rows):
        return self.cache.fetch(self.map[np.asarray(rows)])

    def _take(self, rows):
        out = CacheInExportOrder(super()._take(rows), self.cache)
        return out


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "step" in r]


def _config(out, **kw):
    return PretrainConfig(out_dir=str(out), method="pclr", encoder="transformer1d",
                          encoder_kwargs={"dim": 16, "depth": 1, "heads": 2, "dropout": 0.0, "patch_len": 100},
                          method_kwargs={"patients_per_batch": 2}, epochs=2, device="cpu", progress=False, **kw)


def test_export_groups_patients_hashes_shards_and_round_trips_every_item(exported):
    root, source = exported
    stream = open_stream(root / "wds")
    manifest = json.loads((root / "wds" / "manifest.json").read_text())
    table = pl.read_parquet(root / "wds" / "index.parquet")
    assert len(stream) == len(source) == manifest["items"] and len(manifest["shards"]) >= 4
    per_patient = table.group_by("patient_id").agg(pl.col("shard").n_unique())
    assert per_patient["shard"].max() == 1  # a patient's rows share one shard
    assert table.group_by("shard").agg(pl.col("split").n_unique())["split"].max() == 1  # no shard mixes splits
    import hashlib

    for s in manifest["shards"]:
        data = (root / "wds" / s["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
        one_patient = table.filter(pl.col("shard") == int(s["name"][6:12]))["patient_id"].n_unique() == 1
        assert s["bytes"] <= SHARD or one_patient
    rows = _rows_in_source(stream, source)
    assert stream.index.equals(source.index[rows.tolist()])
    assert torch.equal(stream.fetch(np.arange(len(stream))), source.fetch(rows))  # bit for bit
    assert stream.info == source.info and stream.in_channels == source.in_channels


def test_streamed_pretraining_sees_the_caches_batches_and_losses_and_reads_each_shard_once(exported, tmp_path):
    root, source = exported
    stream = open_stream(root / "wds", readers=2).split("train")
    cache = CacheInExportOrder(open_stream(root / "wds", readers=2), source).split("train")
    plan = stream.batch_plan(PatientBatchSampler(np.asarray(stream.index["patient_id"].to_list()), 2), seed=0)
    for epoch in (0, 1):
        plan.set_epoch(epoch)
        for rows in plan:
            assert torch.equal(stream.fetch(rows), cache.fetch(rows))
    stream = open_stream(root / "wds", readers=2).split("train")
    a = pretrain(stream, _config(tmp_path / "stream"))
    b = pretrain(cache, _config(tmp_path / "cache"))
    assert len(_losses(a)) == 2 * len(plan) > 4
    np.testing.assert_allclose(_losses(a), _losses(b), rtol=1e-6)
    used = {s for lane in plan.lanes() for s in lane}  # the shards with a batch (epoch-independent set)
    assert stream.shards_read <= 2 * len(used)  # two epochs, each shard streamed at most once per epoch


def test_resume_after_a_kill_gets_the_same_batches(exported, tmp_path, kill_and_resume):
    root, _ = exported
    stream = open_stream(root / "wds").split("train")
    kill_and_resume(stream, lambda name, **kw: _config(tmp_path / name, **kw), kill_at=5, ckpt_every=2)


def test_streams_from_an_http_url(exported):
    root, source = exported
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root / "wds"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        stream = open_dataset("webdataset", url, split="test")
        assert stream.source["root"] == url
        rows = _rows_in_source(stream, source)
        assert torch.equal(stream.fetch(np.arange(len(stream))), source.fetch(rows))
    finally:
        server.shutdown()


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 30), st.integers(1, 4), st.integers(0, 3), st.sampled_from(["patients", "records"]))
def test_shard_plan_deals_disjoint_shards_and_ranks_together_make_the_single_process_batch(n_shards, world, seed,
                                                                                        kind):
    rng = np.random.default_rng(seed)
    readers = world * int(rng.integers(1, 3))
    patients = np.repeat(np.arange(6 * n_shards), rng.integers(2, 5, 6 * n_shards))  # every patient has a pair
    shard = patients % n_shards  # every patient in one shard, six per shard: every shard makes a batch
    sampler = (PatientBatchSampler(patients, 2) if kind == "patients" else RecordBatchSampler(len(patients), 3))
    if n_shards < readers:
        with pytest.raises(ValueError, match="every reader needs at least one"):
            ShardPlan(sampler, shard, readers, seed=seed)
        return
    one = ShardPlan(sampler, shard, readers, seed=seed)
    ranks = [ShardPlan(sampler, shard, readers, seed=seed, rank=r, world_size=world) for r in range(world)]
    for epoch in (0, 1):
        for p in (one, *ranks):
            p.set_epoch(epoch)
        lanes = one.lanes()
        assert sorted(s for lane in lanes for s in lane) == list(range(n_shards))  # the lanes partition the shards
        got = [list(iter(p)) for p in ranks]
        assert all(len(g) == len(one) for g in got)
        for step, rows in enumerate(one):
            assert sorted(rows) == sorted(r for g in got for r in g[step])  # ranks together = one process
            assert np.concatenate([g[step] for g in got]).tolist() == rows  # in rank order
        for r in range(world):
            mine = {int(shard[i]) for batch in got[r] for i in batch}
            others = {int(shard[i]) for q in range(world) if q != r for batch in got[q] for i in batch}
            assert not mine & others  # disjoint shards per rank within an epoch
            k = readers // world
            assert mine <= {s for j in range(r * k, r * k + k) for s in lanes[j]}
        if kind == "patients":  # PCLR: every patient of a batch brings two of its own recordings
            for rows in one:
                ids, counts = np.unique(patients[rows], return_counts=True)
                assert (counts == 2).all()


def test_bad_exports_and_roots_fail_in_one_line(exported, tmp_path, capsys):
    root, source = exported
    data = str(root / "cohort")

    def fails(argv, needle):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err

    fails(["export", "--data", data, "--out", str(root / "wds"), "--quiet"], "not empty")
    fails(["export", "--data", data, "--out", str(tmp_path / "x"), "--shard-size", "12 parsecs"], "--shard-size")
    fails(["export", "--data", data, "--out", str(tmp_path / "x"), "--shard-size", "0"], "at least one byte")
    fails(["pretrain", "--dataset", "webdataset", "--root", str(tmp_path), "--out", str(tmp_path / "r")],
          "manifest.json: not found")
    fails(["pretrain", "--dataset", "webdataset", "--root", str(root / "wds"), "--dataset-kwargs", "readers=0",
           "--out", str(tmp_path / "r"), "--quiet"], "readers must be an integer >= 1")
    fails(["pretrain", "--dataset", "webdataset", "--root", str(root / "wds"), "--dataset-kwargs", "readers=99",
           "--out", str(tmp_path / "r"), "--quiet", *ENCODER], "every reader needs at least one")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("index.parquet", "manifest.json"):
        (broken / name).write_bytes((root / "wds" / name).read_bytes())
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "format": "other/0"}))
    fails(["pretrain", "--dataset", "webdataset", "--root", str(broken), "--out", str(tmp_path / "r")], "format")
    (broken / "manifest.json").write_text(json.dumps(manifest))
    import webdataset as wds

    with wds.TarWriter(str(broken / manifest["shards"][0]["name"])):
        pass  # a valid tar without the shard's items
    (broken / manifest["shards"][1]["name"]).write_bytes(b"not a tar file" * 100)
    stream = open_stream(broken)
    with pytest.raises(ValueError, match="missing from the shard"):
        stream.fetch(np.flatnonzero(stream._shard == 0)[:1])
    with pytest.raises(ValueError, match="shard-000001.tar: cannot read the shard"):
        stream.fetch(np.flatnonzero(stream._shard == 1)[:1])
    assert parse_size("1.5KB") == 1536 and parse_size("256MB") == 256 * 2**20
    with pytest.raises(ValueError, match="tensor payloads"):
        export_webdataset(type("E", (), {"modality": "ehr", "__len__": lambda s: 1})(), tmp_path / "ehr")
    with pytest.raises(ValueError, match="multiple of the 2 ranks"):
        list(ShardPlan(RecordBatchSampler(40, 4), np.arange(40) % 4, readers=3, world_size=2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Logged(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        self.server.paths.append(self.path)


def _serve(folder):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Logged, directory=str(folder)))
    server.paths = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.slow
def test_two_torchrun_nodes_read_half_the_shards_each_and_match_one_process(exported, tmp_path):
    """``torchrun --nnodes=2 --nproc-per-node=1 --node-rank 0/1`` with a rendezvous on 127.0.0.1 (gloo). Each
    node streams from its own HTTP server, so the shards each rank read are logged apart."""
    root, _ = exported
    args = ["pretrain", "--dataset", "webdataset", "--out", str(tmp_path / "ddp"), "--epochs", "1", *ENCODER,
            "--method-kwargs", "patients_per_batch=2", "--device", "cpu", "--quiet"]
    servers = [_serve(root / "wds") for _ in range(2)]
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TSCL_PG_TIMEOUT": "120"}
    try:
        procs = [subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={r}",
             "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "tscl", *args, "--root",
             f"http://127.0.0.1:{servers[r].server_address[1]}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for r in range(2)]
        outs = [p.communicate(timeout=400) for p in procs]
    finally:
        for s in servers:
            s.shutdown()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    single = tmp_path / "single"
    assert main([*args[:4], str(single), *args[5:], "--root", str(root / "wds"), "--dataset-kwargs", "readers=2"]) == 0
    stream = open_stream(root / "wds", readers=2).split("train")
    plan = stream.batch_plan(PatientBatchSampler(np.asarray(stream.index["patient_id"].to_list()), 2), seed=0)
    assert len(_losses(single)) == len(plan) >= 4
    np.testing.assert_allclose(_losses(tmp_path / "ddp"), _losses(single), rtol=1e-5, atol=1e-6)
    # each node read only its lane's shards, and the two halves are disjoint
    lanes = plan.lanes()
    read = [{int(p[7:13]) for p in s.paths if p.startswith("/shard-")} for s in servers]
    assert read[0] and read[1] and not read[0] & read[1]
    assert read[0] <= set(lanes[0]) and read[1] <= set(lanes[1])
