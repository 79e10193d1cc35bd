"""The id-aware InfoNCE of every tscl objective: ``info_nce`` (``kernels/api.py``), its PyTorch
reference (``kernels/reference.py``) and the fused Triton kernels (``kernels/triton_info_nce.py``,
imported on first use). See docs/kernels.md."""
from .api import InfoNCEStats, info_nce, nonfinite_inputs, triton_available
from .reference import info_nce_rows_reference

__all__ = ["info_nce", "InfoNCEStats", "info_nce_rows_reference", "nonfinite_inputs", "triton_available"]
