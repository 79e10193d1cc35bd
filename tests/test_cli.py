import json
import subprocess
import sys

import numpy as np
import pytest

from tscl.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert main(["simulate", "--out", str(root / "cohort"), "--patients", "16", "--seed", "2", "--quiet"]) == 0
    return root


def test_simulate_pretrain_embed_probe(tiny):
    data = str(tiny / "cohort")
    assert main(["pretrain", "--data", data, "--out", str(tiny / "run"), "--epochs", "2", "--encoder", "cnn1d",
                 "--encoder-kwargs", "widths=[8,16]", "--method-kwargs", "patients_per_batch=8", "--quiet"]) == 0
    run = tiny / "run"
    for name in ("config.json", "metrics.jsonl", "encoder.safetensors", "loss.png"):
        assert (run / name).exists(), name
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(s.get("loss", s.get("mean_loss"))) for s in steps)
    assert main(["embed", "--data", data, "--run", str(run), "--out", str(tiny / "pclr.npz"), "--quiet"]) == 0
    assert main(["embed", "--data", data, "--run", str(run), "--random-init", "--out", str(tiny / "rand.npz"), "--quiet"]) == 0
    z = np.load(tiny / "pclr.npz")
    assert z["features"].shape[0] == len(z["record_id"]) and np.isfinite(z["features"]).all()
    assert not np.allclose(z["features"], np.load(tiny / "rand.npz")["features"])
    assert main(["probe", "--data", data, "--embeddings", str(tiny / "pclr.npz"), str(tiny / "rand.npz"),
                 "--labels", "lvh,bbb", "--fractions", "0.5,1", "--bootstrap", "50", "--reference", "rand",
                 "--out", str(tiny / "probe"), "--quiet"]) == 0
    report = json.loads((tiny / "probe" / "probe.json").read_text())
    assert {r["encoder"] for r in report["rows"]} == {"pclr", "rand", "random-init"}  # random init by default
    assert (tiny / "probe" / "label_efficiency.png").stat().st_size > 1000


