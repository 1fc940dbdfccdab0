"""``docs/cli.md`` is the argument parser's own help: regenerate it with ``python -m bench.cli.docs > docs/cli.md``."""

from __future__ import annotations

import re
from pathlib import Path

from bench.cli.docs import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()  # argparse wraps differently across Python versions


def test_cli_reference_is_current():
    assert _words(DOC.read_text()) == _words(render()), \
        "docs/cli.md is out of date: python -m bench.cli.docs > docs/cli.md"


def test_every_subcommand_and_option_is_documented():
    doc = DOC.read_text()
    for command in ("run", "sweep", "pretrain", "list", "table"):
        assert f"## `{command}`" in doc
    for option in ("--methods", "--forget-class", "--concept", "--shard", "--unet", "--fid-delta", "--address"):
        assert option in doc, option
