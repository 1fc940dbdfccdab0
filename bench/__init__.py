"""Benchmark harness for machine unlearning in class-conditional diffusion models."""

__version__ = "0.1.0"
