"""Run the Triton kernels through Triton's CPU interpreter unless a GPU is present.

Set here, before any test module imports Triton, so the order tests run in cannot matter.
"""
import os
import tempfile

import torch

os.environ["TSCL_CACHE"] = tempfile.mkdtemp(prefix="tscl-test-cache-")  # tests never write ~/.cache/tscl

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
