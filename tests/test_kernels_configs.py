"""The kernels' static tile configs, launch log, determinism and host reads.

* The config table (``kernels/config_table.py``, measured by ``benchmarks/aot_kernels.py``) has a
  row for every kernel, dtype and D of every (arch, Triton) it was measured for, and its chosen
  config is among the admitted ones; ``chosen_config`` looks it up as documented.
* Whatever the sizes, a process launches one config per kernel, dtype and head dim (no
  autotuning unless ``TSCL_INFO_NCE_AUTOTUNE=1``), and the launch log says so.
* No float atomics: a loss and its gradients reproduce bit for bit, also under
  ``torch.use_deterministic_algorithms(True)``.
* No host read of a tensor per call (``aten._local_scalar_dense``, what ``.item()``/``float()``
  dispatch to: a device sync on CUDA) in the fused path with a float temperature.
"""
import inspect
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from tscl.kernels import info_nce  # noqa: E402

from test_kernels import require_triton, tn  # noqa: E402  (fails, never skips silently, where Triton cannot run)

CONFIG_KEYS = {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"}


@pytest.fixture(autouse=True)
def _triton_required():
    require_triton()


def _call(n=37, m=37, d=24, dtype=torch.float32, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=gen).to(dtype).requires_grad_()
    k = torch.randn(m, d, generator=gen).to(dtype).requires_grad_()
    ids_q, ids_k = torch.randint(0, 6, (n,), generator=gen), torch.randint(0, 6, (m,), generator=gen)
    tau = torch.tensor(0.2, requires_grad=True)
    loss = info_nce(q, k, ids_q, ids_k, temperature=tau, backend="triton", **kw)
    loss.backward()
    return loss.detach(), q.grad, k.grad, tau.grad


def test_table_has_every_row_and_admits_its_choice():
    from tscl.kernels import config_table

    measured = set(config_table.MEASURED)
    assert measured, "the table says nothing was measured"
    assert {key[:2] for key in config_table.TABLE} == measured
    dims = sorted({key[3] for key in config_table.TABLE})
    dtypes = sorted({key[2] for key in config_table.TABLE})
    assert dims == [64, 128, 256, 512] and dtypes == ["bfloat16", "float16", "float32"]
    for arch, version in measured:
        for dtype in dtypes:
            for d in dims:
                row = config_table.TABLE[(arch, version, dtype, d)]
                assert set(row) == set(tn.KERNEL_KINDS), (arch, version, dtype, d)
                for kind, entry in row.items():
                    chosen, admitted = tuple(entry[:4]), [tuple(a) for a in entry[4]]
                    assert admitted and chosen == admitted[0], (kind, entry)
                    bm, bn, warps, stages = chosen
                    assert bm % 16 == 0 and bn % 16 == 0 and warps in (4, 8) and stages >= 1


def test_chosen_config_looks_the_table_up():
    from tscl.kernels import config_table

    measured = sorted(config_table.MEASURED, key=lambda key: key[1] != tn._version_key())  # this Triton's first
    (arch, version), *_ = measured
    major, minor = int(arch[3:-1]), int(arch[-1])
    for kind in ("fwd", "fwd_loop", "dq", "dk"):
        entry = config_table.TABLE[(arch, version, "bfloat16", 128)][kind]
        want = dict(zip(("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"), entry[:4]))
        if version == tn._version_key():
            assert tn.chosen_config(kind, dtype=torch.bfloat16, d=128, arch=(major, minor)) == want
            assert tn.chosen_config(kind, dtype=torch.bfloat16, d=100, arch=(major, minor)) == want  # BLOCK_D 128
        # D below 64 uses D = 64's row, above 512 D = 512's; an unmeasured arch sm_90's; fp64 runs as fp32
        got = tn._table_entry(kind, torch.bfloat16, 16, (major, minor), version)
        assert got == config_table.TABLE[(arch, version, "bfloat16", 64)][kind]
        got = tn._table_entry(kind, torch.float32, 2048, (12, 0), version)
        assert got == config_table.TABLE[("sm_90", version, "float32", 512)][kind]
    assert tn._version_key((3, 6)) == "3.6" and tn._version_key((3, 8)) == tn._version_key((3, 9)) == "3.9"
    assert tn.chosen_config("dq", dtype=torch.float64, d=64, arch=(9, 0)) == \
        tn.chosen_config("dq", dtype=torch.float32, d=64, arch=(9, 0))
    assert set(tn.chosen_config("segsum", dtype=torch.bfloat16, d=64, arch=(9, 0))) == CONFIG_KEYS
    # under the interpreter, without an arch, the config a launch there runs
    assert tn.chosen_config("fwd", dtype=torch.bfloat16, d=128) == tn._INTERPRET_CONFIG
    with pytest.raises(ValueError, match="kind must be one of"):
        tn.chosen_config("bwd", dtype=torch.bfloat16, d=128)
    assert set(tn.KERNEL_KINDS) == {"fwd", "fwd_loop", "dq", "dk", "segsum"}


def test_one_config_per_kernel_whatever_the_sizes(monkeypatch):
    """Different N, M, banks, options and paths: still one config per (kind, dtype, BLOCK_D), and
    it is what ``chosen_config`` says."""
    tn.reset_launch_log()
    assert tn.launch_log() == {}
    _call(n=7, m=9)
    _call(n=40, m=23, symmetric=True)
    monkeypatch.setattr(tn, "POSITIVES", "separable")
    monkeypatch.setattr(tn, "FORCE_SPLIT", 3)
    _call(n=33, m=33, exclude_self=False, bank=torch.randn(50, 24), bank_ids=torch.randint(0, 6, (50,)))
    log = tn.launch_log()
    kinds = {key[0] for key in log}
    assert kinds == {"fwd", "fwd_loop", "dq", "dk", "segsum"}, kinds
    for (kind, dtype, block_d), configs in log.items():
        assert dtype == "float32" and block_d == 32
        assert len(configs) == 1, (kind, configs)
        cfg = tn.chosen_config(kind, dtype=torch.float32, d=block_d)
        assert configs == {tn._config_text(cfg)}
    log[("fwd", "float32", 32)].add("x")  # a copy: the caller cannot change the record
    assert tn.launch_log()[("fwd", "float32", 32)] != log[("fwd", "float32", 32)]


def test_autotuning_is_opt_in_and_prunes_to_the_admitted_configs():
    from tscl.kernels import config_table

    assert os.environ.get("TSCL_INFO_NCE_AUTOTUNE") == "1" or not tn.AUTOTUNE
    key = ("sm_90", tn._version_key(), "bfloat16", 128)
    if key not in config_table.TABLE:
        pytest.fail(f"no table row for this Triton ({key}): rerun benchmarks/aot_kernels.py --write-table")
    for kind in ("fwd", "fwd_loop", "dq", "dk"):
        admitted = [tuple(a) for a in config_table.TABLE[key][kind][4]]
        candidates = tn._candidates(kind)
        q = torch.empty(1, 128, dtype=torch.bfloat16, device="meta")
        kept = tn._prune(candidates, {"Q": q}, KIND=kind, BLOCK_D=128)
        got = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kept]
        assert got == [a for a in admitted if a in {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps,
                                                      c.num_stages) for c in candidates}]
        assert got, kind


