"""WebDataset shards: export a dataset once, then pretrain from the shards wherever they live.

``tscl export --format webdataset --dataset NAME --root PATH --out DIR`` (:func:`export_webdataset`)
writes, through the ``webdataset`` library's ``TarWriter``::

    DIR/shard-000000.tar ...   one sample per item: <key>.npy (the payload as fetched, float32 [C, T])
                               and <key>.json (its index row: patient_id, record_id, split, fs, channels, ...)
    DIR/index.parquet          the index, plus ``shard`` and ``key`` for every item
    DIR/manifest.json          format, the source's info (channels, fs, normalize), its fingerprint, the shards

Written last, the manifest marks a finished export. Rows are grouped by split, then by patient
in a seeded random patient order: **a patient's recordings are never split across shards** (a
shard holds at most ``shard_bytes``, except a shard of one patient larger than that), and no
shard mixes splits, so ``--split train`` reads no test item.

``tscl pretrain --dataset webdataset --root DIR-or-URL`` (:class:`StreamDataset`) reads the
index and the manifest (local files or any URL ``webdataset.gopen`` opens: http(s), pipe:) and
streams shards through ``webdataset.WebDataset``, one whole shard at a time. How batches are
formed (:class:`ShardPlan`):

- Each epoch the shards are shuffled with a generator seeded by (seed, epoch) and dealt
  round-robin to ``readers`` lanes (default: the number of ranks W; a multiple of it). Rank r
  reads the k = readers / W lanes r·k ... r·k + k - 1, so **ranks read disjoint shards**, and each
  lane reads its shards in order.
- Within a shard, the method's own sampler (its type and settings: PCLR's patient pairs, SimCLR's
  record batches, PMQ's trial shuffle) plans the batches over that shard's rows alone, seeded by
  (seed, shard). Because a patient's rows share a shard, PCLR's same-patient pairs hold exactly as
  with the whole index; what changes is who meets whom as a negative: only patients of the same
  shard share a lane's batch.
- A step's batch on a rank is its lanes' next batches concatenated; the global batch (gathered
  across ranks) is every lane's batch, lane order = rank order. Every lane yields the same number
  of steps per epoch: the sum of the smallest ``floor(shards / readers)`` shards' batch counts,
  a bound no dealing can fall under, so all ranks stay in step; a lane's batches past it are
  left out of that epoch (near-equal shards lose little, and other epochs deal them differently).

The plan is a pure function of (index, seed, epoch, readers), so a resumed run skips to its
step and gets the batches the uninterrupted run got, and one process with ``readers=2`` gets
the global batches that two ranks with one lane each get together. Only tensor payloads
(``waveform``) are exported.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tscl.progress import progress_bar

from . import Dataset, declare_source
from . import _is_url as is_url

__all__ = ["export_webdataset", "StreamDataset", "ShardPlan", "open_stream", "FORMAT", "parse_size"]

FORMAT = "tscl-webdataset/1"
MANIFEST, INDEX = "manifest.json", "index.parquet"
DEFAULT_SHARD_BYTES = 256 * 2**20
_TAR_BLOCK = 512


def parse_size(text) -> int:
    """``"256MB"``, ``"1GB"``, ``"64k"`` or a number of bytes -> bytes (> 0)."""
    units = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}
    s = str(text).strip().lower()
    number = s.rstrip("kmgb")
    try:
        value = float(number) * units[s[len(number):]]
    except (ValueError, KeyError):
        raise ValueError(f"shard size {text!r}: give bytes or a number with KB, MB or GB (e.g. 256MB)") from None
    if not np.isfinite(value) or value < 1:
        raise ValueError(f"shard size {text!r} must be at least one byte")
    return int(value)


# ---- export ------------------------------------------------------------------------------------------

def _padded(n: int) -> int:
    return -(-n // _TAR_BLOCK) * _TAR_BLOCK


def _export_order(index: pl.DataFrame, seed: int) -> np.ndarray:
    """Rows grouped by split, then by patient in a seeded random order, a patient's rows in index order."""
    patients = index["patient_id"].cast(pl.Utf8).unique(maintain_order=True)
    rank = pl.DataFrame({"patient_id": patients,
                         "_rank": np.random.default_rng(seed).permutation(len(patients)).astype(np.int64)})
    split = index["split"] if "split" in index.columns else pl.Series("split", ["all"] * index.height)
    table = pl.DataFrame({"patient_id": index["patient_id"].cast(pl.Utf8), "split": split.cast(pl.Utf8),
                          "_row": np.arange(index.height)}).join(rank, on="patient_id", how="left")
    return table.sort(["split", "_rank", "_row"])["_row"].to_numpy()


