"""Provenance recorded with every run: code revision, library versions, device."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def git_revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        # untracked files count: a new module or plugin changes what runs as much as an edit does. What
        # cannot change a run is left out: committed results (a run writing into results/ must not mark
        # its own later cells dirty) and the documentation.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal", "--", ".",
                                ":(exclude)results", ":(exclude)docs", ":(exclude)*.md"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.machine()} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    return {
        "git": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        **{f"v_{p}": _version(p) for p in ("torch", "diffusers", "torch-fidelity", "clean-fid", "numpy",
                                           "scikit-learn", "pandas", "timm")},
        "v_cuda": torch.version.cuda or "none",
        "v_cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
