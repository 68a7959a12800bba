"""Benchmark harness: metrics and parity comparisons, latency measurement, reports."""
