"""Runs and checkpoints under faults: a resume into another run, non-finite weights, a torn log, a silent rank."""
import json
import os
import socket
import time
from types import SimpleNamespace

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
    return PretrainConfig(**{"out_dir": str(out), "method": method, "encoder": "cnn1d", "encoder_kwargs": {"widths": [8, 16]},
                             "method_kwargs": kwargs, "epochs": 2, "lr": 1e-2, "device": "cpu", "progress": False, **kw})


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


# ---- run folders: made after the checks, marked or removed on failure, stopped cleanly ----------------------

def _losses(run) -> list:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "step" in r]


def test_sigint_and_sigterm_checkpoint_the_step_and_the_resume_is_byte_identical(cohorts, tmp_path, monkeypatch):
    import signal

    from tscl.methods.simclr import SimCLR
    from tscl.train import Interrupted

    a, _ = cohorts
    full = pretrain(a, _cfg(tmp_path / "full", ckpt_every=0, epochs=3))
    forward, calls = SimCLR.forward, []
    for sig, at in ((signal.SIGINT, 2), (signal.SIGTERM, 5)):  # mid-epoch: neither is a scheduled checkpoint
        def signalled(self, x, batch, at=at, sig=sig):
            calls.append(1)
            if len(calls) == at + 1:
                os.kill(os.getpid(), sig)  # the handler only records it: this step still trains
            return forward(self, x, batch)

        calls.clear()
        monkeypatch.setattr(SimCLR, "forward", signalled)
        run = tmp_path / f"run-{sig.name}"
        with pytest.raises(Interrupted, match=rf"stopped by {sig.name} at step {at + 1} of \d+; checkpoint written") as e:
            pretrain(a, _cfg(run, ckpt_every=0, epochs=3))
        assert e.value.exit_code == 128 + sig and _step(run / CHECKPOINT) == at + 1
        assert [s for s, _ in _losses(run)] == list(range(at + 1))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back
        monkeypatch.setattr(SimCLR, "forward", forward)
        pretrain(a, _cfg(run, ckpt_every=0, epochs=3, resume=True))
        assert _losses(run) == _losses(full)
        assert (run / "encoder.safetensors").read_bytes() == (full / "encoder.safetensors").read_bytes()


def test_checkpoints_every_epoch_every_few_minutes_and_every_n_steps(cohorts, tmp_path, monkeypatch):
    import tscl.train as train

    a, _ = cohorts
    saved, real = [], train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint", lambda path, *args, **kw: saved.append(args[3]) or
                        real(path, *args, **kw))
    run = pretrain(a, _cfg(tmp_path / "epochs", ckpt_every=0, ckpt_every_min=0, epochs=3))
    per_epoch = len(_losses(run)) // 3
    assert per_epoch > 1 and saved == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    saved.clear()
    pretrain(a, _cfg(tmp_path / "steps", ckpt_every=2, ckpt_every_min=0, epochs=1))
    assert saved == sorted({*range(2, per_epoch + 1, 2), per_epoch})
    clock = iter(range(0, 10_000, 25))  # the trainer's clock advances 25 s per reading: a minute is 3 steps
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=lambda: float(next(clock)), strftime=time.strftime))
    saved.clear()
    pretrain(a, _cfg(tmp_path / "minutes", ckpt_every=0, ckpt_every_min=1, epochs=1))
    assert saved == sorted({*range(3, per_epoch + 1, 3), per_epoch})


def test_damaged_metrics_lines_are_counted_named_and_kept_aside(cohorts, tmp_path, capsys):
    a, _ = cohorts
    run = tmp_path / "run"
    pretrain(a, _cfg(run, ckpt_every=3, max_steps=4))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = "garbage"
    lines[2] = '{"step": "two", "loss": 1.0}'
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "epo')  # and a line torn by a kill
    capsys.readouterr()
    pretrain(a, _cfg(run, ckpt_every=3, resume=True))
    err = capsys.readouterr().err
    assert f"{run / 'metrics.jsonl'}: 3 damaged line(s) left out (line 2, 3, {len(lines) + 1}); kept in " \
           "metrics.jsonl.damaged" in err
    aside = (run / "metrics.jsonl.damaged").read_text().splitlines()
    assert aside == ["2\tgarbage", '3\t{"step": "two", "loss": 1.0}', f'{len(lines) + 1}\t{{"step": 4, "epo']
    assert [s for s, _ in _losses(run)][:3] == [0, 3, 4]  # steps 1 and 2 are lost, and said to be


def test_a_failure_in_training_removes_a_new_run_or_marks_it_failed(cohorts, tmp_path, monkeypatch):
    a, _ = cohorts
    fetch = type(a).fetch

    def nan_from_step(first):
        calls = []

        def poisoned(self, rows):
            calls.append(1)
            x = fetch(self, rows)
            if len(calls) > first + 1:  # the first fetch is the encoder check before the folder is made
                x[0, 0, 0] = float("nan")
            return x
        return poisoned

    monkeypatch.setattr(type(a), "fetch", nan_from_step(0))
    with pytest.raises(FloatingPointError, match="at step 0"):
        pretrain(a, _cfg(tmp_path / "new", "pclr", prefetch=0))
    assert not (tmp_path / "new").exists()  # nothing to resume: nothing left behind
    monkeypatch.setattr(type(a), "fetch", nan_from_step(3))
    with pytest.raises(FloatingPointError, match="at step 3"):
        pretrain(a, _cfg(tmp_path / "marked", "pclr", ckpt_every=2, prefetch=0))
    failed = json.loads((tmp_path / "marked" / "FAILED.json").read_text())
    assert failed["step"] == 3 and failed["error"].startswith("non-finite loss nan at step 3")
    assert "Traceback" in failed["traceback"] and _step(tmp_path / "marked" / CHECKPOINT) == 3  # the epoch's end
    with pytest.raises(FileNotFoundError, match=r"has not finished \(FAILED.json: non-finite loss"):
        from tscl.train import load_encoder

        load_encoder(tmp_path / "marked")
    monkeypatch.setattr(type(a), "fetch", fetch)
    pretrain(a, _cfg(tmp_path / "marked", "pclr", ckpt_every=2, prefetch=0, resume=True))
    assert not (tmp_path / "marked" / "FAILED.json").exists() and (tmp_path / "marked" / "encoder.safetensors").exists()


