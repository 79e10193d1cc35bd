"""Reproducible timing and quality benchmarks (JSON out, PNG plots)."""
