"""The BreastMNIST benchmark end to end at --quick size on a MedMNIST-layout .npz written here, its hidden-image
rule (no test image pretrained on or probe-trained on) refusing what breaks it, and the evaluation's metric names.

The real BreastMNIST file is never needed: the expectations come from the arrays the test writes."""
import json

import numpy as np
import pytest

from test_source_medmnist import write_npz
from tscl.benchmarks import bench_breastmnist as bb
from tscl.datasets import open_dataset
from tscl.probes import EvalSpec, evaluate

SIZES = (40, 12, 16)  # train / val / test images: the validation split holds enough images to choose on


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("breast")
    arrays = write_npz(root / "breastmnist.npz", sizes=SIZES, hw=(28, 28))
    out, docs = root / "out", root / "docs"
    assert bb.main(["--root", str(root / "breastmnist.npz"), "--out", str(out), "--docs", str(docs), "--quick"]) == 0
    return root, arrays, out, docs


def test_quick_run_reports_every_row_fraction_and_metric_with_cis(quick):
    root, arrays, out, docs = quick
    res = json.loads((out / "breastmnist.json").read_text())
    assert res["split_images"] == {s: len(arrays[f"{s}_labels"]) for s in ("train", "val", "test")}
    names = {r["encoder"] for r in res["rows"]}
    assert names == {"random-init", "supervised (from scratch)", *bb.METHODS}
    assert {(r["encoder"], r["fraction"]) for r in res["rows"]} == {(n, f) for n in names for f in bb.FRACTIONS}
    scored = [r for r in res["rows"] if not r["n/a"]]
    assert {r["fraction"] for r in scored} >= {0.1, 1.0}  # 1 % of 40 images may hold one class: then n/a, said so
    for r in scored:
        for m in ("auroc", "accuracy"):
            low, high = r[f"{m}_ci"]
            assert 0 <= low <= r[m] <= high <= 1, (r["encoder"], r["fraction"], m)
    for r in res["rows"]:
        assert r["n/a"] or np.isfinite(r["auroc"])
    full = {r["encoder"]: r for r in res["rows"] if r["fraction"] == 1.0}
    assert all(r["train_images"] == len(arrays["train_labels"]) for r in full.values())
    comps = {(c["encoder"], c["fraction"]) for c in res["comparisons"]}
    assert comps == {(n, f) for n in names - {"random-init"} for f in bb.FRACTIONS}
    assert {c["reference"] for c in res["comparisons"]} == {"random-init"}
    for c in (c for c in res["comparisons"] if not c["n/a"]):
        cell = {r["fraction"]: r for r in res["rows"] if r["encoder"] == c["encoder"]}[c["fraction"]]
        ref = {r["fraction"]: r for r in res["rows"] if r["encoder"] == "random-init"}[c["fraction"]]
        for m in ("auroc", "accuracy"):
            assert c[m] == pytest.approx(cell[m] - ref[m]) and np.all(np.isfinite(c[f"{m}_ci"]))
    assert res["config"]["epochs"] == 1 and res["environment"]["torch"] and res["wall_s"] > 0
    assert set(res["pretrain_s"]) == set(bb.METHODS) and res["evaluate_s"] > 0


def test_quick_run_writes_the_table_figure_and_docs_copies(quick):
    root, arrays, out, docs = quick
    md = (out / "breastmnist_table.md").read_text()
    assert md.startswith("Command: `python benchmarks/bench_breastmnist.py --root")
    assert "| random-init |" in md and "| supervised (from scratch) |" in md and "| simclr − random-init | 10 % |" in md
    for anchor in bb.ANCHORS:
        assert f"| {anchor['name']} (100 % labels" in md and f"{anchor['auroc']:.3f}" in md
    assert "Measured wall time:" in md and "no up-down flip" in md
    assert (out / "breastmnist.png").stat().st_size > 10_000
    for name in ("breastmnist.json", "breastmnist_table.md", "breastmnist.png"):
        assert (docs / name).read_bytes() == (out / name).read_bytes()
    assert (out / "report" / "report.json").exists()  # the engine's own report beside it


