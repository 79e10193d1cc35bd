"""benchmarks/gpu_check.sh: its --dry-run passes with only torch, numpy and triton importable, and
what it promises a device session holds (results written as measured, failures and cuts reported).

The dry run goes through the shell script in a subprocess whose ``sitecustomize`` refuses polars,
wfdb, pyedflib, scikit-learn and scipy, so that none of them can become a dependency of the GPU
check again; a control run shows the blocker blocks. The float64 reference the check compares the
kernel with is itself checked here against autograd through ``info_nce_rows_reference`` on
generated cases.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tscl.benchmarks import gpu_check as gc

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
BLOCKED = ("polars", "wfdb", "pyedflib", "sklearn", "scipy")
SITECUSTOMIZE = f'''
import os
import sys

BLOCKED = {BLOCKED!r}


class _Hide:
    """Wraps an import finder so that it finds no blocked package: to ``import`` and to
    ``importlib.util.find_spec`` they are absent, exactly as on the device machine (torch itself
    probes for scipy and sklearn with find_spec and must see None, not an error)."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


sys.meta_path[:] = [_Hide(finder) for finder in sys.meta_path
                    # HIDE_INSTALL=1: as if tscl were not installed (no editable-install finder), as on the device
                    if not (os.environ.get("HIDE_INSTALL") == "1" and "Editable" in getattr(finder, "__name__", ""))]
