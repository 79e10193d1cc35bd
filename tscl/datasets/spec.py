"""The data a command reads, named by options: a source, its root, its options, a split and a cache.

A *data spec* is the plain dict a run's ``config.json`` records under ``dataset``: ``{"dataset", "root",
"split", "options", "cache"}``. :func:`data_spec` builds one from the command-line options (checking
the source and its options before any data loads), :func:`run_data_spec` takes a run's own data when a
command names none, :func:`open_spec` opens it and says on stderr, in one line, what the source left
out. :func:`describe_sources`, :func:`inspect_roots` and :func:`export` are ``tscl datasets``, ``tscl inspect``
and ``tscl export``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from tscl.config import load_config
from tscl.datasets import _is_url, get_source, list_sources, open_dataset
from tscl.grammar import UsageError, parse_kwargs, parse_split
from tscl.loaders import LoaderError

__all__ = ["data_spec", "run_data_spec", "open_spec", "describe_sources", "inspect_roots", "export"]


def data_spec(dataset: str | None, root: str | None, *, data: str | None = None, metadata: str | None = None,
              dataset_kwargs: str | dict | None = None, split: str | None = None, cache: str | None = None) -> dict:
    """The source to read: ``dataset`` at ``root`` (``data`` alone means ``dataset="wfdb"`` at that folder), its
    options (``K=V,...`` text or a dict) checked against the source's, the rows of ``split``."""
    name = dataset or "wfdb"
    root = root or data
    parse_split(split, "--split")  # a malformed split is refused before any data loads
    if root is None:
        raise UsageError("give the data: --dataset NAME --root PATH (or --data FOLDER for a WFDB folder)")
    try:
        src = get_source(name)
    except ValueError as err:
        raise UsageError(f"--dataset: {err}") from None
    options = dict(dataset_kwargs) if isinstance(dataset_kwargs, dict) else parse_kwargs(dataset_kwargs,
                                                                                         "--dataset-kwargs")
    if metadata:
        options["metadata"] = metadata
    unknown = sorted(set(options) - set(src.options))
    if unknown:
        raise UsageError(f"--dataset-kwargs: dataset {name!r} takes no option {unknown[0]!r}; its options: "
                         f"{', '.join(sorted(src.options)) or 'none'}")
    root = root if _is_url(root) else str(Path(root).resolve())  # a URL prefix: a streamed source's shards
    return {"dataset": name, "root": root, "split": split, "options": options, "cache": cache}


def run_data_spec(run: str | Path | None, split: str | None, **given) -> dict:
    """The command's data: its own (``given``: the keywords of :func:`data_spec`) when it names a root, else
    the data ``run`` was pretrained on (its ``config.json``), read at ``split``."""
    if given.get("root") or given.get("data") or run is None:
        return data_spec(given.pop("dataset", None), given.pop("root", None), split=split, **given)
    saved = load_config(run).dataset
    if not saved:
        raise UsageError(f"{run}/config.json names no dataset; give --dataset NAME --root PATH")
    return {**saved, "split": split, "cache": given.get("cache") or saved.get("cache")}


def open_spec(spec: dict, progress: bool = True):
    """The dataset of ``spec``; what its source left out is said on stderr in one line (and kept in
    ``notes``)."""
    data = open_dataset(spec["dataset"], spec["root"], split=spec.get("split"), cache=spec.get("cache"),
                        progress=progress, **spec.get("options", {}))
    line = data.notes_line()
    if line:
        print(f"tscl: note: {spec['root']}: {line}", file=sys.stderr)
    return data


def describe_sources() -> str:
    """Every source, its modality, the split pretraining reads, what its root needs and its options."""
    lines = []
    for name in list_sources():
        src = get_source(name)
        lines.append(f"{name} ({src.modality}; pretraining reads split '{src.default_split}' by default)\n"
                     f"  needs: {src.needs}")
        lines += [f"  --dataset-kwargs {opt}=...  {text}" for opt, text in src.options.items()]
    return "\n".join(lines)


_REFUSED = (UsageError, LoaderError, ValueError, FileNotFoundError, KeyError)


def _inspect_one(spec: dict, payload_path: str | None) -> dict:
    data = open_spec(spec, progress=False)
    print(f"{spec['root']}: {data.describe()}")
    summary = data.summary(payload=payload_path is not None)
    if isinstance(summary.get("payload"), np.ndarray):  # waveforms and images: beside the JSON, as .npy
        np.save(payload_path, summary.pop("payload"))
        summary["payload_file"] = payload_path
    return {"root": spec["root"], "ok": True, "error": None, **summary}


def inspect_roots(dataset: str | None, roots: list[str], *, out: str | None = None, payload: bool = False,
                  **spec_options) -> int:
    """Open ``dataset`` at each of ``roots`` on its own and print what it reads; a root that is refused prints
    its one-line error and the others still run. ``out`` writes every root's summary (index rows, notes, and
    with ``payload`` every item's payload, waveforms and images as ``OUT.<k>.npy``) as JSON. Returns 2 when
    any root was refused, else 0."""
    if not roots:
        raise UsageError("give the data: --dataset NAME --root PATH [--root PATH ...]")
    results, refused = [], 0
    for k, root in enumerate(roots):
        spec = data_spec(dataset, root, **spec_options)
        try:
            results.append(_inspect_one(spec, f"{out}.{k}.npy" if payload and out else None))
        except _REFUSED as err:
            if os.environ.get("TSCL_DEBUG"):
                raise
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"tscl inspect: error: {message}", file=sys.stderr)
            results.append({"root": spec["root"], "ok": False, "error": str(message)})
            refused += 1
    if out:
        Path(out).write_text(json.dumps(results, indent=1, default=str))
    return 2 if refused else 0


def export(out: str | Path, *, shard_size: str = "256MB", split: str | None = None, seed: int = 0,
           progress: bool = True, **data) -> dict:
    """``tscl export``: the rows of ``split`` (default all) of the dataset ``data`` names (the keywords of
    :func:`data_spec`) as WebDataset shards in a new folder ``out`` (:func:`tscl.datasets.stream.export_webdataset`);
    returns the manifest."""
    from tscl.datasets.stream import export_webdataset, parse_size  # webdataset's tar writer: only for exports

    try:
        shard_bytes = parse_size(shard_size)
    except ValueError as err:
        raise UsageError(f"--shard-size: {err}") from None
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out}: folder exists and is not empty; choose a new folder")
    dataset = open_spec(data_spec(split=split or "all", **data), progress=progress)
    manifest = export_webdataset(dataset, out, shard_bytes=shard_bytes, seed=seed, progress=progress)
    size = sum(s["bytes"] for s in manifest["shards"])
    print(f"wrote {manifest['items']} items in {len(manifest['shards'])} shard(s), {size / 2**20:.1f} MiB, to {out}")
    return manifest
