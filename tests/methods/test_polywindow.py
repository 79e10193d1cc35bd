"""Poly-window (tscl/methods/polywindow.py): K overlapping windows of a record share its id."""
import numpy as np
import polars as pl
import torch

from tscl.methods import build_method
from tscl.methods.polywindow import cut_windows

from .conftest import C, N, T, enc, ids_of, make_batch


def test_polywindow_windows_overlap_and_share_the_record_id(spy):
    x, batch = make_batch()
    m = build_method("polywindow", enc(), proj_dim=16, n_windows=3, window_len=200, stride=50)
    assert m.geometry(T) == (200, 50)
    w = cut_windows(x, 3, 200, 50, torch.Generator().manual_seed(1))  # [N, K, C, L]
    for i in range(N):
        start = int(np.flatnonzero([torch.equal(w[i, 0], x[i, :, o : o + 200]) for o in range(T - 299)])[0])
        for k in range(3):
            assert torch.equal(w[i, k], x[i, :, start + 50 * k : start + 50 * k + 200])
        assert torch.equal(w[i, 0, :, 50:], w[i, 1, :, :150])  # overlap = L - stride = 150
    m(x, batch)
    (call,) = spy.calls
    qi, ki = ids_of(call)
    assert torch.equal(qi, batch["record_ids"].repeat_interleave(3)) and call["kw"]["exclude_self"] is True
    m2 = build_method("polywindow", enc(), proj_dim=16, n_windows=3, window_len=200, stride=50, objective="mean")
    m2(x, batch)
    q, k = spy.calls[1]["args"][:2]
    qi, ki = ids_of(spy.calls[1])
    assert q.shape == (3 * N, 16) and k.shape == (N, 16) and torch.equal(ki, batch["record_ids"])
    torch.testing.assert_close(k, torch.nn.functional.normalize(q, dim=1).reshape(N, 3, 16).mean(1))


def test_polywindow_augments_each_window_without_cropping_it():
    """Default: nuisance ops drawn per window (no crop: the windows are the crops);
    augment="none" hands the encoder the raw windows."""
    x, batch = make_batch()
    seen = []

    def run(augment):
        m = build_method("polywindow", enc(), proj_dim=16, n_windows=3, window_len=200, stride=50,
                         **({} if augment is None else {"augment": augment}))
        m.make_sampler(pl.DataFrame({"fs": [100.0] * N}), seed=0)
        m.encoder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
        m(x, batch)
        return seen[-1]

    raw = run("none")
    windows = cut_windows(x, 3, 200, 50, torch.Generator().manual_seed(0)).reshape(3 * N, C, 200)
    assert torch.equal(raw, windows)
    aug = run(None)
    assert [name for name, _ in build_method("polywindow", enc()).augment.ops] == ["scale", "noise", "wander", "dropout"]
    assert aug.shape == raw.shape and not torch.allclose(aug, raw)
    # independent draws per window: two windows of one record that overlap are changed differently
    overlap_raw = raw[0, :, 50:], raw[1, :, :150]
    assert torch.equal(*overlap_raw)
    assert not torch.allclose(aug[0, :, 50:], aug[1, :, :150])