def test_a_finished_run_is_reused_and_a_changed_setting_is_redone(quick):
    root, arrays, out, docs = quick
    data = open_dataset("medmnist", root / "breastmnist.npz", progress=False)
    args = bb.parse(["--root", str(root), "--quick"])
    before = (out / "runs" / "moco" / "encoder.safetensors").stat().st_mtime_ns
    saved = json.loads((out / "runs" / "moco" / "done.json").read_text())["pretrain_s"]
    run, seconds = bb.pretrain_once(data.split("train"), "moco", args, out)
    assert seconds == saved and (run / "encoder.safetensors").stat().st_mtime_ns == before
    args.queue = 128
    run, seconds = bb.pretrain_once(data.split("train"), "moco", args, out)
    assert (run / "encoder.safetensors").stat().st_mtime_ns != before
    assert json.loads((run / "config.json").read_text())["method_kwargs"]["queue_size"] == 128


def test_the_hidden_image_rule_refuses_held_out_images_in_pretraining(quick):
    root, arrays, out, docs = quick
    data = open_dataset("medmnist", root / "breastmnist.npz", progress=False)
    split = np.asarray(data.index["split"].to_list())
    train = np.flatnonzero(split == "train")
    counts = bb.check_hidden(data, data.split("train"))
    assert counts == {"train": SIZES[0], "val": SIZES[1], "test": SIZES[2]}
    for extra in ("test", "val"):
        leaky = data.subset(np.append(train, np.flatnonzero(split == extra)[0]))
        with pytest.raises(AssertionError, match="training split only"):
            bb.check_hidden(data, leaky)
    with pytest.raises(AssertionError, match="every training image"):
        bb.check_hidden(data, data.subset(train[:-1]))
    run = out / "runs" / "simclr"
    bb.check_run(run, data)  # the finished run's patients.json: the training images
    record = json.loads((run / "patients.json").read_text())
    record["patients"] = record["patients"] + [data.index["patient_id"][int(np.flatnonzero(split == "test")[0])]]
    (run / "patients.json").write_text(json.dumps(record))
    with pytest.raises(AssertionError, match="pretrained on test images"):
        bb.check_run(run, data)


def test_probe_split_sizes_are_checked_against_the_file(quick):
    root, arrays, out, docs = quick
    report = json.loads((out / "report" / "report.json").read_text())
    split = report["split"]

    class Fake:
        rows = [{"encoder": "x", "train_patients": SIZES[0]}]

        class result:
            pass

    Fake.result.split = split
    bb.check_report(Fake, {"train": SIZES[0], "val": SIZES[1], "test": SIZES[2]})
    with pytest.raises(AssertionError, match="is not the file's"):
        bb.check_report(Fake, {"train": SIZES[0], "val": SIZES[1], "test": SIZES[2] + 1})


def test_evaluation_metrics_are_refused_by_name(quick):
    root = quick[0]
    with pytest.raises(ValueError, match="metrics \\['nope'\\] must name at least one of"):
        evaluate(EvalSpec(dataset="medmnist", root=root / "nowhere", labels=["label"], metrics=("nope",)))
    with pytest.raises(ValueError, match="metric 'mae' is not one of a binary task's"):
        evaluate(EvalSpec(dataset="medmnist", root=root / "breastmnist.npz", labels=["label"], metrics=("auroc", "mae")))


@pytest.mark.parametrize("argv, says", [(["--root", "x", "--methods", "pclr"], "--methods: pclr"),
                                        (["--root", "x", "--methods", ","], "--methods: none given"),
                                        (["--root", "x", "--epochs", "0"], "--epochs 0: must be positive"),
                                        (["--root", "x", "--width", "-1"], "must be positive"),
                                        (["--epochs", "3"], "--root")])
def test_bad_command_lines_end_in_one_line_and_status_2(capsys, argv, says):
    with pytest.raises(SystemExit) as exit_:
        bb.parse(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and last.startswith("bench_breastmnist.py: error:") and says in last


def test_a_bad_root_ends_in_one_line_naming_it_and_status_2(tmp_path, capsys):
    bad = tmp_path / "breastmnist.npz"
    bad.write_bytes(b"not an npz")
    (tmp_path / "nosplit").mkdir()
    no_test = tmp_path / "nosplit" / "breastmnist.npz"
    write_npz(no_test, sizes=SIZES, hw=(28, 28), drop="test_labels")  # the MedMNIST layout without its test labels
    for root, says in ((tmp_path / "missing.npz", ""), (bad, ""), (no_test, "no 'test_labels' array")):
        assert bb.main(["--root", str(root), "--out", str(tmp_path / "out"), "--quick"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("bench_breastmnist.py: error:") and root.name in err[0], err
        assert says in err[0]
    assert not (tmp_path / "out" / "runs").exists()  # refused before any pretraining
