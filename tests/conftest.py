"""Run the Triton kernels through Triton's CPU interpreter unless a GPU is present.

Set here, before any test module imports Triton, so the order tests run in cannot matter.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
