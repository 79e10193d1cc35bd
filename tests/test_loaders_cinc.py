"""CinC 2020/2021 reader on the shared challenge-2021 sample."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb

from tscl.loaders import LoaderError, load_cinc, read_cinc, read_cinc_header
from tscl.loaders.cinc import CINC_LEADS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CINC = DATA / "physionet" / "challenge-2021"

pytestmark = pytest.mark.skipif(not CINC.exists(), reason=f"shared CinC-2021 sample not found at {CINC}")


def test_header_comments_parsed():
    meta = read_cinc_header(CINC / "JS20003.hea")
    assert meta == {"age": 82.0, "sex": "F", "database": "JS",
                    "dx": ("284470004", "427084000", "55827005", "164934002", "427172004")}
    assert read_cinc_header(CINC / "HR06002")["dx"] == ("426177001", "426783006", "713426002")


def test_record_shape_units_and_values():
    rec = read_cinc(CINC / "HR06000")  # header units are lower-case 'mv'
    assert rec.signal.shape == (12, 5000) and rec.fs == 500.0
    assert rec.channels == CINC_LEADS and rec.units == ("mV",) * 12
    ref = wfdb.rdrecord(str(CINC / "HR06000")).p_signal.T
    np.testing.assert_allclose(rec.signal, ref, rtol=1e-6, atol=1e-6)
    assert rec.labels["dx"] == "164934002,426783006" and rec.labels["sex"] == "F" and rec.labels["age"] == 59.0


def test_load_cohort(tmp_path):
    cache = load_cinc(CINC, cache_dir=tmp_path, progress=False)
    assert len(cache) == 15 and cache.stack().shape == (15, 12, 5000)
    idx = cache.index
    assert set(idx["fs"]) == {500.0}
    assert idx["channels"][0] == "I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6"
    assert dict(idx.group_by("database").len().iter_rows()) == {"E": 5, "HR": 5, "JS": 5}
    assert (idx["patient_id"] == idx["record_id"]).all()
    row = idx.filter(idx["record_id"] == "E07501").row(0, named=True)
    assert row["dx_253352002"] == 1 and row["dx_427084000"] == 1 and row["dx_426783006"] == 0
    assert idx["dx_426783006"].sum() == 5  # sinus rhythm in the 5 HR (PTB-XL) records
    assert "dx_67741000119109" in cache.label_columns


def test_units_normalised_whatever_the_header_says(tmp_path):
    for name in ("E07500", "HR06000"):
        shutil.copy(CINC / f"{name}.mat", tmp_path)
    shutil.copy(CINC / "HR06000.hea", tmp_path)
    text = (CINC / "E07500.hea").read_text().replace("/mV", "/uV").replace("(0)/uV", "(0)/uV")
    (tmp_path / "E07500.hea").write_text(text)
    in_uv = read_cinc(tmp_path / "E07500")
    in_mv = read_cinc(CINC / "E07500")
    assert in_uv.units == ("mV",) * 12
    np.testing.assert_allclose(in_uv.signal, in_mv.signal / 1000, rtol=1e-6)
    # upper-case lead names are normalised too
    (tmp_path / "HR06000.hea").write_text((CINC / "HR06000.hea").read_text().replace(" aVR", " AVR"))
    assert read_cinc(tmp_path / "HR06000").channels == CINC_LEADS


def test_bad_headers_are_named(tmp_path):
    shutil.copy(CINC / "E07502.mat", tmp_path)
    text = (CINC / "E07502.hea").read_text()
    (tmp_path / "E07502.hea").write_text(text.replace("# Dx: 427084000", "# Dx: sinus"))
    with pytest.raises(LoaderError, match=r"E07502\.hea.*SNOMED"):
        read_cinc(tmp_path / "E07502")
    (tmp_path / "E07502.hea").write_text("\n".join(ln for ln in text.splitlines() if "Dx" not in ln))
    with pytest.raises(LoaderError, match=r"E07502\.hea.*no '# Dx:'"):
        load_cinc(tmp_path, cache_dir=tmp_path / "c", progress=False)
    shutil.copy(CINC / "E07503.mat", tmp_path)
    shutil.copy(CINC / "E07503.hea", tmp_path)
    cache = load_cinc(tmp_path, cache_dir=tmp_path / "c", progress=False, on_error="skip")
    assert cache.index["record_id"].to_list() == ["E07503"]
    assert Path(cache.report["skipped"][0]["path"]).name == "E07502.hea"


def test_resample_and_lead_harmonisation(tmp_path):
    from scipy.signal import resample_poly

    for name in ("E07500", "HR06000"):
        shutil.copy(CINC / f"{name}.mat", tmp_path)
        shutil.copy(CINC / f"{name}.hea", tmp_path)
    # HR06000 loses lead V3 (11 signal lines)
    lines = (tmp_path / "HR06000.hea").read_text().splitlines()
    head = lines[0].replace("HR06000 12 ", "HR06000 11 ")
    kept = [ln for ln in lines[1:] if not ln.endswith(" V3")]
    (tmp_path / "HR06000.hea").write_text("\n".join([head, *kept]) + "\n")
    with pytest.raises(LoaderError, match=r"HR06000\.hea"):  # the .mat still holds 12 signals
        load_cinc(tmp_path, tmp_path / "c0", progress=False)
    (tmp_path / "HR06000.mat").write_bytes(_drop_signal((CINC / "HR06000.mat").read_bytes(), 12, 8))
    with pytest.raises(LoaderError, match=r"HR06000\.hea.*missing channel.*V3"):
        load_cinc(tmp_path, tmp_path / "c1", progress=False)
    cache = load_cinc(tmp_path, tmp_path / "c2", progress=False, leads=CINC_LEADS, fs=100)
    assert cache.stack().shape == (2, 12, 1000) and set(cache.index["fs"]) == {100.0}
    mask = cache.channel_mask()
    assert mask[0].all() and mask[1].tolist() == [c != "V3" for c in CINC_LEADS]
    assert cache.index["missing_channels"].to_list() == ["", "V3"]
    assert np.all(cache[1][8] == 0)
    expected = resample_poly(read_cinc(CINC / "E07500").signal, 1, 5, axis=1)
    np.testing.assert_allclose(cache[0], expected, rtol=1e-4, atol=1e-5)
    full = resample_poly(read_cinc(CINC / "HR06000").signal, 1, 5, axis=1)
    keep = [i for i, c in enumerate(CINC_LEADS) if c != "V3"]
    np.testing.assert_allclose(cache[1][keep], full[keep], rtol=1e-4, atol=1e-5)


def _drop_signal(mat: bytes, n_sig: int, drop: int) -> bytes:
    """A CinC .mat (24-byte header, then int16 frames of ``n_sig`` samples) without signal ``drop``."""
    data = np.frombuffer(mat[24:], dtype="<i2").reshape(-1, n_sig)
    return mat[:24] + np.delete(data, drop, axis=1).astype("<i2").tobytes()
