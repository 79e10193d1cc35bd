"""Readers that turn clinical files on disk into :class:`Recording` objects and cached shards."""
from .cache import WaveformCache, build_cache, fingerprint_files, read_all
from .cinc import load_cinc, read_cinc, read_cinc_header
from .ptbxl import load_ptbxl, ptbxl_labels
from .recording import LoaderError, Recording, apply_nan_policy, check_signal
from .wfdb_dir import (check_wfdb_header, load_wfdb_cohort, normalise_lead_name, read_metadata, read_wfdb,
                       to_millivolts)

__all__ = [
    "Recording", "LoaderError", "check_signal", "apply_nan_policy",
    "WaveformCache", "build_cache", "fingerprint_files", "read_all",
    "read_wfdb", "load_wfdb_cohort", "read_metadata", "normalise_lead_name", "to_millivolts", "check_wfdb_header",
    "load_ptbxl", "ptbxl_labels",
    "load_cinc", "read_cinc", "read_cinc_header",
]
