"""CONTRIBUTING.md's recipes "Add a contrastive method" and "Add a dataset source with a downstream task",
followed step by step from a test.

The method below is written as the recipe says (a Method subclass with its streams declared, a
sampler, a forward that hands `kernels.info_nce` its ids) and registered with one `METHODS`
entry; nothing else in the package is touched, and the trainer, checkpoint/resume and the spy
patch point work for it unchanged.

The dataset is one new module written to a folder outside the package (``SOURCE_MODULE``): a reader of
its publisher's layout, a source registered with ``register_source`` whose index carries the label
column, and its task registered with ``register_task``; importing that module is all it takes for
``tscl.probes.evaluate`` (and the CLI) to run the task, with random init, a supervised row and the
patient-level split.
"""
import torch
from torch import nn

from tscl import kernels
from tscl.distributed import gather_embeddings
from tscl.encoders import ProjectionHead, build_encoder
from tscl.methods import METHODS, build_method
from tscl.methods.base import Method
from tscl.methods.sampling import RecordBatchSampler
from tscl.train import PretrainConfig, pretrain


class Halves(Method):
    """Halves: the first and the second half of one recording are positives (a CMSC without patients).

    q = first halves, k = second halves, ids = record ids, symmetric InfoNCE."""

    modalities = ("waveform",)
    augment_names = ()
    generator_names = ("_gen",)  # the random offset of the halves: declared, so resume is exact

    def __init__(self, encoder: nn.Module, proj_dim: int = 16, temperature: float = 0.1, batch_size: int = 8):
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(encoder.embed_dim, encoder.embed_dim, proj_dim)
        self.temperature, self.batch_size = temperature, batch_size
        self._gen = torch.Generator().manual_seed(0)

    def make_sampler(self, index, seed: int = 0):
        self._gen.manual_seed(seed)
        return RecordBatchSampler(len(index), batch_size=self.batch_size, seed=seed)

    def forward(self, x, batch):
        t = x.shape[-1] // 2
        shift = int(torch.randint(0, x.shape[-1] - 2 * (t // 2) + 1, (1,), generator=self._gen))
        first, second = x[..., shift: shift + t // 2], x[..., shift + t // 2: shift + 2 * (t // 2)]
        q, ids = gather_embeddings(self.head(self.encoder(first)), batch["record_ids"])
        k, _ = gather_embeddings(self.head(self.encoder(second)), batch["record_ids"])
        return kernels.info_nce(q, k, ids, ids, temperature=self.temperature, symmetric=True)


def _cfg(out, **kw):
    return PretrainConfig(out_dir=str(out), method="halves", encoder="cnn1d", encoder_kwargs={"widths": [8, 16]},
                          method_kwargs={"batch_size": 8}, epochs=2, lr=1e-2, device="cpu", progress=False, **kw)


def test_a_method_added_by_the_recipe_trains_resumes_and_is_spied(tmp_path, monkeypatch):
    from tscl.datasets import open_dataset
    from tscl.simulate import CohortConfig, write_cohort

    monkeypatch.setitem(METHODS, "halves", Halves)  # step 2: the one METHODS line
    write_cohort(tmp_path / "cohort", CohortConfig(n_patients=10), progress=False)
    data = open_dataset("wfdb", tmp_path / "cohort", progress=False).split("train")

    calls = []
    real = kernels.info_nce
    monkeypatch.setattr(kernels, "info_nce", lambda *a, **k: calls.append(k) or real(*a, **k))
    method = build_method("halves", build_encoder("cnn1d", 12, widths=[8, 16]))
    x = torch.randn(4, 12, 1000)
    loss = method(x, {"record_ids": torch.arange(4), "patient_ids": torch.arange(4)})
    assert torch.isfinite(loss) and calls and calls[-1]["symmetric"] is True  # the one patch point saw it

    full = pretrain(data, _cfg(tmp_path / "full", ckpt_every=0))
    pretrain(data, _cfg(tmp_path / "run", ckpt_every=2, max_steps=3))  # stopped early (as if killed)
    pretrain(data, _cfg(tmp_path / "run", ckpt_every=2, resume=True))
    assert (tmp_path / "run" / "encoder.safetensors").read_bytes() == (full / "encoder.safetensors").read_bytes()


# --- "Add a dataset source with a downstream task" ------------------------------------------------------------

SOURCE_MODULE = '''"""The toy-holter source: a publisher's folder of WFDB records and a table `subjects.tsv` (tab-separated:
subject, record, rhythm as text, arm), with its downstream task. Everything a newcomer writes is here."""
from pathlib import Path

import polars as pl

from tscl.datasets import register_source
from tscl.datasets.waveform import WaveformDataset
from tscl.loaders import load_wfdb_cohort
from tscl.tasks import register_task


@register_source("toy-holter", "waveform", "WFDB records and subjects.tsv (subject, record, rhythm, arm); label af; "
                 "split by arm (the trial's held-out arm tests)", options={})
def _toy_holter(root: Path, *, cache=None, progress=True):
    table = pl.read_csv(root / "subjects.tsv", separator="\\t", infer_schema=False)
    meta = table.select(pl.col("subject").alias("patient_id"), pl.col("record").alias("record_id"),
                        pl.col("record").alias("path"),
                        (pl.col("rhythm") == "atrial fibrillation").cast(pl.Int8).alias("af"),
                        pl.when(pl.col("arm") == "B").then(pl.lit("test")).otherwise(pl.lit("train")).alias("split"))
    meta.write_csv(root / ".tscl-metadata.csv")  # the reader's input: ids, path, labels and split
    return WaveformDataset(load_wfdb_cohort(root, root / ".tscl-metadata.csv", progress=progress))


register_task("toy-holter-af", "toy-holter", ("af",), "binary",
              description="toy Holter trial: AF against other rhythms; arm B tests")
'''


def _publisher_folder(root):
    """A folder as the toy publisher lays it out: WFDB records and a tab-separated subject table."""
    import polars as pl

    from tscl.simulate import CohortConfig, write_cohort

    write_cohort(root, CohortConfig(n_patients=30, seed=5, prevalence_af=0.4), progress=False)
    meta = pl.read_csv(root / "metadata.csv", infer_schema=False)
    arm = ["B" if s == "test" else "A" for s in meta["split"]]
    table = meta.select(pl.col("patient_id").alias("subject"), pl.col("path").alias("record"),
                        pl.when(pl.col("af") == "1").then(pl.lit("atrial fibrillation")).otherwise(pl.lit("sinus"))
                        .alias("rhythm")).with_columns(pl.Series("arm", arm))
    (root / "metadata.csv").unlink()  # the publisher ships its own table only
    table.write_csv(root / "subjects.tsv", separator="\t")
    return table


def test_a_dataset_source_with_its_task_added_by_the_recipe_runs_in_the_engine(tmp_path, monkeypatch):
    import importlib
    import sys

    import numpy as np

    from tscl.datasets import SOURCES, open_dataset
    from tscl.probes import EvalSpec, evaluate
    from tscl.tasks import TASKS

    monkeypatch.setattr(sys, "path", [str(tmp_path / "pkg"), *sys.path])
    monkeypatch.setitem(SOURCES, "toy-holter", None)  # restored (removed) after the test, with the task below
    monkeypatch.setitem(TASKS, "toy-holter-af", None)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "toy_holter.py").write_text(SOURCE_MODULE)  # step 1: the one module
    importlib.import_module("toy_holter")
    monkeypatch.delitem(sys.modules, "toy_holter")
    table = _publisher_folder(tmp_path / "data")

    data = open_dataset("toy-holter", tmp_path / "data", progress=False)
    assert data.label_columns[:1] == ["af"] and len(data) == table.height
    train = data.split("train")  # pretraining never reads arm B
    run = pretrain(train, PretrainConfig(out_dir=str(tmp_path / "run"), method="simclr", encoder="cnn1d",
                                         encoder_kwargs={"widths": [8, 16]}, method_kwargs={"batch_size": 16},
                                         epochs=1, device="cpu", progress=False))
    report = evaluate(EvalSpec(task="toy-holter-af", root=tmp_path / "data", encoders=[run], supervised=True,
                               fractions=(0.5, 1.0), repeats=2, n_boot=50,
                               supervised_kwargs={"max_steps": 5, "epochs": 1}))
    assert {r["encoder"] for r in report.rows} == {"run", "random-init", "supervised (from scratch)"}
    arm_b = table.filter(table["arm"] == "B")
    assert report.result.split["test_records"] == arm_b.height  # the source's split: arm B tests
    assert report.result.split["test_patients"] == arm_b["subject"].n_unique()
    positives = int((arm_b["rhythm"] == "atrial fibrillation").sum())
    assert report.data["positives"]["af"]["test"] == positives
    cell = report.result.cell("run", 1.0)
    assert cell["n/a"] or (cell["ci_low"] <= cell["auroc"] <= cell["ci_high"])
    text = report.to_markdown()
    assert "toy-holter-af" in text and "run − random-init" in text
    out = report.write(tmp_path / "report")
    saved = __import__("json").loads((out / "report.json").read_text())
    assert saved["data"]["task"] == "toy-holter-af" and np.isfinite(saved["rows"][0]["repeats"])
