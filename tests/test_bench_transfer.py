"""bench_transfer at a tiny budget: synthetic CinC 2017 records and the shared PTB-XL sample's lead I.

Both directions are scored internally and externally through the engine's external path, the external side
is the other source's task on its own rows, and a run pretrained on an external test patient is refused.
"""
import json
from pathlib import Path

import pytest

from test_source_cinc2017 import make_training2017
from tscl.benchmarks import bench_transfer

PTBXL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ptbxl"
pytestmark = pytest.mark.skipif(not (PTBXL / "records100").is_dir(), reason=f"shared PTB-XL sample absent at {PTBXL}")


def test_quick_run_scores_both_directions_internally_and_externally(tmp_path):
    cinc = tmp_path / "training2017"
    table = make_training2017(cinc, per_class=25, seed=0)
    out, docs = tmp_path / "out", tmp_path / "docs"
    argv = ["--cinc-root", str(cinc), "--ptbxl-root", str(PTBXL), "--out", str(out), "--docs", str(docs),
            "--cache", str(tmp_path / "cache"), "--steps", "3", "--batch", "8", "--quick"]
    assert bench_transfer.main(argv) == 0
    rec = json.loads((docs / "transfer.json").read_text())
    assert set(rec["runs"]) == {"simclr-cinc-all", "simclr-cinc+ptbxl-all"}
    to_cinc, to_ptbxl = rec["results"]["ptbxl->cinc2017"], rec["results"]["cinc2017->ptbxl"]
    n_af_n = sum(v in ("A", "N") for v in table.values())
    assert to_ptbxl["data"]["rows"] == n_af_n  # CinC: its A and N records only
    assert to_cinc["data"]["external"]["rows"] == 10  # the 5 A and 5 N records of CinC's test split
    for res in (to_cinc, to_ptbxl):
        names = {r["encoder"] for r in res["rows"]}
        assert names == {"random-init", "supervised (from scratch)", "simclr-cinc-all", "simclr-cinc+ptbxl-all"}
        assert {r["test"] for r in res["rows"]} == {"internal", "external"}
        assert any(n.startswith("external labels:") for n in res["notes"])
    table_md = (docs / "transfer_table.md").read_text()
    assert "| AUROC internal | AUROC external |" in table_md and (docs / "transfer.png").stat().st_size > 5_000
    # a run whose patients.json names an external test patient is refused before any probe
    held = bench_transfer.external_patients(bench_transfer.argparse.Namespace(
        cinc_root=str(cinc), ptbxl_root=str(PTBXL), cache=str(tmp_path / "cache")), "cinc2017-af")
    runs = {n: dict(r) for n, r in rec["runs"].items()}
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "patients.json").write_text(json.dumps({"patients": [sorted(held)[0]]}))
    runs["planted"] = {"path": str(planted)}
    with pytest.raises(AssertionError, match="planted was pretrained on 1 external test patients of cinc2017-af"):
        bench_transfer.assert_external_hidden(runs, held, "cinc2017-af")


def test_unknown_direction_is_refused(capsys):
    with pytest.raises(SystemExit) as err:
        bench_transfer.main(["--cinc-root", "x", "--ptbxl-root", "y", "--out", "z", "--directions", "a->b"])
    assert err.value.code == 2 and "unknown direction 'a->b'" in capsys.readouterr().err
