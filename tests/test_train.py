import json
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from tscl import distributed
from tscl.encoders import build_encoder
from tscl.methods import METHODS, build_method
from tscl.methods.sampling import RecordBatchSampler
from tscl.samplers import PatientBatchSampler, RankBatches
from tscl.train import CHECKPOINT, PretrainConfig, cosine_with_warmup, load_checkpoint, pretrain

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from tscl.loaders import load_wfdb_cohort
    from tscl.simulate import CohortConfig, write_cohort

    root = tmp_path_factory.mktemp("train")
    write_cohort(root / "cohort", CohortConfig(n_patients=12), progress=False)
    return root / "cohort", load_wfdb_cohort(root / "cohort", progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- 2-process gloo: loss and DDP gradients equal the single-process ones --------------------

N, C, T = 8, 12, 200
IDS = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])  # every positive pair straddles the two ranks


def _pclr():
    torch.manual_seed(0)
    return build_method("pclr", build_encoder("cnn1d", C, widths=[8, 16]), proj_dim=8, patients_per_batch=4)


def _global_batch():
    return torch.randn(N, C, T, generator=torch.Generator().manual_seed(1))


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = slice(rank * N // world, (rank + 1) * N // world)
    x, ids = _global_batch()[rows], IDS[rows]
    results = {}
    for name in ("gather", "no_grad_sum"):
        if name == "no_grad_sum":  # a gather that keeps only its own gradient slice (no all-reduce)
            distributed._AllGather.backward = staticmethod(
                lambda ctx, g: (g[sum(ctx.sizes[: ctx.rank]): sum(ctx.sizes[: ctx.rank + 1])], None))
        model = torch.nn.parallel.DistributedDataParallel(_pclr())
        loss = model(x, {"patient_ids": ids})
        loss.backward()
        results[f"{name}.loss"] = loss.detach().reshape(1)
        results.update({f"{name}.{k}": p.grad for k, p in model.module.named_parameters()})
        del model
    save_file(results, f"{out}/rank{rank}.safetensors")
    distributed.shutdown()


def test_two_process_loss_and_gradients_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    # Single process on the same global batch. BatchNorm normalises over each rank's rows (no
    # SyncBatchNorm on CPU), so the reference encodes the two halves separately, then computes
    # one loss over the concatenated embeddings.
    method, x = _pclr(), _global_batch()
    z = torch.cat([method.head(method.encoder(x[:4])), method.head(method.encoder(x[4:]))])
    from tscl.kernels import info_nce

    loss = info_nce(z, z, IDS, IDS, temperature=method.temperature, exclude_self=True)
    loss.backward()
    ref = {k: p.grad for k, p in method.named_parameters()}
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    for got in ranks:
        torch.testing.assert_close(got["gather.loss"][0], loss.detach(), rtol=1e-5, atol=1e-6)
        for k, g in ref.items():
            torch.testing.assert_close(got[f"gather.{k}"], g, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    # the same comparison catches a gather whose backward skips the sum over ranks (grad / W)
    broken = ranks[0]
    torch.testing.assert_close(broken["no_grad_sum.loss"][0], loss.detach(), rtol=1e-5, atol=1e-6)
    assert not all(torch.allclose(broken[f"no_grad_sum.{k}"], g, rtol=1e-3, atol=1e-6) for k, g in ref.items())
    torch.testing.assert_close(broken["no_grad_sum.head.net.3.bias"] * 2, ref["head.net.3.bias"], rtol=1e-4, atol=1e-6)


def test_gather_is_identity_in_one_process():
    z, ids = torch.randn(4, 3, requires_grad=True), torch.arange(4)
    gz, gids = distributed.gather_embeddings(z, ids)
    assert gz is z and gids is ids and distributed.world_size() == 1 and distributed.rank() == 0


# ---- samplers ------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [2, 3])
def test_distributed_patient_sampler_disjoint_and_deterministic(world):
    pids = np.repeat(np.arange(23), 3)
    ranks = [PatientBatchSampler(pids, patients_per_batch=3, seed=4, rank=r, world_size=world) for r in range(world)]
    assert len({len(s) for s in ranks}) == 1
    epochs = []
    for epoch in (0, 1):
        for s in ranks:
            s.set_epoch(epoch)
        steps = list(zip(*[list(s) for s in ranks]))
        assert len(steps) == len(ranks[0])  # same number of steps on every rank
        seen = []
        for step in steps:
            patients = [set(pids[b].tolist()) for b in step]
            assert all(len(p) * 2 == len(b) for p, b in zip(patients, step))  # 2 recordings of each patient
            assert len(set().union(*patients)) == sum(map(len, patients)), "a patient on two ranks in one step"
            seen += [p for ps in patients for p in ps]
        assert len(seen) == len(set(seen)), "a patient twice in one epoch"
        again = PatientBatchSampler(pids, patients_per_batch=3, seed=4, rank=1, world_size=world, epoch=epoch)
        assert list(again) == [step[1] for step in steps]  # deterministic per (seed, epoch)
        epochs.append(steps)
    assert epochs[0] != epochs[1]


def test_one_rank_patient_sampler_is_the_single_process_sampler():
    pids = np.repeat(np.arange(11), 2)
    old = PatientBatchSampler(pids, patients_per_batch=4, seed=3)
    assert list(PatientBatchSampler(pids, patients_per_batch=4, seed=3, rank=0, world_size=1)) == list(old)


def test_rank_batches_split_any_sampler():
    base = RecordBatchSampler(50, batch_size=8, seed=1)
    parts = [RankBatches(RecordBatchSampler(50, batch_size=8, seed=1), r, 2) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(base) // 2
    steps = list(zip(*parts))
    for a, b in steps:
        assert not set(a) & set(b)
    assert [r for step in steps for r in step] == list(base)[: 2 * len(steps)]


# ---- checkpoints ---------------------------------------------------------------------------

METHOD_KWARGS = {"pclr": {"patients_per_batch": 4}, "moco": {"batch_size": 8, "queue_size": 32},
                 "pmq": {"batch_size": 8, "queue_size": 32}, "supcon": {"batch_size": 8, "label": "lvh"}}


def _config(tmp_path, name, method="pclr", **kw):
    method_kwargs = METHOD_KWARGS.get(method, {"batch_size": 8})
    return PretrainConfig(out_dir=str(tmp_path / name), method=method, encoder="cnn1d",
                          encoder_kwargs={"widths": [8, 16], "dropout": 0.1}, method_kwargs=method_kwargs,
                          epochs=3, lr=1e-2, device="cpu", progress=False, **kw)


def _curve(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["epoch"], r["loss"]) for r in lines if "step" in r], [r for r in lines if "step" not in r]


@pytest.mark.parametrize("method", sorted(METHODS))  # every random stream a method owns is restored
def test_killed_run_resumes_step_for_step(cohort, tmp_path, kill_and_resume, method):
    _, cache = cohort
    config = lambda name, **kw: _config(tmp_path, name, method, **kw)  # noqa: E731
    full, run = kill_and_resume(cache, config, kill_at=6, ckpt_every=4)
    steps, epochs = _curve(full)
    assert len(epochs) == 3 and len(steps) >= 9 and _curve(run)[1] == epochs
    assert all(0 <= r["data_wait_frac"] <= 1 for r in map(json.loads, (full / "metrics.jsonl").read_text().splitlines())
               if "step" in r)
    # stopping early at max_steps and resuming again lands on the same run
    pretrain(cache, config("run2", ckpt_every=4, max_steps=8))
    assert [s for s, _, _ in _curve(tmp_path / "run2")[0]] == list(range(8))
    pretrain(cache, config("run2", ckpt_every=4, resume=True))
    assert (tmp_path / "run2" / "encoder.safetensors").read_bytes() == (full / "encoder.safetensors").read_bytes()
    # one environment entry per start: the killed run, then its resume
    env = json.loads((run / "environment.json").read_text())
    assert [e["resumed"] for e in env] == [False, True]
    assert env[0]["torch"] == torch.__version__ and env[0]["device"] == "cpu"
    assert env[0]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert len(json.loads((full / "environment.json").read_text())) == 1


def test_checkpoint_loads_without_unpickling(cohort, tmp_path, monkeypatch):
    _, cache = cohort
    cfg = _config(tmp_path, "run", max_steps=2)
    run = pretrain(cache, cfg)

    def no_pickle(*args, **kwargs):
        raise AssertionError("checkpoint loading unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    method = build_method("pclr", build_encoder("cnn1d", 12, widths=[8, 16], dropout=0.1), patients_per_batch=4)
    opt = torch.optim.AdamW(method.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(9, 0))
    meta = load_checkpoint(run / CHECKPOINT, method, opt, sched)
    assert meta["step"] == 2 and meta["world_size"] == 1 and sched.last_epoch == 2
    assert len(opt.state) == len(list(method.parameters()))
    saved = load_file(run / CHECKPOINT)
    torch.testing.assert_close(method.head.net[0].weight, saved["model.head.net.0.weight"])
    assert not list(run.glob("*.tmp"))  # written under a temporary name, then renamed


# ---- torchrun end to end -------------------------------------------------------------------

def test_torchrun_two_processes_cpu(cohort, tmp_path):
    data, _ = cohort
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "tscl",
           "pretrain", "--data", str(data), "--split", "all", "--out", str(run), "--epochs", "2", "--encoder", "cnn1d",
           "--encoder-kwargs", "widths=[8,16]", "--method-kwargs", "patients_per_batch=2", "--device", "cpu",
           "--ckpt-every", "2", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps, epochs = _curve(run)
    assert [s[0] for s in steps] == list(range(6)) and len(epochs) == 2  # 12 patients / (2 per rank x 2 ranks)
    assert all(np.isfinite(s[2]) for s in steps)
    from safetensors import safe_open

    with safe_open(run / CHECKPOINT, "pt") as f:
        meta = json.loads(f.metadata()["tscl"])
    assert meta["world_size"] == 2 and meta["step"] == 6 and len(meta["rng"]) == 2
    assert (run / "encoder.safetensors").exists() and (run / "loss.png").exists()
