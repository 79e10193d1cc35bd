"""EHR through the one pipeline: the meds / mimic-iv sources, EHR augmentations, the encoder on an
Events payload, pretraining with simclr / pclr / moco / pmq, exact resume, bad input, the MIMIC-IV probe.

Runs on the shared MIMIC-IV clinical demo (100 real patients) and the MEDS example; skipped when
the shared data folder is absent."""
from __future__ import annotations

import json
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from tscl.datasets import Events, open_dataset

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MIMIC = DATA / "meds_demo" / "mimic-iv-clinical-database-demo-2.2"
MEDS = DATA / "meds_demo" / "meds_example"
pytestmark = pytest.mark.skipif(not (MIMIC / "hosp").is_dir() or not (MEDS / "data").is_dir(),
                                reason=f"shared EHR data not found under {DATA / 'meds_demo'} (MIMIC-IV demo, MEDS example)")

ENC = {"dim": 32, "depth": 1, "heads": 2, "max_len": 64}
METHOD_KW = {"simclr": {"batch_size": 16}, "moco": {"batch_size": 16, "queue_size": 64},
             "pmq": {"batch_size": 16, "queue_size": 64}, "pclr": {"patients_per_batch": 8}}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ehr-cache")


@pytest.fixture(scope="module")
def mimic(cache):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_dataset("mimic-iv", MIMIC, cache=cache, max_len=64)


def _listing(folder: Path) -> list:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


# ---- sources -----------------------------------------------------------------------------------------

def test_mimic_items_are_admissions_of_patients(mimic, cache):
    adm = pl.read_csv(MIMIC / "hosp" / "admissions.csv.gz", infer_schema_length=0)
    assert len(mimic) == adm.height == 275  # window="admission": one item per hospital admission
    idx = mimic.index
    assert idx["patient_id"].n_unique() == 100 and idx["record_id"].n_unique() == len(mimic)
    assert all(r == f"{p}:{k}" for p, r, k in zip(idx["patient_id"], idx["record_id"], idx["item"]))
    assert set(idx["split"]) == {"train", "val", "test"}
    # the MEDS subject splits decide the side: train/tuning/held_out -> train/val/test, one side per patient
    assert idx.group_by("patient_id").agg(pl.col("split").n_unique())["split"].max() == 1
    meds_splits = pl.read_parquet(next(cache.rglob("subject_splits.parquet")))
    want = {str(s): {"train": "train", "tuning": "val", "held_out": "test"}[v] for s, v in meds_splits.iter_rows()}
    assert all(want[p] == s for p, s in zip(idx["patient_id"], idx["split"]))
    info = mimic.info
    assert info["modality"] == "ehr" and info["vocab_size"] == mimic.in_channels > 2000 and info["max_len"] == 64
    assert (cache / "mimic-iv").is_dir() and list(cache.rglob("vocabulary.parquet"))


def test_mimic_conversion_is_cached_outside_the_data_folder(mimic, cache):
    before = _listing(MIMIC)
    again = open_dataset("mimic-iv", MIMIC, cache=cache, max_len=64, split="train")  # reuses the cache
    assert _listing(MIMIC) == before  # nothing written into the data folder
    assert again.fingerprint == mimic.fingerprint and again.in_channels == mimic.in_channels
    assert set(again.index["split"]) == {"train"} and len(again) == (mimic.index["split"] == "train").sum()
    np.testing.assert_array_equal(again.vocab["id"].to_numpy(), mimic.vocab["id"].to_numpy())


def test_events_batch(mimic):
    rows = np.array([5, 0, 17])
    ev = mimic.fetch(rows)
    assert isinstance(ev, Events) and len(ev) == 3
    assert ev.codes.dtype == torch.int64 and ev.values.dtype == ev.times.dtype == torch.float32
    assert ev.mask.dtype == torch.bool and ev.codes.shape == ev.mask.shape and ev.codes.shape[1] <= 64
    assert (ev.codes[~ev.mask] == 0).all() and (ev.codes[ev.mask] >= 1).all()
    assert int(ev.codes.max()) < mimic.in_channels
    lens = ev.mask.sum(1)
    assert (ev.mask == (torch.arange(ev.mask.shape[1]) < lens[:, None])).all()  # real events first
    t = torch.where(ev.mask, ev.times, 0.0)
    assert (t >= 0).all() and (t[:, 1:] >= t[:, :-1]).logical_or(~ev.mask[:, 1:]).all()  # oldest first, hours >= 0
    v = ev.values[ev.mask]
    assert torch.isfinite(v).any() and (torch.isfinite(v) | torch.isnan(v)).all()
    single = mimic.fetch(np.array([0]))
    assert torch.equal(single.codes[0, : int(lens[1])], ev.codes[1, : int(lens[1])])