'''
ABSENT = re.compile(r"No module named '(%s)" % "|".join(BLOCKED))


@pytest.fixture(scope="module")
def blocker(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("blocker")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def _env(blocker: Path | None, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "TRITON_INTERPRET", "GPU_CHECK_INJECT",
                                                            "GPU_CHECK_BUDGET", "PYTHONPATH")}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", **extra)
    if blocker is not None:
        env["PYTHONPATH"] = str(blocker)
    return env


def _run_script(out: Path, blocker: Path, *args: str, timeout: int = 400, **extra) -> subprocess.CompletedProcess:
    """The dry run as the device would run it: blocked packages absent, tscl not installed."""
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args, str(out)], env=_env(blocker, HIDE_INSTALL="1", **extra),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _records(out: Path) -> list[dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]  # every line is one whole JSON object


def _phases(records: list[dict]) -> dict:
    return {r["name"]: r for r in records if r.get("record") == "phase"}


def test_the_blocker_refuses_every_blocked_package_and_nothing_else(blocker, tmp_path):
    probe = ("import importlib, importlib.util, json\nout = {}\nfor name in %r + ('numpy', 'torch'):\n"
             "    try:\n        importlib.import_module(name); out[name] = 'imported'\n"
             "    except ImportError as err:\n        out[name] = str(err)\n"
             "    out[name] += ' / spec %%s' %% (importlib.util.find_spec(name) is not None)\n"
             "print(json.dumps(out))") % (BLOCKED,)
    blocked = json.loads(subprocess.run([sys.executable, "-c", probe], env=_env(blocker), capture_output=True,
                                        text=True, check=True, timeout=120).stdout)
    assert all(blocked[name] == f"No module named '{name}' / spec False" for name in BLOCKED), blocked
    assert blocked["numpy"] == blocked["torch"] == "imported / spec True"
    # the control: without the blocker polars imports here, so the refusal above is the blocker's doing
    free = subprocess.run([sys.executable, "-c", "import polars"], env=_env(None), capture_output=True, timeout=120)
    assert free.returncode == 0, free.stderr
    # HIDE_INSTALL=1 hides the editable install: outside the checkout, tscl is not importable
    code = "import importlib.util; print(importlib.util.find_spec('tscl') is None)"
    hidden = subprocess.run([sys.executable, "-c", code], env=_env(blocker, HIDE_INSTALL="1"), capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    shown = subprocess.run([sys.executable, "-c", code], env=_env(blocker), capture_output=True, text=True, timeout=120,
                           cwd=tmp_path)
    assert hidden.stdout.split() == ["True"] and shown.stdout.split() == ["False"], (hidden.stderr, shown.stderr)


def test_what_the_device_runs_imports_without_the_blocked_packages(blocker):
    """The kernels, resnet1d, SimCLR and PCLR (and every other method), the augmentations and the
    payloads import, and one SimCLR training step runs, with none of the blocked packages."""
    code = ("import sys, torch\n"
            "import tscl, tscl.kernels, tscl.encoders, tscl.methods, tscl.augment, tscl.payloads\n"
            "from tscl.encoders import build_encoder\nfrom tscl.methods import build_method\n"
            "m = build_method('simclr', build_encoder('resnet1d', 12, width=0.25))\n"
            "loss = m(torch.randn(4, 12, 250), {'record_ids': torch.arange(4)})\nloss.backward()\n"
            "print(sorted({n.split('.')[0] for n in sys.modules} & set(%r)), float(loss) > 0)") % (BLOCKED,)
    proc = subprocess.run([sys.executable, "-c", code], env=_env(blocker), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["[]", "True"]


@pytest.fixture(scope="module")
def dry_run(blocker, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _run_script(out, blocker)
    return proc, out


def test_dry_run_passes_under_the_import_blocker(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert not ABSENT.search(proc.stdout + proc.stderr)
    phases = _phases(_records(out))
    assert list(phases) == list(gc.PHASES) and all(p["status"] == "ok" for p in phases.values()), phases


def test_dry_run_prints_at_most_one_config_per_kernel_dtype_and_d(dry_run):
    proc, out = dry_run
    assert "compiles per kernel:" in proc.stdout
    listing = proc.stdout.split("compiles per kernel:", 1)[1]
    counts = re.findall(r"^\s+(\w+)\s+(\w+) D=(\d+)\s+(\d+)\s", listing, flags=re.M)
    assert counts, listing[:2000]
    assert all(int(c) == 1 for *_, c in counts), counts
    kinds = {k for k, *_ in counts}
    assert {"fwd", "dq"} <= kinds  # every phase launched the forward and a backward
    dtypes = {dt for _, dt, *_ in counts}
    assert {"bfloat16", "float32"} <= dtypes
    logged = [r for r in _records(out) if r.get("record") == "launch_log"]
    assert {r["phase"] for r in logged} == set(gc.PHASES)  # each phase process wrote its own log


def test_dry_run_writes_every_phase_result_as_json_lines(dry_run):
    _, out = dry_run
    records = _records(out)
    env = records[0]
    assert env["record"] == "env" and env["interpreter"] is True
    first = (out / "summary.md").read_text().splitlines()[0]
    for field in ("device", "driver", "torch", "triton", "cuda"):
        assert f"{env[field]}" in first, (field, first)
    cases = [r for r in records if r.get("record") == "case"]
    want = {(c.name, path) for c in gc.correctness_cases(dry=True) for path in ("separable", "loop")}
    assert {(r["name"], r["positives"]) for r in cases} == want
    assert all(r["ok"] and r["loss_err"] <= r["loss_tol"] and r["dq_err"] <= r["dq_tol"] for r in cases)
    assert all(r["ppos_min"] >= gc.CONFIDENT for r in cases if r["confident"])
    assert {r["dtype"] for r in cases} == {"bfloat16", "float32"}
    assert any(r["record"] == "reference_selfcheck" and r["ok"] for r in records)
    assert any(r["record"] == "nan_in_bank" and r["ok"] for r in records)
    syncs = [r for r in records if r.get("record") == "sync"]
    assert {(r["name"], r["positives"]) for r in syncs} == {(c.name, p) for c, _ in gc.sync_cases(True)
                                                             for p in ("separable", "loop")}
    bench = [r for r in records if r.get("record") == "bench"]
    grid = gc.bench_grid(dry=True)
    assert [(r["impl"], r["variant"], r["N"], r["D"]) for r in bench] == grid["plan"]
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in bench if r["impl"] in ("fused", "eager"))
    compiled = [r for r in bench if r["impl"] == "compiled"]
    assert compiled[0]["status"] == "ok" and all(r["status"].startswith("skipped (") for r in compiled[1:])
    steps = [r for r in records if r.get("record") == "train_step"]
    cfg = gc.train_config(dry=True)
    assert {r["method"] for r in steps} == {"simclr", "pclr"} and len(steps) == 2 * cfg["steps"]
    train = {r["method"]: r for r in records if r.get("record") == "train"}
    assert all(t["ok"] and t["fused_steps_per_s"] > 0 and t["eager_steps_per_s"] > 0 for t in train.values())
    fp32 = next(r for r in records if r.get("record") == "train_fp32")
    assert fp32["steps"] == cfg["fp32_steps"] and fp32["fused_bf16_over_fp32_eager"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is True and summary["env"]["device"] == env["device"]
    assert (out / "gpu_check.log").stat().st_size > 0
    pngs = {p.name for p in out.glob("*.png")}
    try:
        import matplotlib  # noqa: F401
        assert pngs == {"bench.png", "train_losses.png"}
    except ImportError:
        assert not pngs
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back from $OUT


def test_a_failing_phase_fails_the_run_and_the_others_still_report(blocker, tmp_path):
    proc = _run_script(tmp_path, blocker, "--phases", "correctness,sync", GPU_CHECK_INJECT="correctness:fail")
    assert proc.returncode == 1, proc.stdout[-3000:]
    records = _records(tmp_path)
    phases = _phases(records)
    assert phases["correctness"]["status"] == "failed" and phases["sync"]["status"] == "ok"
    correctness = [r for r in records if r.get("phase") == "correctness"]
    assert correctness[0]["record"] == "env"  # written before the failure, kept
    assert any(r.get("record") == "error" and "on purpose" in r["error"] for r in correctness)
    assert any(r.get("record") == "sync" and r["ok"] for r in records)
    summary = (tmp_path / "summary.md").read_text()
    assert "verdict: FAIL" in summary and "| correctness | failed |" in summary


def test_a_phase_cut_by_its_time_limit_keeps_what_it_measured(blocker, tmp_path):
    proc = _run_script(tmp_path, blocker, "--phases", "bench", GPU_CHECK_INJECT="bench:hang", GPU_CHECK_BUDGET="15")
    assert proc.returncode == 1, proc.stdout[-3000:]
    records = _records(tmp_path)
    assert _phases(records)["bench"]["status"] == "cut"
    bench = [r for r in records if r.get("phase") == "bench"]
    assert bench[0]["record"] == "ceiling" and bench[0]["matmul_bf16_tflops"] > 0
    assert any(r.get("record") == "launch_log" for r in bench)  # the terminated phase still wrote its log
    assert "| bench | cut |" in (tmp_path / "summary.md").read_text()


def test_bad_arguments_end_in_one_line_and_status_2(tmp_path):
    for args in (["--phases", "correctness,nope"], ["--bogus"], [str(tmp_path), "second"]):
        proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path)], env=_env(None, GPU_CHECK_BUDGET="9"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "GPU_CHECK_BUDGET=9" in proc.stderr
    with pytest.raises(SystemExit) as stop:
        gc.main(["train", "--out", str(tmp_path / "missing"), "--dry-run"])
    assert stop.value.code == 2


def test_summary_fails_when_a_kernel_launched_two_configs_for_one_dtype_and_d(tmp_path, capsys):
    env = gc.environment(torch.device("cpu"))
    one = dict(kind="fwd", dtype="bfloat16", block_d=128, configs=["BLOCK_M=64, BLOCK_N=64, num_warps=4"])
    other = dict(one, configs=["BLOCK_M=128, BLOCK_N=64, num_warps=8"])
    rows = [env, dict(phase="bench", record="launch_log", entries=[one]),
            dict(phase="train", record="launch_log", entries=[other]),
            dict(phase="gpu_check.sh", record="phase", name="bench", status="ok", rc=0, seconds=1, budget_s=9)]
    (tmp_path / gc.RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert gc.main(["summary", "--out", str(tmp_path), "--dry-run"]) == 1
    printed = capsys.readouterr().out
    assert re.search(r"fwd\s+bfloat16 D=128\s+2\s", printed) and "more than one config" in printed
    # one config in both phases passes; a missing launch log does not
    rows[2] = dict(phase="train", record="launch_log", entries=[one])
    (tmp_path / gc.RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert gc.main(["summary", "--out", str(tmp_path), "--dry-run"]) == 0
    rows[2] = dict(phase="train", record="launch_log", unavailable="no launch_log()")
    (tmp_path / gc.RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert gc.main(["summary", "--out", str(tmp_path), "--dry-run"]) == 1


VARIANTS = ("clip", "ntxent", "multipos", "moco", "pmq", "pmq-mask")


@settings(max_examples=40, deadline=None)
@given(variant=st.sampled_from(VARIANTS), n=st.integers(2, 23), d=st.sampled_from([4, 8, 16]),
       bank=st.integers(1, 17), confident=st.booleans(), chunk=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_chunked_float64_reference_matches_autograd_through_the_reference(variant, n, d, bank, confident, chunk, seed):
    n += n % 2 if variant == "ntxent" else 0  # pairs of views
    case = gc.Case("generated", variant, n, d, bank=bank if variant in ("moco", "pmq", "pmq-mask") else 0,
                   dtype="float32", confident=confident)
    inp = gc.in_float64(gc.case_inputs(case, torch.device("cpu"), seed=seed))
    weight = torch.randn(n * (2 if inp.symmetric else 1), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    want, dq, dk, dtau = gc.fused_rows(inp, weight, backend="reference")
    got = gc.reference64(inp, weight, chunk=chunk)
    assert torch.allclose(got["loss"], want, rtol=0, atol=1e-10)
    assert torch.allclose(got["dq"], dq, rtol=1e-8, atol=1e-10)
    if dk is not None:
        assert torch.allclose(got["dk"], dk, rtol=1e-8, atol=1e-10)
    assert torch.allclose(got["dtau"], dtau.reshape(()), rtol=1e-8, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(variant=st.sampled_from(VARIANTS), dtype=st.sampled_from(["bfloat16", "float32"]), seed=st.integers(0, 2**16))
def test_tolerances_admit_fp32_accumulation_and_refuse_a_wrong_positive_term(variant, dtype, seed):
    """The eager reference (fp32 accumulation over the same rounded inputs) lies within the bounds;
    a gradient whose positives' term is off by the rounding of p to 16 bits (the separable-path
    fault of issue 22, 12-49x the true norm) lies outside them."""
    case = gc.Case("generated", variant, 40, 16, bank=24 if variant in ("moco", "pmq", "pmq-mask") else 0,
                   dtype=dtype, confident=True)
    inp = gc.case_inputs(case, torch.device("cpu"), seed=seed)
    weight = torch.randn(case.n * (2 if inp.symmetric else 1), generator=torch.Generator().manual_seed(seed))
    ref = gc.reference64(inp, weight)
    tol = gc.tolerances(case, ref)
    rows, dq, dk, dtau = gc.fused_rows(inp, weight, backend="reference")
    assert float((rows.double() - ref["loss"]).abs().max()) <= tol["loss"]
    assert gc._rel(dq, ref["dq"]) <= tol["dq"]
    if dk is not None:
        assert gc._rel(dk, ref["dk"]) <= tol["dk"]
    if variant != "multipos" and variant != "pmq":  # one positive per anchor: the fault's size is known
        wrong = ref["dq"] + (ref["gp_q"] * 2.0**-8)[:, None] * inp.q.double()  # p_pos off by one bf16 rounding
        assert gc._rel(wrong, ref["dq"]) > tol["dq"]
