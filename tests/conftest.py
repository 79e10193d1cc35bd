"""Run the Triton kernels through Triton's CPU interpreter unless a GPU is present.

Set here, before any test module imports Triton, so the order tests run in cannot matter.
"""
import os
import tempfile

import pytest
import torch

os.environ["TSCL_CACHE"] = tempfile.mkdtemp(prefix="tscl-test-cache-")  # tests never write ~/.cache/tscl

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _losses(run):
    import json

    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "step" in r]


@pytest.fixture
def kill_and_resume(monkeypatch):
    """``kill_and_resume(data, config, kill_at, ckpt_every)``: train ``config(name, **overrides)`` uninterrupted
    into ``full``; then into ``run``, killed (KeyboardInterrupt) in the forward of step ``kill_at`` and resumed
    from its last checkpoint. Asserts the two runs' per-step losses and weights are equal bit for bit and
    returns ``(full, run)`` for further checks."""
    from tscl.methods import METHODS
    from tscl.train import pretrain

    def check(data, config, kill_at: int, ckpt_every: int):
        full = pretrain(data, config("full", ckpt_every=0))
        spec = METHODS[config("full").method]
        cls = getattr(spec, "func", spec)  # the CLOCS modes are partials of CLOCS
        forward, calls = cls.forward, []

        def killed(self, x, batch):
            calls.append(1)
            if len(calls) == kill_at + 1:
                raise KeyboardInterrupt("killed")
            return forward(self, x, batch)

        monkeypatch.setattr(cls, "forward", killed)
        with pytest.raises(KeyboardInterrupt):
            pretrain(data, config("run", ckpt_every=ckpt_every))
        monkeypatch.setattr(cls, "forward", forward)
        run = full.parent / "run"
        assert len(_losses(run)) == kill_at and not (run / "encoder.safetensors").exists()
        pretrain(data, config("run", ckpt_every=ckpt_every, resume=True))
        assert _losses(run) == _losses(full)  # the same losses, bit for bit
        for name in ("method.safetensors", "encoder.safetensors"):
            assert (run / name).read_bytes() == (full / name).read_bytes(), name
        return full, run

    return check


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): small models
    train faster and bit-reproducibly without thread contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter):
    """The generated-fault tests' outcomes per source (tests/mutation_kit.py), when they ran."""
    import sys

    kit = sys.modules.get("mutation_kit")
    if kit is not None and (kit.RESULTS or kit.NOT_RUN):
        terminalreporter.section("generated faults")
        for line in kit.summary_lines():
            terminalreporter.write_line(line)
