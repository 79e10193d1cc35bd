"""CONTRIBUTING.md's recipe "Add a contrastive method", followed step by step from a test.

The method below is written as the recipe says (a Method subclass with its streams declared, a
sampler, a forward that hands `kernels.info_nce` its ids) and named with one line of the catalog
(`tscl.catalog.BUILTIN["methods"]`); nothing else in the package is touched, and the trainer,
checkpoint/resume and the spy patch point work for it unchanged.
"""
import torch
from torch import nn

from tscl import catalog, kernels
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

    monkeypatch.setitem(catalog.BUILTIN["methods"], "halves", f"{__name__}:Halves")  # step 2: the one catalog line
    monkeypatch.setattr("tscl.methods.METHODS", dict(METHODS))  # the name, resolved on first use, is forgotten after
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
