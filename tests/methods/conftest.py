"""Shared pieces of the method tests: a tiny seeded batch and encoder, the kernel spy, a simulated cohort.

The test modules import the plain helpers (``from .conftest import ...``); ``spy`` and ``cohort``
are fixtures."""
import pytest
import torch

import tscl.kernels
from tscl.encoders import build_encoder

N, C, T = 8, 12, 400
PIDS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def enc():
    return build_encoder("cnn1d", C, widths=[8, 16])


def make_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, T, generator=g)
    return x, {"patient_ids": PIDS.clone(), "record_ids": torch.arange(N) + 100,
               "labels": torch.tensor([0, 1, 0, 1, 1, 1, 0, 2]), "tabular": torch.randn(N, 3, generator=g)}


class Spy:
    """Records every info_nce call (args and kwargs) and returns the real loss."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __call__(self, *args, **kw):
        out = self.real(*args, **kw)
        self.calls.append({"args": args, "kw": kw, "out": out})
        return out


@pytest.fixture
def spy(monkeypatch):
    """Every method calls ``kernels.info_nce`` at call time: one patch reaches them all."""
    s = Spy(tscl.kernels.info_nce)
    monkeypatch.setattr(tscl.kernels, "info_nce", s)
    return s


def ids_of(call):
    a = call["args"]
    return (a[2] if len(a) > 2 else call["kw"].get("q_ids")), (a[3] if len(a) > 3 else call["kw"].get("k_ids"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from tscl.loaders import load_wfdb_cohort
    from tscl.simulate import CohortConfig, write_cohort

    root = tmp_path_factory.mktemp("methods_cohort")
    write_cohort(root / "cohort", CohortConfig(n_patients=12, seed=1, duration_s=5.0), progress=False)
    return root, load_wfdb_cohort(root / "cohort", cache_dir=root / "cache", progress=False)
