"""What the driver measures, so that no method can misreport its own cost.

* optimizer steps: a global ``torch.optim`` step hook, active only while a method unlearns;
* network forward evaluations and backward passes: hooks on every network the context hands out
  (a backward pass is counted when a gradient reaches that network's output, so two forwards in one
  graph count two backward passes, the cost unit of methods.md §14);
* wall time per phase, synchronised on CUDA, with probe time excluded from the unlearn phase;
* peak memory per phase, above the phase's starting level and without probes: CUDA's allocator
  peak, or on CPU the peak resident set sampled by a thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
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
            output = _main_tensor(output)
            if not self.enabled or output is None:
                return
            self.forward_images[name] += int(output.shape[0])
            if output.requires_grad:
                output.register_hook(lambda grad: self._on_backward(name))

        return [net.register_forward_hook(on_forward)]

    def count_backward(self, loss: torch.Tensor, name: str) -> None:
        """Count one backward pass of ``name`` when ``loss`` is differentiated: for a loss that reaches the
        network only through its inner activations, which the output hook never sees."""
        if loss.requires_grad:
            loss.register_hook(lambda grad: self._on_backward(name))

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


def _main_tensor(output) -> torch.Tensor | None:
    """The tensor a network returned: itself, or the ``sample`` / ``last_hidden_state`` of a diffusers or
    transformers output object (the UNet and text encoder of the concept tasks)."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("sample", "last_hidden_state"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    return None


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
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: fall back to the process-lifetime peak
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_freed_memory() -> None:
    """Hand memory that was freed back to the OS (glibc ``malloc_trim``), so that the resident set
    seen after a block reflects what is still in use, not what the allocator kept for later. (No
    ``gc.collect()``: tensors are freed by reference counting, and a collection costs ~0.3 s, paid
    at every probe and snapshot.)"""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


class PeakMemory:
    """Peak memory of one phase, in MiB ABOVE the level at the phase's start, with pauses.

    ``kind`` says what is measured: ``cuda-allocated`` (the CUDA caching allocator's peak of
    allocated bytes) or ``cpu-rss`` (the process's resident set, sampled every ``interval`` seconds
    by a thread). Blocks run inside :meth:`paused` (probes) do not count; on the CPU, memory they
    freed is handed back to the OS before sampling resumes.
    """

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.peak_mb = 0.0
        self.kind = "cuda-allocated" if device.type == "cuda" else "cpu-rss"
        self._stop = threading.Event()
        self._paused = False
        self._base = 0
        self._peak = 0

    def _sample(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return _rss_bytes()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            release_freed_memory()
            self._base = _rss_bytes()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        self._peak = self._base
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._paused:
                rss = _rss_bytes()
                if not self._paused:  # a pause may have begun while reading
                    self._peak = max(self._peak, rss)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        if self._paused:
            yield
            return
        if self.device.type == "cuda":
            sync(self.device)
        self._peak = max(self._peak, self._sample())
        self._paused = True
        try:
            yield
        finally:
            if self.device.type == "cuda":
                sync(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            else:
                release_freed_memory()
            self._paused = False

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
        else:
            self._stop.set()
            self._thread.join()
        self._peak = max(self._peak, self._sample())
        self.peak_mb = max(0, self._peak - self._base) / 2**20