def test_truncation_keeps_static_rows_and_recent_events(cache, mimic):
    full = open_dataset("mimic-iv", MIMIC, cache=cache, max_len=100000)
    i = int(np.argmax(full.lengths()))
    assert full.lengths()[i] > 64 and mimic.lengths()[i] == 64 and full.info["truncated_items"] == 0
    a, b = full.fetch([i]), mimic.fetch([i])
    statics = {int(full.vocab.filter(pl.col("code") == c)["id"][0]) for c in ("MEDS_BIRTH", "GENDER//F", "GENDER//M")}
    assert set(a.codes[0, :2].tolist()) <= statics  # age (MEDS_BIRTH valued in years) and sex come first
    assert torch.equal(a.codes[0, :2], b.codes[0, :2])  # ... and survive truncation
    n = int(a.mask.sum())
    assert torch.equal(a.codes[0, n - 62:n], b.codes[0, 2:64])  # then the 62 most recent events
    torch.testing.assert_close(a.times[0, n - 62:n], b.times[0, 2:64])


def test_meds_example_source():
    ds = open_dataset("meds", MEDS, cache=None)  # $TSCL_CACHE (a temporary folder under pytest)
    assert len(ds) == 6 and ds.patients() == sorted(ds.index["patient_id"].to_list())
    counts = dict(ds.index.group_by("split").len().iter_rows())
    assert counts == {"train": 4, "val": 1, "test": 1}  # train / tuning / held_out of subject_splits.parquet
    codes = set(pl.concat([pl.read_parquet(p) for p in sorted((MEDS / "data").rglob("*.parquet"))])["code"])
    assert set(ds.vocab["code"]) == codes and ds.in_channels == len(codes) + 3  # pad, unknown, [MASK] + every code
    ev = ds.fetch(np.arange(len(ds)))
    assert isinstance(ev, Events) and ev.mask.sum() > 6
    height = int(ds.vocab.filter(pl.col("code") == "HEIGHT")["id"][0])
    assert torch.isfinite(ev.values[ev.codes == height]).all()  # static HEIGHT z-scored on the training items
    train = open_dataset("meds", MEDS, split="train")
    assert len(train) == 4 and train.in_channels == ds.in_channels  # one vocabulary whatever the split


