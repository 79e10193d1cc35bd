"""Readers that turn clinical files on disk into :class:`Recording` objects and cached shards."""
from .annotations import beat_windows, load_annotated, read_beats, rhythm_intervals, rhythm_windows
from .cache import (WaveformCache, build_cache, cache_root, cached_load, check_same_rate, default_cache_dir,
                    fingerprint_files, open_fresh_cache, read_all)
from .cinc import load_cinc, read_cinc, read_cinc_header
from .edf import edf_epochs, load_eegmat, normalise_eeg_channel, read_edf, read_edf_annotations
from .meds import (EventVocabulary, build_vocabulary, read_codes, read_subject_splits, scan_meds, subject_sequences,
                   tabular_features, validate_meds_shard)
from .mimic_meds import mimic_iv_to_meds
from .ptbxl import load_ptbxl, ptbxl_labels
from .recording import LoaderError, Recording, apply_nan_policy, check_signal
from .transforms import harmonise_channels, prepare, resample
from .wfdb_dir import (check_wfdb_header, load_wfdb_cohort, load_wfdb_windows, normalise_lead_name, parse_wfdb_header,
                       read_metadata, read_wfdb, to_millivolts)
from .windows import WindowReport, cut_window, window_recording

__all__ = [
    "Recording", "LoaderError", "check_signal", "apply_nan_policy",
    "WaveformCache", "build_cache", "fingerprint_files", "open_fresh_cache", "read_all", "cache_root",
    "default_cache_dir", "check_same_rate", "cached_load",
    "read_wfdb", "load_wfdb_cohort", "load_wfdb_windows", "read_metadata", "normalise_lead_name", "to_millivolts",
    "check_wfdb_header", "parse_wfdb_header",
    "window_recording", "cut_window", "WindowReport",
    "resample", "harmonise_channels", "prepare",
    "load_ptbxl", "ptbxl_labels",
    "load_cinc", "read_cinc", "read_cinc_header",
    "read_beats", "rhythm_intervals", "beat_windows", "rhythm_windows", "load_annotated",
    "read_edf", "read_edf_annotations", "edf_epochs", "load_eegmat", "normalise_eeg_channel",
    "scan_meds", "validate_meds_shard", "read_codes", "read_subject_splits", "build_vocabulary", "EventVocabulary",
    "subject_sequences", "tabular_features", "mimic_iv_to_meds",
]
