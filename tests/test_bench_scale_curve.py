"""bench_scale_curve at a tiny budget: synthetic CinC 2017 records and the shared PTB-XL sample's lead I.

Every pretraining run takes the asked number of steps whatever its size, sets are nested, no held-out record
or patient is pretrained on (asserted; a planted one is refused), every probe row is scored with a CI beside
random init and supervised, the growth pair is paired, and the JSON, table and figure are written; the same
command again resumes from the finished runs and reports.
"""
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from test_source_cinc2017 import make_training2017
from tscl.benchmarks import bench_record, bench_scale_curve
from tscl.benchmarks.lead1 import check_hidden, open_pool, pretraining_set
from tscl.probes import EvalSpec

PTBXL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ptbxl"
needs_ptbxl = pytest.mark.skipif(not (PTBXL / "records100").is_dir(), reason=f"shared PTB-XL sample absent at {PTBXL}")


@pytest.fixture(scope="module")
def cinc(tmp_path_factory):
    root = tmp_path_factory.mktemp("cinc") / "training2017"
    make_training2017(root, per_class=25, seed=0)
    return root


def test_pretraining_sets_are_nested_and_hold_no_test_record(cinc, tmp_path):
    pool = open_pool(cinc, None, cache=tmp_path, seed=0)
    small, big = pretraining_set(pool, 10, False), pretraining_set(pool, None, False)
    rec = lambda d: set(d.index["patient_id"].to_list())  # noqa: E731
    assert rec(small) < rec(big) and len(rec(small)) == 10 and rec(big) == set(pool.order)
    assert not rec(big) & pool.cinc_test and len(pool.cinc_test) == 20  # 20 % of 100 records, by class
    assert check_hidden(big, pool)["cinc_records"] == len(pool.order)
    pool.cinc_test.add(pool.order[3])  # a test record planted in the pool is caught
    with pytest.raises(AssertionError, match="CinC 2017 test records in pretraining"):
        check_hidden(small, pool)
    with pytest.raises(ValueError, match="the pool holds 80 non-test"):
        pretraining_set(pool, 81, False)


@needs_ptbxl
def test_quick_run_writes_the_curve(cinc, tmp_path):
    out, docs = tmp_path / "out", tmp_path / "docs"
    argv = ["--cinc-root", str(cinc), "--ptbxl-root", str(PTBXL), "--out", str(out), "--docs", str(docs),
            "--cache", str(tmp_path / "cache"), "--sizes", "10,all", "--steps", "3", "--batch", "8", "--quick",
            "--fractions", "1", "--tasks", "ptbxl-superdiagnostic,cinc2017-classes"]
    assert bench_scale_curve.main(argv) == 0
    rec = json.loads((docs / "scale_curve.json").read_text())
    assert set(rec["runs"]) == {"simclr-cinc-10", "simclr-cinc-all", "simclr-cinc+ptbxl-10", "simclr-cinc+ptbxl-all"}
    for name, run in rec["runs"].items():
        lines = (Path(run["path"]) / "metrics.jsonl").read_text().splitlines()
        assert sum("step" in json.loads(line) for line in lines) == 3, name  # the same compute at every size
        assert run["ptbxl_ecgs"] == (rec["pool"]["ptbxl_train_ecgs"] if "ptbxl" in name else 0)
        patients = set(json.loads((Path(run["path"]) / "patients.json").read_text())["patients"])
        assert not patients & set(rec["runs"]) and run["recordings"] == run["cinc_records"] + run["ptbxl_ecgs"]
    for task in ("ptbxl-superdiagnostic", "cinc2017-classes"):
        res = rec["results"][task]
        names = {r["encoder"] for r in res["rows"]}
        assert {"random-init", "supervised (from scratch)", *rec["runs"]} == names
        pairs = [c for c in res["comparisons"] if c["reference"] != "random-init"]
        assert {(c["encoder"], c["reference"]) for c in pairs} == {("simclr-cinc-all", "simclr-cinc-10"),
                                                                   ("simclr-cinc+ptbxl-all", "simclr-cinc+ptbxl-10")}
        assert all(r["ci_low"] <= r[res["metrics"][0]] <= r["ci_high"] for r in res["rows"] if not r["n/a"])
    assert rec["results"]["cinc2017-classes"]["metrics"][0] == "f1:normal+af+other"
    points = [p for p in rec["curve"] if p["task"] == "cinc2017-classes" and p["series"] == "cinc"]
    assert sorted(p["recordings"] for p in points if p["metric"] == "auroc") == [10, 80]
    assert len(rec["verdicts"]) == 3 * 2 and all(v["says"] for v in rec["verdicts"])
    table = (docs / "scale_curve_table.md").read_text()
    assert "challenge F1 (N, AF, O)" in table and "| simclr-cinc-all − simclr-cinc-10 |" in table
    assert (docs / "scale_curve.png").stat().st_size > 10_000
    assert np.isfinite(rec["wall_s"]) and rec["code"]["commit"]
    assert not any("reused" in r for r in rec["results"].values())
    assert "evaluations ptbxl-superdiagnostic" in (docs / "scale_curve_table.md").read_text()
    assert_resumes(argv, rec, out, docs)


def assert_resumes(argv, rec, out, docs):
    """The same command again reuses every run and report (an interrupted benchmark resumes); a report is not
    reused for another spec, nor once an encoder it read was pretrained again."""
    assert bench_scale_curve.main(argv) == 0
    again = json.loads((docs / "scale_curve.json").read_text())
    for task, res in again["results"].items():
        assert res["reused"] == str(out / "reports" / task) and res["rows"] == rec["results"][task]["rows"]
        assert res["eval_s"] == pytest.approx(rec["results"][task]["eval_s"])
    assert "Reused from an earlier invocation" in (docs / "scale_curve_table.md").read_text()
    folder = out / "reports" / "cinc2017-classes"
    spec = EvalSpec(**json.loads((folder / "report.json").read_text())["spec"])
    assert bench_record._reusable(spec, folder) is not None
    assert bench_record._reusable(replace(spec, n_boot=spec.n_boot + 1), folder) is None
    newer = (folder / "report.json").stat().st_mtime + 5
    os.utime(Path(spec.encoders[0]) / "encoder.safetensors", (newer, newer))
    assert bench_record._reusable(spec, folder) is None


def test_bad_options_are_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as err:
        bench_scale_curve.main(["--cinc-root", "x", "--ptbxl-root", "y", "--out", "z", "--series", "cinc,mimic"])
    assert err.value.code == 2 and "unknown series, task or method 'mimic'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--sizes: 'ten' is not a positive number"):
        bench_scale_curve.main(["--cinc-root", "x", "--ptbxl-root", "y", "--out", "z", "--sizes", "ten"])
