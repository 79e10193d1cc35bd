"""What one torchrun rank pays to open a built ``wfdb`` cache: the node's first rank (from the sources)
or one of its other ranks (the cache handed over by the first rank, see ``tscl.distributed.node_local_first``).

Each call is one fresh process and one open; it prints the open's time and peak memory as JSON.
``first`` records the folder it opened in ``HANDOFF`` (a JSON file), ``handed`` opens with it::

    python benchmarks/bench_open_rank.py first  DATA CACHE HANDOFF
    python benchmarks/bench_open_rank.py handed DATA CACHE HANDOFF

``peak_anon_mb`` leaves out the pages of the memory-mapped shards; ``peak_rss_mb`` (VmHWM) counts them.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tscl.benchmarks.bench_scale import PeakMemory


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["first", "handed"])
    p.add_argument("data", type=Path, help="a WFDB cohort folder (metadata.csv + records)")
    p.add_argument("cache", type=Path, help="the --cache folder the cache was built in")
    p.add_argument("handoff", type=Path, help="JSON file: written by first, read by handed")
    args = p.parse_args(argv)
    import tscl.datasets.waveform  # noqa: F401  (imports are not part of the open)
    from tscl.datasets import list_sources, open_dataset
    from tscl.loaders import cache as cache_mod

    list_sources()
    handed = json.loads(args.handoff.read_text()) if args.mode == "handed" else {}
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        with cache_mod.recording_opens() as opened, cache_mod.trusting(handed):
            ds = open_dataset("wfdb", args.data, cache=args.cache, progress=False)
        open_s = time.perf_counter() - t0
    if args.mode == "first":
        args.handoff.write_text(json.dumps(opened))
    out = {"mode": args.mode, "records": len(ds), "open_s": open_s, **mem.record()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
