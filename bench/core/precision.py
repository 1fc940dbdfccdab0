"""Speed options of a run (bf16 autocast, TF32, channels-last, ``torch.compile``), recorded with every row.

They change numbers (bf16 rounds activations; compiled kernels reassociate sums), so they are part of
a cell's identity and of the base model's cache key: a bf16 cell never reuses an fp32 cell's result.
Every option also runs on a CPU (bf16 autocast and ``torch.compile`` work there at tiny sizes), so
the GPU code paths are exercised by the CPU tests.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from bench.core.errors import BenchError


@dataclass(frozen=True)
class Precision:
    bf16: bool = False  # autocast the networks' forward passes to bfloat16 (weights and optimizer stay fp32)
    tf32: bool = False  # TF32 tensor-core matmuls and convolutions for fp32 work (CUDA only)
    channels_last: bool = False  # NHWC memory format for the U-Nets
    compile: bool = False  # torch.compile the U-Net in pretraining and the throughput benchmark

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_default(self) -> bool:
        return self == Precision()

    def tag(self) -> str:
        on = [k for k, v in asdict(self).items() if v]
        return "+".join(on) if on else "fp32"

    def apply_globals(self) -> None:
        """Process-wide switches (TF32); called once by the driver."""
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
        torch.set_float32_matmul_precision("high" if self.tf32 else "highest")

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def prepare(self, net: nn.Module) -> nn.Module:
        """Memory format of a network handed to a method, a sampler or a training loop."""
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net


def parse_precision(text: str | None) -> Precision:
    """``"bf16,tf32,channels-last,compile"`` (any subset, or ``fp32``) -> :class:`Precision`."""
    if not text or text == "fp32":
        return Precision()
    names = {"bf16": "bf16", "tf32": "tf32", "channels-last": "channels_last", "channels_last": "channels_last",
             "compile": "compile"}
    flags: dict[str, bool] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part not in names:
            raise BenchError(f"unknown --precision option {part!r}; choose from fp32, bf16, tf32, "
                             "channels-last, compile (comma-separated)")
        flags[names[part]] = True
    return Precision(**flags)