def test_meds_cache_is_keyed_by_content(tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(MEDS, copy)
    a = open_dataset("meds", MEDS, cache=tmp_path / "c")
    b = open_dataset("meds", copy, cache=tmp_path / "c")  # moved/copied data: the same cache folder
    assert a.fingerprint == b.fingerprint and len(list((tmp_path / "c" / "meds").glob("items-*"))) == 1
    c = open_dataset("meds", copy, cache=tmp_path / "c", max_len=4)  # other options: another folder
    assert c.fingerprint != a.fingerprint and c.lengths().max() == 4


def test_windows_option_cuts_long_histories(cache):
    day = open_dataset("mimic-iv", MIMIC, cache=cache, window="1d", max_len=32)
    assert len(day) > 275 and day.info["window"] == "1d"
    span = (day.index["window_end"] - day.index["window_start"]).dt.total_hours()
    assert span.max() < 24
    with pytest.raises(ValueError, match="window must be"):
        open_dataset("mimic-iv", MIMIC, cache=cache, window="weekly")


# ---- augmentations and the encoder -------------------------------------------------------------------

def test_ehr_augmentations_are_seeded_and_keep_the_payload_valid(mimic):
    from tscl.augment import EHR_AUGMENT, build_augment
    from tscl.augment import spec_modality
    from tscl.datasets.ehr import MASK_ID

    ev = mimic.fetch(np.arange(8))
    aug = build_augment(EHR_AUGMENT, modality="ehr", seed=3)
    v1 = aug(ev)
    again = build_augment(EHR_AUGMENT, modality="ehr", seed=3)(ev)
    for f in ("codes", "values", "times", "mask"):
        assert torch.equal(getattr(v1, f).nan_to_num(7.0), getattr(again, f).nan_to_num(7.0))
    v2 = aug(ev)
    assert not torch.equal(v1.mask, v2.mask) or not torch.equal(v1.codes, v2.codes)
    assert (v1.mask <= ev.mask).all() and v1.mask.any(1).all()  # dropout only removes events
    changed = v1.codes != ev.codes
    assert changed.any() and (v1.codes[changed] == MASK_ID).all()  # masking writes the [MASK] id
    assert torch.equal(torch.isnan(v1.values), torch.isnan(ev.values))  # no value invented or lost
    assert spec_modality(EHR_AUGMENT) == "ehr"  # a spec of EHR ops builds an EHR pipeline
    with pytest.raises(ValueError, match="unknown augmentation 'crop' for ehr"):
        build_augment("crop:len=0.5", modality="ehr")


def test_encoder_takes_an_events_payload(mimic):
    from tscl.encoders import build_encoder

    torch.manual_seed(0)
    enc = build_encoder("ehr_sequence", mimic.in_channels, **ENC).eval()
    ev = mimic.fetch(np.arange(4))
    z = enc(ev)
    assert z.shape == (4, 32) and torch.isfinite(z).all()
    torch.testing.assert_close(z, enc(ev.codes, ev.values, None, ev.times, padding_mask=ev.mask))
    with pytest.raises(TypeError, match="Events payload"):
        enc(ev, ev.values)


def test_pmq_neighbour_views_split_each_item_in_time(mimic):
    from tscl.datasets.ehr import neighbour_events, split_events

    ev = mimic.fetch(np.arange(6))
    parts = split_events(ev, 4)
    total = torch.stack([p.mask for p in parts]).sum(0)
    assert torch.equal(total.bool(), ev.mask) and total.max() == 1  # disjoint, together every event
    last = [torch.where(p.mask, torch.arange(ev.mask.shape[1]), -1).amax(1) for p in parts]
    first = [torch.where(p.mask, torch.arange(ev.mask.shape[1]), 10**6).amin(1) for p in parts]
    assert all((last[j] < first[j + 1]).all() for j in range(3))  # consecutive chunks, in time order
    q, k = neighbour_events(ev, 2)
    assert len(q) == len(k) == 12 and torch.equal(q.mask[1], parts[2].mask[0]) and torch.equal(k.mask[1], parts[3].mask[0])
    tiny = Events(ev.codes[:1, :3], ev.values[:1, :3], ev.times[:1, :3], torch.tensor([[True, False, False]]))
    assert all(p.mask.sum() == 1 for p in split_events(tiny, 2))  # a one-event item: no empty view


# ---- pretraining -------------------------------------------------------------------------------------

def _config(out, method, **kw):
    from tscl.train import PretrainConfig

    base = dict(out_dir=str(out), method=method, encoder="ehr_sequence", encoder_kwargs=dict(ENC),
                method_kwargs=dict(METHOD_KW[method]), epochs=1, max_steps=3, lr=1e-3, progress=False, device="cpu")
    return PretrainConfig(**{**base, **kw})


@pytest.mark.parametrize("method", ["simclr", "pclr", "moco", "pmq"])
def test_pretrain_on_mimic(mimic, tmp_path, method):
    from tscl.encoders import build_encoder
    from tscl.methods import build_method
    from tscl.train import load_encoder, pretrain

    train = mimic.split("train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PCLR: patients with one admission are left out of pair sampling
        run = pretrain(train, _config(tmp_path / method, method))
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len([s for s in steps if "step" in s]) == 3 and all(np.isfinite(s["loss"]) for s in steps if "step" in s)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data_info"]["modality"] == "ehr" and cfg["in_channels"] == mimic.in_channels
    assert cfg["dataset"]["dataset"] == "mimic-iv" and cfg["dataset"]["split"] == "train"
    assert set(json.loads((run / "patients.json").read_text())["patients"]) <= set(train.patients())
    enc = load_encoder(run)
    assert enc(train.fetch(np.arange(3))).shape == (3, 32)
    m = build_method(method, build_encoder("ehr_sequence", mimic.in_channels, **ENC), **METHOD_KW[method])
    m.set_modality("ehr")
    want = "Augment()" if method == "pclr" else "Augment(events:p=0.1,times:std=1,codes:p=0.15,values:std=0.1)"
    assert repr(m.augment) == want and m.augment.modality == ("waveform" if method == "pclr" else "ehr")


def test_meds_example_pretrains(tmp_path):
    from tscl.train import pretrain

    ds = open_dataset("meds", MEDS)
    run = pretrain(ds, _config(tmp_path / "run", "simclr", max_steps=2, method_kwargs={"batch_size": 4}))
    assert (run / "encoder.safetensors").exists()


def _curve(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["epoch"], r["loss"]) for r in lines if "step" in r], [r for r in lines if "epoch" in r and "step" not in r]


@pytest.mark.parametrize("method", ["pmq"])
def test_killed_ehr_run_resumes_step_for_step(mimic, tmp_path, kill_and_resume, method):
    """Augmentation draws (seeded generator in the checkpoint), the EMA key encoder and the patient queue
    all continue exactly: the resumed run's losses and weights equal an uninterrupted run's, bit for bit."""
    data = mimic.split("train").subset(np.arange(48))
    cfg = dict(epochs=3, max_steps=0, method_kwargs={"batch_size": 12, "queue_size": 40, "segments_per_record": 1})
    kill_and_resume(data, lambda name, **kw: _config(tmp_path / name, method, **{**cfg, **kw}), kill_at=6, ckpt_every=4)


# ---- bad input ---------------------------------------------------------------------------------------

def _write_meds(root: Path, frame: pl.DataFrame, splits: pl.DataFrame | None = None) -> Path:
    (root / "data" / "train").mkdir(parents=True)
    frame.write_parquet(root / "data" / "train" / "0.parquet")
    if splits is not None:
        (root / "metadata").mkdir()
        splits.write_parquet(root / "metadata" / "subject_splits.parquet")
    return root


def _events(rows):
    return pl.DataFrame(rows, schema={"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.Utf8,
                                      "numeric_value": pl.Float32}, orient="row")


def test_meds_root_without_data_folder(tmp_path):
    (tmp_path / "metadata").mkdir()
    with pytest.raises(FileNotFoundError, match="not a MEDS folder .no data/"):
        open_dataset("meds", tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match="no MEDS parquet shard"):
        open_dataset("meds", tmp_path)


def test_meds_shard_missing_a_column(tmp_path):
    frame = _events([(1, datetime(2020, 1, 1), "A", 1.0)]).drop("numeric_value")
    root = _write_meds(tmp_path / "m", frame)
    with pytest.raises(ValueError, match=r"0\.parquet: missing MEDS column 'numeric_value'"):
        open_dataset("meds", root)


def test_empty_patient_is_named_or_skipped(tmp_path):
    rows = [(1, None, "GENDER//F", None), (1, datetime(2020, 1, 1), "A", 1.0), (1, datetime(2020, 3, 1), "A", 2.0),
            (2, None, "GENDER//M", None), (2, datetime(1950, 1, 1), "MEDS_BIRTH", None)]  # subject 2: no timed event
    root = _write_meds(tmp_path / "m", _events(rows))
    with pytest.raises(ValueError, match=r"1 subject\(s\) have no timed event .*subject_id \[2\].*on_empty='skip'"):
        open_dataset("meds", root)
    ds = open_dataset("meds", root, on_empty="skip")
    assert ds.patients() == ["1"] and len(ds) == 2 and ds.info["empty_subjects"] == 1  # two 30-day windows
    # a subject listed in subject_splits without any event is an empty patient too
    root2 = _write_meds(tmp_path / "m2", _events(rows[:3]),
                        pl.DataFrame({"subject_id": [1, 9], "split": ["train", "held_out"]}))
    with pytest.raises(ValueError, match=r"subject_id \[9\]"):
        open_dataset("meds", root2)
    with pytest.raises(ValueError, match="unknown split name"):
        open_dataset("meds", _write_meds(tmp_path / "m3", _events(rows[:3]),
                                         pl.DataFrame({"subject_id": [1], "split": ["dev"]})))


def test_mimic_root_without_hosp(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a MIMIC-IV folder"):
        open_dataset("mimic-iv", tmp_path)


# ---- the MIMIC-IV probe ------------------------------------------------------------------------------

def test_mimic_admission_tasks_with_a_pretrained_run(mimic, cache, tmp_path):
    """The mimic-<label> tasks: admissions at admission + 24 h, the run's encoder beside its random-init twin and the
    tabular baseline, tested on the val and test subjects (never pretrained on)."""
    from tscl.probes import EvalSpec, PretrainingOverlapError, evaluate
    from tscl.train import pretrain

    adm = pl.read_csv(MIMIC / "hosp" / "admissions.csv.gz", infer_schema_length=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = pretrain(mimic.split("train"), _config(tmp_path / "pclr", "pclr", max_steps=4))
        reports = {label: evaluate(EvalSpec(task=task, root=MIMIC, encoders=[run], fractions=(1.0,), n_boot=50,
                                            cache=cache))
                   for label, task in (("mortality", "mimic-mortality"), ("long_stay", "mimic-long-stay"))}
    times = adm.with_columns(pl.col("admittime", "dischtime").str.to_datetime(), flag=pl.col("hospital_expire_flag") == "1")
    # the task's rows: admissions still in hospital (and alive) 24 h after admission; its positives, their deaths
    deaths = int(times.filter(pl.col("flag") & (pl.col("dischtime") - pl.col("admittime") >= pl.duration(hours=24)))
                 .height)
    for label, rep in reports.items():
        s = rep.result.split
        assert s["train_patients"] + s["test_patients"] == adm["subject_id"].n_unique()  # every subject once
        assert s["test_patients"] == 17 and rep.data["dataset"] == "mimic-iv"  # the val + test subjects
        assert {r["encoder"] for r in rep.rows} == {"pclr", "random-init", "tabular"}
    assert sum(reports["mortality"].data["positives"]["mortality"].values()) == deaths > 0  # from the file
    res = reports["long_stay"].result
    assert all(0 <= r["ci_low"] <= r["auroc"] <= r["ci_high"] <= 1 for r in res.rows)
    assert "long_stay" in reports["long_stay"].to_markdown()
    with pytest.raises(PretrainingOverlapError):  # a test patient's admissions reached pretraining
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate(EvalSpec(task="mimic-long-stay", root=MIMIC, encoders=[run], split="random", fractions=(1.0,),
                              n_boot=10, cache=cache, baselines=False))


def test_probe_items_only_see_events_before_the_prediction_time():
    from tscl.datasets.ehr import build_ehr_items

    rows = [(1, None, "GENDER//F", None), (1, datetime(2020, 1, 1), "A", 1.0), (1, datetime(2020, 1, 2), "B", 2.0),
            (1, datetime(2020, 1, 3), "C", 3.0), (1, datetime(2020, 1, 5), "D", 4.0)]
    cut = pl.DataFrame({"subject_id": [1, 1], "item_start": [None, datetime(2020, 1, 2)],
                        "prediction_time": [datetime(2020, 1, 3), datetime(2020, 1, 5)]})
    index, flat, vocab, _ = build_ehr_items(_events(rows), {1: "train"}, cutoffs=cut)
    ids = dict(zip(vocab["code"], vocab["id"]))
    got = [sorted(flat.filter(pl.col("item_row") == r)["code_id"].to_list()) for r in index["item_row"]]
    assert got[0] == sorted([ids["GENDER//F"], ids["A"], ids["B"]])  # C is at the prediction time: left out
    assert got[1] == sorted([ids["GENDER//F"], ids["B"], ids["C"]])  # from its start, strictly before 01-05
    assert (index["window_end"] < index["prediction_time"]).all()
