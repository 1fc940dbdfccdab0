"""Metric plugins: every public module here is imported by ``bench.plugins.load_all``."""
