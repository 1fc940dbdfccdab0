"""Metric plugins: every public module here is imported by ``bench.engine.plugins.load_all``."""
