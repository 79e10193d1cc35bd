"""Run folders under faults, through the command line, from a folder outside the repository.

What the issue tried "as a new user would" (Ctrl-C and SIGTERM, two writers, resuming a finished run
or one stopped before its first checkpoint, a task with an encoder that does not fit, a full disk) runs
the installed ``tscl`` console script; the other cases call ``tscl.cli.main`` in this process (the same
code after argument parsing, without a second interpreter start). Every refusal is one line on stderr,
exit status 2, naming the file or option and what to do; Ctrl-C / SIGTERM stop after a checkpoint with
one line (exit 130 / 143). I/O faults come from ``tests/faultshim`` (``TSCL_FAULT=ENOSPC:WHERE`` fails
every write to a path holding ``WHERE`` as a full disk does; ``EROFS`` fails the open), so they need
neither root nor a tmpfs.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tscl.cli import main

torch.set_num_threads(1)  # runs made here and by the console script (OMP_NUM_THREADS=1) are compared bit for bit

REPO = Path(__file__).resolve().parents[1]
SHIM = Path(__file__).resolve().parent / "faultshim"
TSCL = shutil.which("tscl", path=str(Path(sys.executable).parent)) or shutil.which("tscl")
installed = pytest.mark.skipif(TSCL is None, reason="the tscl console script is not installed (pip install -e .)")

TINY = ["--method", "simclr", "--method-kwargs", "batch_size=8", "--encoder", "cnn1d", "--encoder-kwargs",
        "widths=[8,16]", "--quiet"]
HOLD_LOCK = ("import sys, time; from tscl.checkpoint import RunLock; RunLock.acquire(sys.argv[1]); "
             "print('held', flush=True); time.sleep(600)")


def tscl(*args, cwd: Path, fault: str | None = None, ok: bool = True, wait: bool = True):
    """The installed console script in ``cwd``, with no PYTHONPATH (only the installed package imports); it
    shares this session's cache folder ($TSCL_CACHE, set by conftest), so the cohort is read once."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TSCL_FAULT")}
    env.update(OMP_NUM_THREADS="1")
    if fault:
        env.update(PYTHONPATH=str(SHIM), TSCL_FAULT=fault)
    cmd = [TSCL, *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, f"tscl {' '.join(map(str, args))}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


class Run:
    """``tscl.cli.main(args)`` in this process: ``returncode``, ``stdout``, ``stderr``."""

    def __init__(self, capsys, args, ok):
        capsys.readouterr()
        self.returncode = main([str(a) for a in args])
        self.stdout, self.stderr = capsys.readouterr()
        if ok:
            assert self.returncode == 0, (args, self.stdout[-2000:], self.stderr[-2000:])


def refused(proc, *words) -> str:
    """The one-line refusal of ``proc`` (exit 2, no traceback) holding every one of ``words``."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("tscl "), proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


def losses(run: Path) -> list:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "step" in r]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A folder outside the repository with a simulated cohort and one finished run of it."""
    from tscl.simulate import CohortConfig, write_cohort

    cwd = tmp_path_factory.mktemp("runs-cli")
    assert REPO not in cwd.parents
    write_cohort(cwd / "cohort", CohortConfig(n_patients=16, seed=0), progress=False)
    write_cohort(cwd / "other", CohortConfig(n_patients=16, seed=1), progress=False)
    old = Path.cwd()
    os.chdir(cwd)
    try:
        assert main(["pretrain", "--data", "cohort", *TINY, "--epochs", "2", "--out", "done"]) == 0
    finally:
        os.chdir(old)
    return cwd


@pytest.fixture
def cli(home, capsys, monkeypatch):
    monkeypatch.chdir(home)
    return lambda *args, ok=True: Run(capsys, args, ok)


@pytest.fixture
def fault():
    sys.path.insert(0, str(SHIM))
    import tscl_faultshim

    yield tscl_faultshim.install
    tscl_faultshim.uninstall()
    sys.path.remove(str(SHIM))


def _wait_for_steps(run: Path, proc, timeout: float = 300) -> None:
    """Until ``run``'s metrics.jsonl holds a step (it is flushed at each epoch's end)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (run / "metrics.jsonl").exists() and '"step"' in (run / "metrics.jsonl").read_text():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"{run}: no step logged within {timeout} s")


@installed
def test_ctrl_c_and_sigterm_stop_after_a_checkpoint_in_one_line(home):
    from safetensors import safe_open

    procs = {sig: tscl("pretrain", "--data", "cohort", *TINY, "--method-kwargs", "batch_size=2", "--epochs", "500",
                       "--out", f"stop-{sig.name}", cwd=home, wait=False) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, proc in procs.items():
        _wait_for_steps(home / f"stop-{sig.name}", proc)
        proc.send_signal(sig)
    for sig, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        run = home / f"stop-{sig.name}"
        lines = err.strip().splitlines()
        assert proc.returncode == 128 + sig and "Traceback" not in err and len(lines) == 1, err
        assert lines[0].startswith(f"tscl pretrain: stopped by {sig.name} at step ")
        assert lines[0].endswith(f"checkpoint written: resume with tscl pretrain --resume {run.name}")
        step = int(lines[0].split(" at step ")[1].split()[0])
        assert [s for s, _ in losses(run)] == list(range(step))  # every trained step logged, none after
        with safe_open(run / "checkpoint.safetensors", "pt") as f:
            assert json.loads(f.metadata()["tscl"])["step"] == step
        assert not (run / "encoder.safetensors").exists() and not (run / "FAILED.json").exists()
        assert not (run / ".lock").exists()


@installed
def test_two_writers_of_one_run_folder_one_is_refused_naming_the_other(home, cli):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(home / "done")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(home / "done")
        for args in (["--resume", "done"], ["--data", "cohort", *TINY, "--out", "done", "--overwrite"]):
            refused(cli("pretrain", *args, ok=False), "another tscl process is writing this run", f"pid {holder.pid}")
        assert snapshot(home / "done") == before
    finally:
        holder.kill()
        holder.wait()
    # two new runs started together into one folder: one trains, the other is refused in one line
    procs = [tscl("pretrain", "--data", "cohort", *TINY, "--epochs", "2", "--out", "twice", cwd=home, wait=False)
             for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    loser = next(err for rc, _, err in results if rc == 2).strip()
    assert len(loser.splitlines()) == 1 and ("another tscl process" in loser or "a run is already there" in loser)
    assert [s for s, _ in losses(home / "twice")] == list(range(len(losses(home / "twice"))))  # one writer's lines
    assert not (home / "twice" / ".lock").exists()


def test_a_dead_writers_lock_is_taken_over_saying_so(home, cli):
    shutil.copytree(home / "done", home / "stale")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(home / "stale")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    (home / "stale" / "encoder.safetensors").unlink()  # unfinished: the resume takes the lock and writes
    note = next(line for line in cli("pretrain", "--resume", "stale", "--quiet").stderr.splitlines() if "taking" in line)
    assert f"stale: taking over the lock left by pid {holder.pid} (since " in note
    assert note.endswith("which is no longer running")
    assert (home / "stale" / "encoder.safetensors").exists() and not (home / "stale" / ".lock").exists()


@installed
def test_resume_of_a_finished_run_says_so_and_changes_nothing(home):
    before = snapshot(home / "done")
    proc = tscl("pretrain", "--resume", "done", cwd=home)
    steps = len(losses(home / "done"))
    assert re.fullmatch(rf"done: this run is finished \(step {steps} of {steps}\); nothing to do \(its encoder: "
                        r"done/encoder.safetensors\)", proc.stdout.strip()), proc.stdout
    assert snapshot(home / "done") == before


@installed
def test_resume_before_the_first_checkpoint_restarts_saying_so_and_keeps_the_old_metrics(home):
    shutil.copytree(home / "done", home / "early")
    for name in ("checkpoint.safetensors", "encoder.safetensors", "method.safetensors", "loss.png"):
        (home / "early" / name).unlink()  # what a run killed (SIGKILL) before its first checkpoint leaves
    lines = (home / "early" / "metrics.jsonl").read_text().splitlines()[:3]
    (home / "early" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    proc = tscl("pretrain", "--resume", "early", "--quiet", cwd=home)
    assert "early: no checkpoint yet: restarting from step 0 (the previous metrics.jsonl is kept as " \
           "metrics.jsonl.1.old)" in proc.stderr
    assert (home / "early" / "metrics.jsonl.1.old").read_text().splitlines() == lines
    assert losses(home / "early") == losses(home / "done")
    assert (home / "early" / "encoder.safetensors").read_bytes() == (home / "done" / "encoder.safetensors").read_bytes()


@installed
def test_an_encoder_that_does_not_fit_the_task_is_refused_before_any_data_loads(home):
    (home / "nodata").mkdir(exist_ok=True)  # nothing to load: the refusal must come first
    refused(tscl("task", "run", "eegmat-task", "--data", "nodata", "--run", "done", cwd=home, ok=False),
            "done: its encoder was pretrained on 12-channel waveform data at 100 Hz",
            "task eegmat-task is 19-channel waveform data at 100 Hz")


@installed
def test_a_full_disk_at_a_new_runs_first_checkpoint_leaves_no_run_folder(home):
    refused(tscl("pretrain", "--data", "cohort", *TINY, "--epochs", "2", "--out", "full", cwd=home,
                 fault="ENOSPC:checkpoint.safetensors", ok=False),
            "full/checkpoint.safetensors: cannot write (No space left on device); free some space")
    assert not (home / "full").exists()


def test_a_full_disk_while_writing_weights_or_metrics(home, cli, fault):
    fault("ENOSPC", "encoder.safetensors")
    refused(cli("pretrain", "--data", "cohort", *TINY, "--epochs", "2", "--out", "full", ok=False),
            "full/encoder.safetensors: cannot write (No space left on device)", "--resume full")
    failed = json.loads((home / "full" / "FAILED.json").read_text())
    assert "encoder.safetensors: cannot write" in failed["error"] and failed["step"] == len(losses(home / "done"))
    assert not list((home / "full").glob("*.tmp")) and not (home / "full" / "encoder.safetensors").exists()
    refused(cli("embed", "--run", "full", "--out", "f.npz", "--quiet", ok=False), "full/encoder.safetensors: missing",
            "has not finished (FAILED.json: ", "--resume full")
    fault("ENOSPC", "metrics.jsonl")
    refused(cli("pretrain", "--data", "cohort", *TINY, "--epochs", "2", "--out", "full2", ok=False),
            "full2/metrics.jsonl: cannot write (No space left on device)")
    assert not (home / "full2").exists()
    fault("ENOSPC", "nowhere")
    cli("pretrain", "--resume", "full")  # the final checkpoint is there: the resume writes the weights
    assert not (home / "full" / "FAILED.json").exists()
    assert (home / "full" / "encoder.safetensors").read_bytes() == (home / "done" / "encoder.safetensors").read_bytes()


def test_read_only_run_folders_are_one_line_and_left_untouched(home, cli, fault):
    shutil.copytree(home / "done", home / "ro-run")
    (home / "ro-run" / "encoder.safetensors").unlink()
    before = snapshot(home / "ro-run")
    fault("EROFS", str(home / "ro-run"))
    for args in (["--resume", "ro-run"], ["--data", "cohort", *TINY, "--out", "ro-run", "--overwrite"]):
        refused(cli("pretrain", *args, ok=False), "ro-run/.lock: cannot lock the run folder (Read-only file system)",
                "make the folder writable")
        assert snapshot(home / "ro-run") == before
    fault("EROFS", str(home / "ro"))
    refused(cli("pretrain", "--data", "cohort", *TINY, "--out", "ro/run", ok=False),
            "ro/run: cannot create the run folder (Read-only file system)")


def test_damaged_checkpoint_and_weights_are_one_line_naming_the_file(home, cli):
    shutil.copytree(home / "done", home / "cut")
    ckpt = home / "cut" / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    refused(cli("pretrain", "--resume", "cut", ok=False), "cut/checkpoint.safetensors: damaged checkpoint",
            "move it away")
    ckpt.write_bytes(b"\x00" * 64)
    refused(cli("pretrain", "--resume", "cut", ok=False), "cut/checkpoint.safetensors: damaged checkpoint")
    weights = home / "cut" / "encoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    refused(cli("embed", "--run", "cut", "--out", "cut.npz", "--quiet", ok=False), "cut/encoder.safetensors: damaged weights",
            "--resume cut")


def test_config_files_are_checked_key_by_key(home, cli):
    saved = json.loads((home / "done" / "config.json").read_text())
    cases = [({"epoch": 3}, ["unknown key 'epoch'", "did you mean 'epochs'?"]),
             ({"epochs": "3"}, ["epochs must be an integer", '"3"']),
             ({"lr": -1}, ["lr must be > 0"]),
             ({"amp": 1}, ["amp must be true or false"]),
             ({"encoder_kwargs": {"widht": [8, 16]}}, ["encoder_kwargs", "'widht'", "did you mean 'widths'?"]),
             ({"dataset": {**saved["dataset"], "rot": "x"}}, ["dataset: unknown key 'rot'", "did you mean 'root'?"])]
    for change, words in cases:
        (home / "bad.json").write_text(json.dumps({**saved, **change}))
        refused(cli("pretrain", "--config", "bad.json", "--out", "from-config", ok=False), "bad.json", *words)
        assert not (home / "from-config").exists()
    (home / "bad.json").write_text('{"epochs": 3,')
    refused(cli("pretrain", "--config", "bad.json", "--out", "from-config", ok=False), "bad.json: not valid JSON")
    # an option beside --config or --resume that contradicts the saved config is named, not ignored
    refused(cli("pretrain", "--config", "done/config.json", "--out", "x", "--epochs", "5", ok=False),
            "--epochs 5: done/config.json has epochs 2", "edit the config file")
    refused(cli("pretrain", "--resume", "done", "--method", "pclr", ok=False), "--method pclr", "'simclr'")
    refused(cli("pretrain", "--resume", "done", "--spl", "all", ok=False), "--split all", "'train'")  # abbreviated
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--data", "cohort", *TINY, "--out", "x", "--checkpoint-every-min", "-1"])
    assert exit_.value.code == 2 and not (home / "x").exists()


def test_resume_follows_the_data_by_content_not_by_path(home, cli):
    """Moved data resumes with a note; other data, or the old path holding other content, is refused naming
    the option; a place that is gone says that the path is the reason."""
    shutil.copytree(home / "cohort", home / "data")
    cli("pretrain", "--data", "data", *TINY, "--epochs", "2", "--out", "moving")
    (home / "moving" / "encoder.safetensors").unlink()  # unfinished: its last checkpoint is the final step
    refused(cli("pretrain", "--resume", "moving", "--data", "other", "--quiet", ok=False),
            f"--data {home / 'other'}: not the data moving was pretrained on")
    (home / "data").rename(home / "elsewhere")
    refused(cli("pretrain", "--resume", "moving", ok=False), f"moving: its data {home / 'data'} is not there any more",
            "--root NEW_PLACE")
    shutil.copytree(home / "other", home / "data")  # the old path now holds other recordings
    refused(cli("pretrain", "--resume", "moving", "--quiet", ok=False),
            f"the data at {home / 'data'}: not the data moving was pretrained on")
    proc = cli("pretrain", "--resume", "moving", "--root", "elsewhere", "--quiet")
    assert f"the data moved: {home / 'data'} -> {home / 'elsewhere'} (same content)" in proc.stderr
    assert json.loads((home / "moving" / "config.json").read_text())["dataset"]["root"] == str(home / "elsewhere")
    assert (home / "moving" / "encoder.safetensors").exists()


def test_left_out_items_are_printed_and_written_into_the_run(home, cli):
    shutil.copytree(home / "cohort", home / "damaged")
    victim = sorted((home / "damaged").rglob("*.dat"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    proc = cli("pretrain", "--data", "damaged", "--split", "all", "--dataset-kwargs", "on_error=skip", *TINY,
               "--epochs", "1", "--out", "skipping")
    report = json.loads((home / "skipping" / "data_report.json").read_text())
    assert len(report["left_out"]) == 1 and victim.stem in json.dumps(report["left_out"])
    assert "1 item(s) of wfdb were left out while reading" in proc.stderr and "data_report.json" in proc.stderr


def test_ctrl_c_or_sigterm_while_the_data_loads_is_one_line_and_leaves_no_folder(home, cli, monkeypatch):
    import tscl.cli

    def interrupted(spec, progress):
        raise KeyboardInterrupt

    def terminated(spec, progress):
        os.kill(os.getpid(), signal.SIGTERM)  # the command's handler turns it into one line, exit 143
        raise AssertionError("SIGTERM did not stop the command")

    for stop, code, name in ((interrupted, 130, "SIGINT"), (terminated, 143, "SIGTERM")):
        monkeypatch.setattr(tscl.cli, "_open", stop)
        proc = cli("pretrain", "--data", "cohort", *TINY, "--out", "stopped-early", ok=False)
        line = f"tscl pretrain: stopped by {name} before a checkpoint could be written: a run folder, if one was made, " \
               "keeps its last checkpoint"
        assert proc.returncode == code and proc.stderr.strip() == line and not (home / "stopped-early").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the command puts the default back
