"""Runs and checkpoints under faults: a resume into another run, non-finite weights, a torn log, a silent rank."""
import json
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from safetensors import safe_open

from tscl import distributed
from tscl.train import CHECKPOINT, PretrainConfig, pretrain

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    from tscl.datasets import open_dataset
    from tscl.simulate import CohortConfig, write_cohort

    root = tmp_path_factory.mktemp("faults")
    write_cohort(root / "a", CohortConfig(n_patients=12, seed=0), progress=False)
    write_cohort(root / "b", CohortConfig(n_patients=12, seed=1), progress=False)
    cache = root / "cache"
    return (open_dataset("wfdb", root / "a", cache=cache, progress=False),
            open_dataset("wfdb", root / "b", cache=cache, progress=False))


def _cfg(out, method="simclr", **kw):
    kwargs = {"patients_per_batch": 4} if method == "pclr" else {"batch_size": 8}
    return PretrainConfig(out_dir=str(out), method=method, encoder="cnn1d", encoder_kwargs={"widths": [8, 16]},
                          method_kwargs=kwargs, epochs=2, lr=1e-2, device="cpu", progress=False, **kw)


def _step(path) -> int:
    with safe_open(path, framework="pt") as f:
        return json.loads(f.metadata()["tscl"])["step"]


def test_resume_refuses_another_method_or_other_data_naming_both_sides(cohorts, tmp_path):
    a, b = cohorts
    run = tmp_path / "run"
    pretrain(a, _cfg(run, "simclr", ckpt_every=1, max_steps=2))  # a run stopped early
    with pytest.raises(ValueError, match=r"method: checkpoint 'simclr', this run 'pclr'"):
        pretrain(a, _cfg(run, "pclr", resume=True))
    with pytest.raises(ValueError, match=r"data: checkpoint '\w+', this run '\w+'"):
        pretrain(b, _cfg(run, "simclr", resume=True))
    with pytest.raises(ValueError, match=r"config_digest"):
        pretrain(a, _cfg(run, "simclr", resume=True, seed=7))
    pretrain(a, _cfg(run, "simclr", resume=True))  # its own config resumes
    assert (run / "encoder.safetensors").exists()


def test_non_finite_weights_are_never_checkpointed(cohorts, tmp_path, monkeypatch):
    a, _ = cohorts
    from tscl.methods.simclr import SimCLR

    calls = []

    def poison_at_step_3(self):
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(self.encoder.parameters()).fill_(float("nan"))

    monkeypatch.setattr(SimCLR, "after_step", poison_at_step_3)
    run = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"step 3: .* holds NaN/inf; the checkpoint was not written"):
        pretrain(a, _cfg(run, ckpt_every=1))
    assert _step(run / CHECKPOINT) == 2  # the last finite checkpoint is kept
    with safe_open(run / CHECKPOINT, framework="pt") as f:
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys() if f.get_tensor(k).is_floating_point())
    assert not (run / "encoder.safetensors").exists()


def test_a_torn_last_log_line_does_not_block_resume(cohorts, tmp_path):
    a, _ = cohorts
    run = tmp_path / "run"
    full = pretrain(a, _cfg(tmp_path / "full", ckpt_every=0))
    pretrain(a, _cfg(run, ckpt_every=2, max_steps=4))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "epoch": 0, "lo')  # killed mid-write
    pretrain(a, _cfg(run, ckpt_every=2, resume=True))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("loss") for r in lines] == [r.get("loss") for r in want]
    assert (run / "encoder.safetensors").read_bytes() == (full / "encoder.safetensors").read_bytes()


def _silent_worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), TSCL_PG_TIMEOUT="30")
    distributed.init_distributed("cpu")
    if rank == 1:
        time.sleep(4)  # frozen (as under SIGSTOP) past the 1 s monitor below
    try:
        distributed.check_ranks("the checkpoint of step 3", timeout_s=1)
        message = "ok"
    except distributed.SilentRankError as err:
        message = str(err)
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(message)
    os._exit(0)  # the silent rank's partner has given up on the group: leave without a teardown


def test_a_silent_rank_is_named_instead_of_blocking_the_others(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_silent_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    message = (tmp_path / "rank0.txt").read_text()
    assert "not every rank reached the checkpoint of step 3 within 1 s" in message and "Ranks 1 failed" in message


def test_pg_timeout_is_configurable_and_checked(monkeypatch):
    monkeypatch.setenv("TSCL_PG_TIMEOUT", "45")
    assert distributed.pg_timeout() == 45
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv("TSCL_PG_TIMEOUT", bad)
        with pytest.raises(ValueError, match="TSCL_PG_TIMEOUT"):
            distributed.pg_timeout()


def test_a_nan_in_the_bank_stops_training_at_that_step_naming_the_queue(cohorts, tmp_path, monkeypatch):
    a, _ = cohorts
    from tscl.methods.moco import MoCo

    calls, after = [], MoCo.after_step

    def nan_into_the_queue_after_step_2(self):
        after(self)
        calls.append(1)
        if len(calls) == 2:
            self.queue[3] = float("nan")  # a bad key among the negatives only

    monkeypatch.setattr(MoCo, "after_step", nan_into_the_queue_after_step_2)
    cfg = _cfg(tmp_path / "run", "moco")
    cfg.method_kwargs["queue_size"] = 16
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 2: queue holds NaN/inf"):
        pretrain(a, cfg)


def test_a_nan_input_item_is_named(cohorts, tmp_path, monkeypatch):
    a, _ = cohorts
    fetch = type(a).fetch

    def poisoned(self, rows):
        x = fetch(self, rows)
        x[1, 0, 5] = float("nan")
        return x

    monkeypatch.setattr(type(a), "fetch", poisoned)
    with pytest.raises(FloatingPointError, match=r"at step 0: the input batch holds NaN/inf in 1 item\(s\)"):
        pretrain(a, _cfg(tmp_path / "run", "pclr"))
