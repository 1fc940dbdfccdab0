"""What the driver measures, so that no method can misreport its own cost.

* optimizer steps: a global ``torch.optim`` step hook, active only while a method unlearns;
* network forward evaluations and backward passes: hooks on every network the context hands out
  (a backward pass is counted when a gradient reaches that network's output, so two forwards in one
  graph count two backward passes, the cost unit of methods.md §14);
* wall time per phase, synchronised on CUDA, with probe time excluded from the unlearn phase;
* peak memory: CUDA's allocator peak, or on CPU the peak resident set sampled by a thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook


@dataclass
class Counts:
    optimizer_steps: int = 0
    backward_passes: int = 0
    forward_images: Counter = field(default_factory=Counter)  # network name -> images evaluated
    backward_by_net: Counter = field(default_factory=Counter)
    enabled: bool = False

    def attach(self, net: nn.Module, name: str) -> list:
        """Count forwards (in images) and backward passes of ``net``; returns the hook handles."""

        def on_forward(module, args, output):
            if not self.enabled or not isinstance(output, torch.Tensor):
                return
            self.forward_images[name] += int(output.shape[0])
            if output.requires_grad:
                output.register_hook(lambda grad: self._on_backward(name))

        return [net.register_forward_hook(on_forward)]

    def _on_backward(self, name: str) -> None:
        if self.enabled:
            self.backward_passes += 1
            self.backward_by_net[name] += 1

    @contextlib.contextmanager
    def counting_optimizer_steps(self) -> Iterator[None]:
        def hook(opt, args, kwargs):
            if self.enabled:
                self.optimizer_steps += 1

        handle = register_optimizer_step_post_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        was, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = was


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulates wall seconds; ``paused()`` excludes a block (probes) from the total."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.total = 0.0
        self._start: float | None = None

    def start(self) -> None:
        sync(self.device)
        self._start = time.perf_counter()

    def stop(self) -> float:
        if self._start is not None:
            sync(self.device)
            self.total += time.perf_counter() - self._start
            self._start = None
        return self.total

    @property
    def elapsed(self) -> float:
        if self._start is None:
            return self.total
        sync(self.device)
        return self.total + time.perf_counter() - self._start

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        running = self._start is not None
        if running:
            self.stop()
        try:
            yield
        finally:
            if running:
                self.start()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:  # not Linux: fall back to the process-lifetime peak
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory during a block, in MiB: CUDA allocator peak, else sampled RSS (``kind`` says which)."""

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.peak_mb = 0.0
        self.kind = "cuda-allocated" if device.type == "cuda" else "cpu-rss"
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._peak, _rss_bytes()) / 2**20