def _shard_of(index: pl.DataFrame, order: np.ndarray, item_bytes: int, shard_bytes: int) -> np.ndarray:
    """Shard number of each row of ``order``: patients are added to the current shard while it stays within
    ``shard_bytes``; a patient that would overflow it (or a new split) starts the next one."""
    pid = index["patient_id"].cast(pl.Utf8).to_numpy()[order]
    split = (index["split"].cast(pl.Utf8).to_numpy()[order] if "split" in index.columns
             else np.zeros(len(order), dtype=object))
    starts = np.flatnonzero(np.r_[True, (pid[1:] != pid[:-1]) | (split[1:] != split[:-1])])
    split_change = np.r_[True, split[starts[1:]] != split[starts[:-1]]]
    sizes = np.diff(np.r_[starts, len(order)]) * item_bytes
    shard_of_group = np.empty(len(starts), dtype=np.int64)
    shard, held = -1, 0
    for g, size in enumerate(sizes):
        if split_change[g] or (held and held + size > shard_bytes):
            shard, held = shard + 1, 0
        shard_of_group[g] = shard
        held += size
    return np.repeat(shard_of_group, np.diff(np.r_[starts, len(order)]))


def _row_json(row: dict) -> bytes:
    return json.dumps(row, default=str).encode()


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes what passes through (the shard's sha256 without reading it back)."""

    def __init__(self, path: Path):
        self.f, self.sha, self.size = open(path, "wb"), hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()
        super().close()


def _write_shard(dataset: Dataset, path: Path, order: np.ndarray, lo: int, hi: int, batch: int, bar) -> dict:
    """Items ``order[lo:hi]`` (keys ``lo .. hi - 1``) as one tar, written under a temporary name and renamed."""
    import webdataset as wds

    sink = _HashingFile(path.with_name(path.name + ".tmp"))
    with wds.TarWriter(sink) as writer:
        for start in range(lo, hi, batch):
            rows = order[start:min(start + batch, hi)]
            x = dataset.fetch(rows).numpy()
            metas = dataset.index[rows.tolist()].iter_rows(named=True)
            for k, meta in enumerate(metas):
                writer.write({"__key__": f"{start + k:09d}", "npy": np.ascontiguousarray(x[k]), "json": _row_json(meta)})
            bar.update(len(rows))
    sink.close()
    path.with_name(path.name + ".tmp").rename(path)
    return {"name": path.name, "items": int(hi - lo), "bytes": sink.size, "sha256": sink.sha.hexdigest()}


def export_webdataset(dataset: Dataset, out, *, shard_bytes: int = DEFAULT_SHARD_BYTES, seed: int = 0,
                      batch: int = 256, progress: bool = True) -> dict:
    """Write ``dataset`` (every row, payloads as ``fetch`` returns them) as WebDataset shards in ``out``;
    returns the manifest. Refuses a folder that already holds an export or other files."""
    if dataset.modality != "waveform":
        raise ValueError(f"export writes tensor payloads (waveform); this dataset is {dataset.modality} data")
    if not len(dataset):
        raise ValueError("the dataset has no rows to export")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out}: folder exists and is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    index = dataset.index
    first = dataset.fetch(np.array([0])).numpy()[0]
    json_bytes = max(len(_row_json(r)) for r in index.head(64).iter_rows(named=True))
    item_bytes = 2 * _TAR_BLOCK + _padded(128 + first.nbytes) + _padded(2 * json_bytes)
    order = _export_order(index, seed)
    shard = _shard_of(index, order, item_bytes, shard_bytes)
    n_shards = int(shard[-1]) + 1
    bar = progress_bar(total=len(order), desc=f"export {out.name}", disable=not progress, unit="item")
    bounds = np.r_[0, np.flatnonzero(np.diff(shard)) + 1, len(order)]
    shards = [_write_shard(dataset, out / f"shard-{s:06d}.tar", order, bounds[s], bounds[s + 1], batch, bar)
              for s in range(n_shards)]
    bar.close()
    table = index[order.tolist()].with_columns(pl.Series("shard", shard.astype(np.int32)),
                                               pl.Series("key", np.arange(len(order), dtype=np.int64)))
    table.write_parquet(out / INDEX)
    content = hashlib.sha256(json.dumps([dataset.fingerprint, [s["sha256"] for s in shards]]).encode()).hexdigest()
    manifest = {"format": FORMAT, "modality": dataset.modality, "info": dataset.info, "source": dataset.source,
                "source_fingerprint": dataset.fingerprint, "fingerprint": content, "items": len(order),
                "shape": list(first.shape), "dtype": str(first.dtype), "shard_bytes": int(shard_bytes), "seed": seed,
                "grouping": "split, then patient: a patient's rows share one shard", "shards": shards}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    return manifest


