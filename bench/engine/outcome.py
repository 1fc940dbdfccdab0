"""What the shared phases of a cell hand each other: the unlearning outcome and the evaluation outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Unlearned:
    """The method's output (None when it skipped itself) and every cost the driver measured while it ran.
    ``cost`` is plain JSON, so a concept cell can store it beside the unlearned weights and a later process
    (another shard, a resumed evaluation) can finish the cell without training again."""

    generator: Any | None
    cost: dict[str, Any]
    reused: bool = False  # loaded from an earlier process of the same cell (recorded in config.json only)

    @property
    def skip_reason(self) -> str:
        return self.cost.get("skip_reason", "")


@dataclass
class Evaluated:
    """The evaluation phase: metric values, the sampling cost, and the images of the cell's sample grid."""

    values: dict[str, Any]
    sample_s: float
    evaluate_s: float
    nfe: float
    peak_mem_sample_mb: float
    peak_mem_evaluate_mb: float
    grid: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 3, 8, 8), dtype=torch.uint8))
    grid_labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    grid_names: list[str] = field(default_factory=list)
    row: dict[str, Any] = field(default_factory=dict)  # kind-specific row fields
    config: dict[str, Any] = field(default_factory=dict)  # kind-specific config.json fields
    probe_images: dict[str, torch.Tensor] = field(default_factory=dict)  # setting -> images (probes.png)
