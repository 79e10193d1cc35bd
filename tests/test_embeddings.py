"""The embeddings file (tscl.embeddings): .npz and .parquet written under exactly the name asked for, read back
equal, readable by polars and pandas, and every damaged file refused in one line naming it."""
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tscl.embeddings import Embeddings, load_embeddings, save_embeddings
from tscl.grammar import UsageError

IDS = st.from_regex(r"[A-Za-z0-9_./-]{1,12}", fullmatch=True)


@st.composite
def embeddings(draw):
    n = draw(st.integers(1, 12))
    d = draw(st.integers(1, 9))
    feats = draw(arrays(np.float32, (n, d), elements=st.floats(-1e6, 1e6, width=32)))
    records = draw(st.lists(IDS, min_size=n, max_size=n, unique=True))
    patients = draw(st.lists(st.sampled_from(["p1", "p2", "p 3", "ü4"]), min_size=n, max_size=n))
    seen = draw(st.lists(st.sampled_from(["p1", "p2", "p 3", "ü4", "other"]), unique=True))
    return Embeddings(feats, records, patients, run=draw(st.sampled_from(["", "/runs/x"])), pretrained_patients=seen)


@settings(max_examples=40, deadline=None)
@given(emb=embeddings(), suffix=st.sampled_from([".npz", ".parquet"]))
def test_round_trip_under_exactly_the_name_given(tmp_path_factory, emb, suffix):
    folder = tmp_path_factory.mktemp("emb")
    path = folder / f"x{suffix}"
    assert save_embeddings(path, emb) == path
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # no "x.parquet.npz"
    back = load_embeddings(path)
    np.testing.assert_array_equal(back.features, emb.features)
    assert back.record_id == emb.record_id and back.patient_id == emb.patient_id and back.run == emb.run
    present = set(emb.patient_id)
    want = sorted(emb.pretrained_patients) if suffix == ".npz" else sorted(set(emb.pretrained_patients) & present)
    assert sorted(back.pretrained_patients) == want  # parquet keeps the flag of each row's own patient
    assert back.name == "x"


def test_parquet_is_a_plain_table_for_polars_and_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    emb = Embeddings(np.arange(6, dtype=np.float32).reshape(3, 2), ["a", "b", "c"], ["p", "p", "q"],
                     pretrained_patients=["q"])
    save_embeddings(tmp_path / "e.parquet", emb)
    df = pl.read_parquet(tmp_path / "e.parquet")
    assert df.columns == ["record_id", "patient_id", "run", "pretrained", "feature_0", "feature_1"]
    assert df["pretrained"].to_list() == [False, False, True]
    try:
        frame = pd.read_parquet(tmp_path / "e.parquet")
    except ImportError:  # pandas without a parquet engine (pyarrow / fastparquet)
        return
    assert frame["feature_1"].tolist() == [1.0, 3.0, 5.0]


def _damaged(tmp_path, kind: str):
    good = Embeddings(np.ones((3, 2), np.float32), ["a", "b", "c"], ["p", "q", "r"])
    if kind == "cut npz":
        save_embeddings(tmp_path / "e.npz", good)
        data = (tmp_path / "e.npz").read_bytes()
        (tmp_path / "e.npz").write_bytes(data[: len(data) // 2])
        return tmp_path / "e.npz"
    if kind == "npz without features":
        np.savez(tmp_path / "e.npz", record_id=np.array(["a"]))
        return tmp_path / "e.npz"
    if kind == "text as npz":
        (tmp_path / "e.npz").write_text("features,record_id\n")
        return tmp_path / "e.npz"
    if kind == "nan features":
        save_embeddings(tmp_path / "e.parquet", Embeddings(np.array([[1, np.nan], [0, 0]], np.float32), ["a", "b"],
                                                           ["p", "q"]))
        return tmp_path / "e.parquet"
    if kind == "parquet without features":
        pl.DataFrame({"record_id": ["a"], "patient_id": ["p"]}).write_parquet(tmp_path / "e.parquet")
        return tmp_path / "e.parquet"
    if kind == "cut parquet":
        save_embeddings(tmp_path / "e.parquet", good)
        data = (tmp_path / "e.parquet").read_bytes()
        (tmp_path / "e.parquet").write_bytes(data[:40])
        return tmp_path / "e.parquet"
    if kind == "ragged npz":
        np.savez(tmp_path / "e.npz", features=np.ones((3, 2)), record_id=np.array(["a", "b"]))
        return tmp_path / "e.npz"
    return tmp_path / "missing.npz"


@pytest.mark.parametrize("kind, message", [
    ("cut npz", "not a readable .npz"), ("npz without features", "no 'features' array"),
    ("text as npz", "not a readable .npz"), ("nan features", "rows hold NaN or inf"),
    ("parquet without features", "no 'feature_0' column"), ("cut parquet", "not a readable .parquet"),
    ("ragged npz", "must be [N, D]"), ("missing", "embeddings file not found"),
])
def test_damaged_files_are_one_line_refusals_naming_the_file(tmp_path, kind, message):
    path = _damaged(tmp_path, kind)
    with pytest.raises(UsageError) as err:
        load_embeddings(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_an_unknown_suffix_is_refused(tmp_path):
    emb = Embeddings(np.ones((1, 1), np.float32), ["a"], ["p"])
    for name in ("x.csv", "x", "x.npz.tmp"):
        with pytest.raises(UsageError, match=r"\.npz or \.parquet"):
            save_embeddings(tmp_path / name, emb)
    assert not any(tmp_path.iterdir())
