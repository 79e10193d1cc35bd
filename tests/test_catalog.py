"""Registration in one place (tscl.catalog): every built-in source, encoder and method is named there, resolves to
what it says, and nothing registers itself as a side effect of being imported."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tscl import catalog

ROOT = Path(__file__).resolve().parents[1]


def test_every_declared_source_is_in_the_catalog_under_its_own_name():
    """A module under tscl/datasets that declares a source with @declare_source (or registers one) must be named in
    the catalog: nothing imports it otherwise."""
    declared = {}
    for path in (ROOT / "tscl" / "datasets").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                for dec in node.decorator_list:
                    if isinstance(dec, ast.Call) and getattr(dec.func, "id", "") in ("declare_source", "register_source"):
                        declared[dec.args[0].value] = f"tscl.datasets.{path.stem}:{node.name}"
    assert len(declared) >= 10
    assert declared == catalog.BUILTIN["sources"]


@pytest.mark.parametrize("kind", ["sources", "encoders", "methods"])
def test_every_builtin_name_resolves(kind):
    from tscl.datasets import get_source
    from tscl.encoders import get_encoder
    from tscl.methods import get_method

    get = {"sources": get_source, "encoders": get_encoder, "methods": get_method}[kind]
    for name in catalog.builtin_names(kind):
        obj = get(name)
        assert obj is not None
        if kind == "sources":
            assert obj.name == name and obj.modality in ("waveform", "ehr", "image")


def test_unknown_and_malformed_names_are_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"unknown encoder 'resnet9'.*resnet1d.*module:Name"):
        catalog.load("encoders", "resnet9")
    with pytest.raises(ValueError, match=r"did you mean 'ptbxl'"):
        catalog.load("sources", "ptbx")
    for bad in ("mod:", ":Name", "a b:C", "x.:y"):
        with pytest.raises(ValueError, match="expected module:Name"):
            catalog.load("methods", bad)
    with pytest.raises(ValueError, match="no module 'no_such_module_xyz'"):
        catalog.load("encoders", "no_such_module_xyz.enc:E")
    with pytest.raises(ValueError, match="has no 'Nope'"):
        catalog.load("methods", "tscl.methods.simclr:Nope")


def test_default_encoders_per_modality_are_encoders_of_that_modality():
    from tscl.encoders import encoder_modality

    for modality, name in catalog.DEFAULT_ENCODER.items():
        assert name in catalog.BUILTIN["encoders"] and encoder_modality(name) == modality
    with pytest.raises(ValueError, match="no default encoder for 'audio'"):
        catalog.default_encoder("audio")


def test_importing_modules_registers_nothing():
    """Importing the source and encoder modules leaves the in-process registries empty: the catalog is the only list,
    and the image augmentations are in the one op table without importing the image datasets."""
    code = ("import tscl.datasets.waveform, tscl.datasets.images, tscl.encoders.resnet1d\n"
            "from tscl.datasets import SOURCES\nfrom tscl.encoders import ENCODERS\n"
            "import sys\nprint(len(SOURCES), len(ENCODERS))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0", "0"]
    code = "from tscl.augment import build_augment\nprint(build_augment('rrc,flip', modality='image').modality)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT.parent)
    assert proc.stdout.strip() == "image", proc.stderr[-2000:]
