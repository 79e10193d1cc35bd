"""Encoders, methods and sources from outside the package, by name, in fresh processes and from the CLI.

A small package on PYTHONPATH (not installed, nothing registered in this process) provides an encoder, a
method and a source; a ``mypkg-0.1.dist-info/entry_points.txt`` beside it publishes them in the groups
``tscl.encoders``, ``tscl.methods`` and ``tscl.sources``. A run made with ``--encoder mypkg.enc:Tiny`` or
with the entry-point names records them in ``config.json`` and is rebuilt by a fresh process.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = {
    "mypkg/__init__.py": "",
    "mypkg/enc.py": '''
        from torch import nn

        from tscl.encoders import declare_encoder


        @declare_encoder("waveform", defaults={"hidden": 8})
        class Tiny(nn.Module):
            """Mean of one convolution: the smallest waveform encoder."""

            def __init__(self, in_channels, hidden=16):
                super().__init__()
                self.conv = nn.Conv1d(in_channels, hidden, 5)
                self.embed_dim = hidden

            def forward(self, x, channel_mask=None):
                return self.conv(x).mean(-1)
        ''',
    "mypkg/meth.py": '''
        from tscl.methods.simclr import SimCLR


        class Twin(SimCLR):
            """SimCLR under another name: a method defined outside tscl."""
        ''',
    "mypkg/src.py": '''
        from tscl.datasets import declare_source
        from tscl.datasets.waveform import _wfdb


        @declare_source("mine", "waveform", "a folder of WFDB records with metadata.csv", options={"keep": "rows"})
        def open_mine(root, *, cache=None, progress=True, keep=0):
            data = _wfdb(root, cache=cache, progress=progress)
            return data.subset(range(keep)) if keep else data
        ''',
    "mypkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n",
    "mypkg-0.1.dist-info/entry_points.txt": "[tscl.encoders]\ntiny = mypkg.enc:Tiny\n\n[tscl.methods]\ntwin = "
                                            "mypkg.meth:Twin\n\n[tscl.sources]\nmine = mypkg.src:open_mine\n",
}


DRIVER = """
import contextlib, io, json, sys
from tscl.cli import main

results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


def tscl(commands: list, cwd: Path, plugins: Path | None) -> list[dict]:
    """Each command line of ``commands`` through ``tscl.cli.main`` in one fresh process (PYTHONPATH = ``plugins``):
    ``[{"code", "stdout", "stderr"}]``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TSCL_CACHE"] = str(cwd / "cache")
    if plugins is not None:
        env["PYTHONPATH"] = str(plugins)
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


TINY = ["--method-kwargs", "batch_size=8", "--epochs", "1", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The plugin package, a simulated cohort, and the commands of both tests run in one fresh process."""
    from tscl.simulate import CohortConfig, write_cohort

    root = tmp_path_factory.mktemp("plugins")
    plugins = root / "site"
    for rel, text in PACKAGE.items():
        (plugins / rel).parent.mkdir(parents=True, exist_ok=True)
        (plugins / rel).write_text(textwrap.dedent(text).lstrip())
    work = root / "work"
    write_cohort(work / "cohort", CohortConfig(n_patients=12), progress=False)
    commands = {
        "module:Name": ["pretrain", "--data", "cohort", "--encoder", "mypkg.enc:Tiny", "--method", "simclr", *TINY,
                        "--out", "run1"],
        "no such name": ["pretrain", "--data", "cohort", "--encoder", "mypkg.enc:Nope", *TINY, "--out", "bad"],
        "not a method": ["pretrain", "--data", "cohort", "--method", "mypkg.enc:Tiny", "--encoder", "cnn1d", *TINY,
                         "--out", "bad"],
        "not a source": ["pretrain", "--dataset", "mypkg.enc:Tiny", "--root", "cohort", *TINY, "--out", "bad"],
        "datasets": ["datasets"],
        "entry points": ["pretrain", "--dataset", "mine", "--root", "cohort", "--encoder", "tiny", "--method", "twin",
                         *TINY, "--out", "run2"],
        "bad option": ["pretrain", "--dataset", "mine", "--root", "cohort", "--dataset-kwargs", "kep=3", "--encoder",
                       "tiny", *TINY, "--out", "bad"],
    }
    results = dict(zip(commands, tscl(list(commands.values()), work, plugins)))
    return work, plugins, results


def test_module_colon_name_encoder_from_the_cli_and_a_fresh_process(world):
    work, plugins, results = world
    assert results["module:Name"]["code"] == 0, results["module:Name"]["stderr"][-2000:]
    cfg = json.loads((work / "run1" / "config.json").read_text())
    assert cfg["encoder"] == "mypkg.enc:Tiny" and cfg["encoder_kwargs"] == {"hidden": 8}  # its declared defaults
    bad = results["no such name"]
    assert bad["code"] == 2 and "has no 'Nope'" in bad["stderr"] and not (work / "bad").exists()
    # without the package on the path the run cannot be rebuilt: one line, exit 2, naming the module
    (gone,) = tscl([["embed", "--run", "run1", "--out", "x.npz", "--quiet"]], work, None)
    assert gone["code"] == 2 and "no module 'mypkg'" in gone["stderr"] and "Traceback" not in gone["stderr"]


def test_entry_points_name_an_encoder_a_method_and_a_source(world):
    work, plugins, results = world
    assert "mine (waveform;" in results["datasets"]["stdout"] and "--dataset-kwargs keep=..." in results["datasets"]["stdout"]
    assert results["entry points"]["code"] == 0, results["entry points"]["stderr"][-2000:]
    cfg = json.loads((work / "run2" / "config.json").read_text())
    assert (cfg["encoder"], cfg["method"], cfg["dataset"]["dataset"]) == ("tiny", "twin", "mine")
    assert results["bad option"]["code"] == 2 and "takes no option 'kep'" in results["bad option"]["stderr"]
    # a fresh process rebuilds both runs by the names their configs record: the run's data source, its encoder
    (embedded, loaded) = tscl([["embed", "--run", "run2", "--out", "run2.parquet", "--quiet"],
                               ["embed", "--run", "run1", "--out", "run1.npz", "--quiet"]], work, plugins)
    assert embedded["code"] == loaded["code"] == 0, embedded["stderr"] + loaded["stderr"]
    from tscl.embeddings import load_embeddings

    assert load_embeddings(work / "run2.parquet").features.shape == (len(load_embeddings(work / "run1.npz").record_id), 8)


def test_a_method_or_source_of_the_wrong_kind_is_refused(world):
    _, _, results = world
    assert results["not a method"]["code"] == 2 and "is not a tscl Method subclass" in results["not a method"]["stderr"]
    assert results["not a source"]["code"] == 2 and "is not a tscl source" in results["not a source"]["stderr"]
