"""Helpers for the test suite and the benchmarks (not imported by the application)."""