# ---- streaming ---------------------------------------------------------------------------------------

def _read(root: str, name: str) -> bytes:
    if is_url(root):
        from webdataset import gopen

        with gopen(f"{root.rstrip('/')}/{name}") as f:
            return f.read()
    path = Path(root) / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; is {root} a folder written by tscl export --format webdataset?")
    return path.read_bytes()


def _restrict(sampler, rows: np.ndarray, seed: int):
    """The method's sampler, same type and settings, over ``rows`` of the index only (one shard's)."""
    names = {f.name for f in fields(sampler)} if hasattr(sampler, "__dataclass_fields__") else set()
    if "patient_ids" in names:
        return replace(sampler, patient_ids=np.asarray(sampler.patient_ids)[rows], seed=seed, epoch=0)
    if "n_records" in names:
        return replace(sampler, n_records=len(rows), seed=seed, epoch=0)
    raise ValueError(f"streamed shards cannot be planned with {type(sampler).__name__}: a sampler over "
                     "patient_ids or n_records is needed")


def _shard_sampler(sampler, rows: np.ndarray, seed: int):
    """``_restrict`` for one shard, or None when the shard cannot form a batch (e.g. fewer than two patients
    with a pair). Its warnings about left-out patients were given once for the whole index."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _restrict(sampler, rows, seed)
        except ValueError as err:
            if "cannot build a batch" in str(err):
                return None
            raise


@dataclass
class ShardPlan:
    """Batches of streamed shards (see the module docstring): shards dealt to ``readers`` lanes per epoch,
    each shard's batches planned by the method's ``sampler`` restricted to its rows.

    ``shard [N]`` is each index row's shard. Iterating yields this rank's rows of each step."""

    sampler: object
    shard: np.ndarray
    readers: int
    seed: int = 0
    epoch: int = 0
    rank: int = 0
    world_size: int = 1
    _per_shard: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if self.readers < 1:
            raise ValueError(f"readers must be >= 1, got {self.readers}")
        shard = np.asarray(self.shard)
        order = np.argsort(shard, kind="stable")
        ids, starts = np.unique(shard[order], return_index=True)
        for s, rows in zip(ids.tolist(), np.split(order, starts[1:])):
            sub = _shard_sampler(self.sampler, rows, int(np.random.SeedSequence((self.seed, s)).generate_state(1)[0]))
            if sub is not None and len(sub):
                self._per_shard[s] = (rows, sub)
        counts = sorted(len(sub) for _, sub in self._per_shard.values())
        per_lane = len(counts) // self.readers
        self.steps = int(sum(counts[:per_lane]))
        if not self.steps:
            raise ValueError(f"{len(counts)} shard(s) can form a batch for {self.readers} reader(s): every reader "
                             "needs at least one; export with a smaller --shard-size or use fewer readers")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def lanes(self) -> list[list[int]]:
        """This epoch's shards of each lane, in reading order."""
        order = np.random.default_rng((self.seed, self.epoch)).permutation(sorted(self._per_shard))
        return [order[k::self.readers].tolist() for k in range(self.readers)]

    def _lane(self, shards):
        for s in shards:
            rows, sub = self._per_shard[s]
            sub.set_epoch(self.epoch)
            for local in sub:
                yield rows[np.asarray(local, dtype=np.int64)]

    def __iter__(self):
        if self.readers % self.world_size:
            raise ValueError(f"readers={self.readers} must be a multiple of the {self.world_size} ranks")
        lanes, k = self.lanes(), self.readers // self.world_size
        mine = [self._lane(lanes[j]) for j in range(self.rank * k, (self.rank + 1) * k)]  # lane order = rank order
        for _ in range(self.steps):
            yield np.concatenate([next(lane) for lane in mine]).tolist()