def test_demo_runs_end_to_end_and_prints_the_table(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "tscl", "demo", "--out", str(out), "--patients", "24", "--epochs", "1",
         "--encoder", "cnn1d", "--encoder-kwargs", "widths=[8,16]", "--batch-patients", "8", "--bootstrap", "50",
         "--fractions", "0.5,1", "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| pclr |" in proc.stdout and "| random-init |" in proc.stdout
    assert "| supervised (from scratch) |" in proc.stdout
    assert "pclr − random-init" in proc.stdout and "supervised (from scratch) − random-init" in proc.stdout
    summary = (out / "report" / "report.md").read_text()
    assert "# sim-risk" in summary and "supervised (from scratch)" in summary and "re-id [chance]" in summary
    report = json.loads((out / "report" / "report.json").read_text())
    assert {r["encoder"] for r in report["rows"]} == {"pclr", "random-init", "supervised (from scratch)"}
    for fig in ("label_efficiency.png", "reliability.png", "embedding_pclr.png"):
        assert (out / "report" / fig).stat().st_size > 1000, fig


def test_encoder_kwargs_default_to_the_chosen_encoders_own(tiny):
    """Without --encoder-kwargs, resnet1d gets the CPU-sized width 0.25 and any other encoder its defaults
    (a resnet1d-only default would make `--encoder cnn1d` fail)."""
    data = str(tiny / "cohort")
    for enc, want in (("cnn1d", {}), ("resnet1d", {"width": 0.25})):
        out = tiny / f"default-{enc}"
        assert main(["pretrain", "--data", data, "--out", str(out), "--epochs", "1", "--encoder", enc,
                     "--method", "simclr", "--method-kwargs", "batch_size=16", "--quiet"]) == 0
        assert json.loads((out / "config.json").read_text())["encoder_kwargs"] == want


def test_bad_metadata_is_reported_with_the_file(tiny, capsys):
    meta = tiny / "bad.csv"
    meta.write_text("record_id,lvh\nP00000_v0,1\n")
    code = main(["pretrain", "--data", str(tiny / "cohort"), "--metadata", str(meta), "--out", str(tiny / "x"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "patient_id" in err


def test_unknown_label_is_a_clear_error(tiny, capsys):
    assert main(["probe", "--data", str(tiny / "cohort"), "--embeddings", str(tiny / "pclr.npz"), "--labels", "nope",
                 "--out", str(tiny / "p2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "label column 'nope' is not in the index; label columns: " in err and "lvh" in err
    assert len(err.splitlines()) == 1


def _subparsers():
    from tscl.cli import build_parser

    parser = build_parser()
    return parser, next(a for a in parser._actions if isinstance(a.choices, dict)).choices


def test_help_lists_the_names_and_every_default_once():
    from tscl import catalog

    parser, subs = _subparsers()
    top = parser.format_help()
    for kind in ("sources", "encoders", "methods"):
        assert all(name in top for name in catalog.builtin_names(kind)), kind
    for command, sub in subs.items():
        for action in sub._actions:
            if not action.option_strings or action.help is None:
                continue
            shown = sub._get_formatter()._expand_help(action) if action.help else ""
            assert shown.count("(default") <= 1, (command, action.option_strings, shown)
            has_default = action.default not in (None, False) and action.default != "==SUPPRESS=="
            if has_default:
                assert "(default" in shown, (command, action.option_strings)  # every default is said
    pretrain = " ".join(subs["pretrain"].format_help().split())  # wrapped lines joined
    assert all(name in pretrain for name in catalog.builtin_names("sources"))
    assert "(default: 40)" in pretrain and "waveform: resnet1d, ehr: ehr_sequence, image: resnet2d18" in pretrain


def test_embed_writes_exactly_the_name_asked_for_and_probe_reads_parquet(tiny, capsys):
    data = str(tiny / "cohort")
    run = tiny / "run"  # made by test_simulate_pretrain_embed_probe
    if not (run / "encoder.safetensors").exists():
        pytest.skip("needs the run of test_simulate_pretrain_embed_probe (run the module, not this test alone)")
    assert main(["embed", "--data", data, "--run", str(run), "--out", str(tiny / "emb" / "pclr.parquet"), "--quiet"]) == 0
    assert [p.name for p in (tiny / "emb").iterdir()] == ["pclr.parquet"]
    assert main(["embed", "--data", data, "--run", str(run), "--out", str(tiny / "emb" / "x.csv"), "--quiet"]) == 2
    assert "ends in .npz or .parquet" in capsys.readouterr().err
    assert main(["probe", "--data", data, "--embeddings", str(tiny / "emb" / "pclr.parquet"), str(tiny / "rand.npz"),
                 "--labels", "lvh,bbb", "--fractions", "1", "--bootstrap", "20", "--reference", "rand",
                 "--out", str(tiny / "probe-parquet"), "--quiet"]) == 0
    rows = json.loads((tiny / "probe-parquet" / "probe.json").read_text())["rows"]
    assert {r["encoder"] for r in rows} == {"pclr", "rand", "random-init"}  # a file's stem names its row, any format
    from tscl.embeddings import load_embeddings

    parquet, npz = load_embeddings(tiny / "emb" / "pclr.parquet"), load_embeddings(tiny / "pclr.npz")
    np.testing.assert_array_equal(parquet.features, npz.features)  # the same run embeds the same features
    assert parquet.record_id == npz.record_id and parquet.patient_id == npz.patient_id


@pytest.mark.parametrize("argv, message", [
    (["probe", "--data", "x", "--embeddings", "e.npz", "--out", "p", "--fractions", "0,1"], "--fractions"),
    (["retrieval", "--run", "r", "--k", "0"], "--k"),
    (["pretrain", "--data", "x", "--out", "r", "--device", "tpu"], "--device"),
    (["pretrain", "--data", "x", "--out", "r", "--split", "folds:a"], "folds must be numbers"),
])
def test_bad_values_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "x").mkdir()
    assert main([a if a not in ("x", "r") else str(tmp_path / a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith(f"tscl {argv[0]}: error:")


def test_probe_without_labels_or_task_says_what_to_give(tmp_path, capsys):
    assert main(["probe", "--data", str(tmp_path), "--encoders", "x.npz"]) == 2
    assert "give the labels to probe: --labels COLUMNS, or --task NAME" in capsys.readouterr().err


def test_the_old_evaluation_commands_are_aliases_of_probe(tiny, capsys):
    """task, report and mimic-probe stay for a release: each builds the evaluation probe runs, and says so."""
    parser, _ = _subparsers()
    top = " ".join(parser.format_help().split())
    assert top.count("(old name, kept for a release: tscl probe --task") == 3
    run = tiny / "run"
    if not (run / "encoder.safetensors").exists():
        pytest.skip("needs the run of test_simulate_pretrain_embed_probe (run the module, not this test alone)")
    assert main(["task", "list"]) == 0
    assert "sim-risk" in capsys.readouterr().out
    assert main(["task", "run", "sim-risk", "--data", str(tiny / "cohort"), "--run", str(run), "--no-supervised",
                 "--bootstrap", "20", "--out", str(tiny / "task"), "--quiet"]) == 0
    rows = json.loads((tiny / "task" / "sim-risk.json").read_text())["rows"]
    assert {r["encoder"] for r in rows} == {"run", "random-init"} and {r["fraction"] for r in rows} == {1.0}
    assert main(["report", "--tasks", "sim-risk", "--data", str(tiny / "cohort"), "--run", str(run), "--no-supervised",
                 "--bootstrap", "20", "--fractions", "1", "--out", str(tiny / "report"), "--quiet"]) == 0
    assert (tiny / "report" / "summary.md").exists() and (tiny / "report" / "sim-risk" / "report.md").exists()
    assert main(["task", "run", "no-such-task", "--data", str(tiny / "cohort"), "--quiet"]) == 2
    assert "unknown task 'no-such-task'" in capsys.readouterr().err
