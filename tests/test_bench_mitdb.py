"""bench_mitdb at a tiny budget on MIT-BIH-like records (every AAMI class in every record).

One encoder pretrained on DS1 beats serves both protocols without touching a DS2 subject or an intra-patient
test beat (asserted; planted ones are refused); both protocols are scored as one class per beat with per-class
Se and +P at the argmax, beside random init and supervised, and the anchors are printed as cited.
"""
import json

import polars as pl
import pytest

from test_source_mitdb import write_record
from tscl.benchmarks import bench_mitdb
from tscl.loaders.annotations import MITDB_RECORDS


@pytest.fixture(scope="module")
def mitdb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mitdb")
    for i, name in enumerate(MITDB_RECORDS):
        write_record(folder, name, seed=i)
    (folder / "RECORDS").write_text("\n".join(MITDB_RECORDS) + "\n")
    return folder


def test_pretraining_set_holds_no_ds2_subject_and_no_intra_test_beat(mitdb, tmp_path):
    args = bench_mitdb.argparse.Namespace(root=str(mitdb), cache=str(tmp_path))
    data = bench_mitdb.open_protocols(args)
    pre, info = bench_mitdb.pretraining_set(data, mitdb)
    inter, intra = data["inter-patient"].index, data["intra-patient"].index
    ds1 = set(inter.filter(pl.col("split") == "train")["record_id"].to_list())
    tested = set(intra.filter(pl.col("split") == "test")["record_id"].to_list())
    assert set(pre.index["record_id"].to_list()) == ds1 - tested and info["intra_test_beats_left_out"] == len(ds1 & tested)
    assert "201" not in info["subjects"] and not set(info["subjects"]) & set(
        inter.filter(pl.col("split") == "test")["patient_id"].to_list())
    with pytest.raises(AssertionError, match="DS2 subjects in pretraining"):  # planted: all of DS1 and DS2
        bench_mitdb.check_hidden_beats(inter, data)
    leak = intra.filter((pl.col("split") == "test") & pl.col("subject").is_in(info["subjects"])).head(2)
    assert leak.height == 2  # test beats of DS1 records: the leak the intra-patient column must not have
    planted = pl.concat([pre.index.select("patient_id", "record_id"),
                         leak.select(pl.col("subject").alias("patient_id"), "record_id")])
    with pytest.raises(AssertionError, match="^2 intra-patient test beats in pretraining"):
        bench_mitdb.check_hidden_beats(planted, data)


def test_quick_run_scores_both_protocols(mitdb, tmp_path):
    out, docs = tmp_path / "out", tmp_path / "docs"
    argv = ["--root", str(mitdb), "--out", str(out), "--docs", str(docs), "--cache", str(tmp_path / "cache"),
            "--steps", "3", "--batch", "16", "--quick"]
    assert bench_mitdb.main(argv) == 0
    rec = json.loads((docs / "mitdb.json").read_text())
    for protocol in ("inter-patient", "intra-patient"):
        res = rec["results"][protocol]
        assert res["kind"] == "multiclass" and res["metrics"][:3] == ["f1", "accuracy", "auroc"]
        assert {r["encoder"] for r in res["rows"]} == {"simclr-ds1", "random-init", "supervised (from scratch)"}
        for r in res["rows"]:
            assert 0 <= r["accuracy"] <= 1 and "se:aami_S" in r and "ppv:aami_F" in r
    assert rec["results"]["inter-patient"]["split"]["test_patients"] == 22  # DS2's subjects
    table = (docs / "mitdb_table.md").read_text()
    assert "| *de Chazal et al. 2004, inter-patient (DS2)* | anchor |" in table and "75.9 %" in table
    assert (docs / "mitdb.png").stat().st_size > 5_000
