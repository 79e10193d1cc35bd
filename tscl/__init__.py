"""tscl: patient-aware contrastive pretraining for clinical time series and tabular records."""
__version__ = "0.1.0"
