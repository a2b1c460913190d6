"""Helpers of ``benchmarks/compare_peers.py``: workloads (model + images), peer adapters, measurement."""