class StreamDataset(Dataset):
    """Items of a WebDataset export (:func:`export_webdataset`), read shard by shard through ``webdataset``.

    ``fetch(rows)`` loads the shards holding ``rows`` (whole, decoded) and keeps the last
    ``2 x lanes per rank`` of them, so memory is a few shards whatever the dataset's size; the
    trainer asks :meth:`batch_plan` for batches that read shards in order."""

    modality = "waveform"

    def __init__(self, root: str, manifest: dict, index: pl.DataFrame, shard: np.ndarray, key: np.ndarray,
                 readers: int | None = None, source: dict | None = None):
        super().__init__(index, source=source)
        self.root, self.manifest, self.readers = str(root), manifest, readers
        self._shard, self._key = np.asarray(shard), np.asarray(key)
        self._loaded: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.shards_read = 0  # shard loads so far (a test counts them)

    @property
    def in_channels(self) -> int:
        return int(self.manifest["info"]["in_channels"])

    @property
    def info(self) -> dict:
        return dict(self.manifest["info"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def shard_url(self, s: int) -> str:
        name = self.manifest["shards"][s]["name"]
        return f"{self.root.rstrip('/')}/{name}" if is_url(self.root) else str(Path(self.root) / name)

    def _reader_count(self) -> int:
        from tscl import distributed

        return self.readers or distributed.world_size()

    def _load(self, s: int) -> dict:
        import webdataset as wds

        with self._lock:
            if s in self._loaded:
                self._loaded.move_to_end(s)
                return self._loaded[s]
        items = {}
        stream = wds.WebDataset(self.shard_url(s), shardshuffle=False, nodesplitter=None, workersplitter=None,
                                empty_check=False)
        try:
            for sample in stream:
                items[int(sample["__key__"])] = np.load(io.BytesIO(sample["npy"]), allow_pickle=False)
        except (OSError, ValueError, KeyError, tarfile.TarError) as err:
            raise ValueError(f"{self.shard_url(s)}: cannot read the shard ({type(err).__name__}: {err})") from None
        from tscl import distributed

        keep = 2 * max(1, -(-self._reader_count() // distributed.world_size()))
        with self._lock:
            self._loaded[s] = items
            self.shards_read += 1
            while len(self._loaded) > keep:
                self._loaded.popitem(last=False)
        return items

    def fetch(self, rows) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        shape = self.manifest["shape"]
        out = np.empty((len(rows), *shape), dtype=np.float32)
        shard, key = self._shard[rows], self._key[rows]
        for s in np.unique(shard).tolist():
            items = self._load(s)
            for i in np.flatnonzero(shard == s).tolist():
                out[i] = self._item(items, s, int(key[i]), shape)
        return torch.from_numpy(out)

    def _item(self, items: dict, s: int, key: int, shape) -> np.ndarray:
        """Item ``key`` of shard ``s``, exactly of the export's shape (never broadcast from another shape; any
        number type is read as float32)."""
        if key not in items:
            raise ValueError(f"{self.shard_url(s)}: item {key} listed in {INDEX} is missing from the shard (a partial "
                             "or altered export)")
        x = items[key]
        if tuple(x.shape) != tuple(shape) or x.dtype.kind not in "fiu":
            raise ValueError(f"{self.shard_url(s)}: item {key} is {x.dtype} {tuple(x.shape)}, the export's items are "
                             f"float32 {tuple(shape)} (an altered shard)")
        return x

    def sample_items(self, n: int = 2) -> torch.Tensor:
        """Zeros of the export's item shape: the checks before training read no shard."""
        return torch.zeros((min(n, len(self)), *self.manifest["shape"]), dtype=torch.float32)

    def batch_plan(self, sampler, seed: int) -> ShardPlan:
        """The method's ``sampler`` applied shard by shard (:class:`ShardPlan`)."""
        return ShardPlan(sampler, self._shard, self._reader_count(), seed=seed)

    def _take(self, rows):
        return StreamDataset(self.root, self.manifest, self.index[rows.tolist()] if len(rows) else self.index.clear(),
                             self._shard[rows], self._key[rows], self.readers, self.source)


def open_stream(root, readers=None) -> StreamDataset:
    """The :class:`StreamDataset` of an export at ``root`` (a folder or a URL prefix)."""
    root = str(root)
    try:
        manifest = json.loads(_read(root, MANIFEST))
    except json.JSONDecodeError as err:
        raise ValueError(f"{root}/{MANIFEST}: not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{root}/{MANIFEST}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    try:
        table = pl.read_parquet(io.BytesIO(_read(root, INDEX)))
    except (pl.exceptions.PolarsError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{root}/{INDEX}: cannot read the index ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    missing = {"shard", "key", "patient_id", "record_id"} - set(table.columns)
    if missing:
        raise ValueError(f"{root}/{INDEX}: missing column(s) {sorted(missing)}")
    for what, cols in (("record id", ["record_id"]), ("(shard, key) item", ["shard", "key"])):
        repeated = table.filter(table.select(cols).is_duplicated())
        if repeated.height:
            raise ValueError(f"{root}/{INDEX}: {repeated.height} rows repeat a {what} "
                             f"({', '.join(str(v) for v in repeated.row(0)[:2])} ...); an export lists each once")
    if len(table) != manifest["items"]:
        raise ValueError(f"{root}/{INDEX}: {len(table)} rows, but {MANIFEST} lists {manifest['items']} items")
    if readers is not None and (not isinstance(readers, int) or isinstance(readers, bool) or readers < 1):
        raise ValueError(f"readers must be an integer >= 1, got {readers!r}")
    shard, key = table["shard"].to_numpy(), table["key"].to_numpy()
    if len(shard) and (shard.min() < 0 or shard.max() >= len(manifest["shards"])):
        raise ValueError(f"{root}/{INDEX}: shard numbers outside the {len(manifest['shards'])} shards of {MANIFEST}")
    return StreamDataset(root, manifest, table.drop(["shard", "key"]), shard, key, readers)


@declare_source("webdataset", "waveform", "a folder or URL prefix written by tscl export --format webdataset: "
                 "shard-*.tar, index.parquet, manifest.json",
                 options={"readers": "shard lanes per epoch (default: the number of ranks); one process with "
                                     "readers=R gets the batches R ranks get together"})
def _webdataset(root, *, cache=None, progress=True, readers=None):
    return open_stream(root, readers=readers)
