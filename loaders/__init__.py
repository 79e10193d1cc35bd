"""Readers that turn clinical files on disk into :class:`Recording` objects and cached shards."""
from .cache import WaveformCache, build_cache, fingerprint_files
from .recording import LoaderError, Recording, check_signal
from .wfdb_dir import load_wfdb_cohort, normalise_lead_name, read_metadata, read_wfdb, to_millivolts

__all__ = [
    "Recording", "LoaderError", "check_signal",
    "WaveformCache", "build_cache", "fingerprint_files",
    "read_wfdb", "load_wfdb_cohort", "read_metadata", "normalise_lead_name", "to_millivolts",
]