def test_no_float_atomics_and_bitwise_reproducible(monkeypatch):
    """The partials of every split (forward, dq and dk) are merged by sums in a fixed order and the
    per-id sums by a sorted segment sum: nothing accumulates through atomics, so results repeat bit
    for bit, also with deterministic algorithms enforced (no op here refuses to run then)."""
    source = inspect.getsource(tn)
    assert "tl.atomic" not in source and "index_add" not in source and "index_put_(" not in source
    monkeypatch.setattr(tn, "POSITIVES", "separable")
    monkeypatch.setattr(tn, "FORCE_SPLIT", 3)
    bank = torch.randn(40, 24, generator=torch.Generator().manual_seed(9))
    kw = dict(n=30, m=30, dtype=torch.bfloat16, symmetric=True, bank=bank, bank_ids=torch.arange(40) % 6)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = _call(**kw), _call(**kw)
    finally:
        torch.use_deterministic_algorithms(before)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


class _HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.reads.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("path", ["loop", "separable"])
def test_no_host_reads_per_call_with_a_float_temperature(path, monkeypatch):
    """A float temperature is a kernel argument and ids stay tensors: forward and backward read no
    tensor back to the host (on CUDA each read is a sync)."""
    monkeypatch.setattr(tn, "POSITIVES", path)
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(20, 16, generator=gen).requires_grad_()
    k = torch.randn(20, 16, generator=gen).requires_grad_()
    ids = torch.arange(20) % 7
    bank, bank_ids = torch.randn(30, 16, generator=gen), torch.arange(30) % 5
    mode = _HostReads()
    with mode:
        loss = info_nce(q, k, ids, ids, temperature=0.1, symmetric=True, bank=bank, bank_ids=bank_ids,
                        backend="triton")
        loss.backward()
    assert mode.reads == [], mode.reads
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all()
