"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""


class BenchError(Exception):
    """A user mistake or a missing asset; never a bug in the harness."""