def test_checks_before_training_leave_no_folder_and_an_old_run_intact(cohorts, tmp_path, monkeypatch):
    a, _ = cohorts
    from tscl.encoders.cnn1d import CNN1d

    run = pretrain(a, _cfg(tmp_path / "run"))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ValueError, match="a run is already there"):
        pretrain(a, _cfg(run))
    cfg = _cfg(run)
    cfg.method_kwargs["augment"] = "crop:len=99999"
    with pytest.raises(ValueError, match="longer than the recordings"):
        pretrain(a, cfg, overwrite=True)
    real = CNN1d.forward
    monkeypatch.setattr(CNN1d, "forward", lambda self, x, channel_mask=None: (_ for _ in ()).throw(
        RuntimeError("expected input[2, 19, 1000] to have 12 channels, but got 19 channels instead\nmore")))
    for out in (run, tmp_path / "new"):
        with pytest.raises(ValueError, match=r"^encoder cnn1d .* cannot take this dataset's items \(a batch "
                                             r"\(2, 12, \d+\)\): expected input\[2, 19, 1000\].*instead$"):
            pretrain(a, _cfg(out), overwrite=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before and not (tmp_path / "new").exists()
    monkeypatch.setattr(CNN1d, "forward", real)
    with pytest.raises(ValueError, match="PretrainConfig: epochs must be >= 1, got 0"):
        pretrain(a, _cfg(tmp_path / "new", epochs=0))
    assert not (tmp_path / "new").exists()


def test_the_encoder_check_changes_no_result(cohorts, tmp_path, monkeypatch):
    import tscl.train as train

    a, _ = cohorts
    checked = pretrain(a, _cfg(tmp_path / "checked", "pclr"))
    monkeypatch.setattr(train, "_check_items_fit", lambda *args: None)
    unchecked = pretrain(a, _cfg(tmp_path / "unchecked", "pclr"))
    assert _losses(checked) == _losses(unchecked)
    assert (checked / "method.safetensors").read_bytes() == (unchecked / "method.safetensors").read_bytes()


def test_an_encoder_is_refused_data_of_another_modality_channel_count_or_rate():
    from tscl.train import check_encoder_fits

    info = {"modality": "waveform", "in_channels": 12, "fs": 100.0}
    check_encoder_fits(info, modality="waveform", in_channels=12, fs=100)
    check_encoder_fits(info, modality="waveform", in_channels=12)  # a rate the data does not know: not compared
    for kw, differ in (({"in_channels": 19}, "channels"), ({"fs": 500}, "rate"), ({"modality": "ehr"}, "modality")):
        with pytest.raises(ValueError, match=rf"run: its encoder was pretrained on 12-channel waveform data at 100 Hz; "
                                             rf"data X is .*\({differ} differ\)"):
            check_encoder_fits(info, **{"modality": "waveform", "in_channels": 12, "fs": 100, **kw}, what="data X",
                               run="run")


# ---- the config schema ---------------------------------------------------------------------------------------

def _schema_oracle(values: dict):
    """The first key an independent reading of PretrainConfig's fields refuses, or None."""
    from dataclasses import fields

    kinds = {f.name: f.type.split("|")[0].strip() for f in fields(PretrainConfig)}  # "dict | None": a dict or null
    for key, v in values.items():
        if key not in kinds:
            return key
        want = {"int": int, "float": (int, float), "bool": bool, "str": str, "dict": dict, "list": list}[kinds[key]]
        if isinstance(v, bool) != (kinds[key] == "bool") or not isinstance(v, want):
            return key
    return None


def test_config_schema_refuses_unknown_keys_and_wrong_types_naming_the_key():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tscl.train import check_config

    names = ["epochs", "lr", "seed", "amp", "method", "encoder_kwargs", "channels", "epoch", "lr_rate", "sead"]
    values = st.one_of(st.integers(1, 50), st.floats(0.001, 1.0), st.booleans(), st.text(max_size=3),
                       st.dictionaries(st.text(max_size=2), st.integers(), max_size=1), st.lists(st.integers(), max_size=2))

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(st.sampled_from(names), values, max_size=4))
    def check(values):
        bad = _schema_oracle(values)
        if bad is None:
            check_config(values, "cfg.json")
            PretrainConfig(**values)
            return
        with pytest.raises(ValueError, match=rf"^cfg\.json: (unknown key '{bad}'|{bad} must be)"):
            check_config(values, "cfg.json")

    check()
    with pytest.raises(ValueError, match=r"unknown key 'sead' \(did you mean 'seed'\?\)"):
        check_config({"sead": 1})
    with pytest.raises(ValueError, match="lr must be a finite number"):
        check_config({"lr": float("inf")})
